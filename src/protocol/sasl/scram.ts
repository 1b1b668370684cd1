/**
 * SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), with the -PLUS
 * channel-binding variants (tls-unique on TLS 1.2, RFC 5929; tls-exporter on
 * TLS 1.3, RFC 9266).
 *
 * Server secrets come from Dovecot's `{SCRAM-SHA-1}`/`{SCRAM-SHA-256}`
 * values (iterations,salt,StoredKey,ServerKey) or from a `{PLAIN}`-family
 * secret; for the latter the salt is HMAC(saltSecret, mechanism, user), so a
 * user sees the same salt every time. Unknown users get a salt made the same
 * way and the default iteration count, and fail at the proof: the
 * server-first message does not tell them apart.
 *
 * Failures are plain `{kind:'fail'}`: over POP3 the server-final `e=` would
 * only be followed by -ERR anyway.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { plaintextSecret } from '../../secrets/plaintext-secret.js';
import { decodeBase64Strict } from './base64.js';
import { hasForbiddenControl, type ClientMechanism, type SaslServerContext, type ServerMechanism, type ServerStep } from './mechanism.js';
import { saslPrep } from '../../secrets/saslprep.js';
import {
  SCRAM_DEFAULT_ITERATIONS,
  SCRAM_HASH_LEN,
  SCRAM_MAX_ITERATIONS,
  SCRAM_MIN_ITERATIONS,
  digest,
  hmac,
  keysFromSalted,
  parseScramSecret,
  saltedPassword,
  saltedPasswordSync,
  type ScramHash,
  type ScramSecret,
} from '../../secrets/scram-keys.js';
import { decodeSaslname, decodeUtf8Strict, encodeSaslname, parseGs2Header, safeEqual } from './syntax.js';

export type ScramAlgorithm = 'SHA-1' | 'SHA-256';
export type ChannelBindingType = 'tls-unique' | 'tls-exporter';

const HASH: Readonly<Record<ScramAlgorithm, ScramHash>> = { 'SHA-1': 'sha1', 'SHA-256': 'sha256' };
const SALT_LEN = 16;
const MAX_NAME = 255;
/** printable = %x21-2B / %x2D-7E (RFC 5802 §7): no comma. */
const NONCE_RE = /^[\x21-\x2b\x2d-\x7e]+$/;
const EXT_RE = /^[A-Za-z]=/;

export function scramMechanismName(algorithm: ScramAlgorithm, plus: boolean): string {
  return `SCRAM-${algorithm}${plus ? '-PLUS' : ''}`;
}

/** -PLUS can be offered: the connection has a binding type and the data for it. */
export function scramPlusAvailable(ctx: SaslServerContext): boolean {
  const t = ctx.channelBindingType;
  return t !== undefined && ctx.channelBinding(t) !== undefined;
}

/** A server-side process key for salts; per process unless configured (then stable across restarts). */
const PROCESS_SALT_SECRET = randomBytes(32);

export interface ScramServerOptions {
  readonly algorithm: ScramAlgorithm;
  readonly plus: boolean;
  /**
   * Non-PLUS only: whether the -PLUS variant is advertised on this
   * connection. A client sending `y` (it could bind, but believes the server
   * can't) is then under a downgrade attack and is refused (RFC 5802 §6).
   */
  readonly plusAdvertised?: boolean;
  /** Key for the salts of `{PLAIN}` users and unknown users. Default: random per process. */
  readonly saltSecret?: Buffer;
  /** Iterations for `{PLAIN}` and unknown users (default 4096, at least 4096). */
  readonly iterations?: number;
  /** Tests: the server's nonce part. */
  readonly nonce?: string;
  /** Tests: the salt for `{PLAIN}` and unknown users. */
  readonly salt?: (username: string) => Buffer;
}

type State =
  | { readonly at: 'start' | 'wait-first' | 'done' }
  | {
      readonly at: 'wait-final';
      readonly username: string;
      readonly gs2Header: string;
      readonly cbData: Buffer | undefined;
      readonly clientFirstBare: string;
      readonly serverFirst: string;
      readonly nonce: string;
      /** Undefined for an unknown user or an unusable secret. */
      readonly secret: ScramSecret | undefined;
      readonly dummyKey: Buffer;
    };

export class ScramServer implements ServerMechanism {
  readonly #ctx: SaslServerContext;
  readonly #hash: ScramHash;
  readonly #plus: boolean;
  readonly #plusAdvertised: boolean;
  readonly #saltSecret: Buffer;
  readonly #iterations: number;
  readonly #nonce: string | undefined;
  readonly #salt: ((username: string) => Buffer) | undefined;
  readonly name: string;
  #state: State = { at: 'start' };

  constructor(ctx: SaslServerContext, options: ScramServerOptions) {
    this.#ctx = ctx;
    this.#hash = HASH[options.algorithm];
    this.#plus = options.plus;
    this.#plusAdvertised = options.plusAdvertised ?? false;
    this.#saltSecret = options.saltSecret ?? PROCESS_SALT_SECRET;
    this.#iterations = options.iterations ?? SCRAM_DEFAULT_ITERATIONS;
    if (!Number.isInteger(this.#iterations) || this.#iterations < SCRAM_MIN_ITERATIONS || this.#iterations > SCRAM_MAX_ITERATIONS) {
      throw new RangeError(`SCRAM iterations must be in ${SCRAM_MIN_ITERATIONS}..${SCRAM_MAX_ITERATIONS}`);
    }
    this.#nonce = options.nonce;
    this.#salt = options.salt;
    this.name = scramMechanismName(options.algorithm, options.plus);
  }

  async step(response: Buffer | null): Promise<ServerStep> {
    const st = this.#state;
    switch (st.at) {
      case 'start':
        if (response === null) {
          this.#state = { at: 'wait-first' };
          return { kind: 'challenge', data: Buffer.alloc(0) };
        }
        return this.#first(response);
      case 'wait-first':
        return response === null ? this.#fail('no response') : this.#first(response);
      case 'wait-final':
        this.#state = { at: 'done' };
        return response === null ? this.#fail('no response', st.username) : this.#final(st, response);
      case 'done':
        return this.#fail('exchange already finished');
    }
  }

  async #first(response: Buffer): Promise<ServerStep> {
    this.#state = { at: 'done' };
    const text = decodeUtf8Strict(response);
    if (text === undefined) return this.#fail('client-first is not UTF-8');
    const gs2 = parseGs2Header(text);
    if (gs2 === undefined) return this.#fail('malformed gs2 header');

    // Channel binding policy (RFC 5802 §6).
    let cbData: Buffer | undefined;
    if (this.#plus) {
      if (gs2.flag !== 'p' || (gs2.cbName !== 'tls-unique' && gs2.cbName !== 'tls-exporter')) {
        return this.#fail('-PLUS needs channel binding (p=tls-unique or p=tls-exporter)');
      }
      cbData = this.#ctx.channelBinding(gs2.cbName);
      if (cbData === undefined) return this.#fail(`channel binding ${gs2.cbName} not available on this connection`);
    } else if (gs2.flag === 'p') {
      return this.#fail('channel binding requested on a non-PLUS mechanism');
    } else if (gs2.flag === 'y' && this.#plusAdvertised) {
      return this.#fail('client supports channel binding but did not use the advertised -PLUS (downgrade?)');
    }

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    const bare = gs2.rest;
    const attrs = bare.split(',');
    if (attrs[0]?.startsWith('m=')) return this.#fail('mandatory extension not supported');
    const [n, r, ...ext] = attrs;
    if (n === undefined || r === undefined || !n.startsWith('n=') || !r.startsWith('r=') || !ext.every((e) => EXT_RE.test(e))) {
      return this.#fail('malformed client-first-message');
    }
    const decoded = decodeSaslname(n.slice(2));
    const username = decoded === undefined ? undefined : saslPrep(decoded);
    if (username === undefined || username === '' || hasForbiddenControl(username) || Buffer.byteLength(username) > MAX_NAME) {
      return this.#fail('bad user name');
    }
    if (gs2.authzid !== undefined && saslPrep(gs2.authzid) !== username) return this.#fail('authzid differs from the user name', username);
    const clientNonce = r.slice(2);
    if (!NONCE_RE.test(clientNonce)) return this.#fail('malformed client nonce', username);

    let stored: string | undefined;
    try {
      stored = await this.#ctx.lookupSecret(username);
    } catch {
      return { kind: 'fail', reason: 'secret lookup failed', username, temporary: true };
    }
    const secret = await this.#resolveSecret(username, stored);
    const salt = secret?.salt ?? this.#derivedSalt(username);
    const iterations = secret?.iterations ?? this.#iterations;
    const nonce = clientNonce + (this.#nonce ?? randomBytes(18).toString('base64'));
    const serverFirst = `r=${nonce},s=${salt.toString('base64')},i=${iterations}`;
    this.#state = {
      at: 'wait-final',
      username,
      gs2Header: gs2.header,
      cbData,
      clientFirstBare: bare,
      serverFirst,
      nonce,
      secret,
      dummyKey: digest(this.#hash, salt),
    };
    return { kind: 'challenge', data: Buffer.from(serverFirst, 'utf8') };
  }

  async #final(st: Extract<State, { at: 'wait-final' }>, response: Buffer): Promise<ServerStep> {
    const { username } = st;
    const text = decodeUtf8Strict(response);
    const pAt = text?.lastIndexOf(',p=') ?? -1;
    if (text === undefined || pAt === -1) return this.#fail('malformed client-final-message', username);
    const withoutProof = text.slice(0, pAt);
    const [c, r, ...ext] = withoutProof.split(',');
    if (c === undefined || r === undefined || !c.startsWith('c=') || !r.startsWith('r=') || !ext.every((e) => EXT_RE.test(e))) {
      return this.#fail('malformed client-final-message', username);
    }
    const cbind = decodeBase64Strict(c.slice(2));
    const expectedCbind = Buffer.concat([Buffer.from(st.gs2Header, 'utf8'), st.cbData ?? Buffer.alloc(0)]);
    if (cbind === null || !safeEqual(cbind, expectedCbind)) return this.#fail('channel binding mismatch', username);
    if (r.slice(2) !== st.nonce) return this.#fail('nonce mismatch', username);
    const proof = decodeBase64Strict(text.slice(pAt + 3));
    if (proof === null || proof.length !== SCRAM_HASH_LEN[this.#hash]) return this.#fail('malformed proof', username);

    const authMessage = `${st.clientFirstBare},${st.serverFirst},${withoutProof}`;
    const storedKey = st.secret?.storedKey ?? st.dummyKey;
    const clientSignature = hmac(this.#hash, storedKey, authMessage);
    const clientKey = Buffer.alloc(proof.length);
    for (let i = 0; i < proof.length; i++) clientKey[i] = (proof[i] ?? 0) ^ (clientSignature[i] ?? 0);
    const ok = safeEqual(digest(this.#hash, clientKey), storedKey);
    if (!ok || st.secret === undefined) return this.#fail(st.secret === undefined ? 'no usable secret' : 'wrong proof', username);
    const serverSignature = hmac(this.#hash, st.secret.serverKey, authMessage);
    return { kind: 'authenticated', username, final: Buffer.from(`v=${serverSignature.toString('base64')}`, 'utf8') };
  }

  /**
   * The SCRAM secret for this mechanism's hash, or undefined. Always runs
   * exactly one PBKDF2 of the advertised iteration count, so the answer
   * takes as long for every kind of user.
   */
  async #resolveSecret(username: string, stored: string | undefined): Promise<ScramSecret | undefined> {
    const prefix = this.#hash === 'sha1' ? '{SCRAM-SHA-1}' : '{SCRAM-SHA-256}';
    if (stored !== undefined && stored.slice(0, prefix.length).toUpperCase() === prefix) {
      const s = parseScramSecret(this.#hash, stored.slice(prefix.length));
      await saltedPassword(this.#hash, 'dummy', s?.salt ?? this.#derivedSalt(username), s?.iterations ?? this.#iterations);
      return s;
    }
    const plain = stored === undefined ? undefined : plaintextSecret(stored);
    const prepped = plain === undefined ? undefined : saslPrep(plain);
    const salt = this.#derivedSalt(username);
    const salted = await saltedPassword(this.#hash, prepped ?? 'dummy', salt, this.#iterations);
    if (prepped === undefined) return undefined;
    const { storedKey, serverKey } = keysFromSalted(this.#hash, salted);
    return { iterations: this.#iterations, salt, storedKey, serverKey };
  }

  #derivedSalt(username: string): Buffer {
    if (this.#salt) return this.#salt(username);
    return createHmac('sha256', this.#saltSecret).update(`poplar-scram-salt\0${this.#hash}\0${username}`).digest().subarray(0, SALT_LEN);
  }

  #fail(reason: string, username?: string): ServerStep {
    this.#state = { at: 'done' };
    return { kind: 'fail', reason, ...(username !== undefined ? { username } : {}) };
  }
}

// ---------------------------------------------------------------------------
// client

export interface ScramClientOptions {
  readonly algorithm: ScramAlgorithm;
  /** Use channel binding (the -PLUS mechanism); needs `channelBinding`. */
  readonly plus?: boolean;
  readonly username: string;
  readonly password: string;
  /** Sent as `a=`; servers here only accept the user name itself. */
  readonly authzid?: string;
  /**
   * The connection's binding data. With `plus` it is used; without, its
   * presence makes the client send `y` (it could bind, but the server did
   * not offer -PLUS), which lets a server that did offer it detect a downgrade.
   */
  readonly channelBinding?: { readonly type: ChannelBindingType; readonly data: Buffer };
  /** Tests: the client nonce. */
  readonly nonce?: string;
  /** Refuse servers asking for fewer iterations (default 4096) or more (default 10,000,000). */
  readonly minIterations?: number;
  readonly maxIterations?: number;
}

export class ScramClient implements ClientMechanism {
  readonly name: string;
  readonly #hash: ScramHash;
  readonly #password: string;
  readonly #gs2Header: string;
  readonly #cbData: Buffer;
  readonly #clientFirstBare: string;
  readonly #clientNonce: string;
  readonly #minIterations: number;
  readonly #maxIterations: number;
  #step: 'first' | 'final' | 'verify' | 'done' = 'first';
  #expectedServerSignature: Buffer | undefined;
  #verified = false;

  constructor(o: ScramClientOptions) {
    const plus = o.plus ?? false;
    this.name = scramMechanismName(o.algorithm, plus);
    this.#hash = HASH[o.algorithm];
    const username = saslPrep(o.username);
    const password = saslPrep(o.password);
    if (username === undefined || username === '') throw new RangeError('SCRAM: user name not allowed by SASLprep');
    if (password === undefined) throw new RangeError('SCRAM: password not allowed by SASLprep');
    this.#password = password;
    if (plus && o.channelBinding === undefined) throw new TypeError(`${this.name} needs channel binding data`);
    const flag = plus ? `p=${o.channelBinding?.type ?? ''}` : o.channelBinding !== undefined ? 'y' : 'n';
    const authzid = o.authzid !== undefined && o.authzid !== '' ? saslPrep(o.authzid) : undefined;
    if (o.authzid !== undefined && o.authzid !== '' && authzid === undefined) throw new RangeError('SCRAM: authzid not allowed by SASLprep');
    this.#gs2Header = `${flag},${authzid !== undefined ? `a=${encodeSaslname(authzid)}` : ''},`;
    this.#cbData = plus ? (o.channelBinding?.data ?? Buffer.alloc(0)) : Buffer.alloc(0);
    this.#clientNonce = o.nonce ?? randomBytes(18).toString('base64');
    if (!NONCE_RE.test(this.#clientNonce)) throw new RangeError('SCRAM: bad client nonce');
    this.#clientFirstBare = `n=${encodeSaslname(username)},r=${this.#clientNonce}`;
    this.#minIterations = o.minIterations ?? SCRAM_MIN_ITERATIONS;
    this.#maxIterations = o.maxIterations ?? SCRAM_MAX_ITERATIONS;
  }

  /** True once the server proved it knows the password (its `v=` matched). */
  get verified(): boolean {
    return this.#verified;
  }

  initial(): Buffer {
    if (this.#step !== 'first') throw new Error('SCRAM: initial() after the exchange started');
    this.#step = 'final';
    return Buffer.from(this.#gs2Header + this.#clientFirstBare, 'utf8');
  }

  respond(challenge: Buffer): Buffer {
    switch (this.#step) {
      case 'first':
        // The server sent an empty challenge because no initial response was given.
        if (challenge.length !== 0) throw new Error('SCRAM: unexpected challenge before client-first');
        return this.initial();
      case 'final':
        this.#step = 'done';
        return this.#clientFinal(challenge);
      case 'verify':
        this.#step = 'done';
        this.#verify(challenge);
        return Buffer.alloc(0);
      case 'done':
        throw new Error('SCRAM: exchange already finished');
    }
  }

  #clientFinal(challenge: Buffer): Buffer {
    const serverFirst = decodeUtf8Strict(challenge);
    if (serverFirst === undefined) throw new Error('SCRAM: server-first is not UTF-8');
    const attrs = serverFirst.split(',');
    if (attrs[0]?.startsWith('m=')) throw new Error('SCRAM: server requires an unsupported extension');
    const [r, s, i] = attrs;
    if (!r?.startsWith('r=') || !s?.startsWith('s=') || !i?.startsWith('i=')) throw new Error('SCRAM: malformed server-first-message');
    const nonce = r.slice(2);
    if (!nonce.startsWith(this.#clientNonce) || nonce.length === this.#clientNonce.length || !NONCE_RE.test(nonce)) {
      throw new Error('SCRAM: server nonce does not extend the client nonce');
    }
    const salt = decodeBase64Strict(s.slice(2));
    if (salt === null || salt.length === 0) throw new Error('SCRAM: malformed salt');
    if (!/^[1-9]\d{0,9}$/.test(i.slice(2))) throw new Error('SCRAM: malformed iteration count');
    const iterations = Number(i.slice(2));
    if (iterations < this.#minIterations || iterations > this.#maxIterations) {
      throw new Error(`SCRAM: iteration count ${iterations} outside ${this.#minIterations}..${this.#maxIterations}`);
    }

    const salted = saltedPasswordSync(this.#hash, this.#password, salt, iterations);
    const { clientKey, storedKey, serverKey } = keysFromSalted(this.#hash, salted);
    const cbind = Buffer.concat([Buffer.from(this.#gs2Header, 'utf8'), this.#cbData]).toString('base64');
    const withoutProof = `c=${cbind},r=${nonce}`;
    const authMessage = `${this.#clientFirstBare},${serverFirst},${withoutProof}`;
    const clientSignature = hmac(this.#hash, storedKey, authMessage);
    const proof = Buffer.alloc(clientKey.length);
    for (let k = 0; k < proof.length; k++) proof[k] = (clientKey[k] ?? 0) ^ (clientSignature[k] ?? 0);
    this.#expectedServerSignature = hmac(this.#hash, serverKey, authMessage);
    this.#step = 'verify';
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`, 'utf8');
  }

  #verify(challenge: Buffer): void {
    const text = challenge.toString('utf8');
    if (text.startsWith('e=')) throw new Error(`SCRAM: server error ${text.slice(2)}`);
    const v = text.split(',')[0] ?? '';
    const sig = v.startsWith('v=') ? decodeBase64Strict(v.slice(2)) : null;
    if (sig === null || this.#expectedServerSignature === undefined || !safeEqual(sig, this.#expectedServerSignature)) {
      throw new Error('SCRAM: server signature mismatch');
    }
    this.#verified = true;
  }
}
