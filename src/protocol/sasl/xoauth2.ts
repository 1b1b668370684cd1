/**
 * XOAUTH2, Google's bearer-token mechanism:
 * `user=U \x01 auth=Bearer T \x01 \x01` (one round, usually the initial response).
 *
 * The server hands the token to the Authenticator as bearer credentials. A
 * refused token is answered with a JSON error challenge (the registry's
 * `failureChallenge`), the client answers with an empty line, then `-ERR`.
 * Google sends `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`;
 * clients do not interpret the JSON beyond showing it, so Poplar sends the
 * generic `{"status":"401","schemes":"bearer"}` (plus `scope` when configured).
 */
import { hasForbiddenControl, OneMessageServer, type ClientMechanism, type ServerStep } from './mechanism.js';
import { BEARER_TOKEN, decodeUtf8Strict, parseBearerAuth, parseKvPairs } from './syntax.js';

export function xoauth2FailureChallenge(scope?: string): Buffer {
  return Buffer.from(JSON.stringify({ status: '401', schemes: 'bearer', ...(scope !== undefined ? { scope } : {}) }), 'utf8');
}

export class XOAuth2Server extends OneMessageServer {
  protected parse(response: Buffer): ServerStep {
    const text = decodeUtf8Strict(response);
    const kv = text === undefined ? undefined : parseKvPairs(text);
    if (kv === undefined) return fail('malformed XOAUTH2 response');
    const username = kv.get('user');
    const auth = kv.get('auth');
    if (username === undefined || username === '' || hasForbiddenControl(username) || Buffer.byteLength(username) > 255) {
      return fail('bad user');
    }
    const token = auth === undefined ? undefined : parseBearerAuth(auth);
    if (token === undefined) return { kind: 'fail', reason: 'malformed auth', username };
    return { kind: 'credentials', credentials: { kind: 'bearer', username, token } };
  }
}

function fail(reason: string): ServerStep {
  return { kind: 'fail', reason };
}

export class XOAuth2Client implements ClientMechanism {
  readonly name = 'XOAUTH2';
  readonly #msg: Buffer;
  #sent = false;
  /** The server's JSON error, when it sent one. */
  serverError: string | undefined;

  constructor(username: string, token: string) {
    if (hasForbiddenControl(username) || username.includes('\x01')) throw new RangeError('XOAUTH2: bad user name');
    if (!BEARER_TOKEN.test(token)) throw new RangeError('XOAUTH2: bad token');
    this.#msg = Buffer.from(`user=${username}\x01auth=Bearer ${token}\x01\x01`, 'utf8');
  }
  initial(): Buffer {
    this.#sent = true;
    return this.#msg;
  }
  respond(challenge: Buffer): Buffer {
    if (!this.#sent) return this.initial();
    // An error challenge: acknowledge with an empty response; the server then says -ERR.
    this.serverError = challenge.toString('utf8');
    return Buffer.alloc(0);
  }
}
