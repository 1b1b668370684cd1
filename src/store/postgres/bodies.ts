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
import type { Pool, PoolClient } from 'pg';
import { MessageUnavailable } from '../../errors.js';
import { CrlfSizeCounter } from '../../protocol/message-size.js';
import { inTransaction } from './tx.js';

export const CHUNK_SIZE = 256 * 1024;
const CHUNKS_PER_QUERY = 4;

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

const CHUNKS = 'SELECT seq, data FROM poplar_body_chunks WHERE mailbox_id = $1 AND body_id = $2 AND seq >= $3 ORDER BY seq LIMIT $4';

async function fetchChunks(pool: Pool, mailboxId: number, bodyId: number, from: number): Promise<{ seq: number; data: Buffer }[]> {
  // Text results (bytea as hex, decoded natively): node-postgres turns binary results into strings first, which garbles bytes.
  const { rows } = await pool.query<{ seq: number; data: Buffer }>(CHUNKS, [mailboxId, bodyId, from, CHUNKS_PER_QUERY]);
  return rows;
}

/**
 * A stream of one stored body. The first chunks are fetched before it is
 * returned, so a body that is gone is reported (MessageUnavailable) before
 * anything is sent; `size` (the CRLF size from the listing) tells an empty
 * body from a missing one.
 */
export async function openBody(pool: Pool, mailboxId: number, bodyId: number, size: number, signal?: AbortSignal): Promise<Readable> {
  const first = await fetchChunks(pool, mailboxId, bodyId, 0);
  if (first.length === 0 && size > 0) throw new MessageUnavailable('Message body is missing.');
  return new BodyStream(pool, mailboxId, bodyId, first, signal);
}

class BodyStream extends Readable {
  readonly #pool: Pool;
  readonly #mailboxId: number;
  readonly #bodyId: number;
  #batch: { seq: number; data: Buffer }[] | null;
  #next = 0;
  #ended = false;

  constructor(pool: Pool, mailboxId: number, bodyId: number, first: { seq: number; data: Buffer }[], signal?: AbortSignal) {
    super({ highWaterMark: CHUNK_SIZE, ...(signal ? { signal } : {}) });
    this.#pool = pool;
    this.#mailboxId = mailboxId;
    this.#bodyId = bodyId;
    this.#batch = first;
  }

  override _read(): void {
    const batch = this.#batch;
    this.#batch = null;
    if (batch !== null) {
      this.#pushBatch(batch);
      return;
    }
    if (this.#ended) return;
    fetchChunks(this.#pool, this.#mailboxId, this.#bodyId, this.#next).then(
      (rows) => {
        if (!this.destroyed) this.#pushBatch(rows);
      },
      (e: unknown) => this.destroy(new MessageUnavailable('Message cannot be read.', { cause: e })),
    );
  }

  #pushBatch(rows: { seq: number; data: Buffer }[]): void {
    for (const r of rows) {
      if (r.seq !== this.#next || !Buffer.isBuffer(r.data)) {
        this.destroy(new MessageUnavailable('Message body is damaged (a chunk is missing).'));
        return;
      }
      this.#next++;
      this.push(r.data);
    }
    if (rows.length < CHUNKS_PER_QUERY) {
      this.#ended = true;
      this.push(null);
    }
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
