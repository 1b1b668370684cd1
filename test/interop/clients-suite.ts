/**
 * Interoperability: real POP3 clients (curl, Python's poplib, fetchmail,
 * getmail6, mpop) download a whole maildrop from Poplar — the edge corpus,
 * the 5 MiB message included, plus ordinary mail — over plaintext, STLS and
 * implicit TLS, and every message arrives complete, once, in order.
 *
 * Each client stores messages its own way; compare.ts holds, per client, the
 * exact transformation it applies (documented or observed) to the bytes a
 * correct client receives, so everything else is compared byte for byte.
 * The server's own log (a capturing logger) shows how each client logged in
 * (mechanism, TLS or not), that it ended with QUIT, and how many RETRs it sent.
 *
 * The suite is a function so that it runs on each store without a copy:
 * clients.test.ts serves the maildrop from Maildir, clients-postgres.test.ts
 * from the PostgreSQL store it was migrated into.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';
import {
  curlExpected,
  fetchmailActual,
  fetchmailExpected,
  getmailActual,
  getmailExpected,
  maildirDeliveryCounter,
  mismatches,
  mpopExpected,
  readOrdered,
} from './compare.js';
import type { MailStore } from '../../src/store/types.js';
import type { DropMessage } from './maildrop.js';
import { lacks, peerPath } from '../helpers/peers.js';
import { run, shebangInterpreter, type LogRecord, type RunResult } from './run.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const USER = 'alice';
export const PASSWORD = 'secret';
const CLIENT_TIMEOUT_MS = 60_000;
const TEST_TIMEOUT_MS = 90_000;
const SETUP_TIMEOUT_MS = 120_000;

/** The server the clients talk to, whatever store it serves from. */
type Served = TestServer<MailStore>;

/** What a run of the suite works on: a server holding `drop` for USER (password PASSWORD), its log records. */
export interface ClientsFixture {
  srv: Served;
  /** The maildrop in POP3 order, as deliverMaildrop returned it. */
  drop: DropMessage[];
  /** The records of the served server's capturing logger. */
  records: LogRecord[];
  stop(): Promise<void>;
}

export interface ClientsSuiteOptions {
  /** Also run the tests about a client itself rather than about the server (default true; once per run is enough). */
  clientOnlyTests?: boolean;
}

/**
 * Registers the whole client suite under `describe(title)`: `setup` runs once
 * before the clients (in beforeAll), `stop` once after them.
 */
export function clientsSuite(title: string, setup: () => Promise<ClientsFixture>, options: ClientsSuiteOptions = {}): void {
  describe(title, () => {
    let fixture: ClientsFixture | undefined;
    let srv: Served;
    let drop: DropMessage[];
    let records: LogRecord[];
    let tmp: string;
    /** UIDL listings as each client saw them, for the cross-client check at the end. */
    const uidlsSeen = new Map<string, string[]>();

    beforeAll(async () => {
      fixture = await setup();
      ({ srv, drop, records } = fixture);
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-interop-'));
    }, SETUP_TIMEOUT_MS);

    afterAll(async () => {
      await fixture?.stop();
      if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    });

    /** A fresh directory for one client run. */
    async function workdir(name: string): Promise<string> {
      return fs.mkdtemp(path.join(tmp, `${name}-`));
    }

    /** A minimal environment: clients must not pick up the invoking user's configuration. */
    function cleanEnv(home: string): NodeJS.ProcessEnv {
      return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, LC_ALL: 'C', TZ: 'UTC' };
    }

    function totalOctets(): number {
      return drop.reduce((n, m) => n + m.octets, 0);
    }

    /**
     * What the server logged about the sessions since `mark`, once every session
     * that logged in has also ended (clients may exit before the server notices).
     */
    async function serverSessions(mark: number): Promise<{ logins: LogRecord[]; ends: LogRecord[] }> {
      const deadline = Date.now() + 5000;
      for (;;) {
        const recent = records.slice(mark);
        const logins = recent.filter((r) => r.msg === 'login');
        const ends = recent.filter((r) => r.event === 'logout' && r.user !== undefined);
        if (ends.length >= logins.length || Date.now() > deadline) return { logins, ends };
        await sleep(20);
      }
    }

    /** The server saw logins with this mechanism and TLS state, clean QUITs, and `retr` RETR commands in all. */
    async function expectServerSaw(mark: number, want: { mech: string; tls: boolean; retr: number }, r: RunResult): Promise<void> {
      const { logins, ends } = await serverSessions(mark);
      const summary = `server log since the run:\n${JSON.stringify(records.slice(mark), null, 1).slice(0, 3000)}\n${r.describe}`;
      expect(logins.length, summary).toBeGreaterThan(0);
      for (const l of logins) {
        expect({ user: l.user, mech: l.mech, tls: l.tls }, summary).toEqual({ user: USER, mech: want.mech, tls: want.tls });
      }
      expect(ends.length, summary).toBe(logins.length);
      for (const e of ends) expect(e.reason, summary).toBe('QUIT');
      expect(
        ends.reduce((n, e) => n + Number(e.retr), 0),
        summary,
      ).toBe(want.retr);
    }

    // ---------------------------------------------------------------------------

    describe.skipIf(lacks('curl'))('curl', () => {
      interface CurlCase {
        title: string;
        url: (s: Served, path: string) => string;
        args: (s: Served) => string[];
        /** The SASL mechanism to be used; null: curl's own choice among those offered, read from its transcript. */
        mech: string | null;
        tls: boolean;
        /** Commands that must appear in curl's -v transcript. */
        sent: string[];
      }
      const plainUrl = (s: Served, p: string): string => `pop3://127.0.0.1:${s.port}/${p}`;
      const cases: CurlCase[] = [
        {
          // curl 7.x prefers SASL (its strongest offered mechanism); while the server offers SASL it never sends USER/PASS.
          title: 'pop3:// in the clear, default login (curl picks the mechanism)',
          url: plainUrl,
          args: () => [],
          mech: null,
          tls: false,
          sent: ['> AUTH '],
        },
        {
          title: 'pop3:// with --login-options AUTH=PLAIN',
          url: plainUrl,
          args: () => ['--login-options', 'AUTH=PLAIN'],
          mech: 'PLAIN',
          tls: false,
          sent: ['> AUTH PLAIN'],
        },
        {
          title: 'pop3:// with --login-options AUTH=LOGIN',
          url: plainUrl,
          args: () => ['--login-options', 'AUTH=LOGIN'],
          mech: 'LOGIN',
          tls: false,
          sent: ['> AUTH LOGIN'],
        },
        {
          title: 'pop3s:// (implicit TLS, certificate verified)',
          url: (s, p) => `pop3s://localhost:${s.tlsPort}/${p}`,
          args: (s) => ['--cacert', s.certFile],
          mech: null,
          tls: true,
          sent: [],
        },
        {
          title: 'pop3:// with --ssl-reqd (STLS, certificate verified)',
          url: (s, p) => `pop3://localhost:${s.port}/${p}`,
          args: (s) => ['--ssl-reqd', '--cacert', s.certFile],
          mech: null,
          tls: true,
          sent: ['> STLS'],
        },
      ];

      for (const c of cases) {
        it(
          `${c.title}: RETR of every message by number`,
          async () => {
            const dir = await workdir('curl');
            // -q first: ignore any ~/.curlrc.
            const args = ['-q', '-sS', '-v', '--max-time', '50', '-u', `${USER}:${PASSWORD}`, ...c.args(srv)];
            // One invocation, one connection: curl reuses it for every URL (RETR 1 … RETR n, then QUIT).
            for (const m of drop) args.push(c.url(srv, String(m.number)), '-o', path.join(dir, String(m.number).padStart(5, '0')));
            const mark = records.length;
            const r = await run('curl', args, { env: cleanEnv(dir), timeoutMs: CLIENT_TIMEOUT_MS });
            expect(r.code, r.describe).toBe(0);
            for (const s of c.sent) expect(r.stderr, r.describe).toContain(s);
            const { contents } = await readOrdered(dir, Number);
            expect(mismatches(drop, contents, curlExpected), r.describe).toEqual([]);
            const used = /^> AUTH ([A-Z0-9-]+)/m.exec(r.stderr)?.[1];
            expect(used, r.describe).toBeDefined();
            if (c.mech !== null) expect(used, r.describe).toBe(c.mech);
            await expectServerSaw(mark, { mech: used!, tls: c.tls, retr: drop.length }, r);
          },
          TEST_TIMEOUT_MS,
        );
      }

      it('LIST (pop3://host/) agrees with STAT and with the stored sizes; UIDL lists every message', async () => {
        const base = ['-q', '-sS', '--max-time', '50', '-u', `${USER}:${PASSWORD}`];
        const env = cleanEnv(tmp);
        const list = await run('curl', [...base, `pop3://127.0.0.1:${srv.port}/`], { env, timeoutMs: CLIENT_TIMEOUT_MS });
        expect(list.code, list.describe).toBe(0);
        const lines = list.stdout.toString('latin1').split('\r\n');
        expect(lines.pop(), list.describe).toBe(''); // every line ends in CRLF
        expect(lines, list.describe).toEqual(drop.map((m) => `${m.number} ${m.octets}`));

        // STAT is a one-line reply: -I keeps curl from waiting for a body, -v shows the reply.
        const stat = await run('curl', [...base, '-v', '-I', '-X', 'STAT', `pop3://127.0.0.1:${srv.port}/`], { env, timeoutMs: CLIENT_TIMEOUT_MS });
        expect(stat.code, stat.describe).toBe(0);
        const m = /^< \+OK (\d+) (\d+)\r?$/m.exec(stat.stderr);
        expect(m, stat.describe).not.toBeNull();
        const listed = lines.map((l) => Number(l.split(' ')[1]));
        expect([Number(m![1]), Number(m![2])], stat.describe).toEqual([lines.length, listed.reduce((a, b) => a + b, 0)]);
        expect(Number(m![2])).toBe(totalOctets());

        const uidl = await run('curl', [...base, '-X', 'UIDL', `pop3://127.0.0.1:${srv.port}/`], { env, timeoutMs: CLIENT_TIMEOUT_MS });
        expect(uidl.code, uidl.describe).toBe(0);
        const ul = uidl.stdout.toString('latin1').split('\r\n');
        expect(ul.pop(), uidl.describe).toBe('');
        expect(ul.map((l) => Number(l.split(' ')[0])), uidl.describe).toEqual(drop.map((d) => d.number));
        const ids = ul.map((l) => l.split(' ')[1] ?? '');
        for (const id of ids) expect(id).toMatch(/^[\x21-\x7e]{1,70}$/); // RFC 1939 §7
        expect(new Set(ids).size).toBe(drop.length);
        uidlsSeen.set('curl', ids);
      }, TEST_TIMEOUT_MS);
    });

    // ---------------------------------------------------------------------------

    interface PoplibSummary {
      welcome: string;
      capa_before_login: Record<string, string[]>;
      capa_after_stls?: Record<string, string[]>;
      capa_after_login: Record<string, string[]>;
      stls?: string;
      tls_version?: string;
      user: string;
      pass: string;
      stat: [number, number];
      list: [number, number][];
      uidl: [number, string][];
      uidl_single: string[];
      retr: { n: number; resp: string; octets: number }[];
      quit: string;
    }

    describe.skipIf(lacks('python3'))('Python poplib', () => {
      const cases = [
        { mode: 'plain', host: '127.0.0.1', port: (s: Served) => s.port, tls: false },
        { mode: 'stls', host: 'localhost', port: (s: Served) => s.port, tls: true },
        { mode: 'ssl', host: 'localhost', port: (s: Served) => s.tlsPort, tls: true },
      ];

      for (const c of cases) {
        it(
          `${c.mode}: USER/PASS, CAPA, STAT, LIST, UIDL, RETR of every message`,
          async () => {
            const dir = await workdir(`poplib-${c.mode}`);
            const mark = records.length;
            const r = await run(
              'python3',
              [path.join(HERE, 'poplib_client.py'), c.mode, c.host, String(c.port(srv)), srv.certFile, USER, PASSWORD, dir],
              { env: cleanEnv(dir), timeoutMs: CLIENT_TIMEOUT_MS },
            );
            expect(r.code, r.describe).toBe(0);
            const out = JSON.parse(r.stdout.toString('utf8')) as PoplibSummary;

            expect(out.welcome).toMatch(/^\+OK /);
            const before = out.capa_before_login;
            for (const cap of ['TOP', 'USER', 'UIDL', 'PIPELINING', 'RESP-CODES', 'AUTH-RESP-CODE']) expect(before, cap).toHaveProperty(cap);
            expect(before.SASL).toEqual(expect.arrayContaining(['PLAIN', 'LOGIN']));
            if (c.mode === 'ssl') expect(before).not.toHaveProperty('STLS');
            else expect(before).toHaveProperty('STLS');
            if (c.mode === 'stls') {
              expect(out.stls).toMatch(/^\+OK/);
              expect(out.capa_after_stls).not.toHaveProperty('STLS'); // RFC 2595 §4: not offered once TLS is active
              expect(out.capa_after_stls).toHaveProperty('USER');
            }
            if (c.tls) expect(out.tls_version).toMatch(/^TLSv1\.[23]$/);
            expect(out.capa_after_login).not.toHaveProperty('STLS');
            expect(out.pass).toMatch(/^\+OK/);

            expect(out.stat).toEqual([drop.length, totalOctets()]);
            expect(out.list).toEqual(drop.map((m) => [m.number, m.octets]));
            expect(out.uidl.map(([n]) => n)).toEqual(drop.map((m) => m.number));
            const ids = out.uidl.map(([, id]) => id);
            expect(new Set(ids).size).toBe(drop.length);
            expect(out.uidl_single).toEqual([`+OK 1 ${ids[0]}`, `+OK ${drop.length} ${ids[drop.length - 1]}`]);
            uidlsSeen.set(`poplib ${c.mode}`, ids);

            // poplib counts the octets of the unstuffed lines with their CRLFs as received.
            expect(out.retr.map((x) => [x.n, x.octets])).toEqual(drop.map((m) => [m.number, m.canonical.length]));
            for (const x of out.retr) expect(x.resp).toMatch(/^\+OK/);
            const { contents } = await readOrdered(dir, Number);
            expect(mismatches(drop, contents, (m) => m.canonical), r.describe).toEqual([]);
            expect(out.quit).toMatch(/^\+OK/);
            await expectServerSaw(mark, { mech: 'USER', tls: c.tls, retr: drop.length }, r);
          },
          TEST_TIMEOUT_MS,
        );
      }
    });

    // ---------------------------------------------------------------------------

    /** An MDA for fetchmail: each message (stdin) into its own file, numbered in delivery order. */
    const NUMBERING_MDA = `#!/bin/sh
# usage: mda DIR — fetchmail runs one MDA process per message, one after the other.
n=$(ls "$1" | wc -l)
exec cat > "$1/$(printf %05d "$n")"
`;

    describe.skipIf(lacks('fetchmail'))('fetchmail', () => {
      const cases = [
        // Without sslproto '' fetchmail 6.4 upgrades with STLS on its own and then fails the (default) certificate check.
        { title: 'plain POP3 (sslproto \'\')', host: '127.0.0.1', port: (s: Served) => s.port, tls: false, ssl: (_s: Served) => `sslproto ''` },
        {
          title: 'STLS (sslproto tls1.2+, sslcertck)',
          host: 'localhost',
          port: (s: Served) => s.port,
          tls: true,
          ssl: (s: Served) => `sslproto 'tls1.2+' sslcertck sslcertfile "${s.certFile}"`,
        },
        {
          title: 'implicit TLS (ssl, sslcertck)',
          host: 'localhost',
          port: (s: Served) => s.tlsPort,
          tls: true,
          ssl: (s: Served) => `ssl sslproto 'tls1.2+' sslcertck sslcertfile "${s.certFile}"`,
        },
      ];

      for (const c of cases) {
        it(
          `${c.title}: --fetchall with keep delivers every message through an MDA`,
          async () => {
            const dir = await workdir('fetchmail');
            const home = path.join(dir, 'home');
            const out = path.join(dir, 'out');
            await fs.mkdir(home);
            await fs.mkdir(out);
            const mda = path.join(dir, 'mda.sh');
            await fs.writeFile(mda, NUMBERING_MDA, { mode: 0o755 });
            const rc = path.join(dir, 'fetchmailrc');
            await fs.writeFile(
              rc,
              [
                'set no syslog',
                // No Received: header of its own; `no rewrite`/`no stripcr` keep headers and CRLFs as they came.
                'set invisible',
                `poll ${c.host} port ${c.port(srv)} protocol pop3 auth password timeout 50`,
                `  user "${USER}" password "${PASSWORD}" is "${USER}" here`,
                `  ${c.ssl(srv)}`,
                '  options keep no rewrite no stripcr',
                `  mda "${mda} ${out}"`,
                '',
              ].join('\n'),
              { mode: 0o600 }, // fetchmail refuses a run control file others can read
            );
            const mark = records.length;
            const r = await run(
              'fetchmail',
              ['-f', rc, '--nosyslog', '--nodetach', '--fetchall', '--pidfile', path.join(dir, 'fetchmail.pid'), '-i', path.join(dir, 'fetchids')],
              { env: cleanEnv(home), timeoutMs: CLIENT_TIMEOUT_MS },
            );
            expect(r.code, r.describe).toBe(0); // 0: mail was retrieved
            const { contents } = await readOrdered(out, Number);
            expect(mismatches(drop, contents, fetchmailExpected, fetchmailActual), r.describe).toEqual([]);
            await expectServerSaw(mark, { mech: 'USER', tls: c.tls, retr: drop.length }, r);
          },
          TEST_TIMEOUT_MS,
        );
      }
    });

    // ---------------------------------------------------------------------------

    describe.skipIf(lacks('getmail'))('getmail6', () => {
      const cases = [
        { title: 'SimplePOP3Retriever', tls: false, retriever: (s: Served) => ['type = SimplePOP3Retriever', 'server = 127.0.0.1', `port = ${s.port}`] },
        {
          title: 'SimplePOP3SSLRetriever (ca_certs)',
          tls: true,
          // With ca_certs set getmail verifies the chain and the host name.
          retriever: (s: Served) => ['type = SimplePOP3SSLRetriever', 'server = localhost', `port = ${s.tlsPort}`, `ca_certs = ${s.certFile}`],
        },
      ];

      /**
       * One getmail run into a fresh Maildir, started through getmail_wait.py (see
       * there) with the interpreter getmail names; `prelude` is Python code run
       * first, with the script to run and its arguments in sys.argv[1:].
       */
      async function getmailOnce(
        c: (typeof cases)[number],
        opts: { server?: Served; prelude?: string; wrapper?: boolean; timeout?: number } = {},
      ): Promise<{ r: RunResult; md: string; mark: number }> {
        const server = opts.server ?? srv;
        const dir = await workdir('getmail');
        const md = path.join(dir, 'Maildir');
        const gd = path.join(dir, 'getmail');
        for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(md, sub), { recursive: true });
        await fs.mkdir(gd);
        const asRoot = process.getuid?.() === 0;
        if (asRoot) {
          // getmail refuses to deliver to a Maildir as root; it switches to `user` for the delivery,
          // which then needs to reach and write the Maildir.
          await fs.chmod(tmp, 0o755);
          await fs.chmod(dir, 0o755);
          for (const d of [md, ...['cur', 'new', 'tmp'].map((s) => path.join(md, s))]) await fs.chmod(d, 0o777);
        }
        const rc = path.join(gd, 'getmailrc');
        await fs.writeFile(
          rc,
          [
            '[retriever]',
            ...c.retriever(server),
            `username = ${USER}`,
            `password = ${PASSWORD}`,
            // Socket timeout, and how long getmail waits for a delivery child.
            `timeout = ${opts.timeout ?? 10}`,
            '',
            '[destination]',
            'type = Maildir',
            `path = ${md}/`,
            ...(asRoot ? ['user = nobody'] : []),
            '',
            '[options]',
            'verbose = 1',
            'delete = false',
            'read_all = true',
            // Leave the messages as they came: no Delivered-To: / Received: of getmail's own.
            'delivered_to = false',
            'received = false',
            '',
          ].join('\n'),
          { mode: 0o600 },
        );
        const mark = records.length;
        const getmail = peerPath('getmail')!;
        const python = shebangInterpreter(getmail) ?? 'python3';
        const script = [...(opts.wrapper === false ? [] : [path.join(HERE, 'getmail_wait.py')]), getmail, '--getmaildir', gd, '--rcfile', rc];
        const r = await run(python, opts.prelude === undefined ? script : ['-c', opts.prelude, ...script], {
          env: cleanEnv(dir),
          timeoutMs: CLIENT_TIMEOUT_MS,
        });
        return { r, md, mark };
      }

      for (const c of cases) {
        it(
          `${c.title}: read_all without delete into a Maildir`,
          async () => {
            const { r, md, mark } = await getmailOnce(c);
            const why = r.describe;
            expect(r.code, why).toBe(0);
            expect(r.stdout.toString('latin1'), why).toContain(`${drop.length} messages`);
            expect(await fs.readdir(path.join(md, 'tmp')), why).toEqual([]);
            const { contents } = await readOrdered(path.join(md, 'new'), maildirDeliveryCounter);
            expect(mismatches(drop, contents, getmailExpected, getmailActual), why).toEqual([]);
            await expectServerSaw(mark, { mech: 'USER', tls: c.tls, retr: drop.length }, r);
          },
          TEST_TIMEOUT_MS,
        );
      }

      /** Python run before getmail: after each fork() the parent goes on only once the child has ended (a zombie). */
      const CHILD_ENDS_FIRST = String.raw`
import os, runpy, sys, time
_fork = os.fork
def fork():
    pid = _fork()
    while pid != 0 and open('/proc/%d/stat' % pid).read().rsplit(') ', 1)[1][0] != 'Z':
        time.sleep(0.005)
    return pid
os.fork = fork
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
`;

      // About getmail itself, not the store: only the suite that asks for it defines it (no skipped entry elsewhere).
      const getmailOnly = options.clientOnlyTests ?? true ? it : () => undefined;
      getmailOnly(
        'a delivery child that has ended before getmail waits for it is still seen (getmail_wait.py); getmail alone times out',
        async () => {
          const small = await startTestServer({ users: [{ name: USER, password: PASSWORD }] });
          try {
            for (const i of [1, 2]) await small.deliver(USER, `Subject: race ${i}\r\n\r\nbody ${i}\r\n`);
            // Control: getmail's own wait misses a child that ended first, the failure the wrapper removes.
            const alone = await getmailOnce(cases[0]!, { server: small, prelude: CHILD_ENDS_FIRST, wrapper: false, timeout: 2 });
            expect(alone.r.code, alone.r.describe).not.toBe(0);
            expect(alone.r.stderr, alone.r.describe).toMatch(/waiting child pid \d+ timed out/);
            const { r, md } = await getmailOnce(cases[0]!, { server: small, prelude: CHILD_ENDS_FIRST, timeout: 2 });
            expect(r.code, r.describe).toBe(0);
            expect((await fs.readdir(path.join(md, 'new'))).length, r.describe).toBe(2);
          } finally {
            await small.stop();
          }
        },
        TEST_TIMEOUT_MS,
      );
    });

    // ---------------------------------------------------------------------------

    describe.skipIf(lacks('mpop'))('mpop', () => {
      const cases = [
        // `auth user` asks for USER/PASS explicitly: mpop's default (`auth on`) skips cleartext methods while TLS is off.
        { title: 'tls off, auth user', tls: false, conf: (s: Served) => ['host 127.0.0.1', `port ${s.port}`, 'tls off'] },
        {
          title: 'STLS (tls on, tls_starttls on)',
          tls: true,
          conf: (s: Served) => ['host localhost', `port ${s.port}`, 'tls on', 'tls_starttls on', `tls_trust_file ${s.certFile}`],
        },
        {
          title: 'implicit TLS (tls on, tls_starttls off)',
          tls: true,
          conf: (s: Served) => ['host localhost', `port ${s.tlsPort}`, 'tls on', 'tls_starttls off', `tls_trust_file ${s.certFile}`],
        },
      ];

      for (const c of cases) {
        it(
          `${c.title}: keep, only_new off, maildir delivery`,
          async () => {
            const dir = await workdir('mpop');
            const md = path.join(dir, 'Maildir');
            for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(md, sub), { recursive: true });
            const uidls = path.join(dir, 'uidls');
            const conf = path.join(dir, 'mpoprc');
            await fs.writeFile(
              conf,
              [
                'account alice',
                ...c.conf(srv),
                'timeout 50',
                'auth user',
                `user ${USER}`,
                `passwordeval "echo ${PASSWORD}"`,
                `delivery maildir ${md}`,
                `uidls_file ${uidls}`,
                'keep on',
                'only_new off',
                'received_header off',
                '',
              ].join('\n'),
              { mode: 0o600 },
            );
            const mark = records.length;
            const r = await run('mpop', ['-C', conf, '-q', '-a'], { env: cleanEnv(dir), timeoutMs: CLIENT_TIMEOUT_MS });
            expect(r.code, r.describe).toBe(0);
            const { contents } = await readOrdered(path.join(md, 'new'), maildirDeliveryCounter);
            expect(mismatches(drop, contents, mpopExpected), r.describe).toEqual([]);
            await expectServerSaw(mark, { mech: 'USER', tls: c.tls, retr: drop.length }, r);

            // mpop records every UID it fetched (one per line after a " count host user" line).
            const ids = (await fs.readFile(uidls, 'latin1')).split('\n').filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith(' '));
            uidlsSeen.set(`mpop ${c.title}`, ids);
          },
          TEST_TIMEOUT_MS,
        );
      }
    });

    // ---------------------------------------------------------------------------

    describe('across clients', () => {
      // Reads what the client tests above recorded (curl, poplib and mpop list unique IDs).
      it.skipIf(lacks('curl') && lacks('python3') && lacks('mpop'))("every client saw the server's own unique-ID listing", async () => {
        const w = await Wire.connect(srv.port);
        expect(await w.line()).toMatch(/^\+OK/);
        await w.login(USER, PASSWORD);
        const { status, lines } = await w.cmdLines('UIDL');
        expect(status).toMatch(/^\+OK/);
        expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
        w.close();
        const server = lines.map((l) => l.split(' ')[1]!).sort();
        expect(server).toHaveLength(drop.length);
        const all = [...uidlsSeen.entries()];
        expect(all.length, 'no client recorded a listing').toBeGreaterThan(0);
        for (const [client, ids] of all) expect([...ids].sort(), client).toEqual(server);
      });

      it('the server logged no errors', () => {
        const errors = records.filter((r) => Number(r.level) >= 50);
        expect(errors).toEqual([]);
      });
    });
  });
}
