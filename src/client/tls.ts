/**
 * TLS for the client: implicit TLS and the STLS upgrade share one handshake
 * routine with one verification policy: the certificate and host name are
 * verified before anything else is sent (RFC 2595 §2.4).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { ChannelBindingType } from '../protocol/sasl/scram.js';
import { Pop3TlsError } from './errors.js';

export interface TlsVerification {
  /** Host connected to; the host name checked when `servername` is not given. */
  readonly host: string;
  /** Trust anchors replacing Node's default CA list (PEM). */
  readonly ca?: string | Buffer | undefined;
  /** Normalized pin (64 upper-case hex digits) from normalizeFingerprint(); replaces CA and host checks. */
  readonly pin?: string | undefined;
  /** No verification at all. */
  readonly insecure?: boolean | undefined;
  /** SNI and the name the certificate must match (default: `host` unless it is an IP address). */
  readonly servername?: string | undefined;
}

/** SHA-256 fingerprint, hex with or without colons, any case → 64 upper-case hex digits. Throws RangeError. */
export function normalizeFingerprint(fp: string): string {
  const hex = fp.replace(/:/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) throw new RangeError('fingerprint must be a SHA-256 digest in hex (64 digits, colons optional)');
  return hex;
}

/**
 * Handshake over a fresh TCP connection (`socket` undefined) or an existing
 * one (STLS). Resolves once the peer is verified; rejects with Pop3TlsError.
 * The caller bounds the wait and destroys the socket on timeout or abort.
 */
export function tlsHandshake(
  v: TlsVerification,
  target: { readonly socket: net.Socket } | { readonly port: number },
  onSocket: (s: tls.TLSSocket) => void,
): Promise<tls.TLSSocket> {
  const sni = v.servername ?? (net.isIP(v.host) === 0 ? v.host : undefined);
  const verifyChain = v.pin === undefined && v.insecure !== true;
  const options: tls.ConnectionOptions = {
    ...('socket' in target ? { socket: target.socket } : { host: v.host, port: target.port }),
    ...(sni !== undefined ? { servername: sni } : {}),
    ...(v.ca !== undefined ? { ca: v.ca } : {}),
    minVersion: 'TLSv1.2',
    rejectUnauthorized: verifyChain,
    // With a servername given the certificate must match it, even when the host is an IP address.
    checkServerIdentity: (_host, cert) => tls.checkServerIdentity(v.servername ?? v.host, cert),
  };
  return new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect(options);
    onSocket(s);
    const fail = (e: unknown): void => {
      s.destroy();
      reject(e instanceof Pop3TlsError ? e : new Pop3TlsError(`TLS handshake with ${v.host} failed: ${(e as Error).message}`, { cause: e }));
    };
    const onClose = (): void => fail(new Error('connection closed during the handshake'));
    s.once('error', fail);
    s.once('close', onClose);
    s.once('secureConnect', () => {
      // The 'error' listener stays: until the connection attaches its own, an error must not go unhandled.
      s.removeListener('close', onClose);
      try {
        if (v.pin !== undefined) {
          const got = s.getPeerCertificate().fingerprint256?.replace(/:/g, '').toUpperCase();
          if (got !== v.pin) throw new Pop3TlsError(`certificate of ${v.host} does not match the pinned fingerprint (got ${got ?? 'none'})`);
        }
        s.disableRenegotiation();
      } catch (e) {
        fail(e);
        return;
      }
      resolve(s);
    });
  });
}

/** Channel-binding data of a TLS connection (RFC 9266 on TLS 1.3, RFC 5929 tls-unique on TLS 1.2). */
export function channelBindingOf(s: tls.TLSSocket): { type: ChannelBindingType; data: Buffer } | undefined {
  const protocol = s.getProtocol();
  if (protocol === 'TLSv1.3') {
    return { type: 'tls-exporter', data: s.exportKeyingMaterial(32, 'EXPORTER-Channel-Binding', Buffer.alloc(0)) };
  }
  if (protocol === 'TLSv1.2') {
    // tls-unique is the first Finished message of the handshake: the client's on a full handshake.
    const data = s.isSessionReused() ? s.getPeerFinished() : s.getFinished();
    return data !== undefined ? { type: 'tls-unique', data } : undefined;
  }
  return undefined;
}
