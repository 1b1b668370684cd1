/**
 * EXTERNAL (RFC 4422 Appendix A) with a verified TLS client certificate.
 * The response is the authorization identity: empty means "the certificate's
 * identity"; anything else must equal it (no proxy logins).
 */
import { hasForbiddenControl, type ClientMechanism, type SaslServerContext, type ServerMechanism, type ServerStep } from './mechanism.js';
import { decodeUtf8Strict } from './syntax.js';

export function externalAvailable(ctx: SaslServerContext): boolean {
  return ctx.certificateIdentity !== undefined && ctx.certificateIdentity !== '';
}

export class ExternalServer implements ServerMechanism {
  readonly #identity: string | undefined;
  #state: 'start' | 'asked' | 'done' = 'start';

  constructor(ctx: SaslServerContext) {
    this.#identity = ctx.certificateIdentity;
  }

  async step(response: Buffer | null): Promise<ServerStep> {
    if (response === null) {
      if (this.#state !== 'start') return this.#fail('no response');
      this.#state = 'asked';
      return { kind: 'challenge', data: Buffer.alloc(0) };
    }
    if (this.#state === 'done') return this.#fail('exchange already finished');
    this.#state = 'done';
    const identity = this.#identity;
    if (identity === undefined || identity === '') return this.#fail('no client certificate identity');
    const authzid = decodeUtf8Strict(response);
    if (authzid === undefined || hasForbiddenControl(authzid) || Buffer.byteLength(authzid) > 255) return this.#fail('bad authzid');
    if (authzid !== '' && authzid !== identity) return { kind: 'fail', reason: 'authzid differs from the certificate identity', username: authzid };
    return { kind: 'authenticated', username: identity };
  }

  #fail(reason: string): ServerStep {
    this.#state = 'done';
    return { kind: 'fail', reason };
  }
}

export class ExternalClient implements ClientMechanism {
  readonly name = 'EXTERNAL';
  readonly #msg: Buffer;
  constructor(authzid = '') {
    this.#msg = Buffer.from(authzid, 'utf8');
  }
  initial(): Buffer {
    return this.#msg;
  }
  respond(): Buffer {
    return this.#msg;
  }
}
