import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureSelfSignedCertificate } from '../../src/config/tls-material.js';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';

async function fingerprint(port: number): Promise<string> {
  const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false });
  await once(s, 'secureConnect');
  const fp = s.getPeerCertificate().fingerprint256;
  s.destroy();
  return fp;
}

describe('SIGHUP', () => {
  let dir: string;
  let srv: ServeProcess;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-hup-'));
    await ensureSelfSignedCertificate(path.join(dir, 'a.pem'), path.join(dir, 'a.key'), 'first.example');
    await ensureSelfSignedCertificate(path.join(dir, 'b.pem'), path.join(dir, 'b.key'), 'second.example');
    await fs.copyFile(path.join(dir, 'a.pem'), path.join(dir, 'cert.pem'));
    await fs.copyFile(path.join(dir, 'a.key'), path.join(dir, 'key.pem'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    srv = await startServe([
      '--data-dir', dir, '--users', path.join(dir, 'users'),
      '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem'),
      '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0',
    ]);
  });
  afterAll(async () => {
    await srv?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('re-reads the certificate and key without dropping sessions; a broken file keeps the old one', async () => {
    const before = await fingerprint(srv.tlsPort);
    const open = await Wire.connect(srv.tlsPort, { tls: true });
    await open.line();
    await open.login('alice', 'secret');

    await fs.copyFile(path.join(dir, 'b.pem'), path.join(dir, 'cert.pem'));
    await fs.copyFile(path.join(dir, 'b.key'), path.join(dir, 'key.pem'));
    srv.child.kill('SIGHUP');
    let after = before;
    for (let i = 0; i < 50 && after === before; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = await fingerprint(srv.tlsPort);
    }
    expect(after).not.toBe(before);
    // The session that was open across the reload still works.
    expect(await open.cmd('STAT')).toBe('+OK 0 0');

    // A broken certificate: logged, the previous one stays in use, nothing crashes.
    await fs.writeFile(path.join(dir, 'cert.pem'), 'not a certificate');
    srv.child.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 500));
    expect(await fingerprint(srv.tlsPort)).toBe(after);
    expect(srv.stderr()).toMatch(/TLS reload failed/);
    expect(await open.cmd('NOOP')).toBe('+OK');
    expect(await open.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('SIGTERM stops gracefully with exit code 0', async () => {
    expect(await srv.stop('SIGTERM')).toBe(0);
  });
});
