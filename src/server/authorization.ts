import { decodeBase64Strict, encodeBase64 } from '../protocol/sasl/base64.js';
import { hasForbiddenControl } from '../protocol/sasl/mechanism.js';
import { verifyApop } from '../protocol/sasl/index.js';
import { usernameSyntaxProblem } from '../auth/username.js';
import type { AuthorizationState, Handler, Session } from './session.js';

const PLAINTEXT_REFUSED = 'Cleartext logins are not allowed without TLS; use STLS or port 995.';

async function capa(s: Session): Promise<void> {
  await s.multiline('Capability list follows', s.capabilities());
}

async function user(s: Session, st: AuthorizationState, args: string): Promise<void> {
  st.pendingUser = undefined;
  // No [AUTH] here: USER checks no credential (RFC 3206, checklist 28).
  if (!s.plaintextAllowed) return s.err(PLAINTEXT_REFUSED);
  if (usernameSyntaxProblem(args) !== undefined) return s.badCommand('Invalid user name.');
  st.pendingUser = args;
  s.ok();
}

async function pass(s: Session, st: AuthorizationState, args: string): Promise<void> {
  const name = st.pendingUser;
  st.pendingUser = undefined; // PASS must directly follow USER (RFC 1939 §7)
  if (name === undefined) return s.badCommand('No user name given; send USER first.');
  if (!s.plaintextAllowed) return s.err(PLAINTEXT_REFUSED, 'AUTH');
  // The rest of the line, spaces included, is the password.
  await s.login({ kind: 'password', username: name, password: args }, 'USER');
}

async function quit(s: Session): Promise<void> {
  s.close('QUIT', '+OK Logging out.\r\n');
}

async function stls(s: Session, st: AuthorizationState, args: string): Promise<void> {
  // Nothing from before TLS carries over (RFC 2595 §4): a plaintext USER (maybe injected) must not pair with a PASS sent under TLS.
  st.pendingUser = undefined;
  if (args !== '') return s.badCommand('STLS takes no arguments.');
  const ctx = s.ctx.tlsContext();
  if (s.conn.secure) return s.badCommand('TLS is already active.');
  if (ctx === null) return s.badCommand('TLS is not available.');
  s.ok('Begin TLS negotiation now.');
  const ok = await s.conn.startTls(ctx, Math.max(1, s.ctx.settings.login_timeout) * 1000, s.ctx.requestClientCertificate());
  if (!ok) s.close('TLS handshake failed');
}

/** RFC 5034: `AUTH mech [initial-response]`; bare `AUTH` lists the mechanisms (the RFC 1734 habit clients still use). */
async function auth(s: Session, _st: AuthorizationState, args: string): Promise<void> {
  const parts = args.split(' ');
  const name = (parts[0] ?? '').toUpperCase();
  if (name === '') {
    await s.multiline('Supported mechanisms follow', s.mechanisms());
    return;
  }
  if (Buffer.byteLength(args) + 7 > s.ctx.settings.max_auth_line_length || parts.length > 2) return s.badCommand('Invalid AUTH command.');
  const info = s.ctx.mechanisms.find((m) => m.name === name);
  if (info === undefined || !s.mechanisms().includes(info.name)) {
    if (info?.plaintext && !s.plaintextAllowed) return s.err(PLAINTEXT_REFUSED, 'AUTH');
    return s.err('Unsupported authentication mechanism.');
  }
  const mech = info.create(s.saslContext());
  let response: Buffer | null = null;
  const ir = parts[1];
  if (ir !== undefined) {
    response = ir === '=' ? Buffer.alloc(0) : decodeBase64Strict(ir);
    if (response === null) return s.err('Invalid base64 data in initial response.');
  }
  for (let exchanges = 0; ; exchanges++) {
    const step = await mech.step(response);
    switch (step.kind) {
      case 'credentials':
        return s.login(step.credentials, name, info.failureChallenge);
      case 'authenticated':
        if (step.final !== undefined) {
          // A blocked client must not get SCRAM's proof (`v=`): it would tell a right guess from a wrong one.
          if (await s.ctx.throttle.isBlocked(s.conn.remoteAddress, step.username)) return s.authFailed(step.username, name, 'blocked');
          // RFC 5034 §4: additional data with success goes in a challenge; the client answers empty.
          const answer = await readResponse(s, step.final);
          if (answer === null) return;
          if (answer.length !== 0) return s.authFailed(step.username, name);
        }
        return s.loginVerified(step.username, name);
      case 'fail':
        if (step.temporary) return s.err('Authentication is temporarily unavailable.', 'SYS/TEMP');
        return s.authFailed(step.username, name);
      case 'challenge': {
        if (exchanges >= 10) return s.err('Too many authentication steps.');
        const answer = await readResponse(s, step.data);
        if (answer === null) return;
        response = answer;
      }
    }
  }
}

/**
 * Send `+ base64` and read the client's line. Null when the exchange is over:
 * the client cancelled with `*`, sent bad base64, an over-long line, or left.
 */
export async function readResponse(s: Session, challenge: Buffer): Promise<Buffer | null> {
  s.conn.write(challenge.length === 0 ? '+ \r\n' : `+ ${encodeBase64(challenge)}\r\n`);
  const ev = await s.conn.nextLine();
  if (ev === null) return null;
  s.noteInput();
  if (ev.kind === 'overlong' || ev.line.length + 2 > s.ctx.settings.max_auth_line_length) {
    s.err('Authentication response too long.');
    return null;
  }
  const text = ev.line.toString('latin1');
  if (text === '*') {
    s.err('Authentication cancelled.');
    return null;
  }
  const decoded = decodeBase64Strict(text);
  if (decoded === null) s.err('Invalid base64 data in response.');
  return decoded;
}

/** RFC 1939 §7 APOP, only when enabled (then the greeting carries the timestamp). */
async function apop(s: Session, _st: AuthorizationState, args: string): Promise<void> {
  const timestamp = s.apopTimestamp;
  if (timestamp === undefined) return s.badCommand('Unknown command.');
  const parts = args.split(' ');
  const [name, digest] = parts;
  if (parts.length !== 2 || name === undefined || digest === undefined || name === '' || hasForbiddenControl(name) || !/^[0-9a-fA-F]{32}$/.test(digest)) {
    return s.badCommand('Usage: APOP name digest');
  }
  let secret: string | undefined;
  try {
    secret = await s.ctx.authenticator.lookupSecret?.(name, s.conn.signal);
  } catch (e) {
    if (s.conn.closed) return;
    s.ctx.logger.error({ err: e, rip: s.conn.remoteAddress, mech: 'APOP' }, 'authentication backend failed');
    return s.err('Authentication is temporarily unavailable.', 'SYS/TEMP');
  }
  // verifyApop does the same work for unknown users and for secrets that cannot serve APOP.
  if (!verifyApop(timestamp, digest.toLowerCase(), secret)) return s.authFailed(name, 'APOP');
  await s.loginVerified(name, 'APOP');
}

export const AUTHORIZATION_COMMANDS: ReadonlyMap<string, Handler<AuthorizationState>> = new Map<string, Handler<AuthorizationState>>([
  ['CAPA', capa],
  ['USER', user],
  ['PASS', pass],
  ['AUTH', auth],
  ['STLS', stls],
  ['QUIT', quit],
  ['APOP', apop],
]);
