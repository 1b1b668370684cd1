/**
 * What a user name may be, wherever one is accepted: `poplar user add`, the
 * passwd-file and PostgreSQL backends, USER, and every SASL mechanism. One
 * definition, so a user that can be created can also log in.
 */

/** The longest user name, in octets of UTF-8 (RFC 4616 §2: a SASL PLAIN field holds at most 255 octets). */
export const MAX_USERNAME_OCTETS = 255;

const CONTROL = /[\u0000-\u001f\u007f]/;

/** Why `name` cannot be a user name anywhere, or undefined when it can. */
export function usernameSyntaxProblem(name: string): string | undefined {
  if (name === '') return 'user name is empty';
  if (Buffer.byteLength(name, 'utf8') > MAX_USERNAME_OCTETS) return `user name is longer than ${MAX_USERNAME_OCTETS} octets`;
  if (CONTROL.test(name)) return 'user name contains a control character';
  return undefined;
}
