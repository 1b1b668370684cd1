/**
 * The sinks of one fetch: created on first use, one per destination key
 * (the account's own sink, or a rule's), all closed at the end.
 */
import type { ResolvedAccount, SinkSpecValue } from './config.js';
import type { Destination } from './rules.js';
import type { Sink } from './sinks/types.js';

/** The sink a destination delivers into (folders and the default share the account's sink). */
export type SinkFor = (dest: Destination) => Promise<Sink>;

export class AccountSinks {
  readonly #sinks = new Map<string, Promise<Sink>>();
  readonly #acct: ResolvedAccount;
  readonly #create: (spec: SinkSpecValue, account: ResolvedAccount) => Promise<Sink> | Sink;

  constructor(acct: ResolvedAccount, create: (spec: SinkSpecValue, account: ResolvedAccount) => Promise<Sink> | Sink) {
    this.#acct = acct;
    this.#create = create;
  }

  /** Bound, so it can be handed around as a `SinkFor`. */
  readonly sinkFor: SinkFor = (dest) => {
    const key = dest.kind === 'sink' ? dest.key : '-';
    let s = this.#sinks.get(key);
    if (s === undefined) {
      s = Promise.resolve(this.#create(dest.kind === 'sink' ? dest.spec : this.#acct.sink, this.#acct));
      s.catch(() => undefined);
      this.#sinks.set(key, s);
    }
    return s;
  };

  /** Close every sink made so far; the first failure that is not "already closed", if any. */
  async closeAll(): Promise<PromiseRejectedResult | undefined> {
    const closing = await Promise.allSettled([...this.#sinks.values()].map(async (s) => (await s).close()));
    return closing.find((r): r is PromiseRejectedResult => r.status === 'rejected' && !String(r.reason).includes('closed'));
  }
}
