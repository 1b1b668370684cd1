import net from 'node:net';

/**
 * The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load
 * balancer sends before anything else on a connection. Parsing never throws:
 * the result says it is complete, needs more bytes, or is bad and why.
 */

/** Version 1 is one text line of at most 107 octets with its CRLF. */
export const V1_MAX = 107;
/** The most a version 2 header may carry after its 16 fixed octets (addresses and TLVs). */
export const V2_MAX_BODY = 2048;
/** No valid header is longer than this; a reader never needs to buffer more. */
export const PROXY_HEADER_MAX = 16 + V2_MAX_BODY;

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

export interface ProxyAddresses {
  sourceAddress: string;
  sourcePort: number;
  destinationAddress: string;
  destinationPort: number;
}

export type ProxyParse =
  /** `addresses` null: the proxy speaks for itself (v1 UNKNOWN, v2 LOCAL or UNSPEC): use the socket's own. */
  | { kind: 'header'; version: 1 | 2; addresses: ProxyAddresses | null; length: number }
  | { kind: 'incomplete' }
  | { kind: 'invalid'; reason: string };

const invalid = (reason: string): ProxyParse => ({ kind: 'invalid', reason });
const INCOMPLETE: ProxyParse = { kind: 'incomplete' };

/** Whether `buf` begins like `prefix` for as many octets as both have. */
function startsLike(buf: Buffer, prefix: Buffer): boolean {
  const n = Math.min(buf.length, prefix.length);
  return buf.subarray(0, n).equals(prefix.subarray(0, n));
}

/** Parse the header at the start of `buf` (which may hold more bytes after it). */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  if (buf.length === 0) return INCOMPLETE;
  if (startsLike(buf, V2_SIGNATURE)) return buf.length < V2_SIGNATURE.length ? INCOMPLETE : parseV2(buf);
  if (startsLike(buf, V1_PREFIX)) return buf.length < V1_PREFIX.length ? INCOMPLETE : parseV1(buf);
  return invalid('no PROXY protocol signature');
}

const PORT = /^(0|[1-9][0-9]{0,4})$/;

function parseV1(buf: Buffer): ProxyParse {
  const window = buf.subarray(0, V1_MAX);
  const cr = window.indexOf('\r\n', 0, 'latin1');
  if (cr < 0) return buf.length >= V1_MAX ? invalid('v1 header longer than 107 octets') : INCOMPLETE;
  const line = window.toString('latin1', 0, cr);
  const length = cr + 2;
  const parts = line.split(' ');
  const proto = parts[1];
  if (proto === 'UNKNOWN') return { kind: 'header', version: 1, addresses: null, length };
  if (proto !== 'TCP4' && proto !== 'TCP6') return invalid('v1 header with an unknown protocol');
  if (parts.length !== 6) return invalid('v1 header with a wrong number of fields');
  const [, , src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const isFamily = proto === 'TCP4' ? net.isIPv4 : net.isIPv6;
  // net.isIPv6 takes a zone index ("fe80::1%eth0"), which names no client address (and URL refuses it).
  if (!isFamily(src) || !isFamily(dst) || src.includes('%') || dst.includes('%')) return invalid('v1 header with a bad address');
  if (!PORT.test(sport) || !PORT.test(dport) || Number(sport) > 65535 || Number(dport) > 65535) return invalid('v1 header with a bad port');
  return {
    kind: 'header',
    version: 1,
    addresses: { sourceAddress: canonical(src), sourcePort: Number(sport), destinationAddress: canonical(dst), destinationPort: Number(dport) },
    length,
  };
}

function parseV2(buf: Buffer): ProxyParse {
  if (buf.length < 16) return INCOMPLETE;
  const verCmd = buf[12]!;
  const fam = buf[13]!;
  const bodyLength = buf.readUInt16BE(14);
  if (verCmd >> 4 !== 2) return invalid('v2 header with an unknown version');
  const command = verCmd & 0x0f;
  if (command > 1) return invalid('v2 header with an unknown command');
  if (bodyLength > V2_MAX_BODY) return invalid('v2 header too long');
  const length = 16 + bodyLength;
  if (buf.length < length) return INCOMPLETE;
  // LOCAL: the proxy's own connection (a health check): the socket's addresses stand.
  if (command === 0) return { kind: 'header', version: 2, addresses: null, length };
  const body = buf.subarray(16, length);
  if (fam === 0x00) return { kind: 'header', version: 2, addresses: null, length };
  const family = fam === 0x11 ? V2_TCP4 : fam === 0x21 ? V2_TCP6 : undefined;
  if (family === undefined) return invalid('v2 header with an unsupported address family');
  const n = family.octets;
  if (body.length < 2 * n + 4) return invalid(`v2 header too short for ${family.name} addresses`);
  return {
    kind: 'header',
    version: 2,
    addresses: { sourceAddress: family.read(body, 0), destinationAddress: family.read(body, n), sourcePort: body.readUInt16BE(2 * n), destinationPort: body.readUInt16BE(2 * n + 2) },
    length,
  };
}

/** The two v2 TCP families: address size and how an address is written. */
const V2_TCP4 = { name: 'IPv4', octets: 4, read: (b: Buffer, at: number): string => ipv4(b, at) };
const V2_TCP6 = { name: 'IPv6', octets: 16, read: (b: Buffer, at: number): string => ipv6(b, at) };

function ipv4(b: Buffer, at: number): string {
  return `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
}

function ipv6(b: Buffer, at: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(b.readUInt16BE(at + i * 2).toString(16));
  return canonical(groups.join(':'));
}

/** One spelling per address (`::ffff:192.0.2.1` is `192.0.2.1`, IPv6 compressed) so limits and logs agree. */
function canonical(a: string): string {
  if (net.isIPv4(a)) return a;
  const url = new URL(`http://[${a}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(url);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  }
  return url;
}

/** Build a header (for tests and tools): v1 text or v2 binary, PROXY command over TCP. */
export function encodeProxyHeader(version: 1 | 2, a: ProxyAddresses): Buffer {
  const v6 = net.isIPv6(a.sourceAddress);
  if (version === 1) {
    return Buffer.from(`PROXY ${v6 ? 'TCP6' : 'TCP4'} ${a.sourceAddress} ${a.destinationAddress} ${a.sourcePort} ${a.destinationPort}\r\n`, 'latin1');
  }
  const addrBytes = (s: string): Buffer => (v6 ? ipv6Bytes(s) : Buffer.from(s.split('.').map(Number)));
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(a.sourcePort, 0);
  ports.writeUInt16BE(a.destinationPort, 2);
  const body = Buffer.concat([addrBytes(a.sourceAddress), addrBytes(a.destinationAddress), ports]);
  const head = Buffer.alloc(4);
  head[0] = 0x21;
  head[1] = v6 ? 0x21 : 0x11;
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([V2_SIGNATURE, head, body]);
}

function ipv6Bytes(s: string): Buffer {
  const [left = '', right] = s.split('::') as [string, string | undefined];
  const l = left === '' ? [] : left.split(':');
  const r = right === undefined || right === '' ? [] : right.split(':');
  const groups = right === undefined ? l : [...l, ...Array<string>(8 - l.length - r.length).fill('0'), ...r];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}
