/**
 * A real local OAuth 2.0 key server for the bearer-token tests: a JWKS
 * document served over HTTP on 127.0.0.1, and a signer for access tokens
 * whose key the JWKS publishes (plus one it does not, for bad signatures).
 */
import { once } from 'node:events';
import http from 'node:http';
import type net from 'node:net';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWTPayload } from 'jose';

export const ISSUER = 'https://issuer.poplar.test';
export const AUDIENCE = 'pop3.poplar.test';

export interface TokenOptions {
  /** Claims; default `email` = the user. */
  claims?: JWTPayload;
  issuer?: string;
  audience?: string;
  /** Seconds from now; negative for an expired token. Default 600. */
  expiresIn?: number;
  /** Sign with a key the JWKS does not hold (same `kid`). */
  foreignKey?: boolean;
}

export interface JwksServer {
  url: string;
  /** JWKS requests served so far. */
  readonly requests: number;
  token(user: string, o?: TokenOptions): Promise<string>;
  close(): Promise<void>;
}

export async function startJwks(): Promise<JwksServer> {
  const kid = 'poplar-test-1';
  const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
  const foreign: { privateKey: CryptoKey } = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' };
  const body = JSON.stringify({ keys: [jwk] });
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    if (req.url !== '/jwks.json') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/jwks.json`,
    get requests() {
      return requests;
    },
    async token(user, o = {}) {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ email: user, ...o.claims })
        .setProtectedHeader({ alg: 'RS256', kid, typ: 'at+jwt' })
        .setIssuer(o.issuer ?? ISSUER)
        .setAudience(o.audience ?? AUDIENCE)
        .setSubject(`sub-${user}`)
        .setIssuedAt(now - 5)
        .setExpirationTime(now + (o.expiresIn ?? 600))
        .sign(o.foreignKey ? foreign.privateKey : privateKey);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
