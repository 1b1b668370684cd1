/**
 * `poplar serve` SIGKILLed at random moments under load, many times, on
 * each store: clients log in, retrieve, DELE and QUIT while LMTP deliveries
 * arrive; at a random moment (0–1.2 s after the first delivery of the
 * round) the server is killed and started again on
 * the same data. At the end:
 *
 * - no message delivered with 250 is lost;
 * - none whose DELE was followed by a QUIT answered +OK comes back;
 * - none is there twice, and every one is byte-exact;
 * - every maildrop opens again: at once on Maildir (the lock dies with the
 *   process), within the lease timeout on PostgreSQL.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { lmtpDeliver } from '../../tools/soak/lmtp-client.js';
import { unstuff, Wire } from '../helpers/wire.js';
import { serveWithLmtp } from './lmtp-serve.js';
import type { ServeProcess } from '../helpers/cli.js';
import { createSchema, dropSchema, POSTGRES_CONNECTION } from '../helpers/lmtp.js';

const USERS = ['k1', 'k2', 'k3', 'k4'];
const CYCLES = 6;
const LEASE_TIMEOUT_S = 3;

const bodyOf = (id: number): string => `${Array.from({ length: 1 + (id % 40) }, (_, i) => `${i % 5 === 0 ? '.' : ''}line ${i} of ${id}`).join('\r\n')}\r\n`;
const hash = (s: string): string => createHash('sha256').update(s, 'latin1').digest('hex');
const messageOf = (id: number): string => `Message-ID: <kill-${id}@test>\r\nX-Kill-Id: ${id}\r\n\r\n${bodyOf(id)}`;

/** The id of a retrieved message after checking its body, or throws. */
function identify(raw: Buffer): number {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const id = Number(/^X-Kill-Id: (\d+)\r$/m.exec(text.slice(0, end + 2))?.[1]);
  if (!(id > 0) || hash(text.slice(end + 4)) !== hash(bodyOf(id))) throw new Error(`not byte-exact: ${text.slice(0, 200)}`);
  return id;
}

/** The last refusal a login got (for the message when a maildrop stays locked). */
let lastRefusal = '';
async function open(port: number, user: string): Promise<Wire | null> {
  const w = await Wire.connect(port);
  await w.line();
  await w.cmd(`USER ${user}`);
  const r = await w.cmd('PASS secret');
  if (r.startsWith('+OK')) return w;
  w.close();
  lastRefusal = r;
  if (/\[(IN-USE|SYS\/TEMP)\]/.test(r)) return null;
  throw new Error(`login of ${user}: ${r}`);
}

for (const store of ['maildir', 'postgres'] as const) {
  describe(`SIGKILL under load, ${CYCLES} times (${store})`, () => {
    let dir: string;
    let schema: string | undefined;
    afterAll(async () => {
      if (schema !== undefined) await dropSchema(schema);
      if (dir !== undefined) await fs.rm(dir, { recursive: true, force: true });
    });

    it('loses nothing, resurrects nothing, duplicates nothing; every maildrop opens again', async () => {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), `poplar-kill-${store}-`));
      if (store === 'postgres') schema = await createSchema();
      await fs.writeFile(path.join(dir, 'users'), USERS.map((u) => `${u}:{PLAIN}secret\n`).join(''), { mode: 0o600 });
      const url = `postgres://${POSTGRES_CONNECTION.user}@${POSTGRES_CONNECTION.host}:${POSTGRES_CONNECTION.port}/${POSTGRES_CONNECTION.database}`;
      // Started again on the same data after every kill (the config is rewritten the same each time).
      const start = async (): Promise<{ srv: ServeProcess; lmtp: number }> => {
        const { srv, lmtpPort } = await serveWithLmtp({
          dir,
          rest: [
            '[auth]',
            `users = ${JSON.stringify(path.join(dir, 'users'))}`,
            '[store]',
            `type = "${store}"`,
            ...(store === 'postgres' ? ['[store.postgres]', `url = "${url}"`, `schema = "${schema}"`, `lease_timeout = ${LEASE_TIMEOUT_S}`] : []),
          ],
        });
        return { srv, lmtp: lmtpPort };
      };

      const delivered = new Set<string>();
      /** Delivered, or maybe (the server died after DATA): never twice, maybe not at all. */
      const maybeDelivered = new Set<string>();
      const removed = new Set<string>();
      const maybeRemoved = new Set<string>();
      let nextId = 1;
      let kills = 0;

      for (let cycle = 0; cycle < CYCLES; cycle++) {
        const { srv, lmtp } = await start();
        let stop = false;
        let firstDelivery: () => void = () => undefined;
        const delivering = new Promise<void>((r) => (firstDelivery = r));
        const deliverer = (async () => {
          while (!stop) {
            const id = nextId++;
            const user = USERS[id % USERS.length]!;
            const [o] = await lmtpDeliver(lmtp, [user], messageOf(id), 5_000).catch(() => ['unknown' as const]);
            if (o === 'delivered') {
              delivered.add(`${user}/${id}`);
              firstDelivery();
            }
            else if (o === 'unknown') maybeDelivered.add(`${user}/${id}`);
          }
        })();
        const client = async (user: string): Promise<void> => {
          while (!stop) {
            const w = await open(srv.plainPort, user).catch(() => null);
            if (w === null) {
              await new Promise((r) => setTimeout(r, 20));
              continue;
            }
            const keys: string[] = [];
            try {
              w.send('UIDL');
              const list = await w.multiLines(5_000);
              for (const line of list.lines.slice(0, 3)) {
                const n = line.split(' ')[0]!;
                w.send(`RETR ${n}`);
                const m = await w.multi(5_000);
                if (!m.status.startsWith('+OK')) throw new Error(m.status);
                const key = `${user}/${identify(unstuff(m.body))}`;
                if ((await w.cmd(`DELE ${n}`, 5_000)).startsWith('+OK')) keys.push(key);
              }
              w.send('QUIT');
              for (const k of keys) maybeRemoved.add(k);
              const q = await w.line(5_000);
              if (q.startsWith('+OK')) for (const k of keys) removed.add(k);
            } catch (e) {
              // The kill cuts sessions; anything else is a failure.
              if (!/closed|in time/.test((e as Error).message)) throw e;
            } finally {
              w.close();
            }
          }
        };
        const clients = USERS.map((u) => client(u));
        // The kill comes at a random moment once the load is flowing (a delivery went through).
        await Promise.race([delivering, new Promise((r) => setTimeout(r, 10_000))]);
        await new Promise((r) => setTimeout(r, Math.random() * 1200));
        srv.child.kill('SIGKILL');
        kills++;
        await srv.stop();
        stop = true;
        await Promise.all([deliverer, ...clients]);
      }
      expect(kills).toBe(CYCLES);

      // Every maildrop, read to the end by a fresh server.
      const { srv } = await start();
      try {
        const present = new Map<string, number>();
        for (const user of USERS) {
          let w: Wire | null = null;
          const deadline = Date.now() + (store === 'postgres' ? LEASE_TIMEOUT_S * 1000 + 5_000 : 5_000);
          while (w === null) {
            w = await open(srv.plainPort, user);
            if (w === null) {
              expect(Date.now(), `${user} still locked: ${lastRefusal}`).toBeLessThan(deadline);
              await new Promise((r) => setTimeout(r, 200));
            }
          }
          w.send('UIDL');
          for (const line of (await w.multiLines()).lines) {
            w.send(`RETR ${line.split(' ')[0]}`);
            const key = `${user}/${identify(unstuff((await w.multi()).body))}`;
            present.set(key, (present.get(key) ?? 0) + 1);
          }
          expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
          w.close();
        }
        const lost = [...delivered].filter((k) => !present.has(k) && !maybeRemoved.has(k));
        const resurrected = [...removed].filter((k) => present.has(k));
        const twice = [...present].filter(([, n]) => n > 1).map(([k]) => k);
        const phantoms = [...present.keys()].filter((k) => !delivered.has(k) && !maybeDelivered.has(k));
        expect({ lost, resurrected, twice, phantoms }).toEqual({ lost: [], resurrected: [], twice: [], phantoms: [] });
        // The run did something worth checking.
        expect(delivered.size).toBeGreaterThanOrEqual(CYCLES);
        expect(removed.size).toBeGreaterThan(0);
      } finally {
        await srv.stop();
      }
    }, 180_000);
  });
}
