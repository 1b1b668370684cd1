import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';

/**
 * A real `poplar serve` process SIGKILLed at the worst moments: between DELE
 * and QUIT, and while UPDATE is unlinking. Afterwards no unmarked message is
 * lost, no lock is left behind, and the maildrop opens normally.
 */
const N = 400;

function message(i: number): string {
  return `Subject: message ${i}\r\nX-Seq: ${i}\r\n\r\n${`line ${i} `.repeat(40)}\r\n.leading dot ${i}\r\n`;
}

async function deliverAll(root: string, user: string, count: number): Promise<void> {
  const dir = path.join(root, user);
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, sub), { recursive: true });
  const base = Math.floor(Date.now() / 1000);
  for (let i = 1; i <= count; i++) {
    const raw = message(i);
    await fs.writeFile(path.join(dir, 'new', `${base}.M${String(i).padStart(6, '0')}P1.test,S=${raw.length},W=${raw.length}`), raw);
  }
}

async function openSession(port: number): Promise<Wire> {
  const w = await Wire.connect(port);
  await w.line();
  await w.login('alice', 'secret');
  return w;
}

/** Every message still in the maildrop, by its X-Seq, each checked byte-exact. */
async function survivors(port: number): Promise<Set<number>> {
  const w = await openSession(port);
  const stat = await w.cmd('STAT');
  const n = Number(/^\+OK (\d+) /.exec(stat)![1]);
  const seen = new Set<number>();
  for (let i = 1; i <= n; i++) {
    const { status, body } = await w.cmdMulti(`RETR ${i}`);
    expect(status).toMatch(/^\+OK/);
    const seq = Number(/X-Seq: (\d+)/.exec(body.toString())![1]);
    const expected = message(seq).replace('\r\n.leading', '\r\n..leading') + '.\r\n';
    expect(createHash('sha256').update(body).digest('hex')).toBe(createHash('sha256').update(expected).digest('hex'));
    expect(seen.has(seq)).toBe(false);
    seen.add(seq);
  }
  expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  w.close();
  return seen;
}

describe('SIGKILL of the server', () => {
  let dir: string;
  let args: string[];
  let srv: ServeProcess | undefined;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-crash-'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    args = ['--data-dir', dir, '--users', path.join(dir, 'users'), '--maildir-root', path.join(dir, 'mail'), '--listen', '127.0.0.1:0'];
    await deliverAll(path.join(dir, 'mail'), 'alice', N);
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('between DELE and QUIT loses nothing and leaves no stale lock', async () => {
    srv = await startServe(args, { expectListeners: 1 });
    const w = await openSession(srv.plainPort);
    for (let i = 1; i <= N; i += 2) w.send(`DELE ${i}`);
    for (let i = 1; i <= N; i += 2) expect(await w.line()).toMatch(/^\+OK/);
    // The maildrop is locked (flock) while the session holds it.
    expect(spawnSync('flock', ['--nonblock', path.join(dir, 'mail/alice/poplar-pop3.lock'), 'true']).status).not.toBe(0);
    await srv.stop('SIGKILL');
    w.close();
    srv = await startServe(args, { expectListeners: 1 });
    const left = await survivors(srv.plainPort); // logs in: the killed server's lock is gone with it
    expect(left.size).toBe(N);
    expect(spawnSync('flock', ['--nonblock', path.join(dir, 'mail/alice/poplar-pop3.lock'), 'true']).status).toBe(0);
  });

  it('during UPDATE removes only marked messages, and the maildrop opens normally', async () => {
    const delays = [0, 2, 5, 10, 20];
    let total = N;
    for (const delay of delays) {
      srv ??= await startServe(args, { expectListeners: 1 });
      const w = await openSession(srv.plainPort);
      // The open session holds the maildrop: a second login is refused as [IN-USE], and nothing else.
      expect(await secondLogin(srv.plainPort)).toBe('-ERR [IN-USE] Maildrop is locked by another session.');
      const { lines } = await w.cmdLines('UIDL');
      expect(lines.length).toBe(total);
      // Mark every other message, then QUIT and kill the server while it unlinks.
      const marked = lines.filter((_, i) => i % 2 === 0).length;
      for (let i = 1; i <= lines.length; i += 2) w.send(`DELE ${i}`);
      for (let i = 1; i <= lines.length; i += 2) expect(await w.line()).toMatch(/^\+OK/);
      const seqsBefore = await listSeqs(w, lines.length);
      w.send('QUIT');
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      await srv.stop('SIGKILL');
      w.close();
      srv = await startServe(args, { expectListeners: 1 });
      const after = await survivors(srv.plainPort);
      // Every unmarked message survives; marked ones are gone or still whole.
      for (const [i, seq] of seqsBefore.entries()) if (i % 2 === 1) expect(after.has(seq)).toBe(true);
      expect(after.size).toBeGreaterThanOrEqual(total - marked);
      expect(after.size).toBeLessThanOrEqual(total);
      total = after.size;
    }
  });
});

/** The answer to PASS of a second session while the first holds the maildrop. */
async function secondLogin(port: number): Promise<string> {
  const w = await Wire.connect(port);
  try {
    expect(await w.line()).toMatch(/^\+OK/);
    expect(await w.cmd('USER alice')).toMatch(/^\+OK/);
    return await w.cmd('PASS secret');
  } finally {
    w.close();
  }
}

async function listSeqs(w: Wire, n: number): Promise<number[]> {
  const seqs: number[] = [];
  for (let i = 1; i <= n; i++) {
    const { status, body } = await w.cmdMulti(`TOP ${i} 0`);
    if (i % 2 === 1) {
      expect(status).toBe('-ERR Message is deleted.'); // marked above: TOP refuses it
      seqs.push(-1);
      continue;
    }
    expect(status).toMatch(/^\+OK/);
    seqs.push(Number(/X-Seq: (\d+)/.exec(body.toString())![1]));
  }
  return seqs;
}
