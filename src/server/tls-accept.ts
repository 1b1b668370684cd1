import type net from 'node:net';
import tls from 'node:tls';

/**
 * The server side of TLS on a socket Poplar accepted itself: used both for
 * implicit TLS (the listener, before the greeting) and for STLS (the session,
 * after `+OK`). The listener decides when TLS starts, so anything that must
 * come first (a PROXY protocol header) can be read before it.
 */
export function serverTlsSocket(raw: net.Socket, context: tls.SecureContext, requestCert: boolean, sni?: ServerNameCallback): tls.TLSSocket {
  // A client certificate is asked for, never required: without one the client logs in otherwise.
  return new tls.TLSSocket(raw, { isServer: true, secureContext: context, requestCert, rejectUnauthorized: false, ...(sni !== undefined ? { SNICallback: sni } : {}) });
}

/** Chooses the context for the name in the ClientHello; no context keeps the default one. */
export type ServerNameCallback = (servername: string, cb: (err: Error | null, ctx?: tls.SecureContext) => void) => void;

/**
 * Resolves once the handshake is done: null when it completed, else why it
 * did not (an error, the timeout, the client leaving, or `signal`). A client
 * that leaves just as its handshake ends may be seen only as the end of its
 * input, with neither 'secure' nor 'close' ever following (the socket is
 * half-open): that counts as leaving, or the connection would keep its slot
 * until the timeout.
 */
export function handshake(secure: tls.TLSSocket, timeoutMs: number, signal?: AbortSignal): Promise<Error | null> {
  return new Promise((resolve) => {
    const finish = (why: Error | null): void => {
      clearTimeout(timer);
      secure.off('secure', onSecure);
      secure.off('error', onError);
      secure.off('close', onClose);
      secure.off('end', onClose);
      signal?.removeEventListener('abort', onAbort);
      resolve(why);
    };
    const onSecure = (): void => finish(null);
    const onError = (e: Error): void => finish(e);
    const onClose = (): void => finish(new Error('the connection closed during the TLS handshake'));
    const onAbort = (): void => finish(new Error('the connection closed'));
    const timer = setTimeout(() => finish(new Error('TLS handshake timeout')), timeoutMs);
    secure.once('secure', onSecure);
    secure.once('error', onError);
    secure.once('close', onClose);
    secure.once('end', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Whether the client presented a certificate that verified against the configured CA. */
export function peerAuthorized(secure: tls.TLSSocket, requestCert: boolean): boolean {
  // Node sets `authorized` only for sockets a tls.Server made; for these ask the handle directly.
  const handle = (secure as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
  return requestCert && handle?.verifyError?.() === null;
}
