/**
 * The admin HTTP server: /metrics, /healthz and /readyz for monitoring, and
 * /sessions and /kick for `poplar who` and `poplar kick`. It serves on a TCP
 * listener (loopback unless allow_remote) and/or a UNIX socket.
 *
 * Who may control sessions: a request that came through the UNIX socket may
 * (the socket's mode and group decide who can connect: root and the service
 * group by default); a request on the TCP listener only when `token_file` is
 * configured and the request bears that token. Monitoring endpoints answer
 * everyone who can connect.
 */
import { timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { ConfigError } from '../config/errors.js';
import { removeStaleSocket } from '../platform/unix-socket.js';
import type { Logger } from '../observability/log.js';
import type { AdminConfig } from './config.js';
import type { SessionRow } from './sessions.js';

/** What the admin server asks of the process (or the --workers cluster) behind it. */
export interface AdminBackend {
  /** Prometheus text format. */
  metrics(): Promise<string>;
  /** Each check by name: undefined when it passed, else why not. */
  readiness(): Promise<Record<string, string | undefined>>;
  sessions(): Promise<SessionRow[]>;
  /** Sessions ended. */
  kick(user: string): Promise<number>;
}

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
/** A user name in /kick: what usernames.ts allows is far shorter. */
const MAX_USER = 512;

export interface BoundAdmin {
  readonly tcp?: { host: string; port: number };
  readonly socket?: string;
}

export class AdminServer {
  readonly #config: AdminConfig;
  readonly #backend: AdminBackend;
  readonly #logger: Logger;
  readonly #token: Buffer | undefined;
  readonly #servers: http.Server[] = [];
  #socketPath: string | undefined;
  /** Set when shutdown begins: /readyz answers 503 from then on. */
  draining = false;

  constructor(config: AdminConfig, backend: AdminBackend, logger: Logger, token: string | undefined) {
    this.#config = config;
    this.#backend = backend;
    this.#logger = logger;
    this.#token = token === undefined ? undefined : Buffer.from(token);
  }

  /** Bind what is configured (as root, before the switch: the socket gets its group here). */
  async listen(socketGid: number | undefined): Promise<BoundAdmin> {
    const c = this.#config;
    let tcp: BoundAdmin['tcp'];
    if (c.listen !== undefined) {
      const { host, port } = splitHostPort(c.listen);
      if (!c.allow_remote && !isLoopbackHost(host)) {
        throw new ConfigError(`invalid configuration: admin.listen ${c.listen} is not a loopback address; set admin.allow_remote = true to serve metrics to other hosts`);
      }
      const server = this.#server(false);
      server.listen({ host, port });
      await listening(server, c.listen);
      const a = server.address() as net.AddressInfo;
      tcp = { host: a.address, port: a.port };
    }
    if (c.socket !== undefined) {
      const p = c.socket;
      await removeStaleSocket(p, 'admin');
      const server = this.#server(true);
      server.listen({ path: p });
      await listening(server, p);
      this.#socketPath = p;
      // Between listen and chmod the socket has the umask's mode: the directory it is in should be private too.
      await fs.chmod(p, parseInt(c.socket_mode, 8));
      if (socketGid !== undefined) {
        await fs.chown(p, -1, socketGid).catch((e: NodeJS.ErrnoException) => {
          throw new ConfigError(`cannot give the admin socket ${p} to group ${socketGid}: ${e.code ?? e.message}`);
        });
      }
    }
    return { ...(tcp !== undefined ? { tcp } : {}), ...(c.socket !== undefined ? { socket: c.socket } : {}) };
  }

  async close(): Promise<void> {
    for (const s of this.#servers) s.closeAllConnections();
    await Promise.all(this.#servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    if (this.#socketPath !== undefined) await fs.unlink(this.#socketPath).catch(() => undefined);
  }

  #server(local: boolean): http.Server {
    const server = http.createServer({ requestTimeout: 30_000, headersTimeout: 10_000, maxHeaderSize: 8192 }, (req, res) => {
      this.#handle(req, res, local).catch((e: unknown) => {
        this.#logger.error({ err: e, url: req.url }, 'admin request failed');
        if (!res.headersSent) send(res, 500, 'internal error\n');
        else res.destroy();
      });
    });
    server.maxConnections = 64;
    server.on('clientError', (_e, sock) => sock.destroy());
    this.#servers.push(server);
    return server;
  }

  /** A control request (who, kick): through the socket, or with the token. */
  #mayControl(req: http.IncomingMessage, local: boolean): boolean {
    if (local) return true;
    if (this.#token === undefined) return false;
    const m = /^Bearer ([\x21-\x7e]+)$/.exec(req.headers.authorization ?? '');
    if (m === null) return false;
    const given = Buffer.from(m[1]!);
    return given.length === this.#token.length && timingSafeEqual(given, this.#token);
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse, local: boolean): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const method = req.method ?? 'GET';
    const get = method === 'GET' || method === 'HEAD';
    switch (url.pathname) {
      case '/healthz':
        if (!get) return send(res, 405, 'method not allowed\n');
        return send(res, 200, 'ok\n');
      case '/readyz': {
        if (!get) return send(res, 405, 'method not allowed\n');
        if (this.draining) return send(res, 503, 'not ready: shutting down\n');
        const checks = await this.#backend.readiness();
        // The drain may have begun while the probes ran.
        if (this.draining) return send(res, 503, 'not ready: shutting down\n');
        const failed = Object.entries(checks).filter(([, why]) => why !== undefined);
        const body = Object.entries(checks).map(([name, why]) => `${name}: ${why ?? 'ok'}\n`).join('');
        return send(res, failed.length === 0 ? 200 : 503, body);
      }
      case '/metrics':
        if (!get) return send(res, 405, 'method not allowed\n');
        return send(res, 200, await this.#backend.metrics(), METRICS_CONTENT_TYPE);
      case '/sessions':
        if (!get) return send(res, 405, 'method not allowed\n');
        if (!this.#mayControl(req, local)) return send(res, 403, 'forbidden: use the admin socket, or the token\n');
        return send(res, 200, JSON.stringify(await this.#backend.sessions()) + '\n', 'application/json');
      case '/kick': {
        if (method !== 'POST') return send(res, 405, 'method not allowed\n');
        if (!this.#mayControl(req, local)) return send(res, 403, 'forbidden: use the admin socket, or the token\n');
        const user = url.searchParams.get('user');
        if (user === null || user === '' || user.length > MAX_USER) return send(res, 400, 'expected ?user=NAME\n');
        const kicked = await this.#backend.kick(user);
        this.#logger.info({ user, kicked }, 'admin: sessions kicked');
        return send(res, 200, JSON.stringify({ user, kicked }) + '\n', 'application/json');
      }
      default:
        return send(res, 404, 'not found\n');
    }
  }
}

function send(res: http.ServerResponse, status: number, body: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

async function listening(server: http.Server, where: string): Promise<void> {
  try {
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e as Error))]);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ConfigError(`cannot listen on ${where} (admin): ${code ?? (e as Error).message}`);
  }
}

export function splitHostPort(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  let host = a.slice(0, i);
  if (host.startsWith('[')) host = host.slice(1, -1);
  const port = Number(a.slice(i + 1));
  if (port > 65535) throw new ConfigError(`invalid configuration: bad port in ${a}`);
  return { host, port };
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || (net.isIPv4(host) && host.startsWith('127.'));
}

