import net from 'node:net';
import tls from 'node:tls';
import { constants as cryptoConstants } from 'node:crypto';
import { once } from 'node:events';
import type { Authenticator } from '../auth/types.js';
import type { Logger } from '../observability/log.js';
import type { MailStore } from '../store/types.js';
import { Connection, normalizeAddress } from './connection.js';
import type { ServerContext, ServerSettings } from './context.js';
import { LoginDelayPolicy } from './login-delay.js';
import { dummyVerify } from '../auth/schemes.js';
import { LoginThrottle, RecentMaximum, normalizeAddress as addressKey } from '../auth/throttle.js';
import { DEFAULT_ENABLED_MECHANISMS, serverMechanisms, type MechanismInfo } from '../protocol/sasl/index.js';
import { Session } from './session.js';

export interface TlsMaterial {
  cert: string | Buffer;
  key: string | Buffer;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** CA certificates for client certificates: when set, clients are asked for one (SASL EXTERNAL). */
  clientCa?: string | Buffer | undefined;
}

export interface Pop3ServerOptions {
  settings: ServerSettings;
  authenticator: Authenticator;
  store: MailStore;
  logger: Logger;
  tls?: TlsMaterial | undefined;
  /** Whether a bearer-token backend is configured: XOAUTH2 and OAUTHBEARER are offered only then. */
  oauth?: boolean;
  /** Shared failure counters (default: in memory, from the settings). */
  throttle?: LoginThrottle;
}

/**
 * The mechanisms to offer: the configured list, or by default only what every
 * stored password can serve (like Dovecot's default) plus the bearer-token
 * mechanisms when OAuth is configured. CRAM-MD5 and SCRAM need matching stored
 * secrets, so the admin turns them on with `sasl_mechanisms`.
 */
export function selectMechanisms(settings: ServerSettings, oauth: boolean): readonly MechanismInfo[] {
  const names = settings.sasl_mechanisms ?? [...DEFAULT_ENABLED_MECHANISMS, ...(oauth ? ['OAUTHBEARER', 'XOAUTH2'] : [])];
  // Without a -PLUS mechanism on offer, a SCRAM client's `y` flag is no downgrade sign.
  const plus = names.some((n) => n.toUpperCase().endsWith('-PLUS'));
  return serverMechanisms({ enabled: names, channelBinding: plus });
}

export interface ListenSpec {
  host: string;
  port: number;
  /** Implicit TLS (RFC 8314, port 995): handshake first, then the greeting. */
  tls: boolean;
}

export interface BoundListener {
  host: string;
  port: number;
  tls: boolean;
}

function tlsOptions(m: TlsMaterial): tls.SecureContextOptions {
  return {
    cert: m.cert,
    key: m.key,
    ...(m.clientCa !== undefined ? { ca: m.clientCa } : {}),
    minVersion: m.minVersion ?? 'TLSv1.2',
    // No renegotiation at all (checklist 23): TLS 1.3 has none, and TLS 1.2's is refused.
    secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION,
  };
}

/**
 * The POP3 listeners: plaintext (with STLS) and implicit TLS, connection
 * limits in total and per client address, certificate reload, graceful close.
 */
export class Pop3Server {
  readonly #opts: Pop3ServerOptions;
  readonly #ctx: ServerContext;
  readonly #servers: (net.Server | tls.Server)[] = [];
  readonly #tlsServers: tls.Server[] = [];
  readonly #connections = new Set<Connection>();
  readonly #sockets = new Set<net.Socket>();
  readonly #perIp = new Map<string, number>();
  readonly #sessions = new Set<Promise<void>>();
  readonly #running = new Set<Session>();
  #secureContext: tls.SecureContext | null = null;
  #tlsMaterial: TlsMaterial | undefined;

  constructor(opts: Pop3ServerOptions) {
    this.#opts = opts;
    this.#tlsMaterial = opts.tls;
    if (opts.tls) this.#secureContext = tls.createSecureContext(tlsOptions(opts.tls));
    this.#ctx = {
      settings: opts.settings,
      authenticator: opts.authenticator,
      store: opts.store,
      logger: opts.logger,
      mechanisms: selectMechanisms(opts.settings, opts.oauth ?? false),
      throttle:
        opts.throttle ??
        new LoginThrottle({
          baseDelayMs: opts.settings.auth_failure_delay * 1000,
          maxDelayMs: Math.max(opts.settings.auth_failure_max_delay, opts.settings.auth_failure_delay) * 1000,
          ipBlockAfter: opts.settings.auth_block_after,
          ipv4PrefixLength: opts.settings.ipv4_prefix,
          ipv6PrefixLength: opts.settings.ipv6_prefix,
        }),
      decisionTimes: new RecentMaximum(),
      loginDelay: opts.settings.login_delay !== undefined ? new LoginDelayPolicy(opts.settings.login_delay) : undefined,
      tlsContext: () => this.#secureContext,
      requestClientCertificate: () => this.#tlsMaterial?.clientCa !== undefined,
    };
  }

  get connectionCount(): number {
    return this.#sockets.size;
  }

  /** Sessions still running (each ends once its connection is gone). */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Replace the certificate and key; sessions already running keep theirs. */
  reloadTls(material: TlsMaterial): void {
    const ctx = tls.createSecureContext(tlsOptions(material));
    this.#tlsMaterial = material;
    this.#secureContext = ctx;
    for (const s of this.#tlsServers) s.setSecureContext(tlsOptions(material));
  }

  async listen(specs: ListenSpec[]): Promise<BoundListener[]> {
    // What an unknown user costs (one dummy argon2id): the least wait before a failure is answered,
    // from the very first one on.
    const t0 = performance.now();
    await dummyVerify('');
    this.#ctx.decisionTimes.note(performance.now() - t0);
    const bound: BoundListener[] = [];
    for (const spec of specs) {
      let server: net.Server | tls.Server;
      if (spec.tls) {
        if (!this.#tlsMaterial) throw new Error('implicit TLS listener without a certificate');
        const s = tls.createServer({
          ...tlsOptions(this.#tlsMaterial),
          allowHalfOpen: true,
          // A client certificate is asked for, never required: without one the client logs in otherwise.
          requestCert: this.#tlsMaterial.clientCa !== undefined,
          rejectUnauthorized: false,
          handshakeTimeout: Math.max(1, this.#opts.settings.login_timeout) * 1000,
        });
        s.on('connection', (raw: net.Socket) => this.#admit(raw, true));
        s.on('secureConnection', (sock: tls.TLSSocket) => this.#start(sock, true));
        s.on('tlsClientError', (err, sock) => {
          this.#opts.logger.debug({ rip: normalizeAddress(sock.remoteAddress ?? ''), err: err.message }, 'TLS handshake failed');
          // Node only reports a handshake timeout here; without this a client that never sends a ClientHello holds its slot forever.
          sock.destroy();
        });
        this.#tlsServers.push(s);
        server = s;
      } else {
        const s = net.createServer({ allowHalfOpen: true, noDelay: true });
        s.on('connection', (sock: net.Socket) => {
          if (this.#admit(sock, false)) this.#start(sock, false);
        });
        server = s;
      }
      server.maxConnections = this.#opts.settings.max_connections + 64; // our own check answers first
      server.listen({ host: spec.host, port: spec.port, backlog: 1024 });
      await once(server, 'listening');
      this.#servers.push(server);
      const addr = server.address() as net.AddressInfo;
      bound.push({ host: addr.address, port: addr.port, tls: spec.tls });
    }
    return bound;
  }

  /** Connection limits, checked before any protocol work. */
  #admit(sock: net.Socket, implicitTls: boolean): boolean {
    const s = this.#opts.settings;
    const rip = normalizeAddress(sock.remoteAddress ?? '');
    // One prefix (by default an IPv4 address, an IPv6 /64) is one client for this limit.
    const ip = addressKey(rip, s.ipv6_prefix, s.ipv4_prefix);
    const n = this.#perIp.get(ip) ?? 0;
    const over = this.#sockets.size >= s.max_connections ? 'total' : n >= s.max_connections_per_ip ? 'per-ip' : null;
    if (over !== null) {
      this.#opts.logger.warn({ rip, limit: over }, 'connection refused: limit reached');
      if (implicitTls) sock.destroy();
      else sock.end('-ERR [SYS/TEMP] Too many connections, try again later.\r\n');
      sock.on('error', () => undefined);
      return false;
    }
    this.#sockets.add(sock);
    this.#perIp.set(ip, n + 1);
    sock.once('close', () => {
      this.#sockets.delete(sock);
      const left = (this.#perIp.get(ip) ?? 1) - 1;
      if (left <= 0) this.#perIp.delete(ip);
      else this.#perIp.set(ip, left);
    });
    return true;
  }

  #start(sock: net.Socket, secure: boolean): void {
    const s = this.#opts.settings;
    const conn = new Connection(sock, secure, Math.max(s.max_line_length, s.max_auth_line_length));
    this.#connections.add(conn);
    const session = new Session(conn, this.#ctx);
    this.#running.add(session);
    const p = session.run().finally(() => {
      this.#running.delete(session);
      this.#connections.delete(conn);
      this.#sessions.delete(p);
    });
    this.#sessions.add(p);
  }

  /**
   * Stop accepting, give running sessions `graceMs` to finish, then end the
   * rest without UPDATE (nothing is removed unless the client said QUIT): a
   * session waiting for a command gets `-ERR [SYS/TEMP] Server shutting down.`
   * (a second at most to send it), one in the middle of a reply is cut off.
   */
  async close(graceMs = 0): Promise<void> {
    // net.Server.close() calls back only after every connection is gone, so wait for it last.
    const closed = Promise.all(this.#servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    if (this.#sessions.size > 0 && graceMs > 0) {
      await Promise.race([Promise.allSettled([...this.#sessions]), new Promise((r) => setTimeout(r, graceMs).unref())]);
    }
    for (const s of this.#running) s.shutdown();
    if (this.#sessions.size > 0) await Promise.race([Promise.allSettled([...this.#sessions]), new Promise((r) => setTimeout(r, 1000).unref())]);
    for (const c of this.#connections) c.destroy();
    for (const s of this.#sockets) s.destroy();
    await Promise.allSettled([...this.#sessions]);
    await closed;
  }
}
