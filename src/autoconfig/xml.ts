/**
 * XML for the autoconfig listener: a writer whose every text and attribute
 * goes through one escaping function, and a strict reader for the small
 * documents clients send (an Autodiscover request): well-formedness and
 * namespaces checked, no DOCTYPE (so no entity expansion and no external
 * entities), bounded depth and element count. A document that is not
 * well-formed is an XmlSyntaxError, never a partial tree.
 */

/** Characters XML 1.0 cannot carry at all (§2.2 Char), even escaped. */
const NOT_XML_CHAR = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const NOT_XML_CHAR_G = new RegExp(NOT_XML_CHAR.source, 'g');

/** `s` as XML character data or an attribute value (quotes escaped too); characters XML cannot carry become U+FFFD. */
export function escapeXml(s: string): string {
  // A carriage return escaped too: a reader turns a literal one into a line feed.
  return s.replace(NOT_XML_CHAR_G, '\ufffd').replace(/[&<>"'\r]/g, (c) => ESCAPES[c]!);
}

/** An attribute value: line feeds and tabs escaped as well, since a reader turns literal ones into spaces. */
function escapeAttr(s: string): string {
  return escapeXml(s).replace(/[\n\t]/g, (c) => ESCAPES[c]!);
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;', '\r': '&#13;', '\n': '&#10;', '\t': '&#9;' };

export interface XmlElement {
  readonly name: string;
  readonly attrs?: Readonly<Record<string, string>>;
  /** Strings are text; an empty list makes `<name/>`. */
  readonly children?: readonly (XmlElement | string)[];
}

/** Shorthand for an element. */
export function el(name: string, children: readonly (XmlElement | string)[] = [], attrs?: Record<string, string>): XmlElement {
  return attrs === undefined ? { name, children } : { name, attrs, children };
}

/** `root` as a document: an XML declaration, then the elements indented by two spaces (text-only elements on one line). */
export function renderXml(root: XmlElement, prolog = ''): string {
  const out: string[] = ['<?xml version="1.0" encoding="UTF-8"?>\n', prolog];
  const write = (e: XmlElement, indent: string): void => {
    const attrs = Object.entries(e.attrs ?? {}).map(([k, v]) => ` ${k}="${escapeAttr(v)}"`).join('');
    const kids = e.children ?? [];
    if (kids.length === 0) {
      out.push(`${indent}<${e.name}${attrs}/>\n`);
    } else if (kids.every((k) => typeof k === 'string')) {
      out.push(`${indent}<${e.name}${attrs}>${kids.map((k) => escapeXml(k as string)).join('')}</${e.name}>\n`);
    } else {
      out.push(`${indent}<${e.name}${attrs}>\n`);
      for (const k of kids) {
        if (typeof k === 'string') out.push(`${indent}  ${escapeXml(k)}\n`);
        else write(k, indent + '  ');
      }
      out.push(`${indent}</${e.name}>\n`);
    }
  };
  write(root, '');
  return out.join('');
}

export class XmlSyntaxError extends Error {
  override name = 'XmlSyntaxError';
}

/** An element as read: its local name, namespace URI ('' for none), attributes by their written name, and children. */
export interface ParsedElement {
  readonly local: string;
  readonly ns: string;
  readonly attrs: ReadonlyMap<string, string>;
  readonly children: readonly (ParsedElement | string)[];
}

export interface ReadLimits {
  readonly maxDepth?: number;
  readonly maxElements?: number;
}

const XML_NS = 'http://www.w3.org/XML/1998/namespace';
const NAME = /[A-Za-z_:\u00c0-\ufffd][-A-Za-z0-9._:\u00b7\u00c0-\ufffd]*/y;
const PREDEFINED: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/** The document element of `text`, or an XmlSyntaxError saying where it is not well-formed. */
export function parseXml(text: string, limits: ReadLimits = {}): ParsedElement {
  const maxDepth = limits.maxDepth ?? 32;
  const maxElements = limits.maxElements ?? 1000;
  let s = text.startsWith('\ufeff') ? text.slice(1) : text;
  const bad = NOT_XML_CHAR.exec(s);
  if (bad !== null) throw new XmlSyntaxError(`a character XML does not allow at offset ${bad.index}`);
  s = s.replace(/\r\n?/g, '\n');
  let i = 0;
  let elements = 0;
  const fail = (why: string): never => {
    throw new XmlSyntaxError(`${why} at offset ${i}`);
  };
  const skipSpace = (): void => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\n' || s[i] === '\t')) i++;
  };
  const name = (): string => {
    NAME.lastIndex = i;
    const m = NAME.exec(s);
    if (m === null) return fail('a name expected');
    i += m[0].length;
    return m[0];
  };
  const decode = (raw: string, where: string): string =>
    raw.replace(/&([^;&]*);|&/g, (_whole, ref: string | undefined) => {
      if (ref === undefined) fail(`a bare & in ${where}`);
      const known = PREDEFINED[ref!];
      if (known !== undefined) return known;
      const m = /^#(?:x([0-9A-Fa-f]{1,6})|([0-9]{1,7}))$/.exec(ref!);
      if (m === null) return fail(`an unknown entity &${ref}; in ${where}`);
      const code = m[1] !== undefined ? parseInt(m[1], 16) : Number(m[2]);
      const ch = code <= 0x10ffff ? String.fromCodePoint(code) : '';
      if (ch === '' || (code >= 0xd800 && code <= 0xdfff) || NOT_XML_CHAR.test(ch)) fail(`a character reference to a character XML does not allow in ${where}`);
      return ch;
    });
  /** A comment or processing instruction at i (after `<!--` / `<?` checks); returns false when there is none. */
  const misc = (): boolean => {
    if (s.startsWith('<!--', i)) {
      const end = s.indexOf('-->', i + 4);
      if (end < 0) fail('an unterminated comment');
      if (s.slice(i + 4, end).includes('--') || s[end - 1] === '-') fail('"--" inside a comment');
      i = end + 3;
      return true;
    }
    if (s.startsWith('<?', i)) {
      i += 2;
      const target = name();
      if (target.toLowerCase() === 'xml') fail('an XML declaration that is not at the start');
      const end = s.indexOf('?>', i);
      if (end < 0) fail('an unterminated processing instruction');
      i = end + 2;
      return true;
    }
    return false;
  };

  // The XML declaration, only at the very start.
  if (s.startsWith('<?xml', 0) && /^<\?xml[ \t\n]/.test(s)) {
    const end = s.indexOf('?>');
    if (end < 0) fail('an unterminated XML declaration');
    const decl = s.slice(5, end);
    if (!/^\s+version\s*=\s*(["'])1\.[0-9]+\1(\s+encoding\s*=\s*(["'])[A-Za-z][A-Za-z0-9._-]*\3)?(\s+standalone\s*=\s*(["'])(yes|no)\5)?\s*$/.test(decl)) fail('a malformed XML declaration');
    i = end + 2;
  }
  for (;;) {
    skipSpace();
    if (s.startsWith('<!DOCTYPE', i)) fail('a DOCTYPE (not accepted)');
    if (!misc()) break;
  }
  if (s[i] !== '<') fail('the document element expected');

  const element = (scope: ReadonlyMap<string, string>, depth: number): ParsedElement => {
    if (depth > maxDepth) fail(`elements nested deeper than ${maxDepth}`);
    if (++elements > maxElements) fail(`more than ${maxElements} elements`);
    i++; // '<'
    const qname = name();
    const raw = new Map<string, string>();
    for (;;) {
      const before = i;
      skipSpace();
      if (s[i] === '>' || s.startsWith('/>', i)) break;
      if (i === before) fail('white space expected between attributes');
      const an = name();
      skipSpace();
      if (s[i] !== '=') fail('"=" expected');
      i++;
      skipSpace();
      const q = s[i];
      if (q !== '"' && q !== "'") fail('a quoted attribute value expected');
      const end = s.indexOf(q!, i + 1);
      if (end < 0) fail('an unterminated attribute value');
      const rawValue = s.slice(i + 1, end);
      if (rawValue.includes('<')) fail('"<" in an attribute value');
      if (raw.has(an)) fail(`the attribute ${an} twice`);
      raw.set(an, decode(rawValue.replace(/[\n\t]/g, ' '), 'an attribute value'));
      i = end + 1;
    }
    // Namespace declarations of this element, then its names resolved with them.
    let inner: Map<string, string> | null = null;
    for (const [k, v] of raw) {
      if (k === 'xmlns' || k.startsWith('xmlns:')) {
        const prefix = k === 'xmlns' ? '' : k.slice(6);
        if (prefix === 'xmlns' || (prefix !== '' && v === '') || (prefix === 'xml') !== (v === XML_NS)) fail(`a reserved or empty namespace declaration ${k}`);
        (inner ??= new Map(scope)).set(prefix, v);
      }
    }
    const names = inner ?? scope;
    const resolve = (q: string, isAttr: boolean): { local: string; ns: string } => {
      const colon = q.indexOf(':');
      if (colon < 0) return { local: q, ns: isAttr ? '' : (names.get('') ?? '') };
      const prefix = q.slice(0, colon);
      const local = q.slice(colon + 1);
      if (local === '' || local.includes(':') || prefix === '') fail(`a malformed qualified name ${q}`);
      const ns = prefix === 'xml' ? XML_NS : names.get(prefix);
      if (ns === undefined) fail(`the undeclared namespace prefix ${prefix}`);
      return { local, ns: ns! };
    };
    const { local, ns } = resolve(qname, false);
    const seen = new Set<string>();
    for (const k of raw.keys()) {
      if (k === 'xmlns' || k.startsWith('xmlns:')) continue;
      const r = resolve(k, true);
      const key = `${r.ns}\u0000${r.local}`;
      if (seen.has(key)) fail(`the attribute ${r.local} twice`);
      seen.add(key);
    }
    if (s.startsWith('/>', i)) {
      i += 2;
      return { local, ns, attrs: raw, children: [] };
    }
    i++; // '>'
    const children: (ParsedElement | string)[] = [];
    let textStart = i;
    let text = '';
    const flushText = (end: number): void => {
      const chunk = s.slice(textStart, end);
      if (chunk.includes(']]>')) fail('"]]>" in text');
      text += decode(chunk, 'text');
    };
    for (;;) {
      const lt = s.indexOf('<', i);
      if (lt < 0) {
        i = s.length;
        fail(`the element ${qname} is not closed`);
      }
      i = lt;
      flushText(lt);
      if (s.startsWith('</', i)) {
        i += 2;
        const closing = name();
        if (closing !== qname) fail(`</${closing}> closes <${qname}>`);
        skipSpace();
        if (s[i] !== '>') fail('">" expected');
        i++;
        if (text !== '') children.push(text);
        return { local, ns, attrs: raw, children };
      }
      if (s.startsWith('<![CDATA[', i)) {
        const end = s.indexOf(']]>', i + 9);
        if (end < 0) fail('an unterminated CDATA section');
        text += s.slice(i + 9, end);
        i = end + 3;
      } else if (s.startsWith('<!--', i) || s.startsWith('<?', i)) {
        misc();
      } else if (s.startsWith('<!', i)) {
        fail('a declaration inside an element');
      } else {
        if (text !== '') children.push(text);
        text = '';
        children.push(element(names, depth + 1));
      }
      textStart = i;
    }
  };
  const root = element(new Map(), 1);
  for (;;) {
    skipSpace();
    if (i >= s.length) return root;
    if (!misc()) fail('content after the document element');
  }
}

/** The concatenated text directly inside `e`. */
export function textOf(e: ParsedElement): string {
  return e.children.filter((c): c is string => typeof c === 'string').join('');
}

/** The first child element of `e` with this local name (in `ns` when given). */
export function childOf(e: ParsedElement, local: string, ns?: string): ParsedElement | undefined {
  return e.children.find((c): c is ParsedElement => typeof c !== 'string' && c.local === local && (ns === undefined || c.ns === ns));
}
