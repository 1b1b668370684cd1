import net from 'node:net';

/** `10.0.0.0/8`, `::1/128`, or a bare address (one host). Null when it is neither. */
export function parseCidr(s: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const slash = s.indexOf('/');
  const address = slash < 0 ? s : s.slice(0, slash);
  const family = net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : null;
  if (family === null) return null;
  const max = family === 'ipv4' ? 32 : 128;
  if (slash < 0) return { address, prefix: max, family };
  const p = s.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(p) || Number(p) > max) return null;
  return { address, prefix: Number(p), family };
}

/** The set of addresses the CIDRs cover (they were checked at config load: a bad one is skipped here). */
export function blockListOf(cidrs: readonly string[]): net.BlockList {
  const list = new net.BlockList();
  for (const c of cidrs) {
    const p = parseCidr(c);
    if (p) list.addSubnet(p.address, p.prefix, p.family);
  }
  return list;
}

/** Whether `address` (as a socket reports it; `::ffff:a.b.c.d` counts as IPv4) is in `list`. */
export function inList(list: net.BlockList, address: string): boolean {
  const a = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
  if (net.isIPv4(a)) return list.check(a, 'ipv4');
  if (net.isIPv6(a)) return list.check(a, 'ipv6');
  return false;
}
