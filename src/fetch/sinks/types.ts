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
   * Optional group commit: `deliver` may return before the data is durable
   * when `flush` is implemented; the fetcher then calls `flush()` and only
   * after it resolves records the UIDLs and sends DELE for that group.
   */
  flush?(): Promise<void>;
  close(): Promise<void>;
}
