/**
 * The edge corpus delivered into a maildrop and read back byte-exact with
 * RETR and TOP over plaintext, implicit TLS and STLS; LIST sizes checked
 * against two independent computations.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crlfSize } from '../../src/protocol/message-size.js';
import { edgeCorpus, expectedRetr, expectedTop, type CorpusMessage } from '../corpus/corpus.js';
import { putMessage, startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const CORPUS: CorpusMessage[] = edgeCorpus();
const TOPS = [0, 1, 3] as const;

/** The POP3 size derived from the oracle's wire form: unstuff, drop the terminator and any CRLF added at the end. */
function sizeFromOracle(raw: Buffer): number {
  const wire = expectedRetr(raw);
  const body = wire.subarray(0, wire.length - 3); // ".\r\n"
  let size = 0;
  let start = 0;
  while (start < body.length) {
    const end = body.indexOf('\r\n', start);
    const line = body.subarray(start, end);
    size += (line[0] === 0x2e ? line.length - 1 : line.length) + 2;
    start = end + 2;
  }
  if (raw.length > 0 && raw[raw.length - 1] !== 0x0a) size -= 2;
  return size;
}

let srv: TestServer;
beforeAll(async () => {
  srv = await startTestServer({ users: [{ name: 'corpus', password: 'pw' }] });
  for (let i = 0; i < CORPUS.length; i++) {
    // Leading numbers fix the order: message i+1 is CORPUS[i]. Even-numbered ones carry ,W= as an MTA would write it.
    const raw = CORPUS[i]!.raw;
    const name = `${1_600_000_000 + i}.M${i}P1.corpus${i % 2 === 0 ? `,S=${raw.length},W=${crlfSize(raw)}` : ''}`;
    await putMessage(srv.maildirRoot, 'corpus', name, raw);
  }
});
afterAll(() => srv.stop());

type Transport = 'plain' | 'implicit TLS' | 'STLS';

async function open(t: Transport): Promise<Wire> {
  const w = await Wire.connect(t === 'implicit TLS' ? srv.tlsPort : srv.port, { tls: t === 'implicit TLS' });
  expect(await w.line()).toBe('+OK Poplar ready.');
  if (t === 'STLS') {
    expect(await w.cmd('STLS')).toMatch(/^\+OK/);
    await w.upgrade();
  }
  expect(await w.cmd('USER corpus')).toBe('+OK');
  expect(await w.cmd('PASS pw')).toBe('+OK Logged in.');
  return w;
}

async function quit(w: Wire): Promise<void> {
  expect(await w.cmd('QUIT')).toBe('+OK Logging out, 0 messages deleted.');
  await w.closed();
}

describe('corpus sizes', () => {
  it('the two size computations agree for every corpus message', () => {
    for (const m of CORPUS) expect(sizeFromOracle(m.raw), m.name).toBe(crlfSize(m.raw));
  });
});

describe.each<Transport>(['plain', 'implicit TLS', 'STLS'])('edge corpus over %s', (transport) => {
  it('LIST, STAT and UIDL', async () => {
    const w = await open(transport);
    const list = await w.cmdLines('LIST');
    expect(list.lines).toEqual(CORPUS.map((m, i) => `${i + 1} ${sizeFromOracle(m.raw)}`));
    const total = CORPUS.reduce((a, m) => a + crlfSize(m.raw), 0);
    expect(await w.cmd('STAT')).toBe(`+OK ${CORPUS.length} ${total}`);
    for (let i = 0; i < CORPUS.length; i++) expect(await w.cmd(`LIST ${i + 1}`), CORPUS[i]!.name).toBe(`+OK ${i + 1} ${crlfSize(CORPUS[i]!.raw)}`);
    const uids = (await w.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]!);
    expect(new Set(uids).size).toBe(CORPUS.length);
    for (const u of uids) expect(u).toMatch(/^[\x21-\x7e]{1,70}$/);
    await quit(w);
  });

  it('RETR and TOP 0/1/3 of every message, byte-exact, one at a time', async () => {
    const w = await open(transport);
    for (let i = 0; i < CORPUS.length; i++) {
      const m = CORPUS[i]!;
      if (m.raw.length > 1_000_000 && transport === 'STLS') continue; // the big one: plain and implicit TLS suffice
      const r = await w.cmdMulti(`RETR ${i + 1}`);
      expect(r.status, m.name).toBe(`+OK ${crlfSize(m.raw)} octets`);
      expect(r.body.equals(expectedRetr(m.raw)), `RETR ${m.name}`).toBe(true);
      for (const n of TOPS) {
        const t = await w.cmdMulti(`TOP ${i + 1} ${n}`);
        expect(t.status, m.name).toMatch(/^\+OK/);
        if (!t.body.equals(expectedTop(m.raw, n))) {
          expect(t.body.toString('latin1').slice(0, 2000), `TOP ${i + 1} ${n} (${m.name})`).toBe(expectedTop(m.raw, n).toString('latin1').slice(0, 2000));
          expect.fail(`TOP ${i + 1} ${n} (${m.name}) differs`);
        }
      }
    }
    await quit(w);
  });

  it('every RETR and TOP pipelined in one write: replies complete and in order', async () => {
    const w = await open(transport);
    const cmds: string[] = [];
    const want: Buffer[] = [];
    for (let i = 0; i < CORPUS.length; i++) {
      const raw = CORPUS[i]!.raw;
      if (raw.length > 1_000_000 && transport !== 'plain') continue; // the 5 MiB one once is enough
      cmds.push(`RETR ${i + 1}`);
      want.push(Buffer.concat([Buffer.from(`+OK ${crlfSize(raw)} octets\r\n`), expectedRetr(raw)]));
      for (const n of TOPS) {
        cmds.push(`TOP ${i + 1} ${n}`);
        want.push(Buffer.concat([Buffer.from('+OK Top of message follows\r\n'), expectedTop(raw, n)]));
      }
    }
    w.sendRaw(cmds.map((c) => c + '\r\n').join(''));
    for (let k = 0; k < cmds.length; k++) {
      const r = await w.multi();
      const got = Buffer.concat([Buffer.from(r.status + '\r\n'), r.body]);
      expect(got.equals(want[k]!), cmds[k]).toBe(true);
    }
    await quit(w);
  });
});
