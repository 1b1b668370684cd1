/**
 * The wall clock jumping forward and back under a running `poplar serve`
 * (libfaketime from Debian's `faketime`, its offset read from a file the test
 * rewrites; the monotonic clock is left alone, as an NTP step leaves it):
 *
 * - an open session outlives a jump of a day either way (timeouts run on
 *   the monotonic clock);
 * - LOGIN-DELAY never makes a user wait longer than the delay, even when the
 *   clock went back past the last login;
 * - EXPIRE removes what is older than its limit after a jump forward, and
 *   nothing after a jump back;
 * - on PostgreSQL the maildrop lease is timed by the database, so a jump on
 *   the node neither frees a held maildrop nor breaks its UPDATE.
 */
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { createSchema, dropSchema, POSTGRES_CONNECTION } from '../helpers/lmtp.js';
import { lacksPeer } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

const LIB = ['/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1', '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1'].find((f) => existsSync(f));
const FAKETIME = { name: 'libfaketime', install: 'apt-get install faketime' };

let dir: string;
let clockFile: string;
const servers: ServeProcess[] = [];

/** Sets the server's clock offset (libfaketime syntax: "+2d", "-1d", "+0"); the server reads it at every clock call. */
async function jump(offset: string): Promise<void> {
  await fs.writeFile(clockFile, `${offset}\n`);
  await new Promise((r) => setTimeout(r, 200));
}

async function serve(config: string[]): Promise<ServeProcess> {
  await fs.writeFile(clockFile, '+0\n');
  const file = path.join(dir, `poplar-${servers.length}.toml`);
  await fs.writeFile(file, [`data_dir = ${JSON.stringify(dir)}`, 'log_format = "json"', ...config, ''].join('\n'));
  const srv = await startServe(['--config', file], {
    cwd: dir,
    expectListeners: 1,
    // No cache: a jump takes effect at the server's next clock call, not up to a second later.
    env: { LD_PRELOAD: LIB!, FAKETIME_TIMESTAMP_FILE: clockFile, FAKETIME_NO_CACHE: '1', DONT_FAKE_MONOTONIC: '1' },
  });
  servers.push(srv);
  return srv;
}

async function login(port: number, user = 'alice'): Promise<{ w: Wire; reply: string }> {
  const w = await Wire.connect(port);
  await w.line();
  await w.cmd(`USER ${user}`);
  return { w, reply: await w.cmd('PASS secret') };
}

async function deliver(user: string, n: number): Promise<void> {
  const box = path.join(dir, 'mail', user);
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub), { recursive: true });
  for (let i = 1; i <= n; i++) await fs.writeFile(path.join(box, 'new', `17960000${i}.M${i}P7.clock`), `Subject: ${i}\n\nbody ${i}\n`);
}

const base = (port: number): string[] => [
  '[server]',
  'listen = ["127.0.0.1:0"]',
  'listen_tls = []',
  ...(port > 0 ? [] : []),
];

describe.skipIf(lacksPeer(FAKETIME, LIB !== undefined))('the wall clock jumping under a running server', () => {
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-clock-'));
    clockFile = path.join(dir, 'faketime');
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\nbob:{PLAIN}secret\n', { mode: 0o600 });
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.stop()));
  });
  afterAll(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  const store = (): string[] => ['[auth]', `users = ${JSON.stringify(path.join(dir, 'users'))}`, '[store]', `maildir_root = ${JSON.stringify(path.join(dir, 'mail'))}`];

  it('an open session outlives a jump of a day forward and back', async () => {
    await deliver('alice', 1);
    const srv = await serve([...base(0), ...store()]);
    const { w, reply } = await login(srv.plainPort);
    expect(reply).toMatch(/^\+OK/);
    await jump('+1d');
    expect(await w.cmd('NOOP')).toMatch(/^\+OK/);
    await jump('-1d');
    expect(await w.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    w.close();
  });

  it('LOGIN-DELAY: never a longer wait than the delay, even after the clock went back past the last login', async () => {
    const srv = await serve([...base(0), 'login_delay = 2', ...store()]);
    const first = await login(srv.plainPort);
    expect(first.reply).toMatch(/^\+OK/);
    expect(await first.w.cmd('QUIT')).toMatch(/^\+OK/);
    const early = await login(srv.plainPort);
    expect(early.reply).toMatch(/^-ERR \[LOGIN-DELAY\]/);
    early.w.close();
    // Forward: the delay has long passed.
    await jump('+1h');
    const later = await login(srv.plainPort);
    expect(later.reply).toMatch(/^\+OK/);
    expect(await later.w.cmd('QUIT')).toMatch(/^\+OK/);
    // Back a day: the last login now lies in the future. After the delay (2 s) the user gets in.
    await jump('-1d');
    await new Promise((r) => setTimeout(r, 2_200));
    const after = await login(srv.plainPort);
    expect(after.reply).toMatch(/^\+OK/);
    after.w.close();
  });

  it('EXPIRE: a jump forward expires what was retrieved; a jump back expires nothing', async () => {
    await deliver('bob', 3);
    const srv = await serve([...base(0), 'expire = 1', ...store()]);
    const s = await login(srv.plainPort, 'bob');
    expect(s.reply).toMatch(/^\+OK/);
    expect(await s.w.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect((await s.w.cmdMulti('RETR 1')).status).toMatch(/^\+OK/);
    expect(await s.w.cmd('QUIT')).toMatch(/^\+OK/);
    s.w.close();

    // Back ten days: message 1 was retrieved "in the future"; nothing expires.
    await jump('-10d');
    const back = await login(srv.plainPort, 'bob');
    expect(await back.w.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect(await back.w.cmd('QUIT')).toMatch(/^\+OK/);
    back.w.close();
    const again = await login(srv.plainPort, 'bob');
    expect(await again.w.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect(await again.w.cmd('QUIT')).toMatch(/^\+OK/);
    again.w.close();

    // Forward two days: message 1 (retrieved two days ago by this clock) goes at the next UPDATE, the others stay.
    await jump('+2d');
    const fwd = await login(srv.plainPort, 'bob');
    expect(await fwd.w.cmd('QUIT')).toMatch(/^\+OK/);
    fwd.w.close();
    const last = await login(srv.plainPort, 'bob');
    expect(await last.w.cmd('STAT')).toMatch(/^\+OK 2 /);
    last.w.close();
  });

  it('PostgreSQL: a jump on the node neither frees a held maildrop nor breaks its UPDATE', async () => {
    const schema = await createSchema();
    try {
      const url = `postgres://${POSTGRES_CONNECTION.user}@${POSTGRES_CONNECTION.host}:${POSTGRES_CONNECTION.port}/${POSTGRES_CONNECTION.database}`;
      const srv = await serve([
        ...base(0),
        '[auth]',
        `users = ${JSON.stringify(path.join(dir, 'users'))}`,
        '[store]',
        'type = "postgres"',
        '[store.postgres]',
        `url = "${url}"`,
        `schema = "${schema}"`,
        'lease_timeout = 3',
        '[lmtp]',
        'listen = ["127.0.0.1:0"]',
      ]);
      const line = srv.stderr().split('\n').find((l) => l.includes('lmtp listening')) ?? '';
      const lmtp = Number(/"lmtp":"127\.0\.0\.1:(\d+)"/.exec(line)?.[1]);
      const { lmtpDeliver } = await import('../../tools/soak/lmtp-client.js');
      for (let i = 0; i < 2; i++) expect(await lmtpDeliver(lmtp, ['alice'], `Subject: pg ${i}\r\n\r\nbody\r\n`)).toEqual(['delivered']);

      const holder = await login(srv.plainPort);
      expect(holder.reply).toMatch(/^\+OK/);
      expect(await holder.w.cmd('DELE 1')).toMatch(/^\+OK/);
      await jump('+1d');
      // Longer than the lease timeout: the holder renews by the database's clock, so the maildrop stays held.
      await new Promise((r) => setTimeout(r, 4_000));
      const other = await login(srv.plainPort);
      expect(other.reply).toMatch(/^-ERR \[IN-USE\]/);
      other.w.close();
      await jump('-2d');
      expect(await holder.w.cmd('QUIT')).toMatch(/^\+OK/);
      holder.w.close();
      const after = await login(srv.plainPort);
      expect(after.reply).toMatch(/^\+OK/);
      expect(await after.w.cmd('STAT')).toMatch(/^\+OK 1 /);
      after.w.close();
    } finally {
      await Promise.all(servers.splice(0).map((s) => s.stop()));
      await dropSchema(schema);
    }
  });
});
