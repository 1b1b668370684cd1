/**
 * Delivery into a folder of an IMAP server (Gmail, Microsoft 365, Dovecot,
 * any IMAP4rev1 server) with APPEND, through the imapflow client: implicit
 * TLS (port 993) or STARTTLS (143), a password or an OAuth 2.0 access token
 * (OAUTHBEARER when the server offers it, else XOAUTH2).
 *
 * The tagged OK to APPEND is the server's promise that it stored the
 * message: `deliver` resolves then and not before. A NO or a broken
 * connection rejects with a SinkError, and the message, not recorded in
 * the ledger, is fetched and appended again by a later run.
 *
 * Crash probe (`findDelivered`): a message whose APPEND was answered but
 * whose ledger record a crash lost is looked for in the folder: UID SEARCH
 * by its Message-ID and exact size (by size alone when it has none), and
 * each candidate's octets compared with the pending message's (SHA-256),
 * so a message is only ever said to be there when an identical copy is.
 * A stored copy counts for one pending message at most. A server that
 * rewrites what it stores (so no copy is identical) costs a duplicate
 * after a crash, never a loss.
 *
 * An IMAP server takes one APPEND at a time per connection, and each is a
 * round trip and a commit on the server: messages handed over together
 * are appended over up to `connections` connections at once (each APPEND's
 * OK still comes before its message is recorded).
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { ImapFlow, type ImapFlowOptions } from 'imapflow';
import { isLoopback } from '../../client/policy.js';
import type { DeliveryInfo, MessageSource, PendingMessage, Sink } from './types.js';
import { abortReason, chunksOf, destroyOnAbort, onAbort, SinkError, toError } from './util.js';

export type ImapTlsMode = 'none' | 'starttls' | 'implicit';

/** Where the login secret comes from; asked at every connection. */
export type ImapCredentials =
  | { readonly kind: 'password'; get(signal?: AbortSignal): Promise<string> }
  /** `fresh`: the server refused the last token, do not give a cached one again. */
  | { readonly kind: 'oauth2'; get(signal: AbortSignal | undefined, fresh: boolean): Promise<{ token: string; cached: boolean }> };

export interface ImapSinkOptions {
  readonly host: string;
  /** Default 993 with implicit TLS, else 143. */
  readonly port?: number;
  readonly tls?: ImapTlsMode;
  /** Trust anchors (PEM) instead of the system CAs. */
  readonly ca?: string | Buffer;
  /** Accept any certificate. */
  readonly insecure?: boolean;
  /** SNI and the name the certificate must match (default: the host, unless it is an IP address). */
  readonly servername?: string;
  /** Send credentials without TLS to a host that is not loopback. */
  readonly allowPlaintextPassword?: boolean;
  readonly user: string;
  readonly credentials: ImapCredentials;
  /** Default INBOX. */
  readonly folder?: string;
  /** Create the folder when the server says it does not exist (TRYCREATE). */
  readonly create?: boolean;
  /** The internal date of an appended message: its Date header (default) or the moment of the APPEND. */
  readonly internalDate?: 'date' | 'now';
  /** The longest the server may stay silent (default 300 000 ms). */
  readonly timeoutMs?: number;
  /** The largest message appended (it is held in memory for APPEND); default 100 MiB. */
  readonly maxMessageOctets?: number;
  /** Connections used at once for messages handed over together (default 4; 1: one message at a time, in order). */
  readonly connections?: number;
}

/** Server lines and literals are bounded: the probe downloads in pieces of this size. */
const CHUNK = 256 * 1024;
const MAX_LINE = 1024 * 1024;
/** Identical-size stored messages compared with one pending message, at most. */
const MAX_CANDIDATES = 200;
/** Response codes after which the same APPEND may succeed later (RFC 5530). */
const TEMPORARY_CODES = new Set(['OVERQUOTA', 'LIMIT', 'INUSE', 'UNAVAILABLE', 'SERVERBUG', 'CONTACTADMIN', 'EXPUNGEISSUED']);

interface ImapErrorish extends Error {
  code?: string;
  responseStatus?: string;
  responseText?: string;
  serverResponseCode?: string;
  authenticationFailed?: boolean;
}

/** A SinkError for what imapflow (or the socket under it) threw. */
export function imapSinkError(what: string, e: unknown): SinkError {
  if (e instanceof SinkError) return e;
  const err = toError(e) as ImapErrorish;
  const code = err.serverResponseCode?.toUpperCase();
  const text = err.responseText ?? err.message;
  if (err.authenticationFailed === true) return new SinkError(`IMAP ${what}: login refused: ${text}`, { temporary: false, cause: e, reply: text });
  if (err.responseStatus === 'NO' || err.responseStatus === 'BAD') {
    // A NO is worth trying again unless the server said why not for good; BAD is a refusal of the command itself.
    const temporary = err.responseStatus === 'NO' && (code === undefined || TEMPORARY_CODES.has(code));
    return new SinkError(`IMAP ${what}: ${err.responseStatus}${code !== undefined ? ` [${code}]` : ''} ${text}`.trimEnd(), {
      temporary,
      cause: e,
      reply: text,
    });
  }
  if (code === 'APPENDLIMIT') return new SinkError(`IMAP ${what}: ${err.message}`, { temporary: false, cause: e });
  // Connection, TLS, timeouts, a malformed or oversized reply: nothing was stored, another run may do better.
  return new SinkError(`IMAP ${what}: ${err.message}${err.code !== undefined ? ` (${err.code})` : ''}`, { temporary: true, cause: e });
}

/** The first Message-ID field's value, unfolded, when it is a plausible one. */
export function messageIdOf(head: string): string | undefined {
  const m = /(?:^|\r?\n)message-id:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)/i.exec(head);
  if (m === null) return undefined;
  const v = m[1]!.replace(/\r?\n[ \t]+/g, ' ').trim();
  return /^<[\x21-\x7e]{1,250}>$/.test(v) ? v : undefined;
}

/** The header of a message (up to the empty line, at most 256 KiB), as latin1 text. */
function headOf(msg: Buffer): string {
  const end = msg.indexOf('\r\n\r\n');
  const lfEnd = msg.indexOf('\n\n');
  const cut = [end, lfEnd].filter((i) => i >= 0);
  return msg.subarray(0, Math.min(cut.length > 0 ? Math.min(...cut) : msg.length, 256 * 1024)).toString('latin1');
}

/** The Date header as a time, when it is one and not in the future. */
function headerDate(head: string): Date | undefined {
  const m = /(?:^|\r?\n)date:[ \t]*((?:[^\r\n]|\r?\n[ \t])*)/i.exec(head);
  if (m === null) return undefined;
  const t = Date.parse(m[1]!.replace(/\r?\n[ \t]+/g, ' ').replace(/\([^()]*\)/g, '').trim());
  if (!Number.isFinite(t) || t > Date.now() + 86_400_000 || t < Date.UTC(1971, 0, 1)) return undefined;
  return new Date(t);
}

export class ImapSink implements Sink {
  readonly #o: Required<Omit<ImapSinkOptions, 'ca' | 'servername'>> & Pick<ImapSinkOptions, 'ca' | 'servername'>;
  /** Logged-in connections not in use, how many exist (idle, busy or connecting), and callers waiting for one. */
  readonly #idle: ImapFlow[] = [];
  #count = 0;
  readonly #waiters: (() => void)[] = [];
  #closed = false;
  readonly concurrentDeliveries: boolean;
  /** Connections opened so far, and messages appended (tests, the summary). */
  connections = 0;
  appended = 0;
  /** UID of the last message appended, when the server has UIDPLUS. */
  lastUid: number | undefined;

  constructor(opts: ImapSinkOptions) {
    const tls = opts.tls ?? 'implicit';
    this.#o = {
      host: opts.host,
      port: opts.port ?? (tls === 'implicit' ? 993 : 143),
      tls,
      insecure: opts.insecure ?? false,
      allowPlaintextPassword: opts.allowPlaintextPassword ?? false,
      user: opts.user,
      credentials: opts.credentials,
      folder: opts.folder ?? 'INBOX',
      create: opts.create ?? false,
      internalDate: opts.internalDate ?? 'date',
      timeoutMs: opts.timeoutMs ?? 300_000,
      maxMessageOctets: opts.maxMessageOctets ?? 100 * 1024 * 1024,
      connections: opts.connections ?? 4,
      ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
      ...(opts.servername !== undefined ? { servername: opts.servername } : {}),
    };
    if (opts.user === '' || /[\x00-\x1f\x7f]/.test(opts.user)) throw new TypeError('ImapSink: invalid user name');
    if (this.#o.folder === '' || /[\x00-\x1f\x7f]/.test(this.#o.folder)) throw new TypeError('ImapSink: invalid folder name');
    if (!Number.isInteger(this.#o.connections) || this.#o.connections < 1) throw new TypeError('ImapSink: connections must be a whole number >= 1');
    this.concurrentDeliveries = this.#o.connections > 1;
  }

  get where(): string {
    return `${this.#o.host}:${this.#o.port}`;
  }

  async deliver(message: Readable, info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    const chunks: Buffer[] = [];
    let total = 0;
    const stop = destroyOnAbort(message, signal);
    try {
      for await (const c of chunksOf(message)) {
        total += c.length;
        if (total > this.#o.maxMessageOctets) {
          message.destroy();
          throw new SinkError(`IMAP sink: message ${info.uidl} is larger than max_size (${this.#o.maxMessageOctets} octets)`, { temporary: false });
        }
        chunks.push(c);
      }
    } finally {
      stop();
    }
    return this.deliverBuffer(Buffer.concat(chunks, total), info, signal);
  }

  async deliverBuffer(message: Buffer, info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (message.length > this.#o.maxMessageOctets) {
      throw new SinkError(`IMAP sink: message ${info.uidl} is larger than max_size (${this.#o.maxMessageOctets} octets)`, { temporary: false });
    }
    const idate = this.#o.internalDate === 'date' ? headerDate(headOf(message)) : undefined;
    await this.#withClient(signal, async (client) => {
      let res;
      try {
        res = await client.append(this.#o.folder, message, [], idate);
      } catch (e) {
        const err = e as ImapErrorish;
        if (!this.#o.create || err.serverResponseCode?.toUpperCase() !== 'TRYCREATE') throw e;
        // Another connection of this sink may be creating it at the same moment: the second APPEND says whether it exists.
        await client.mailboxCreate(this.#o.folder).catch(() => undefined);
        res = await client.append(this.#o.folder, message, [], idate);
      }
      // imapflow answers nothing (no throw) when the connection is not usable for APPEND.
      if (res === undefined || res === false) throw new SinkError(`IMAP APPEND to ${this.where}: the connection is not logged in`, { temporary: true });
      this.appended++;
      this.lastUid = typeof res.uid === 'number' ? res.uid : undefined;
    }, 'APPEND');
  }

  async findDelivered(pending: readonly PendingMessage[]): Promise<Set<string>> {
    const found = new Set<string>();
    if (pending.length === 0) return found;
    await this.#withClient(undefined, async (client) => {
      try {
        await client.mailboxOpen(this.#o.folder, { readOnly: true });
      } catch (e) {
        // A folder that does not exist holds nothing.
        if ((e as ImapErrorish).responseStatus === 'NO') return;
        throw e;
      }
      const used = new Set<number>();
      for (const p of pending) {
        const { head, digest } = await summarize(p.content);
        const mid = messageIdOf(head);
        const query: Record<string, unknown> = { larger: p.content.size - 1, smaller: p.content.size + 1 };
        if (mid !== undefined) query['header'] = { 'message-id': mid };
        const uids = await client.search(query, { uid: true });
        if (uids === false || uids === undefined) continue;
        const candidates = uids.filter((u) => !used.has(u)).sort((a, b) => b - a).slice(0, MAX_CANDIDATES);
        for (const uid of candidates) {
          if ((await this.#digestOf(client, uid, p.content.size)) === digest) {
            used.add(uid);
            found.add(p.uidl);
            break;
          }
        }
      }
      await client.mailboxClose().catch(() => undefined);
    }, 'search');
    return found;
  }

  /** Log out and close the connections (call it once no delivery is under way). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w();
    const idle = this.#idle.splice(0);
    this.#count -= idle.length;
    await Promise.all(
      idle.map(async (client) => {
        const t = setTimeout(() => client.close(), 5000);
        try {
          if (client.usable) await client.logout();
        } catch {
          // the connection is going anyway
        } finally {
          clearTimeout(t);
          client.close();
        }
      }),
    );
  }

  /** SHA-256 of a stored message, read in pieces; undefined when it is not `size` octets. */
  async #digestOf(client: ImapFlow, uid: number, size: number): Promise<string | undefined> {
    const h = createHash('sha256');
    let got = 0;
    for (let start = 0; start < size; start += CHUNK) {
      const msg = await client.fetchOne(String(uid), { source: { start, maxLength: CHUNK } }, { uid: true });
      const piece = msg === false ? undefined : msg.source;
      if (piece === undefined || piece.length === 0) break;
      h.update(piece);
      got += piece.length;
      if (piece.length < CHUNK) break;
    }
    return got === size ? h.digest('hex') : undefined;
  }

  /**
   * Run `fn` on a logged-in connection: the kept one, or a new one. An
   * error that leaves the connection unusable drops it (the next call
   * connects afresh); every error becomes a SinkError.
   */
  async #withClient(signal: AbortSignal | undefined, fn: (client: ImapFlow) => Promise<void>, what: string): Promise<void> {
    let client: ImapFlow | undefined;
    try {
      client = await this.#acquire(signal);
      const c = client;
      const removeAbort = onAbort(signal, () => c.close());
      try {
        await fn(client);
        signal?.throwIfAborted();
      } finally {
        removeAbort();
      }
    } catch (e) {
      if (signal?.aborted === true) throw abortReason(signal);
      // A password or token that cannot be had is the configuration's fault (exit 78), not the server's.
      if (e instanceof Error && e.name === 'CredentialError') throw e;
      throw imapSinkError(`${what} ${this.where}`, e);
    } finally {
      if (client !== undefined) this.#release(client);
    }
  }

  /** A logged-in connection of this sink's own: an idle one, a new one while fewer than `connections` exist, or the next one released. */
  async #acquire(signal: AbortSignal | undefined): Promise<ImapFlow> {
    for (;;) {
      if (this.#closed) throw new SinkError('the IMAP sink is closed', { temporary: true });
      signal?.throwIfAborted();
      const kept = this.#idle.pop();
      if (kept !== undefined) {
        if (kept.usable) return kept;
        kept.close(); // closed by the server meanwhile (idle timeout): nothing was under way on it
        this.#count--;
        continue;
      }
      if (this.#count < this.#o.connections) {
        this.#count++;
        try {
          return await this.#connect(signal);
        } catch (e) {
          this.#count--;
          this.#waiters.shift()?.();
          throw e;
        }
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /** Back to the idle ones, or closed for good when it broke (the next caller connects afresh). */
  #release(client: ImapFlow): void {
    if (client.usable && !this.#closed) this.#idle.push(client);
    else {
      client.close();
      this.#count--;
    }
    this.#waiters.shift()?.();
  }

  async #connect(signal: AbortSignal | undefined): Promise<ImapFlow> {
    const o = this.#o;
    if (o.tls === 'none' && !o.allowPlaintextPassword && !isLoopback(o.host)) {
      throw new SinkError(`IMAP sink: refusing to send credentials to ${o.host} without TLS (set tls, or allow_plaintext_password = true)`, { temporary: false });
    }
    const cred = o.credentials;
    if (cred.kind === 'password') return this.#open({ user: o.user, pass: await cred.get(signal) });
    const first = await cred.get(signal, false);
    try {
      return await this.#open({ user: o.user, accessToken: first.token });
    } catch (e) {
      // A cached token the server refuses (revoked early): one fresh one.
      if ((e as ImapErrorish).authenticationFailed !== true || !first.cached) throw e;
      return this.#open({ user: o.user, accessToken: (await cred.get(signal, true)).token });
    }
  }

  async #open(auth: ImapFlowOptions['auth']): Promise<ImapFlow> {
    const o = this.#o;
    const client = new ImapFlow({
      host: o.host,
      port: o.port,
      secure: o.tls === 'implicit',
      doSTARTTLS: o.tls === 'starttls' ? true : o.tls === 'none' ? false : undefined,
      ...(o.servername !== undefined ? { servername: o.servername } : {}),
      tls: {
        minVersion: 'TLSv1.2',
        rejectUnauthorized: !o.insecure,
        ...(o.ca !== undefined ? { ca: o.ca } : {}),
      },
      auth,
      logger: false,
      disableAutoIdle: true,
      connectionTimeout: o.timeoutMs,
      greetingTimeout: o.timeoutMs,
      socketTimeout: o.timeoutMs,
      maxLineLength: MAX_LINE,
      maxLiteralSize: CHUNK + 64 * 1024,
      maxResponseSize: MAX_LINE + CHUNK + 64 * 1024,
    });
    // Errors reach the command that is waiting; an unlistened 'error' event must not end the process.
    client.on('error', () => undefined);
    this.connections++;
    try {
      await client.connect();
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }
}

/** The header (for the Message-ID) and SHA-256 of a pending message, read once. */
async function summarize(src: MessageSource): Promise<{ head: string; digest: string }> {
  const h = createHash('sha256');
  const headParts: Buffer[] = [];
  let headLen = 0;
  for await (const c of src.chunks()) {
    h.update(c);
    if (headLen < 256 * 1024) {
      headParts.push(c);
      headLen += c.length;
    }
  }
  return { head: headOf(Buffer.concat(headParts)), digest: h.digest('hex') };
}
