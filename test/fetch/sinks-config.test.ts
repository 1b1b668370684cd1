import { describe, it, expect, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { parse as parseToml } from 'smol-toml';
import { createSink, fcntlAvailable, LmtpSink, MaildirSink, MboxSink, MdaSink, plainMaildir } from '../../src/fetch/sinks/index.js';
import { LmtpSinkSchema, MaildirSinkSchema, SinkSpecSchema } from '../../src/fetch/sinks/schema.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

describe('sink specs', () => {
  it('fill in defaults for every kind', () => {
    expect(MaildirSinkSchema.parse({ type: 'maildir', path: '/m' })).toEqual({ type: 'maildir', path: '/m', fsync: true, create: true, line_ending: 'lf' });
    expect(SinkSpecSchema.parse({ type: 'mbox', path: '/var/mail/me' })).toEqual({
      type: 'mbox',
      path: '/var/mail/me',
      create: true,
      fsync: true,
      fcntl_lock: true,
      dotlock: true,
      lock_timeout: 60,
      dotlock_stale: 300,
      spool: true,
    });
    expect(SinkSpecSchema.parse({ type: 'mda', command: 'procmail' })).toEqual({ type: 'mda', command: 'procmail', line_ending: 'lf', timeout: 600, kill_grace: 5, spool: true });
    expect(SinkSpecSchema.parse({ type: 'lmtp', socket_path: '/run/lmtp', recipient: 'me' })).toEqual({
      type: 'lmtp',
      socket_path: '/run/lmtp',
      recipient: 'me',
      from: '',
      timeout: 300,
    });
  });

  it("the command line's Maildir specs are taken without the schema exactly as the schema would take them; anything else goes to the schema", () => {
    for (const spec of [
      { type: 'maildir', path: '/m' },
      { type: 'maildir', path: '/m', fsync: 'group' },
      { type: 'maildir', path: '/m', fsync: false },
      { type: 'maildir', path: '/m', fsync: true },
    ] as const) {
      expect(plainMaildir(spec)).toEqual(SinkSpecSchema.parse(spec));
    }
    for (const spec of [
      { type: 'maildir', path: '' },
      { type: 'maildir', path: '/m', fsync: 'yes' },
      { type: 'maildir', path: '/m', create: false },
      { type: 'maildir', path: '/m', line_ending: 'crlf' },
      { type: 'maildir', path: '/m', typo: 1 },
      { type: 'mbox', path: '/m' },
    ]) {
      expect(plainMaildir(spec as never)).toBeUndefined();
    }
  });

  it('read from TOML', () => {
    const toml = parseToml(`
[sink]
type = "maildir"
path = "/home/me/Maildir"
fsync = "group"
line_ending = "crlf"
`);
    expect(SinkSpecSchema.parse(toml['sink'])).toMatchObject({ type: 'maildir', fsync: 'group', line_ending: 'crlf' });
  });

  it('refuse what makes no sense', () => {
    const bad: unknown[] = [
      { type: 'maildir' },
      { type: 'maildir', path: '/m', fsync: 'sometimes' },
      { type: 'maildir', path: '/m', typo: 1 },
      { type: 'pipe', command: 'x' },
      { type: 'mda', command: '' },
      { type: 'mda', command: 'x', env: { 'BAD NAME': 'v' } },
      { type: 'lmtp', recipient: 'me' }, // no address
      { type: 'lmtp', host: 'h', socket_path: '/s', recipient: 'me' }, // both
      { type: 'lmtp', socket_path: '/s', port: 24, recipient: 'me' }, // port without host
      { type: 'lmtp', host: 'h', recipient: 'me>\r\nDATA' },
      { type: 'lmtp', host: 'h', recipient: '' },
      { type: 'mbox', path: '/m', lock_timeout: -1 },
    ];
    for (const spec of bad) expect(SinkSpecSchema.safeParse(spec).success, JSON.stringify(spec)).toBe(false);
    expect(LmtpSinkSchema.safeParse({ type: 'lmtp', host: 'localhost', recipient: 'me' }).success).toBe(true);
  });

  it('createSink builds each kind, validating first', async () => {
    expect(fcntlAvailable()).toBe(true);
    expect(await createSink({ type: 'maildir', path: '/tmp/x' })).toBeInstanceOf(MaildirSink);
    expect(await createSink({ type: 'mbox', path: '/tmp/x' })).toBeInstanceOf(MboxSink);
    expect(await createSink({ type: 'mda', command: 'true' })).toBeInstanceOf(MdaSink);
    expect(await createSink({ type: 'lmtp', host: '127.0.0.1', recipient: 'me' })).toBeInstanceOf(LmtpSink);
    await expect(createSink({ type: 'nope' } as never)).rejects.toThrow();
  });

  it('a sink made by createSink delivers', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-sink-cfg-'));
    dirs.push(dir);
    const sink = await createSink({ type: 'maildir', path: path.join(dir, 'Maildir'), fsync: 'group' });
    await sink.deliver(Readable.from([Buffer.from('Subject: x\r\n\r\ny\r\n')]), { account: 'a', uidl: 'u', size: 0 });
    await sink.flush?.();
    await sink.close();
    expect(await fs.readdir(path.join(dir, 'Maildir', 'new'))).toHaveLength(1);
  });
});
