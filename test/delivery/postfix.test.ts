/**
 * A real Postfix (a private instance: its own config, queue and data
 * directories) takes mail by SMTP and delivers it to Poplar: over LMTP on
 * TCP, over LMTP on a UNIX socket, and through a pipe(8) transport running
 * `poplar deliver`; on both stores. The messages are then retrieved over POP3.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poplarArgs } from '../helpers/cli.js';
import { retrieveAll, startLmtpPoplar, type LmtpPoplar, type StoreKind } from '../helpers/lmtp.js';
import { lacks, lacksPostgres, lacksRoot } from '../helpers/peers.js';
import { startPostfix, type PostfixHandle } from '../helpers/postfix.js';

const run = promisify(execFile);
const SKIP = lacksRoot() || lacks('postfix') || lacks('swaks');
const PG_DOWN = await lacksPostgres();

/** The message as the sender's client submits it (it has Date and Message-ID, so Postfix adds only Received). */
function message(n: string): string {
  return [
    'From: Sender <sender@example.net>',
    'To: alice@example.org',
    `Subject: through Postfix ${n}`,
    'Date: Sat, 05 Dec 2026 07:00:00 +0000',
    `Message-ID: <${n}@example.net>`,
    '',
    'Hello,',
    '.a line with a leading dot',
    'trailing spaces   ',
    '',
  ].join('\r\n');
}


/** swaks reads the data from stdin; execFile's promise form has no input, so it goes through a file. */
async function sendMessage(pf: PostfixHandle, to: string[], n: string): Promise<string> {
  const body = message(n);
  const file = path.join(pf.dir, `${n}.eml`);
  // swaks ends the data with CRLF . CRLF itself.
  await fs.writeFile(file, body.slice(0, -2));
  const { stdout } = await run('swaks', ['--server', '127.0.0.1', '--port', String(pf.smtpPort), '--helo', 'client.test', '--from', 'sender@example.net', '--to', to.join(','), '--data', `@${file}`, '--timeout', '20'], { timeout: 30_000 });
  expect(stdout).toMatch(/<-\s+250 2\.0\.0 Ok: queued/);
  return body;
}

/**
 * What POP3 gives: the trace headers Poplar added, then the Received header
 * Postfix added (its text depends on the queue id and the time), then
 * exactly the message that was submitted.
 */
function expectDelivered(got: Buffer | undefined, trace: string, body: string): void {
  expect(got).toBeDefined();
  const text = got!.toString('utf8');
  expect(text.startsWith(trace)).toBe(true);
  expect(text.endsWith(body)).toBe(true);
  const middle = text.slice(trace.length, text.length - body.length);
  expect(middle).toMatch(/^Received: from client\.test \(localhost \[127\.0\.0\.1\]\)\r\n(\t[^\r\n]*\r\n)+$/);
}

for (const kind of ['maildir', 'postgres'] as StoreKind[]) {
  describe.skipIf(SKIP || (kind === 'postgres' && PG_DOWN))(`Postfix delivers into Poplar (${kind} store)`, () => {
    let p: LmtpPoplar;
    const postfixes: PostfixHandle[] = [];
    beforeAll(async () => {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-pf-'));
      // Postfix's lmtp client (user postfix) must reach the socket. Poplar runs as nobody, and the
      // pipe transport runs poplar deliver as nobody too, as docs/delivery.md says to set it up.
      await fs.chmod(dir, 0o755);
      await fs.mkdir(path.join(dir, 'mail'), { mode: 0o700 });
      await fs.chown(path.join(dir, 'mail'), 65534, 65534);
      p = await startLmtpPoplar(kind, [{ name: 'alice' }, { name: 'bob' }], { dir, user: 'nobody' });
    }, 60_000);
    afterAll(async () => {
      for (const pf of postfixes) await pf.stop();
      await p?.stop();
      if (p) await fs.rm(p.dir, { recursive: true, force: true });
    });

    it('over LMTP on TCP and on a UNIX socket: one reply per recipient, byte-exact over POP3', async () => {
      const tcp = await startPostfix({ transport: `lmtp:inet:127.0.0.1:${p.lmtpPort}` });
      postfixes.push(tcp);
      const one = await sendMessage(tcp, ['alice@example.org'], 'tcp-1');
      const both = await sendMessage(tcp, ['alice@example.org', 'bob@example.org'], 'tcp-2');
      await tcp.drain();
      const unix = await startPostfix({ transport: `lmtp:unix:${p.socketPath}` });
      postfixes.push(unix);
      const three = await sendMessage(unix, ['bob@example.org'], 'unix-1');
      await unix.drain();

      const alice = await retrieveAll(p.pop3Port, 'alice');
      expect(alice).toHaveLength(2);
      expectDelivered(alice[0], 'Return-Path: <sender@example.net>\r\nDelivered-To: alice@example.org\r\n', one);
      // Two recipients in one LMTP transaction: one copy for both, so no Delivered-To.
      expectDelivered(alice[1], 'Return-Path: <sender@example.net>\r\n', both);
      const bob = await retrieveAll(p.pop3Port, 'bob');
      expect(bob).toHaveLength(2);
      expect(bob[0]).toEqual(alice[1]);
      expectDelivered(bob[1], 'Return-Path: <sender@example.net>\r\nDelivered-To: bob@example.org\r\n', three);
      expect(await tcp.log()).toMatch(/status=sent \(250 2\.0\.0 <alice@example\.org> Saved\)/);
      // An unknown user is refused by Poplar at RCPT, so Postfix bounces it.
      await sendMessage(tcp, ['nobody-here@example.org'], 'tcp-3');
      await tcp.drain();
      expect(await tcp.log()).toMatch(/nobody-here@example\.org.*status=bounced.*550 5\.1\.1/);
    }, 120_000);

    it('through a pipe transport running poplar deliver', async () => {
      const argv = [process.execPath, ...poplarArgs(['deliver', '--config', p.configFile, '-f', '${sender}', '-a', '${original_recipient}', '-d', '${user}'])].join(' ');
      const pf = await startPostfix({
        transport: 'poplar',
        extraMaster: `poplar unix - n n - - pipe\n  flags=q user=nobody argv=${argv}\n`,
        extraMain: ['poplar_destination_recipient_limit = 1'],
      });
      postfixes.push(pf);
      const body = await sendMessage(pf, ['alice@example.org'], 'pipe-1');
      await sendMessage(pf, ['ghost@example.org'], 'pipe-2');
      await pf.drain(60_000);
      const log = await pf.log();
      expect(log).toMatch(/to=<alice@example\.org>.*relay=poplar.*status=sent/);
      // 67 (EX_NOUSER): Postfix bounces with "unknown user".
      expect(log).toMatch(/to=<ghost@example\.org>.*status=bounced/);
      const alice = await retrieveAll(p.pop3Port, 'alice');
      expectDelivered(alice.at(-1), 'Return-Path: <sender@example.net>\r\nDelivered-To: alice@example.org\r\n', body);
    }, 120_000);
  });
}
