import { execFile } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { lacks, missingAtRun, type Peer } from '../helpers/peers.js';
import { putMessage } from '../helpers/server.js';

const exec = promisify(execFile);

/**
 * Cleartext logins from a client that is not on loopback. The test makes a
 * network namespace with a veth pair (10.x addresses): `poplar serve` listens
 * on the host end, Python's poplib connects from inside the namespace, so the
 * server sees a 10.x client address. With the default plaintext_auth =
 * "loopback", USER and AUTH PLAIN are refused before any credential is looked
 * at, CAPA offers neither, and after STLS both work.
 */
const REFUSED = 'Cleartext logins are not allowed without TLS; use STLS or port 995.';

/** The client: one plaintext session (refused logins, then STLS and a login), one AUTH PLAIN after STLS. */
const CLIENT = String.raw`
import base64, json, poplib, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
def attempt(f):
    try:
        r = f()
    except poplib.error_proto as e:
        r = e.args[0]
    return r.decode('latin1') if isinstance(r, bytes) else r
plain = 'AUTH PLAIN ' + base64.b64encode(b'\0alice\0secret').decode()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
p = poplib.POP3(host, port, timeout=20)
capa = p.capa()
out['capa'] = sorted(capa)
out['sasl'] = capa.get('SASL', [])
out['user'] = attempt(lambda: p.user('alice'))
out['pass'] = attempt(lambda: p.pass_('secret'))
out['auth_plain'] = attempt(lambda: p._shortcmd(plain))
out['auth_login'] = attempt(lambda: p._shortcmd('AUTH LOGIN'))
out['stls'] = attempt(lambda: p.stls(ctx))
capa = p.capa()
out['capa_tls'] = sorted(capa)
out['sasl_tls'] = capa.get('SASL', [])
out['user_tls'] = attempt(lambda: p.user('alice'))
out['pass_tls'] = attempt(lambda: p.pass_('secret'))
out['retr'] = b'\n'.join(p.retr(1)[1]).decode('latin1')
out['quit'] = attempt(p.quit)
q = poplib.POP3(host, port, timeout=20)
q.stls(ctx)
out['auth_plain_tls'] = attempt(lambda: q._shortcmd(plain))
out['quit2'] = attempt(q.quit)
print(json.dumps(out))
`;

interface Net {
  ns: string;
  hostIf: string;
  hostAddr: string;
  clientAddr: string;
}

async function ip(...args: string[]): Promise<void> {
  await exec('ip', args);
}

/** A namespace and a veth pair: HOST (root namespace) <-> CLIENT (inside NS), a /30 of 10.0.0.0/8. */
async function makeNet(): Promise<Net> {
  const tag = randomBytes(3).toString('hex');
  const [a, b] = [randomInt(16, 250), randomInt(0, 63) * 4];
  const n: Net = { ns: `poplar-${tag}`, hostIf: `pp${tag}h`, hostAddr: `10.${a}.${b}.1`, clientAddr: `10.${a}.${b}.2` };
  const clientIf = `pp${tag}c`;
  await ip('netns', 'add', n.ns);
  await ip('link', 'add', n.hostIf, 'type', 'veth', 'peer', 'name', clientIf);
  await ip('link', 'set', clientIf, 'netns', n.ns);
  await ip('addr', 'add', `${n.hostAddr}/30`, 'dev', n.hostIf);
  await ip('link', 'set', n.hostIf, 'up');
  await ip('-n', n.ns, 'addr', 'add', `${n.clientAddr}/30`, 'dev', clientIf);
  await ip('-n', n.ns, 'link', 'set', clientIf, 'up');
  await ip('-n', n.ns, 'link', 'set', 'lo', 'up');
  return n;
}

async function dropNet(n: Net): Promise<void> {
  await ip('netns', 'del', n.ns).catch(() => undefined); // takes the client end, and with it the pair
  await ip('link', 'del', n.hostIf).catch(() => undefined);
}

const NETNS: Peer = { name: 'a network namespace with a veth pair (ip netns, as root)', install: 'apt-get install iproute2 and run the tests as root' };

describe.skipIf(lacks('ip') || lacks('python3'))('cleartext logins from a non-loopback address (network namespace)', () => {
  let dir: string;
  let net: Net | undefined;
  let netError: unknown;
  let srv: ServeProcess | undefined;
  let out: Record<string, unknown>;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-netns-'));
    try {
      net = await makeNet();
    } catch (e) {
      netError = e; // each test then skips, or with CI=true fails, naming the reason
      return;
    }
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    await putMessage(path.join(dir, 'mail'), 'alice', '1700000001.M1P1.test', 'Subject: over TLS\r\n\r\nhello from the namespace\r\n');
    srv = await startServe(['--data-dir', dir, '--users', path.join(dir, 'users'), '--maildir-root', path.join(dir, 'mail'), '--listen', `${net.hostAddr}:0`], { expectListeners: 1 });
    const { stdout } = await exec('ip', ['netns', 'exec', net.ns, 'python3', '-c', CLIENT, net.hostAddr, String(srv.plainPort)], { timeout: 60_000 });
    out = JSON.parse(stdout) as Record<string, unknown>;
  }, 90_000);
  afterAll(async () => {
    await srv?.stop();
    if (net) await dropNet(net);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('the server saw the client at its 10.x address', (ctx) => {
    if (net === undefined) return missingAtRun(ctx, NETNS, String(netError));
    const login = srv!.stderr().split('\n').filter((l) => l.includes('"login"')).map((l) => JSON.parse(l) as { rip: string; tls: boolean });
    expect(login.length).toBeGreaterThan(0);
    for (const l of login) expect(l).toMatchObject({ rip: net.clientAddr, tls: true });
  });

  it('without TLS: CAPA offers no cleartext login, USER and AUTH PLAIN/LOGIN are refused with the documented text', (ctx) => {
    if (net === undefined) return missingAtRun(ctx, NETNS, String(netError));
    expect(out['capa']).toContain('STLS');
    expect(out['capa']).not.toContain('USER');
    expect(out['sasl']).not.toContain('PLAIN');
    expect(out['sasl']).not.toContain('LOGIN');
    // USER checks no credential, so no [AUTH] code; every SASL cleartext mechanism gets [AUTH].
    expect(out['user']).toBe(`-ERR ${REFUSED}`);
    expect(out['pass']).toBe('-ERR No user name given; send USER first.');
    expect(out['auth_plain']).toBe(`-ERR [AUTH] ${REFUSED}`);
    expect(out['auth_login']).toBe(`-ERR [AUTH] ${REFUSED}`);
  });

  it('after STLS: CAPA offers them, USER/PASS and AUTH PLAIN log in, RETR works', (ctx) => {
    if (net === undefined) return missingAtRun(ctx, NETNS, String(netError));
    expect(out['stls']).toMatch(/^\+OK/);
    expect(out['capa_tls']).toContain('USER');
    expect(out['sasl_tls']).toContain('PLAIN');
    expect(out['user_tls']).toMatch(/^\+OK/);
    expect(out['pass_tls']).toMatch(/^\+OK/);
    expect(out['retr']).toContain('hello from the namespace');
    expect(out['quit']).toMatch(/^\+OK/);
    expect(out['auth_plain_tls']).toMatch(/^\+OK/);
  });
});
