import type net from 'node:net';

/**
 * Who is on the other end of a session, as the listener saw it when it
 * accepted the connection. A PROXY protocol header, read by the listener
 * before anything else (before TLS on an implicit-TLS port too), gives the
 * addresses instead and sets `viaProxy`.
 */
export interface ClientInfo {
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** The local end (a getsockname call: read only when asked). */
  readonly localAddress: string;
  readonly localPort: number;
  /** TLS from the first byte (an implicit-TLS listener); a later STLS is the session's business. */
  readonly tls: boolean;
  /** The addresses came from a PROXY protocol header rather than the socket. */
  readonly viaProxy: boolean;
}

/** The client info of a socket the listener accepted itself. */
class SocketClientInfo implements ClientInfo {
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly tls: boolean;
  readonly #socket: net.Socket;

  constructor(socket: net.Socket, tls: boolean) {
    this.#socket = socket;
    this.remoteAddress = normalizeAddress(socket.remoteAddress ?? '');
    this.remotePort = socket.remotePort ?? 0;
    this.tls = tls;
  }

  get localAddress(): string {
    return normalizeAddress(this.#socket.localAddress ?? '');
  }
  get localPort(): number {
    return this.#socket.localPort ?? 0;
  }
  get viaProxy(): boolean {
    return false;
  }
}

export function clientInfoOf(socket: net.Socket, tls: boolean): ClientInfo {
  return new SocketClientInfo(socket, tls);
}

/** `::ffff:192.0.2.1` (an IPv4 client on a dual-stack socket) is `192.0.2.1`. */
export function normalizeAddress(a: string): string {
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

export function isLoopback(address: string): boolean {
  return address === '::1' || address.startsWith('127.');
}

/** The client info of a connection a trusted proxy passed on: the addresses its PROXY header gave. */
export function proxiedClientInfo(a: { sourceAddress: string; sourcePort: number; destinationAddress: string; destinationPort: number }, tls: boolean): ClientInfo {
  return {
    remoteAddress: normalizeAddress(a.sourceAddress),
    remotePort: a.sourcePort,
    localAddress: normalizeAddress(a.destinationAddress),
    localPort: a.destinationPort,
    tls,
    viaProxy: true,
  };
}
