/**
 * `poplar fetch` as a process against a malicious or broken server (the
 * scriptable fake): a connection dropped during RETR, listings and messages
 * that never end, a server that trickles, UIDLs RFC 1939 does not allow. The
 * fetcher ends the account's run with exit 75 (or delivers what it safely
 * can), keeps nothing half-delivered, records nothing it did not deliver, and
 * a daemon keeps running.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { poplarArgs, ROOT, runPoplar } from '../helpers/cli.js';
import { flood, miniPop3, startFake, type FakeServer, type MiniPop3Options } from '../client/fake-server.js';
import { mboxSeqCounts, seqCounts, seqMessage } from './helpers.js';

let tmp: string;
let fake: FakeServer | undefined;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fetch-hostile-'));
});
afterEach(async () => {
  await fake?.stop();
  fake = undefined;
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const MESSAGES = [seqMessage(1), seqMessage(2), seqMessage(3)];

async function serve(o: MiniPop3Options): Promise<FakeServer> {
  fake = await startFake({ handle: miniPop3(o) });
  return fake;
}

/** A config file for one account against the fake server; `extra` lines go into the account table. */
async function config(dir: string, extra: string[] = [], fetchTable: string[] = []): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, 'fetch.toml');
  await fs.writeFile(
    file,
    [
      '[fetch]',
      'state_dir = "state"',
      ...fetchTable,
      '',
      '[[account]]',
      'name = "h"',
      'host = "127.0.0.1"',
      `port = ${fake!.port}`,
      'tls = "none"',
      'user = "alice"',
      'password = "pw"',
      'auth = "USER"',
      'timeout = 10',
      `sink = { type = "maildir", path = "${path.join(dir, 'Maildir')}" }`,
      ...extra,
      '',
    ].join('\n'),
  );
  return file;
}

const fetchOnce = (file: string, more: string[] = []): ReturnType<typeof runPoplar> => runPoplar(['fetch', '--once', '--config', file, '--json', ...more], { timeoutMs: 60_000 });

/** UIDLs the ledger records as delivered (`+` lines). */
async function recorded(dir: string): Promise<string[]> {
  const text = await fs.readFile(path.join(dir, 'state', 'h.ledger'), 'latin1').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l.startsWith('+ '))
    .map((l) => l.split(' ')[3]!);
}

async function filesIn(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch(() => []);
}

/** A RETR answered with `+OK` and a few octets of the message, then a hang-up. */
const dropDuring = (n: string) => async (verb: string, args: string[], io: Parameters<NonNullable<MiniPop3Options['intercept']>>[2]) => {
  if (verb !== 'RETR' || args[0] !== n) return 'pass' as const;
  await io.send('+OK 300 octets\r\nFrom: sender@');
  await sleep(30);
  io.close();
  return false;
};

describe('the server drops the connection during RETR', () => {
  for (const pipelining of [true, false]) {
    it(`exit 75, message 1 delivered and recorded, nothing of message 2 anywhere, no DELE for it (${pipelining ? 'with' : 'without'} PIPELINING)`, async () => {
      const dir = path.join(tmp, `drop-${pipelining}`);
      await serve({ messages: MESSAGES, capabilities: pipelining ? ['USER', 'UIDL', 'TOP', 'PIPELINING'] : ['USER', 'UIDL', 'TOP'], intercept: dropDuring('2') });
      const file = await config(dir, ['keep = false', 'batch = 1']);
      const r = await fetchOnce(file);
      expect(r.stderr).not.toMatch(/Unhandled|MessageStream|at .*\.ts:\d+/);
      expect(r.code).toBe(75);
      expect(JSON.parse(r.stdout)).toMatchObject({ exitCode: 75, accounts: [{ ok: false, exitCode: 75, delivered: 1 }] });
      expect(r.stderr).toMatch(/temporary: connection closed by the server during the reply to RETR/);
      expect([...(await seqCounts(path.join(dir, 'Maildir'))).entries()]).toEqual([[1, 1]]);
      expect(await filesIn(path.join(dir, 'Maildir', 'tmp'))).toEqual([]);
      expect(await recorded(dir)).toEqual(['uid-1']);
      expect(fake!.received).not.toContain('DELE 2');

      // The server mends its ways: the rest arrives, once.
      await fake!.stop();
      const port = fake!.port;
      fake = await startFake({ handle: miniPop3({ messages: MESSAGES }) });
      await fs.writeFile(file, (await fs.readFile(file, 'utf8')).replace(`port = ${port}`, `port = ${fake.port}`));
      const again = await fetchOnce(file);
      expect(again.code).toBe(0);
      expect([...(await seqCounts(path.join(dir, 'Maildir'))).entries()].sort()).toEqual([
        [1, 1],
        [2, 1],
        [3, 1],
      ]);
    });
  }

  it('into an mbox: exit 75, the mbox holds message 1 whole and nothing of message 2', async () => {
    const dir = path.join(tmp, 'drop-mbox');
    await serve({ messages: MESSAGES, intercept: dropDuring('2') });
    const mbox = path.join(dir, 'mbox');
    const file = await config(dir, ['batch = 1']);
    await fs.writeFile(file, (await fs.readFile(file, 'utf8')).replace(/^sink = .*$/m, `sink = { type = "mbox", path = "${mbox}" }`));
    const r = await fetchOnce(file);
    expect(r.code).toBe(75);
    expect([...(await mboxSeqCounts(mbox, (seq) => seqMessage(seq))).entries()]).toEqual([[1, 1]]);
    expect(await recorded(dir)).toEqual(['uid-1']);
  });

  it('--daemon survives it and fetches the rest on its next round', async () => {
    const dir = path.join(tmp, 'drop-daemon');
    let connections = 0;
    await serve({
      messages: MESSAGES,
      intercept: async (verb, args, io) => {
        if (verb === 'CAPA') connections++;
        return connections === 1 ? dropDuring('2')(verb, args, io) : 'pass';
      },
    });
    const file = await config(dir, [], ['interval = 0.3', 'jitter = 0', 'backoff_initial = 0.3']);
    const child = spawn(process.execPath, poplarArgs(['fetch', '--daemon', '--config', file]), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    try {
      for (let i = 0; i < 200 && (await seqCounts(path.join(dir, 'Maildir'))).size < 3 && child.exitCode === null; i++) await sleep(50);
      expect(child.exitCode).toBe(null);
      expect([...(await seqCounts(path.join(dir, 'Maildir'))).entries()].sort()).toEqual([
        [1, 1],
        [2, 1],
        [3, 1],
      ]);
      expect(stderr).toMatch(/"msg":"fetch failed"/);
      expect(stderr).toMatch(/"exitCode":75/);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});

describe('bounds', () => {
  it('a UIDL reply that never ends: exit 75 naming max_list_octets, the server cut off soon after the bound', async () => {
    const dir = path.join(tmp, 'uidl-endless');
    let sent = 0;
    await serve({
      messages: MESSAGES,
      intercept: async (verb, _args, io) => {
        if (verb !== 'UIDL') return 'pass';
        await io.send('+OK\r\n');
        sent = await flood(io, Buffer.from('1 uid-endless-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n'.repeat(1000)));
        return false;
      },
    });
    const file = await config(dir, ['max_list_octets = "2M"']);
    const r = await fetchOnce(file);
    expect(r.code).toBe(75);
    expect(r.stderr).toMatch(/the reply to UIDL ran past 2097152 octets/);
    expect(r.stderr).toMatch(/max_list_octets/);
    await sleep(100);
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThan(2 * 1024 * 1024 + 16 * 1024 * 1024); // the bound, plus what socket buffers held
  });

  it('max_list_lines bounds LIST', async () => {
    const dir = path.join(tmp, 'list-lines');
    await serve({
      messages: MESSAGES,
      intercept: async (verb, _args, io) => {
        if (verb !== 'LIST') return 'pass';
        await io.send('+OK\r\n');
        await flood(io, Buffer.from('1 100\r\n'.repeat(1000)));
        return false;
      },
    });
    const r = await fetchOnce(await config(dir, ['max_list_lines = 5000']));
    expect(r.code).toBe(75);
    expect(r.stderr).toMatch(/LIST ran past 5000 lines.*max_list_lines/);
  });

  it('a message far past its LIST size: exit 75, nothing in tmp/ or new/, nothing recorded, the server cut off near the margin', async () => {
    const dir = path.join(tmp, 'oversize');
    let sent = 0;
    await serve({
      messages: MESSAGES,
      listSizes: [Buffer.byteLength(MESSAGES[0]!), 29, Buffer.byteLength(MESSAGES[2]!)],
      intercept: async (verb, args, io) => {
        if (verb !== 'RETR' || args[0] !== '2') return 'pass';
        await io.send('+OK 29 octets\r\n');
        sent = await flood(io, Buffer.from('x'.repeat(1022) + '\r\n'));
        return false;
      },
    });
    const file = await config(dir, ['size_margin = "256k"', 'batch = 1', 'parallel = 1']);
    const r = await fetchOnce(file);
    expect(r.code).toBe(75);
    expect(r.stderr).toMatch(/temporary: the reply to RETR ran past 262173 octets/);
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).keys()]).toEqual([1]);
    expect(await filesIn(path.join(dir, 'Maildir', 'tmp'))).toEqual([]);
    expect(await recorded(dir)).toEqual(['uid-1']);
    await sleep(100);
    expect(sent).toBeLessThan(256 * 1024 + 16 * 1024 * 1024);
  });

  it('a message that trickles in under the silence timeout is stopped by message_timeout', async () => {
    const dir = path.join(tmp, 'trickle');
    await serve({
      messages: MESSAGES,
      intercept: async (verb, _args, io) => {
        if (verb !== 'RETR') return 'pass';
        await io.send('+OK\r\nSubject: slow\r\n');
        while (!io.socket.destroyed) {
          await io.send('x');
          await sleep(200);
        }
        return false;
      },
    });
    const file = await config(dir, ['message_timeout = 1', 'parallel = 1']);
    const started = Date.now();
    const r = await fetchOnce(file);
    expect(r.code).toBe(75);
    expect(r.stderr).toMatch(/the reply to RETR took longer than 1000 ms in all/);
    expect(Date.now() - started).toBeLessThan(9000); // well before the 10 s silence timeout could have fired
    expect((await seqCounts(path.join(dir, 'Maildir'))).size).toBe(0);
    expect(await filesIn(path.join(dir, 'Maildir', 'tmp'))).toEqual([]);
  });

  it('message_timeout bounds every reply, not only messages: a CAPA trickled forever', async () => {
    const dir = path.join(tmp, 'trickle-capa');
    await serve({
      messages: MESSAGES,
      intercept: async (verb, _args, io) => {
        if (verb !== 'CAPA') return 'pass';
        await io.send('+OK\r\n');
        while (!io.socket.destroyed) {
          await io.send('U');
          await sleep(200);
        }
        return false;
      },
    });
    const started = Date.now();
    const r = await fetchOnce(await config(dir, ['message_timeout = 1']));
    expect(r.code).toBe(75);
    expect(r.stderr).toMatch(/the reply to CAPA took longer than 1000 ms in all/);
    expect(Date.now() - started).toBeLessThan(9000);
  });
});

describe('UIDLs RFC 1939 does not allow', () => {
  const uids = ['good-1', 'bäd-2', 'a'.repeat(71), 'bad\rUIDL4', 'good-5'];
  const five = [1, 2, 3, 4, 5].map((i) => seqMessage(i));

  it('the others are delivered, each bad one left on the server with a warning naming its number; exit 0; no redelivery', async () => {
    const dir = path.join(tmp, 'bad-uidl');
    await serve({ messages: five, uids });
    const file = await config(dir, ['keep = false']);
    const r = await fetchOnce(file);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ exitCode: 0, accounts: [{ ok: true, onServer: 5, delivered: 2, skipped: 3, deleted: 2 }] });
    for (const n of [2, 3, 4]) expect(r.stderr).toMatch(new RegExp(`warning: h: message ${n} left on the server: its UIDL .* is not valid`));
    expect(r.stderr).not.toMatch(/message [15] left/);
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).keys()].sort()).toEqual([1, 5]);
    expect(fake!.received.filter((l) => l.startsWith('DELE')).sort()).toEqual(['DELE 1', 'DELE 5']);

    // Same maildrop again (as a server that kept them would list it): nothing delivered twice, the same warnings.
    fake!.received.length = 0;
    const again = await fetchOnce(file);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ accounts: [{ delivered: 0, skipped: 3 }] });
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).entries()].sort()).toEqual([
      [1, 1],
      [5, 1],
    ]);
    expect(fake!.received.filter((l) => l.startsWith('RETR'))).toEqual([]);
  });

  it('a UIDL with a CR is not read as its first part: no collision with a UIDL already in the ledger', async () => {
    const dir = path.join(tmp, 'cr-collision');
    // First run: message "bad" is delivered and deleted.
    await serve({ messages: [seqMessage(1)], uids: ['bad'] });
    const file = await config(dir, ['keep = false']);
    expect((await fetchOnce(file)).code).toBe(0);
    expect(await recorded(dir)).toEqual(['bad']);
    // Second run: a new message whose UIDL starts with "bad", then a CR. Read as "bad" it would look
    // delivered already, and be deleted unread.
    await fake!.stop();
    const port = fake!.port;
    fake = await startFake({ handle: miniPop3({ messages: [seqMessage(2)], uids: ['bad\rUIDL2'] }) });
    await fs.writeFile(file, (await fs.readFile(file, 'utf8')).replace(`port = ${port}`, `port = ${fake.port}`));
    const r = await fetchOnce(file);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/message 1 left on the server: its UIDL "bad\?UIDL2" is not valid/);
    expect(fake.received).not.toContain('DELE 1');
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).keys()]).toEqual([1]);
  });

  it('two messages with the same UIDL: both left on the server, the others delivered', async () => {
    const dir = path.join(tmp, 'dup-uidl');
    await serve({ messages: [1, 2, 3].map((i) => seqMessage(i)), uids: ['same', 'other', 'same'] });
    const r = await fetchOnce(await config(dir));
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/message 1 left on the server: its UIDL "same" is listed for more than one message/);
    expect(r.stderr).toMatch(/message 3 left on the server/);
    expect([...(await seqCounts(path.join(dir, 'Maildir'))).keys()]).toEqual([2]);
  });
});

describe('a delivery left pending by a crash', () => {
  /** Peak resident memory (VmRSS, sampled) of `poplar fetch` settling a pending delivery of a message of `mib` MiB. */
  async function settlePeakRss(name: string, mib: number): Promise<{ peak: number; code: number | null; stderr: string; counts: Map<number, number> }> {
    const dir = path.join(tmp, name);
    const head = 'From: sender@example.org\r\nSubject: big\r\nX-Seq: 9\r\n\r\n';
    const block = Buffer.from(`${'x'.repeat(1022)}\r\n`.repeat(1024)); // 1 MiB of body lines
    const size = Buffer.byteLength(head) + mib * block.length;
    await serve({
      messages: ['Subject: placeholder\r\n\r\nx\r\n'],
      listSizes: [size],
      intercept: async (verb, args, io) => {
        if (verb !== 'RETR' || args[0] !== '1') return 'pass';
        await io.send(`+OK ${size} octets\r\n${head}`);
        await flood(io, block, mib * block.length);
        await io.send('.\r\n');
      },
    });
    const file = await config(dir);
    await fs.mkdir(path.join(dir, 'state'), { recursive: true });
    // What a fetch killed between its intent and its record leaves behind.
    await fs.writeFile(path.join(dir, 'state', 'h.ledger'), `poplar-ledger 1\n? ${Date.now() - 60_000} uid-1 -\n`);
    const child = spawn(process.execPath, poplarArgs(['fetch', '--once', '--config', file]), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    let peak = 0;
    let done = false;
    void exited.then(() => (done = true));
    while (!done) {
      const status = await fs.readFile(`/proc/${child.pid}/status`, 'latin1').catch(() => '');
      const kb = /^VmRSS:\s+(\d+) kB/m.exec(status);
      if (kb !== null) peak = Math.max(peak, Number(kb[1]) * 1024);
      await sleep(10);
    }
    return { peak, code: await exited, stderr, counts: await seqCounts(path.join(dir, 'Maildir')) };
  }

  it('is fetched again as a stream: the fetcher does not grow by the size of the message', { timeout: 120_000 }, async () => {
    const small = await settlePeakRss('pending-small', 1);
    await fake!.stop();
    fake = undefined;
    const big = await settlePeakRss('pending-big', 160);
    console.log(`peak RSS settling a pending delivery: 1 MiB message ${(small.peak / 2 ** 20).toFixed(0)} MiB, 160 MiB message ${(big.peak / 2 ** 20).toFixed(0)} MiB`);
    expect(small.code).toBe(0);
    expect(big.code).toBe(0);
    expect(big.stderr).toMatch(/1 deliveries were interrupted; 0 had arrived, 1 will be fetched again/);
    expect([...big.counts.entries()]).toEqual([[9, 1]]);
    // Held in memory, 160 MiB would show (twice over: the reply, then its copy); streamed, the peak barely moves.
    expect(big.peak - small.peak).toBeLessThan(96 * 1024 * 1024);
  });
});
