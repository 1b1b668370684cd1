/**
 * The database goes away under a running `poplar serve` on the PostgreSQL
 * store (a private cluster stopped with `pg_ctl stop -m fast`, which cuts
 * every connection) and comes back:
 *
 * - while it is down, clients get `[SYS/TEMP]` (logins, QUIT with marks)
 *   and LMTP gets a 4xx reply: nothing is answered +OK/250 that did not happen;
 * - a QUIT that could not UPDATE removes nothing;
 * - once it is back, service returns by itself, without restarting Poplar:
 *   logins, the messages delivered before, new deliveries.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lmtpDeliver } from '../../tools/soak/lmtp-client.js';
import type { ServeProcess } from '../helpers/cli.js';
import { lacksPeer } from '../helpers/peers.js';
import { postgresBinDir, privatePostgres, type PrivatePostgres } from '../helpers/private-postgres.js';
import { Wire } from '../helpers/wire.js';
import { serveWithLmtp } from './lmtp-serve.js';

const BIN = postgresBinDir();
const PG_CTL = { name: 'initdb and pg_ctl (a private PostgreSQL cluster)', install: 'apt-get install postgresql' };

function message(i: number): string {
  return `Subject: outage ${i}\r\nMessage-ID: <outage-${i}@test>\r\n\r\nbody of message ${i}\r\n.a line with a dot\r\n`;
}

async function login(port: number, user: string): Promise<{ w: Wire; reply: string }> {
  const w = await Wire.connect(port);
  await w.line();
  await w.cmd(`USER ${user}`);
  return { w, reply: await w.cmd('PASS secret') };
}

/** Retries a login until it succeeds (the database is back) or `ms` pass; the replies seen meanwhile. */
async function loginWhenBack(port: number, user: string, ms: number): Promise<{ w: Wire; seen: string[] }> {
  const seen: string[] = [];
  const deadline = Date.now() + ms;
  for (;;) {
    const { w, reply } = await login(port, user);
    if (reply.startsWith('+OK')) return { w, seen };
    seen.push(reply);
    w.close();
    if (Date.now() > deadline) throw new Error(`no login within ${ms} ms: ${seen.slice(-3).join(' | ')}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe.skipIf(lacksPeer(PG_CTL, BIN !== null))('PostgreSQL stopped and started under a running server', () => {
  let pg: PrivatePostgres;
  let dir: string;
  let srv: ServeProcess;
  let lmtpPort = 0;

  beforeAll(async () => {
    pg = await privatePostgres(BIN!);
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-pg-outage-'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\nbob:{PLAIN}secret\n', { mode: 0o600 });
    ({ srv, lmtpPort } = await serveWithLmtp({
      dir,
      rest: [
        '[auth]',
        `users = ${JSON.stringify(path.join(dir, 'users'))}`,
        '[store]',
        'type = "postgres"',
        '[store.postgres]',
        `url = "${pg.url}"`,
        'connect_timeout = 2',
        'query_timeout = 5',
        'lease_timeout = 6',
      ],
    }));
  }, 120_000);

  afterAll(async () => {
    await srv?.stop();
    await pg?.destroy();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('answers [SYS/TEMP] and 4xx while it is down, loses nothing, and serves again by itself when it is back', async () => {
    for (let i = 1; i <= 3; i++) expect(await lmtpDeliver(lmtpPort, ['alice'], message(i))).toEqual(['delivered']);
    expect(await lmtpDeliver(lmtpPort, ['bob'], message(10))).toEqual(['delivered']);

    // alice marks a message and waits; bob is logged in too.
    const a = await login(srv.plainPort, 'alice');
    expect(a.reply).toMatch(/^\+OK/);
    expect(await a.w.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect(await a.w.cmd('DELE 1')).toMatch(/^\+OK/);
    const b = await login(srv.plainPort, 'bob');
    expect(b.reply).toMatch(/^\+OK/);

    await pg.stop();

    // QUIT with a mark cannot UPDATE: [SYS/TEMP], and (below) nothing was removed.
    expect(await a.w.cmd('QUIT')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    a.w.close();
    // bob's message body lives in the database: no +OK followed by a broken message.
    b.w.send('RETR 1');
    const retr = await b.w.line().catch(() => 'closed');
    expect(retr).not.toMatch(/^\+OK/);
    b.w.close();
    // A new login cannot open the maildrop.
    const c = await login(srv.plainPort, 'bob');
    expect(c.reply).toMatch(/^-ERR \[SYS\/TEMP\]/);
    c.w.close();
    // A delivery gets a temporary failure, never 250.
    const during = await lmtpDeliver(lmtpPort, ['alice'], message(4));
    expect(during).toEqual(['refused']);
    expect(srv.child.exitCode).toBeNull();

    await pg.start();

    // Service returns without a restart; alice may wait for her lease to time out (6 s here).
    const back = await loginWhenBack(srv.plainPort, 'alice', 30_000);
    for (const r of back.seen) expect(r).toMatch(/^-ERR \[(SYS\/TEMP|IN-USE)\]/);
    const uidl = await back.w.cmdLines('UIDL');
    expect(uidl.lines).toHaveLength(3);
    const body = await back.w.cmdMulti('RETR 1');
    expect(body.body.toString('latin1')).toContain('Message-ID: <outage-1@test>');
    expect(await back.w.cmd('QUIT')).toMatch(/^\+OK/);
    back.w.close();

    // Deliveries work again, and the one refused during the outage was not stored.
    expect(await lmtpDeliver(lmtpPort, ['alice'], message(5))).toEqual(['delivered']);
    const again = await loginWhenBack(srv.plainPort, 'alice', 10_000);
    const all = await again.w.cmdLines('UIDL');
    expect(all.lines).toHaveLength(4);
    const bodies: string[] = [];
    for (let n = 1; n <= 4; n++) bodies.push((await again.w.cmdMulti(`RETR ${n}`)).body.toString('latin1'));
    expect(bodies.map((t) => /Message-ID: <(outage-\d+)@test>/.exec(t)?.[1])).toEqual(['outage-1', 'outage-2', 'outage-3', 'outage-5']);
    expect(await again.w.cmd('QUIT')).toMatch(/^\+OK/);
    again.w.close();

    const bobBack = await loginWhenBack(srv.plainPort, 'bob', 30_000);
    expect((await bobBack.w.cmdMulti('RETR 1')).body.toString('latin1')).toContain('outage-10');
    bobBack.w.close();
    expect(srv.child.exitCode).toBeNull();
  }, 120_000);
});
