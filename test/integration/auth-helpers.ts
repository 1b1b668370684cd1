/**
 * Helpers for the authentication tests: a line client that can pick its
 * source address or present a TLS client certificate (the shared Wire
 * cannot), a small client-certificate PKI made with openssl, and a TCP
 * proxy that can be cut to make a backend "unreachable".
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const b64 = (s: string | Buffer): string => (typeof s === 'string' ? Buffer.from(s, 'utf8') : s).toString('base64');
export const unb64 = (s: string): string => Buffer.from(s, 'base64').toString('utf8');

/** A POP3 peer that sends exactly what it is told and reads CRLF lines. */
export class LineClient {
  #sock: net.Socket;
  #buf = '';
  #waiters: (() => void)[] = [];
  #ended = false;

  private constructor(sock: net.Socket) {
    this.#sock = sock;
    this.#attach(sock);
  }

  #attach(sock: net.Socket): void {
    sock.setEncoding('latin1');
    sock.on('data', (c: string) => {
      this.#buf += c;
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

  /** Plain TCP, optionally from a chosen source address (any 127.x.y.z works on Linux loopback). */
  static async connect(port: number, opts: { localAddress?: string } = {}): Promise<LineClient> {
    const sock = net.connect({ host: '127.0.0.1', port, ...(opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {}) });
    await once(sock, 'connect');
    return new LineClient(sock);
  }

  /** Implicit TLS, optionally presenting a client certificate. */
  static async connectTls(
    port: number,
    opts: { cert?: string; key?: string; ca?: string | Buffer; maxVersion?: tls.SecureVersion; localAddress?: string } = {},
  ): Promise<LineClient> {
    const sock = tls.connect({
      host: '127.0.0.1',
      port,
      ...(opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {}),
      servername: 'localhost',
      rejectUnauthorized: false,
      ...(opts.cert !== undefined ? { cert: opts.cert, key: opts.key } : {}),
      ...(opts.maxVersion !== undefined ? { maxVersion: opts.maxVersion } : {}),
    });
    await once(sock, 'secureConnect');
    return new LineClient(sock);
  }

  get socket(): net.Socket {
    return this.#sock;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** STLS's client side on this connection (after the server's +OK). */
  async upgrade(opts: { cert?: string; key?: string } = {}): Promise<void> {
    const raw = this.#sock;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    this.#buf = '';
    const s = tls.connect({ socket: raw, servername: 'localhost', rejectUnauthorized: false, ...(opts.cert !== undefined ? { cert: opts.cert, key: opts.key } : {}) });
    await once(s, 'secureConnect');
    this.#sock = s;
    this.#attach(s);
  }

  async line(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#buf.indexOf('\r\n');
      if (i !== -1) {
        const l = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 2);
        return l;
      }
      if (this.#ended) throw new Error(`connection closed; unconsumed: ${JSON.stringify(this.#buf.slice(0, 200))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout; unconsumed: ${JSON.stringify(this.#buf.slice(0, 200))}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Lines of a multi-line reply up to (not including) the `.` terminator. */
  async lines(): Promise<{ status: string; lines: string[] }> {
    const status = await this.line();
    const lines: string[] = [];
    if (!status.startsWith('+OK')) return { status, lines };
    for (;;) {
      const l = await this.line();
      if (l === '.') return { status, lines };
      lines.push(l.startsWith('.') ? l.slice(1) : l);
    }
  }

  send(line: string): void {
    this.#sock.write(line + '\r\n');
  }

  async cmd(line: string): Promise<string> {
    this.send(line);
    return this.line();
  }

  /** The SASL mechanisms of CAPA's SASL line ([] when there is none). */
  async saslMechanisms(): Promise<string[]> {
    const { lines } = await (this.send('CAPA'), this.lines());
    const sasl = lines.find((l) => l.startsWith('SASL '));
    return sasl === undefined ? [] : sasl.slice(5).split(' ');
  }

  /** Sends a command and measures how long the one-line answer took. */
  async timed(line: string): Promise<{ reply: string; ms: number }> {
    const t0 = performance.now();
    const reply = await this.cmd(line);
    return { reply, ms: performance.now() - t0 };
  }

  async quit(): Promise<void> {
    const r = await this.cmd('QUIT');
    if (!r.startsWith('+OK')) throw new Error(`QUIT: ${r}`);
    this.close();
  }

  close(): void {
    this.#sock.destroy();
  }
}

export interface ClientPki {
  /** CA bundle the server trusts for client certificates. */
  caFile: string;
  ca: string;
  /** alice's certificate (CN=alice) signed by the CA, and its key. */
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
  /** A self-signed CN=alice certificate the server does not trust. */
  rogueCert: string;
  rogueKey: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await execFileP('openssl', args, { cwd });
}

/** A throw-away CA, a client certificate for `cn` signed by it, and an untrusted one for the same name. */
export async function makeClientPki(dir: string, cn = 'alice'): Promise<ClientPki> {
  await fs.mkdir(dir, { recursive: true });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Poplar Test Client CA'], dir);
  await openssl(['req', '-new', ...ec, '-keyout', 'client.key', '-out', 'client.csr', '-subj', `/CN=${cn}`], dir);
  await fs.writeFile(path.join(dir, 'ext.cnf'), 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n');
  await openssl(
    ['x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client.pem', '-days', '2', '-extfile', 'ext.cnf'],
    dir,
  );
  await openssl(['req', '-x509', ...ec, '-keyout', 'rogue.key', '-out', 'rogue.pem', '-days', '2', '-subj', `/CN=${cn}`], dir);
  const read = (f: string): Promise<string> => fs.readFile(path.join(dir, f), 'utf8');
  return {
    caFile: path.join(dir, 'ca.pem'),
    ca: await read('ca.pem'),
    cert: await read('client.pem'),
    key: await read('client.key'),
    certFile: path.join(dir, 'client.pem'),
    keyFile: path.join(dir, 'client.key'),
    rogueCert: await read('rogue.pem'),
    rogueKey: await read('rogue.key'),
  };
}

/**
 * A TCP relay to `target` on 127.0.0.1. `cut()` closes the listener and every
 * relayed connection (the backend becomes unreachable); `restore()` listens
 * again on the same port.
 */
export class TcpRelay {
  readonly targetPort: number;
  port = 0;
  #server: net.Server | undefined;
  readonly #sockets = new Set<net.Socket>();

  constructor(targetPort: number) {
    this.targetPort = targetPort;
  }

  async start(port = 0): Promise<number> {
    const server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: this.targetPort });
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    server.listen({ host: '127.0.0.1', port });
    await once(server, 'listening');
    this.#server = server;
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  async cut(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    for (const sock of this.#sockets) sock.destroy();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  async restore(): Promise<void> {
    await this.start(this.port);
  }
}
