/**
 * Login failure counters, blocks and LOGIN-DELAY times shared by the
 * processes of `poplar serve --workers N` without a database: the primary
 * process holds them (a MemoryThrottleStore and a MemoryLoginDelayStore, so
 * memory stays bounded as in a single process) and the workers ask it over
 * the cluster's IPC channel.
 *
 * A request carries an id; the primary answers with the same id. A worker
 * waits at most `timeoutMs` for the answer, then the call fails (and
 * FallbackThrottleStore answers from the worker's own memory). The primary
 * trusts nothing in a message: the shape, the operation, the number and
 * length of keys and the window are checked, and a bad request gets a
 * refusal, never a crash. The primary uses its own clock, not the worker's.
 */
import type { Worker } from 'node:cluster';
import { MemoryThrottleStore, type ThrottleStore } from './throttle.js';
import { MemoryLoginDelayStore, loginDelayKey, type LoginDelayStore } from './throttle-login-delay.js';

/** The `type` of every limits message in both directions. */
export const LIMITS_MESSAGE = 'poplar:limits';

type Op = 'increment' | 'counts' | 'reset' | 'wait' | 'login';

interface LimitsRequest {
  type: typeof LIMITS_MESSAGE;
  id: number;
  op: Op;
  /** increment, counts, reset */
  keys?: string[];
  /** wait, login */
  user?: string;
  /** the window (increment, counts) or the delay (wait, login) */
  ms?: number;
}

interface LimitsReply {
  type: typeof LIMITS_MESSAGE;
  id: number;
  ok: boolean;
  value?: number[] | number | null;
}

const MAX_KEYS = 16;
const MAX_KEY_LENGTH = 1024;
/** Longest window or delay accepted: 30 days. */
const MAX_MS = 30 * 24 * 3600 * 1000;

/** The request in `m`, or a reason it is not one; undefined when `m` is not a limits message at all. */
export function parseLimitsRequest(m: unknown): LimitsRequest | { id: number | undefined; error: string } | undefined {
  if (typeof m !== 'object' || m === null || (m as { type?: unknown }).type !== LIMITS_MESSAGE) return undefined;
  const r = m as Record<string, unknown>;
  const id = typeof r['id'] === 'number' && Number.isSafeInteger(r['id']) && r['id'] >= 0 ? r['id'] : undefined;
  const bad = (error: string): { id: number | undefined; error: string } => ({ id, error });
  if (id === undefined) return bad('bad id');
  const op = r['op'];
  const ms = r['ms'];
  if (ms !== undefined && (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0 || ms > MAX_MS)) return bad('bad window');
  const isKey = (k: unknown): k is string => typeof k === 'string' && k.length > 0 && k.length <= MAX_KEY_LENGTH;
  switch (op) {
    case 'increment':
    case 'counts':
    case 'reset': {
      const keys = r['keys'];
      if (!Array.isArray(keys) || keys.length === 0 || keys.length > MAX_KEYS || !keys.every(isKey)) return bad('bad keys');
      if (op !== 'reset' && (ms === undefined || ms <= 0)) return bad('bad window');
      return { type: LIMITS_MESSAGE, id, op, keys, ...(ms !== undefined ? { ms } : {}) };
    }
    case 'wait':
    case 'login': {
      const user = r['user'];
      if (!isKey(user)) return bad('bad user');
      if (ms === undefined) return bad('bad delay');
      return { type: LIMITS_MESSAGE, id, op, user, ms };
    }
    default:
      return bad('unknown operation');
  }
}

/** The primary's side: one set of counters for all workers. */
export class PrimaryLimits {
  readonly throttle: MemoryThrottleStore;
  readonly loginDelay = new MemoryLoginDelayStore();
  readonly #now: () => number;
  readonly #onBad: ((why: string) => void) | undefined;

  constructor(options: { maxTracked?: number; now?: () => number; onBadRequest?: (why: string) => void } = {}) {
    this.throttle = new MemoryThrottleStore(options.maxTracked);
    this.#now = options.now ?? Date.now;
    this.#onBad = options.onBadRequest;
  }

  /** The answer to a message from a worker, or undefined when it is not a limits message. */
  async answer(m: unknown): Promise<LimitsReply | undefined> {
    const req = parseLimitsRequest(m);
    if (req === undefined) return undefined;
    if ('error' in req) {
      this.#onBad?.(req.error);
      return req.id === undefined ? undefined : { type: LIMITS_MESSAGE, id: req.id, ok: false };
    }
    const now = this.#now();
    const ms = req.ms ?? 0;
    let value: LimitsReply['value'] = null;
    switch (req.op) {
      case 'increment':
        value = await this.throttle.increment(req.keys!, now, ms);
        break;
      case 'counts':
        value = await this.throttle.counts(req.keys!, now, ms);
        break;
      case 'reset':
        await this.throttle.reset(req.keys!);
        break;
      case 'wait':
        value = await this.loginDelay.waitMs(req.user!, now, ms);
        break;
      case 'login':
        await this.loginDelay.recordLogin(req.user!, now, ms);
        break;
    }
    return { type: LIMITS_MESSAGE, id: req.id, ok: true, value };
  }

  /** Answers this worker's limits requests. */
  serve(worker: Worker): void {
    worker.on('message', (m: unknown) => {
      void this.answer(m).then((reply) => {
        if (reply !== undefined && worker.isConnected()) worker.send(reply, undefined, () => undefined);
      });
    });
  }
}

/** What a worker needs of its process: the IPC channel to the primary. */
export interface PrimaryChannel {
  send(message: unknown): boolean;
  on(event: 'message', listener: (m: unknown) => void): unknown;
  readonly connected: boolean;
}

/** The worker's side: requests to the primary, each answered or timed out. */
export class PrimaryClient {
  readonly #channel: PrimaryChannel;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, { resolve: (v: LimitsReply['value']) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  #nextId = 0;
  #listening = false;

  constructor(channel: PrimaryChannel = process as unknown as PrimaryChannel, timeoutMs = 1000) {
    this.#channel = channel;
    this.#timeoutMs = timeoutMs;
  }

  request(op: Op, fields: { keys?: readonly string[]; user?: string; ms?: number }): Promise<LimitsReply['value']> {
    if (!this.#listening) {
      this.#listening = true;
      this.#channel.on('message', (m) => this.#reply(m));
    }
    if (!this.#channel.connected) return Promise.reject(new Error('no channel to the primary process'));
    const id = this.#nextId;
    this.#nextId = this.#nextId >= Number.MAX_SAFE_INTEGER ? 0 : this.#nextId + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`the primary process did not answer within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      timer.unref();
      this.#pending.set(id, { resolve, reject, timer });
      try {
        this.#channel.send({ type: LIMITS_MESSAGE, id, op, ...fields });
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(e as Error);
      }
    });
  }

  /** Requests waiting for an answer. */
  get pending(): number {
    return this.#pending.size;
  }

  #reply(m: unknown): void {
    if (typeof m !== 'object' || m === null || (m as { type?: unknown }).type !== LIMITS_MESSAGE) return;
    const r = m as LimitsReply;
    const p = this.#pending.get(r.id);
    if (p === undefined) return;
    this.#pending.delete(r.id);
    clearTimeout(p.timer);
    if (r.ok) p.resolve(r.value ?? null);
    else p.reject(new Error('the primary process refused the request'));
  }
}

function numbers(v: LimitsReply['value'], n: number): number[] {
  if (!Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === 'number' && Number.isFinite(x))) throw new Error('bad answer from the primary process');
  return v;
}

/** Failure counters kept by the primary process. */
export class ClusterThrottleStore implements ThrottleStore {
  readonly #client: PrimaryClient;

  constructor(client: PrimaryClient) {
    this.#client = client;
  }

  async increment(keys: readonly string[], _now: number, windowMs: number): Promise<number[]> {
    return numbers(await this.#client.request('increment', { keys, ms: windowMs }), keys.length);
  }

  async counts(keys: readonly string[], _now: number, windowMs: number): Promise<number[]> {
    return numbers(await this.#client.request('counts', { keys, ms: windowMs }), keys.length);
  }

  async reset(keys: readonly string[]): Promise<void> {
    await this.#client.request('reset', { keys });
  }
}

/** LOGIN-DELAY times kept by the primary process. */
export class ClusterLoginDelayStore implements LoginDelayStore {
  readonly #client: PrimaryClient;

  constructor(client: PrimaryClient) {
    this.#client = client;
  }

  async waitMs(username: string, _now: number, delayMs: number): Promise<number> {
    const v = await this.#client.request('wait', { user: loginDelayKey(username), ms: delayMs });
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error('bad answer from the primary process');
    return v;
  }

  async recordLogin(username: string, _now: number, delayMs: number): Promise<void> {
    await this.#client.request('login', { user: loginDelayKey(username), ms: delayMs });
  }
}
