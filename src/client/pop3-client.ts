/**
 * A POP3 client (RFC 1939, 2449, 2595, 5034) for fetching mail safely:
 * verified TLS by default, no cleartext passwords off the machine without
 * TLS, strict in-order reply matching with pipelining, and message bodies
 * streamed with backpressure. The wire lives in Pop3Connection.
 */
import net from 'node:net';
import type { Readable } from 'node:stream';
import type tls from 'node:tls';
import { decodeBase64Strict } from '../protocol/sasl/base64.js';
import type { ClientMechanism } from '../protocol/sasl/mechanism.js';
import { PIPELINE_WINDOW, Pop3Connection, type CallOptions, type StreamReply } from './connection.js';
import { Pop3AbortError, Pop3PolicyError, Pop3ProtocolError, Pop3ServerError, Pop3TimeoutError, Pop3TlsError } from './errors.js';
import { chooseLoginMethod, cleartextAllowed, sendsCleartextSecret } from './policy.js';
import {
  apopTimestampOf,
  parseCapabilities,
  parseListEntry,
  parseStat,
  parseUidlEntry,
  type ListEntry,
  type MaildropStat,
  type StatusLine,
  type UidlEntry,
} from './reply.js';
import { channelBindingOf, normalizeFingerprint, tlsHandshake, type TlsVerification } from './tls.js';

export type { CallOptions } from './connection.js';

export type TlsMode = 'none' | 'starttls' | 'implicit';

export interface ConnectOptions {
  readonly host: string;
  readonly port: number;
  /** `implicit`: TLS from the first byte (port 995); `starttls`: STLS after the greeting; `none`: no TLS. */
  readonly tls: TlsMode;
  /** Trust anchors (PEM) instead of Node's default CA list. */
  readonly ca?: string | Buffer | undefined;
  /** SHA-256 fingerprint of the server certificate, hex with or without colons: pins it, replacing CA and host-name checks. */
  readonly fingerprint?: string | undefined;
  /** Accept any certificate. Only for tests and for servers reached over a trusted path. */
  readonly insecure?: boolean | undefined;
  /** SNI and the name the certificate must carry (default: `host`). */
  readonly servername?: string | undefined;
  /** Default for every call: the longest the server may stay silent while a reply is awaited (30 s). */
  readonly timeoutMs?: number | undefined;
  /** Default for every call: the longest a whole reply may take, however steadily it trickles (none). */
  readonly deadlineMs?: number | undefined;
  /** Aborting it at any time destroys the connection. */
  readonly signal?: AbortSignal | undefined;
  /** Allow cleartext passwords and tokens without TLS to non-loopback hosts. */
  readonly allowPlaintextPassword?: boolean | undefined;
}

export interface LoginOptions extends CallOptions {
  /**
   * `USER` (USER/PASS), `APOP`, or a SASL mechanism name. Default: the
   * strongest the server offers (see LOGIN_PREFERENCE); APOP only when asked.
   */
  readonly mechanism?: string | undefined;
  /** SASL authorization identity (PLAIN, SCRAM), when different from the user. */
  readonly authzid?: string | undefined;
}

export interface OAuth2Options extends CallOptions {
  /** Default: OAUTHBEARER when offered, else XOAUTH2. */
  readonly mechanism?: 'XOAUTH2' | 'OAUTHBEARER' | undefined;
}

/** Called once per message by retrEach(), in order; the next message is handed over when the promise settles. */
export type MessageHandler = (number: number, message: Readable) => void | Promise<void>;
/** retrEachBuffered()'s handler: the message whole when it was small enough, else as a stream. */
export type BufferedMessageHandler = (number: number, message: Buffer | Readable) => void | Promise<void>;

export interface RetrEachOptions extends CallOptions {
  /** Per message: the most octets its stream may carry (e.g. the LIST size plus a margin); overrides `maxOctets`. */
  readonly maxOctetsOf?: ((number: number) => number) | undefined;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** The SASL mechanisms (and what they need: hashes, SASLprep) load only for a login that uses one, not for USER/PASS. */
const loadSasl = (): Promise<typeof import('../protocol/sasl/index.js')> => import('../protocol/sasl/index.js');
/** RFC 5034 §4: an AUTH line with its initial response must fit in 255 octets, else the response waits for a challenge. */
const MAX_AUTH_LINE = 255;
/** A CAPA reply is a few dozen short lines; these bounds leave room for any real server. */
const CAPA_LIMITS = { maxLines: 1000, maxOctets: 256 * 1024 } as const;

export class Pop3Client {
  readonly #conn: Pop3Connection;
  readonly #opts: ConnectOptions;
  readonly #verification: TlsVerification;
  #greeting = '';
  #apopTimestamp: string | undefined;
  #caps: Promise<Map<string, string[]>> | undefined;
  #secure: boolean;
  #authenticated = false;

  private constructor(socket: net.Socket, opts: ConnectOptions, verification: TlsVerification, secure: boolean) {
    this.#opts = opts;
    this.#verification = verification;
    this.#secure = secure;
    const signal = opts.signal;
    const onAbort = (): void => this.#conn.destroy(new Pop3AbortError('connection aborted', { cause: signal?.reason }));
    this.#conn = new Pop3Connection(socket, {
      timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      deadlineMs: opts.deadlineMs,
      onClose: () => signal?.removeEventListener('abort', onAbort),
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  }

  /**
   * Connect, set up TLS as asked (verifying the certificate before anything
   * is sent) and read the greeting. With `starttls` the capabilities are
   * read again under TLS before this resolves.
   */
  static async connect(opts: ConnectOptions): Promise<Pop3Client> {
    if (typeof opts.host !== 'string' || opts.host === '') throw new TypeError('host is required');
    if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) throw new RangeError('port must be 1..65535');
    if (opts.tls !== 'none' && opts.tls !== 'starttls' && opts.tls !== 'implicit') throw new TypeError("tls must be 'none', 'starttls' or 'implicit'");
    if (opts.timeoutMs !== undefined && !(opts.timeoutMs > 0)) throw new RangeError('timeoutMs must be positive');
    if (opts.deadlineMs !== undefined && !(opts.deadlineMs > 0)) throw new RangeError('deadlineMs must be positive');
    const verification: TlsVerification = {
      host: opts.host,
      ca: opts.ca,
      pin: opts.fingerprint !== undefined ? normalizeFingerprint(opts.fingerprint) : undefined,
      insecure: opts.insecure,
      servername: opts.servername,
    };
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const call: CallOptions = { timeoutMs, signal: opts.signal };

    let socket: net.Socket | undefined;
    const giveUp = (): void => void socket?.destroy();
    try {
      socket =
        opts.tls === 'implicit'
          ? await bounded(tlsHandshake(verification, { port: opts.port }, (s) => (socket = s)), 'TLS handshake', call, giveUp)
          : await bounded(tcpConnect(opts.host, opts.port, (s) => (socket = s)), 'connect', call, giveUp);
    } catch (e) {
      giveUp();
      throw e;
    }
    const client = new Pop3Client(socket, opts, verification, opts.tls === 'implicit');
    try {
      const greeting = await client.#conn.greeting(call);
      if (!greeting.ok) throw new Pop3ServerError('greeting', greeting);
      client.#greeting = greeting.text;
      client.#apopTimestamp = apopTimestampOf(greeting.text);
      if (opts.tls === 'starttls') await client.#starttls(call);
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  /** The greeting's text (after `+OK`). */
  get greeting(): string {
    return this.#greeting;
  }

  /** The greeting's `<...@...>` timestamp, which APOP needs. */
  get apopTimestamp(): string | undefined {
    return this.#apopTimestamp;
  }

  /** TLS is active (implicit, or after STLS). */
  get secure(): boolean {
    return this.#secure;
  }

  /** `TLSv1.3`, `TLSv1.2`, or undefined without TLS. */
  get tlsProtocol(): string | undefined {
    return this.#conn.tlsSocket?.getProtocol() ?? undefined;
  }

  /** Logged in: the session is in the TRANSACTION state. */
  get authenticated(): boolean {
    return this.#authenticated;
  }

  get closed(): boolean {
    return this.#conn.closed;
  }

  /** Requests are written ahead of their replies (the server announced PIPELINING). */
  get pipelining(): boolean {
    return this.#conn.pipelining;
  }

  /** Requests written and not yet fully answered. */
  get inFlight(): number {
    return this.#conn.inFlight;
  }

  /** The most requests that were ever in flight at once. */
  get maxInFlight(): number {
    return this.#conn.maxInFlight;
  }

  // -------------------------------------------------------------------------
  // AUTHORIZATION

  /**
   * RFC 2449 CAPA: tag (upper case) → parameters. Cached until STLS or a
   * login; a server without CAPA gives an empty map.
   */
  async capa(opts: CallOptions = {}): Promise<Map<string, string[]>> {
    if (this.#caps === undefined) {
      const p = this.#conn.lines('CAPA', { ...opts, ...CAPA_LIMITS }).then((r) => {
        const caps = r.status.ok ? parseCapabilities(r.lines) : new Map<string, string[]>();
        this.#conn.pipelining = caps.has('PIPELINING');
        return caps;
      });
      this.#caps = p;
      p.catch(() => {
        if (this.#caps === p) this.#caps = undefined;
      });
    }
    const caps = await this.#caps;
    return new Map([...caps].map(([k, v]) => [k, [...v]]));
  }

  /**
   * Log in with a password. Without `mechanism` the strongest method the
   * server offers is used (SCRAM-*-PLUS > SCRAM > CRAM-MD5 > PLAIN > LOGIN >
   * USER/PASS). Methods that send the password as is are refused without
   * TLS unless the peer is loopback or `allowPlaintextPassword` is set.
   * Resolves with the method used (`SCRAM-SHA-256`, `USER`, ...).
   */
  async login(user: string, password: string, opts: LoginOptions = {}): Promise<string> {
    checkText(user, 'user name', false);
    checkText(password, 'password', true);
    if (opts.authzid !== undefined) checkText(opts.authzid, 'authzid', true);
    const caps = await this.capa(opts);
    const binding = this.#channelBinding();
    const clearOk = this.#cleartextOk();
    let method: string;
    if (opts.mechanism !== undefined) {
      method = opts.mechanism.toUpperCase();
      if (sendsCleartextSecret(method) && !clearOk) throw this.#refuseCleartext(method);
      if (method.endsWith('-PLUS') && binding === undefined) throw new Pop3PolicyError(`${method} needs TLS channel binding`);
    } else {
      const choice = chooseLoginMethod({
        saslMechanisms: caps.get('SASL') ?? [],
        userPass: caps.has('USER') || caps.size === 0,
        channelBinding: binding !== undefined,
        cleartextAllowed: clearOk,
      });
      if (!choice.ok) {
        if (choice.refusedCleartext) throw this.#refuseCleartext('the offered methods');
        throw new Pop3PolicyError('the server offers no login method this client supports');
      }
      method = choice.method;
    }

    if (method === 'USER') await this.#userPass(user, password, opts);
    else if (method === 'APOP') await this.#apop(user, password, opts);
    else {
      const { clientMechanism } = await loadSasl();
      const mech = clientMechanism(method, {
        username: user,
        password,
        ...(opts.authzid !== undefined ? { authzid: opts.authzid } : {}),
        ...(binding !== undefined ? { channelBinding: binding } : {}),
      });
      await this.authenticate(mech, opts);
    }
    return method;
  }

  /** Log in with an OAuth 2.0 access token (OAUTHBEARER, RFC 7628, or XOAUTH2). Needs TLS like a password. */
  async loginOAuth2(user: string, token: string, opts: OAuth2Options = {}): Promise<string> {
    checkText(user, 'user name', false);
    checkText(token, 'token', false);
    const caps = await this.capa(opts);
    const offered = (caps.get('SASL') ?? []).map((m) => m.toUpperCase());
    const method = opts.mechanism ?? (offered.includes('OAUTHBEARER') ? 'OAUTHBEARER' : offered.includes('XOAUTH2') ? 'XOAUTH2' : undefined);
    if (method === undefined) throw new Pop3PolicyError('the server offers neither OAUTHBEARER nor XOAUTH2');
    if (!this.#cleartextOk()) throw this.#refuseCleartext(method);
    const { clientMechanism } = await loadSasl();
    const mech = clientMechanism(method, {
      username: user,
      token,
      host: this.#opts.servername ?? this.#opts.host,
      port: this.#opts.port,
    });
    await this.authenticate(mech, opts);
    return method;
  }

  /**
   * A generic RFC 5034 AUTH exchange with any client mechanism. The caller
   * is responsible for the cleartext policy here. Rejects with
   * Pop3ServerError on `-ERR`, Pop3ProtocolError when the server's
   * challenges or its proof (SCRAM `v=`) are wrong.
   */
  async authenticate(mech: ClientMechanism, opts: CallOptions = {}): Promise<void> {
    const name = mech.name.toUpperCase();
    if (!/^[A-Z0-9_-]{1,20}$/.test(name)) throw new RangeError(`invalid SASL mechanism name ${JSON.stringify(mech.name)}`);
    let command = `AUTH ${name}`;
    let deferred: Buffer | undefined;
    const initial = mech.initial();
    if (initial !== null) {
      const ir = initial.length === 0 ? '=' : initial.toString('base64');
      if (command.length + 1 + ir.length + 2 <= MAX_AUTH_LINE) command += ` ${ir}`;
      else deferred = initial;
    }
    let problem: Error | undefined;
    const status = await this.#conn.sasl(
      command,
      (payload) => {
        if (problem !== undefined) return '*';
        const challenge = decodeBase64Strict(payload);
        if (challenge === null) {
          problem = new Pop3ProtocolError(`${name}: the server's challenge is not base64`);
          return '*';
        }
        if (deferred !== undefined && challenge.length === 0) {
          const ir = deferred.toString('base64');
          deferred = undefined;
          return ir;
        }
        try {
          return mech.respond(challenge).toString('base64');
        } catch (e) {
          problem = new Pop3ProtocolError(`${name}: ${(e as Error).message}`, { cause: e });
          return '*'; // RFC 5034 §4: cancel; the server answers -ERR
        }
      },
      opts,
    );
    if (problem !== undefined) {
      if (status.ok) this.#conn.destroy(problem); // logged in although we cancelled: nothing here is trustworthy
      throw problem;
    }
    if (!status.ok) {
      const saslError = (mech as { serverError?: unknown }).serverError;
      throw new Pop3ServerError('AUTH', status, typeof saslError === 'string' ? saslError : undefined);
    }
    if ((mech as { verified?: unknown }).verified === false) {
      // SCRAM: +OK without a valid server signature; the server never proved it knows the password.
      const e = new Pop3ProtocolError(`${name}: the server did not prove its identity`);
      this.#conn.destroy(e);
      throw e;
    }
    this.#loggedIn();
  }

  // -------------------------------------------------------------------------
  // TRANSACTION

  /** `STAT`: messages and octets in the maildrop, deleted ones excluded. */
  async stat(opts: CallOptions = {}): Promise<MaildropStat> {
    const st = await this.#simple('STAT', opts);
    return parseStat(st.text);
  }

  /** `LIST`: every message's size; `LIST n`: one message's. */
  list(opts?: CallOptions): Promise<ListEntry[]>;
  list(number: number, opts?: CallOptions): Promise<ListEntry>;
  async list(a?: number | CallOptions, b?: CallOptions): Promise<ListEntry[] | ListEntry> {
    if (typeof a === 'number') {
      checkNumber(a);
      return parseListEntry((await this.#simple(`LIST ${a}`, b ?? {})).text);
    }
    return (await this.#multi('LIST', a ?? {})).map(parseListEntry);
  }

  /** `UIDL`: every message's unique id; `UIDL n`: one message's. */
  uidl(opts?: CallOptions): Promise<UidlEntry[]>;
  uidl(number: number, opts?: CallOptions): Promise<UidlEntry>;
  async uidl(a?: number | CallOptions, b?: CallOptions): Promise<UidlEntry[] | UidlEntry> {
    if (typeof a === 'number') {
      checkNumber(a);
      return parseUidlEntry((await this.#simple(`UIDL ${a}`, b ?? {})).text);
    }
    return (await this.#multi('UIDL', a ?? {})).map(parseUidlEntry);
  }

  /**
   * `RETR n` as a stream of the message, dot-unstuffed, line ends as sent.
   * Resolves when the server said `+OK`. Read (or destroy) each stream
   * before awaiting a later reply: replies arrive in order on one socket,
   * and an unread stream holds the socket paused. retrEach() does this for
   * you while keeping requests pipelined.
   */
  async retr(number: number, opts: CallOptions = {}): Promise<Readable> {
    checkNumber(number);
    return streamOf('RETR', await this.#conn.stream(`RETR ${number}`, opts));
  }

  /** `RETR n` collected into one Buffer. Safe to call many times at once (pipelined). */
  async retrBuffer(number: number, opts: CallOptions = {}): Promise<Buffer> {
    checkNumber(number);
    const r = await this.#conn.buffer(`RETR ${number}`, opts);
    if (!r.status.ok) throw new Pop3ServerError('RETR', r.status);
    return r.body;
  }

  /**
   * Retrieve several messages with requests pipelined ahead, handing each
   * to `handler` in order. A stream the handler leaves unread is discarded
   * when its promise settles. Stops at the first error (a `-ERR`, or the
   * handler's); what was already requested is read off the wire and dropped.
   * The handler must not await other commands: their replies queue behind
   * RETRs already requested, which wait for handlers not yet run.
   */
  async retrEach(numbers: readonly number[], handler: MessageHandler, opts: RetrEachOptions = {}): Promise<void> {
    const { maxOctetsOf, ...call } = opts;
    await this.#retrEach(
      numbers,
      (n) => this.#conn.stream(`RETR ${n}`, maxOctetsOf !== undefined ? { ...call, maxOctets: maxOctetsOf(n) } : call),
      handler as BufferedMessageHandler, // stream() never gives a body
    );
  }

  /**
   * retrEach() for a caller that wants small messages whole: message `n` is
   * collected into a Buffer when it turns out no longer than `bufferUpTo(n)`
   * octets (0: always a stream), and handed over as a stream otherwise (so a
   * server that announced a wrong size costs no more memory than that bound).
   * The connection keeps reading meanwhile: up to PIPELINE_WINDOW messages
   * may be held in memory at once, each within its bound.
   */
  async retrEachBuffered(numbers: readonly number[], handler: BufferedMessageHandler, opts: RetrEachOptions & { readonly bufferUpTo: (number: number) => number }): Promise<void> {
    const { maxOctetsOf, bufferUpTo, ...call } = opts;
    await this.#retrEach(
      numbers,
      (n) => {
        const o = maxOctetsOf !== undefined ? { ...call, maxOctets: maxOctetsOf(n) } : call;
        const cap = bufferUpTo(n);
        return cap > 0 ? this.#conn.streamOrBuffer(`RETR ${n}`, cap, o) : this.#conn.stream(`RETR ${n}`, o);
      },
      handler,
    );
  }

  async #retrEach(numbers: readonly number[], start: (n: number) => Promise<StreamReply & { readonly body?: Buffer }>, handler: BufferedMessageHandler): Promise<void> {
    numbers.forEach(checkNumber);
    const ahead: Promise<StreamReply & { readonly body?: Buffer }>[] = [];
    let next = 0;
    const request = (): void => {
      while (next < numbers.length && ahead.length < PIPELINE_WINDOW) {
        const p = start(numbers[next++]!);
        p.catch(() => undefined); // awaited below, in order
        ahead.push(p);
      }
    };
    request();
    try {
      for (const n of numbers) {
        const r = await ahead.shift()!;
        const message = r.body !== undefined && r.status.ok ? r.body : streamOf('RETR', r);
        // Refill by halves: the requests then go out several to a write.
        if (ahead.length <= PIPELINE_WINDOW / 2) request();
        try {
          await handler(n, message);
        } finally {
          if (!Buffer.isBuffer(message) && !message.readableEnded) message.destroy();
        }
      }
    } finally {
      // Early exit: replies already requested still arrive; discard them so later calls stay in step.
      for (const p of ahead) p.then((r) => r.stream?.destroy(), () => undefined);
    }
  }

  /** `TOP n lines`: the headers, the blank line and `lines` body lines, as a stream (same rules as retr()). */
  async top(number: number, lines: number, opts: CallOptions = {}): Promise<Readable> {
    checkNumber(number);
    if (!Number.isSafeInteger(lines) || lines < 0) throw new RangeError('TOP line count must be a non-negative integer');
    return streamOf('TOP', await this.#conn.stream(`TOP ${number} ${lines}`, opts));
  }

  /** `TOP n lines` collected into one Buffer. */
  async topBuffer(number: number, lines: number, opts: CallOptions = {}): Promise<Buffer> {
    checkNumber(number);
    if (!Number.isSafeInteger(lines) || lines < 0) throw new RangeError('TOP line count must be a non-negative integer');
    const r = await this.#conn.buffer(`TOP ${number} ${lines}`, opts);
    if (!r.status.ok) throw new Pop3ServerError('TOP', r.status);
    return r.body;
  }

  /** `DELE n`: mark for deletion; nothing is removed unless quit() succeeds. */
  async dele(number: number, opts: CallOptions = {}): Promise<void> {
    checkNumber(number);
    await this.#simple(`DELE ${number}`, opts);
  }

  async noop(opts: CallOptions = {}): Promise<void> {
    await this.#simple('NOOP', opts);
  }

  /** `RSET`: unmark every message marked for deletion. */
  async rset(opts: CallOptions = {}): Promise<void> {
    await this.#simple('RSET', opts);
  }

  /**
   * `QUIT`. In TRANSACTION this is the UPDATE state: resolves only on `+OK`,
   * which means the marked messages are gone. `-ERR` rejects with
   * Pop3ServerError; a connection that ends without an answer rejects with
   * Pop3ProtocolError. In both cases assume nothing was deleted.
   */
  async quit(opts: CallOptions = {}): Promise<void> {
    const st = await this.#conn.quit(opts);
    if (!st.ok) throw new Pop3ServerError('QUIT', st);
  }

  /** Drop the connection without QUIT (nothing is deleted). Pending calls reject with Pop3AbortError. */
  close(): void {
    this.#conn.destroy(new Pop3AbortError('connection closed by the client'));
  }

  // -------------------------------------------------------------------------

  async #starttls(opts: CallOptions): Promise<void> {
    const st = await this.#conn.stls(opts);
    if (!st.ok) throw new Pop3TlsError('the server refused STLS', { cause: new Pop3ServerError('STLS', st) });
    this.#caps = undefined; // RFC 2595 §4: nothing learnt before TLS is trusted after it
    let secure: tls.TLSSocket | undefined;
    const giveUp = (): void => {
      secure?.destroy();
      this.#conn.destroy(new Pop3TlsError('TLS handshake abandoned'));
    };
    try {
      secure = await bounded(tlsHandshake(this.#verification, { socket: this.#conn.socket }, (s) => (secure = s)), 'TLS handshake', opts, giveUp);
    } catch (e) {
      secure?.destroy();
      this.#conn.destroy(e as Error);
      throw e;
    }
    this.#conn.upgraded(secure);
    this.#secure = true;
    await this.capa(opts);
  }

  async #userPass(user: string, password: string, opts: CallOptions): Promise<void> {
    await this.#simple(`USER ${user}`, opts);
    await this.#simple(`PASS ${password}`, opts);
    this.#loggedIn();
  }

  async #apop(user: string, password: string, opts: CallOptions): Promise<void> {
    if (this.#apopTimestamp === undefined) throw new Pop3PolicyError('the greeting carries no APOP timestamp');
    if (/\s/.test(user)) throw new RangeError('an APOP user name cannot contain white space');
    const { apopDigest } = await import('../protocol/sasl/apop.js');
    await this.#simple(`APOP ${user} ${apopDigest(this.#apopTimestamp, password)}`, opts);
    this.#loggedIn();
  }

  #loggedIn(): void {
    this.#authenticated = true;
    // RFC 2449 §5: capabilities may differ after login (PIPELINING may not go away).
    this.#caps = undefined;
  }

  #cleartextOk(): boolean {
    return cleartextAllowed({
      secure: this.#secure,
      peer: this.#conn.socket.remoteAddress ?? this.#opts.host,
      allowPlaintextPassword: this.#opts.allowPlaintextPassword === true,
    });
  }

  #refuseCleartext(what: string): Pop3PolicyError {
    return new Pop3PolicyError(
      `refusing to send a password in the clear to ${this.#opts.host} with ${what}: use TLS (or allowPlaintextPassword)`,
    );
  }

  #channelBinding(): ReturnType<typeof channelBindingOf> {
    const s = this.#conn.tlsSocket;
    return s !== undefined && this.#secure ? channelBindingOf(s) : undefined;
  }

  async #simple(command: string, opts: CallOptions): Promise<StatusLine> {
    const st = await this.#conn.single(command, opts);
    if (!st.ok) throw new Pop3ServerError(command.split(' ', 1)[0]!, st);
    return st;
  }

  async #multi(command: string, opts: CallOptions): Promise<string[]> {
    const r = await this.#conn.lines(command, opts);
    if (!r.status.ok) throw new Pop3ServerError(command, r.status);
    return r.lines;
  }
}

function streamOf(command: string, r: StreamReply): Readable {
  if (!r.status.ok || r.stream === undefined) throw new Pop3ServerError(command, r.status);
  return r.stream;
}

/** Message numbers are 1..n (RFC 1939 §2). */
function checkNumber(n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`invalid message number ${String(n)}`);
}

/** CR, LF or NUL in an argument would end the command early and smuggle in another. */
function checkText(s: string, what: string, emptyOk: boolean): void {
  if (typeof s !== 'string' || (!emptyOk && s === '')) throw new TypeError(`${what} is required`);
  if (/[\r\n\0]/.test(s)) throw new RangeError(`${what} contains CR, LF or NUL`);
}

function tcpConnect(host: string, port: number, onSocket: (s: net.Socket) => void): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    onSocket(s);
    // Stays attached until the connection's own listener is in place.
    s.once('error', (e) => {
      s.destroy();
      reject(new Pop3ProtocolError(`cannot connect to ${host}:${port}: ${e.message}`, { cause: e }));
    });
    s.once('connect', () => resolve(s));
  });
}

/** Bound a setup step (TCP connect, TLS handshake) that runs outside the reply queue. */
async function bounded<T>(p: Promise<T>, what: string, opts: CallOptions, giveUp: () => void): Promise<T> {
  const ms = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const signal = opts.signal;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const guard = new Promise<never>((_, reject) => {
    const stop = (e: Error): void => {
      giveUp();
      reject(e);
    };
    if (signal?.aborted) {
      stop(new Pop3AbortError(`${what} aborted`, { cause: signal.reason }));
      return;
    }
    timer = setTimeout(() => stop(new Pop3TimeoutError(`${what} took longer than ${ms} ms`)), ms);
    onAbort = () => stop(new Pop3AbortError(`${what} aborted`, { cause: signal?.reason }));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }
}
