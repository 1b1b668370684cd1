import type { Principal } from '../auth/types.js';
import { MailError } from '../errors.js';
import type { Logger } from '../observability/log.js';
import type { Maildrop } from '../store/types.js';
import { ChannelReplies, type Channel } from './channel.js';
import type { ServerSettings } from './context.js';
import type { SessionObserver } from './observer.js';
import { TransactionState, type MailPort, type Wire } from './transaction.js';

/** What the mail half gets from the session besides the principal and the maildrop. */
export interface MailDeps {
  readonly channel: Channel;
  readonly settings: ServerSettings;
  readonly logger: Logger;
  readonly observer: SessionObserver;
  /** CAPA lines after login. */
  readonly capabilities: () => string[];
}

/**
 * The mail half of a session: TRANSACTION and UPDATE (RFC 1939 §5, §6) for
 * one authenticated principal over its opened, locked maildrop. Made only by
 * the hand-off (handoff.ts).
 */
export class MailHalf extends ChannelReplies implements MailPort {
  readonly state: TransactionState;
  readonly wire: Wire;
  readonly #ch: Channel;
  readonly #deps: MailDeps;

  constructor(deps: MailDeps, principal: Principal, maildrop: Maildrop) {
    super(deps.channel);
    this.#deps = deps;
    this.#ch = deps.channel;
    this.wire = deps.channel.conn;
    this.state = new TransactionState(principal, maildrop);
  }

  get signal(): AbortSignal {
    return this.#ch.conn.signal;
  }

  /** TRANSACTION begins: from now on the idle timeout applies. */
  begin(): void {
    this.#ch.setTimeout(this.#deps.settings.idle_timeout * 1000);
  }

  capabilities(): string[] {
    return this.#deps.capabilities();
  }
  messageSent(command: 'RETR' | 'TOP', bytes: number): void {
    this.#deps.observer.messageSent?.(command, bytes);
  }
  deletionsMarked(count: number): void {
    this.#deps.observer.deletionsMarked?.(count);
  }

  /** The +OK is out: a truncated body must never look complete, so no terminator; the client is dropped. */
  readFailed(index: number, e: unknown): void {
    const conn = this.#ch.conn;
    if (!conn.closed) this.#deps.logger.error({ err: e, user: this.state.principal.username, msg: index + 1 }, 'reading message failed');
    this.#ch.close('message read failed');
    conn.destroy();
  }

  /** QUIT in TRANSACTION: the UPDATE state (RFC 1939 §6). Never `+OK` unless every marked message is gone. */
  async update(): Promise<void> {
    const state = this.state;
    this.#deps.observer.updateStarted?.();
    const expire = this.#deps.settings.expire;
    const retrieved = state.retrievedIndexes();
    // RFC 2449 §6.7: EXPIRE 0 means a retrieved message does not stay on the server after a clean QUIT.
    const deleted = expire === 0 ? [...new Set([...state.deletedIndexes(), ...retrieved])].sort((a, b) => a - b) : state.deletedIndexes();
    try {
      await state.maildrop.commit(deleted, { retrieved, ...(typeof expire === 'number' && expire > 0 ? { expireDays: expire } : {}) });
      this.#deps.observer.updated?.(deleted.length);
      // Unlock before answering: a client that reconnects at once must not find the maildrop [IN-USE].
      await state.maildrop.release();
      this.#ch.close('QUIT', `+OK Logging out, ${deleted.length} message${deleted.length === 1 ? '' : 's'} deleted.\r\n`);
    } catch (e) {
      this.#deps.logger.error({ err: e, user: state.principal.username }, 'UPDATE failed');
      this.#deps.observer.updateFailed?.(e);
      const msg = e instanceof MailError ? e.message : 'Removing deleted messages failed';
      await state.maildrop.release().catch(() => undefined);
      this.#ch.close('QUIT (update failed)', `-ERR [SYS/TEMP] ${msg}; logging out.\r\n`);
    }
  }

  /** Every way out releases the lock (again after UPDATE is harmless); only QUIT ever removed anything. */
  async release(): Promise<void> {
    await this.state.maildrop.release().catch((e: unknown) => this.#deps.logger.error({ err: e, user: this.state.principal.username }, 'releasing maildrop failed'));
  }
}
