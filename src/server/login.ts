import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ThrottleCheck } from '../auth/throttle.js';
import type { ConnectionInfo, Credentials } from '../auth/types.js';
import { usernameSyntaxProblem } from '../auth/username.js';
import { InUseError, MailError } from '../errors.js';
import { respCodeFor } from '../protocol/codes.js';
import { encodeBase64, decodeBase64Strict } from '../protocol/sasl/base64.js';
import { apopTimestamp, type MechanismInfo, type SaslServerContext } from '../protocol/sasl/index.js';
import { AuthorizationState, type LoginPort } from './authorization.js';
import { capabilityLines } from './capabilities.js';
import { ChannelReplies, type Channel } from './channel.js';
import { isLoopback, type ClientInfo } from './client-info.js';
import type { LoginContext, ServerSettings } from './context.js';
import type { MailHalf } from './mail.js';
import { BLOCKED, CREDENTIALS, type SessionObserver } from './observer.js';
import { verifyCredentials, verifyUser, type Verified } from './verify.js';

/** The hand-off as the login half sees it: a verified user in, the mail half out (or the store's error). */
export type EnterMail = (user: Verified) => Promise<MailHalf>;

/**
 * The login half of a session: greeting, CAPA, STLS, USER/PASS, AUTH, APOP,
 * the failure throttle, LOGIN-DELAY and the login timeouts. It holds no store;
 * its one way to a maildrop is `enter`, the hand-off, with a verified user.
 */
export class LoginHalf extends ChannelReplies implements LoginPort {
  readonly state = new AuthorizationState();
  readonly #ch: Channel;
  readonly #ctx: LoginContext;
  readonly #client: ClientInfo;
  readonly #obs: SessionObserver;
  readonly #enter: EnterMail;
  /** The `<...>` msg-id of the greeting when APOP is enabled. */
  apopTimestamp: string | undefined;
  /** Set by a successful hand-off; the session takes it. */
  #mail: MailHalf | undefined;
  #handedOff = false;
  /** Fires login_deadline after the greeting unless the client logged in by then. */
  #loginDeadline: NodeJS.Timeout | undefined;
  /** Credentials are verified and the maildrop is being opened: our work, not the client's time. */
  #opening = false;
  #deadlinePassed = false;
  /** When the client's latest line arrived: a login attempt's answer time is measured from here. */
  #inputAt = 0;
  /** What the failure throttle read for the last login attempt (recordSuccess skips clearing a clean counter). */
  #throttleChecked: ThrottleCheck | undefined;

  constructor(channel: Channel, ctx: LoginContext, client: ClientInfo, observer: SessionObserver, enter: EnterMail) {
    super(channel);
    this.#ch = channel;
    this.#ctx = ctx;
    this.#client = client;
    this.#obs = observer;
    this.#enter = enter;
  }

  get settings(): ServerSettings {
    return this.#ctx.settings;
  }

  /** The greeting, and the clocks of the AUTHORIZATION state. */
  greet(): void {
    const s = this.#ctx.settings;
    this.#ch.setTimeout(s.login_timeout * 1000);
    // RFC 1939 §7: the APOP timestamp is in the greeting only when APOP is on, fresh per connection.
    if (s.apop) this.apopTimestamp = apopTimestamp(s.hostname ?? os.hostname());
    this.ok(this.apopTimestamp !== undefined ? `${s.implementation} ready. ${this.apopTimestamp}` : `${s.implementation} ready.`);
    // login_timeout restarts with every byte; this one does not (a client trickling bytes cannot keep its slot).
    if (s.login_deadline > 0) this.#loginDeadline = setTimeout(() => this.#deadline(), s.login_deadline * 1000);
  }

  /** The mail half, once the hand-off made one (taken once). */
  takeMail(): MailHalf | undefined {
    const m = this.#mail;
    this.#mail = undefined;
    return m;
  }

  /** The session is over. */
  dispose(): void {
    clearTimeout(this.#loginDeadline);
  }

  /** A client line just arrived (a command, or a SASL response). */
  noteInput(): void {
    this.#inputAt = performance.now();
  }

  get secure(): boolean {
    return this.#ch.conn.secure;
  }

  get tlsAvailable(): boolean {
    return this.#ctx.tlsContext() !== null;
  }

  get connectionInfo(): ConnectionInfo {
    const c = this.#client;
    const conn = this.#ch.conn;
    return {
      remoteAddress: c.remoteAddress,
      remotePort: c.remotePort,
      get localAddress() {
        return c.localAddress; // read only by a backend that asks (a system call)
      },
      get localPort() {
        return c.localPort;
      },
      secure: conn.secure,
    };
  }

  get plaintextAllowed(): boolean {
    const p = this.#ctx.settings.plaintext_auth;
    return p === 'always' || this.#ch.conn.secure || (p === 'loopback' && isLoopback(this.#client.remoteAddress));
  }

  mechanisms(): string[] {
    const allowPlain = this.plaintextAllowed;
    const ctx = this.saslContext();
    return this.#ctx.mechanisms.filter((m) => (allowPlain || !m.plaintext) && (m.available?.(ctx) ?? true)).map((m) => m.name);
  }

  mechanism(name: string): MechanismInfo | undefined {
    return this.#ctx.mechanisms.find((m) => m.name === name);
  }

  /** What SASL mechanisms may ask of this connection. */
  saslContext(): SaslServerContext {
    const conn = this.#ch.conn;
    const tlsSocket = conn.tlsSocket;
    const protocol = tlsSocket?.getProtocol();
    const { authenticator } = this.#ctx;
    return {
      lookupSecret: (u) => authenticator.lookupSecret?.(u, conn.signal) ?? Promise.resolve(undefined),
      channelBinding: (type) => {
        if (!tlsSocket) return undefined;
        // RFC 9266: 32 octets, label EXPORTER-Channel-Binding, empty context. RFC 5929: the first Finished message (the client's).
        if (type === 'tls-exporter') return protocol === 'TLSv1.3' ? tlsSocket.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0)) : undefined;
        return protocol === 'TLSv1.2' ? tlsSocket.getPeerFinished() : undefined;
      },
      channelBindingType: protocol === 'TLSv1.3' ? 'tls-exporter' : protocol === 'TLSv1.2' ? 'tls-unique' : undefined,
      hostname: this.#ctx.settings.hostname ?? os.hostname(),
      certificateIdentity: conn.certificateIdentity,
    };
  }

  /** CAPA lines, before login or (for the mail half) after it. */
  capabilities(loggedIn = false): string[] {
    const secure = this.#ch.conn.secure;
    return capabilityLines(this.#ctx.settings, {
      secure,
      loggedIn,
      plaintextAllowed: this.plaintextAllowed,
      stlsAvailable: !secure && this.tlsAvailable,
      mechanisms: this.mechanisms(),
    });
  }


  async startTls(): Promise<boolean> {
    const ctx = this.#ctx.tlsContext();
    if (ctx === null) return false;
    const conn = this.#ch.conn;
    const ok = await conn.startTls(ctx, Math.max(1, this.#ctx.settings.login_timeout) * 1000, this.#ctx.requestClientCertificate(), this.#ctx.tlsServerName());
    if (ok) this.#obs.tlsStarted?.(conn.tls?.protocol ?? '', conn.tls?.cipher ?? '');
    else this.#obs.tlsFailed?.();
    return ok;
  }

  async challenge(data: Buffer): Promise<Buffer | null> {
    const conn = this.#ch.conn;
    conn.write(data.length === 0 ? '+ \r\n' : `+ ${encodeBase64(data)}\r\n`);
    const ev = await conn.nextLine();
    if (ev === null) return null;
    this.noteInput();
    if (ev.kind === 'overlong' || ev.line.length + 2 > this.#ctx.settings.max_auth_line_length) {
      this.err('Authentication response too long.');
      return null;
    }
    const text = ev.line.toString('latin1');
    if (text === '*') {
      this.err('Authentication cancelled.');
      return null;
    }
    const decoded = decodeBase64Strict(text);
    if (decoded === null) this.err('Invalid base64 data in response.');
    return decoded;
  }

  async isBlocked(username: string): Promise<boolean> {
    const checked = await this.#ctx.throttle.check(this.#client.remoteAddress, username);
    this.#throttleChecked = checked;
    return checked.blocked;
  }

  async lookupSecret(username: string): Promise<string | undefined> {
    return this.#ctx.authenticator.lookupSecret?.(username, this.#ch.conn.signal);
  }

  backendFailed(e: unknown, mechanism: string): void {
    if (this.#ch.conn.closed) return;
    this.#obs.loginFailed?.(undefined, mechanism, { reason: 'backend', error: e });
    this.err('Authentication is temporarily unavailable.', 'SYS/TEMP');
  }

  /**
   * Verify credentials with the Authenticator, then hand off.
   * Failures keep the session in AUTHORIZATION as if the command was never sent (RFC 5034 §4).
   */
  async login(credentials: Credentials, mechanism: string, failureChallenge?: () => Buffer): Promise<void> {
    // A name no user can have (src/auth/username.ts) is a wrong login, whatever mechanism carried it.
    if (credentials.username !== '' && usernameSyntaxProblem(credentials.username) !== undefined) {
      await this.authFailed(credentials.username, mechanism);
      return;
    }
    if (await this.isBlocked(credentials.username)) {
      // Refused without looking at the credentials, but answered exactly like a wrong password.
      await this.authFailed(credentials.username, mechanism, 'blocked');
      return;
    }
    let user: Verified | null;
    try {
      user = await verifyCredentials(this.#ctx.authenticator, credentials, this.connectionInfo, this.#ch.conn.signal);
    } catch (e) {
      this.backendFailed(e, mechanism);
      return;
    }
    if (user === null) {
      if (failureChallenge !== undefined) {
        // RFC 7628 §3.2.2: the error goes out as a challenge; the client answers (AQ==), then the failure.
        const answer = await this.challenge(failureChallenge());
        if (answer === null) return;
      }
      await this.authFailed(credentials.username, mechanism);
      return;
    }
    await this.#handOff(user, mechanism);
  }

  async loginVerified(username: string, mechanism: string): Promise<void> {
    if (usernameSyntaxProblem(username) !== undefined) {
      await this.authFailed(username, mechanism);
      return;
    }
    if (await this.isBlocked(username)) {
      await this.authFailed(username, mechanism, 'blocked');
      return;
    }
    let user: Verified | undefined;
    try {
      user = await verifyUser(this.#ctx.authenticator, username, this.#ch.conn.signal);
    } catch (e) {
      this.backendFailed(e, mechanism);
      return;
    }
    if (user === undefined) {
      await this.authFailed(username, mechanism);
      return;
    }
    await this.#handOff(user, mechanism);
  }

  /** LOGIN-DELAY, then the hand-off: the maildrop opened and the mail half made, or the store's refusal answered. */
  async #handOff(user: Verified, mechanism: string): Promise<void> {
    const { settings, loginDelay } = this.#ctx;
    const name = user.username;
    this.#ctx.decisionTimes.note(performance.now() - this.#inputAt);
    // A store that cannot answer (it falls back to this node's memory first) lets the login through: LOGIN-DELAY spreads load, it guards nothing.
    const wait = loginDelay === undefined ? 0 : await loginDelay.waitSeconds(name).catch(() => 0);
    // The login deadline passed while the credentials (or the LOGIN-DELAY store) were being asked.
    if (this.#ch.ended) return;
    if (wait > 0) {
      this.#obs.loginFailed?.(name, mechanism, { reason: 'login-delay', wait });
      this.err(`Minimum time between logins is ${settings.login_delay} seconds; try again in ${wait} seconds.`, 'LOGIN-DELAY');
      return;
    }
    // Opening a big maildrop the first time can take long: that is our work, not client inactivity.
    this.#ch.setTimeout(0);
    this.#opening = true;
    const t0 = performance.now();
    let mail: MailHalf;
    try {
      mail = await this.#enter(user);
    } catch (e) {
      this.#opening = false;
      this.#obs.maildropOpened?.(name, performance.now() - t0, e instanceof InUseError ? 'in-use' : 'failed');
      this.#ch.setTimeout(settings.login_timeout * 1000);
      if (this.#deadlinePassed) {
        this.#deadline();
        return;
      }
      this.#obs.loginFailed?.(name, mechanism, { reason: 'maildrop', error: e });
      if (e instanceof MailError) this.err(e.kind === 'in-use' ? 'Maildrop is locked by another session.' : e.message, respCodeFor(e.kind));
      else this.err('Cannot open the maildrop, try again later.', 'SYS/TEMP');
      return;
    }
    this.#opening = false;
    this.#obs.maildropOpened?.(name, performance.now() - t0, 'opened');
    clearTimeout(this.#loginDeadline);
    if (this.#ch.conn.closed || this.#ch.ended) {
      await mail.release();
      return;
    }
    await Promise.all([
      loginDelay?.recordLogin(name).catch(() => undefined),
      this.#ctx.throttle.recordSuccess(this.#client.remoteAddress, name, this.#throttleChecked).catch(() => undefined),
    ]);
    this.#mail = mail;
    this.#handedOff = true;
    mail.begin();
    this.#obs.loginSucceeded?.(name, mechanism, mail.state.maildrop.messages.length);
    this.ok('Logged in.');
  }

  /**
   * One observer event per failure (the log observer writes the line
   * docs/fail2ban.md matches), then a delay that grows with the failures from
   * this address and for this user, then `-ERR [AUTH]`.
   */
  async authFailed(username: string | undefined, mechanism: string, why?: 'blocked'): Promise<void> {
    const rip = this.#client.remoteAddress;
    this.#obs.loginFailed?.(username, mechanism, why === 'blocked' ? BLOCKED : CREDENTIALS);
    const decided = performance.now() - this.#inputAt;
    const floor = this.#ctx.decisionTimes.value;
    this.#ctx.decisionTimes.note(decided);
    let delay: number;
    try {
      delay = await this.#ctx.throttle.recordFailure(rip, username ?? '');
    } catch {
      delay = this.#ctx.settings.auth_failure_delay * 1000; // counters unavailable: still never answer a failure at once
    }
    // Measured from the attempt's start, not from now: however long this user's check took (a cheap
    // scheme, a dummy argon2id for an unknown name, a slow backend), the answer comes at the same time.
    const wait = this.#inputAt + Math.max(delay, floor) - performance.now();
    this.#obs.failureDelayed?.(Math.max(0, wait));
    if (wait > 0) await sleep(wait, undefined, { signal: this.#ch.conn.signal }).catch(() => undefined);
    this.err('Authentication failed.', 'AUTH');
  }

  #deadline(): void {
    if (this.#ch.ended || this.#handedOff) return;
    if (this.#opening) {
      this.#deadlinePassed = true;
      return;
    }
    this.close('login deadline', `-ERR Disconnected: no login within ${this.#ctx.settings.login_deadline} seconds.\r\n`);
  }
}
