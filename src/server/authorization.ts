import type { Credentials } from '../auth/types.js';
import { decodeBase64Strict } from '../protocol/sasl/base64.js';
import { hasForbiddenControl } from '../protocol/sasl/mechanism.js';
import { verifyApop, type MechanismInfo, type SaslServerContext } from '../protocol/sasl/index.js';
import { usernameSyntaxProblem } from '../auth/username.js';
import type { Reply } from './channel.js';
import type { ServerSettings } from './context.js';

/** AUTHORIZATION state (RFC 1939 §4). Deliberately holds no maildrop: storage is out of reach before login. */
export class AuthorizationState {
  /** Name from a successful USER, waiting for PASS. */
  pendingUser: string | undefined;
}

/**
 * What an AUTHORIZATION command handler may use. The login half (login.ts)
 * provides it; nothing here reaches a store.
 */
export interface LoginPort extends Reply {
  readonly settings: ServerSettings;
  /** TLS is on (implicit, or after STLS). */
  readonly secure: boolean;
  /** STLS could be offered (a certificate is configured). */
  readonly tlsAvailable: boolean;
  /** RFC 2595 §4: cleartext passwords only over TLS, from loopback, or when configured. */
  readonly plaintextAllowed: boolean;
  /** The `<...>` msg-id of the greeting when APOP is enabled. */
  readonly apopTimestamp: string | undefined;
  capabilities(): string[];
  /** Names of the SASL mechanisms on offer on this connection. */
  mechanisms(): string[];
  /** A configured mechanism by name (offered here or not). */
  mechanism(name: string): MechanismInfo | undefined;
  saslContext(): SaslServerContext;
  /** The STLS handshake (after the +OK); false when it failed. */
  startTls(): Promise<boolean>;
  /** Send `+ base64` and read the client's line: null when the exchange is over (answered already). */
  challenge(data: Buffer): Promise<Buffer | null>;
  /** Verify credentials, then hand off to the mail half; failures are answered. */
  login(credentials: Credentials, mechanism: string, failureChallenge?: () => Buffer): Promise<void>;
  /** A mechanism that verified the user itself: the user database still decides, then the hand-off. */
  loginVerified(username: string, mechanism: string): Promise<void>;
  /** Log, wait the failure delay, answer `-ERR [AUTH]`. */
  authFailed(username: string | undefined, mechanism: string, why?: 'blocked'): Promise<void>;
  isBlocked(username: string): Promise<boolean>;
  /** The stored secret of a user (APOP); throws when the backend fails. */
  lookupSecret(username: string): Promise<string | undefined>;
  /** The authenticator failed: logged, answered `[SYS/TEMP]` (unless the client is gone). */
  backendFailed(e: unknown, mechanism: string): void;
}

export type LoginHandler = (s: LoginPort, state: AuthorizationState, args: string) => Promise<void>;

const PLAINTEXT_REFUSED = 'Cleartext logins are not allowed without TLS; use STLS or port 995.';

async function capa(s: LoginPort): Promise<void> {
  await s.multiline('Capability list follows', s.capabilities());
}

async function user(s: LoginPort, st: AuthorizationState, args: string): Promise<void> {
  st.pendingUser = undefined;
  // No [AUTH] here: USER checks no credential (RFC 3206 §5).
  if (!s.plaintextAllowed) return s.err(PLAINTEXT_REFUSED);
  if (usernameSyntaxProblem(args) !== undefined) return s.badCommand('Invalid user name.');
  st.pendingUser = args;
  s.ok();
}

async function pass(s: LoginPort, st: AuthorizationState, args: string): Promise<void> {
  const name = st.pendingUser;
  st.pendingUser = undefined; // PASS must directly follow USER (RFC 1939 §7)
  if (name === undefined) return s.badCommand('No user name given; send USER first.');
  if (!s.plaintextAllowed) return s.err(PLAINTEXT_REFUSED, 'AUTH');
  // The rest of the line, spaces included, is the password.
  await s.login({ kind: 'password', username: name, password: args }, 'USER');
}

async function quit(s: LoginPort): Promise<void> {
  s.close('QUIT', '+OK Logging out.\r\n');
}

async function stls(s: LoginPort, st: AuthorizationState, args: string): Promise<void> {
  // Nothing from before TLS carries over (RFC 2595 §4): a plaintext USER (maybe injected) must not pair with a PASS sent under TLS.
  st.pendingUser = undefined;
  if (args !== '') return s.badCommand('STLS takes no arguments.');
  if (s.secure) return s.badCommand('TLS is already active.');
  if (!s.tlsAvailable) return s.badCommand('TLS is not available.');
  s.ok('Begin TLS negotiation now.');
  if (!(await s.startTls())) s.close('TLS handshake failed');
}

/** RFC 5034: `AUTH mech [initial-response]`; bare `AUTH` lists the mechanisms (the RFC 1734 habit clients still use). */
async function auth(s: LoginPort, _st: AuthorizationState, args: string): Promise<void> {
  const parts = args.split(' ');
  const name = (parts[0] ?? '').toUpperCase();
  if (name === '') {
    await s.multiline('Supported mechanisms follow', s.mechanisms());
    return;
  }
  if (Buffer.byteLength(args) + 7 > s.settings.max_auth_line_length || parts.length > 2) return s.badCommand('Invalid AUTH command.');
  const info = s.mechanism(name);
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
          if (await s.isBlocked(step.username)) return s.authFailed(step.username, name, 'blocked');
          // RFC 5034 §4: additional data with success goes in a challenge; the client answers empty.
          const answer = await s.challenge(step.final);
          if (answer === null) return;
          if (answer.length !== 0) return s.authFailed(step.username, name);
        }
        return s.loginVerified(step.username, name);
      case 'fail':
        if (step.temporary) return s.err('Authentication is temporarily unavailable.', 'SYS/TEMP');
        return s.authFailed(step.username, name);
      case 'challenge': {
        if (exchanges >= 10) return s.err('Too many authentication steps.');
        const answer = await s.challenge(step.data);
        if (answer === null) return;
        response = answer;
      }
    }
  }
}

/** RFC 1939 §7 APOP, only when enabled (then the greeting carries the timestamp). */
async function apop(s: LoginPort, _st: AuthorizationState, args: string): Promise<void> {
  const timestamp = s.apopTimestamp;
  if (timestamp === undefined) return s.badCommand('Unknown command.');
  const parts = args.split(' ');
  const [name, digest] = parts;
  if (parts.length !== 2 || name === undefined || digest === undefined || name === '' || hasForbiddenControl(name) || !/^[0-9a-fA-F]{32}$/.test(digest)) {
    return s.badCommand('Usage: APOP name digest');
  }
  let secret: string | undefined;
  try {
    secret = await s.lookupSecret(name);
  } catch (e) {
    return s.backendFailed(e, 'APOP');
  }
  // verifyApop does the same work for unknown users and for secrets that cannot serve APOP.
  if (!verifyApop(timestamp, digest.toLowerCase(), secret)) return s.authFailed(name, 'APOP');
  await s.loginVerified(name, 'APOP');
}

export const AUTHORIZATION_COMMANDS: ReadonlyMap<string, LoginHandler> = new Map<string, LoginHandler>([
  ['CAPA', capa],
  ['USER', user],
  ['PASS', pass],
  ['AUTH', auth],
  ['STLS', stls],
  ['QUIT', quit],
  ['APOP', apop],
]);
