import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeProxyHeader, parseProxyHeader, PROXY_HEADER_MAX, V1_MAX, type ProxyAddresses } from './proxy-header.js';

const v4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join('.'));
// Canonical IPv6 text (as the parser spells it) from eight random groups, avoiding IPv4-mapped ones.
const v6 = fc
  .array(fc.nat(0xffff), { minLength: 8, maxLength: 8 })
  .filter((g) => !(g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff))
  .map((g) => new URL(`http://[${g.map((x) => x.toString(16)).join(':')}]/`).hostname.slice(1, -1));
const port = fc.nat(65535);
const addresses = (ip: fc.Arbitrary<string>): fc.Arbitrary<ProxyAddresses> =>
  fc.record({ sourceAddress: ip, destinationAddress: ip, sourcePort: port, destinationPort: port });
const anyHeader = fc.tuple(fc.constantFrom<1 | 2>(1, 2), fc.oneof(addresses(v4), addresses(v6))).map(([v, a]) => encodeProxyHeader(v, a));

/** Parses `buf` and checks the result is one of the three kinds and never claims bytes past the bound or the buffer. */
function parseChecked(buf: Buffer): ReturnType<typeof parseProxyHeader> {
  const r = parseProxyHeader(buf);
  expect(['header', 'incomplete', 'invalid']).toContain(r.kind);
  if (r.kind === 'header') {
    expect(r.length).toBeLessThanOrEqual(Math.min(buf.length, PROXY_HEADER_MAX));
    if (r.version === 1) expect(r.length).toBeLessThanOrEqual(V1_MAX);
  }
  return r;
}

describe('PROXY protocol header parser', () => {
  it('round-trips TCP4 and TCP6 headers of both versions, with the bytes after them left alone', () => {
    fc.assert(
      fc.property(fc.constantFrom<1 | 2>(1, 2), fc.oneof(addresses(v4), addresses(v6)), fc.uint8Array({ maxLength: 64 }), (version, a, rest) => {
        const h = encodeProxyHeader(version, a);
        const r = parseChecked(Buffer.concat([h, rest]));
        expect(r).toEqual({ kind: 'header', version, addresses: a, length: h.length });
      }),
    );
  });

  it('every proper prefix of a valid header is incomplete, never an error or a header', () => {
    fc.assert(
      fc.property(anyHeader, (h) => {
        for (let i = 0; i < h.length; i++) expect(parseChecked(h.subarray(0, i)).kind).toBe('incomplete');
      }),
    );
  });

  it('random bytes give a typed result and never throw', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 3000 }), (b) => void parseChecked(Buffer.from(b))), { numRuns: 2000 });
  });

  it('mutated valid headers give a typed result and never throw', () => {
    fc.assert(
      fc.property(anyHeader, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 6 }), fc.nat(), (h, flips, cut) => {
        const b = Buffer.from(h);
        for (const [at, v] of flips) b[at % b.length] = v;
        parseChecked(b);
        parseChecked(b.subarray(0, cut % (b.length + 1)));
      }),
      { numRuns: 3000 },
    );
  });

  it('refuses what is not a header', () => {
    const v2 = encodeProxyHeader(2, { sourceAddress: '192.0.2.7', destinationAddress: '10.0.0.1', sourcePort: 5555, destinationPort: 110 });
    const bad = (b: Buffer | string): string => {
      const r = parseProxyHeader(Buffer.isBuffer(b) ? b : Buffer.from(b, 'latin1'));
      return r.kind;
    };
    expect(bad('USER alice\r\n')).toBe('invalid');
    expect(bad('\x16\x03\x01\x02\x00')).toBe('invalid'); // a TLS ClientHello without a header
    expect(bad(`PROXY TCP4 ${'1'.repeat(120)}`)).toBe('invalid'); // no CRLF within 107 octets
    expect(bad('PROXY TCP4 192.0.2.1 10.0.0.1 5555\r\n')).toBe('invalid');
    expect(bad('PROXY TCP4 ::1 ::1 5555 110\r\n')).toBe('invalid');
    expect(bad('PROXY TCP4 192.0.2.1 10.0.0.1 65536 110\r\n')).toBe('invalid');
    expect(bad('PROXY UDP4 192.0.2.1 10.0.0.1 1 110\r\n')).toBe('invalid');
    const wrongVersion = Buffer.from(v2);
    wrongVersion[12] = 0x11;
    expect(bad(wrongVersion)).toBe('invalid');
    const unknownCommand = Buffer.from(v2);
    unknownCommand[12] = 0x22;
    expect(bad(unknownCommand)).toBe('invalid');
    const unixFamily = Buffer.from(v2);
    unixFamily[13] = 0x31;
    expect(bad(unixFamily)).toBe('invalid');
    const oversized = Buffer.from(v2);
    oversized.writeUInt16BE(0xffff, 14);
    expect(bad(oversized)).toBe('invalid');
    const short = Buffer.from(v2.subarray(0, 16 + 8));
    short.writeUInt16BE(8, 14);
    expect(bad(short)).toBe('invalid');
  });

  it('LOCAL (v2) and UNKNOWN (v1) mean the socket’s own addresses', () => {
    expect(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'))).toEqual({ kind: 'header', version: 1, addresses: null, length: 15 });
    const local = Buffer.from(encodeProxyHeader(2, { sourceAddress: '192.0.2.7', destinationAddress: '10.0.0.1', sourcePort: 1, destinationPort: 2 }));
    local[12] = 0x20;
    expect(parseProxyHeader(local)).toMatchObject({ kind: 'header', version: 2, addresses: null, length: local.length });
  });
});
