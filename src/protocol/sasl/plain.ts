import { hasForbiddenControl, type ClientMechanism, type ServerMechanism, type ServerStep } from './mechanism.js';

const MAX_FIELD = 255; // RFC 4616 §2: each field at most 255 octets

/** RFC 4616 PLAIN, server half: `[authzid] NUL authcid NUL passwd`. */
export class PlainServer implements ServerMechanism {
  #asked = false;
  async step(response: Buffer | null): Promise<ServerStep> {
    if (response === null) {
      if (this.#asked) return { kind: 'fail', reason: 'no response' };
      this.#asked = true;
      return { kind: 'challenge', data: Buffer.alloc(0) };
    }
    const first = response.indexOf(0);
    const second = first === -1 ? -1 : response.indexOf(0, first + 1);
    if (first === -1 || second === -1 || response.indexOf(0, second + 1) !== -1) {
      return { kind: 'fail', reason: 'malformed PLAIN response' };
    }
    const fields = [response.subarray(0, first), response.subarray(first + 1, second), response.subarray(second + 1)];
    if (fields.some((f) => f.length > MAX_FIELD)) return { kind: 'fail', reason: 'PLAIN field too long' };
    const [authzid, username, password] = fields.map((f) => f.toString('utf8')) as [string, string, string];
    if (username === '' || [authzid, username, password].some(hasForbiddenControl)) {
      return { kind: 'fail', reason: 'malformed PLAIN response' };
    }
    return {
      kind: 'credentials',
      credentials: { kind: 'password', username, password, ...(authzid !== '' ? { authzid } : {}) },
    };
  }
}

export class PlainClient implements ClientMechanism {
  readonly name = 'PLAIN';
  readonly #msg: Buffer;
  constructor(username: string, password: string, authzid = '') {
    this.#msg = Buffer.from(`${authzid}\0${username}\0${password}`, 'utf8');
  }
  initial(): Buffer {
    return this.#msg;
  }
  respond(): Buffer {
    return this.#msg;
  }
}
