/**
 * SIGKILL of `poplar serve` at random moments while LMTP clients deliver
 * as fast as they can: every message a client got `250` for is in the store
 * exactly once after a restart, and every message POP3 shows is whole (one
 * the clients sent, byte for byte). Messages whose reply was lost may be
 * there or not, at most once. On both stores, with durability on.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSchema, dropSchema, retrieveAll, startLmtpPoplar, type LmtpPoplar, type StoreKind } from '../helpers/lmtp.js';
import { lacksPostgres } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

const PG_DOWN = await lacksPostgres();
const ROUNDS = 4;
const CLIENTS = 6;

/** A message that says who it is, with a body long enough to be written in more than one piece. */
function body(id: string): string {
  const filler = Array.from({ length: 200 }, (_, i) => `${id} line ${i} ${'x'.repeat(60)}`).join('\r\n');
  return `Subject: ${id}\r\nMessage-ID: <${id}@crash.test>\r\n\r\n${filler}\r\n`;
}

/** One LMTP client: delivers messages one after another until the connection dies; ids that got 250. */
async function client(port: number, prefix: string, acked: Set<string>, sent: Set<string>): Promise<void> {
  let w: Wire;
  try {
    w = await Wire.connect(port);
    await w.line();
    w.send('LHLO crash.test');
    while ((await w.line()).startsWith('250-'));
  } catch {
    return;
  }
  try {
    for (let n = 0; ; n++) {
      const id = `${prefix}-${n}`;
      if (!(await w.cmd('MAIL FROM:<load@crash.test>')).startsWith('250')) return;
      if (!(await w.cmd('RCPT TO:<alice>')).startsWith('250')) return;
      if (!(await w.cmd('DATA')).startsWith('354')) return;
      sent.add(id);
      w.sendRaw(`${body(id)}.\r\n`);
      const reply = await w.line();
      if (reply.startsWith('250 ')) acked.add(id);
      else return;
    }
  } catch {
    // the server was killed
  } finally {
    w.close();
  }
}

for (const kind of ['maildir', 'postgres'] as StoreKind[]) {
  describe.skipIf(kind === 'postgres' && PG_DOWN)(`SIGKILL under LMTP load (${kind})`, () => {
    let dir: string;
    let schema: string | undefined;
    let current: LmtpPoplar | undefined;
    afterAll(async () => {
      await current?.serve.stop('SIGKILL');
      if (schema !== undefined) await dropSchema(schema);
      if (dir !== undefined) await fs.rm(dir, { recursive: true, force: true });
    });

    it('keeps every acknowledged message exactly once and shows no partial message', async () => {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-crash-'));
      schema = kind === 'postgres' ? await createSchema() : undefined;
      const acked = new Set<string>();
      const sent = new Set<string>();
      const start = (): Promise<LmtpPoplar> => startLmtpPoplar(kind, [{ name: 'alice' }], { dir, ...(schema !== undefined ? { schema } : {}) });
      for (let round = 0; round < ROUNDS; round++) {
        current = await start();
        const port = current.lmtpPort;
        const load = Array.from({ length: CLIENTS }, (_, c) => client(port, `r${round}c${c}`, acked, sent));
        await new Promise((r) => setTimeout(r, 300 + Math.random() * 900));
        await current.serve.stop('SIGKILL');
        await Promise.all(load);
      }
      current = await start();
      const got = await retrieveAll(current.pop3Port, 'alice');
      const seen = new Map<string, number>();
      for (const m of got) {
        const id = /^Subject: (\S+)\r\n/m.exec(m.toString())?.[1];
        expect(id, 'a message without its header').toBeDefined();
        expect(m.toString(), `message ${id} is not whole`).toBe(`Return-Path: <load@crash.test>\r\nDelivered-To: alice\r\n${body(id!)}`);
        seen.set(id!, (seen.get(id!) ?? 0) + 1);
      }
      expect(acked.size).toBeGreaterThan(20);
      for (const id of acked) expect(seen.get(id), `acknowledged ${id}`).toBe(1);
      for (const [id, n] of seen) {
        expect(sent.has(id)).toBe(true);
        expect(n).toBe(1);
      }
      if (kind === 'maildir') {
        // What a crash left in tmp/ is not a message: POP3 never showed it (checked above).
        const tmp = await fs.readdir(path.join(dir, 'mail', 'alice', 'tmp'));
        expect(tmp.length).toBeLessThanOrEqual(CLIENTS * ROUNDS);
      }
    }, 180_000);
  });
}
