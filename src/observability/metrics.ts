/**
 * Prometheus metrics of one process (docs/monitoring.md lists them). They
 * are fed by the session observer (src/server/observer.ts), by a delivery
 * observer of the LMTP server, and by decorators around the store and the
 * authenticator that time every call; no protocol code counts anything
 * itself. Under --workers each worker keeps its own registry and the primary
 * sums them for a scrape (src/admin/cluster-admin.ts).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Authenticator, ConnectionInfo, Credentials, Principal } from '../auth/types.js';
import { MailError } from '../errors.js';
import type { ClientInfo } from '../server/client-info.js';
import type { LoginFailure, ServerObserver, SessionObserver } from '../server/observer.js';
import type { CommitOptions, DeliverOptions, DeliveryTarget, Maildrop, MailStore } from '../store/types.js';
import type { Readable } from 'node:stream';

/** What the LMTP server tells about each recipient of a delivery. */
export interface DeliveryObserver {
  /** `accepted`: 2xx, durable; `refused`: 5xx (unknown user, over a permanent quota); `temp-failed`: 4xx. */
  recipient(outcome: 'accepted' | 'refused' | 'temp-failed', bytes: number): void;
}

/** Seconds; POP3 commands are mostly sub-millisecond, RETR of a big message or a slow store takes seconds. */
const COMMAND_BUCKETS = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const BACKEND_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const DELAY_BUCKETS = [0.1, 0.5, 1, 2, 4, 8, 16, 32, 64];

type LoginResult = 'ok' | 'credentials' | 'blocked' | 'login-delay' | 'in-use' | 'maildrop' | 'backend';

function loginResult(f: LoginFailure): LoginResult {
  if (f.reason === 'maildrop') return f.error instanceof MailError && f.error.kind === 'in-use' ? 'in-use' : 'maildrop';
  return f.reason;
}

/** A backend failure worth an alert: a thrown error that is not an answer about the user or the mailbox. */
function isBackendError(e: unknown): boolean {
  return !(e instanceof MailError) || e.kind === 'temporary';
}

export class PoplarMetrics {
  readonly registry = new Registry();
  readonly #connectionsOpen: Gauge<'listener'>;
  readonly #connections: Counter<'listener'>;
  readonly #refused: Counter<'limit'>;
  readonly #tls: Counter<'kind'>;
  readonly #tlsFailures: Counter<'kind'>;
  readonly #logins: Counter<'mechanism' | 'result'>;
  readonly #failureDelay: Histogram;
  readonly #maildropOpen: Histogram<'outcome'>;
  readonly #inUse: Counter;
  readonly #commands: Histogram<'command'>;
  readonly #sentBytes: Counter<'command'>;
  readonly #sentMessages: Counter<'command'>;
  readonly #deleted: Counter;
  readonly #updateFailures: Counter;
  readonly #sessionsEnded: Counter;
  readonly #backend: Histogram<'backend' | 'operation'>;
  readonly #backendErrors: Counter<'backend' | 'operation'>;
  readonly #lmtp: Counter<'result'>;
  readonly #lmtpBytes: Counter;

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.#connectionsOpen = new Gauge({ name: 'poplar_connections_open', help: 'POP3 connections with a running session', labelNames: ['listener'], registers });
    this.#connections = new Counter({ name: 'poplar_connections_total', help: 'POP3 sessions started', labelNames: ['listener'], registers });
    this.#refused = new Counter({ name: 'poplar_connections_refused_total', help: 'POP3 connections refused by a connection limit', labelNames: ['limit'], registers });
    this.#tls = new Counter({ name: 'poplar_tls_handshakes_total', help: 'TLS handshakes completed (implicit TLS or STLS)', labelNames: ['kind'], registers });
    this.#tlsFailures = new Counter({ name: 'poplar_tls_handshake_failures_total', help: 'TLS handshakes that failed or timed out', labelNames: ['kind'], registers });
    this.#logins = new Counter({ name: 'poplar_logins_total', help: 'Login attempts by mechanism and result', labelNames: ['mechanism', 'result'], registers });
    this.#failureDelay = new Histogram({ name: 'poplar_login_failure_delay_seconds', help: 'Wait before a failed login is answered (failure throttle)', buckets: DELAY_BUCKETS, registers });
    this.#maildropOpen = new Histogram({ name: 'poplar_maildrop_open_seconds', help: 'Time to lock and list a maildrop at login, by outcome', labelNames: ['outcome'], buckets: BACKEND_BUCKETS, registers });
    this.#inUse = new Counter({ name: 'poplar_maildrop_in_use_total', help: 'Logins refused with [IN-USE]: the maildrop was locked by another session', registers });
    this.#commands = new Histogram({ name: 'poplar_command_duration_seconds', help: 'Time to answer a POP3 command, by command', labelNames: ['command'], buckets: COMMAND_BUCKETS, registers });
    this.#sentBytes = new Counter({ name: 'poplar_sent_bytes_total', help: 'Message octets sent by RETR and TOP (dot-stuffed)', labelNames: ['command'], registers });
    this.#sentMessages = new Counter({ name: 'poplar_sent_messages_total', help: 'Messages (RETR) and message tops (TOP) sent', labelNames: ['command'], registers });
    this.#deleted = new Counter({ name: 'poplar_messages_deleted_total', help: 'Messages removed in the UPDATE state', registers });
    this.#updateFailures = new Counter({ name: 'poplar_update_failures_total', help: 'UPDATE states that failed (nothing removed, -ERR to QUIT)', registers });
    this.#sessionsEnded = new Counter({ name: 'poplar_sessions_kicked_total', help: 'Sessions ended by poplar kick', registers });
    this.#backend = new Histogram({ name: 'poplar_backend_duration_seconds', help: 'Time of a store or user database call', labelNames: ['backend', 'operation'], buckets: BACKEND_BUCKETS, registers });
    this.#backendErrors = new Counter({ name: 'poplar_backend_errors_total', help: 'Store or user database calls that failed (unavailable, timed out, broken)', labelNames: ['backend', 'operation'], registers });
    this.#lmtp = new Counter({ name: 'poplar_lmtp_deliveries_total', help: 'LMTP recipients by result', labelNames: ['result'], registers });
    this.#lmtpBytes = new Counter({ name: 'poplar_lmtp_delivered_bytes_total', help: 'Octets delivered over LMTP (once per accepted recipient)', registers });
  }

  /** Prometheus text of this process alone. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** The session observer that feeds the POP3 metrics. */
  serverObserver(): ServerObserver {
    return {
      connected: (client) => {
        const listener = client.tls ? 'pop3s' : 'pop3';
        this.#connections.inc({ listener });
        this.#connectionsOpen.inc({ listener });
        return new MetricsSession(this, client, listener);
      },
      handshakeFailed: () => this.#tlsFailures.inc({ kind: 'implicit' }),
      refused: (_client, limit) => this.#refused.inc({ limit }),
    };
  }

  /** Called by MetricsSession (kept here so the metric objects stay private). */
  note = {
    ended: (listener: string, reason: string): void => {
      this.#connectionsOpen.dec({ listener });
      if (reason === 'kicked') this.#sessionsEnded.inc();
    },
    tls: (kind: 'implicit' | 'stls', ok: boolean): void => (ok ? this.#tls : this.#tlsFailures).inc({ kind }),
    login: (mechanism: string, result: LoginResult): void => this.#logins.inc({ mechanism, result }),
    failureDelay: (ms: number): void => this.#failureDelay.observe(ms / 1000),
    maildropOpened: (ms: number, outcome: string): void => {
      this.#maildropOpen.observe({ outcome }, ms / 1000);
      if (outcome === 'in-use') this.#inUse.inc();
    },
    command: (name: string, ms: number): void => this.#commands.observe({ command: name }, ms / 1000),
    sent: (command: string, bytes: number): void => {
      this.#sentBytes.inc({ command }, bytes);
      this.#sentMessages.inc({ command });
    },
    deleted: (n: number): void => this.#deleted.inc(n),
    updateFailed: (): void => this.#updateFailures.inc(),
  };

  /** For the LMTP server. */
  deliveryObserver(): DeliveryObserver {
    return {
      recipient: (outcome, bytes) => {
        this.#lmtp.inc({ result: outcome });
        if (outcome === 'accepted') this.#lmtpBytes.inc(bytes);
      },
    };
  }

  /** Time one backend call; count it as an error when it throws one (see isBackendError). */
  async #timed<T>(backend: 'auth' | 'store', operation: string, call: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await call();
    } catch (e) {
      if (isBackendError(e)) this.#backendErrors.inc({ backend, operation });
      throw e;
    } finally {
      this.#backend.observe({ backend, operation }, (performance.now() - t0) / 1000);
    }
  }

  /** The authenticator with every call timed (`auth` backend). */
  instrumentAuthenticator(a: Authenticator): Authenticator {
    const timed = <T>(op: string, call: () => Promise<T>): Promise<T> => this.#timed('auth', op, call);
    return {
      authenticate: (c: Credentials, conn: ConnectionInfo, signal?: AbortSignal) => timed('authenticate', () => a.authenticate(c, conn, signal)),
      ...(a.lookupSecret !== undefined ? { lookupSecret: (u: string, signal?: AbortSignal) => timed('lookup_secret', () => a.lookupSecret!(u, signal)) } : {}),
      ...(a.lookupPrincipal !== undefined ? { lookupPrincipal: (u: string, signal?: AbortSignal) => timed('lookup_principal', () => a.lookupPrincipal!(u, signal)) } : {}),
      ...(a.close !== undefined ? { close: () => a.close!() } : {}),
    };
  }

  /** The store with open, deliver and UPDATE's commit timed (`store` backend). */
  instrumentStore(s: MailStore): MailStore {
    const timed = <T>(op: string, call: () => Promise<T>): Promise<T> => this.#timed('store', op, call);
    const maildrop = (m: Maildrop): Maildrop => ({
      messages: m.messages,
      read: (index: number, signal?: AbortSignal) => m.read(index, signal),
      ...(m.openFile !== undefined ? { openFile: (index: number) => m.openFile!(index) } : {}),
      commit: (deleted: readonly number[], options?: CommitOptions) => timed('commit', () => m.commit(deleted, options)),
      release: () => m.release(),
    });
    return {
      open: async (user: Principal, signal?: AbortSignal) => maildrop(await timed('open', () => s.open(user, signal))),
      deliver: (user: string | Principal, message: Readable | Buffer, signal?: AbortSignal, options?: DeliverOptions) =>
        timed('deliver', () => s.deliver(user, message, signal, options)),
      ...(s.deliverShared !== undefined
        ? { deliverShared: (targets: readonly DeliveryTarget[], message: Buffer, signal?: AbortSignal) => timed('deliver', () => s.deliverShared!(targets, message, signal)) }
        : {}),
      ...(s.close !== undefined ? { close: () => s.close!() } : {}),
    };
  }
}

class MetricsSession implements SessionObserver {
  readonly #m: PoplarMetrics;
  readonly #listener: string;
  /** The next tlsStarted is the implicit-TLS one (told at the session's start). */
  #implicitPending: boolean;

  constructor(m: PoplarMetrics, client: ClientInfo, listener: string) {
    this.#m = m;
    this.#listener = listener;
    this.#implicitPending = client.tls;
  }
  tlsStarted(): void {
    this.#m.note.tls(this.#implicitPending ? 'implicit' : 'stls', true);
    this.#implicitPending = false;
  }
  tlsFailed(): void {
    this.#m.note.tls('stls', false);
  }
  loginSucceeded(_user: string, mechanism: string): void {
    this.#m.note.login(mechanism, 'ok');
  }
  loginFailed(_user: string | undefined, mechanism: string, failure: LoginFailure): void {
    this.#m.note.login(mechanism, loginResult(failure));
  }
  failureDelayed(ms: number): void {
    this.#m.note.failureDelay(ms);
  }
  maildropOpened(_user: string, ms: number, outcome: 'opened' | 'in-use' | 'failed'): void {
    this.#m.note.maildropOpened(ms, outcome);
  }
  command(name: string, ms: number): void {
    this.#m.note.command(name, ms);
  }
  messageSent(command: 'RETR' | 'TOP', bytes: number): void {
    this.#m.note.sent(command, bytes);
  }
  updated(expunged: number): void {
    this.#m.note.deleted(expunged);
  }
  updateFailed(): void {
    this.#m.note.updateFailed();
  }
  ended(reason: string): void {
    this.#m.note.ended(this.#listener, reason);
  }
}
