/**
 * A node's view of which login counter keys had failures lately, kept
 * current by PostgreSQL notifications, so that checking a login for a clean
 * address and a clean user costs no statement.
 *
 * The database tells every listening node about every counted failure (a
 * trigger on poplar_auth_failures, limits migration 2, whoever writes the
 * row) and every cleared counter (the reset statement). A node LISTENs on a
 * connection of its own, then reads the keys the table holds, and from then
 * on answers "no failures" for a key it has not heard of within the window
 * without asking; a key it has heard of is asked about as before, so counts,
 * delays and blocks stay the database's. What a node can miss is only what
 * the database has not told it yet: a failure on another node is seen here
 * once its notification arrives (after that node's COMMIT, typically within
 * a millisecond), and this node's own failures are noted before their
 * statement is sent.
 *
 * While the connection is not up (starting, lost, or too many keys to keep),
 * every check asks the database, as without this view. The connection is
 * checked every few seconds with a statement; one that fails is dropped and
 * made again, and the keys are read again.
 */
import type pg from 'pg';

/** The channel the trigger and the reset statement notify on. */
export const FAILURES_CHANNEL = 'poplar_auth_failures';

/** A key heard of is kept this much longer than the window (the nodes' clocks do not matter, only rates). */
const MARGIN_MS = 1000;

export interface FailureWatchOptions {
  /** A new, unconnected client on the database (with the limits tables' search_path). */
  readonly connect: () => pg.Client;
  /** Keys kept at most; when there are more, every check asks the database. Default 100 000. */
  readonly maxKeys?: number | undefined;
  /** ms between checks that the connection still answers; default 5000. */
  readonly heartbeatMs?: number | undefined;
  /** Told when the view stops or starts answering. */
  readonly logger?: ((message: string) => void) | undefined;
}

export class FailureWatch {
  readonly #o: FailureWatchOptions;
  readonly #maxKeys: number;
  /** Stored key → performance.now() when its latest failure was heard of. */
  readonly #noted = new Map<string, number>();
  #client: pg.Client | undefined;
  #schema = '';
  #live = false;
  #closed = false;
  #retryMs = 1000;
  #retry: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  /** The longest window asked about: entries older than it are dropped. */
  #windowMs = 0;
  #starting: Promise<void> | undefined;

  constructor(options: FailureWatchOptions) {
    this.#o = options;
    this.#maxKeys = options.maxKeys ?? 100_000;
  }

  /** Whether checks are answered here now (tests, metrics). */
  get live(): boolean {
    return this.#live;
  }

  /** Keys heard of and not yet dropped. */
  get size(): number {
    return this.#noted.size;
  }

  /** Connects and reads the keys; resolves when the view answers or the attempt failed (then it retries by itself). */
  start(): Promise<void> {
    this.#starting ??= this.#connect().finally(() => (this.#starting = undefined));
    return this.#starting;
  }

  /**
   * True when none of these stored keys had a failure within `windowMs`
   * as far as the database has told this node: the caller may answer 0 for
   * all of them without asking.
   */
  clean(keys: readonly string[], windowMs: number): boolean {
    if (!this.#live) return false;
    if (windowMs > this.#windowMs) this.#windowMs = windowMs;
    const t = performance.now();
    for (const k of keys) {
      const at = this.#noted.get(k);
      if (at === undefined) continue;
      if (t - at < windowMs + MARGIN_MS) return false;
      this.#noted.delete(k);
    }
    return true;
  }

  /** This node is about to count failures for these keys (noted before the database has them). */
  noteFailures(keys: readonly string[]): void {
    const t = performance.now();
    for (const k of keys) this.#note(k, t);
  }

  async #connect(): Promise<void> {
    if (this.#closed) return;
    const client = this.#o.connect();
    this.#client = client;
    client.on('error', (e) => this.#lost(client, e.message));
    client.on('end', () => this.#lost(client, 'connection closed'));
    client.on('notification', (n) => {
      if (this.#client === client && n.channel === FAILURES_CHANNEL && n.payload !== undefined) this.#heard(n.payload);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${FAILURES_CHANNEL}`);
      const schema = await client.query<{ s: string | null }>('SELECT current_schema() AS s');
      this.#schema = schema.rows[0]?.s ?? '';
      // After LISTEN: a failure counted from now on is either in these rows or notified.
      const { rows } = await client.query<{ key: string; age: number }>(
        'SELECT key, extract(epoch FROM now() - last_failure)::float8 * 1000 AS age FROM poplar_auth_failures LIMIT $1',
        [this.#maxKeys + 1],
      );
      if (this.#client !== client) return;
      if (rows.length > this.#maxKeys) return this.#lost(client, `more than ${this.#maxKeys} keys with failures`, 60_000);
      const t = performance.now();
      for (const r of rows) this.#note(r.key, t - Math.max(0, Number(r.age) || 0));
      if (this.#client !== client) return;
      this.#live = true;
      this.#retryMs = 1000;
      this.#heartbeat = setInterval(() => void this.#beat(client), this.#o.heartbeatMs ?? 5000);
      this.#heartbeat.unref();
      this.#o.logger?.('postgres: login counters: this node hears of failures as they happen; clean logins need no statement');
    } catch (e) {
      this.#lost(client, (e as Error).message);
    }
  }

  async #beat(client: pg.Client): Promise<void> {
    try {
      await client.query('SELECT 1');
    } catch (e) {
      this.#lost(client, (e as Error).message);
      return;
    }
    // Drop what has passed the longest window asked about.
    if (this.#windowMs > 0) {
      const t = performance.now();
      for (const [k, at] of this.#noted) if (t - at >= this.#windowMs + MARGIN_MS) this.#noted.delete(k);
    }
  }

  /** A notification: JSON [schema, "+" or "-", key]. */
  #heard(payload: string): void {
    let v: unknown;
    try {
      v = JSON.parse(payload);
    } catch {
      return;
    }
    if (!Array.isArray(v) || v.length !== 3 || v[0] !== this.#schema || typeof v[2] !== 'string') return;
    if (v[1] === '+') this.#note(v[2], performance.now());
    else if (v[1] === '-') this.#noted.delete(v[2]);
  }

  #note(key: string, at: number): void {
    const before = this.#noted.get(key);
    if (before === undefined || before < at) this.#noted.set(key, at);
    if (this.#noted.size > this.#maxKeys && this.#client !== undefined) this.#lost(this.#client, `more than ${this.#maxKeys} keys with failures`, 60_000);
  }

  /** The connection is gone or not to be trusted: checks ask the database until a new one has read the keys again. */
  #lost(client: pg.Client, why: string, retryMs?: number): void {
    if (this.#client !== client) return;
    const wasLive = this.#live;
    this.#live = false;
    this.#client = undefined;
    this.#noted.clear();
    if (this.#heartbeat !== undefined) clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
    client.removeAllListeners('notification');
    client.on('error', () => undefined);
    void client.end().catch(() => undefined);
    if (this.#closed) return;
    if (wasLive) this.#o.logger?.(`postgres: login counters: not hearing of failures (${why}); every login asks the database`);
    const wait = retryMs ?? this.#retryMs;
    this.#retryMs = Math.min(30_000, this.#retryMs * 2);
    this.#retry = setTimeout(() => void this.start(), wait);
    this.#retry.unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retry !== undefined) clearTimeout(this.#retry);
    await this.#starting?.catch(() => undefined);
    const c = this.#client;
    if (c !== undefined) this.#lost(c, 'closed');
  }
}
