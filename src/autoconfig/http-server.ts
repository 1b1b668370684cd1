/**
 * The autoconfig listener: plain node:http (and node:https with the POP3
 * server's certificate) answering the few URLs mail clients ask. Everything
 * a client sends is hostile: the URL and headers are bounded by Node's
 * parser limits, a body by MAX_BODY, a slow client by the timeouts; an
 * address is checked (address.ts) before it reaches any answer, and an
 * address of a domain not configured gets 404, never settings.
 */
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from '../observability/log.js';
import { parseAddress, type MailAddress } from './address.js';
import { AutodiscoverRequestError, autodiscoverError, autodiscoverResponse, OUTLOOK_SCHEMA, readAutodiscoverRequest } from './autodiscover.js';
import { appleProfile, profileFileName } from './mobileconfig.js';
import { PAGE_CSP, setupPage, type PageState } from './page.js';
import type { ClientSettings } from './settings.js';
import { thunderbirdConfig } from './thunderbird.js';
import { XmlSyntaxError } from './xml.js';

/** The largest request body read (an Autodiscover request is some 400 octets). */
export const MAX_BODY = 16 * 1024;

export interface AutoconfigTls {
  cert: string | Buffer;
  key: string | Buffer;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
}

export interface AutoconfigServerOptions {
  /** The first settings (replaced by update()). */
  readonly settings: ClientSettings;
  readonly logger: Logger;
  /** Needed for listeners with `tls`. */
  readonly tls?: AutoconfigTls | undefined;
  /** Simultaneous connections per listener. */
  readonly maxConnections?: number;
}

export interface HttpListenSpec {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
}

const COMMON_HEADERS = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export class AutoconfigServer {
  readonly #opts: AutoconfigServerOptions;
  #settings: ClientSettings;
  readonly #servers: (http.Server | https.Server)[] = [];
  readonly #bound: HttpListenSpec[] = [];

  constructor(opts: AutoconfigServerOptions) {
    this.#opts = opts;
    this.#settings = opts.settings;
  }

  /** Answer with these settings from the next request on (after a reload of the configuration). */
  update(settings: ClientSettings): void {
    this.#settings = settings;
  }

  /** Whether any listener is HTTPS (and so has a certificate to reload). */
  get https(): boolean {
    return this.#bound.some((b) => b.tls);
  }

  /** Bind every address; the bound ports (useful with port 0). */
  async listen(specs: readonly HttpListenSpec[]): Promise<HttpListenSpec[]> {
    const bound: HttpListenSpec[] = [];
    for (const spec of specs) {
      // Slow clients: headers within 10 s, the whole request within 15 s, checked every 2 s (Node's default is every 30 s).
      const options: http.ServerOptions = { requestTimeout: 15_000, headersTimeout: 10_000, connectionsCheckingInterval: 2_000, keepAliveTimeout: 5_000, maxHeaderSize: 8192 };
      let server: http.Server | https.Server;
      if (spec.tls) {
        const t = this.#opts.tls;
        if (t === undefined) throw new Error('an HTTPS listener needs a certificate');
        server = https.createServer({ ...options, cert: t.cert, key: t.key, minVersion: t.minVersion ?? 'TLSv1.2' }, (req, res) => this.#handle(req, res));
      } else {
        server = http.createServer(options, (req, res) => this.#handle(req, res));
      }
      server.maxConnections = this.#opts.maxConnections ?? 200;
      server.on('clientError', (_err, socket: net.Socket) => {
        if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        else socket.destroy();
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: spec.host, port: spec.port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', (e) => this.#opts.logger.error({ err: e }, 'autoconfig listener error'));
      this.#servers.push(server);
      const addr = server.address() as net.AddressInfo;
      bound.push({ host: addr.address, port: addr.port, tls: spec.tls });
    }
    this.#bound.push(...bound);
    return bound;
  }

  /** What is listening (the ports actually bound). */
  get addresses(): readonly HttpListenSpec[] {
    return this.#bound;
  }

  /** A new certificate for the HTTPS listeners (SIGHUP). */
  reloadTls(m: AutoconfigTls): void {
    for (const s of this.#servers) {
      if (s instanceof tls.Server) s.setSecureContext({ cert: m.cert, key: m.key, minVersion: m.minVersion ?? 'TLSv1.2' });
    }
  }

  /** Stop accepting; idle keep-alive connections are closed, requests under way get `graceMs`. */
  async close(graceMs = 5000): Promise<void> {
    await Promise.all(
      this.#servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            const t = setTimeout(() => s.closeAllConnections(), graceMs);
            t.unref();
            s.close(() => {
              clearTimeout(t);
              resolve();
            });
            s.closeIdleConnections();
          }),
      ),
    );
    this.#servers.length = 0;
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.#route(req, res).catch((e: unknown) => {
      const status = e instanceof HttpError ? e.status : 500;
      if (status === 500) this.#opts.logger.error({ err: e }, 'autoconfig request failed');
      if (!res.headersSent) this.#send(res, status, 'text/plain; charset=utf-8', `${e instanceof HttpError ? e.message : 'internal error'}\n`, status === 413 ? { connection: 'close' } : {});
      else res.destroy();
    });
  }

  #send(res: http.ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}): void {
    const buf = Buffer.from(body, 'utf8');
    res.writeHead(status, { ...COMMON_HEADERS, 'content-type': type, 'content-length': String(buf.length), ...headers });
    res.end(buf);
  }

  async #route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://autoconfig.invalid');
    } catch {
      throw new HttpError(400, 'bad request target');
    }
    const path = url.pathname;
    const method = req.method ?? 'GET';
    const log = (status: number): void => this.#opts.logger.debug({ method, path, status }, 'autoconfig request');
    const s = this.#settings;

    // Outlook writes the path in either case.
    if (path.toLowerCase() === '/autodiscover/autodiscover.xml') {
      if (method !== 'POST') throw new HttpError(405, 'Autodiscover takes POST');
      const body = await readBody(req);
      let request;
      try {
        request = readAutodiscoverRequest(body);
      } catch (e) {
        if (e instanceof XmlSyntaxError) throw new HttpError(400, `the request body is not well-formed XML: ${e.message}`);
        if (e instanceof AutodiscoverRequestError) {
          log(400);
          return this.#send(res, 400, 'text/xml; charset=utf-8', autodiscoverError(600, 'Invalid Request'));
        }
        throw e;
      }
      if (request.schema !== undefined && request.schema !== OUTLOOK_SCHEMA) {
        log(200);
        return this.#send(res, 200, 'text/xml; charset=utf-8', autodiscoverError(601, 'Provider is not available for the requested schema'));
      }
      const address = this.#ours(request.email);
      if (address === null) {
        log(404);
        return this.#send(res, 404, 'text/xml; charset=utf-8', autodiscoverError(500, 'The e-mail address cannot be found.'));
      }
      log(200);
      return this.#send(res, 200, 'text/xml; charset=utf-8', autodiscoverResponse(s, address));
    }

    if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, 'only GET and HEAD here');
    if (path === '/mail/config-v1.1.xml' || path === '/.well-known/autoconfig/mail/config-v1.1.xml') {
      const given = url.searchParams.get('emailaddress');
      let domain: string | null;
      if (given !== null) {
        domain = this.#ours(given)?.domain ?? null;
      } else {
        // No address: the domain the client asked under (autoconfig.DOMAIN or DOMAIN), or the only one there is.
        const host = (req.headers.host ?? '').toLowerCase().replace(/:\d+$/, '').replace(/^autoconfig\./, '');
        domain = s.domains.includes(host) ? host : s.domains.length === 1 ? s.domains[0]! : null;
      }
      if (domain === null) throw new HttpError(404, 'no mail settings for this address or domain');
      log(200);
      return this.#send(res, 200, 'application/xml; charset=utf-8', thunderbirdConfig(s, domain));
    }
    if (path === '/apple/mail.mobileconfig') {
      const address = this.#ours(url.searchParams.get('emailaddress') ?? '');
      if (address === null) throw new HttpError(404, 'no mail settings for this address');
      const profile = appleProfile(s, address, displayName(url.searchParams.get('name')));
      if (profile === undefined) throw new HttpError(404, 'no profile for Apple devices: no outgoing server is configured');
      log(200);
      return this.#send(res, 200, 'application/x-apple-aspen-config', profile, { 'content-disposition': `attachment; filename="${profileFileName(address)}"` });
    }
    if (path === '/' || path === '/setup') {
      const given = url.searchParams.get('emailaddress');
      let state: PageState = { kind: 'form' };
      let status = 200;
      if (given !== null) {
        const typed = given.slice(0, 254);
        const parsed = parseAddress(given);
        if (parsed === null) {
          state = { kind: 'error', typed, message: 'That is not an email address this page understands (name@domain, without spaces or quotes).' };
          status = 400;
        } else if (!s.domains.includes(parsed.domain)) {
          state = { kind: 'error', typed, message: `This server has no mail accounts at ${parsed.domain}.` };
          status = 404;
        } else {
          state = { kind: 'settings', address: parsed, name: displayName(url.searchParams.get('name')), profile: s.outgoing !== undefined };
        }
      }
      log(status);
      return this.#send(res, status, 'text/html; charset=utf-8', setupPage(s, state), { 'content-security-policy': PAGE_CSP, 'x-frame-options': 'DENY' });
    }
    throw new HttpError(404, 'not found');
  }

  /** The address in `text` when it is one of the configured domains, else null. */
  #ours(text: string): MailAddress | null {
    const a = parseAddress(text);
    return a !== null && this.#settings.domains.includes(a.domain) ? a : null;
  }
}

/** A person's name for the profile: printable, at most 100 characters; anything else is dropped. */
function displayName(v: string | null): string | undefined {
  if (v === null) return undefined;
  const t = v.trim();
  return t !== '' && t.length <= 100 && !/[\u0000-\u001f\u007f-\u009f]/.test(t) ? t : undefined;
}

/** The request body as UTF-8, at most MAX_BODY octets (413 beyond; 400 when it is not UTF-8). */
async function readBody(req: http.IncomingMessage): Promise<string> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > MAX_BODY) {
    req.resume();
    throw new HttpError(413, `request body larger than ${MAX_BODY} octets`);
  }
  // Events rather than async iteration: leaving an iteration early destroys the socket before the 413 is written.
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > MAX_BODY) {
        req.off('data', onData);
        req.pause();
        reject(new HttpError(413, `request body larger than ${MAX_BODY} octets`));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', resolve);
    req.once('error', reject);
  });
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new HttpError(400, 'the request body is not UTF-8');
  }
}
