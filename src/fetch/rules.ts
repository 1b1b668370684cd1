/**
 * Delivery rules: the first rule whose conditions all hold decides where a
 * message goes (a Maildir folder, another sink, or nowhere). Conditions look
 * at one header field (regular expression on the unfolded value) and at the
 * size the server announced.
 */
import type { ResolvedAccount, SinkSpecValue } from './config.js';

export type Destination =
  | { readonly kind: 'default' }
  | { readonly kind: 'folder'; readonly folder: string }
  | { readonly kind: 'sink'; readonly key: string; readonly spec: SinkSpecValue }
  | { readonly kind: 'discard' };

export const DEFAULT_DESTINATION: Destination = { kind: 'default' };

export interface CompiledRule {
  readonly header?: string;
  readonly re?: RegExp;
  readonly largerThan?: number;
  readonly smallerThan?: number;
  readonly destination: Destination;
}

export function compileRules(rules: ResolvedAccount['rule']): CompiledRule[] {
  return rules.map((r) => ({
    ...(r.header !== undefined ? { header: r.header.toLowerCase(), re: new RegExp(r.match!, r.case_sensitive ? '' : 'i') } : {}),
    ...(r.larger_than !== undefined ? { largerThan: r.larger_than } : {}),
    ...(r.smaller_than !== undefined ? { smallerThan: r.smaller_than } : {}),
    destination:
      r.discard === true
        ? { kind: 'discard' }
        : r.folder !== undefined
          ? { kind: 'folder', folder: r.folder }
          : { kind: 'sink', key: r.sinkKey!, spec: r.sink! },
  }));
}

export function rulesNeedHeaders(rules: readonly CompiledRule[]): boolean {
  return rules.some((r) => r.header !== undefined);
}

/** Header fields (name lower-cased → unfolded values), read as Latin-1 so any octet survives. */
export function parseHeaders(head: Buffer): Map<string, string[]> {
  const text = head.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const block = end >= 0 ? text.slice(0, end) : text;
  const fields = new Map<string, string[]>();
  let name: string | undefined;
  let value = '';
  const flush = (): void => {
    if (name === undefined) return;
    const list = fields.get(name) ?? [];
    list.push(value.trim());
    fields.set(name, list);
  };
  for (const line of block.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && name !== undefined) {
      value += ' ' + line.trim(); // RFC 5322 §2.2.3 unfolding
      continue;
    }
    flush();
    name = undefined;
    const colon = line.indexOf(':');
    if (colon > 0 && /^[\x21-\x39\x3b-\x7e]+$/.test(line.slice(0, colon).trimEnd())) {
      name = line.slice(0, colon).trimEnd().toLowerCase();
      value = line.slice(colon + 1);
    }
  }
  flush();
  return fields;
}

/** UTF-8 where it decodes, so a pattern can name non-ASCII text; Latin-1 otherwise. */
function decodeValue(v: string): string {
  const b = Buffer.from(v, 'latin1');
  const u = b.toString('utf8');
  return u.includes('\uFFFD') ? v : u;
}

export function chooseDestination(rules: readonly CompiledRule[], size: number, headers: Map<string, string[]> | undefined): Destination {
  for (const r of rules) {
    if (r.largerThan !== undefined && !(size > r.largerThan)) continue;
    if (r.smallerThan !== undefined && !(size < r.smallerThan)) continue;
    if (r.header !== undefined) {
      const values = headers?.get(r.header) ?? [];
      if (!values.some((v) => r.re!.test(decodeValue(v)))) continue;
    }
    return r.destination;
  }
  return DEFAULT_DESTINATION;
}

/** The key an intent line records for a destination (no spaces). */
export function destinationKey(d: Destination): string {
  switch (d.kind) {
    case 'default':
      return '-';
    case 'folder':
      return `folder:${encodeURIComponent(d.folder)}`;
    case 'sink':
      return d.key;
    case 'discard':
      return 'discard';
  }
}
