import { execFileSync } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import net from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { readTlsFiles } from '../../src/config/tls-material.js';
import { silentLogger } from '../../src/observability/log.js';
import { Pop3Server } from '../../src/server/server.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { lacks } from '../helpers/peers.js';
import { testCertificate, testSettings } from '../helpers/server.js';

/** SASL EXTERNAL with a client certificate, on a listener configured to ask for one. */
describe.skipIf(lacks('openssl'))('client certificates and SASL EXTERNAL', () => {
  let dir: string;
  let server: Pop3Server;
  let plainPort: number;
  let tlsPort: number;
  const file = (n: string): string => path.join(dir, n);
  const openssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-ext-'));
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
    openssl('req', '-x509', ...ec, '-keyout', file('ca.key'), '-out', file('ca.pem'), '-subj', '/CN=Test CA', '-days', '2');
    for (const who of ['alice', 'mallory']) {
      openssl('req', ...ec, '-keyout', file(`${who}.key`), '-out', file(`${who}.csr`), '-subj', `/CN=${who}`);
    }
    openssl('x509', '-req', '-in', file('alice.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-out', file('alice.pem'), '-days', '2');
    // mallory signs her own certificate: not issued by the configured CA.
    openssl('x509', '-req', '-in', file('mallory.csr'), '-signkey', file('mallory.key'), '-out', file('mallory.pem'), '-days', '2');
    await fs.writeFile(file('users'), 'alice:{PLAIN}secret\n');
    const { certFile, keyFile } = await testCertificate();
    server = new Pop3Server({
      settings: testSettings(),
      authenticator: new PasswdFileAuthenticator(file('users')),
      store: new MaildirStore({ root: file('mail'), logger: silentLogger(), fsync: false }),
      logger: silentLogger(),
      tls: { ...(await readTlsFiles(certFile, keyFile)), clientCa: readFileSync(file('ca.pem')) },
    });
    const bound = await server.listen([
      { host: '127.0.0.1', port: 0, tls: false },
      { host: '127.0.0.1', port: 0, tls: true },
    ]);
    plainPort = bound[0]!.port;
    tlsPort = bound[1]!.port;
  });
  afterAll(async () => {
    await server.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function session(who: string | null, stls = false): Promise<(line: string) => Promise<string>> {
    const cert = who ? { cert: readFileSync(file(`${who}.pem`)), key: readFileSync(file(`${who}.key`)) } : {};
    let sock: tls.TLSSocket;
    let buf = '';
    if (stls) {
      const raw = net.connect(plainPort, '127.0.0.1');
      await once(raw, 'connect');
      raw.write('STLS\r\n');
      let got = '';
      while (!/\r\n.*\r\n/s.test(got)) got += ((await once(raw, 'data')) as [Buffer])[0].toString();
      sock = tls.connect({ socket: raw, rejectUnauthorized: false, ...cert });
    } else {
      sock = tls.connect({ host: '127.0.0.1', port: tlsPort, rejectUnauthorized: false, ...cert });
    }
    await once(sock, 'secureConnect');
    sock.on('data', (d: Buffer) => (buf += d.toString()));
    const read = async (): Promise<string> => {
      for (let i = 0; i < 200 && !buf.includes('\r\n'); i++) await new Promise((r) => setTimeout(r, 10));
      const i = buf.indexOf('\r\n');
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      return line;
    };
    if (!stls) await read(); // greeting
    return async (line: string) => {
      if (line === 'CAPA') {
        sock.write('CAPA\r\n');
        const lines: string[] = [];
        for (let l = await read(); l !== '.'; l = await read()) lines.push(l);
        return lines.join('\n');
      }
      sock.write(line + '\r\n');
      return read();
    };
  }

  it('offers EXTERNAL only to a client with a valid certificate, and logs it in as the certificate names', async () => {
    const cmd = await session('alice');
    expect(await cmd('CAPA')).toMatch(/^SASL EXTERNAL PLAIN LOGIN$/m);
    expect(await cmd('AUTH EXTERNAL =')).toMatch(/^\+OK/);
    expect(await cmd('STAT')).toBe('+OK 0 0');
    expect(await cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('works after STLS too, and an authzid naming someone else is refused', async () => {
    const cmd = await session('alice', true);
    expect(await cmd('CAPA')).toMatch(/^SASL EXTERNAL/m);
    expect(await cmd(`AUTH EXTERNAL ${Buffer.from('bob').toString('base64')}`)).toMatch(/^-ERR \[AUTH\]/);
    expect(await cmd(`AUTH EXTERNAL ${Buffer.from('alice').toString('base64')}`)).toMatch(/^\+OK/);
    expect(await cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('a certificate from another issuer, or none, gets no EXTERNAL; passwords still work', async () => {
    for (const who of ['mallory', null]) {
      const cmd = await session(who);
      const capa = await cmd('CAPA');
      expect(capa).not.toMatch(/EXTERNAL/);
      expect(await cmd('AUTH EXTERNAL =')).toMatch(/^-ERR/);
      expect(await cmd(`AUTH PLAIN ${Buffer.from('\0alice\0secret').toString('base64')}`)).toMatch(/^\+OK/);
      expect(await cmd('QUIT')).toMatch(/^\+OK/);
    }
  });
});
