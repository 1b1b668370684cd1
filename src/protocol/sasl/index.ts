import { CramMd5Client, CramMd5Server } from './cram-md5.js';
import { ExternalClient, ExternalServer, externalAvailable } from './external.js';
import { LoginClient, LoginServer } from './login.js';
import type { ClientMechanism, SaslServerContext, ServerMechanism } from './mechanism.js';
import { OAuthBearerClient, OAuthBearerServer, oauthBearerFailureChallenge } from './oauthbearer.js';
import { PlainClient, PlainServer } from './plain.js';
import { ScramClient, ScramServer, scramPlusAvailable, type ChannelBindingType, type ScramAlgorithm } from './scram.js';
import { SCRAM_MAX_ITERATIONS, SCRAM_MIN_ITERATIONS } from '../../secrets/scram-keys.js';
import { XOAuth2Client, XOAuth2Server, xoauth2FailureChallenge } from './xoauth2.js';

export * from './mechanism.js';
export * from './plain.js';
export * from './login.js';
export * from './base64.js';
export * from './cram-md5.js';
export * from './scram.js';
export * from './xoauth2.js';
export * from './oauthbearer.js';
export * from './external.js';
export * from './apop.js';
export { saslPrep } from '../../secrets/saslprep.js';

export interface MechanismInfo {
  readonly name: string;
  /** Sends the password in the clear: needs TLS unless plaintext logins are allowed. */
  readonly plaintext: boolean;
  create(ctx: SaslServerContext): ServerMechanism;
  /**
   * For bearer-token mechanisms: the error challenge sent when the token is
   * refused (RFC 7628 §3.2.2); the client's answer is read, then `-ERR`.
   */
  readonly failureChallenge?: () => Buffer;
  /** Only offered when the connection can serve it (e.g. EXTERNAL needs a client certificate). */
  available?(ctx: SaslServerContext): boolean;
}

export interface SaslServerOptions {
  /**
   * Key for SCRAM salts of `{PLAIN}` users and of unknown users. Set it
   * (32 random bytes, kept secret) to keep those salts stable across
   * restarts; by default it is random per process.
   */
  readonly saltSecret?: Buffer;
  /** SCRAM iterations for `{PLAIN}` and unknown users (default 4096, minimum 4096). */
  readonly scramIterations?: number;
  /** Offer SCRAM-*-PLUS when the connection has binding data (default true). */
  readonly channelBinding?: boolean;
  /** `scope` in the bearer mechanisms' error JSON. */
  readonly oauthScope?: string;
  /** `openid-configuration` in OAUTHBEARER's error JSON (RFC 7628 §3.2.2). */
  readonly openidConfiguration?: string;
  /**
   * Only these mechanisms (case-insensitive; registry order is kept). Unknown
   * names throw a RangeError, so a configuration typo is caught at startup.
   * Default: all of them.
   */
  readonly enabled?: readonly string[];
}

/** Every mechanism name the server knows, in CAPA order. */
export const SERVER_MECHANISM_NAMES: readonly string[] = Object.freeze([
  'EXTERNAL',
  'SCRAM-SHA-256-PLUS',
  'SCRAM-SHA-1-PLUS',
  'SCRAM-SHA-256',
  'SCRAM-SHA-1',
  'CRAM-MD5',
  'OAUTHBEARER',
  'XOAUTH2',
  'PLAIN',
  'LOGIN',
]);

/**
 * A safe default to enable (like Dovecot's `auth_mechanisms = plain`): the
 * challenge-response mechanisms only work for users whose stored secret can
 * serve them ({PLAIN}-family, {CRAM-MD5}, {SCRAM-*}), and clients such as
 * curl pick CRAM-MD5 or SCRAM whenever offered, so offering them to users
 * with one-way hashes (ARGON2ID, SHA512-CRYPT) locks those users out.
 * EXTERNAL is only offered when a client certificate identified the peer.
 */
export const DEFAULT_ENABLED_MECHANISMS: readonly string[] = Object.freeze(['EXTERNAL', 'PLAIN', 'LOGIN']);

/**
 * The server's mechanisms, in CAPA order: strongest first. PLAIN and LOGIN
 * stay last so clients that take the first one they know prefer the others.
 */
export function serverMechanisms(options: SaslServerOptions = {}): readonly MechanismInfo[] {
  const cb = options.channelBinding ?? true;
  const it = options.scramIterations;
  if (it !== undefined && (!Number.isInteger(it) || it < SCRAM_MIN_ITERATIONS || it > SCRAM_MAX_ITERATIONS)) {
    throw new RangeError(`SCRAM iterations must be an integer in ${SCRAM_MIN_ITERATIONS}..${SCRAM_MAX_ITERATIONS}`);
  }
  const scram = (algorithm: ScramAlgorithm, plus: boolean): MechanismInfo => ({
    name: `SCRAM-${algorithm}${plus ? '-PLUS' : ''}`,
    plaintext: false,
    create: (ctx) =>
      new ScramServer(ctx, {
        algorithm,
        plus,
        plusAdvertised: cb && scramPlusAvailable(ctx),
        ...(options.saltSecret !== undefined ? { saltSecret: options.saltSecret } : {}),
        ...(options.scramIterations !== undefined ? { iterations: options.scramIterations } : {}),
      }),
    ...(plus ? { available: scramPlusAvailable } : {}),
  });
  const scope = options.oauthScope !== undefined ? { scope: options.oauthScope } : {};
  const openid = options.openidConfiguration !== undefined ? { 'openid-configuration': options.openidConfiguration } : {};
  const all: MechanismInfo[] = [
    { name: 'EXTERNAL', plaintext: false, create: (ctx) => new ExternalServer(ctx), available: externalAvailable },
    ...(cb ? [scram('SHA-256', true), scram('SHA-1', true)] : []),
    scram('SHA-256', false),
    scram('SHA-1', false),
    { name: 'CRAM-MD5', plaintext: false, create: (ctx) => new CramMd5Server(ctx) },
    {
      name: 'OAUTHBEARER',
      plaintext: true,
      create: () => new OAuthBearerServer(),
      failureChallenge: () => oauthBearerFailureChallenge({ ...scope, ...openid }),
    },
    { name: 'XOAUTH2', plaintext: true, create: () => new XOAuth2Server(), failureChallenge: () => xoauth2FailureChallenge(options.oauthScope) },
    { name: 'PLAIN', plaintext: true, create: () => new PlainServer() },
    { name: 'LOGIN', plaintext: true, create: () => new LoginServer() },
  ];
  if (options.enabled === undefined) return Object.freeze(all);
  const wanted = new Set(options.enabled.map((n) => n.toUpperCase()));
  for (const n of wanted) if (!SERVER_MECHANISM_NAMES.includes(n)) throw new RangeError(`unknown SASL mechanism ${n}`);
  return Object.freeze(all.filter((m) => wanted.has(m.name)));
}

export const SERVER_MECHANISMS: readonly MechanismInfo[] = serverMechanisms();

// ---------------------------------------------------------------------------
// client side

export interface ClientMechanismOptions {
  readonly username?: string;
  readonly password?: string;
  /** OAuth 2.0 access token for XOAUTH2 / OAUTHBEARER. */
  readonly token?: string;
  readonly authzid?: string;
  /** The TLS connection's binding data: required for -PLUS, makes plain SCRAM send `y`. */
  readonly channelBinding?: { readonly type: ChannelBindingType; readonly data: Buffer };
  /** OAUTHBEARER's host and port. */
  readonly host?: string;
  readonly port?: number;
}

/** Mechanisms clientMechanism() knows, in the order a client should prefer them. */
export const CLIENT_MECHANISMS: readonly string[] = Object.freeze([
  'EXTERNAL',
  'SCRAM-SHA-256-PLUS',
  'SCRAM-SHA-1-PLUS',
  'SCRAM-SHA-256',
  'SCRAM-SHA-1',
  'OAUTHBEARER',
  'XOAUTH2',
  'PLAIN',
  'LOGIN',
  'CRAM-MD5',
]);

function need(value: string | undefined, what: string, mech: string): string {
  if (value === undefined) throw new TypeError(`${mech} needs a ${what}`);
  return value;
}

/** The client half of `name` (case-insensitive). Throws TypeError for an unknown mechanism or missing options. */
export function clientMechanism(name: string, o: ClientMechanismOptions): ClientMechanism {
  const mech = name.toUpperCase();
  const user = (): string => need(o.username, 'username', mech);
  const pass = (): string => need(o.password, 'password', mech);
  const token = (): string => need(o.token, 'token', mech);
  const scram = /^SCRAM-(SHA-1|SHA-256)(-PLUS)?$/.exec(mech);
  if (scram) {
    return new ScramClient({
      algorithm: scram[1] === 'SHA-1' ? 'SHA-1' : 'SHA-256',
      plus: scram[2] !== undefined,
      username: user(),
      password: pass(),
      ...(o.authzid !== undefined ? { authzid: o.authzid } : {}),
      ...(o.channelBinding !== undefined ? { channelBinding: o.channelBinding } : {}),
    });
  }
  switch (mech) {
    case 'PLAIN':
      return new PlainClient(user(), pass(), o.authzid ?? '');
    case 'LOGIN':
      return new LoginClient(user(), pass());
    case 'CRAM-MD5':
      return new CramMd5Client(user(), pass());
    case 'XOAUTH2':
      return new XOAuth2Client(user(), token());
    case 'OAUTHBEARER':
      return new OAuthBearerClient(user(), token(), {
        ...(o.host !== undefined ? { host: o.host } : {}),
        ...(o.port !== undefined ? { port: o.port } : {}),
      });
    case 'EXTERNAL':
      return new ExternalClient(o.authzid ?? '');
    default:
      throw new TypeError(`unsupported SASL mechanism ${name}`);
  }
}
