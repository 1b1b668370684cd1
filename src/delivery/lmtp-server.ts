/**
 * The LMTP server (RFC 2033) of `poplar serve`: smtp-server in LMTP mode
 * does the protocol (LHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, PIPELINING,
 * ENHANCEDSTATUSCODES, 8BITMIME, SIZE); this file decides. RCPT TO looks the
 * user up (unknown: 550 5.1.1); after DATA every recipient gets its own reply
 * (delivered: 250 2.0.0 once durable in the store; over quota: 452 4.2.2 or
 * 552 5.2.2; store failure: 451 4.3.0).
 *
 * The message is received once, into memory (bounded by max_message_size),
 * and handed to the store for all recipients together. Return-Path is added
 * for every recipient; Delivered-To only when the transaction has a single
 * recipient, so that one copy can serve several (as Dovecot's LMTP does).
 *
 * Listeners are bound by listen() (as root, before the switch to the service
 * user) and serve connections only once start() is called (after it): a
 * connection that arrives in between waits.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerAddress, type SMTPServerSession } from 'smtp-server';
import type { Authenticator, Principal } from '../auth/types.js';
import { ConfigError } from '../config/errors.js';
import { removeStaleSocket } from '../platform/unix-socket.js';
import { MailError } from '../errors.js';
import type { Logger } from '../observability/log.js';
import type { DeliveryTarget, MailStore } from '../store/types.js';
import type { DeliveryObserver } from '../observability/metrics.js';
import type { LmtpConfig, QuotaConfig } from './config.js';
import { deliverToAll } from './deliver.js';
import { quotaFor, resolveRecipient } from './recipients.js';
import { DELIVERED, smtpReplyFor, type SmtpReply } from './smtp-replies.js';
import { addressProblem, withTraceHeaders } from './trace-headers.js';

export interface LmtpServerOptions {
  readonly config: LmtpConfig;
  readonly quota: QuotaConfig;
  readonly store: MailStore;
  readonly authenticator: Authenticator;
  readonly logger: Logger;
  /** Name in the greeting and the LHLO reply. */
  readonly hostname: string;
  /** gid for socket_group (resolved by the caller); undefined: leave it. */
  readonly socketGid?: number | undefined;
  /** Told of every recipient's outcome after DATA, and of recipients refused at RCPT (metrics). */
  readonly deliveries?: DeliveryObserver | undefined;
}

export type LmtpListen = { readonly host: string; readonly port: number } | { readonly path: string };

export interface BoundLmtpListener {
  readonly host?: string;
  readonly port?: number;
  readonly path?: string;
}

/** The listen entries of `[lmtp]`, checked: TCP on loopback only unless allow_remote. */
export function lmtpListenSpecs(config: LmtpConfig): LmtpListen[] {
  return config.listen.map((a) => {
    if (a.startsWith('/')) return { path: a };
    const i = a.lastIndexOf(':');
    let host = a.slice(0, i);
    if (host.startsWith('[')) host = host.slice(1, -1);
    const port = Number(a.slice(i + 1));
    if (port > 65535) throw new ConfigError(`invalid configuration: lmtp.listen: bad port in ${a}`);
    if (!config.allow_remote && !isLoopback(host)) {
      throw new ConfigError(`invalid configuration: lmtp.listen ${a} is not a loopback address; LMTP has no authentication, so set lmtp.allow_remote = true only behind a firewall`);
    }
    return { host, port };
  });
}

function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return net.isIPv4(host) && host.startsWith('127.');
}

/** A reply as smtp-server sends it: an Error with the code, the enhanced status code first in the text. */
function replyError(r: SmtpReply, detail?: string): Error {
  return Object.assign(new Error(`${detail !== undefined ? `${detail} ` : ''}${r.text}`), { responseCode: r.code });
}

interface SessionState {
  /** Recipients of the current transaction by lower-cased address (smtp-server keeps one per address the same way). */
  readonly users: Map<string, Principal>;
}

export class LmtpServer {
  readonly #o: LmtpServerOptions;
  readonly #smtp: SMTPServer;
  readonly #servers: net.Server[] = [];
  readonly #sockets = new Set<net.Socket>();
  readonly #sessions = new Map<string, SessionState>();
  readonly #deliveries = new Set<Promise<unknown>>();
  readonly #held: net.Socket[] = [];
  readonly #paths: string[] = [];
  #accepting = false;
  #closing = false;

  constructor(options: LmtpServerOptions) {
    this.#o = options;
    const c = options.config;
    this.#smtp = new SMTPServer({
      lmtp: true,
      name: options.hostname,
      banner: 'Poplar LMTP',
      size: c.max_message_size,
      rejectOversized: true,
      hideSize: false,
      hideENHANCEDSTATUSCODES: false,
      hidePIPELINING: false,
      hide8BITMIME: false,
      hideDSN: true,
      disabledCommands: ['AUTH', 'STARTTLS'],
      authOptional: true,
      logger: false,
      maxClients: c.max_connections,
      maxRecipients: c.max_recipients,
      socketTimeout: c.timeout * 1000,
      closeTimeout: 1000,
      onMailFrom: (address, session, cb) => this.#mailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => void this.#rcptTo(address, session, cb),
      onData: (stream, session, cb) => this.#data(stream, session, cb),
      onClose: (session) => void this.#sessions.delete(session.id),
    });
    // A client that drops the connection is reported here; it is the client's business.
    this.#smtp.on('error', (e: Error) => this.#o.logger.debug({ err: e }, 'lmtp: connection error'));
  }

  /** Bind every listener; connections wait until start(). */
  async listen(specs: readonly LmtpListen[]): Promise<BoundLmtpListener[]> {
    const bound: BoundLmtpListener[] = [];
    for (const spec of specs) {
      const server = net.createServer({ noDelay: true });
      server.on('connection', (s: net.Socket) => this.#accept(s));
      if ('path' in spec) {
        await removeStaleSocket(spec.path, 'lmtp');
        server.listen({ path: spec.path, backlog: 511 });
        await once(server, 'listening');
        this.#servers.push(server);
        this.#paths.push(spec.path);
        await fs.chmod(spec.path, parseInt(this.#o.config.socket_mode, 8));
        if (this.#o.socketGid !== undefined) await fs.chown(spec.path, -1, this.#o.socketGid);
        bound.push({ path: spec.path });
      } else {
        server.listen({ host: spec.host, port: spec.port, backlog: 511 });
        await once(server, 'listening');
        this.#servers.push(server);
        const a = server.address() as net.AddressInfo;
        bound.push({ host: a.address, port: a.port });
      }
    }
    return bound;
  }

  /** Serve connections (after the switch to the service user). */
  start(): void {
    this.#accepting = true;
    for (const s of this.#held.splice(0)) if (!s.destroyed) this.#serve(s);
  }

  #accept(socket: net.Socket): void {
    if (this.#closing) return void socket.destroy();
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    if (!this.#accepting) {
      socket.pause();
      this.#held.push(socket);
      return;
    }
    this.#serve(socket);
  }

  #serve(socket: net.Socket): void {
    socket.resume();
    this.#smtp.connect(socket, {});
    allowDomainlessRecipients(this.#smtp);
  }

  #state(session: SMTPServerSession): SessionState {
    let s = this.#sessions.get(session.id);
    if (s === undefined) {
      s = { users: new Map() };
      this.#sessions.set(session.id, s);
    }
    return s;
  }

  #mailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    this.#state(session).users.clear();
    const problem = addressProblem(address.address);
    if (problem !== undefined) return cb(Object.assign(new Error(`Bad sender address: ${problem}`), { responseCode: 501 }));
    cb();
  }

  async #rcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): Promise<void> {
    const c = this.#o.config;
    try {
      if (addressProblem(address.address) !== undefined) return cb(replyError({ code: 550, status: '5.1.1', text: 'No such user here' }));
      const user = await resolveRecipient(this.#o.authenticator, address.address, { format: c.recipient_format, delimiter: c.recipient_delimiter });
      if (user === undefined) {
        this.#o.deliveries?.recipient('refused', 0);
        return cb(replyError({ code: 550, status: '5.1.1', text: 'No such user here' }, `<${address.address}>`));
      }
      this.#state(session).users.set(address.address.toLowerCase(), user);
      cb();
    } catch (e) {
      this.#o.logger.error({ err: e, rcpt: address.address }, 'lmtp: user lookup failed');
      cb(replyError(smtpReplyFor(e instanceof MailError ? e : undefined, c.over_quota)));
    }
  }

  #data(stream: Readable & { sizeExceeded?: boolean }, session: SMTPServerSession, cb: (err: Error | null, replies?: (string | Error)[]) => void): void {
    const limit = this.#o.config.max_message_size;
    const chunks: Buffer[] = [];
    let length = 0;
    stream.on('data', (b: Buffer) => {
      length += b.length;
      if (length <= limit) chunks.push(b);
    });
    stream.on('error', () => undefined); // the client went away: nothing is delivered
    stream.on('end', () => {
      if (stream.sizeExceeded === true || length > limit) {
        // rejectOversized: smtp-server answers 552 for each recipient whatever comes back here.
        return cb(null, session.envelope.rcptTo.map(() => replyError({ code: 552, status: '5.3.4', text: 'Message too big' })));
      }
      const work = this.#deliver(Buffer.concat(chunks, length), session).then(
        (replies) => cb(null, replies),
        (e: unknown) => {
          this.#o.logger.error({ err: e }, 'lmtp: delivery failed');
          cb(replyError(smtpReplyFor(undefined, 'temporary')));
        },
      );
      this.#deliveries.add(work);
      void work.finally(() => this.#deliveries.delete(work));
    });
  }

  async #deliver(raw: Buffer, session: SMTPServerSession): Promise<Error[]> {
    const env = session.envelope;
    const sender = env.mailFrom === false ? '' : env.mailFrom.address;
    const users = this.#state(session).users;
    const rcpts = env.rcptTo.map((r) => ({ address: r.address, user: users.get(r.address.toLowerCase()) }));
    const single = rcpts.length === 1 ? rcpts[0]?.address : undefined;
    const message = withTraceHeaders(raw, sender, single);
    const targets: DeliveryTarget[] = [];
    for (const r of rcpts) if (r.user !== undefined) targets.push({ user: r.user, quota: quotaFor(r.user, this.#o.quota) });
    const outcomes = await deliverToAll(this.#o.store, targets, message);
    let next = 0;
    return rcpts.map((r) => {
      // A recipient without a user cannot be here (RCPT refused it); answered as a local fault if it were.
      const outcome = r.user === undefined ? new Error('recipient lost') : outcomes[next++];
      const ok = outcome === undefined;
      const reply = ok ? DELIVERED : smtpReplyFor(outcome, this.#o.config.over_quota);
      this.#o.deliveries?.recipient(reply.code < 400 ? 'accepted' : reply.code < 500 ? 'temp-failed' : 'refused', message.length);
      this.#o.logger.info(
        { from: sender, rcpt: r.address, user: r.user?.username, size: message.length, result: `${reply.code} ${reply.status}`, ...(ok ? {} : { err: outcome }) },
        ok ? 'lmtp: delivered' : 'lmtp: not delivered',
      );
      return replyError(reply, `<${r.address}>`);
    });
  }

  /** Stop listening; wait up to `graceMs` for deliveries under way, then close every connection. */
  async close(graceMs = 10_000): Promise<void> {
    this.#closing = true;
    await Promise.all(this.#servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    for (const p of this.#paths) await fs.unlink(p).catch(() => undefined);
    const grace = new Promise<void>((r) => setTimeout(r, graceMs).unref());
    await Promise.race([Promise.allSettled([...this.#deliveries]), grace]);
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => this.#smtp.close(() => r()));
  }
}

const DOMAINLESS = 'domainless.invalid';
const BARE_RCPT = /^(\s*RCPT\s+TO\s*:\s*)<([^<>@\s]+)>(.*)$/is;

type AddressParser = (name: unknown, command: unknown) => { address?: string } | false;

/**
 * smtp-server accepts a recipient without a domain only for postmaster; an
 * LMTP server for plain user names must take `RCPT TO:<alice>` too. The
 * connection just made (the last one in the server's set) parses such a
 * recipient as `alice@domainless.invalid`, with all the library's checks,
 * and gets `alice` back.
 */
function allowDomainlessRecipients(smtp: SMTPServer): void {
  let last: { _parseAddressCommand?: AddressParser } | undefined;
  for (const c of (smtp as unknown as { connections: Set<{ _parseAddressCommand?: AddressParser }> }).connections) last = c;
  const parse = last?._parseAddressCommand?.bind(last);
  if (last === undefined || parse === undefined) return;
  last._parseAddressCommand = (name, command) => {
    const m = BARE_RCPT.exec(String(command ?? ''));
    if (m === null) return parse(name, command);
    const r = parse(name, `${m[1]}<${m[2]}@${DOMAINLESS}>${m[3]}`);
    if (r !== false && m[2] !== undefined && r.address === `${m[2]}@${DOMAINLESS}`) r.address = m[2];
    return r;
  };
}

