import type { Credentials } from '../../auth/types.js';

/**
 * Server half of a SASL mechanism (RFC 4422). The session owns the wire
 * (RFC 5034: `+ base64` challenges, `*` cancel, `=` empty initial response);
 * the mechanism only turns client responses into challenges and finally into
 * credentials to verify.
 */
export type ServerStep =
  | { readonly kind: 'challenge'; readonly data: Buffer }
  | { readonly kind: 'credentials'; readonly credentials: Credentials }
  | { readonly kind: 'fail'; readonly reason: string };

export interface ServerMechanism {
  /** `response` is null when the client sent no initial response. */
  step(response: Buffer | null): ServerStep;
}

/** Client half: produces responses to the server's challenges. */
export interface ClientMechanism {
  readonly name: string;
  /** The initial response, or null when the mechanism waits for a challenge first. */
  initial(): Buffer | null;
  respond(challenge: Buffer): Buffer;
}

/** CR, LF and NUL never belong in an identity or a password (checklist: CR/LF/NUL in user names). */
export function hasForbiddenControl(s: string): boolean {
  return /[\r\n\0]/.test(s);
}
