import type { Credentials } from '../../auth/types.js';

/** What a server mechanism may ask of the server around it. */
export interface SaslServerContext {
  /**
   * The stored secret of a user (`{SCHEME}...` as in the passwd-file), for
   * mechanisms that verify themselves (CRAM-MD5, SCRAM). Undefined for an
   * unknown user; the mechanism must then fail in a way that looks the same.
   */
  lookupSecret(username: string): Promise<string | undefined>;
  /** TLS channel-binding data (RFC 5929 tls-unique, RFC 9266 tls-exporter), or undefined when not available. */
  channelBinding(type: 'tls-unique' | 'tls-exporter'): Buffer | undefined;
  /** The binding type this connection offers for -PLUS mechanisms: tls-exporter on TLS 1.3, tls-unique on TLS 1.2. */
  readonly channelBindingType: 'tls-unique' | 'tls-exporter' | undefined;
  /** Host name for challenges (CRAM-MD5) and OAUTHBEARER's host check. */
  readonly hostname: string;
  /** Identity from a verified TLS client certificate (EXTERNAL), if any. */
  readonly certificateIdentity: string | undefined;
}

/**
 * Server half of a SASL mechanism (RFC 4422). The session owns the wire
 * (RFC 5034: `+ base64` challenges, `*` cancel, `=` empty initial response);
 * the mechanism turns client responses into challenges and finally into
 * either credentials for the Authenticator, or a user it verified itself.
 */
export type ServerStep =
  | { readonly kind: 'challenge'; readonly data: Buffer }
  /** Verify these with the Authenticator (PLAIN, LOGIN, XOAUTH2, OAUTHBEARER). */
  | { readonly kind: 'credentials'; readonly credentials: Credentials }
  /**
   * The mechanism verified the user itself (CRAM-MD5, SCRAM, EXTERNAL).
   * `final` (SCRAM's `v=`) is sent as a `+ ` challenge before `+OK` (RFC 5034 §4).
   */
  | { readonly kind: 'authenticated'; readonly username: string; readonly final?: Buffer }
  | { readonly kind: 'fail'; readonly reason: string; readonly username?: string; readonly temporary?: boolean };

export interface ServerMechanism {
  /** `response` is null when the client sent no initial response. */
  step(response: Buffer | null): Promise<ServerStep>;
}

/** Client half: produces responses to the server's challenges. */
export interface ClientMechanism {
  readonly name: string;
  /** The initial response, or null when the mechanism waits for a challenge first. */
  initial(): Buffer | null;
  /** Answer a challenge; may throw when the server's challenge is invalid (e.g. a wrong SCRAM signature). */
  respond(challenge: Buffer): Buffer;
}

/** CR, LF and NUL never belong in an identity or a password: on a command line they would end it or cut it short. */
export function hasForbiddenControl(s: string): boolean {
  return /[\r\n\0]/.test(s);
}

/**
 * A server mechanism that takes exactly one client message: as the initial
 * response, or after one empty challenge. Subclasses only parse that message.
 */
export abstract class OneMessageServer implements ServerMechanism {
  #state: 'start' | 'asked' | 'done' = 'start';

  async step(response: Buffer | null): Promise<ServerStep> {
    if (response === null) {
      if (this.#state !== 'start') return this.#fail('no response');
      this.#state = 'asked';
      return { kind: 'challenge', data: Buffer.alloc(0) };
    }
    if (this.#state === 'done') return this.#fail('exchange already finished');
    this.#state = 'done';
    return this.parse(response);
  }

  protected abstract parse(message: Buffer): ServerStep;

  #fail(reason: string): ServerStep {
    this.#state = 'done';
    return { kind: 'fail', reason };
  }
}
