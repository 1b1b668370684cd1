/** The client's pure decisions and parsers: login method, cleartext policy, replies, fingerprints. */
import { describe, expect, it } from 'vitest';
import {
  chooseLoginMethod,
  cleartextAllowed,
  isLoopback,
  knownRespCode,
  normalizeFingerprint,
  parseStatusLine,
  Pop3ProtocolError,
  sendsCleartextSecret,
} from '../../src/client/index.js';
import { apopTimestampOf, parseCapabilities, parseListEntry, parseStat, parseUidlEntry } from '../../src/client/reply.js';

describe('isLoopback', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.1.2.3', true],
    ['::1', true],
    ['[::1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['::ffff:127.0.0.1', true],
    ['localhost', true],
    ['LOCALHOST', true],
    ['mail.localhost', true],
    ['128.0.0.1', false],
    ['10.0.0.1', false],
    ['::2', false],
    ['1::1', false],
    ['::ffff:10.0.0.1', false],
    ['localhost.example.com', false],
    ['mail.example.com', false],
    ['', false],
  ])('%s → %s', (h, want) => expect(isLoopback(h)).toBe(want));
});

describe('cleartextAllowed', () => {
  it('TLS, loopback, or explicit permission', () => {
    expect(cleartextAllowed({ secure: true, peer: '203.0.113.5', allowPlaintextPassword: false })).toBe(true);
    expect(cleartextAllowed({ secure: false, peer: '127.0.0.1', allowPlaintextPassword: false })).toBe(true);
    expect(cleartextAllowed({ secure: false, peer: '203.0.113.5', allowPlaintextPassword: true })).toBe(true);
    expect(cleartextAllowed({ secure: false, peer: '203.0.113.5', allowPlaintextPassword: false })).toBe(false);
    expect(cleartextAllowed({ secure: false, peer: 'mail.example.com', allowPlaintextPassword: false })).toBe(false);
  });

  it('which methods send the secret as is', () => {
    for (const m of ['PLAIN', 'login', 'USER', 'XOAUTH2', 'OAUTHBEARER']) expect(sendsCleartextSecret(m)).toBe(true);
    for (const m of ['APOP', 'CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256-PLUS', 'EXTERNAL']) expect(sendsCleartextSecret(m)).toBe(false);
  });
});

describe('chooseLoginMethod', () => {
  const base = { saslMechanisms: [] as string[], userPass: false, channelBinding: false, cleartextAllowed: true };
  const pick = (o: Partial<typeof base>): unknown => chooseLoginMethod({ ...base, ...o });

  it('prefers SCRAM-SHA-256-PLUS > SCRAM-SHA-256 > SCRAM-SHA-1 > CRAM-MD5 > PLAIN > LOGIN > USER', () => {
    const all = ['LOGIN', 'PLAIN', 'CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', 'SCRAM-SHA-1-PLUS', 'XOAUTH2'];
    expect(pick({ saslMechanisms: all, userPass: true, channelBinding: true })).toEqual({ ok: true, method: 'SCRAM-SHA-256-PLUS' });
    expect(pick({ saslMechanisms: all, userPass: true })).toEqual({ ok: true, method: 'SCRAM-SHA-256' });
    expect(pick({ saslMechanisms: ['scram-sha-1', 'plain'] })).toEqual({ ok: true, method: 'SCRAM-SHA-1' });
    expect(pick({ saslMechanisms: ['PLAIN', 'CRAM-MD5'] })).toEqual({ ok: true, method: 'CRAM-MD5' });
    expect(pick({ saslMechanisms: ['LOGIN', 'PLAIN'], userPass: true })).toEqual({ ok: true, method: 'PLAIN' });
    expect(pick({ saslMechanisms: ['LOGIN'], userPass: true })).toEqual({ ok: true, method: 'LOGIN' });
    expect(pick({ userPass: true })).toEqual({ ok: true, method: 'USER' });
  });

  it('never picks APOP, bearer or unknown mechanisms on its own', () => {
    expect(pick({ saslMechanisms: ['XOAUTH2', 'OAUTHBEARER', 'GSSAPI', 'APOP'] })).toEqual({ ok: false, refusedCleartext: false });
  });

  it('-PLUS only with channel-binding data', () => {
    expect(pick({ saslMechanisms: ['SCRAM-SHA-256-PLUS'] })).toEqual({ ok: false, refusedCleartext: false });
    expect(pick({ saslMechanisms: ['SCRAM-SHA-1-PLUS', 'SCRAM-SHA-256'], channelBinding: true })).toEqual({ ok: true, method: 'SCRAM-SHA-1-PLUS' });
  });

  it('without cleartext permission: skips PLAIN, LOGIN, USER and says why when nothing is left', () => {
    expect(pick({ saslMechanisms: ['PLAIN', 'LOGIN'], userPass: true, cleartextAllowed: false })).toEqual({ ok: false, refusedCleartext: true });
    expect(pick({ saslMechanisms: ['PLAIN', 'CRAM-MD5'], userPass: true, cleartextAllowed: false })).toEqual({ ok: true, method: 'CRAM-MD5' });
    expect(pick({ saslMechanisms: ['PLAIN', 'SCRAM-SHA-1'], cleartextAllowed: false })).toEqual({ ok: true, method: 'SCRAM-SHA-1' });
  });
});

describe('parseStatusLine', () => {
  it.each([
    ['+OK', { ok: true, code: undefined, rawCode: undefined, text: '' }],
    ['+OK ', { ok: true, code: undefined, rawCode: undefined, text: '' }],
    ['+OK 2 320', { ok: true, code: undefined, rawCode: undefined, text: '2 320' }],
    ['+ok lower case', { ok: true, code: undefined, rawCode: undefined, text: 'lower case' }],
    ['-ERR', { ok: false, code: undefined, rawCode: undefined, text: '' }],
    ['-ERR no such message', { ok: false, code: undefined, rawCode: undefined, text: 'no such message' }],
    ['-ERR [IN-USE] locked', { ok: false, code: 'IN-USE', rawCode: 'IN-USE', text: 'locked' }],
    ['-ERR [AUTH]', { ok: false, code: 'AUTH', rawCode: 'AUTH', text: '' }],
    ['-ERR [SYS/TEMP] later', { ok: false, code: 'SYS/TEMP', rawCode: 'SYS/TEMP', text: 'later' }],
    ['-ERR [SYS/TEMP/X] later', { ok: false, code: 'SYS/TEMP', rawCode: 'SYS/TEMP/X', text: 'later' }],
    ['-ERR [SYS/PERM] gone', { ok: false, code: 'SYS/PERM', rawCode: 'SYS/PERM', text: 'gone' }],
    ['-ERR [LOGIN-DELAY] 900', { ok: false, code: 'LOGIN-DELAY', rawCode: 'LOGIN-DELAY', text: '900' }],
    ['-ERR [UTF8] unknown to us', { ok: false, code: undefined, rawCode: 'UTF8', text: 'unknown to us' }],
    ['-ERR [SYS] only the parent', { ok: false, code: undefined, rawCode: 'SYS', text: 'only the parent' }],
    ['-ERR [not closed', { ok: false, code: undefined, rawCode: undefined, text: '[not closed' }],
  ])('%j', (line, want) => expect(parseStatusLine(line)).toEqual(want));

  it.each(['', 'OK', '+', '+ abc', '+OKAY', '-ERROR', 'HTTP/1.1 400 Bad Request'])('%j is malformed', (line) => {
    expect(() => parseStatusLine(line)).toThrow(Pop3ProtocolError);
  });

  it('knownRespCode maps sub-codes to the known parent', () => {
    expect(knownRespCode('in-use/other')).toBe('IN-USE');
    expect(knownRespCode('SYS/TEMP/A/B')).toBe('SYS/TEMP');
    expect(knownRespCode('X-FOO')).toBeUndefined();
  });
});

describe('reply bodies', () => {
  it('capabilities: upper-cased tags, parameters kept', () => {
    expect(parseCapabilities(['top', 'SASL PLAIN  LOGIN', 'EXPIRE 30 USER', '', 'implementation Foo Bar'])).toEqual(
      new Map([
        ['TOP', []],
        ['SASL', ['PLAIN', 'LOGIN']],
        ['EXPIRE', ['30', 'USER']],
        ['IMPLEMENTATION', ['Foo', 'Bar']],
      ]),
    );
  });

  it('STAT, LIST and UIDL entries; numbers that are not numbers are protocol errors', () => {
    expect(parseStat('2 320')).toEqual({ count: 2, octets: 320 });
    expect(parseStat('2 320 extra text')).toEqual({ count: 2, octets: 320 });
    expect(parseListEntry('  1   120 ')).toEqual({ number: 1, octets: 120 });
    expect(parseListEntry('007 5')).toEqual({ number: 7, octets: 5 });
    expect(parseUidlEntry('3 whqtswO00WBw418f9t5JxYwZ')).toEqual({ number: 3, uid: 'whqtswO00WBw418f9t5JxYwZ' });
    for (const bad of ['', 'x 1', '1', '-1 5', '1 1e3', `1 ${'9'.repeat(20)}`]) expect(() => parseListEntry(bad)).toThrow(Pop3ProtocolError);
    for (const bad of ['', '1', 'a b']) expect(() => parseUidlEntry(bad)).toThrow(Pop3ProtocolError);
    expect(() => parseStat('')).toThrow(Pop3ProtocolError);
  });

  it('APOP timestamp in a greeting', () => {
    expect(apopTimestampOf('POP3 server ready <1896.697170952@dbc.mtview.ca.us>')).toBe('<1896.697170952@dbc.mtview.ca.us>');
    expect(apopTimestampOf('Dovecot ready.')).toBeUndefined();
    expect(apopTimestampOf('ready <no-at-sign>')).toBeUndefined();
  });
});

describe('normalizeFingerprint', () => {
  const hex = 'AB'.repeat(32);
  it('accepts colons or none, any case', () => {
    expect(normalizeFingerprint(hex.toLowerCase())).toBe(hex);
    expect(normalizeFingerprint(hex.match(/../g)!.join(':'))).toBe(hex);
  });
  it('rejects anything that is not a SHA-256 digest', () => {
    for (const bad of ['', 'AB', 'AB'.repeat(20), `${'AB'.repeat(31)}ZZ`]) expect(() => normalizeFingerprint(bad)).toThrow(RangeError);
  });
});
