/**
 * `poplar serve` with an [autoconfig] section: the listener comes up with
 * the POP3 ones, and SIGHUP renews what it advertises (the mechanisms) and
 * the certificate of its HTTPS listener.
 */
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureSelfSignedCertificate } from '../../src/config/tls-material.js';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { request } from './helpers.js';

async function fingerprint(port: number): Promise<string> {
  const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false });
  await once(s, 'secureConnect');
  const fp = s.getPeerCertificate().fingerprint256;
  s.destroy();
  return fp;
}

const config = (mechanisms: string): string => `
log_format = "json"
[server]
hostname = "pop.example.com"
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
${mechanisms}
[tls]
cert = "cert.pem"
key = "key.pem"
[auth]
users = "users"
[autoconfig]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
domains = ["example.com"]
pop3s_port = 995
pop3_port = 110
smtp_host = "smtp.example.com"
`;

describe('poplar serve with [autoconfig]', () => {
  let dir: string;
  let srv: ServeProcess;
  let httpPort: number;
  let httpsPort: number;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-autoconfig-serve-'));
    await ensureSelfSignedCertificate(path.join(dir, 'a.pem'), path.join(dir, 'a.key'), 'first.example');
    await ensureSelfSignedCertificate(path.join(dir, 'b.pem'), path.join(dir, 'b.key'), 'second.example');
    await fs.copyFile(path.join(dir, 'a.pem'), path.join(dir, 'cert.pem'));
    await fs.copyFile(path.join(dir, 'a.key'), path.join(dir, 'key.pem'));
    await fs.writeFile(path.join(dir, 'users'), 'alice@example.com:{PLAIN}secret\n', { mode: 0o600 });
    await fs.writeFile(path.join(dir, 'poplar.toml'), config(''));
    srv = await startServe(['--config', path.join(dir, 'poplar.toml'), '--data-dir', dir]);
    const bound = srv
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"autoconfig listening"'))
      .map((l) => JSON.parse(l) as { autoconfig: string; tls: boolean });
    httpPort = Number(bound.find((b) => !b.tls)!.autoconfig.split(':').pop());
    httpsPort = Number(bound.find((b) => b.tls)!.autoconfig.split(':').pop());
  });
  afterAll(async () => {
    await srv?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  const auth = async (): Promise<string[]> => {
    const r = await request(httpPort, '/mail/config-v1.1.xml?emailaddress=alice%40example.com');
    expect(r.status).toBe(200);
    const first = /<incomingServer[^>]*>[\s\S]*?<\/incomingServer>/.exec(r.body)![0];
    return [...first.matchAll(/<authentication>([^<]*)<\/authentication>/g)].map((m) => m[1]!);
  };

  it('serves over HTTP and HTTPS next to the POP3 listeners', async () => {
    expect(srv.plainPort).toBeGreaterThan(0);
    expect(await auth()).toEqual(['password-cleartext']);
    const r = await request(httpsPort, '/autodiscover/autodiscover.xml', {
      method: 'POST',
      ca: await fs.readFile(path.join(dir, 'a.pem')),
      headers: { host: 'localhost' },
      body: '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>alice@example.com</EMailAddress></Request></Autodiscover>',
    });
    expect(r.status).toBe(200);
    expect(r.body).toContain('<Port>995</Port>');
  });

  it('SIGHUP: the new mechanisms are advertised and the HTTPS listener has the new certificate', async () => {
    const before = await fingerprint(httpsPort);
    await fs.writeFile(path.join(dir, 'poplar.toml'), config('sasl_mechanisms = ["CRAM-MD5"]'));
    await fs.copyFile(path.join(dir, 'b.pem'), path.join(dir, 'cert.pem'));
    await fs.copyFile(path.join(dir, 'b.key'), path.join(dir, 'key.pem'));
    srv.child.kill('SIGHUP');
    let seen = await auth();
    for (let i = 0; i < 100 && seen[0] !== 'password-encrypted'; i++) {
      await new Promise((r) => setTimeout(r, 100));
      seen = await auth();
    }
    expect(seen).toEqual(['password-encrypted', 'password-cleartext']);
    expect(await fingerprint(httpsPort)).not.toBe(before);
  });

  it('SIGTERM closes it with the rest (exit 0)', async () => {
    expect(await srv.stop('SIGTERM')).toBe(0);
    await expect(request(httpPort, '/')).rejects.toThrow();
  });
});
