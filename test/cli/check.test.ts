import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generate } from 'selfsigned';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkConfiguration, report } from '../../src/cli/check.js';
import { runPoplar, type RunResult } from '../helpers/cli.js';
import { lacksPostgres, lacksRoot, POSTGRES_CONNECTION } from '../helpers/peers.js';

/**
 * `poplar check`: exit 0 when `poplar serve` would start safely, 78 with one
 * line per problem otherwise (docs/deployment.md runs it after every step).
 */

const DAY = 86_400_000;

async function certificate(host: string, from: number, to: number, ca?: { key: string; cert: string }, isCa = false): Promise<{ cert: string; key: string }> {
  const now = Date.now();
  const pems = await generate([{ name: 'commonName', value: host }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now + from * DAY),
    notAfterDate: new Date(now + to * DAY),
    extensions: isCa
      ? [{ name: 'basicConstraints', cA: true }, { name: 'keyUsage', keyCertSign: true, digitalSignature: true }]
      : [{ name: 'basicConstraints', cA: false }, { name: 'subjectAltName', altNames: [{ type: 2, value: host }] }],
    ...(ca !== undefined ? { ca } : {}),
  });
  return { cert: pems.cert, key: pems.private };
}

let dir: string;
const write = async (name: string, text: string, mode = 0o600): Promise<string> => {
  const p = path.join(dir, name);
  await fs.writeFile(p, text, { mode });
  await fs.chmod(p, mode);
  return p;
};
/** The command itself, as a process. */
const checkCli = (config: string): Promise<RunResult> => runPoplar(['check', '--config', config]);
/** The same check in this process (a process per case would make this file slow). */
const check = async (config: string): Promise<{ code: number; stdout: string }> => {
  const { lines, code } = report(await checkConfiguration({ config }), config);
  return { code, stdout: lines.map((l) => `${l}\n`).join('') };
};
const lines = (r: { stdout: string }): string[] => r.stdout.trim().split('\n');
const asRoot = process.getuid?.() === 0;

/** A configuration that passes: certificate and key, users file, data directory, all private. */
async function goodConfig(name: string, extra = '', auth = `users = "${dir}/users"`): Promise<string> {
  return write(
    name,
    [
      `data_dir = "${dir}/data"`,
      '[server]',
      ...(asRoot ? ['allow_root = true'] : []),
      'hostname = "pop.example.org"',
      extra,
      '[tls]',
      `cert = "${dir}/good.pem"`,
      `key = "${dir}/good.key"`,
      '[auth]',
      auth,
      '',
    ].join('\n'),
    0o644,
  );
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-check-'));
  await fs.chmod(dir, 0o755);
  await fs.mkdir(path.join(dir, 'data', 'mail'), { recursive: true, mode: 0o700 });
  const good = await certificate('pop.example.org', -1, 90);
  await write('good.pem', good.cert, 0o644);
  await write('good.key', good.key);
  await write('users', 'alice:{PLAIN}secret\n');
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('poplar check', () => {
  it('passes a sound configuration: exit 0 and one ok line', async () => {
    const r = await checkCli(await goodConfig('good.toml'));
    expect(r.stdout).toMatch(/^ok: /m);
    expect(r.stdout).not.toMatch(/^problem:/m);
    expect(r.code).toBe(0);
  });

  it('an invalid setting: exit 78, one line naming it', async () => {
    const r = await checkCli(await goodConfig('bad.toml', 'max_connections = -1'));
    expect(r.code).toBe(78);
    expect(lines(r)).toEqual([expect.stringMatching(/^problem: invalid configuration: server\.max_connections/)]);
  });

  it('flags a private key and a users file every user can read', async () => {
    await fs.chmod(path.join(dir, 'good.key'), 0o644);
    await fs.chmod(path.join(dir, 'users'), 0o644);
    try {
      const r = await check(await goodConfig('good.toml'));
      expect(r.code).toBe(78);
      const problems = lines(r).filter((l) => l.startsWith('problem:'));
      expect(problems).toHaveLength(2);
      expect(problems[0]).toContain(`${dir}/good.key is readable by every user`);
      expect(problems[1]).toContain(`${dir}/users is readable by every user`);
    } finally {
      await fs.chmod(path.join(dir, 'good.key'), 0o600);
      await fs.chmod(path.join(dir, 'users'), 0o600);
    }
  });

  it('a key that does not match, an expired certificate, one about to expire, a broken chain, a certificate for another name', async () => {
    const other = await certificate('pop.example.org', -1, 90);
    const expired = await certificate('old.example.org', -100, -1);
    const soon = await certificate('soon.example.org', -80, 10);
    const ca = await certificate('Poplar test CA', -1, 365, undefined, true);
    const strangerCa = await certificate('Another CA', -1, 365, undefined, true);
    const leaf = await certificate('chain.example.org', -1, 90, ca);
    await write('other.key', other.key);
    await write('expired.pem', expired.cert, 0o644);
    await write('expired.key', expired.key);
    await write('soon.pem', soon.cert, 0o644);
    await write('soon.key', soon.key);
    await write('chain-good.pem', leaf.cert + ca.cert, 0o644);
    await write('chain-bad.pem', leaf.cert + strangerCa.cert, 0o644);
    await write('leaf.key', leaf.key);
    const sni = (name: string, cert: string, key: string): string => `[[tls.sni]]\nname = "${name}"\ncert = "${dir}/${cert}"\nkey = "${dir}/${key}"\n`;

    // Only an expiry within 14 days: a warning, still exit 0. A good chain passes.
    const warnBase = await fs.readFile(await goodConfig('warn.toml'), 'utf8');
    const warn = await check(await write('warn.toml', warnBase + sni('soon.example.org', 'soon.pem', 'soon.key') + sni('chain.example.org', 'chain-good.pem', 'leaf.key'), 0o644));
    expect(lines(warn)).toEqual([expect.stringMatching(/^warning: tls\.sni soon\.example\.org: the certificate in .*soon\.pem expires in (9|10) days/), expect.stringMatching(/^ok: /)]);
    expect(warn.code).toBe(0);

    const base = await fs.readFile(await goodConfig('all.toml'), 'utf8');
    const r = await check(
      await write(
        'all.toml',
        base.replace(`${dir}/good.key`, `${dir}/other.key`) +
          sni('old.example.org', 'expired.pem', 'expired.key') +
          sni('chain.example.org', 'chain-bad.pem', 'leaf.key') +
          sni('*.example.net', 'good.pem', 'good.key'),
        0o644,
      ),
    );
    expect(r.code).toBe(78);
    const out = lines(r);
    expect(out).toContain(`problem: tls: the key ${dir}/other.key does not match the certificate ${dir}/good.pem`);
    expect(out).toContainEqual(expect.stringMatching(/^problem: tls\.sni old\.example\.org: the certificate in .*expired\.pem expired on /));
    expect(out).toContain(`problem: tls.sni chain.example.org: in ${dir}/chain-bad.pem, certificate 1 is not signed by certificate 2 (the chain is out of order or mixed up)`);
    expect(out).toContain(`warning: tls.sni *.example.net: the certificate in ${dir}/good.pem is not for *.example.net (clients will reject it)`);
    expect(out.filter((l) => l.startsWith('problem:'))).toHaveLength(3);
  });

  describe.skipIf(lacksRoot())('as root, for the service user', () => {
    it('a data directory the service user cannot write, a users file it cannot read, a key only root reads (a warning)', async () => {
      const config = (await fs.readFile(await goodConfig('svc.toml'), 'utf8')).replace('allow_root = true', 'user = "nobody"');
      const r = await check(await write('svc.toml', config, 0o644));
      expect(r.code).toBe(78);
      const out = lines(r);
      expect(out).toContain(`problem: data_dir: user nobody cannot write ${dir}/data (no read/write/search permission)`);
      expect(out).toContain(`problem: auth.users: user nobody cannot read ${dir}/users (no read permission)`);
      expect(out).toContainEqual(expect.stringMatching(/^warning: tls: user nobody cannot read the key .*good\.key .*SIGHUP cannot reload it/));

      // Handed to the service user (as docs/deployment.md does): no problem left.
      const id = (flag: string): number => Number(execFileSync('id', [flag, 'nobody'], { encoding: 'utf8' }).trim());
      await fs.chown(path.join(dir, 'data'), id('-u'), 0);
      await fs.chown(path.join(dir, 'data', 'mail'), id('-u'), 0);
      await fs.chown(path.join(dir, 'users'), 0, id('-g'));
      await fs.chmod(path.join(dir, 'users'), 0o640);
      try {
        const ok = await check(path.join(dir, 'svc.toml'));
        expect(ok.stdout).not.toMatch(/^problem:/m);
        expect(ok.code).toBe(0);
      } finally {
        await fs.chown(path.join(dir, 'data'), 0, 0);
        await fs.chown(path.join(dir, 'data', 'mail'), 0, 0);
        await fs.chown(path.join(dir, 'users'), 0, 0);
        await fs.chmod(path.join(dir, 'users'), 0o600);
      }
    });
  });
});

describe('poplar check and PostgreSQL', async () => {
  const down = await lacksPostgres();
  it('an unreachable database is a problem', async () => {
    const r = await check(await goodConfig('pg-down.toml', '', 'type = "postgres"\n[auth.postgres]\nurl = "postgres://postgres@127.0.0.1:1/test"\nconnect_timeout = 2'));
    expect(r.code).toBe(78);
    expect(lines(r)).toContainEqual(expect.stringMatching(/^problem: auth\.postgres: cannot reach PostgreSQL: .*ECONNREFUSED/));
  });
  it.skipIf(down)('a reachable one passes', async () => {
    const { host, port, user, database } = POSTGRES_CONNECTION;
    const r = await check(await goodConfig('pg-up.toml', '', `type = "postgres"\n[auth.postgres]\nurl = "postgres://${user}@${host}:${port}/${database}"`));
    expect(r.stdout).not.toMatch(/^problem:/m);
    expect(r.code).toBe(0);
  });
});
