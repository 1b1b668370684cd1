/**
 * The IMAP sink against an IMAP server that misbehaves: a real socket
 * server written here that answers like an IMAP server until told to do
 * otherwise (a bad greeting, a BYE, a literal of absurd size, a line that
 * never ends, NO to APPEND, a connection dropped in the middle of APPEND,
 * silence). Each gives a typed SinkError, never a crash or an unbounded
 * buffer, and through `poplar fetch` the message stays unrecorded and is
 * delivered by the next run, once.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveFetchConfig } from '../../src/fetch/config.js';
import { Ledger } from '../../src/fetch/ledger.js';
import { fetchAccount, newReport } from '../../src/fetch/session.js';
import { ImapSink } from '../../src/fetch/sinks/imap.js';
import { createSink, type SinkSpecInput } from '../../src/fetch/sinks/index.js';
import { SinkError } from '../../src/fetch/sinks/util.js';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';
import { fillMaildrop } from './crash-helpers.js';

type Mode = 'ok' | 'garbage-greeting' | 'bye-greeting' | 'huge-literal' | 'endless-line' | 'no-append' | 'drop-mid-append' | 'silent';

/** A scripted IMAP server on loopback; `mode` says how it misbehaves. Appended messages are kept in `stored`. */
class FakeImap {
  mode: Mode = 'ok';
  readonly stored: Buffer[] = [];
  readonly commands: string[] = [];
  readonly sockets = new Set<net.Socket>();
  readonly server = net.createServer((s) => this.#serve(s));
  port = 0;

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }

  #serve(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    const mode = this.mode;
    if (mode === 'silent') return;
    if (mode === 'garbage-greeting') return void s.write('HTTP/1.1 400 Bad Request\r\n\r\n');
    if (mode === 'bye-greeting') return void s.end('* BYE too busy, try later\r\n');
    s.write('* OK [CAPABILITY IMAP4rev1 UIDPLUS] fake ready\r\n');
    let buf = Buffer.alloc(0);
    let literal: { tag: string; need: number } | undefined;
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (literal !== undefined) {
          if (mode === 'drop-mid-append' && buf.length > 0) return void s.destroy();
          if (buf.length < literal.need + 2) return;
          const body = buf.subarray(0, literal.need);
          buf = buf.subarray(literal.need + 2);
          const tag = literal.tag;
          literal = undefined;
          if (mode === 'no-append') s.write(`${tag} NO [OVERQUOTA] mailbox is full\r\n`);
          else {
            this.stored.push(Buffer.from(body));
            s.write(`${tag} OK [APPENDUID 7 ${this.stored.length}] stored\r\n`);
          }
          continue;
        }
        const eol = buf.indexOf('\r\n');
        if (eol < 0) return;
        const line = buf.subarray(0, eol).toString('latin1');
        buf = buf.subarray(eol + 2);
        this.commands.push(line.replace(/^(\S+ LOGIN) .*/i, '$1 …'));
        const [tag, cmd = ''] = line.split(' ');
        const verb = cmd.toUpperCase();
        const m = /\{(\d+)\}$/.exec(line);
        if (verb === 'APPEND' && m !== null) {
          literal = { tag: tag!, need: Number(m[1]) };
          s.write('+ go ahead\r\n');
          continue;
        }
        if (verb === 'CAPABILITY') {
          if (mode === 'huge-literal') return void s.write(`* CAPABILITY {${2 ** 40}}\r\n${'x'.repeat(65536)}`);
          if (mode === 'endless-line') {
            const chunk = `* CAPABILITY IMAP4rev1 ${'X'.repeat(64 * 1024)}`;
            for (let i = 0; i < 40 && !s.destroyed; i++) s.write(chunk); // 2.5 MiB, never a line end
            return;
          }
          s.write(`* CAPABILITY IMAP4rev1 UIDPLUS\r\n${tag} OK done\r\n`);
        } else if (verb === 'LOGOUT') {
          s.end(`* BYE bye\r\n${tag} OK done\r\n`);
        } else if (verb === 'SELECT' || verb === 'EXAMINE') {
          s.write(`* ${this.stored.length} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT ${this.stored.length + 1}] ok\r\n${tag} OK [READ-ONLY] done\r\n`);
        } else if (verb === 'UID' && line.toUpperCase().includes(' SEARCH ')) {
          s.write(`* SEARCH\r\n${tag} OK done\r\n`); // finds nothing: every pending message is delivered again
        } else if (verb === 'LIST') {
          s.write(`* LIST (\\Noselect) "/" ""\r\n${tag} OK done\r\n`);
        } else {
          s.write(`${tag} OK done\r\n`);
        }
      }
    });
  }
}

const fake = new FakeImap();
const msg = Buffer.from('From: a@example.org\r\nSubject: hostile\r\nMessage-ID: <h@example.org>\r\n\r\nhello\r\n', 'latin1');
const info = { account: 't', uidl: 'u1', size: msg.length };

function sink(timeoutMs = 10_000): ImapSink {
  return new ImapSink({ host: '127.0.0.1', port: fake.port, tls: 'none', user: 'me', credentials: { kind: 'password', get: () => Promise.resolve('pw') }, timeoutMs });
}

async function failure(mode: Mode, timeoutMs?: number): Promise<SinkError> {
  fake.mode = mode;
  const s = sink(timeoutMs);
  const e = await s.deliverBuffer(msg, info).then(
    () => undefined,
    (x: unknown) => x,
  );
  await s.close();
  expect(e).toBeInstanceOf(SinkError);
  return e as SinkError;
}

describe('IMAP sink against a hostile IMAP server', () => {
  beforeAll(() => fake.start());
  afterAll(() => fake.stop());
  afterEach(() => {
    fake.mode = 'ok';
    fake.stored.length = 0;
  });

  it('a greeting that is not IMAP, and a BYE greeting: temporary errors, nothing stored', async () => {
    const a = await failure('garbage-greeting', 2000);
    expect(a.temporary).toBe(true);
    const b = await failure('bye-greeting');
    expect(b.temporary).toBe(true);
    expect(fake.stored).toEqual([]);
  });

  it('a literal of a terabyte and a line that never ends are refused at their bounds, not buffered', async () => {
    const rss = process.memoryUsage().rss;
    const a = await failure('huge-literal');
    expect(a.message).toMatch(/literal|too large|size/i);
    const b = await failure('endless-line');
    expect(b.message).toMatch(/line|length|size/i);
    expect(process.memoryUsage().rss - rss).toBeLessThan(200 * 1024 * 1024);
  });

  it('NO [OVERQUOTA] to APPEND: a temporary error with the server text; a connection dropped during APPEND: temporary, and the next delivery reconnects', async () => {
    const no = await failure('no-append');
    expect(no.temporary).toBe(true);
    expect(no.message).toMatch(/NO \[OVERQUOTA\] mailbox is full/);

    fake.mode = 'drop-mid-append';
    const s = sink();
    const e = (await s.deliverBuffer(msg, info).catch((x: unknown) => x)) as SinkError;
    expect(e).toBeInstanceOf(SinkError);
    expect(e.temporary).toBe(true);
    expect(fake.stored).toEqual([]);
    fake.mode = 'ok';
    await s.deliverBuffer(msg, info);
    await s.close();
    expect(fake.stored).toEqual([msg]);
    expect(s.connections).toBe(2);
  });

  it('a password that cannot be had is a credentials error (the configuration), and nothing is sent', async () => {
    const s = await createSink({ type: 'imap', host: '127.0.0.1', port: fake.port, tls: 'none', user: 'me', password_env: 'POPLAR_TEST_UNSET' }, { env: {} });
    const before = fake.commands.length;
    const e = (await s.deliverBuffer!(msg, info).catch((x: unknown) => x)) as Error;
    await s.close();
    expect(e.name).toBe('CredentialError');
    expect(e.message).toMatch(/POPLAR_TEST_UNSET is not set/);
    expect(fake.commands.slice(before).filter((c) => /LOGIN|AUTHENTICATE|APPEND/i.test(c))).toEqual([]);
  });

  it('a server that never greets: a temporary error once the timeout has passed', async () => {
    const e = await failure('silent', 300);
    expect(e.temporary).toBe(true);
  });
});

let root: string;
let dc: DovecotHandle;

describe.skipIf(lacks('dovecot'))('poplar fetch into a hostile IMAP server: nothing recorded, delivered by the next run, once', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-imap-hostile-'));
    await fillMaildrop(path.join(root, 'mail'), 'src', 5);
    dc = await startDovecot({ maildirRoot: path.join(root, 'mail'), users: [{ name: 'src', password: 'pw' }] });
    await fake.start();
  }, 60_000);
  afterAll(async () => {
    await fake.stop();
    await dc?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it('NO to every APPEND, then a dropped connection, then a good server: each message stored exactly once', async () => {
    const acct = resolveFetchConfig(
      {
        account: [
          {
            name: 'src',
            host: '127.0.0.1',
            port: dc.port,
            tls: 'none',
            user: 'src',
            password: 'pw',
            keep: false,
            sink: { type: 'imap', host: '127.0.0.1', port: fake.port, tls: 'none', user: 'me', password: 'pw', timeout: 10 },
            state: path.join(root, 'ledger'),
          },
        ],
      },
      root,
    ).accounts[0]!;
    const deps = { createSink: (spec: Record<string, unknown>) => createSink(spec as SinkSpecInput), now: Date.now, fsync: false };
    for (const mode of ['no-append', 'drop-mid-append'] as const) {
      fake.mode = mode;
      const report = newReport('src');
      await expect(fetchAccount(acct, deps, report)).rejects.toBeInstanceOf(SinkError);
      expect(report.delivered).toBe(0);
      const ledger = await Ledger.open(acct.state);
      expect(ledger.size).toBe(0); // nothing recorded: nothing deleted from the POP3 server either
      await ledger.close();
    }
    fake.mode = 'ok';
    const ok = await fetchAccount(acct, deps, newReport('src'));
    expect(ok.delivered).toBe(5);
    expect(ok.deleted).toBe(5);
    const seqs = fake.stored.map((b) => Number(/^X-Seq: (\d+)\r$/m.exec(b.toString('latin1'))![1])).sort();
    expect(seqs).toEqual([0, 1, 2, 3, 4]);
  });
});
