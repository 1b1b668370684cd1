import net from 'node:net';
import tls from 'node:tls';
import { constants as cryptoConstants } from 'node:crypto';
import { once } from 'node:events';
import type { Authenticator } from '../auth/types.js';
import type { Logger } from '../observability/log.js';
import type { MailStore } from '../store/types.js';
import { clientInfoOf, proxiedClientInfo, type ClientInfo } from './client-info.js';
import { blockListOf, inList } from '../config/cidr.js';
import { readProxyHeader } from './proxy-accept.js';
import { Connection } from './connection.js';
import type { LoginContext, ServerSettings } from './context.js';
import { logObserver } from './log-observer.js';
import { LoginDelayPolicy } from './login-delay.js';
import { fanOut, type ServerObserver, type SessionControl } from './observer.js';
import { handshake, peerAuthorized, serverTlsSocket } from './tls-accept.js';
import { dummyVerify } from '../auth/schemes.js';
import { LoginThrottle, RecentMaximum, normalizeAddress as addressKey, type ThrottleStore } from '../auth/throttle.js';
import type { LoginDelayStore } from '../auth/throttle-login-delay.js';
import { matchServerName } from '../config/sni.js';
import { DEFAULT_ENABLED_MECHANISMS, serverMechanisms, type MechanismInfo } from '../protocol/sasl/index.js';
import { Session } from './session.js';

/** A trusted proxy gets at most this long (or login_timeout, if shorter) to send its header. */
const PROXY_HEADER_TIMEOUT_S = 5;

export interface TlsMaterial {
  cert: string | Buffer;
  key: string | Buffer;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** CA certificates for client certificates: when set, clients are asked for one (SASL EXTERNAL). */
  clientCa?: string | Buffer | undefined;
  /** Certificates chosen by the server name the client asks for (SNI); the default is `cert` and `key`. */
  sni?: readonly { name: string; cert: string | Buffer; key: string | Buffer }[] | undefined;
}

/** Per server name: the contexts for STLS and for implicit TLS. */
interface SniContexts {
  readonly name: string;
  readonly stls: tls.SecureContext;
  readonly implicit: tls.SecureContext;
}

/** What SIGHUP may change for new sessions (see Pop3Server.reconfigure). */
export interface Reconfiguration {
  settings: ServerSettings;
  authenticator: Authenticator;
  oauth: boolean;
}

export interface Pop3ServerOptions {
  settings: ServerSettings;
  authenticator: Authenticator;
  store: MailStore;
  logger: Logger;
  tls?: TlsMaterial | undefined;
  /** Whether a bearer-token backend is configured: XOAUTH2 and OAUTHBEARER are offered only then. */
  oauth?: boolean;
  /** Failure counters and delays (default: from the settings, counted in `throttleStore`). */
  throttle?: LoginThrottle;
  /** Where failures are counted when `throttle` is not given (default: this process's memory). */
  throttleStore?: ThrottleStore | undefined;
  /** Where LOGIN-DELAY times are kept (default: this process's memory). */
  loginDelayStore?: LoginDelayStore | undefined;
  /** Observers of every session besides the log (metrics, tests); each gets every event. */
  observers?: readonly ServerObserver[];
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
    // No renegotiation at all: TLS 1.3 has none, and TLS 1.2's is refused.
    secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION,
  };
}

/** The implicit-TLS context also names the session cache (needed to resume a session that sent a client certificate). */
function implicitTlsOptions(m: TlsMaterial): tls.SecureContextOptions {
  return { ...tlsOptions(m), sessionIdContext: 'poplar-pop3s' };
}

/**
 * The POP3 listeners: plaintext (with STLS) and implicit TLS, connection
 * limits in total and per client address, certificate reload, graceful close.
 */
export class Pop3Server {
  readonly #opts: Pop3ServerOptions;
  /** Replaced whole by reconfigure(): a running session keeps the one it started with. */
  #ctx: LoginContext;
  readonly #store: MailStore;
  readonly #observer: ServerObserver;
  readonly #servers: net.Server[] = [];
  readonly #connections = new Set<Connection>();
  readonly #sockets = new Set<net.Socket>();
  readonly #perIp = new Map<string, number>();
  readonly #sessions = new Set<Promise<void>>();
  readonly #running = new Set<Session>();
  /** For STLS. */
  #secureContext: tls.SecureContext | null = null;
  /** For implicit-TLS listeners. */
  #implicitContext: tls.SecureContext | null = null;
  #tlsMaterial: TlsMaterial | undefined;
  #sniContexts: readonly SniContexts[] = [];
  /** Peers whose PROXY header is believed; null when the listeners take no header. */
  readonly #trustedProxies: net.BlockList | null;

  constructor(opts: Pop3ServerOptions) {
    this.#opts = opts;
    this.#tlsMaterial = opts.tls;
    this.#trustedProxies = opts.settings.proxy_protocol ? blockListOf(opts.settings.trusted_proxies) : null;
    if (opts.tls) this.reloadTls(opts.tls);
    this.#store = opts.store;
    this.#observer = fanOut([logObserver(opts.logger), ...(opts.observers ?? [])]);
    this.#ctx = this.#context({ settings: opts.settings, authenticator: opts.authenticator, oauth: opts.oauth ?? false }, opts.throttle, new RecentMaximum());
  }

  #context(r: Reconfiguration, throttle: LoginThrottle | undefined, decisionTimes: RecentMaximum): LoginContext {
    const s = r.settings;
    return {
      settings: s,
      authenticator: r.authenticator,
      logger: this.#opts.logger,
      mechanisms: selectMechanisms(s, r.oauth),
      throttle:
        throttle ??
        new LoginThrottle({
          baseDelayMs: s.auth_failure_delay * 1000,
          maxDelayMs: Math.max(s.auth_failure_max_delay, s.auth_failure_delay) * 1000,
          ipBlockAfter: s.auth_block_after,
          ipv4PrefixLength: s.ipv4_prefix,
          ipv6PrefixLength: s.ipv6_prefix,
          store: this.#opts.throttleStore,
        }),
      decisionTimes,
      loginDelay: s.login_delay !== undefined ? new LoginDelayPolicy(s.login_delay, this.#opts.loginDelayStore) : undefined,
      tlsContext: () => this.#secureContext,
      tlsServerName: () => (this.#sniContexts.length > 0 ? this.#sniStls : undefined),
      requestClientCertificate: () => this.#tlsMaterial?.clientCa !== undefined,
    };
  }

  /**
   * New settings, user database and SASL mechanisms for the sessions that
   * start from now on (limits, timeouts, throttle, plaintext_auth, ...);
   * running sessions finish with what they started with. The failure
   * counters themselves (in the throttle's store) are kept. Settings bound to
   * the listeners (addresses, PROXY protocol) are not changed here.
   */
  reconfigure(r: Reconfiguration): void {
    // A throttle given from outside (tests) is kept; otherwise a new one over the same store.
    this.#ctx = this.#context(r, this.#opts.throttle, this.#ctx.decisionTimes);
    for (const server of this.#servers) server.maxConnections = r.settings.max_connections + 64;
  }

  /** The context for `servername` on STLS or implicit TLS; undefined keeps the default certificate. */
  #sniFor(servername: string, implicit: boolean): tls.SecureContext | undefined {
    const hit = matchServerName(this.#sniContexts, servername);
    return hit === undefined ? undefined : implicit ? hit.implicit : hit.stls;
  }

  readonly #sniStls = (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void): void => cb(null, this.#sniFor(servername, false));
  readonly #sniImplicit = (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void): void => cb(null, this.#sniFor(servername, true));

  get connectionCount(): number {
    return this.#sockets.size;
  }

  /** Sessions still running (each ends once its connection is gone). */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /**
   * Replace the certificates and keys (the default one and those chosen by
   * SNI); sessions already running keep theirs. Every context is made before
   * any is swapped in, so a bad file changes nothing (it throws).
   */
  reloadTls(material: TlsMaterial): void {
    const ctx = tls.createSecureContext(tlsOptions(material));
    const implicit = tls.createSecureContext(implicitTlsOptions(material));
    const sni = (material.sni ?? []).map((e) => {
      const m = { ...material, cert: e.cert, key: e.key };
      try {
        return { name: e.name, stls: tls.createSecureContext(tlsOptions(m)), implicit: tls.createSecureContext(implicitTlsOptions(m)) };
      } catch (err) {
        throw new Error(`the certificate for ${e.name}: ${(err as Error).message}`);
      }
    });
    this.#tlsMaterial = material;
    this.#secureContext = ctx;
    this.#implicitContext = implicit;
    this.#sniContexts = sni;
  }

  async listen(specs: ListenSpec[]): Promise<BoundListener[]> {
    // What an unknown user costs (one dummy argon2id): the least wait before a failure is answered,
    // from the very first one on.
    const t0 = performance.now();
    await dummyVerify('');
    this.#ctx.decisionTimes.note(performance.now() - t0);
    const bound: BoundListener[] = [];
    for (const spec of specs) {
      if (spec.tls && !this.#tlsMaterial) throw new Error('implicit TLS listener without a certificate');
      // Plain TCP for both kinds: on an implicit-TLS port the handshake is ours to start (#acceptTls).
      const server = net.createServer({ allowHalfOpen: true, noDelay: true });
      if (this.#trustedProxies !== null) {
        const trusted = this.#trustedProxies;
        server.on('connection', (sock: net.Socket) => this.#acceptProxied(sock, spec.tls, trusted));
      } else if (spec.tls) {
        server.on('connection', (raw: net.Socket) => {
          const client = clientInfoOf(raw, true);
          if (this.#admit(raw, client)) this.#acceptTls(raw, client);
        });
      } else {
        server.on('connection', (sock: net.Socket) => {
          const client = clientInfoOf(sock, false);
          if (this.#admit(sock, client)) this.#start(new Connection(sock, false, this.#maxLine()), client);
        });
      }
      server.maxConnections = this.#ctx.settings.max_connections + 64; // our own check answers first
      server.listen({ host: spec.host, port: spec.port, backlog: 1024 });
      await once(server, 'listening');
      this.#servers.push(server);
      const addr = server.address() as net.AddressInfo;
      bound.push({ host: addr.address, port: addr.port, tls: spec.tls });
    }
    return bound;
  }

  /**
   * Connection limits, checked before any protocol work (before the TLS handshake on an implicit-TLS port).
   * `counted`: the socket is already in the total (a proxied one, counted before its header was read).
   */
  #admit(sock: net.Socket, client: ClientInfo, counted = false): boolean {
    const s = this.#ctx.settings;
    const rip = client.remoteAddress;
    // One prefix (by default an IPv4 address, an IPv6 /64) is one client for this limit.
    const ip = addressKey(rip, s.ipv6_prefix, s.ipv4_prefix);
    const n = this.#perIp.get(ip) ?? 0;
    const over = !counted && this.#sockets.size >= s.max_connections ? 'total' : n >= s.max_connections_per_ip ? 'per-ip' : null;
    if (over !== null) {
      this.#opts.logger.warn({ rip, limit: over }, 'connection refused: limit reached');
      this.#observer.refused?.(client, over);
      if (client.tls) sock.destroy();
      else sock.end('-ERR [SYS/TEMP] Too many connections, try again later.\r\n');
      sock.on('error', () => undefined);
      return false;
    }
    if (!counted) this.#countSocket(sock);
    this.#perIp.set(ip, n + 1);
    sock.once('close', () => {
      const left = (this.#perIp.get(ip) ?? 1) - 1;
      if (left <= 0) this.#perIp.delete(ip);
      else this.#perIp.set(ip, left);
    });
    return true;
  }

  #countSocket(sock: net.Socket): void {
    this.#sockets.add(sock);
    sock.once('close', () => this.#sockets.delete(sock));
  }

  /**
   * A listener behind a load balancer: only a trusted proxy may connect, and
   * its PROXY header comes first (before the greeting, before TLS). The total
   * limit counts sockets; the per-address limit, the log, the throttle and the
   * loopback rule use the address from the header.
   */
  #acceptProxied(sock: net.Socket, tls: boolean, trusted: net.BlockList): void {
    sock.on('error', () => undefined);
    const peer = clientInfoOf(sock, tls);
    if (!inList(trusted, peer.remoteAddress)) {
      this.#opts.logger.warn({ rip: peer.remoteAddress }, 'connection refused: not a trusted proxy');
      sock.destroy();
      return;
    }
    if (this.#sockets.size >= this.#ctx.settings.max_connections) {
      this.#opts.logger.warn({ rip: peer.remoteAddress, limit: 'total' }, 'connection refused: limit reached');
      this.#observer.refused?.(peer, 'total');
      sock.destroy();
      return;
    }
    this.#countSocket(sock);
    const timeoutMs = Math.min(Math.max(1, this.#ctx.settings.login_timeout), PROXY_HEADER_TIMEOUT_S) * 1000;
    void readProxyHeader(sock, timeoutMs).then((r) => {
      if (r instanceof Error) {
        this.#opts.logger.warn({ rip: peer.remoteAddress, err: r.message }, 'trusted proxy sent no valid PROXY header');
        sock.destroy();
        return;
      }
      if (sock.destroyed) return;
      const client = r.addresses ? proxiedClientInfo(r.addresses, tls) : peer;
      if (!this.#admit(sock, client, true)) return;
      if (tls) this.#acceptTls(sock, client);
      else {
        this.#start(new Connection(sock, false, this.#maxLine()), client);
        sock.resume();
      }
    });
  }

  #maxLine(): number {
    const s = this.#ctx.settings;
    return Math.max(s.max_line_length, s.max_auth_line_length);
  }

  /**
   * Implicit TLS (RFC 8314): the handshake, then the session. Behind a
   * proxy, its header has been read from `raw` before this.
   */
  #acceptTls(raw: net.Socket, client: ClientInfo): void {
    const requestCert = this.#tlsMaterial?.clientCa !== undefined;
    const secure = serverTlsSocket(raw, this.#implicitContext!, requestCert, this.#sniContexts.length > 0 ? this.#sniImplicit : undefined);
    // Kept for the socket's life: an error between the handshake and the session must not go unheard.
    secure.on('error', () => secure.destroy());
    void handshake(secure, Math.max(1, this.#ctx.settings.login_timeout) * 1000).then((failed) => {
      if (failed !== null) {
        this.#opts.logger.debug({ rip: client.remoteAddress, err: failed.message }, 'TLS handshake failed');
        this.#observer.handshakeFailed?.(client);
        // Without this a client that never sends a ClientHello would hold its slot.
        secure.destroy();
        raw.destroy();
        return;
      }
      this.#start(new Connection(secure, true, this.#maxLine(), peerAuthorized(secure, requestCert)), client);
    });
  }

  #start(conn: Connection, client: ClientInfo): void {
    this.#connections.add(conn);
    const control: SessionControl = {
      get bytesIn() {
        return conn.bytesIn;
      },
      get bytesOut() {
        return conn.bytesOut;
      },
      kick: () => session.shutdown('kicked'),
    };
    const session: Session = new Session(conn, client, this.#ctx, this.#store, this.#observer.connected(client, control));
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
