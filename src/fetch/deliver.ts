/**
 * Step 6 of a fetch: fetch and deliver the planned messages, with group
 * commit. For every message the order is
 *
 *   intent in the ledger (synced) → RETR → sink.deliver → sink.flush (durable)
 *   → UIDL recorded in the ledger (synced) → DELE
 *
 * Intents and records are group-committed: one ledger fsync and one sink
 * flush per `batch` messages (or `batch_ms`), while RETRs stay pipelined.
 * Records are grouped only for sinks that can be asked after a crash whether
 * a message arrived (`Sink.findDelivered`: Maildir, mbox); a delivery to any
 * other sink (MDA, LMTP) is recorded, and the record synced, as soon as the
 * sink has accepted it, so a crash can repeat at most that one message there.
 */
import { Readable } from 'node:stream';
import type { Pop3Client } from '../client/index.js';
import type { SinkFor } from './account-sinks.js';
import type { ResolvedAccount } from './config.js';
import type { Ledger } from './ledger.js';
import type { Candidate } from './plan.js';
import type { AccountReport, ProgressListener } from './report.js';
import { chooseDestination, DEFAULT_DESTINATION, destinationKey, parseHeaders, type CompiledRule, type Destination } from './rules.js';
import type { DeliveryInfo, Sink } from './sinks/types.js';

/** Intents are written (and synced) for this many messages at a time. */
const INTENTS_AHEAD = 64;
/** Messages up to this size (as announced) may be delivered in parallel, read into memory first. */
const PARALLEL_MAX_OCTETS = 256 * 1024;
/** A server whose announced size was too small gets streamed delivery beyond this much. */
const PARALLEL_BUFFER_CAP = 1024 * 1024;
/** How much of a message `header_preview = "retr"` reads to find the end of the header. */
const HEADER_PEEK_LIMIT = 256 * 1024;

/** Raised by `DeliveryRun.next` when a stop was requested; `fetchAll` turns it into `report.stopped`. */
export class StopRequested extends Error {}

export interface DeliveryOptions {
  readonly acct: Pick<ResolvedAccount, 'name' | 'batch' | 'batch_ms' | 'parallel'>;
  readonly ledger: Ledger;
  readonly sinkFor: SinkFor;
  readonly rules: readonly CompiledRule[];
  /** Choose each destination from the message's own header as it arrives (`chooseDestinations` said so). */
  readonly peek: boolean;
  /** Counts `delivered`, `discarded` and `bytes`. */
  readonly report: AccountReport;
  /** The fetch clock, for the records. */
  readonly now: () => number;
  /** Called with each message's number once its group is durable and recorded; absent: nothing is deleted. */
  readonly dele?: ((n: number) => void) | undefined;
  /** Hard stop, passed to the sinks. */
  readonly signal?: AbortSignal | undefined;
  /** Soft stop: checked before each message. */
  readonly stop?: AbortSignal | undefined;
  readonly progress?: ProgressListener | undefined;
}

interface Done {
  readonly uidl: string;
  readonly number: number;
  readonly discarded: boolean;
  /** Already recorded and synced on its own (a sink without a probe). */
  readonly recorded?: boolean;
}

/**
 * One delivery run over `fetchList` (candidates the rules did not discard
 * up front; `discarded` are recorded with the first commit). `next` is the
 * per-message step, for the messages in list order; `finish` commits what
 * completed. `fetchAll` drives both from a client's pipelined RETRs.
 */
export class DeliveryRun {
  readonly #o: DeliveryOptions;
  readonly #list: readonly Candidate[];
  readonly #intents: IntentsAhead;
  #index = 0;
  /** Done since the last commit. */
  #group: Done[];
  #groupStart = performance.now();
  readonly #usedSinks = new Set<Sink>();
  /**
   * Small messages bound for a sink that takes concurrent deliveries are read
   * into memory and delivered up to `parallel` at once (file creation is the
   * cost in a Maildir); the socket keeps streaming meanwhile.
   */
  readonly #inflight = new Set<Promise<void>>();
  #asyncError: unknown;
  /** The commit under way: commits are chained, so the ledger sees them in order. */
  #committing: Promise<void> = Promise.resolve();

  constructor(opts: DeliveryOptions, fetchList: readonly Candidate[], discarded: readonly Candidate[] = []) {
    this.#o = opts;
    this.#list = fetchList;
    this.#group = discarded.map((c) => ({ uidl: c.uidl, number: c.number, discarded: true }));
    this.#intents = new IntentsAhead(opts.ledger, fetchList, Math.max(opts.acct.batch, INTENTS_AHEAD));
  }

  /**
   * Fetch every message of the list with `client.retrEach` (pipelined,
   * each bounded by `maxOctetsOf`) and deliver it; commit whatever
   * completed, even after an error, then throw the first error. A stop
   * request ends the run after the current message (`report.stopped`).
   */
  async fetchAll(client: Pop3Client, deadlineMs: number, maxOctetsOf: (n: number) => number): Promise<void> {
    let error: unknown;
    try {
      // Small messages arrive whole, without a stream each: they are read into memory anyway (see next()).
      const sizes = new Map(this.#list.map((c) => [c.number, c.size]));
      await client.retrEachBuffered(
        this.#list.map((c) => c.number),
        (_n, message) => this.next(message),
        { deadlineMs, maxOctetsOf, bufferUpTo: (n) => ((sizes.get(n) ?? Infinity) <= PARALLEL_MAX_OCTETS ? PARALLEL_BUFFER_CAP : 0) },
      );
    } catch (e) {
      if (e instanceof StopRequested) this.#o.report.stopped = true;
      else error = e;
    }
    const late = await this.finish();
    error ??= late;
    if (error !== undefined) throw error;
  }

  /**
   * The per-message step: the next message of the list, as RETR gives it.
   * Its intent is durable before it reaches a sink; it is routed (by its own
   * header when `peek`), delivered or discarded, and added to the group,
   * which is committed when it is `batch` messages or `batch_ms` old.
   */
  async next(stream: Readable | Buffer): Promise<void> {
    if (this.#asyncError !== undefined) throw this.#asyncError;
    if (this.#o.stop?.aborted) throw new StopRequested();
    const { acct, rules, progress } = this.#o;
    const i = this.#index++;
    const c = this.#list[i]!;
    await this.#intents.cover(i);
    let message: Readable | Buffer = stream;
    let dest = c.dest ?? DEFAULT_DESTINATION;
    if (this.#o.peek) {
      if (Buffer.isBuffer(message)) {
        dest = chooseDestination(rules, c.size, parseHeaders(message.subarray(0, HEADER_PEEK_LIMIT)));
      } else {
        const p = await peekHeader(message);
        dest = chooseDestination(rules, c.size, parseHeaders(p.head));
        message = p.message;
      }
    }
    if (dest.kind === 'discard') {
      if (!Buffer.isBuffer(message)) message.destroy();
      this.#group.push({ uidl: c.uidl, number: c.number, discarded: true });
      progress?.messageDone?.(acct.name, c.size);
    } else {
      const sink = await this.#o.sinkFor(dest);
      if (acct.parallel > 1 && c.size <= PARALLEL_MAX_OCTETS && sink.concurrentDeliveries === true) {
        const body = Buffer.isBuffer(message) ? message : await bufferUpTo(message, PARALLEL_BUFFER_CAP);
        if (Buffer.isBuffer(body)) {
          while (this.#inflight.size >= acct.parallel) await Promise.race(this.#inflight);
          const task = this.#deliverTo(sink, c, dest, body).catch((e: unknown) => {
            this.#asyncError ??= e;
          });
          this.#inflight.add(task);
          void task.then(() => this.#inflight.delete(task));
        } else {
          await this.#deliverTo(sink, c, dest, body); // the server's size was wrong: stream it after all
        }
      } else {
        await this.#deliverTo(sink, c, dest, message);
      }
    }
    if (this.#group.length + this.#inflight.size >= acct.batch || performance.now() - this.#groupStart >= acct.batch_ms) {
      await this.#commit(false);
      this.#groupStart = performance.now();
    }
  }

  /**
   * End of the run: wait for deliveries in flight and any intent write under
   * way, then commit everything that completed (it is delivered, whatever
   * failed since). Resolves with the first error of a parallel delivery or
   * of the commit, if any; never rejects.
   */
  async finish(): Promise<unknown> {
    await this.#drain();
    await this.#intents.settle(); // an intent write still under way finishes before the commit and the ledger's close
    let error = this.#asyncError;
    try {
      await this.#commit(true);
    } catch (e) {
      error ??= e;
    }
    return error;
  }

  async #drain(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.all([...this.#inflight]);
  }

  async #deliverTo(sink: Sink, c: Candidate, dest: Destination, message: Readable | Buffer): Promise<void> {
    const { acct, ledger, report, progress, signal } = this.#o;
    this.#usedSinks.add(sink);
    const info: DeliveryInfo = { account: acct.name, uidl: c.uidl, size: c.size, ...(dest.kind === 'folder' ? { folder: dest.folder } : {}) };
    if (!Buffer.isBuffer(message)) await sink.deliver(message, info, signal);
    else if (sink.deliverBuffer !== undefined) await sink.deliverBuffer(message, info, signal);
    else await sink.deliver(Readable.from([message], { objectMode: false }), info, signal);
    // A sink that cannot be asked after a crash (MDA, LMTP) would get every unrecorded message of the
    // group again: record this one now, durably, before the next one reaches it.
    const recorded = sink.findDelivered === undefined;
    if (recorded) {
      await sink.flush?.();
      await ledger.record([{ uidl: c.uidl }], this.#o.now());
      await ledger.sync();
    }
    report.bytes += c.size;
    this.#group.push({ uidl: c.uidl, number: c.number, discarded: false, recorded });
    progress?.messageDone?.(acct.name, c.size);
  }

  /**
   * Everything delivered so far: durable in the sink, then durable in the
   * ledger, then DELE. Commits are chained (the ledger sees them in order)
   * and run while the next group is being delivered: a flush covers exactly
   * the deliveries that completed before it was called. At most one commit
   * runs behind the deliveries; a failed one stops the fetch.
   */
  async #commit(wait: boolean): Promise<void> {
    await this.#drain();
    const { ledger, report, dele } = this.#o;
    const items = this.#group;
    this.#group = [];
    const sinksNow = [...this.#usedSinks];
    const previous = this.#committing;
    const committing = (async () => {
      await previous;
      if (items.length === 0) return;
      await Promise.all(sinksNow.map((s) => s.flush?.()));
      await ledger.record(
        items.filter((i) => i.recorded !== true),
        this.#o.now(),
      );
      await ledger.sync();
      report.delivered += items.filter((i) => !i.discarded).length;
      report.discarded += items.filter((i) => i.discarded).length;
      if (dele !== undefined) for (const it of items) dele(it.number);
    })();
    this.#committing = committing;
    committing.catch(() => undefined); // awaited by the next commit; not an unhandled rejection meanwhile
    if (wait) await committing;
    else await previous;
  }
}

/**
 * Intents run ahead of commits: one synced write covers many messages even
 * with batch = 1, and the next window's is written while this window's
 * messages arrive, so the wait for it is rarely felt.
 */
class IntentsAhead {
  readonly #ledger: Ledger;
  readonly #list: readonly Candidate[];
  readonly #span: number;
  /** Messages below this index have durable intents. */
  #upto = 0;
  #next: { from: number; upto: number; done: Promise<void> } | undefined;

  constructor(ledger: Ledger, list: readonly Candidate[], span: number) {
    this.#ledger = ledger;
    this.#list = list;
    this.#span = span;
  }

  /** Resolves once message `i`'s intent is durable; starts the next window's write halfway through this one. */
  async cover(i: number): Promise<void> {
    if (i >= this.#upto) {
      if (this.#next?.from !== i) this.#next = this.#write(i);
      await this.#next.done;
      this.#upto = this.#next.upto;
      this.#next = undefined;
    }
    if (this.#next === undefined && this.#upto < this.#list.length && i >= this.#upto - this.#span / 2) this.#next = this.#write(this.#upto);
  }

  /** Wait for a write under way (its failure is not this caller's: no message it covers was delivered). */
  async settle(): Promise<void> {
    await this.#next?.done.catch(() => undefined);
  }

  #write(from: number): { from: number; upto: number; done: Promise<void> } {
    const next = this.#list.slice(from, from + this.#span);
    const done = this.#ledger.intend(next.map((x) => ({ uidl: x.uidl, target: x.dest !== undefined ? destinationKey(x.dest) : '*' })));
    done.catch(() => undefined); // awaited before any of these messages reaches a sink
    return { from, upto: from + next.length, done };
  }
}

/** The whole message when it fits in `cap` octets; otherwise a stream of all of it (what was read, then the rest). */
async function bufferUpTo(stream: Readable, cap: number): Promise<Buffer | Readable> {
  const chunks: Buffer[] = [];
  let total = 0;
  const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  for (;;) {
    const r = await it.next();
    if (r.done === true) return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total);
    chunks.push(r.value);
    total += r.value.length;
    if (total > cap) {
      async function* all(): AsyncGenerator<Buffer> {
        yield* chunks;
        for (;;) {
          const n = await it.next();
          if (n.done === true) return;
          yield n.value;
        }
      }
      return Readable.from(all(), { objectMode: false });
    }
  }
}

/** Read up to the end of the header (bounded), and give back a stream of the whole message. */
async function peekHeader(stream: Readable): Promise<{ head: Buffer; message: Readable }> {
  const chunks: Buffer[] = [];
  let total = 0;
  const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  for (;;) {
    const r = await it.next();
    if (r.done === true) break;
    chunks.push(r.value);
    total += r.value.length;
    const so = Buffer.concat(chunks);
    if (/\r?\n\r?\n/.test(so.toString('latin1')) || total >= HEADER_PEEK_LIMIT) {
      chunks.length = 0;
      chunks.push(so);
      const head = so;
      async function* rest(): AsyncGenerator<Buffer> {
        yield head;
        for (;;) {
          const n = await it.next();
          if (n.done === true) return;
          yield n.value;
        }
      }
      return { head, message: Readable.from(rest(), { objectMode: false }) };
    }
  }
  const all = Buffer.concat(chunks);
  return { head: all, message: Readable.from([all], { objectMode: false }) };
}
