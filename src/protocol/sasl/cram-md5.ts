/**
 * CRAM-MD5 (RFC 2195). The server sends `<random.timestamp@host>`; the
 * client answers `user SP hex(HMAC-MD5(password, challenge))`.
 *
 * The server needs the HMAC-MD5 key states, which it gets from a
 * `{PLAIN}`-family secret or from Dovecot's `{CRAM-MD5}` (alias `{HMAC-MD5}`)
 * secret. Unknown users and secrets that cannot serve CRAM-MD5 go through the
 * same computation with a dummy key and then fail.
 *
 * CRAM-MD5 is weak (an eavesdropper can run a dictionary attack on the
 * exchange, and the server must keep password equivalents): offer it only
 * when something needs it.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { plaintextSecret } from '../../secrets/plaintext-secret.js';
import { hmacMd5FromStates, hmacMd5States, parseCramMd5Secret, type HmacMd5States } from '../../secrets/md5-state.js';
import { hasForbiddenControl, type ClientMechanism, type SaslServerContext, type ServerMechanism, type ServerStep } from './mechanism.js';
import { decodeUtf8Strict, msgIdHost, safeEqual } from './syntax.js';

/** `<random.seconds@host>` (RFC 2195 §2: a presumptively arbitrary string, unique per exchange). */
export function cramMd5Challenge(hostname: string): string {
  return `<${randomBytes(8).readBigUInt64BE()}.${Math.floor(Date.now() / 1000)}@${msgIdHost(hostname)}>`;
}

/**
 * HMAC-MD5 key states for a stored secret: `{CRAM-MD5}`/`{HMAC-MD5}`, or any
 * scheme with a recoverable cleartext. Undefined when the secret cannot serve.
 */
export function cramMd5States(stored: string | undefined): HmacMd5States | undefined {
  if (stored === undefined) return undefined;
  const mt = /^\{(CRAM-MD5|HMAC-MD5)\}(.*)$/is.exec(stored);
  if (mt) return parseCramMd5Secret(mt[2] ?? '');
  const plain = plaintextSecret(stored);
  return plain === undefined ? undefined : hmacMd5States(Buffer.from(plain, 'utf8'));
}

export interface CramMd5ServerOptions {
  /** Replaces the random challenge (tests). */
  readonly challenge?: string;
}

export class CramMd5Server implements ServerMechanism {
  readonly #ctx: SaslServerContext;
  readonly #challenge: string;
  #state: 'start' | 'sent' | 'done' = 'start';

  constructor(ctx: SaslServerContext, options: CramMd5ServerOptions = {}) {
    this.#ctx = ctx;
    this.#challenge = options.challenge ?? cramMd5Challenge(ctx.hostname);
  }

  async step(response: Buffer | null): Promise<ServerStep> {
    if (this.#state === 'start') {
      this.#state = 'sent';
      // RFC 2195 has no initial response: the server speaks first.
      if (response !== null) return this.#fail('CRAM-MD5 takes no initial response');
      return { kind: 'challenge', data: Buffer.from(this.#challenge, 'latin1') };
    }
    if (this.#state === 'done' || response === null) return this.#fail('unexpected step');
    this.#state = 'done';

    const text = decodeUtf8Strict(response);
    const sp = text?.lastIndexOf(' ') ?? -1;
    if (text === undefined || sp <= 0) return this.#fail('malformed CRAM-MD5 response');
    const username = text.slice(0, sp);
    const hex = text.slice(sp + 1);
    if (hasForbiddenControl(username) || Buffer.byteLength(username) > 255) return this.#fail('bad user name');
    if (!/^[0-9a-fA-F]{32}$/.test(hex)) return this.#fail('malformed CRAM-MD5 digest', username);

    let stored: string | undefined;
    try {
      stored = await this.#ctx.lookupSecret(username);
    } catch {
      return { kind: 'fail', reason: 'secret lookup failed', username, temporary: true };
    }
    // The same work whatever the secret: one key schedule, one HMAC, one compare.
    const dummy = hmacMd5States(Buffer.from(username, 'utf8'));
    const states = cramMd5States(stored);
    const expected = hmacMd5FromStates(states ?? dummy, Buffer.from(this.#challenge, 'latin1'));
    const ok = safeEqual(expected, Buffer.from(hex, 'hex'));
    if (!ok || states === undefined) return this.#fail(states === undefined ? 'no usable secret' : 'wrong digest', username);
    return { kind: 'authenticated', username };
  }

  #fail(reason: string, username?: string): ServerStep {
    this.#state = 'done';
    return { kind: 'fail', reason, ...(username !== undefined ? { username } : {}) };
  }
}

export class CramMd5Client implements ClientMechanism {
  readonly name = 'CRAM-MD5';
  readonly #username: string;
  readonly #password: string;
  constructor(username: string, password: string) {
    this.#username = username;
    this.#password = password;
  }
  initial(): null {
    return null;
  }
  respond(challenge: Buffer): Buffer {
    const digest = createHmac('md5', Buffer.from(this.#password, 'utf8')).update(challenge).digest('hex');
    return Buffer.from(`${this.#username} ${digest}`, 'utf8');
  }
}
