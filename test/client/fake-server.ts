/**
 * A scriptable, misbehaving POP3 server for client tests: it can dribble
 * every reply one byte at a time, end lines with bare LF, drop the space
 * after `+OK`, lie about sizes, inject bytes after the STLS `+OK`, never
 * answer, or hang up mid-reply.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { testCertificate } from '../helpers/server.js';

export interface FakeIo {
  /** Write (through the server's write mode), in order with earlier writes. */
  send(data: string | Buffer): Promise<void>;
  /** Server side of STLS: continue on TLS with the test certificate. */
  startTls(): Promise<void>;
  /** Hang up now. */
  close(): void;
  readonly socket: net.Socket;
}

export interface FakeOptions {
  /** `bytewise`: one byte per write with setImmediate between. */
  readonly writeMode?: 'whole' | 'bytewise';
  readonly greeting?: string;
  /** Return false to stop reading commands (the connection stays open). */
  handle(command: string, io: FakeIo): Promise<boolean | void> | boolean | void;
  readonly host?: string;
}

export interface FakeServer {
  readonly port: number;
  readonly host: string;
  /** Every command line received, in order, across connections. */
  readonly received: string[];
  stop(): Promise<void>;
}

export async function startFake(opts: FakeOptions): Promise<FakeServer> {
  const received: string[] = [];
  const sockets = new Set<net.Socket>();
  const { certFile, keyFile } = await testCertificate();
  const [cert, key] = await Promise.all([fs.readFile(certFile), fs.readFile(keyFile)]);

  const server = net.createServer((raw) => {
    let sock: net.Socket = raw;
    sockets.add(raw);
    raw.on('error', () => undefined);
    let chain: Promise<void> = Promise.resolve();
    let buf = '';
    let reading = true;

    const writeNow = async (data: Buffer): Promise<void> => {
      if (opts.writeMode === 'bytewise') {
        for (let i = 0; i < data.length; i++) {
          if (sock.destroyed) return;
          sock.write(data.subarray(i, i + 1));
          await new Promise((r) => setImmediate(r));
        }
      } else if (!sock.destroyed) sock.write(data);
    };

    const io: FakeIo = {
      send: (data) => {
        const b = Buffer.isBuffer(data) ? data : Buffer.from(data, 'latin1');
        chain = chain.then(() => writeNow(b));
        return chain;
      },
      startTls: async () => {
        await chain;
        sock.removeListener('data', onData);
        // RFC 2595 §4: a client sends nothing between STLS and the end of the handshake.
        if (buf !== '') received.push(`LEAKED BEFORE TLS: ${buf}`);
        buf = '';
        const secure = new tls.TLSSocket(sock, { isServer: true, cert, key });
        secure.on('error', () => undefined);
        sockets.add(secure);
        sock = secure;
        await new Promise<void>((resolve, reject) => {
          secure.once('secure', resolve);
          secure.once('error', reject);
          secure.once('close', () => reject(new Error('closed during handshake')));
        });
        secure.on('data', onData);
      },
      close: () => sock.destroy(),
      get socket() {
        return sock;
      },
    };

    let busy = Promise.resolve();
    function onData(d: Buffer): void {
      buf += d.toString('latin1');
      busy = busy.then(async () => {
        for (;;) {
          if (!reading) return;
          const i = buf.indexOf('\n');
          if (i < 0) return;
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          received.push(line);
          const r = await opts.handle(line, io);
          if (r === false) reading = false;
          if (sock !== raw && line.toUpperCase() === 'STLS') return; // startTls took over the socket
        }
      }).catch(() => io.close()); // e.g. the client gave up during the handshake
    }
    raw.on('data', onData);
    void io.send(opts.greeting ?? '+OK fake POP3 ready\r\n');
  });

  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const addr = server.address() as net.AddressInfo;
  return {
    port: addr.port,
    host,
    received,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export interface MiniPop3Options {
  readonly messages: readonly string[];
  /** Line end the server uses everywhere (default CRLF). */
  readonly eol?: '\r\n' | '\n';
  /** `+OK` followed directly by the line end when there is no text (default: `+OK text`). */
  readonly bareOk?: boolean;
  /** Announce sizes that are off by this much in `+OK n octets`, LIST and STAT. */
  readonly sizeError?: number;
  readonly capabilities?: readonly string[];
  /** UIDL of each message, sent as is (default `uid-<n>`). */
  readonly uids?: readonly string[];
  /** Sizes LIST announces, when they should differ from the real ones. */
  readonly listSizes?: readonly number[];
  /** Called first for every command: return 'pass' for the normal answer, anything else to take over. */
  readonly intercept?: (verb: string, args: string[], io: FakeIo) => Promise<boolean | void | 'pass'> | boolean | void | 'pass';
}

/**
 * Write `chunk` again and again, as fast as the peer reads, until the
 * connection ends (or `limit` octets went out). Resolves with the octets written.
 */
export async function flood(io: FakeIo, chunk: Buffer, limit = Infinity): Promise<number> {
  const s = io.socket;
  let sent = 0;
  while (!s.destroyed && s.writable && sent < limit) {
    sent += chunk.length;
    if (!s.write(chunk)) {
      await new Promise<void>((r) => {
        const done = (): void => {
          s.off('drain', done);
          s.off('close', done);
          r();
        };
        s.on('drain', done);
        s.on('close', done);
      });
    }
  }
  return sent;
}

/** Message lines as the client should return them: each line ended with the server's `eol`. */
export function asServed(message: string, eol = '\r\n'): string {
  return linesOf(message)
    .map((l) => l + eol)
    .join('');
}

function linesOf(message: string): string[] {
  const lines = message.split(/\r?\n/);
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

/** A small but complete POP3 maildrop behind a FakeServer handler. */
export function miniPop3(o: MiniPop3Options): FakeOptions['handle'] {
  const eol = o.eol ?? '\r\n';
  const ok = (text = ''): string => (text === '' && o.bareOk ? `+OK${eol}` : `+OK ${text}${eol}`);
  const size = (i: number): number => Buffer.byteLength(asServed(o.messages[i]!, eol)) + (o.sizeError ?? 0);
  const listSize = (i: number): number => o.listSizes?.[i] ?? size(i);
  const deleted = new Set<number>();
  const multi = (lines: readonly string[]): string => lines.map((l) => (l.startsWith('.') ? `.${l}` : l) + eol).join('') + `.${eol}`;
  const msgIndex = (arg: string | undefined): number | undefined => {
    const n = Number(arg);
    return Number.isInteger(n) && n >= 1 && n <= o.messages.length && !deleted.has(n - 1) ? n - 1 : undefined;
  };
  const live = (): number[] => o.messages.map((_, i) => i).filter((i) => !deleted.has(i));
  return async (line, io) => {
    const [verb = '', a, b] = line.split(' ');
    if (o.intercept !== undefined) {
      const r = await o.intercept(verb.toUpperCase(), line.split(' ').slice(1), io);
      if (r !== 'pass') return r;
    }
    switch (verb.toUpperCase()) {
      case 'CAPA':
        return void io.send(ok() + multi(o.capabilities ?? ['USER', 'UIDL', 'TOP', 'PIPELINING']));
      case 'USER':
      case 'PASS':
      case 'NOOP':
        return void io.send(ok());
      case 'STAT':
        return void io.send(ok(`${live().length} ${live().reduce((t, i) => t + size(i), 0)}`));
      case 'LIST':
      case 'UIDL': {
        const entry = (i: number): string => `${i + 1} ${verb.toUpperCase() === 'LIST' ? listSize(i) : (o.uids?.[i] ?? `uid-${i + 1}`)}`;
        if (a === undefined) return void io.send(ok() + multi(live().map(entry)));
        const i = msgIndex(a);
        return void io.send(i === undefined ? `-ERR no such message${eol}` : ok(entry(i)));
      }
      case 'RETR':
      case 'TOP': {
        const i = msgIndex(a);
        if (i === undefined) return void io.send(`-ERR no such message${eol}`);
        let lines = linesOf(o.messages[i]!);
        if (verb.toUpperCase() === 'TOP') {
          const blank = lines.indexOf('');
          lines = blank < 0 ? lines : lines.slice(0, blank + 1 + Number(b));
        }
        return void io.send(ok(`${size(i)} octets`) + multi(lines));
      }
      case 'DELE': {
        const i = msgIndex(a);
        if (i === undefined) return void io.send(`-ERR no such message${eol}`);
        deleted.add(i);
        return void io.send(ok());
      }
      case 'RSET':
        deleted.clear();
        return void io.send(ok());
      case 'QUIT':
        await io.send(ok('bye'));
        io.close();
        return false;
      default:
        return void io.send(`-ERR unknown command${eol}`);
    }
  };
}
