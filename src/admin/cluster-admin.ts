/**
 * The admin listener under --workers: the primary binds it and answers each
 * request from what every worker tells it over the cluster channel. Metrics
 * are summed with prom-client's AggregatorRegistry (its own messages); the
 * session list, kick and readiness use the messages below.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import type { AdminBackend } from './http.js';
import type { ProcessAdmin } from './process-admin.js';
import type { SessionRow } from './sessions.js';

const REQUEST = 'poplar-admin';
const REPLY = 'poplar-admin-reply';

type Op = { op: 'sessions' } | { op: 'kick'; user: string } | { op: 'ready' };
interface Request {
  type: typeof REQUEST;
  id: number;
  body: Op;
}
interface Reply {
  type: typeof REPLY;
  id: number;
  result: unknown;
}

function isRequest(m: unknown): m is Request {
  const r = m as Request | null;
  return typeof r === 'object' && r !== null && r.type === REQUEST && typeof r.id === 'number' && typeof r.body === 'object' && r.body !== null;
}

/** In a worker: answer the primary's admin requests from this process's table and checks. */
export function serveAdminRequests(admin: ProcessAdmin): void {
  if (!cluster.isWorker) return;
  AggregatorRegistry.setRegistries([admin.meters.registry]);
  new AggregatorRegistry(); // installs prom-client's answer to the primary's metrics requests
  process.on('message', (m: unknown) => {
    if (!isRequest(m)) return;
    const answer = async (): Promise<unknown> => {
      const b = m.body;
      if (b.op === 'sessions') return admin.sessions();
      if (b.op === 'kick') return typeof b.user === 'string' ? admin.kick(b.user) : 0;
      // A passed check is null here: the channel's JSON would drop an undefined one.
      return Object.fromEntries(Object.entries(await admin.readiness()).map(([name, why]) => [name, why ?? null]));
    };
    void answer().then(
      (result) => process.send?.({ type: REPLY, id: m.id, result } satisfies Reply),
      () => process.send?.({ type: REPLY, id: m.id, result: null } satisfies Reply),
    );
  });
}

/** In the primary: the admin backend over every live worker. */
export class ClusterAdmin implements AdminBackend {
  readonly #workers: () => Iterable<Worker>;
  readonly #expected: number;
  readonly #timeoutMs: number;
  readonly #aggregator = new AggregatorRegistry();
  readonly #pending = new Map<number, { worker: Worker; done: (r: unknown) => void }>();
  #next = 1;

  /** `timeoutMs`: how long a worker may take to answer (a worker that does not counts as failed). */
  constructor(workers: () => Iterable<Worker>, expected: number, timeoutMs: number) {
    this.#workers = workers;
    this.#expected = expected;
    this.#timeoutMs = timeoutMs;
    cluster.on('message', (worker: Worker, m: unknown) => {
      const r = m as Reply | null;
      if (typeof r !== 'object' || r === null || r.type !== REPLY || typeof r.id !== 'number') return;
      const p = this.#pending.get(r.id);
      // Only the worker asked may answer its request.
      if (p === undefined || p.worker !== worker) return;
      this.#pending.delete(r.id);
      p.done(r.result);
    });
  }

  /** Each live worker's answer (undefined: no answer in time). */
  #ask(body: Op): Promise<{ worker: Worker; result: unknown }[]> {
    const asks = [...this.#workers()]
      .filter((w) => w.isConnected())
      .map(
        (worker) =>
          new Promise<{ worker: Worker; result: unknown }>((resolve) => {
            const id = this.#next++;
            const timer = setTimeout(() => {
              this.#pending.delete(id);
              resolve({ worker, result: undefined });
            }, this.#timeoutMs);
            this.#pending.set(id, {
              worker,
              done: (result) => {
                clearTimeout(timer);
                resolve({ worker, result });
              },
            });
            try {
              worker.send({ type: REQUEST, id, body } satisfies Request);
            } catch {
              clearTimeout(timer);
              this.#pending.delete(id);
              resolve({ worker, result: undefined });
            }
          }),
      );
    return Promise.all(asks);
  }

  metrics(): Promise<string> {
    return this.#aggregator.clusterMetrics();
  }

  async readiness(): Promise<Record<string, string | undefined>> {
    const answers = await this.#ask({ op: 'ready' });
    const checks: Record<string, string | undefined> = {
      workers: answers.length >= this.#expected ? undefined : `${answers.length} of ${this.#expected} running`,
    };
    for (const { worker, result } of answers) {
      if (typeof result !== 'object' || result === null) {
        checks[`worker ${worker.process.pid}`] = 'no answer';
        continue;
      }
      for (const [name, why] of Object.entries(result as Record<string, unknown>)) {
        if (typeof why === 'string') checks[name] ??= `${why} (worker ${worker.process.pid})`;
        else if (!(name in checks)) checks[name] = undefined;
      }
    }
    return checks;
  }

  async sessions(): Promise<SessionRow[]> {
    const answers = await this.#ask({ op: 'sessions' });
    return answers.flatMap(({ result }) => (Array.isArray(result) ? (result as SessionRow[]) : []));
  }

  async kick(user: string): Promise<number> {
    const answers = await this.#ask({ op: 'kick', user });
    return answers.reduce((n, { result }) => n + (typeof result === 'number' ? result : 0), 0);
  }
}
