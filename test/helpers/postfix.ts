/**
 * Test helper: a private Postfix (Debian's postfix package) with its own
 * config_directory, queue_directory and data_directory in a temp directory,
 * started with `postfix -c DIR start` and stopped by stop(). It accepts mail
 * by SMTP on a loopback port for the domain example.org and hands it to
 * `transport` (e.g. `lmtp:inet:127.0.0.1:2424`, `lmtp:unix:/path`, or a
 * pipe service defined in `extraMaster`). Needs root (Postfix does).
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface PostfixHandle {
  readonly dir: string;
  readonly smtpPort: number;
  /** Postfix's log (maillog_file). */
  log(): Promise<string>;
  /** Wait until the queue is empty (everything delivered or bounced). */
  drain(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

const SERVICES = `
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export async function startPostfix(opts: { transport: string; extraMaster?: string; extraMain?: string[] }): Promise<PostfixHandle> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-postfix-'));
  await fs.chmod(dir, 0o755);
  const etc = path.join(dir, 'etc');
  const spool = path.join(dir, 'spool');
  const data = path.join(dir, 'data');
  await fs.mkdir(etc);
  await fs.mkdir(spool);
  await fs.mkdir(data);
  const { stdout: uid } = await run('id', ['-u', 'postfix']);
  await fs.chown(data, Number(uid.trim()), -1);
  const smtpPort = await freePort();
  const main = [
    'compatibility_level = 3.6',
    `queue_directory = ${spool}`,
    `data_directory = ${data}`,
    `maillog_file = ${path.join(dir, 'maillog')}`,
    `maillog_file_prefixes = ${dir}`,
    'mail_owner = postfix',
    'setgid_group = postdrop',
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'myhostname = mta.poplar.test',
    'mydomain = poplar.test',
    'myorigin = poplar.test',
    'mydestination = example.org',
    'mynetworks = 127.0.0.0/8',
    'local_recipient_maps =',
    'alias_maps =',
    'alias_database =',
    `local_transport = ${opts.transport}`,
    'smtputf8_enable = no',
    'biff = no',
    'smtpd_banner = $myhostname ESMTP',
    'relayhost =',
    'default_transport = error:no relaying in tests',
    'bounce_queue_lifetime = 0',
    'maximal_queue_lifetime = 1h',
    'queue_run_delay = 1s',
    'minimal_backoff_time = 1s',
    'maximal_backoff_time = 2s',
    'lmtp_destination_recipient_limit = 50',
    ...(opts.extraMain ?? []),
    '',
  ].join('\n');
  await fs.writeFile(path.join(etc, 'main.cf'), main);
  await fs.writeFile(path.join(etc, 'master.cf'), `127.0.0.1:${smtpPort} inet n - n - - smtpd\n${SERVICES}${opts.extraMaster ?? ''}\n`);
  // postfix-files and friends: the package's, for `postfix check` (it creates the queue directories).
  for (const f of ['postfix-files', 'dynamicmaps.cf', 'postfix-script', 'post-install']) {
    await fs.copyFile(path.join('/etc/postfix', f), path.join(etc, f)).catch(() => undefined);
  }
  for (const d of ['postfix-files.d', 'dynamicmaps.cf.d']) await fs.mkdir(path.join(etc, d)).catch(() => undefined);
  await run('/usr/sbin/postfix', ['-c', etc, 'start'], { timeout: 60_000 });
  const handle: PostfixHandle = {
    dir,
    smtpPort,
    log: () => fs.readFile(path.join(dir, 'maillog'), 'utf8').catch(() => ''),
    drain: async (timeoutMs = 30_000) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const { stdout } = await run('/usr/sbin/postqueue', ['-c', etc, '-j'], { timeout: 10_000 }).catch(() => ({ stdout: 'x' }));
        if (stdout.trim() === '') return;
        if (Date.now() > until) throw new Error(`the Postfix queue did not drain:\n${stdout}\n${await handle.log()}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    stop: async () => {
      await run('/usr/sbin/postfix', ['-c', etc, 'stop'], { timeout: 60_000 }).catch(() => undefined);
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
  // Wait for smtpd.
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(smtpPort, '127.0.0.1');
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => resolve(false));
    });
    if (ok) return handle;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Postfix did not listen on ${smtpPort}:\n${await handle.log()}`);
}
