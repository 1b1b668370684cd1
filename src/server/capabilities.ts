import type { ServerSettings } from './context.js';

export interface CapaView {
  readonly secure: boolean;
  readonly loggedIn: boolean;
  readonly plaintextAllowed: boolean;
  readonly stlsAvailable: boolean;
  readonly mechanisms: readonly string[];
}

/** RFC 2449 §5 capability lines (without the +OK line and the terminator). */
export function capabilityLines(s: ServerSettings, v: CapaView): string[] {
  const lines = ['TOP'];
  if (v.plaintextAllowed) lines.push('USER');
  if (v.mechanisms.length > 0) lines.push(`SASL ${v.mechanisms.join(' ')}`);
  lines.push('RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'UIDL');
  if (s.expire !== undefined) lines.push(`EXPIRE ${s.expire === 'NEVER' ? 'NEVER' : s.expire}`);
  if (s.login_delay !== undefined) lines.push(`LOGIN-DELAY ${s.login_delay}`);
  if (v.stlsAvailable && !v.secure && !v.loggedIn) lines.push('STLS');
  lines.push(`IMPLEMENTATION ${s.implementation}`);
  return lines;
}
