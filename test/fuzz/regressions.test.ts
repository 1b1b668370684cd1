/**
 * Inputs the fuzz targets found that broke a parser's contract, each kept
 * as a fixed case beside the fix.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseStatusLine } from '../../src/client/reply.js';
import { Ledger, LedgerError } from '../../src/fetch/ledger.js';
import { parseProxyHeader } from '../../src/server/proxy-header.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fuzz-reg-'));
});
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

describe('fetch ledger', () => {
  it.each([
    ['an intent', 'poplar-ledger 1\n? 99999999999999999999999999999 ghi -\n'],
    ['a record', `poplar-ledger 1\n+ ${'9'.repeat(400)} d abc\n`],
  ])('refuses %s whose time has more digits than a safe integer (it read as Infinity: a message never old enough to expire, an intent no copy could match)', async (_, text) => {
    const file = path.join(dir, `ledger-${Math.random()}`);
    await fs.writeFile(file, text);
    await expect(Ledger.open(file, { fsync: false })).rejects.toThrow(LedgerError);
  });

  it('still reads times of 13 digits (ms since the epoch)', async () => {
    const file = path.join(dir, 'ledger-ok');
    await fs.writeFile(file, 'poplar-ledger 1\n+ 1700000000000 d abc\n? 1700000000001 def -\n');
    const l = await Ledger.open(file, { fsync: false });
    expect(l.get('abc')).toEqual({ firstSeen: 1700000000000, discarded: false });
    expect(l.pending()).toEqual([{ uidl: 'def', since: 1700000000001, target: '-' }]);
    await l.close();
  });
});

describe('client reply lines', () => {
  // Each level was looked up by joining all levels before it: a 64 KiB reply line of slashes kept the client busy for minutes.
  it('reads a response code of 60 000 levels at once, as its known parent', { timeout: 20_000 }, () => {
    const r = parseStatusLine(`-ERR [SYS/TEMP${'/'.repeat(60_000)}x] busy`);
    expect(r).toMatchObject({ ok: false, code: 'SYS/TEMP', text: 'busy' });
    expect(r.rawCode).toHaveLength(60_009);
    expect(parseStatusLine(`-ERR [${'/'.repeat(60_000)}] no`).code).toBeUndefined();
    expect(parseStatusLine('-ERR [IN-USE/LOCKED] held').code).toBe('IN-USE');
  });
});

describe('PROXY protocol header', () => {
  // net.isIPv6 accepts a zone index; the address's canonical form (through URL) then threw a TypeError.
  it('refuses a v1 address with a zone index as invalid instead of throwing', () => {
    expect(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 2001:db8::%1 51000 110\r\n'))).toMatchObject({ kind: 'invalid' });
    expect(parseProxyHeader(Buffer.from('PROXY TCP6 fe80::1%eth0 ::1 51000 110\r\n'))).toMatchObject({ kind: 'invalid' });
    expect(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 ::1 51000 110\r\n'))).toMatchObject({ kind: 'header', addresses: { sourceAddress: '2001:db8::1' } });
  });
});
