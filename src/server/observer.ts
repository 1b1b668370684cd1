import type { ClientInfo } from './client-info.js';

/** Why a login attempt did not end in TRANSACTION. */
export type LoginFailure =
  /** Wrong password, unknown user, a name no user can have, a refused SASL exchange. */
  | { readonly reason: 'credentials' }
  /** Refused unseen: too many failures from this client or for this user. */
  | { readonly reason: 'blocked' }
  /** RFC 2449 §6.5: the user logged in less than LOGIN-DELAY seconds ago. */
  | { readonly reason: 'login-delay'; readonly wait: number }
  /** The credentials were right but the maildrop was not opened (locked: an InUseError, or a store failure). */
  | { readonly reason: 'maildrop'; readonly error: unknown }
  /** The authenticator failed (not a wrong password). */
  | { readonly reason: 'backend'; readonly error: unknown };

export const CREDENTIALS: LoginFailure = Object.freeze({ reason: 'credentials' });
export const BLOCKED: LoginFailure = Object.freeze({ reason: 'blocked' });

/**
 * What happens in one session, told as it happens. Every method is optional;
 * none may throw or wait (they run inside the command loop).
 */
export interface SessionObserver {
  /** TLS is on: at once on an implicit-TLS port, after the handshake for STLS. */
  tlsStarted?(protocol: string, cipher: string): void;
  /** The STLS handshake failed (the connection is dropped). */
  tlsFailed?(): void;
  loginSucceeded?(user: string, mechanism: string, messages: number): void;
  /** `user` is undefined when the attempt never named one. */
  loginFailed?(user: string | undefined, mechanism: string, failure: LoginFailure): void;
  /** A failed login is answered after this wait (the failure throttle's delay, or the least decision time). */
  failureDelayed?(ms: number): void;
  /** How long opening (locking and listing) the maildrop took, and how it ended ('in-use': [IN-USE]). */
  maildropOpened?(user: string, ms: number, outcome: 'opened' | 'in-use' | 'failed'): void;
  /**
   * One command line answered: its keyword (UNKNOWN for one no state knows),
   * the time to answer it and the bytes written for it.
   */
  command?(name: string, ms: number, bytesOut: number): void;
  /** A message (RETR) or its top (TOP) went out: the bytes of the dot-stuffed body. */
  messageSent?(command: 'RETR' | 'TOP', bytes: number): void;
  /** DELE or RSET: how many messages are now marked for deletion. */
  deletionsMarked?(count: number): void;
  /** QUIT in TRANSACTION: the UPDATE state begins. */
  updateStarted?(): void;
  /** UPDATE removed this many messages. */
  updated?(expunged: number): void;
  /** UPDATE failed: nothing was removed, the client got -ERR. */
  updateFailed?(error: unknown): void;
  /** The session is over (`reason`: QUIT, idle timeout, server shutdown, ...). */
  ended?(reason: string): void;
}

/** What an observer may read from, or do to, the session it watches (admin `who` and `kick`). */
export interface SessionControl {
  /** Octets received from the client so far (after TLS decryption). */
  readonly bytesIn: number;
  /** Octets written to the client so far. */
  readonly bytesOut: number;
  /** End the session without UPDATE, as a server shutdown does: nothing marked is removed. */
  kick(): void;
}

/** Attached to a server: told of each new connection, it returns the observer for that session. */
export interface ServerObserver {
  connected(client: ClientInfo, control: SessionControl): SessionObserver;
  /** An implicit-TLS handshake failed before any session began. */
  handshakeFailed?(client: ClientInfo): void;
  /** A connection was refused by a connection limit before any session began. */
  refused?(client: ClientInfo, limit: 'total' | 'per-ip'): void;
}

/** Several observers as one: each event goes to each, in order. */
export function fanOut(observers: readonly ServerObserver[]): ServerObserver {
  if (observers.length === 1) return observers[0]!;
  return {
    connected: (client, control) => new FanOutSession(observers.map((o) => o.connected(client, control))),
    handshakeFailed: (client) => {
      for (const o of observers) o.handshakeFailed?.(client);
    },
    refused: (client, limit) => {
      for (const o of observers) o.refused?.(client, limit);
    },
  };
}

class FanOutSession implements Required<SessionObserver> {
  readonly #all: readonly SessionObserver[];
  constructor(all: readonly SessionObserver[]) {
    this.#all = all;
  }
  tlsStarted(protocol: string, cipher: string): void {
    for (const o of this.#all) o.tlsStarted?.(protocol, cipher);
  }
  tlsFailed(): void {
    for (const o of this.#all) o.tlsFailed?.();
  }
  failureDelayed(ms: number): void {
    for (const o of this.#all) o.failureDelayed?.(ms);
  }
  updateStarted(): void {
    for (const o of this.#all) o.updateStarted?.();
  }
  updateFailed(error: unknown): void {
    for (const o of this.#all) o.updateFailed?.(error);
  }
  loginSucceeded(user: string, mechanism: string, messages: number): void {
    for (const o of this.#all) o.loginSucceeded?.(user, mechanism, messages);
  }
  loginFailed(user: string | undefined, mechanism: string, failure: LoginFailure): void {
    for (const o of this.#all) o.loginFailed?.(user, mechanism, failure);
  }
  maildropOpened(user: string, ms: number, outcome: 'opened' | 'in-use' | 'failed'): void {
    for (const o of this.#all) o.maildropOpened?.(user, ms, outcome);
  }
  command(name: string, ms: number, bytesOut: number): void {
    for (const o of this.#all) o.command?.(name, ms, bytesOut);
  }
  messageSent(command: 'RETR' | 'TOP', bytes: number): void {
    for (const o of this.#all) o.messageSent?.(command, bytes);
  }
  deletionsMarked(count: number): void {
    for (const o of this.#all) o.deletionsMarked?.(count);
  }
  updated(expunged: number): void {
    for (const o of this.#all) o.updated?.(expunged);
  }
  ended(reason: string): void {
    for (const o of this.#all) o.ended?.(reason);
  }
}
