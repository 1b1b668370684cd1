import { MailError } from '../errors.js';
import type { Logger } from '../observability/log.js';
import { Pop3Error, respCodeFor } from '../protocol/codes.js';
import type { MailStore } from '../store/types.js';
import { AUTHORIZATION_COMMANDS } from './authorization.js';
import { Channel } from './channel.js';
import type { ClientInfo } from './client-info.js';
import type { Connection } from './connection.js';
import type { LoginContext } from './context.js';
import { handOff } from './handoff.js';
import { LoginHalf } from './login.js';
import type { MailDeps, MailHalf } from './mail.js';
import type { SessionObserver } from './observer.js';
import { TRANSACTION_COMMANDS } from './transaction.js';

/**
 * One POP3 session: reads command lines strictly in order and answers each
 * fully before the next (RFC 2449 §6.6 PIPELINING). It starts with the login
 * half (login.ts); the hand-off (handoff.ts) gives it the mail half
 * (mail.ts). The store is only ever passed to the hand-off.
 */
export class Session {
  readonly #conn: Connection;
  readonly #ch: Channel;
  readonly #login: LoginHalf;
  readonly #obs: SessionObserver;
  readonly #logger: Logger;
  readonly #client: ClientInfo;
  readonly #maxLine: number;
  #mail: MailHalf | undefined;

  constructor(conn: Connection, client: ClientInfo, ctx: LoginContext, store: MailStore, observer: SessionObserver) {
    this.#conn = conn;
    this.#client = client;
    this.#obs = observer;
    this.#logger = ctx.logger;
    this.#maxLine = ctx.settings.max_line_length;
    const ch = new Channel(conn, ctx.settings.max_bad_commands);
    this.#ch = ch;
    const login = new LoginHalf(ch, ctx, client, observer, (user) => handOff(user, store, deps, conn.signal));
    const deps: MailDeps = { channel: ch, settings: ctx.settings, logger: ctx.logger, observer, capabilities: () => login.capabilities(true) };
    this.#login = login;
  }

  /**
   * The server stops: a session waiting for a command is told so, one in the
   * middle of a reply is cut off. Neither enters UPDATE (RFC 1939 §6: only QUIT does).
   * `kicked`: the administrator ended it (`poplar kick`), the same way.
   */
  shutdown(why: 'server shutdown' | 'kicked' = 'server shutdown'): void {
    if (this.#ch.ended) return;
    const last = why === 'kicked' ? '-ERR Disconnected by the administrator.\r\n' : '-ERR [SYS/TEMP] Server shutting down.\r\n';
    if (this.#conn.awaitingInput) return this.#ch.close(why, last);
    this.#ch.abandon(why);
    this.#conn.destroy();
  }

  async run(): Promise<void> {
    const ch = this.#ch;
    if (this.#client.tls && this.#conn.tls !== null) this.#obs.tlsStarted?.(this.#conn.tls.protocol, this.#conn.tls.cipher);
    this.#login.greet();
    try {
      while (!ch.ended) {
        const ev = await this.#conn.nextLine();
        if (ev === null) break;
        if (this.#mail === undefined) this.#login.noteInput();
        if (ev.kind === 'overlong') {
          ch.badCommand('Line too long.');
          continue;
        }
        await this.#dispatch(ev.line);
        if (this.#conn.needsDrain && !(await this.#conn.drain())) break;
      }
    } catch (e) {
      this.#logger.error({ err: e, rip: this.#client.remoteAddress }, 'session failed');
      ch.abandon('internal error');
    } finally {
      await this.#finish();
    }
  }

  async #dispatch(lineBuf: Buffer): Promise<void> {
    const line = lineBuf.toString('utf8');
    const sp = line.indexOf(' ');
    const keyword = (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
    const args = sp === -1 ? '' : line.slice(sp + 1);
    if (keyword !== 'AUTH' && lineBuf.length + 2 > this.#maxLine) {
      this.#ch.badCommand('Line too long.');
      return;
    }
    const t0 = performance.now();
    const bytes0 = this.#conn.bytesOut;
    let name = keyword;
    const mail = this.#mail;
    try {
      if (mail !== undefined) {
        const h = TRANSACTION_COMMANDS.get(keyword);
        if (h === undefined) {
          if (!AUTHORIZATION_COMMANDS.has(keyword)) name = 'UNKNOWN';
          return this.#ch.badCommand(name === 'UNKNOWN' ? 'Unknown command.' : 'Already logged in.');
        }
        await h(mail, mail.state, args);
      } else {
        const login = this.#login;
        const h = AUTHORIZATION_COMMANDS.get(keyword);
        if (h === undefined) {
          if (!TRANSACTION_COMMANDS.has(keyword)) name = 'UNKNOWN';
          return this.#ch.badCommand(name === 'UNKNOWN' ? 'Unknown command.' : 'Not logged in.');
        }
        await h(login, login.state, args);
        this.#mail = login.takeMail();
      }
    } catch (e) {
      if (e instanceof Pop3Error) {
        this.#ch.err(e.message, e.code);
      } else if (e instanceof MailError) {
        this.#ch.err(e.message, respCodeFor(e.kind));
      } else {
        this.#logger.error({ err: e, rip: this.#client.remoteAddress, command: keyword }, 'command failed');
        this.#ch.err('Internal error, try again later.', 'SYS/TEMP');
      }
    } finally {
      this.#obs.command?.(name, performance.now() - t0, this.#conn.bytesOut - bytes0);
    }
  }

  async #finish(): Promise<void> {
    this.#login.dispose();
    if (!this.#conn.closed) this.#conn.end();
    // Every way out releases the lock; only QUIT ever removed anything.
    await this.#mail?.release();
    this.#obs.ended?.(this.#ch.endReason);
  }
}
