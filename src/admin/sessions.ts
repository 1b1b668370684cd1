import type { ClientInfo } from '../server/client-info.js';
import type { ServerObserver, SessionControl, SessionObserver } from '../server/observer.js';

/** One open session as `poplar who` shows it. */
export interface SessionRow {
  /** Unique within its process. */
  readonly id: number;
  /** The process that runs it. */
  readonly pid: number;
  /** Undefined until a login succeeded. */
  readonly user: string | undefined;
  readonly address: string;
  readonly port: number;
  /** ISO 8601 time of the connection. */
  readonly since: string;
  readonly state: 'AUTHORIZATION' | 'TRANSACTION' | 'UPDATE';
  readonly tls: boolean;
  readonly bytesIn: number;
  readonly bytesOut: number;
}

interface Entry {
  readonly id: number;
  readonly client: ClientInfo;
  readonly since: Date;
  readonly control: SessionControl;
  user: string | undefined;
  state: SessionRow['state'];
  tls: boolean;
}

/**
 * The sessions of this process, kept from the observer's events: who is
 * logged in, from where, since when, in which state; and a way to end a
 * user's sessions (kick: no UPDATE, so nothing marked is removed).
 */
export class SessionTable {
  readonly #open = new Map<number, Entry>();
  #next = 1;

  observer(): ServerObserver {
    return {
      connected: (client, control) => {
        const e: Entry = { id: this.#next++, client, since: new Date(), control, user: undefined, state: 'AUTHORIZATION', tls: client.tls };
        this.#open.set(e.id, e);
        return new TableSession(e, () => this.#open.delete(e.id));
      },
    };
  }

  list(): SessionRow[] {
    return [...this.#open.values()].map((e) => ({
      id: e.id,
      pid: process.pid,
      user: e.user,
      address: e.client.remoteAddress,
      port: e.client.remotePort,
      since: e.since.toISOString(),
      state: e.state,
      tls: e.tls,
      bytesIn: e.control.bytesIn,
      bytesOut: e.control.bytesOut,
    }));
  }

  /** End every session logged in as `user`; the number ended. */
  kick(user: string): number {
    let n = 0;
    for (const e of [...this.#open.values()]) {
      if (e.user !== user) continue;
      e.control.kick();
      n++;
    }
    return n;
  }
}

class TableSession implements SessionObserver {
  readonly #e: Entry;
  readonly #gone: () => void;
  constructor(e: Entry, gone: () => void) {
    this.#e = e;
    this.#gone = gone;
  }
  tlsStarted(): void {
    this.#e.tls = true;
  }
  loginSucceeded(user: string): void {
    this.#e.user = user;
    this.#e.state = 'TRANSACTION';
  }
  updateStarted(): void {
    this.#e.state = 'UPDATE';
  }
  ended(): void {
    this.#gone();
  }
}
