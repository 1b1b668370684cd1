import type { Readable } from 'node:stream';

/** What a sink knows about the message it delivers. */
export interface DeliveryInfo {
  /** Name of the fetch account the message came from. */
  readonly account: string;
  readonly uidl: string;
  /** Size the server announced (LIST); informative only, never trusted for framing. */
  readonly size: number;
  /** Maildir sub-folder chosen by a rule (Maildir++ name such as ".Lists.node"), if any. */
  readonly folder?: string;
}

/**
 * A delivery that a crash left undecided: its intent was written, its record
 * was not, so the sink may or may not hold the message.
 */
export interface PendingMessage {
  readonly uidl: string;
  /** Real time (ms) the intent was written: the sink cannot have received the message earlier. */
  readonly since: number;
  /**
   * The Maildir folders it may have gone to (as `DeliveryInfo.folder`;
   * undefined is the Maildir itself). Sinks without folders ignore this.
   */
  readonly folders: readonly (string | undefined)[];
  /** The message as the server sends it now: CRLF line ends, dot-unstuffed (what `deliver` was given). */
  readonly content: MessageSource;
}

/**
 * A message kept out of memory (the fetcher spools pending re-downloads to
 * an unnamed file): its length, and its octets, read afresh on every call.
 */
export interface MessageSource {
  readonly size: number;
  chunks(): AsyncIterable<Buffer>;
}

/**
 * Where fetched mail goes. `deliver` resolves only once the message is
 * durable (fsync/exit 0/LMTP 250); when it rejects, nothing of the message is
 * visible. The fetcher records the UIDL, and only then sends DELE.
 */
export interface Sink {
  deliver(message: Readable, info: DeliveryInfo, signal?: AbortSignal): Promise<void>;
  /**
   * Optional: the same as `deliver` for a message already in memory (the
   * fetcher reads small messages whole); same guarantees, fewer steps.
   */
  deliverBuffer?(message: Buffer, info: DeliveryInfo, signal?: AbortSignal): Promise<void>;
  /**
   * Optional capability, false when absent: deliveries may overlap (a call
   * may start before earlier ones resolve, each with the same guarantees,
   * and `flush` covers every call that resolved before it). The fetcher then
   * reads messages of up to 256 KiB whole and hands up to `parallel` of them
   * to the sink at once (`deliverBuffer` when implemented) while the next
   * ones download. Otherwise it delivers one message at a time, in order.
   */
  readonly concurrentDeliveries?: boolean;
  /**
   * Optional group commit: `deliver` may return before the data is durable
   * when `flush` is implemented; the fetcher then calls `flush()` and only
   * after it resolves records the UIDLs and sends DELE for that group.
   */
  flush?(): Promise<void>;
  /**
   * Optional crash probe: the UIDLs among `pending` whose message this sink
   * already holds. Identical messages count as a multiset (two pending copies
   * and one stored copy: one delivered). A sink may also repair what an
   * interrupted delivery left half written. It must never answer "delivered"
   * for a message it does not hold (that message would be lost); answering
   * "not delivered" for one it does hold costs a duplicate.
   *
   * The fetcher calls it before delivering anything; sinks with a probe are
   * group-committed, sinks without one get a durable ledger record after
   * every message, since all their pending messages are delivered again.
   */
  findDelivered?(pending: readonly PendingMessage[]): Promise<Set<string>>;
  close(): Promise<void>;
}
