import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConnectionInfo, Credentials, Principal } from '../auth/types.js';
import { MailError } from '../errors.js';
import { Pop3Error, respCodeFor, type RespCode } from '../protocol/codes.js';
import { usernameSyntaxProblem } from '../auth/username.js';
import type { Maildrop } from '../store/types.js';
import { AUTHORIZATION_COMMANDS } from './authorization.js';
import { capabilityLines } from './capabilities.js';
import { isLoopback, type Connection } from './connection.js';
import type { ServerContext } from './context.js';
import { TRANSACTION_COMMANDS, TransactionState } from './transaction.js';
import { apopTimestamp, type SaslServerContext } from '../protocol/sasl/index.js';
import { readResponse } from './authorization.js';

export type Handler<S> = (session: Session, state: S, args: string) => Promise<void>;

/** AUTHORIZATION state (RFC 1939 §4). Deliberately holds no maildrop: storage is out of reach before login. */
export class AuthorizationState {
  /** Name from a successful USER, waiting for PASS. */
  pendingUser: string | undefined;
}

export interface SessionStats {
  retr: number;
  retrBytes: number;
  top: number;
  topBytes: number;
  dele: number;
  expunged: number;
}

/**
 * One POP3 session: reads command lines strictly in order, dispatches them
 * through the table of the current state, and answers each fully before the
 * next (RFC 2449 §6.6 PIPELINING).
 */
export class Session {
  readonly conn: Connection;
  readonly ctx: ServerContext;
  readonly stats: SessionStats = { retr: 0, retrBytes: 0, top: 0, topBytes: 0, dele: 0, expunged: 0 };
  #state: AuthorizationState | TransactionState = new AuthorizationState();
  #badCommands = 0;
  /** The `<...>` msg-id of the greeting when APOP is enabled. */
  apopTimestamp: string | undefined;
  #ended = false;
  #endReason = 'disconnected';
  /** Fires login_deadline after the greeting unless the client logged in by then. */
  #loginDeadline: NodeJS.Timeout | undefined;
  /** Credentials are verified and the maildrop is being opened: our work, not the client's time. */
  #opening = false;
  #deadlinePassed = false;
  /** When the client's latest line arrived: a login attempt's answer time is measured from here. */
  #inputAt = 0;
  readonly #started = Date.now();

  constructor(conn: Connection, ctx: ServerContext) {
    this.conn = conn;
    this.ctx = ctx;
  }

  /** A client line just arrived (a command, or a SASL response). */
  noteInput(): void {
    this.#inputAt = performance.now();
  }

  get loggedIn(): boolean {
    return this.#state instanceof TransactionState;
  }

  get connectionInfo(): ConnectionInfo {
    const c = this.conn;
    return {
      remoteAddress: c.remoteAddress,
      remotePort: c.remotePort,
      get localAddress() {
        return c.localAddress; // read only by a backend that asks (a system call)
      },
      get localPort() {
        return c.localPort;
      },
      secure: c.secure,
    };
  }

  /** RFC 2595 §4 / checklist 22: cleartext passwords only over TLS, from loopback, or when configured. */
  get plaintextAllowed(): boolean {
    const p = this.ctx.settings.plaintext_auth;
    return p === 'always' || this.conn.secure || (p === 'loopback' && isLoopback(this.conn.remoteAddress));
  }

  get stlsAvailable(): boolean {
    return !this.conn.secure && this.ctx.tlsContext() !== null;
  }

  mechanisms(): string[] {
    const allowPlain = this.plaintextAllowed;
    const ctx = this.saslContext();
    return this.ctx.mechanisms.filter((m) => (allowPlain || !m.plaintext) && (m.available?.(ctx) ?? true)).map((m) => m.name);
  }

  /** What SASL mechanisms may ask of this connection. */
  saslContext(): SaslServerContext {
    const tlsSocket = this.conn.tlsSocket;
    const protocol = tlsSocket?.getProtocol();
    const { authenticator } = this.ctx;
    return {
      lookupSecret: (u) => authenticator.lookupSecret?.(u, this.conn.signal) ?? Promise.resolve(undefined),
      channelBinding: (type) => {
        if (!tlsSocket) return undefined;
        // RFC 9266: 32 octets, label EXPORTER-Channel-Binding, empty context. RFC 5929: the first Finished message (the client's).
        if (type === 'tls-exporter') return protocol === 'TLSv1.3' ? tlsSocket.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0)) : undefined;
        return protocol === 'TLSv1.2' ? tlsSocket.getPeerFinished() : undefined;
      },
      channelBindingType: protocol === 'TLSv1.3' ? 'tls-exporter' : protocol === 'TLSv1.2' ? 'tls-unique' : undefined,
      hostname: this.ctx.settings.hostname ?? os.hostname(),
      certificateIdentity: this.conn.certificateIdentity,
    };
  }

  capabilities(): string[] {
    return capabilityLines(this.ctx.settings, {
      secure: this.conn.secure,
      loggedIn: this.loggedIn,
      plaintextAllowed: this.plaintextAllowed,
      stlsAvailable: this.stlsAvailable,
      mechanisms: this.mechanisms(),
    });
  }

  ok(text = ''): void {
    this.conn.write(text === '' ? '+OK\r\n' : `+OK ${text}\r\n`);
  }

  err(text: string, code?: RespCode): void {
    this.conn.write(code !== undefined ? `-ERR [${code}] ${text}\r\n` : `-ERR ${text}\r\n`);
  }

  /** A multi-line reply from ready-made lines; lines are dot-stuffed here (RFC 1939 §3). */
  async multiline(first: string, lines: Iterable<string>): Promise<void> {
    let batch = `+OK ${first}\r\n`;
    for (const l of lines) {
      batch += (l.charCodeAt(0) === 0x2e ? '.' : '') + l + '\r\n';
      if (batch.length >= 16384) {
        this.conn.write(batch);
        batch = '';
        if (this.conn.needsDrain && !(await this.conn.drain())) return;
      }
    }
    this.conn.write(batch + '.\r\n');
  }

  /** Counts a bad command; after too many the client is dropped (a scanner, not a mail client). */
  badCommand(text: string): void {
    this.#badCommands++;
    if (this.#badCommands >= this.ctx.settings.max_bad_commands) {
      this.err('Too many invalid commands.');
      this.close('too many bad commands');
      return;
    }
    this.err(text);
  }

  /**
   * The server stops: a session waiting for a command is told so, one in the
   * middle of a reply is cut off. Neither enters UPDATE (RFC 1939 §6: only QUIT does).
   */
  shutdown(): void {
    if (this.#ended) return;
    if (this.conn.awaitingInput) return this.close('server shutdown', '-ERR [SYS/TEMP] Server shutting down.\r\n');
    this.#ended = true;
    this.#endReason = 'server shutdown';
    this.conn.destroy();
  }

  close(reason: string, last?: string): void {
    this.#ended = true;
    this.#endReason = reason;
    this.conn.end(last);
  }

  async run(): Promise<void> {
    const s = this.ctx.settings;
    this.conn.setTimeout(s.login_timeout * 1000, () => this.#timeout());
    // RFC 1939 §7: the APOP timestamp is in the greeting only when APOP is on, fresh per connection.
    if (s.apop) this.apopTimestamp = apopTimestamp(s.hostname ?? os.hostname());
    this.ok(this.apopTimestamp !== undefined ? `${s.implementation} ready. ${this.apopTimestamp}` : `${s.implementation} ready.`);
    // login_timeout restarts with every byte; this one does not (a client trickling bytes cannot keep its slot).
    if (s.login_deadline > 0) this.#loginDeadline = setTimeout(() => this.#deadline(), s.login_deadline * 1000);
    try {
      while (!this.#ended) {
        const ev = await this.conn.nextLine();
        if (ev === null) break;
        this.noteInput();
        if (ev.kind === 'overlong') {
          this.badCommand('Line too long.');
          continue;
        }
        await this.#dispatch(ev.line);
        if (this.conn.needsDrain && !(await this.conn.drain())) break;
      }
    } catch (e) {
      this.ctx.logger.error({ err: e, rip: this.conn.remoteAddress }, 'session failed');
      this.#endReason = 'internal error';
    } finally {
      await this.#finish();
    }
  }

  async #dispatch(lineBuf: Buffer): Promise<void> {
    const line = lineBuf.toString('utf8');
    const sp = line.indexOf(' ');
    const keyword = (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
    const args = sp === -1 ? '' : line.slice(sp + 1);
    if (keyword !== 'AUTH' && lineBuf.length + 2 > this.ctx.settings.max_line_length) {
      this.badCommand('Line too long.');
      return;
    }
    const state = this.#state;
    try {
      if (state instanceof TransactionState) {
        const h = TRANSACTION_COMMANDS.get(keyword);
        if (h === undefined) return this.badCommand(AUTHORIZATION_COMMANDS.has(keyword) ? 'Already logged in.' : 'Unknown command.');
        await h(this, state, args);
      } else {
        const h = AUTHORIZATION_COMMANDS.get(keyword);
        if (h === undefined) return this.badCommand(TRANSACTION_COMMANDS.has(keyword) ? 'Not logged in.' : 'Unknown command.');
        await h(this, state, args);
      }
    } catch (e) {
      if (e instanceof Pop3Error) {
        this.err(e.message, e.code);
      } else if (e instanceof MailError) {
        this.err(e.message, respCodeFor(e.kind));
      } else {
        this.ctx.logger.error({ err: e, rip: this.conn.remoteAddress, command: keyword }, 'command failed');
        this.err('Internal error, try again later.', 'SYS/TEMP');
      }
    }
  }

  /**
   * Verify credentials with the Authenticator, then open the maildrop.
   * Failures keep the session in AUTHORIZATION as if the command was never sent (RFC 5034 §4).
   */
  async login(credentials: Credentials, mechanism: string, failureChallenge?: () => Buffer): Promise<void> {
    const { logger, authenticator, throttle } = this.ctx;
    // A name no user can have (src/auth/username.ts) is a wrong login, whatever mechanism carried it.
    if (credentials.username !== '' && usernameSyntaxProblem(credentials.username) !== undefined) {
      await this.authFailed(credentials.username, mechanism);
      return;
    }
    if (await throttle.isBlocked(this.conn.remoteAddress, credentials.username)) {
      // Refused without looking at the credentials, but answered exactly like a wrong password.
      await this.authFailed(credentials.username, mechanism, 'blocked');
      return;
    }
    let principal: Principal | null;
    try {
      principal = await authenticator.authenticate(credentials, this.connectionInfo, this.conn.signal);
    } catch (e) {
      if (this.conn.closed) return;
      logger.error({ err: e, rip: this.conn.remoteAddress, mech: mechanism }, 'authentication backend failed');
      this.err('Authentication is temporarily unavailable.', 'SYS/TEMP');
      return;
    }
    if (principal === null) {
      if (failureChallenge !== undefined) {
        // RFC 7628 §3.2.2: the error goes out as a challenge; the client answers (AQ==), then the failure.
        const answer = await readResponse(this, failureChallenge());
        if (answer === null) return;
      }
      await this.authFailed(credentials.username, mechanism);
      return;
    }
    await this.#openMaildrop(principal, mechanism);
  }

  /** A mechanism that verified the user itself (CRAM-MD5, SCRAM, EXTERNAL, APOP). */
  async loginVerified(username: string, mechanism: string): Promise<void> {
    if (usernameSyntaxProblem(username) !== undefined) {
      await this.authFailed(username, mechanism);
      return;
    }
    if (await this.ctx.throttle.isBlocked(this.conn.remoteAddress, username)) {
      await this.authFailed(username, mechanism, 'blocked');
      return;
    }
    // The user database still decides where the maildrop is (home, maildir) and whether the user may log in.
    let principal: Principal | undefined = { username };
    const lookup = this.ctx.authenticator.lookupPrincipal;
    if (lookup !== undefined) {
      try {
        principal = await lookup.call(this.ctx.authenticator, username, this.conn.signal);
      } catch (e) {
        if (this.conn.closed) return;
        this.ctx.logger.error({ err: e, rip: this.conn.remoteAddress, mech: mechanism }, 'authentication backend failed');
        this.err('Authentication is temporarily unavailable.', 'SYS/TEMP');
        return;
      }
    }
    if (principal === undefined) {
      await this.authFailed(username, mechanism);
      return;
    }
    await this.#openMaildrop(principal, mechanism);
  }

  async #openMaildrop(principal: Principal, mechanism: string): Promise<void> {
    const { logger, settings, store, loginDelay } = this.ctx;
    this.ctx.decisionTimes.note(performance.now() - this.#inputAt);
    const wait = loginDelay?.waitSeconds(principal.username) ?? 0;
    if (wait > 0) {
      logger.info({ user: principal.username, rip: this.conn.remoteAddress, wait }, 'login refused: LOGIN-DELAY');
      this.err(`Minimum time between logins is ${settings.login_delay} seconds; try again in ${wait} seconds.`, 'LOGIN-DELAY');
      return;
    }
    // The login deadline passed while the credentials were being checked.
    if (this.#ended) return;
    let maildrop: Maildrop;
    // Opening a big maildrop the first time can take long: that is our work, not client inactivity.
    this.conn.setTimeout(0, () => this.#timeout());
    this.#opening = true;
    try {
      maildrop = await store.open(principal, this.conn.signal);
    } catch (e) {
      this.#opening = false;
      this.conn.setTimeout(settings.login_timeout * 1000, () => this.#timeout());
      if (this.#deadlinePassed) {
        this.#deadline();
        return;
      }
      if (e instanceof MailError) {
        const code = respCodeFor(e.kind);
        logger.info({ user: principal.username, rip: this.conn.remoteAddress, code }, `maildrop not opened: ${e.message}`);
        this.err(e.kind === 'in-use' ? 'Maildrop is locked by another session.' : e.message, code);
      } else {
        logger.error({ err: e, user: principal.username, rip: this.conn.remoteAddress }, 'cannot open maildrop');
        this.err('Cannot open the maildrop, try again later.', 'SYS/TEMP');
      }
      return;
    }
    this.#opening = false;
    clearTimeout(this.#loginDeadline);
    if (this.conn.closed || this.#ended) {
      await maildrop.release();
      return;
    }
    loginDelay?.recordLogin(principal.username);
    await this.ctx.throttle.recordSuccess(this.conn.remoteAddress, principal.username).catch(() => undefined);
    this.#state = new TransactionState(principal, maildrop);
    this.conn.setTimeout(settings.idle_timeout * 1000, () => this.#timeout());
    logger.info({ user: principal.username, rip: this.conn.remoteAddress, mech: mechanism, tls: this.conn.secure, messages: maildrop.messages.length }, 'login');
    this.ok('Logged in.');
  }

  /**
   * One log line per failure (docs/fail2ban.md matches it), then a delay that
   * grows with the failures from this address and for this user, then `-ERR [AUTH]`.
   */
  async authFailed(username: string | undefined, mechanism: string, why?: 'blocked'): Promise<void> {
    const rip = this.conn.remoteAddress;
    this.ctx.logger.warn({ event: 'auth-failed', rip, user: username, mech: mechanism, tls: this.conn.secure, ...(why ? { why } : {}) }, `authentication failed from ${rip}`);
    const decided = performance.now() - this.#inputAt;
    const floor = this.ctx.decisionTimes.value;
    this.ctx.decisionTimes.note(decided);
    let delay: number;
    try {
      delay = await this.ctx.throttle.recordFailure(rip, username ?? '');
    } catch {
      delay = this.ctx.settings.auth_failure_delay * 1000; // counters unavailable: still never answer a failure at once
    }
    // Measured from the attempt's start, not from now: however long this user's check took (a cheap
    // scheme, a dummy argon2id for an unknown name, a slow backend), the answer comes at the same time.
    const wait = this.#inputAt + Math.max(delay, floor) - performance.now();
    if (wait > 0) await sleep(wait, undefined, { signal: this.conn.signal }).catch(() => undefined);
    this.err('Authentication failed.', 'AUTH');
  }

  /** QUIT in TRANSACTION: the UPDATE state (RFC 1939 §6). Never `+OK` unless every marked message is gone. */
  async update(state: TransactionState): Promise<void> {
    const expire = this.ctx.settings.expire;
    const retrieved = state.retrievedIndexes();
    // RFC 2449 §6.7: EXPIRE 0 means a retrieved message does not stay on the server after a clean QUIT.
    const deleted = expire === 0 ? [...new Set([...state.deletedIndexes(), ...retrieved])].sort((a, b) => a - b) : state.deletedIndexes();
    try {
      await state.maildrop.commit(deleted, { retrieved, ...(typeof expire === 'number' && expire > 0 ? { expireDays: expire } : {}) });
      this.stats.expunged = deleted.length;
      // Unlock before answering: a client that reconnects at once must not find the maildrop [IN-USE].
      await state.maildrop.release();
      this.close('QUIT', `+OK Logging out, ${deleted.length} message${deleted.length === 1 ? '' : 's'} deleted.\r\n`);
    } catch (e) {
      this.ctx.logger.error({ err: e, user: state.principal.username }, 'UPDATE failed');
      const msg = e instanceof MailError ? e.message : 'Removing deleted messages failed';
      await state.maildrop.release().catch(() => undefined);
      this.close('QUIT (update failed)', `-ERR [SYS/TEMP] ${msg}; logging out.\r\n`);
    }
  }

  #deadline(): void {
    if (this.#ended || this.loggedIn) return;
    if (this.#opening) {
      this.#deadlinePassed = true;
      return;
    }
    this.close('login deadline', `-ERR Disconnected: no login within ${this.ctx.settings.login_deadline} seconds.\r\n`);
  }

  #timeout(): void {
    if (this.#ended) return;
    this.close('idle timeout', '-ERR Disconnected for inactivity.\r\n');
    this.conn.destroy();
  }

  async #finish(): Promise<void> {
    clearTimeout(this.#loginDeadline);
    if (!this.conn.closed) this.conn.end();
    const state = this.#state;
    let user: string | undefined;
    if (state instanceof TransactionState) {
      user = state.principal.username;
      // Every way out releases the lock; only QUIT ever removed anything.
      await state.maildrop.release().catch((e: unknown) => this.ctx.logger.error({ err: e, user }, 'releasing maildrop failed'));
    }
    this.ctx.logger.info(
      {
        event: 'logout',
        user,
        rip: this.conn.remoteAddress,
        tls: this.conn.secure,
        reason: this.#endReason,
        ...this.stats,
        ms: Date.now() - this.#started,
      },
      'session end',
    );
  }
}
