import { execFile, execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { generate } from 'selfsigned';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poplarArgs, ROOT, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacksRoot } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

const run = promisify(execFile);

/**
 * docs/deployment.md, done as it says: every block marked `<!-- test: run -->`
 * is run with bash in order, every `<!-- test: file PATH [MODE] -->` block is
 * written to PATH. Paths are moved under a scratch directory and ports to free
 * ones; `systemctl reload` becomes the SIGHUP it sends (ExecReload in
 * contrib/poplar.service). Then the server is started from the configuration
 * the document wrote, a user logs in over TLS with the certificate the deploy
 * hook installed, Prometheus's target answers, and a renewal through the hook
 * is served without a restart.
 */

interface Block {
  kind: 'run' | 'file';
  path?: string;
  mode?: number;
  text: string;
}

function blocks(md: string): Block[] {
  const out: Block[] = [];
  const re = /<!-- test: (run|file (\S+)(?: (\d{4}))?) -->\n```[a-z]*\n([\s\S]*?)```/g;
  for (let m = re.exec(md); m !== null; m = re.exec(md)) {
    out.push(m[1] === 'run' ? { kind: 'run', text: m[4]! } : { kind: 'file', path: m[2]!, mode: m[3] !== undefined ? parseInt(m[3], 8) : 0o644, text: m[4]! });
  }
  return out;
}

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function certificate(host: string): Promise<{ cert: string; key: string }> {
  const now = Date.now();
  const pems = await generate([{ name: 'commonName', value: host }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now - 60_000),
    notAfterDate: new Date(now + 90 * 86_400_000),
    extensions: [{ name: 'basicConstraints', cA: false }, { name: 'subjectAltName', altNames: [{ type: 2, value: host }] }],
  });
  return { cert: pems.cert, key: pems.private };
}

async function fingerprint(port: number): Promise<string> {
  const s = tls.connect({ host: '127.0.0.1', port, servername: 'pop.example.org', rejectUnauthorized: false });
  await once(s, 'secureConnect');
  const fp = s.getPeerCertificate().fingerprint256;
  s.destroy();
  return fp;
}

const userExists = (name: string): boolean => {
  try {
    execFileSync('id', [name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

describe.skipIf(lacksRoot())('docs/deployment.md', () => {
  let P: string;
  let doc: Block[];
  let rewrite: (s: string) => string;
  let createdUser = false;
  let srv: ServeProcess | undefined;
  const ports = { pop3: 0, pop3s: 0, lmtp: 0, admin: 0 };
  const lineage = (): string => path.join(P, 'etc/letsencrypt/live/pop.example.org');

  const bash = async (script: string): Promise<string> => {
    try {
      const r = await run('bash', ['-euo', 'pipefail', '-c', script], { env: { ...process.env, PATH: `${P}/bin:${process.env['PATH'] ?? ''}` }, cwd: P });
      return r.stdout;
    } catch (e) {
      const x = e as { stdout?: string; stderr?: string; message: string };
      throw new Error(`${script}\nfailed: ${x.message}\n${x.stdout ?? ''}\n${x.stderr ?? ''}`);
    }
  };
  const apply = async (b: Block): Promise<string> => {
    const text = rewrite(b.text);
    if (b.kind === 'run') return bash(text);
    const file = rewrite(b.path!);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, text, { mode: b.mode });
    await fs.chmod(file, b.mode!);
    return '';
  };
  const installCertificate = async (c: { cert: string; key: string }): Promise<string> => {
    await fs.mkdir(lineage(), { recursive: true, mode: 0o700 });
    await fs.writeFile(path.join(lineage(), 'fullchain.pem'), c.cert);
    await fs.writeFile(path.join(lineage(), 'privkey.pem'), c.key, { mode: 0o600 });
    return new X509Certificate(c.cert).fingerprint256;
  };

  beforeAll(async () => {
    P = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-deploy-'));
    await fs.chmod(P, 0o755);
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    await fs.mkdir(path.join(P, 'bin'));
    await fs.mkdir(path.join(P, 'run'));
    // What a real system has already: /etc and /var/lib, open to every account.
    await fs.mkdir(path.join(P, 'etc'), { mode: 0o755 });
    await fs.mkdir(path.join(P, 'var/lib'), { recursive: true, mode: 0o755 });
    // `poplar` on PATH: this checkout's source.
    const args = poplarArgs([]).map((a) => `'${a}'`).join(' ');
    await fs.writeFile(path.join(P, 'bin/poplar'), `#!/bin/sh\nexec '${process.execPath}' ${args} "$@"\n`, { mode: 0o755 });
    const sighup = `if [ -s ${P}/run/poplar.pid ]; then kill -HUP "$(cat ${P}/run/poplar.pid)"; fi`;
    createdUser = !userExists('poplar');
    rewrite = (s) =>
      s
        .replaceAll('/etc/poplar', `${P}/etc/poplar`)
        .replaceAll('/var/lib/poplar', `${P}/var/lib/poplar`)
        .replaceAll('/etc/letsencrypt', `${P}/etc/letsencrypt`)
        .replaceAll('/etc/prometheus', `${P}/etc/prometheus`)
        .replaceAll('0.0.0.0:110"', `127.0.0.1:${ports.pop3}"`)
        .replaceAll('0.0.0.0:995"', `127.0.0.1:${ports.pop3s}"`)
        .replaceAll('127.0.0.1:24"', `127.0.0.1:${ports.lmtp}"`)
        .replaceAll('127.0.0.1:9110"', `127.0.0.1:${ports.admin}"`)
        .replaceAll('systemctl try-reload-or-restart poplar', sighup)
        .replaceAll('systemctl reload poplar', sighup)
        // The account may be there from an earlier run; the command is the document's otherwise.
        .replace(/^useradd .*$/m, (line) => (createdUser ? line : ': account poplar exists'));
    doc = blocks(await fs.readFile(path.join(ROOT, 'docs/deployment.md'), 'utf8'));
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    if (createdUser) await run('userdel', ['poplar']).catch(() => undefined);
    await fs.rm(P, { recursive: true, force: true });
  });

  it('has the blocks this test runs', () => {
    expect(doc.map((b) => b.kind)).toEqual(['run', 'file', 'run', 'file', 'run', 'file', 'run']);
    expect(doc.filter((b) => b.kind === 'file').map((b) => b.path)).toEqual(['/etc/poplar/poplar.toml', '/etc/letsencrypt/renewal-hooks/deploy/poplar', '/etc/prometheus/prometheus.yml']);
  });

  it('install steps, configuration, users, certificate and deploy hook: poplar check passes; the server serves it; a renewal is reloaded', async () => {
    const first = await installCertificate(await certificate('pop.example.org'));
    // Steps 2 to 4, and the scrape configuration of step 8, in the document's order.
    let checked = '';
    for (const b of doc.slice(0, -1)) checked += await apply(b);
    expect(checked).toMatch(/^ok: .*poplar\.toml/m);
    expect(checked).not.toMatch(/^problem:/m);

    // The modes step 2 promises.
    const mode = async (p: string): Promise<string> => ((await fs.stat(path.join(P, p))).mode & 0o777).toString(8);
    expect(await mode('etc/poplar/tls/privkey.pem')).toBe('640');
    expect(await mode('etc/poplar/users')).toBe('640');
    expect(await mode('var/lib/poplar')).toBe('700');

    // The service as systemd would start it (here: bound as root, then switched to `poplar`).
    srv = await startServe(['--config', path.join(P, 'etc/poplar/poplar.toml')]);
    await fs.writeFile(path.join(P, 'run/poplar.pid'), String(srv.child.pid));
    expect(srv.stderr()).toMatch(/"user":"poplar".*switched to the service user/);
    expect(srv.tlsPort).toBe(ports.pop3s);
    expect(await fingerprint(ports.pop3s)).toBe(first);
    const w = await Wire.connect(ports.pop3s, { tls: true, servername: 'pop.example.org' });
    expect(await w.line()).toMatch(/^\+OK/);
    await w.login('alice', 'correct horse battery');
    expect(await w.cmd('STAT')).toBe('+OK 0 0');

    // Prometheus's target (the yml the document wrote) answers with Poplar's metrics.
    const yml = await fs.readFile(path.join(P, 'etc/prometheus/prometheus.yml'), 'utf8');
    const target = /targets: \["([^"]+)"\]/.exec(yml)![1]!;
    expect(target).toBe(`127.0.0.1:${ports.admin}`);
    const metrics = await fetch(`http://${target}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/^poplar_connections_total/m);

    // A renewal: certbot writes the new files and runs the hook; the server reloads, the open session goes on.
    const renewed = await installCertificate(await certificate('pop.example.org'));
    const hook = rewrite(doc[4]!.text.split('\n').find((l) => l.startsWith('RENEWED_LINEAGE='))!);
    await bash(hook);
    let now = first;
    for (let i = 0; i < 100 && now !== renewed; i++) {
      await new Promise((r) => setTimeout(r, 100));
      now = await fingerprint(ports.pop3s);
    }
    expect(now).toBe(renewed);
    expect(await w.cmd('NOOP')).toBe('+OK');

    // "After a change": check, then reload.
    const before = srv.stderr().split('\n').filter((l) => l.includes('configuration reloaded')).length;
    expect(await apply(doc[doc.length - 1]!)).toMatch(/^ok: /m);
    for (let i = 0; i < 100 && srv.stderr().split('\n').filter((l) => l.includes('configuration reloaded')).length === before; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(srv.stderr().split('\n').filter((l) => l.includes('configuration reloaded')).length).toBe(before + 1);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await srv.stop('SIGTERM')).toBe(0);
  }, 120_000);
});
