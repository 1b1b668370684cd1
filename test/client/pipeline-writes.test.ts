/**
 * Pipelined requests leave in few writes: retrEach() asks for a window of
 * RETRs at once and refills it by halves, and requests queued in the same
 * tick go out in one write, so the server reads many commands per segment
 * instead of one segment (and one wake-up) per message.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Pop3Client } from '../../src/client/index.js';

let server: net.Server | undefined;
afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

/** A minimal server that answers every RETR with a tiny message and counts the reads that carried RETRs. */
async function start(): Promise<{ port: number; retrReads: number[] }> {
  const retrReads: number[] = [];
  server = net.createServer((s) => {
    let buf = '';
    s.write('+OK ready\r\n');
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      const lines = buf.split('\r\n');
      buf = lines.pop()!;
      const retrs = lines.filter((l) => l.startsWith('RETR ')).length;
      if (retrs > 0) retrReads.push(retrs);
      let out = '';
      for (const l of lines) {
        const cmd = l.split(' ')[0]!.toUpperCase();
        if (cmd === 'CAPA') out += '+OK\r\nUSER\r\nPIPELINING\r\nUIDL\r\n.\r\n';
        else if (cmd === 'RETR') out += `+OK\r\nSubject: ${l.slice(5)}\r\n\r\nbody\r\n.\r\n`;
        else if (cmd === 'QUIT') out += '+OK bye\r\n';
        else out += '+OK\r\n';
      }
      s.write(out);
      if (lines.some((l) => l.toUpperCase() === 'QUIT')) s.end();
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
  return { port: (server!.address() as net.AddressInfo).port, retrReads };
}

describe('pipelined writes', () => {
  it('retrEach of 400 messages: the server reads its RETRs many to a read, not one by one', async () => {
    const { port, retrReads } = await start();
    const c = await Pop3Client.connect({ host: '127.0.0.1', port, tls: 'none' });
    await c.login('u', 'p');
    const seen: number[] = [];
    await c.retrEach(Array.from({ length: 400 }, (_, i) => i + 1), async (n, m) => {
      for await (const _ of m) void _;
      seen.push(n);
    });
    await c.quit();
    expect(seen).toHaveLength(400);
    const total = retrReads.reduce((a, b) => a + b, 0);
    expect(total).toBe(400);
    // One request per write would give about 400 reads; batches of a half window give about 25.
    expect(retrReads.length).toBeLessThanOrEqual(60);
    expect(retrReads[0]).toBeGreaterThanOrEqual(16);
  });
});
