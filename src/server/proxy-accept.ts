import type net from 'node:net';
import { parseProxyHeader, PROXY_HEADER_MAX, type ProxyAddresses } from './proxy-header.js';

/**
 * Read the PROXY protocol header from a fresh socket before anything else.
 * Resolves with the addresses (null: the proxy's LOCAL/UNKNOWN, use the
 * socket's own) or an Error saying why there is none. On success the socket is
 * paused and whatever followed the header in the same read is back at the
 * front of it (the first command, or the TLS ClientHello).
 */
export function readProxyHeader(sock: net.Socket, timeoutMs: number): Promise<{ addresses: ProxyAddresses | null } | Error> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    const finish = (r: { addresses: ProxyAddresses | null } | Error): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onError);
      resolve(r);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const r = parseProxyHeader(buf.length > PROXY_HEADER_MAX ? buf.subarray(0, PROXY_HEADER_MAX) : buf);
      if (r.kind === 'incomplete') {
        if (buf.length >= PROXY_HEADER_MAX) finish(new Error('PROXY header too long'));
        return;
      }
      if (r.kind === 'invalid') return finish(new Error(r.reason));
      sock.pause();
      finish({ addresses: r.addresses });
      if (buf.length > r.length) sock.unshift(buf.subarray(r.length));
    };
    const onEnd = (): void => finish(new Error('the connection closed before a PROXY header'));
    const onError = (e: Error): void => finish(e);
    const timer = setTimeout(() => finish(new Error('no PROXY header in time')), timeoutMs);
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.once('error', onError);
  });
}
