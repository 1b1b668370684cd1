/**
 * OAUTHBEARER (RFC 7628):
 * `n,a=user,\x01host=h\x01port=p\x01auth=Bearer T\x01\x01`.
 *
 * Channel binding is not supported, so `p=` fails; `a=` carries the user
 * and is required here (RFC 7628 makes it optional, but without it the
 * server would have to learn the user from the token). `host` and `port`
 * are accepted but not checked: behind proxies they rarely match. On a
 * refused token the server sends the `failureChallenge` JSON, the client
 * answers `\x01` (AQ==), and the exchange ends with `-ERR`.
 */
import { hasForbiddenControl, OneMessageServer, type ClientMechanism, type ServerStep } from './mechanism.js';
import { BEARER_TOKEN, decodeUtf8Strict, encodeSaslname, parseBearerAuth, parseGs2Header, parseKvPairs } from './syntax.js';

/** RFC 7628 §3.2.2 error: `status` is required; `scope` and `openid-configuration` are optional. */
export function oauthBearerFailureChallenge(extra: { readonly scope?: string; readonly 'openid-configuration'?: string } = {}): Buffer {
  return Buffer.from(JSON.stringify({ status: 'invalid_token', ...extra }), 'utf8');
}

export class OAuthBearerServer extends OneMessageServer {
  protected parse(response: Buffer): ServerStep {
    const text = decodeUtf8Strict(response);
    const gs2 = text === undefined ? undefined : parseGs2Header(text);
    if (gs2 === undefined) return fail('malformed gs2 header');
    if (gs2.flag === 'p') return fail('channel binding is not supported with OAUTHBEARER');
    const username = gs2.authzid;
    if (username === undefined || hasForbiddenControl(username) || Buffer.byteLength(username) > 255) {
      return fail('OAUTHBEARER needs a=user');
    }
    const kv = gs2.rest.startsWith('\x01') ? parseKvPairs(gs2.rest.slice(1)) : undefined;
    if (kv === undefined) return { kind: 'fail', reason: 'malformed OAUTHBEARER response', username };
    const auth = kv.get('auth');
    const token = auth === undefined ? undefined : parseBearerAuth(auth);
    if (token === undefined) return { kind: 'fail', reason: 'malformed auth', username };
    return { kind: 'credentials', credentials: { kind: 'bearer', username, token } };
  }
}

function fail(reason: string): ServerStep {
  return { kind: 'fail', reason };
}

export interface OAuthBearerClientOptions {
  readonly host?: string;
  readonly port?: number;
}

export class OAuthBearerClient implements ClientMechanism {
  readonly name = 'OAUTHBEARER';
  readonly #msg: Buffer;
  #sent = false;
  /** The server's JSON error, when it sent one. */
  serverError: string | undefined;

  constructor(username: string, token: string, options: OAuthBearerClientOptions = {}) {
    if (username === '' || hasForbiddenControl(username)) throw new RangeError('OAUTHBEARER: bad user name');
    if (!BEARER_TOKEN.test(token)) throw new RangeError('OAUTHBEARER: bad token');
    const host = options.host;
    if (host !== undefined && !/^[\x21-\x7e]+$/.test(host)) throw new RangeError('OAUTHBEARER: bad host');
    let kv = '';
    if (host !== undefined) kv += `host=${host}\x01`;
    if (options.port !== undefined) kv += `port=${options.port}\x01`;
    this.#msg = Buffer.from(`n,a=${encodeSaslname(username)},\x01${kv}auth=Bearer ${token}\x01\x01`, 'utf8');
  }
  initial(): Buffer {
    this.#sent = true;
    return this.#msg;
  }
  respond(challenge: Buffer): Buffer {
    if (!this.#sent) return this.initial();
    // RFC 7628 §3.2.3: acknowledge the error with a single kvsep.
    this.serverError = challenge.toString('utf8');
    return Buffer.from([1]);
  }
}
