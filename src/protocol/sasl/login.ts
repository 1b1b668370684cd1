import { hasForbiddenControl, type ClientMechanism, type ServerMechanism, type ServerStep } from './mechanism.js';

const USERNAME = Buffer.from('Username:');
const PASSWORD = Buffer.from('Password:');

/** The LOGIN mechanism (draft-murchison-sasl-login): two prompts, user name then password. */
export class LoginServer implements ServerMechanism {
  #username: string | undefined;
  #prompted = false;
  async step(response: Buffer | null): Promise<ServerStep> {
    if (response === null) {
      if (this.#prompted) return { kind: 'fail', reason: 'no response' };
      this.#prompted = true;
      return { kind: 'challenge', data: USERNAME };
    }
    if (this.#username === undefined) {
      const u = response.toString('utf8');
      if (u === '' || response.length > 255 || hasForbiddenControl(u)) return { kind: 'fail', reason: 'bad user name' };
      this.#username = u;
      this.#prompted = true;
      return { kind: 'challenge', data: PASSWORD };
    }
    const password = response.toString('utf8');
    if (response.length > 1024 || hasForbiddenControl(password)) return { kind: 'fail', reason: 'bad password' };
    return { kind: 'credentials', credentials: { kind: 'password', username: this.#username, password } };
  }
}

export class LoginClient implements ClientMechanism {
  readonly name = 'LOGIN';
  #step = 0;
  readonly #username: string;
  readonly #password: string;
  constructor(username: string, password: string) {
    this.#username = username;
    this.#password = password;
  }
  initial(): null {
    return null;
  }
  respond(): Buffer {
    return Buffer.from(this.#step++ === 0 ? this.#username : this.#password, 'utf8');
  }
}
