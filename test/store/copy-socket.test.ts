/**
 * The store's connections read into one buffer of their own and take COPY
 * output straight from it (copy-socket.ts): the bytes come out as sent
 * whatever sizes the reads cut them into, everything that is not COPY's
 * reaches node-postgres as before, an error in the middle of a COPY fails
 * that read only, and the connection serves ordinary statements afterwards.
 */
import net from 'node:net';
import pg from 'pg';
import type { Connection } from 'pg';
import { describe, expect, it } from 'vitest';
import { CopyOut, storeSocket, TappedSocket } from '../../src/store/postgres/copy-socket.js';
import { POSTGRES_CONNECTION, lacksPostgres } from '../helpers/peers.js';

const PG_DOWN = await lacksPostgres();

function message(type: string, payload: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeInt32BE(payload.length + 4, 1);
  return Buffer.concat([head, payload]);
}

/** A server that sends `bytes` in pieces of `size`, each in a write of its own, once a client connects. */
async function trickle(bytes: Buffer, size: number): Promise<{ port: number; close: () => void }> {
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    let at = 0;
    const next = (): void => {
      if (at >= bytes.length) return;
      s.write(bytes.subarray(at, (at += size)), () => setImmediate(next));
    };
    next();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, close: () => server.close() };
}

describe('CopyOut on a TappedSocket (framing)', () => {
  // CopyOutResponse, a notice, two CopyData, CopyDone, then what node-postgres must see.
  const rowA = Buffer.from('first row: Subject: x\r\n\r\n.dot\r\n', 'latin1');
  const rowB = Buffer.alloc(70_000, 0x61);
  const after = Buffer.concat([message('C', Buffer.from('COPY 2\0')), message('Z', Buffer.from('I'))]);
  const wire = Buffer.concat([
    message('H', Buffer.from([0, 0, 0])),
    message('N', Buffer.from('notice\0')),
    message('d', rowA),
    message('d', rowB),
    message('c', Buffer.alloc(0)),
    after,
  ]);

  for (const size of [1, 7, 4096, wire.length]) {
    it(`takes the COPY messages and hands on the rest, in reads of ${size} bytes`, async () => {
      const server = await trickle(wire, size);
      const socket = new TappedSocket();
      const got: Buffer[] = [];
      const passed: Buffer[] = [];
      socket.on('data', (d: Buffer) => passed.push(d));
      const copy = new CopyOut('COPY x TO STDOUT', (part) => got.push(Buffer.from(part)));
      const sent: string[] = [];
      const connection = { stream: socket, query: (text: string) => sent.push(text) } as unknown as Connection;
      await new Promise<void>((r) => socket.connect(server.port, '127.0.0.1', r));
      expect(copy.submit(connection)).toBeUndefined();
      expect(sent).toEqual(['COPY x TO STDOUT']);
      const want = after.length;
      while (Buffer.concat(passed).length < want) await new Promise((r) => setTimeout(r, 5));
      expect(Buffer.concat(got).equals(Buffer.concat([rowA, rowB]))).toBe(true);
      expect(Buffer.concat(passed).equals(after)).toBe(true);
      copy.handleReadyForQuery();
      await expect(copy.done).resolves.toBeUndefined();
      socket.destroy();
      server.close();
    });
  }

  it('hands an ErrorResponse, and what follows it, on to node-postgres', async () => {
    const error = message('E', Buffer.from('SERROR\0Mboom\0\0'));
    const tail = Buffer.concat([error, message('Z', Buffer.from('I'))]);
    const server = await trickle(Buffer.concat([message('H', Buffer.from([0, 0, 0])), message('d', Buffer.from('part')), tail]), 3);
    const socket = new TappedSocket();
    const passed: Buffer[] = [];
    socket.on('data', (d: Buffer) => passed.push(d));
    const copy = new CopyOut('COPY x TO STDOUT', () => undefined);
    await new Promise<void>((r) => socket.connect(server.port, '127.0.0.1', r));
    copy.submit({ stream: socket, query: () => undefined } as unknown as Connection);
    while (Buffer.concat(passed).length < tail.length) await new Promise((r) => setTimeout(r, 5));
    expect(Buffer.concat(passed).equals(tail)).toBe(true);
    copy.handleError(new Error('boom'));
    await expect(copy.done).rejects.toThrow('boom');
    socket.destroy();
    server.close();
  });
});

describe('CopyOut on a TappedSocket (hostile server)', () => {
  it('random bytes after the CopyOutResponse never crash the process nor reach the sink beyond what was sent', async () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 30; round++) {
      // Messages of COPY's types with random lengths (some far longer than what follows), or plain garbage.
      const parts: Buffer[] = [message('H', Buffer.from([0, 0, 0]))];
      for (let k = 0; k < 6; k++) {
        if (rand(3) === 0) parts.push(Buffer.from(Array.from({ length: rand(40) }, () => rand(256))));
        else {
          const head = Buffer.alloc(5);
          head.write('dcNSA'[rand(5)]!, 0, 'latin1');
          head.writeInt32BE(rand(4) === 0 ? 0x7fffffff - rand(100) : 4 + rand(50), 1);
          parts.push(head, Buffer.from(Array.from({ length: rand(50) }, () => rand(256))));
        }
      }
      const wire = Buffer.concat(parts);
      const server = await trickle(wire, 1 + rand(9));
      const socket = new TappedSocket();
      socket.on('error', () => undefined);
      let sunk = 0;
      let passed = 0;
      socket.on('data', (d: Buffer) => (passed += d.length));
      const copy = new CopyOut('COPY x TO STDOUT', (p) => (sunk += p.length));
      await new Promise<void>((r) => socket.connect(server.port, '127.0.0.1', r));
      copy.submit({ stream: socket, query: () => undefined } as unknown as Connection);
      await new Promise((r) => setTimeout(r, 30));
      expect(sunk + passed).toBeLessThanOrEqual(wire.length);
      copy.abandon(new Error('stop'));
      await expect(copy.done).rejects.toThrow();
      socket.destroy();
      server.close();
    }
  });
});

describe.skipIf(PG_DOWN)('CopyOut against PostgreSQL', () => {
  const tappedPool = (): pg.Pool => {
    const pool = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1, stream: storeSocket as unknown as NonNullable<pg.PoolConfig['stream']> });
    pool.on('error', () => undefined);
    return pool;
  };

  it('reads a COPY of a few megabytes byte for byte, then the connection answers ordinary statements', async () => {
    const pool = tappedPool();
    try {
      const client = await pool.connect();
      try {
        expect((client as unknown as { connection: { stream: unknown } }).connection.stream).toBeInstanceOf(TappedSocket);
        const got: Buffer[] = [];
        const copy = new CopyOut(`COPY (SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 3000) g) TO STDOUT`, (p) => got.push(Buffer.from(p)));
        void client.query(copy as unknown as pg.QueryConfig);
        await copy.done;
        const { rows } = await client.query<{ t: string }>(`SELECT string_agg(g || E'\\t' || repeat(md5(g::text), 40), E'\\n' ORDER BY g) || E'\\n' AS t FROM generate_series(1, 3000) g`);
        expect(Buffer.concat(got).toString()).toBe(rows[0]!.t);
        expect((await client.query<{ n: number }>('SELECT 41 + 1 AS n')).rows[0]!.n).toBe(42);
      } finally {
        client.release();
      }
    } finally {
      await pool.end();
    }
  });

  it('an error in the middle of a COPY fails it, and the same connection serves the next statement', async () => {
    const pool = tappedPool();
    try {
      const client = await pool.connect();
      try {
        let octets = 0;
        // Rows go out until generate_series reaches the division by zero.
        const copy = new CopyOut(`COPY (SELECT g, CASE WHEN g < 40000 THEN repeat('x', 100) ELSE (1 / (g - g))::text END FROM generate_series(1, 50000) g) TO STDOUT`, (p) => {
          octets += p.length;
        });
        void client.query(copy as unknown as pg.QueryConfig);
        await expect(copy.done).rejects.toThrow(/division by zero/);
        expect(octets).toBeGreaterThan(100_000);
        expect((await client.query<{ n: number }>('SELECT 6 * 7 AS n')).rows[0]!.n).toBe(42);
      } finally {
        client.release();
      }
    } finally {
      await pool.end();
    }
  });

  it('a connection with TLS asked for gets an ordinary socket (its bodies are read through pg-copy-streams)', () => {
    expect(storeSocket({ ssl: { rejectUnauthorized: true } })).not.toBeInstanceOf(TappedSocket);
    expect(storeSocket({ ssl: false })).toBeInstanceOf(TappedSocket);
    expect(storeSocket({})).toBeInstanceOf(TappedSocket);
  });
});
