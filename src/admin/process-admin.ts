/**
 * The admin side of one serving process: its metrics, its session table, and
 * its readiness (listeners bound, store and user database answering a cheap
 * probe in time). A single process serves these itself (AdminServer); a
 * --workers worker answers the primary over the cluster channel
 * (cluster-admin.ts).
 */
import type { ResolvedConfig } from '../config/load.js';
import { PoplarMetrics } from '../observability/metrics.js';
import type { ServerObserver } from '../server/observer.js';
import type { AdminBackend } from './http.js';
import { SessionTable } from './sessions.js';

/** A cheap call to a backend; it rejects when the backend cannot answer. */
export type Probe = (signal: AbortSignal) => Promise<unknown>;

export function adminEnabled(config: ResolvedConfig): boolean {
  return config.admin.listen !== undefined || config.admin.socket !== undefined;
}

export class ProcessAdmin implements AdminBackend {
  /** This process's metrics (summed with the other workers' by the primary). */
  readonly meters = new PoplarMetrics();
  readonly table = new SessionTable();
  readonly #probeTimeoutMs: number;
  readonly #probes = new Map<string, Probe>();
  #listening = false;

  constructor(config: ResolvedConfig) {
    this.#probeTimeoutMs = config.admin.probe_timeout * 1000;
  }

  /** What the POP3 server reports to (metrics and the session table). */
  observers(): ServerObserver[] {
    return [this.meters.serverObserver(), this.table.observer()];
  }

  probe(name: string, p: Probe): void {
    this.#probes.set(name, p);
  }

  /** Every listener is bound. */
  listening(): void {
    this.#listening = true;
  }

  metrics(): Promise<string> {
    return this.meters.text();
  }

  async readiness(): Promise<Record<string, string | undefined>> {
    const checks: Record<string, string | undefined> = { listeners: this.#listening ? undefined : 'not listening yet' };
    await Promise.all(
      [...this.#probes].map(async ([name, p]) => {
        checks[name] = await this.#runProbe(p);
      }),
    );
    return checks;
  }

  async #runProbe(p: Probe): Promise<string | undefined> {
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<string>((resolve) => {
      timer = setTimeout(() => {
        abort.abort();
        resolve(`no answer within ${this.#probeTimeoutMs / 1000} s`);
      }, this.#probeTimeoutMs);
    });
    try {
      return await Promise.race([p(abort.signal).then(() => undefined), timeout]);
    } catch (e) {
      return `unreachable: ${(e as Error).message ?? String(e)}`.slice(0, 300);
    } finally {
      clearTimeout(timer);
    }
  }

  async sessions(): ReturnType<AdminBackend['sessions']> {
    return this.table.list();
  }

  async kick(user: string): Promise<number> {
    return this.table.kick(user);
  }
}
