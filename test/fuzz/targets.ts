/**
 * Every parser that reads bytes from outside, as a fuzz target: valid seeds,
 * their mutations and noise go in; a result or the parser's own typed error
 * must come out. Where a parser's result has a property a caller relies on
 * (a file name with no '/', the same bytes whatever the chunking), the
 * target checks it too.
 */
import { promises as fs, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { pino } from 'pino';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { hashPassword } from '../../src/auth/schemes.js';
import { parsePasswdFile } from '../../src/auth/passwd-file/passwd-file.js';
import { Pop3ClientError } from '../../src/client/errors.js';
import { Pop3Client } from '../../src/client/pop3-client.js';
import { apopTimestampOf, parseCapabilities, parseListEntry, parseStat, parseStatusLine, parseUidlEntry, isValidUid } from '../../src/client/reply.js';
import { Pop3ProtocolError } from '../../src/client/errors.js';
import { ConfigError } from '../../src/config/errors.js';
import { loadConfig } from '../../src/config/load.js';
import { candidateNames } from '../../src/delivery/recipients.js';
import { addressProblem, withTraceHeaders } from '../../src/delivery/trace-headers.js';
import { loadFetchConfig } from '../../src/fetch/config.js';
import { Ledger, LedgerError } from '../../src/fetch/ledger.js';
import { MboxSink } from '../../src/fetch/sinks/mbox.js';
import { SinkError } from '../../src/fetch/sinks/util.js';
import { withoutAddedLineEnd } from '../../src/migrate/pop3-source.js';
import { DotUnstuffer, unstuffMessage } from '../../src/protocol/dot-unstuff.js';
import { LineReader, type LineEvent } from '../../src/protocol/line-reader.js';
import { clientMechanism, serverMechanisms, type SaslServerContext, type ServerStep } from '../../src/protocol/sasl/index.js';
import { parseProxyHeader, encodeProxyHeader, PROXY_HEADER_MAX } from '../../src/server/proxy-header.js';
import { parseScanFile } from '../../src/store/maildir/scan-file.js';
import { parseUidlist, UidlistFormatError } from '../../src/store/maildir/uidlist.js';
import { BinaryCopyParser } from '../../src/store/postgres/bodies.js';
import { listedMessage } from '../../src/store/postgres/rows.js';
import { chunked, cuts, mutate, mutated, mutatedText, mutatedUtf8, mutations, type FuzzTarget } from './harness.js';

class Broken extends Error {
  override name = 'Broken';
}
/** A property of a result that callers rely on does not hold. */
function check(ok: boolean, what: string): void {
  if (!ok) throw new Broken(what);
}

// ---------------------------------------------------------------------------
// Server side: command lines, SASL, PROXY

const COMMAND_SEEDS = [
  'USER alice\r\n',
  'PASS secret\r\n',
  'APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n',
  'AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n',
  'LIST 1\r\nUIDL 2\r\nRETR 1\r\n',
  'TOP 1 10\r\n',
  'STLS\r\nCAPA\r\n',
  'x'.repeat(300) + '\r\n',
];

const lineReader: FuzzTarget<{ bytes: Buffer; cuts: number[]; max: number }> = {
  name: 'command-line-reader',
  arbitrary: fc.record({ bytes: mutated(COMMAND_SEEDS), cuts, max: fc.constantFrom(8, 64, 255, 1024) }),
  quickRuns: 300,
  run({ bytes, cuts: c, max }) {
    const r = new LineReader(max);
    const out: LineEvent[] = [];
    for (const part of chunked(bytes, c)) {
      r.push(part, out);
      check(r.buffered <= max, `buffered ${r.buffered} > ${max}`);
    }
    const whole: LineEvent[] = [];
    new LineReader(max).push(bytes, whole);
    // Split anywhere, the lines are the same (so a slow client is read as a fast one).
    const show = (evs: LineEvent[]) => evs.map((e) => (e.kind === 'line' ? e.line.toString('latin1') : '<overlong>')).join('\n');
    check(show(out) === show(whole), 'chunking changes the lines');
    for (const e of out) if (e.kind === 'line') check(e.line.length + 2 <= max || e.line.length + 1 <= max, 'a line over the bound');
  },
};

let cmdServer: TestServer | undefined;
let serverErrors: string[] = [];
const MAIL_SEEDS = ['STAT\r\n', 'LIST 1\r\n', 'UIDL 1\r\n', 'RETR 1\r\n', 'TOP 1 2\r\n', 'DELE 1\r\n', 'RSET\r\n', 'NOOP\r\n', 'CAPA\r\n', 'LIST\r\n', 'UIDL\r\n', 'TOP 1 99999\r\n'];
const AUTH_SEEDS = ['USER alice\r\n', 'PASS secret\r\n', 'APOP alice 0123456789abcdef0123456789abcdef\r\n', 'AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n', 'AUTH SCRAM-SHA-256 biwsbj1hbGljZSxyPWFiYw==\r\n', 'AUTH CRAM-MD5\r\nYWxpY2UgMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\r\n', 'AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n', 'AUTH XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB4AQE=\r\n', 'CAPA\r\n', 'STLS\r\n'];

/**
 * Each command's argument parsing, through a real session: command lines in
 * the login and the mail state (mutated, split anywhere) to an in-process
 * server. No command may end in the server's "internal error" path.
 */
const serverCommands: FuzzTarget<{ loggedIn: boolean; bytes: Buffer; cuts: number[] }> = {
  name: 'server-commands',
  arbitrary: fc.oneof(
    fc.record({ loggedIn: fc.constant(true), bytes: mutated(MAIL_SEEDS, { maxMutations: 3 }), cuts }),
    fc.record({ loggedIn: fc.constant(false), bytes: mutated(AUTH_SEEDS, { maxMutations: 3 }), cuts }),
  ),
  quickRuns: 150,
  timeoutMs: 10_000,
  async setup() {
    serverErrors = [];
    const logger = pino({ level: 'error' }, { write: (line: string) => void serverErrors.push(line) });
    cmdServer = await startTestServer({
      logger,
      oauth: true,
      settings: { max_bad_commands: 1000, auth_failure_delay: 0, auth_failure_max_delay: 0, auth_block_after: 0, apop: true },
    });
    await cmdServer.deliver('alice', 'Subject: one\r\n\r\nbody\r\n.dot\r\n');
    await cmdServer.deliver('alice', 'Subject: two\r\n\r\n');
  },
  async teardown() {
    await cmdServer?.stop();
    cmdServer = undefined;
  },
  async run({ loggedIn, bytes, cuts: c }) {
    const sock = net.connect({ host: '127.0.0.1', port: cmdServer!.port });
    sock.on('error', () => undefined);
    let out = '';
    sock.on('data', (d: Buffer) => (out = (out + d.toString('latin1')).slice(-100_000)));
    const closed = new Promise<void>((r) => sock.once('close', () => r()));
    await new Promise<void>((r) => sock.once('connect', () => r()));
    if (loggedIn) sock.write('USER alice\r\nPASS secret\r\n');
    for (const part of chunked(bytes, c)) {
      sock.write(part);
      await new Promise((r) => setImmediate(r));
    }
    // A line end first, so a line left open is ended; RSET keeps the maildrop as it is.
    sock.write('\r\nRSET\r\nQUIT\r\n');
    await closed;
    check(serverErrors.length === 0, `the server logged: ${serverErrors.join('').slice(0, 600)}`);
    check(!out.includes('Internal error'), 'a command ended in an internal error');
  },
};

const SECRETS: Record<string, string> = { alice: '{PLAIN}secret' };
const saslCtx = (tls: boolean): SaslServerContext => ({
  lookupSecret: async (u) => SECRETS[u],
  channelBinding: (t) => (tls && t === 'tls-exporter' ? Buffer.alloc(32, 7) : undefined),
  channelBindingType: tls ? 'tls-exporter' : undefined,
  hostname: 'mail.example',
  certificateIdentity: tls ? 'alice' : undefined,
});
const MECHS = serverMechanisms({ scramIterations: 4096, oauthScope: 'mail' });
const MECH_NAMES = MECHS.map((m) => m.name);

/** Per step: leave the message alone, mutate it, send raw bytes, or send no response. */
const stepChoice = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ k: 'keep' as const }) },
  { weight: 4, arbitrary: mutations(4).map((m) => ({ k: 'mutate' as const, m })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => ({ k: 'raw' as const, b: Buffer.from(b) })) },
  { weight: 1, arbitrary: fc.constant({ k: 'null' as const }) },
);
const saslInput = fc.record({
  mech: fc.constantFrom(...MECH_NAMES),
  user: fc.constantFrom('alice', 'bob', 'alice\0x', 'a,=b', 'é'),
  password: fc.constantFrom('secret', 'wrong', ''),
  tls: fc.boolean(),
  steps: fc.array(stepChoice, { minLength: 1, maxLength: 6 }),
});
type SaslInput = typeof saslInput extends fc.Arbitrary<infer T> ? T : never;

function clientFor(i: SaslInput): ReturnType<typeof clientMechanism> | undefined {
  try {
    return clientMechanism(i.mech, {
      username: i.user,
      password: i.password,
      token: 'eyJhbGciOi.abc.def',
      host: 'mail.example',
      port: 110,
      ...(i.tls ? { channelBinding: { type: 'tls-exporter' as const, data: Buffer.alloc(32, 7) } } : {}),
    });
  } catch {
    return undefined; // a name SASLprep refuses: the client half refuses it before anything is sent
  }
}

const STEP_KINDS = new Set(['challenge', 'credentials', 'authenticated', 'fail']);

/** The server halves: a real client's messages, altered on the way in. */
const saslServer: FuzzTarget<SaslInput> = {
  name: 'sasl-server',
  arbitrary: saslInput,
  quickRuns: 300,
  setup: prepareSecrets,
  async run(i) {
    const info = MECHS.find((m) => m.name === i.mech)!;
    const ctx = saslCtx(i.tls);
    const server = info.create(ctx);
    const client = clientFor(i);
    let msg: Buffer | null = client?.initial() ?? null;
    for (const [n, s] of i.steps.entries()) {
      let toServer: Buffer | null = msg;
      if (s.k === 'mutate') toServer = mutate(msg ?? Buffer.alloc(0), s.m);
      else if (s.k === 'raw') toServer = s.b;
      else if (s.k === 'null') toServer = null;
      if (n === 0 && msg === null && s.k === 'keep') toServer = null;
      const step: ServerStep = await server.step(toServer);
      check(STEP_KINDS.has(step.kind), `unknown step ${String(step.kind)}`);
      if (step.kind === 'authenticated') {
        // Only whoever proved it: the user with the right password, or the certificate's identity.
        const proved = i.mech === 'EXTERNAL' ? step.username === ctx.certificateIdentity : step.username === i.user && i.password === 'secret' && SECRETS[i.user] !== undefined;
        check(proved, `${i.mech} authenticated ${JSON.stringify(step.username)} (client ${JSON.stringify(i.user)}/${JSON.stringify(i.password)})`);
      }
      if (step.kind !== 'challenge') return;
      try {
        msg = client?.respond(step.data) ?? step.data;
      } catch {
        msg = step.data;
      }
    }
  },
};

/** The client halves: a real server's challenges, altered on the way back. */
const saslClient: FuzzTarget<SaslInput> = {
  name: 'sasl-client',
  arbitrary: saslInput,
  quickRuns: 300,
  // The client half may refuse a challenge with a plain Error naming the problem; never a TypeError & co.
  allowed: (e) => e instanceof Error && e.constructor === Error && e.message.length > 0,
  setup: prepareSecrets,
  async run(i) {
    const client = clientFor(i);
    if (client === undefined) return;
    const server = MECHS.find((m) => m.name === i.mech)!.create(saslCtx(i.tls));
    let toServer: Buffer | null = client.initial();
    for (const s of i.steps) {
      const step = await server.step(toServer);
      let challenge: Buffer;
      if (step.kind === 'challenge') challenge = step.data;
      else if (step.kind === 'authenticated' && step.final !== undefined) challenge = step.final;
      else challenge = Buffer.from('garbage');
      if (s.k === 'mutate') challenge = mutate(challenge, s.m);
      else if (s.k === 'raw') challenge = s.b;
      toServer = client.respond(challenge);
      check(Buffer.isBuffer(toServer), 'respond() returned no bytes');
    }
  },
};

const v1 = (a: string) => encodeProxyHeader(1, { sourceAddress: a, sourcePort: 51000, destinationAddress: a, destinationPort: 110 });
const v2 = (a: string) => encodeProxyHeader(2, { sourceAddress: a, sourcePort: 51000, destinationAddress: a, destinationPort: 110 });
const PROXY_SEEDS = [v1('192.0.2.1'), v1('2001:db8::1'), v2('192.0.2.1'), v2('2001:db8::1'), Buffer.from('PROXY UNKNOWN\r\n'), Buffer.concat([v2('10.0.0.1'), Buffer.from('USER x\r\n')])];

const proxyHeader: FuzzTarget<Buffer> = {
  name: 'proxy-header',
  arbitrary: mutated(PROXY_SEEDS, { randomMax: 300 }),
  quickRuns: 500,
  run(b) {
    const r = parseProxyHeader(b);
    if (r.kind === 'header') {
      check(r.length > 0 && r.length <= b.length && r.length <= PROXY_HEADER_MAX, `header length ${r.length}`);
      if (r.addresses !== null) {
        check(net.isIP(r.addresses.sourceAddress) !== 0 && net.isIP(r.addresses.destinationAddress) !== 0, 'an address that is no IP');
        check(Number.isInteger(r.addresses.sourcePort) && r.addresses.sourcePort >= 0 && r.addresses.sourcePort <= 65535, 'source port out of range');
      }
    } else if (r.kind === 'incomplete') {
      check(b.length < PROXY_HEADER_MAX, 'incomplete past the largest header');
    }
  },
};

// ---------------------------------------------------------------------------
// Files: dovecot-uidlist, poplar-scan.cache, passwd-file, ledger, mbox, TOML

const uidlistTarget: FuzzTarget<string> = {
  name: 'dovecot-uidlist',
  arbitrary: mutatedUtf8(['3 V1700000000 N4 Gabc\n1 :1700000000.M1P1.host\n2 W120 :1700000001.M2P2.host:2,S\n3 1700000002.M3.host\n', '3 V1 N1\n', '1 V1 N1\n1 a\n']),
  quickRuns: 500,
  allowed: (e) => e instanceof UidlistFormatError,
  run(text) {
    const u = parseUidlist(text);
    for (const r of u.records) {
      check(!r.basename.includes('/') && r.basename !== '.' && r.basename !== '..' && !r.basename.includes('\0'), `basename ${JSON.stringify(r.basename)}`);
      check(Number.isSafeInteger(r.uid) && r.uid > 0 && r.uid < u.nextUid, `uid ${r.uid}`);
    }
  },
};

const SCAN_KEY = '1700000000.5:4096:1700000001.5:4096:-';
const scanFile: FuzzTarget<string> = {
  name: 'poplar-scan.cache',
  arbitrary: mutatedUtf8([
    `poplar-scan 2 3 ${SCAN_KEY}\n1 120 - abc 1700000000.M1P1.host:2,S\n2 0 7 u2 1700000001.M2P2.host\n3 99 - x\u00e9 1700000002.M3.h:2,\n`,
    `poplar-scan 2 0 ${SCAN_KEY}\n`,
  ]),
  quickRuns: 500,
  run(text) {
    const r = parseScanFile(text, SCAN_KEY);
    if (r === null || !Array.isArray(r)) return;
    const uids = new Set<number>();
    for (const e of r) {
      const f = e.filename;
      check(f.length > 0 && !f.includes('/') && !f.startsWith('.') && !/[\0\r\n ]/.test(f), `file name ${JSON.stringify(f)}`);
      check(/^[\x21-\x7e]{1,70}$/.test(e.uidl), `uidl ${JSON.stringify(e.uidl)}`);
      check(Number.isSafeInteger(e.uid) && e.uid > 0 && !uids.has(e.uid), `uid ${e.uid}`);
      check(Number.isSafeInteger(e.size) && e.size >= 0, `size ${e.size}`);
      uids.add(e.uid);
    }
  },
};

const passwdFile: FuzzTarget<string> = {
  name: 'passwd-file',
  arbitrary: mutatedUtf8(['alice:{PLAIN}secret::::::\nbob:{SHA512-CRYPT}$6$abc$def:1000:1000::/home/bob::userdb_quota_rule=*:storage=1G\n# comment\n\uFEFFcarol:{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA::::::allow_nets=127.0.0.1/8\n']),
  quickRuns: 500,
  run(text) {
    const p = parsePasswdFile(text);
    for (const [name, e] of p.entries) {
      check(name === e.username && name !== '' && !/[:\r\n\0]/.test(name), `user name ${JSON.stringify(name)}`);
      check(!/[\r\n\0]/.test(e.password), 'a control character in a password field');
    }
  },
};

let tmp = '';
const tmpTarget = {
  async setup() {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'poplar-fuzz-'));
  },
  async teardown() {
    // A run cut off by the time limit may still be writing: retry, and never fail the target for it.
    try {
      rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
    } catch {
      // a temp dir left behind
    }
  },
};

let ledgerN = 0;
const ledgerTarget: FuzzTarget<Buffer> = {
  name: 'fetch-ledger',
  ...tmpTarget,
  arbitrary: mutated(['poplar-ledger 1\n+ 1700000000 d abc\n+ 1700000001 x def\n? 1700000002 ghi -\n? 1700000003 jkl folder:.Lists\n', 'poplar-ledger 1\n']),
  quickRuns: 150,
  allowed: (e) => e instanceof LedgerError,
  async run(bytes) {
    const file = path.join(tmp, `ledger-${ledgerN++}`);
    writeFileSync(file, bytes);
    const l = await Ledger.open(file, { fsync: false });
    try {
      for (const u of l.uidls()) check(/^[\x21-\x7e]{1,70}$/.test(u) && Number.isSafeInteger(l.get(u)!.firstSeen), `uidl ${JSON.stringify(u)} ${l.get(u)!.firstSeen}`);
      for (const p of l.pending()) check(/^[\x21-\x7e]{1,70}$/.test(p.uidl) && Number.isSafeInteger(p.since), `pending ${JSON.stringify(p)}`);
    } finally {
      await l.close();
    }
    // What it wrote back (a compaction) reads again.
    const again = await Ledger.open(file, { fsync: false });
    await again.close();
  },
};

const MSG = 'From: a@example.org\r\nSubject: x\r\n\r\nFrom the start\r\n>From here\r\nbody\r\n';
const MBOX = `From a@example.org Sat Jan  1 00:00:00 2022\nFrom: a@example.org\nSubject: x\n\n>From the start\n>>From here\nbody\n\nFrom b@example.org Sat Jan  1 00:00:01 2022\nSubject: y\n\nother\n\n`;
let mboxN = 0;
const mboxProbe: FuzzTarget<Buffer> = {
  name: 'mbox-reader',
  ...tmpTarget,
  arbitrary: mutated([MBOX, MBOX + MBOX.slice(0, 40)]),
  quickRuns: 150,
  allowed: (e) => e instanceof SinkError,
  async run(bytes) {
    const file = path.join(tmp, `mbox-${mboxN++}`);
    writeFileSync(file, bytes);
    const sink = new MboxSink({ path: file, fsync: false, fcntlLock: false, dotlock: false });
    const content = Buffer.from(MSG);
    const pending = [{ uidl: 'u1', since: 0, folders: [undefined], content: { size: content.length, async *chunks() { yield content; } } }];
    const found = await sink.findDelivered(pending);
    check(found.size <= 1, 'found more than was pending');
    // What is left is never longer than before (only a torn last copy is cut off).
    check((await fs.stat(file)).size <= bytes.length, 'the mbox grew while being read');
  },
};

const SERVE_TOML = '[server]\nlisten = ["127.0.0.1:1110"]\nmax_line_length = 512\nsasl_mechanisms = ["PLAIN"]\n\n[store]\nmaildir_root = "mail"\n\n[auth]\nusers = "users"\n';
let tomlN = 0;
const serveConfig: FuzzTarget<string> = {
  name: 'toml-config-serve',
  ...tmpTarget,
  arbitrary: mutatedUtf8([SERVE_TOML, '[tls]\ncert = "c.pem"\nkey = "k.pem"\n', 'data_dir = "x"\n[server]\nlogin_timeout = 1e400\n']),
  quickRuns: 150,
  allowed: (e) => e instanceof ConfigError,
  run(text) {
    const file = path.join(tmp, `serve-${tomlN++}.toml`);
    writeFileSync(file, text);
    loadConfig({ config: file }, tmp);
  },
};

const FETCH_TOML = '[fetch]\nstate_dir = "state"\ninterval = 0.3\n\n[[account]]\nname = "a"\nhost = "127.0.0.1"\nport = 110\ntls = "none"\nuser = "alice"\npassword = "secret"\nsink = { type = "maildir", path = "Maildir" }\n[[account.rule]]\nheader = "Subject"\ncontains = "x"\nfolder = "Lists"\n';
const fetchConfig: FuzzTarget<string> = {
  name: 'toml-config-fetch',
  ...tmpTarget,
  arbitrary: mutatedUtf8([FETCH_TOML]),
  quickRuns: 150,
  allowed: (e) => e instanceof ConfigError,
  run(text) {
    const file = path.join(tmp, `fetch-${tomlN++}.toml`);
    writeFileSync(file, text);
    loadFetchConfig(file, tmp, {});
  },
};

// ---------------------------------------------------------------------------
// The client: reply lines, dot-unstuffing, whole conversations

const replyLines: FuzzTarget<string> = {
  name: 'client-reply-lines',
  arbitrary: mutatedText(['+OK 2 320', '-ERR [SYS/TEMP/X] busy', '+OK <1.2@host> ready', '1 120', '2 abc-def', 'SASL PLAIN LOGIN', '+ ', '+OK']),
  quickRuns: 500,
  allowed: (e) => e instanceof Pop3ProtocolError,
  run(line) {
    const outcomes: unknown[] = [];
    for (const f of [parseStatusLine, (s: string) => parseStat(s.slice(4)), parseListEntry, parseUidlEntry]) {
      try {
        outcomes.push(f(line));
      } catch (e) {
        if (!(e instanceof Pop3ProtocolError)) throw e;
      }
    }
    parseCapabilities(line.split('\n'));
    apopTimestampOf(line);
    for (const o of outcomes) {
      const n = (o as { number?: number; count?: number; octets?: number });
      for (const v of [n.number, n.count, n.octets]) if (v !== undefined) check(Number.isSafeInteger(v) && v >= 0, `number ${v}`);
    }
    try {
      const u = parseUidlEntry(line);
      if (isValidUid(u.uid)) check(!/[\s]/.test(u.uid), 'a valid uid with blanks');
    } catch (e) {
      if (!(e instanceof Pop3ProtocolError)) throw e;
    }
  },
};

const dotUnstuff: FuzzTarget<{ bytes: Buffer; cuts: number[] }> = {
  name: 'client-dot-unstuffer',
  arbitrary: fc.record({ bytes: mutated(['line 1\r\n..stuffed\r\n.\r\n', '.\r\n', 'a\r\n.\r\nafter', 'x\n.\n', '..\r\n...\r\n.\r\n']), cuts }),
  quickRuns: 500,
  run({ bytes, cuts: c }) {
    const u = new DotUnstuffer();
    const out: Buffer[] = [];
    let rest: Buffer | undefined;
    for (const part of chunked(bytes, c)) {
      if (u.done) {
        rest = rest === undefined ? part : Buffer.concat([rest, part]);
        continue;
      }
      const r = u.push(part);
      out.push(...r.data);
      if (r.rest !== undefined) rest = r.rest;
    }
    const whole = new DotUnstuffer().push(bytes);
    check(Buffer.concat(out).equals(Buffer.concat(whole.data)), 'chunking changes the content');
    check((rest ?? Buffer.alloc(0)).equals(whole.rest ?? Buffer.alloc(0)), 'chunking changes what follows the terminator');
    if (whole.done) {
      // unstuffMessage reads the same octets as the streaming reader.
      const terminated = bytes.subarray(0, bytes.length - (whole.rest?.length ?? 0));
      check(unstuffMessage(terminated).equals(Buffer.concat(whole.data)), 'unstuffMessage disagrees');
    }
  },
};

const TRANSCRIPT = [
  '+OK Poplar ready <1.2@host>\r\n',
  '+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\nSASL PLAIN\r\n.\r\n',
  '+OK\r\n',
  '+OK Logged in.\r\n',
  '+OK 2 320\r\n',
  '+OK\r\n1 120\r\n2 200\r\n.\r\n',
  '+OK\r\n1 abc\r\n2 def\r\n.\r\n',
  '+OK 120 octets\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\n',
  '+OK\r\nSubject: x\r\n\r\n.\r\n',
  '+OK bye\r\n',
].join('');

let fakePort = 0;
let fakeServer: net.Server | undefined;
let nextScript: Buffer[] = [];
/** The client's whole conversation with a server whose replies are mutated, over a real socket. */
const clientSession: FuzzTarget<{ bytes: Buffer; cuts: number[] }> = {
  name: 'client-session',
  arbitrary: fc.record({ bytes: mutated([TRANSCRIPT], { maxMutations: 4 }), cuts }),
  quickRuns: 120,
  timeoutMs: 5000,
  allowed: (e) => e instanceof Pop3ClientError,
  async setup() {
    fakeServer = net.createServer((s) => {
      s.on('error', () => undefined);
      const parts = nextScript;
      void (async () => {
        for (const p of parts) {
          if (s.destroyed) return;
          s.write(p);
          await new Promise((r) => setImmediate(r));
        }
        s.end();
      })();
      s.resume();
    });
    await new Promise<void>((r) => fakeServer!.listen(0, '127.0.0.1', r));
    fakePort = (fakeServer.address() as net.AddressInfo).port;
  },
  async teardown() {
    await new Promise((r) => fakeServer?.close(r));
  },
  async run({ bytes, cuts: c }) {
    nextScript = chunked(bytes, c);
    const client = await Pop3Client.connect({ host: '127.0.0.1', port: fakePort, tls: 'none', timeoutMs: 1000 });
    try {
      await client.capa();
      await client.login('alice', 'secret');
      const st = await client.stat();
      check(Number.isSafeInteger(st.count), 'STAT count');
      const list = await client.list();
      const uidl = await client.uidl();
      for (const u of uidl) check(typeof u.uid === 'string' && u.uid.length > 0, 'empty uid');
      check(Array.isArray(list), 'LIST');
      const m = await client.retrBuffer(1, { maxOctets: 1 << 20 });
      check(m.length <= 1 << 20, 'RETR past maxOctets');
      await client.topBuffer(1, 0);
      await client.quit();
    } finally {
      client.close();
    }
  },
};

// ---------------------------------------------------------------------------
// Delivery and stores

const recipients: FuzzTarget<{ address: string; format: 'auto' | 'full' | 'local'; delimiter: string; sender: string; message: Buffer }> = {
  name: 'lmtp-recipients-trace',
  arbitrary: fc.record({
    address: mutatedUtf8(['alice+tag@Example.ORG', 'bob@example.org', 'carol', '"odd@x"@example.org', '@', 'a@b@c']),
    format: fc.constantFrom('auto', 'full', 'local'),
    delimiter: fc.constantFrom('', '+', '-', '@', '++'),
    sender: mutatedUtf8(['sender@example.org', '', '<>']),
    message: mutated(['Subject: x\r\n\r\nbody\r\n', 'Subject: x\n\nbody\n', 'no line end']),
  }),
  quickRuns: 500,
  run(i) {
    const names = candidateNames(i.address, { format: i.format, delimiter: i.delimiter });
    // Names are only looked up (the store refuses those that cannot name a maildrop); none may carry a control character.
    for (const n of names) check(n !== '' && !/[\0-\x1f\x7f]/.test(n), `candidate ${JSON.stringify(n)}`);
    if (addressProblem(i.sender) !== undefined || addressProblem(i.address) !== undefined) return;
    const out = withTraceHeaders(i.message, i.sender, i.address);
    const head = out.subarray(0, out.length - i.message.length).toString('utf8');
    // Exactly two header lines were added: the addresses cannot start a third one.
    check(head.split('\n').length === 3 && head.startsWith('Return-Path: <') && head.includes('\nDelivered-To: '), `trace head ${JSON.stringify(head)}`);
    check(out.subarray(out.length - i.message.length).equals(i.message), 'the message changed');
  },
};

/** A binary COPY of (seq int4, data bytea) rows, as PostgreSQL sends it. */
function copyStream(rows: { seq: number; data: Buffer }[]): Buffer {
  const parts: Buffer[] = [Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)];
  for (const r of rows) {
    const h = Buffer.alloc(2 + 4 + 4 + 4);
    h.writeInt16BE(2, 0);
    h.writeInt32BE(4, 2);
    h.writeInt32BE(r.seq, 6);
    h.writeInt32BE(r.data.length, 10);
    parts.push(h, r.data);
  }
  parts.push(Buffer.from([0xff, 0xff]));
  return Buffer.concat(parts);
}
const COPY_SEEDS = [copyStream([{ seq: 0, data: Buffer.from('hello') }, { seq: -2, data: Buffer.from('world') }]), copyStream([]), copyStream([{ seq: 5, data: Buffer.alloc(0) }])];

const pgCopy: FuzzTarget<{ bytes: Buffer; cuts: number[] }> = {
  name: 'postgres-copy-parser',
  arbitrary: fc.record({ bytes: mutated(COPY_SEEDS), cuts }),
  quickRuns: 500,
  allowed: (e) => e instanceof Error && e.message === 'malformed COPY data from the server',
  run({ bytes, cuts: c }) {
    const p = new BinaryCopyParser();
    for (const part of chunked(bytes, c)) p.push(part);
    const rows = p.finish();
    let total = 0;
    for (const r of rows) {
      check(Number.isInteger(r.seq) && r.seq >= 0, `seq ${r.seq}`);
      for (const d of r.data) total += d.length;
    }
    check(total <= bytes.length, 'more data than bytes');
  },
};

const pgRows: FuzzTarget<unknown[]> = {
  name: 'postgres-rows',
  arbitrary: fc.array(
    fc.oneof(
      fc.constantFrom<unknown>('1', '0', '-1', '9007199254740993', '12345678901234567', '1e3', ' 1', '', null, undefined, 1.5, -0, NaN, Infinity, 2 ** 53, 'abc', 'a'.repeat(71), 'x y'),
      fc.string({ maxLength: 80 }),
      fc.integer(),
      fc.bigInt().map((b) => b.toString()),
    ),
    { minLength: 0, maxLength: 5 },
  ),
  quickRuns: 500,
  run(row) {
    const m = listedMessage(row);
    if (typeof m === 'string') return;
    check(Number.isSafeInteger(m.uid) && m.uid > 0 && Number.isSafeInteger(m.size) && m.size >= 0 && Number.isSafeInteger(m.bodyId) && m.bodyId >= 0, `row ${JSON.stringify(m)}`);
    check(/^[\x21-\x7e]{1,70}$/.test(m.uidl), 'uidl');
  },
};

const migrateBody: FuzzTarget<{ body: Buffer; listed: number }> = {
  name: 'migrate-pop3-body',
  arbitrary: fc.record({ body: mutated(['Subject: x\r\n\r\nbody\r\n', 'no end', '\r\n']), listed: fc.oneof(fc.nat({ max: 100 }), fc.constantFrom(-1, 2 ** 53, NaN)) }),
  quickRuns: 300,
  run({ body, listed }) {
    const out = withoutAddedLineEnd(body, listed);
    check(out.length <= body.length && body.subarray(0, out.length).equals(out), 'not a prefix of the body');
  },
};

export const TARGETS: readonly FuzzTarget<never>[] = [
  lineReader,
  serverCommands,
  saslServer,
  saslClient,
  proxyHeader,
  uidlistTarget,
  scanFile,
  passwdFile,
  ledgerTarget,
  mboxProbe,
  serveConfig,
  fetchConfig,
  replyLines,
  dotUnstuff,
  clientSession,
  recipients,
  pgCopy,
  pgRows,
  migrateBody,
] as unknown as FuzzTarget<never>[];

/** Secrets of other schemes for the SASL targets, made once (hashing is slow). */
export async function prepareSecrets(): Promise<void> {
  if (SECRETS.bob !== undefined) return;
  SECRETS.bob = await hashPassword('secret', 'SCRAM-SHA-256');
  SECRETS['é'] = await hashPassword('secret', 'CRAM-MD5');
}
