/**
 * A raw POP3 connection for the soak: it sends exactly what it is told, may
 * come from any loopback address (so failed logins from an "attacker"
 * address do not throttle the others), and can be cut at any moment.
 */
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';

const TERMINATOR = Buffer.from('\r\n.\r\n');

export class Pop3Wire {
  #sock: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #waiters: (() => void)[] = [];
  #ended = false;

  private constructor(sock: net.Socket) {
    this.#sock = sock;
    this.#listen(sock);
  }

  static async connect(port: number, opts: { localAddress?: string; tls?: boolean } = {}): Promise<Pop3Wire> {
    const base = { host: '127.0.0.1', port, ...(opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {}) };
    const sock = opts.tls === true ? tls.connect({ ...base, rejectUnauthorized: false, servername: 'localhost' }) : net.connect(base);
    sock.on('error', () => undefined);
    await once(sock, opts.tls === true ? 'secureConnect' : 'connect');
    return new Pop3Wire(sock);
  }

  #listen(sock: net.Socket): void {
    sock.on('data', (c: Buffer) => {
      this.#buf = this.#buf.length === 0 ? c : Buffer.concat([this.#buf, c]);
      this.#wake();
    });
    sock.on('close', () => {
      this.#ended = true;
      this.#wake();
    });
    sock.on('error', () => undefined);
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  async #waitFor<T>(take: () => T | undefined, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = take();
      if (v !== undefined) return v;
      if (this.#ended) throw new Error('connection closed by the server');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no reply in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  line(timeoutMs = 60_000): Promise<string> {
    return this.#waitFor(() => {
      const i = this.#buf.indexOf('\r\n');
      if (i === -1) return undefined;
      const l = this.#buf.subarray(0, i).toString('latin1');
      this.#buf = this.#buf.subarray(i + 2);
      return l;
    }, timeoutMs);
  }

  /** Status line and, after +OK, the dot-unstuffed body (without the terminator). */
  async multi(timeoutMs = 60_000): Promise<{ status: string; body: Buffer }> {
    const status = await this.line(timeoutMs);
    if (!status.startsWith('+OK')) return { status, body: Buffer.alloc(0) };
    const raw = await this.#waitFor(() => {
      if (this.#buf.length >= 3 && this.#buf[0] === 0x2e && this.#buf[1] === 0x0d && this.#buf[2] === 0x0a) {
        this.#buf = this.#buf.subarray(3);
        return Buffer.alloc(0);
      }
      const i = this.#buf.indexOf(TERMINATOR);
      if (i === -1) return undefined;
      const b = this.#buf.subarray(0, i + 2);
      this.#buf = this.#buf.subarray(i + 5);
      return b;
    }, timeoutMs);
    const text = raw.toString('latin1');
    return { status, body: Buffer.from(text.replace(/^\.\./gm, '.'), 'latin1') };
  }

  async multiLines(timeoutMs = 60_000): Promise<{ status: string; lines: string[] }> {
    const { status, body } = await this.multi(timeoutMs);
    const text = body.toString('latin1');
    return { status, lines: text === '' ? [] : text.slice(0, -2).split('\r\n') };
  }

  send(line: string): void {
    this.#sock.write(line + '\r\n');
  }

  async cmd(line: string, timeoutMs?: number): Promise<string> {
    this.send(line);
    return this.line(timeoutMs);
  }

  /** STLS's client half on the same socket. */
  async upgrade(): Promise<void> {
    const raw = this.#sock;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    this.#buf = Buffer.alloc(0);
    const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' });
    s.on('error', () => undefined);
    await once(s, 'secureConnect');
    this.#sock = s;
    this.#listen(s);
  }

  /** Waits until the server has sent at least `n` bytes past what was read, then cuts the connection. */
  async cutAfter(n: number, timeoutMs = 30_000): Promise<void> {
    await this.#waitFor(() => (this.#buf.length >= n ? true : undefined), timeoutMs).catch(() => undefined);
    this.destroy();
  }

  destroy(): void {
    this.#sock.destroy();
  }

  async closed(timeoutMs = 10_000): Promise<void> {
    await this.#waitFor(() => (this.#ended ? true : undefined), timeoutMs).catch(() => undefined);
  }
}
