import { MailError } from '../errors.js';
import type { Logger } from '../observability/log.js';
import { respCodeFor } from '../protocol/codes.js';
import type { ClientInfo } from './client-info.js';
import type { LoginFailure, ServerObserver, SessionObserver } from './observer.js';

/**
 * The session's log lines: `login`, `auth-failed` (docs/fail2ban.md matches
 * it: keep its fields and text), the LOGIN-DELAY and maildrop refusals, and
 * the `logout` line with the session's counters.
 */
export function logObserver(logger: Logger): ServerObserver {
  return { connected: (client) => new LogSession(logger, client) };
}

class LogSession implements SessionObserver {
  readonly #logger: Logger;
  readonly #rip: string;
  readonly #started = Date.now();
  #tls: boolean;
  #user: string | undefined;
  #retr = 0;
  #retrBytes = 0;
  #top = 0;
  #topBytes = 0;
  #dele = 0;
  #expunged = 0;

  constructor(logger: Logger, client: ClientInfo) {
    this.#logger = logger;
    this.#rip = client.remoteAddress;
    this.#tls = client.tls;
  }

  tlsStarted(): void {
    this.#tls = true;
  }

  loginSucceeded(user: string, mechanism: string, messages: number): void {
    this.#user = user;
    this.#logger.info({ user, rip: this.#rip, mech: mechanism, tls: this.#tls, messages }, 'login');
  }

  loginFailed(user: string | undefined, mechanism: string, f: LoginFailure): void {
    const rip = this.#rip;
    switch (f.reason) {
      case 'credentials':
      case 'blocked':
        this.#logger.warn(
          { event: 'auth-failed', rip, user, mech: mechanism, tls: this.#tls, ...(f.reason === 'blocked' ? { why: 'blocked' } : {}) },
          `authentication failed from ${rip}`,
        );
        return;
      case 'login-delay':
        this.#logger.info({ user, rip, wait: f.wait }, 'login refused: LOGIN-DELAY');
        return;
      case 'maildrop':
        if (f.error instanceof MailError) this.#logger.info({ user, rip, code: respCodeFor(f.error.kind) }, `maildrop not opened: ${f.error.message}`);
        else this.#logger.error({ err: f.error, user, rip }, 'cannot open maildrop');
        return;
      case 'backend':
        this.#logger.error({ err: f.error, rip, mech: mechanism }, 'authentication backend failed');
        return;
    }
  }

  messageSent(command: 'RETR' | 'TOP', bytes: number): void {
    if (command === 'RETR') {
      this.#retr++;
      this.#retrBytes += bytes;
    } else {
      this.#top++;
      this.#topBytes += bytes;
    }
  }

  deletionsMarked(count: number): void {
    this.#dele = count;
  }

  updated(expunged: number): void {
    this.#expunged = expunged;
  }

  ended(reason: string): void {
    this.#logger.info(
      {
        event: 'logout',
        user: this.#user,
        rip: this.#rip,
        tls: this.#tls,
        reason,
        retr: this.#retr,
        retrBytes: this.#retrBytes,
        top: this.#top,
        topBytes: this.#topBytes,
        dele: this.#dele,
        expunged: this.#expunged,
        ms: Date.now() - this.#started,
      },
      'session end',
    );
  }
}
