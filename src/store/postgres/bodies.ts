/**
 * Message bodies in chunks: writing one (inside the caller's transaction),
 * reading one back as a stream with backpressure, and the sweep that removes
 * bodies no message refers to.
 *
 * Chunks are CHUNK_SIZE bytes (the last one shorter), stored uncompressed
 * out of line. A reader fetches CHUNKS_PER_QUERY chunks per query, taking a
 * pool client for that query only, and asks for more only when the consumer
 * (the socket, through the dot-stuffer) has taken what it had: a 50 MB RETR
 * holds about a megabyte in memory, and no connection while the client reads.
 *
 * Identical bodies are shared within one mailbox: a delivery whose SHA-256
 * and length match a body already there refers to it and drops its own copy.
 * A sweep takes the mailbox row lock, as every delivery does before it looks
 * for a body to share, so a body is never removed while a delivery is about
 * to refer to it.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Connection, Pool, PoolClient, QueryConfig } from 'pg';
import copyStreams from 'pg-copy-streams';
import { MessageUnavailable } from '../../errors.js';
import { CrlfSizeCounter } from '../../protocol/message-size.js';
import { bodyBytesRead } from './collect.js';
import { CopyOut, tappedSocketOf } from './copy-socket.js';
import { inTransaction } from '../../auth/postgres/tx.js';

export const CHUNK_SIZE = 256 * 1024;
const CHUNKS_PER_QUERY = 4;
/** A batch of chunks that has not arrived after this long fails the read. */
const COPY_TIMEOUT_MS = 30_000;
const copyTo = copyStreams.to;

/** A stored chunk as it came off the database connection: its data in one or more pieces; `last` for the body's last chunk. */
type Chunk = { seq: number; last: boolean; data: Buffer[] };

export interface WrittenBody {
  readonly bodyId: number;
  /** Stored bytes. */
  readonly octets: number;
  /** Size in CRLF octets, as LIST reports it. */
  readonly crlfSize: number;
  readonly sha256: Buffer;
}

/**
 * Writes a body as chunks inside the caller's open transaction. The source
 * is cut into CHUNK_SIZE pieces whatever sizes it comes in; `signal` aborts
 * between chunks.
 */
export async function writeBody(client: PoolClient, mailboxId: number, source: AsyncIterable<Buffer> | Iterable<Buffer>, signal?: AbortSignal): Promise<WrittenBody> {
  const { rows } = await client.query<{ body_id: string }>(
    `INSERT INTO poplar_bodies (mailbox_id, sha256, octets, chunks) VALUES ($1, '\\x', 0, 0) RETURNING body_id`,
    [mailboxId],
  );
  const bodyId = Number(rows[0]!.body_id);
  const hash = createHash('sha256');
  const sizes = new CrlfSizeCounter();
  let octets = 0;
  let seq = 0;
  let pending: Buffer[] = [];
  let pendingLength = 0;
  const flush = async (piece: Buffer): Promise<void> => {
    signal?.throwIfAborted();
    await client.query('INSERT INTO poplar_body_chunks (mailbox_id, body_id, seq, data) VALUES ($1, $2, $3, $4)', [mailboxId, bodyId, seq++, piece]);
  };
  for await (const raw of source) {
    const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw as Uint8Array);
    if (chunk.length === 0) continue;
    hash.update(chunk);
    sizes.push(chunk);
    octets += chunk.length;
    pending.push(chunk);
    pendingLength += chunk.length;
    while (pendingLength >= CHUNK_SIZE) {
      const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingLength);
      await flush(all.subarray(0, CHUNK_SIZE));
      const rest = all.subarray(CHUNK_SIZE);
      pending = rest.length > 0 ? [rest] : [];
      pendingLength = rest.length;
    }
  }
  if (pendingLength > 0) await flush(pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingLength));
  const sha256 = hash.digest();
  await client.query('UPDATE poplar_bodies SET sha256 = $3, octets = $4, chunks = $5 WHERE mailbox_id = $1 AND body_id = $2', [mailboxId, bodyId, sha256, octets, seq]);
  return { bodyId, octets, crlfSize: sizes.size, sha256 };
}

/**
 * After the mailbox row is locked (next_uid taken): the body the message
 * should refer to. An identical body already in the mailbox is shared and
 * the fresh copy dropped; otherwise the fresh one is kept.
 */
export async function shareBody(client: PoolClient, mailboxId: number, body: WrittenBody): Promise<number> {
  const { rows } = await client.query<{ body_id: string }>(
    'SELECT body_id FROM poplar_bodies WHERE mailbox_id = $1 AND sha256 = $2 AND octets = $3 AND body_id <> $4 ORDER BY body_id LIMIT 1',
    [mailboxId, body.sha256, body.octets, body.bodyId],
  );
  if (rows.length === 0) return body.bodyId;
  await client.query('DELETE FROM poplar_bodies WHERE mailbox_id = $1 AND body_id = $2', [mailboxId, body.bodyId]);
  return Number(rows[0]!.body_id);
}

/**
 * One batch of chunks, from `from` on, as the bytes the server holds. Read
 * with COPY ... TO STDOUT in binary format: node-postgres returns bytea
 * query results as hex text (twice the bytes, and a string per chunk for the
 * garbage collector), where COPY hands over the stored bytes as they are.
 * On the store's own connections (copy-socket.ts) the rows are taken from
 * the connection's read buffer and copied once, into `arena` while they fit
 * (a transient read's batch buffer) or into a buffer per row; on any other
 * connection (TLS) they are parsed as the socket's buffers arrive and a
 * chunk's data stay views into those buffers.
 * COPY takes no parameters: the ids are integers this process checked.
 */
async function fetchChunks(pool: Pool, mailboxId: number, bodyId: number, from: number, arena?: Buffer): Promise<Chunk[]> {
  for (const n of [mailboxId, bodyId, from]) if (!Number.isSafeInteger(n) || n < 0) throw new RangeError('bad id');
  // The body's last chunk comes with its seq as -1 - seq, so a reader knows it has the whole body
  // without asking again (a body of exactly CHUNKS_PER_QUERY chunks would otherwise cost an empty query).
  const sql = `COPY (SELECT CASE WHEN k.seq = b.chunks - 1 THEN -1 - k.seq ELSE k.seq END, k.data
    FROM poplar_body_chunks k JOIN poplar_bodies b ON b.mailbox_id = k.mailbox_id AND b.body_id = k.body_id
    WHERE k.mailbox_id = ${mailboxId} AND k.body_id = ${bodyId} AND k.seq >= ${from}
    ORDER BY k.seq LIMIT ${CHUNKS_PER_QUERY}) TO STDOUT (FORMAT binary)`;
  const client = await pool.connect();
  let broken = false;
  try {
    if (tappedSocketOf((client as unknown as { connection: Connection }).connection) !== undefined) {
      // Straight from the connection's read buffer into one buffer per chunk (copy-socket.ts).
      const parser = new BinaryCopyParser({ copy: true, maxRows: CHUNKS_PER_QUERY, ...(arena !== undefined ? { arena } : {}) });
      const copy = new CopyOut(sql, (part) => parser.push(part));
      const timer = setTimeout(() => copy.abandon(new Error('reading a message body timed out')), COPY_TIMEOUT_MS);
      try {
        void client.query(copy as unknown as QueryConfig);
        await copy.done;
      } finally {
        clearTimeout(timer);
      }
      // Only memory allocated for this read waits for a collection; the socket's buffer and an arena are reused.
      bodyBytesRead(parser.allocatedOctets);
      return parser.finish();
    }
    const stream = client.query(copyTo(sql));
    const timer = setTimeout(() => stream.destroy(new Error('reading a message body timed out')), COPY_TIMEOUT_MS);
    const parser = new BinaryCopyParser({ maxRows: CHUNKS_PER_QUERY });
    let octets = 0;
    try {
      for await (const part of stream) {
        parser.push(part as Buffer);
        octets += (part as Buffer).length;
      }
    } finally {
      clearTimeout(timer);
    }
    bodyBytesRead(octets);
    return parser.finish();
  } catch (e) {
    broken = true; // a COPY cut short leaves the connection in an unknown state
    throw e;
  } finally {
    client.release(broken);
  }
}

/** A chunk row longer than this is not one Poplar wrote (CHUNK_SIZE), and is not given memory. */
const MAX_ROW_OCTETS = 16 * CHUNK_SIZE;

const COPY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/** What the parser waits for next. */
const SIGNATURE = 0; // 11 bytes of signature, flags (int32), header extension length (int32)
const SKIP = 1; // the header extension
const FIELDS = 2; // a row's field count (int16), -1 after the last row
const ROW = 3; // length (int32) = 4 and value of seq, length of data (int32)
const DATA = 4; // the data
const END = 5;

/**
 * Rows (seq int4, data bytea) of a binary COPY (PostgreSQL docs, "Binary
 * Format"), fed in parts of any size; a row's data is a list of views into
 * the parts. Anything else than two such fields per row, a NULL, bytes after
 * the trailer or a missing trailer is an error.
 */
export class BinaryCopyParser {
  readonly #rows: Chunk[] = [];
  readonly #scratch = Buffer.alloc(19);
  #state = SIGNATURE;
  #need = 19;
  #have = 0;
  #left = 0;
  /** More rows than this are not what was asked for (a hostile or broken server): an error, not more memory. */
  readonly #maxRows: number;
  /** Copy each row's data out of the parts (which the caller reuses) instead of keeping views of them. */
  readonly #copy: boolean;
  /** With #copy: rows are placed one after the other in this buffer while they fit, */
  readonly #arena: Buffer | undefined;
  #arenaUsed = 0;
  /** the others get a buffer of their own, counted here. */
  allocatedOctets = 0;
  /** With #copy: the current row's buffer and how much of it is filled. */
  #row: Buffer | undefined;
  #filled = 0;

  constructor(options: { copy?: boolean; arena?: Buffer; maxRows?: number } = {}) {
    this.#copy = options.copy === true;
    this.#arena = options.arena;
    this.#maxRows = options.maxRows ?? Infinity;
  }

  push(part: Buffer): void {
    let at = 0;
    while (at < part.length) {
      if (this.#state === DATA || this.#state === SKIP) {
        const n = Math.min(this.#left, part.length - at);
        if (this.#state === DATA) {
          if (this.#row !== undefined) this.#filled += part.copy(this.#row, this.#filled, at, at + n);
          else this.#rows[this.#rows.length - 1]!.data.push(part.subarray(at, at + n));
        }
        at += n;
        this.#left -= n;
        if (this.#left === 0) this.#expect(FIELDS, 2);
        continue;
      }
      if (this.#state === END) bad();
      const n = Math.min(this.#need - this.#have, part.length - at);
      part.copy(this.#scratch, this.#have, at, at + n);
      this.#have += n;
      at += n;
      if (this.#have === this.#need) this.#complete();
    }
  }

  /** The rows, once the whole COPY output was pushed. */
  finish(): Chunk[] {
    if (this.#state !== END) bad();
    return this.#rows;
  }

  #expect(state: number, bytes: number): void {
    this.#state = state;
    this.#need = bytes;
    this.#have = 0;
  }

  #complete(): void {
    const b = this.#scratch;
    switch (this.#state) {
      case SIGNATURE: {
        if (!b.subarray(0, 11).equals(COPY_SIGNATURE)) bad();
        const ext = b.readUInt32BE(15);
        if (ext > 0) {
          this.#state = SKIP;
          this.#left = ext;
        } else this.#expect(FIELDS, 2);
        return;
      }
      case FIELDS: {
        const fields = b.readInt16BE(0);
        if (fields === -1) return this.#expect(END, 0);
        if (fields !== 2) bad();
        return this.#expect(ROW, 12);
      }
      default: {
        // ROW
        const len = b.readInt32BE(8);
        if (b.readInt32BE(0) !== 4 || len < 0) bad();
        const seq = b.readInt32BE(4);
        const row: Chunk = seq < 0 ? { seq: -1 - seq, last: true, data: [] } : { seq, last: false, data: [] };
        if (this.#rows.length >= this.#maxRows) bad();
        this.#rows.push(row);
        this.#row = undefined;
        if (len === 0) return this.#expect(FIELDS, 2);
        if (this.#copy) {
          if (len > MAX_ROW_OCTETS) bad();
          const arena = this.#arena;
          if (arena !== undefined && arena.length - this.#arenaUsed >= len) {
            this.#row = arena.subarray(this.#arenaUsed, (this.#arenaUsed += len));
          } else {
            this.#row = Buffer.allocUnsafeSlow(len);
            this.allocatedOctets += len;
          }
          this.#filled = 0;
          row.data.push(this.#row);
        }
        this.#state = DATA;
        this.#left = len;
      }
    }
  }
}

function bad(): never {
  throw new Error('malformed COPY data from the server');
}

/**
 * A stream of one stored body. The first chunks are fetched before it is
 * returned, so a body that is gone is reported (MessageUnavailable) before
 * anything is sent; `size` (the CRLF size from the listing) tells an empty
 * body from a missing one.
 */
export async function openBody(pool: Pool, mailboxId: number, bodyId: number, size: number, signal?: AbortSignal, transient = false): Promise<Readable> {
  // A transient read of a body bigger than one batch reuses three batch buffers (ArenaRing); a smaller
  // body is read in one batch into one buffer of its size (the CRLF size is never below the stored size).
  const ring = transient && size > BATCH_OCTETS ? new ArenaRing() : undefined;
  const single = transient && ring === undefined && size > 0 ? Buffer.allocUnsafeSlow(size) : undefined;
  if (single !== undefined) bodyBytesRead(single.length);
  let first: Chunk[];
  try {
    first = await fetchChunks(pool, mailboxId, bodyId, 0, ring?.arena(0) ?? single);
  } catch (e) {
    ring?.release();
    throw e;
  }
  if (first.length === 0 && size > 0) {
    ring?.release();
    throw new MessageUnavailable('Message body is missing.');
  }
  return new BodyStream(pool, mailboxId, bodyId, first, signal, ring);
}

/** The stored bytes of one batch at most. */
const BATCH_OCTETS = CHUNKS_PER_QUERY * CHUNK_SIZE;
/** Batch buffers kept for the next transient reads (process-wide). */
const freeArenas: Buffer[] = [];
const MAX_FREE_ARENAS = 16;

/**
 * The buffers of a transient body read: batch k is read into buffer k mod 3.
 * A batch is fetched once the one two before it has been handed over whole
 * (BodyStream#_read), and its bytes arrive in later socket reads, by which
 * time the consumer has encoded every chunk it was given (the `transient`
 * promise), so a buffer is only written again when nothing refers to it.
 * The buffers go back to a process-wide free list when the stream is
 * destroyed and no fetch is under way any more.
 */
class ArenaRing {
  readonly #arenas: (Buffer | undefined)[] = [undefined, undefined, undefined];

  arena(batch: number): Buffer {
    const k = batch % this.#arenas.length;
    return (this.#arenas[k] ??= freeArenas.pop() ?? Buffer.allocUnsafeSlow(BATCH_OCTETS));
  }

  release(): void {
    for (let k = 0; k < this.#arenas.length; k++) {
      const b = this.#arenas[k];
      if (b !== undefined && freeArenas.length < MAX_FREE_ARENAS) freeArenas.push(b);
      this.#arenas[k] = undefined;
    }
  }
}


/**
 * The chunks of one body in order. While one batch goes out, the next is
 * already being fetched (at most two batches in memory), so the database's
 * round trip overlaps the client's reading.
 */
class BodyStream extends Readable {
  readonly #pool: Pool;
  readonly #mailboxId: number;
  readonly #bodyId: number;
  #ready: Promise<Chunk[]> | null;
  #next = 0;
  #busy = false;
  readonly #ring: ArenaRing | undefined;
  /** Batches fetched so far (the first by openBody). */
  #batches = 1;
  /** The last fetch started: fetches run one after the other, so once it settles none can write into the ring. */
  #lastFetch: Promise<unknown> = Promise.resolve();

  constructor(pool: Pool, mailboxId: number, bodyId: number, first: Chunk[], signal?: AbortSignal, ring?: ArenaRing) {
    // Object mode: each piece goes out as the buffer it is (a byte stream would join what it holds
    // into a new one); at most one batch waits in the stream while the next is fetched.
    super({ objectMode: true, highWaterMark: 1, ...(signal ? { signal } : {}) });
    this.#pool = pool;
    this.#mailboxId = mailboxId;
    this.#bodyId = bodyId;
    this.#ready = Promise.resolve(first);
    this.#ring = ring;
  }

  #fetch(from: number): Promise<Chunk[]> {
    const p = fetchChunks(this.#pool, this.#mailboxId, this.#bodyId, from, this.#ring?.arena(this.#batches++));
    p.catch(() => undefined); // reported when the stream gets to it; nothing if it is destroyed first
    this.#lastFetch = p;
    return p;
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    const ring = this.#ring;
    // The buffers go back only once no fetch can still write into them.
    if (ring !== undefined) void this.#lastFetch.then(() => ring.release(), () => ring.release());
    callback(err);
  }

  override _read(): void {
    if (this.#busy) return;
    const ready = this.#ready;
    if (ready === null) return;
    this.#busy = true;
    this.#ready = null;
    ready.then(
      (rows) => {
        this.#busy = false;
        if (this.destroyed) return;
        const last = rows.length < CHUNKS_PER_QUERY || rows[rows.length - 1]!.last;
        if (!last) this.#ready = this.#fetch(this.#next + rows.length);
        this.#pushBatch(rows, last);
      },
      (e: unknown) => this.destroy(new MessageUnavailable('Message cannot be read.', { cause: e })),
    );
  }

  #pushBatch(rows: Chunk[], last: boolean): void {
    for (const r of rows) {
      if (r.seq !== this.#next) {
        this.destroy(new MessageUnavailable('Message body is damaged (a chunk is missing).'));
        return;
      }
      this.#next++;
      for (const piece of r.data) this.push(piece);
    }
    // The end of the rows must be the body's last chunk: anything else is a body cut short.
    if (last && this.#next > 0 && rows[rows.length - 1]?.last !== true) {
      this.destroy(new MessageUnavailable('Message body is damaged (its end is missing).'));
      return;
    }
    if (last) this.push(null);
  }
}

/**
 * Removes the bodies no message refers to, in mailboxes where messages were
 * removed since the last sweep (at most about `limit` mailboxes per call). Each
 * mailbox is swept in a transaction holding its row lock; a mailbox locked by
 * a delivery or an UPDATE is skipped and swept next time. Returns how many
 * bodies were removed.
 */
export async function sweepBodies(pool: Pool, limit = 10_000): Promise<number> {
  let removed = 0;
  let after = 0;
  for (let seen = 0; seen < limit; ) {
    const batch = await pool.query<{ mailbox_id: string }>('SELECT mailbox_id FROM poplar_mailboxes WHERE needs_sweep AND mailbox_id > $1 ORDER BY mailbox_id LIMIT 100', [after]);
    if (batch.rows.length === 0) break;
    seen += batch.rows.length;
    after = Number(batch.rows[batch.rows.length - 1]!.mailbox_id);
    removed += await sweepMailboxes(pool, batch.rows);
  }
  return removed;
}

async function sweepMailboxes(pool: Pool, rows: readonly { mailbox_id: string }[]): Promise<number> {
  let removed = 0;
  for (const r of rows) {
    const mailboxId = Number(r.mailbox_id);
    removed += await inTransaction(pool, async (client) => {
      const lock = await client.query('SELECT 1 FROM poplar_mailboxes WHERE mailbox_id = $1 AND needs_sweep FOR UPDATE SKIP LOCKED', [mailboxId]);
      if (lock.rowCount === 0) return 0;
      const del = await client.query(
        `DELETE FROM poplar_bodies b WHERE b.mailbox_id = $1
           AND NOT EXISTS (SELECT 1 FROM poplar_messages m WHERE m.mailbox_id = $1 AND m.body_id = b.body_id)`,
        [mailboxId],
      );
      await client.query('UPDATE poplar_mailboxes SET needs_sweep = false WHERE mailbox_id = $1', [mailboxId]);
      return del.rowCount ?? 0;
    });
  }
  return removed;
}
