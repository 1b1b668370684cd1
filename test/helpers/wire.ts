import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';

const TERMINATOR = Buffer.from('\r\n.\r\n');

/** The message in a multi-line body as multi() returns it (dot-stuffed, with the terminator): the bytes a client keeps. */
export function unstuff(body: Buffer): Buffer {
  const text = body.toString('latin1');
  const content = text.endsWith('\r\n.\r\n') ? text.slice(0, -3) : text === '.\r\n' ? '' : text;
  return Buffer.from(content.replace(/^\.\./gm, '.'), 'latin1');
}

/**
 * A deliberately dumb POP3 peer for tests: it sends exactly the bytes it is
 * told to and hands back exactly the bytes that came, so tests see the wire.
 */
export class Wire {
  #sock: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #waiters: (() => void)[] = [];
  #ended = false;

  private constructor(sock: net.Socket) {
    this.#sock = sock;
    this.#listen(sock);
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

  /** `localAddress`: the address to connect from (any of 127/8 on loopback: a client of its own for per-address limits). */
  static async connect(port: number, opts: { tls?: boolean; host?: string; ca?: string | Buffer; servername?: string; localAddress?: string } = {}): Promise<Wire> {
    const base = { host: opts.host ?? '127.0.0.1', port, ...(opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {}) };
    let sock: net.Socket;
    if (opts.tls) {
      sock = tls.connect({ ...base, rejectUnauthorized: false, ...(opts.ca ? { ca: opts.ca } : {}), servername: opts.servername ?? 'localhost' });
      await once(sock, 'secureConnect');
    } else {
      sock = net.connect(base);
      await once(sock, 'connect');
    }
    return new Wire(sock);
  }

  /** A wire over a socket the test connected (and maybe wrote to) itself. */
  static over(sock: net.Socket): Wire {
    return new Wire(sock);
  }

  get socket(): net.Socket {
    return this.#sock;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Bytes received and not yet consumed. */
  get pending(): Buffer {
    return this.#buf;
  }

  async #waitFor<T>(take: () => T | undefined, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = take();
      if (v !== undefined) return v;
      if (this.#ended) throw new Error(`connection closed; unconsumed: ${JSON.stringify(this.#buf.toString('latin1').slice(0, 200))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout; unconsumed: ${JSON.stringify(this.#buf.toString('latin1').slice(0, 200))}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** One line without its CRLF. */
  line(timeoutMs = 10_000): Promise<string> {
    return this.#waitFor(() => {
      const i = this.#buf.indexOf('\r\n');
      if (i === -1) return undefined;
      const l = this.#buf.subarray(0, i).toString('latin1');
      this.#buf = this.#buf.subarray(i + 2);
      return l;
    }, timeoutMs);
  }

  /** The status line and, when it is +OK, every byte after it up to and including the terminator. */
  async multi(timeoutMs = 30_000): Promise<{ status: string; body: Buffer }> {
    const status = await this.line(timeoutMs);
    if (!status.startsWith('+OK')) return { status, body: Buffer.alloc(0) };
    const body = await this.#waitFor(() => {
      if (this.#buf.length >= 3 && this.#buf[0] === 0x2e && this.#buf[1] === 0x0d && this.#buf[2] === 0x0a) {
        const b = this.#buf.subarray(0, 3);
        this.#buf = this.#buf.subarray(3);
        return b;
      }
      const i = this.#buf.indexOf(TERMINATOR);
      if (i === -1) return undefined;
      const b = this.#buf.subarray(0, i + 5);
      this.#buf = this.#buf.subarray(i + 5);
      return b;
    }, timeoutMs);
    return { status, body };
  }

  /** Lines of a multi-line reply (without the terminator), for LIST/UIDL/CAPA. */
  async multiLines(timeoutMs = 30_000): Promise<{ status: string; lines: string[] }> {
    const { status, body } = await this.multi(timeoutMs);
    const text = body.toString('latin1');
    const lines = text === '' ? [] : text.slice(0, -3).split('\r\n').slice(0, -1);
    return { status, lines };
  }

  send(line: string): void {
    this.#sock.write(line + '\r\n');
  }

  sendRaw(data: string | Buffer): void {
    this.#sock.write(data);
  }

  async cmd(line: string, timeoutMs?: number): Promise<string> {
    this.send(line);
    return this.line(timeoutMs);
  }

  async cmdMulti(line: string): Promise<{ status: string; body: Buffer }> {
    this.send(line);
    return this.multi();
  }

  async cmdLines(line: string): Promise<{ status: string; lines: string[] }> {
    this.send(line);
    return this.multiLines();
  }

  /** Log in with USER/PASS, expecting success. */
  async login(user: string, password: string): Promise<void> {
    const u = await this.cmd(`USER ${user}`);
    if (!u.startsWith('+OK')) throw new Error(`USER failed: ${u}`);
    const p = await this.cmd(`PASS ${password}`);
    if (!p.startsWith('+OK')) throw new Error(`PASS failed: ${p}`);
  }

  /** Client side of STLS: the handshake on the same socket; unconsumed plaintext is dropped. */
  async upgrade(opts: { ca?: string | Buffer; servername?: string } = {}): Promise<void> {
    const raw = this.#sock;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    this.#buf = Buffer.alloc(0);
    const s = tls.connect({ socket: raw, rejectUnauthorized: false, servername: opts.servername ?? 'localhost', ...(opts.ca ? { ca: opts.ca } : {}) });
    await once(s, 'secureConnect');
    this.#sock = s;
    this.#listen(s);
  }

  /** Resolves when the server has closed the connection. */
  async closed(timeoutMs = 10_000): Promise<void> {
    await this.#waitFor(() => (this.#ended ? true : undefined), timeoutMs).catch((e: Error) => {
      if (!this.#ended) throw e;
    });
  }

  close(): void {
    this.#sock.destroy();
  }
}
