/**
 * Edge-case corpus of stored messages, plus a deliberately simple reference
 * encoder (`expectedRetr` / `expectedTop`) that serves as the oracle for
 * integration tests. The reference splits the message into lines with a
 * plain byte loop and shares no code with src/protocol/dot-stuff.ts.
 *
 * Everything here is deterministic: the same bytes on every run.
 */

export interface CorpusMessage {
  name: string;
  raw: Buffer;
}

const HEADERS_LF =
  'Return-Path: <alice@example.org>\n' +
  'From: Alice <alice@example.org>\n' +
  'To: Bob <bob@example.net>\n' +
  'Subject: corpus\n' +
  'Date: Mon, 01 Jan 2024 00:00:00 +0000\n' +
  'Message-ID: <corpus@example.org>\n';

function lf(body: string): Buffer {
  return Buffer.from(HEADERS_LF + '\n' + body, 'latin1');
}

/** xorshift32: small, deterministic pseudo-random generator. */
function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** ~`size` octets: headers, blank line, random printable lines of 0..998 chars, some dot lines. */
function bigMessage(size: number, seed: number): Buffer {
  const rnd = xorshift32(seed);
  const out = Buffer.alloc(size);
  let o = out.write(HEADERS_LF + 'Subject: big\n\n', 0, 'latin1');
  while (o < size) {
    const kind = rnd() % 100;
    let line: string;
    if (kind < 3) line = '.';
    else if (kind < 8) line = '.' + 'x'.repeat(rnd() % 20);
    else if (kind < 10) line = '';
    else if (kind < 11) line = '..';
    else {
      const n = rnd() % 120;
      let s = '';
      for (let k = 0; k < n; k++) s += String.fromCharCode(0x20 + (rnd() % 95));
      line = s;
    }
    const eol = rnd() % 4 === 0 ? '\r\n' : '\n';
    o += out.write(line + eol, o, 'latin1');
  }
  return out.subarray(0, size);
}

export function edgeCorpus(): CorpusMessage[] {
  const msgs: CorpusMessage[] = [
    { name: 'empty file', raw: Buffer.alloc(0) },
    { name: 'plain LF', raw: lf('Hello Bob,\nhow are you?\n-- \nAlice\n') },
    {
      name: 'stored with CRLF',
      raw: Buffer.from(HEADERS_LF.replace(/\n/g, '\r\n') + '\r\nline one\r\nline two\r\n', 'latin1'),
    },
    { name: 'dot-only lines (LF)', raw: lf('.\nbetween\n.\n.\n') },
    { name: 'dot-only lines (CRLF)', raw: Buffer.from('Subject: d\r\n\r\n.\r\na\r\n.\r\n', 'latin1') },
    { name: 'lines starting with dot after LF', raw: lf('.hidden\n..double\n...triple\n. space\n') },
    {
      name: 'lines starting with dot after CRLF',
      raw: Buffer.from('Subject: d\r\n\r\n.hidden\r\n..double\r\n.\r\n.x', 'latin1'),
    },
    { name: 'message starts with a dot', raw: Buffer.from('.From: weird\n\nbody\n', 'latin1') },
    { name: 'no final line end', raw: lf('last line has no newline') },
    { name: 'no final line end, dot line', raw: lf('x\n.') },
    { name: 'bare CR inside lines', raw: lf('a\rb\nc\r\rd\n\r\n\rx\n') },
    { name: 'ends with bare CR', raw: lf('trailing cr\r') },
    { name: 'CR CR LF', raw: lf('a\r\r\nb\n') },
    { name: 'mixed LF and CRLF', raw: Buffer.from('A: 1\r\nB: 2\n\r\nbody1\nbody2\r\n.\n', 'latin1') },
    { name: 'NUL bytes', raw: lf('nul\u0000here\n\u0000\n.\u0000\n') },
    {
      name: '8-bit Latin-1',
      raw: Buffer.concat([
        Buffer.from(HEADERS_LF + 'Content-Type: text/plain; charset=ISO-8859-1\n\n', 'latin1'),
        Buffer.from('Gr\u00fc\u00dfe aus K\u00f6ln, \u00e7a va? \u00ff\n', 'latin1'),
      ]),
    },
    {
      name: '8-bit UTF-8',
      raw: Buffer.concat([
        Buffer.from(HEADERS_LF + 'Content-Type: text/plain; charset=UTF-8\n\n', 'latin1'),
        Buffer.from('Grüße aus Köln — 日本語 😀\n.émoji line\n', 'utf8'),
      ]),
    },
    { name: '5000-octet line', raw: lf('y'.repeat(5000) + '\n.' + 'z'.repeat(4999) + '\nend\n') },
    { name: 'empty body (headers + blank line)', raw: Buffer.from(HEADERS_LF + '\n', 'latin1') },
    { name: 'empty body CRLF', raw: Buffer.from('Subject: e\r\n\r\n', 'latin1') },
    { name: 'no header/body separator', raw: Buffer.from(HEADERS_LF + 'X-Last: header\n', 'latin1') },
    { name: 'blank line first', raw: Buffer.from('\nbody only\n.\n', 'latin1') },
    { name: 'only line ends', raw: Buffer.from('\n\r\n\n', 'latin1') },
    { name: 'CR then LF split as separate lines', raw: Buffer.from('H: v\n\r\n\r\n\r', 'latin1') },
    { name: '5 MiB pseudo-random', raw: bigMessage(5 * 1024 * 1024, 0x5eed1939) },
  ];
  return msgs;
}

// ---------------------------------------------------------------------------
// Reference encoder (the oracle). Obviously correct rather than fast.

interface RefLine {
  /** Line content without its line end (a CR right before LF belongs to the line end). */
  content: Buffer;
  /** Whether the line was followed by LF (false only for a final partial line). */
  terminated: boolean;
}

function splitLines(raw: Buffer): RefLine[] {
  const lines: RefLine[] = [];
  let lineStart = 0;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x0a) {
      let end = i;
      if (end > lineStart && raw[end - 1] === 0x0d) end--;
      lines.push({ content: raw.subarray(lineStart, end), terminated: true });
      lineStart = i + 1;
    }
  }
  if (lineStart < raw.length) lines.push({ content: raw.subarray(lineStart), terminated: false });
  return lines;
}

const DOT = Buffer.from('.', 'latin1');
const CRLF = Buffer.from('\r\n', 'latin1');

function render(lines: RefLine[]): Buffer {
  const out: Buffer[] = [];
  for (const line of lines) {
    if (line.content[0] === 0x2e) out.push(DOT);
    out.push(line.content, CRLF);
  }
  out.push(DOT, CRLF);
  return Buffer.concat(out);
}

/** Exact bytes a correct server sends after the `+OK` line of RETR. */
export function expectedRetr(raw: Buffer): Buffer {
  return render(splitLines(raw));
}

/** Exact bytes a correct server sends after the `+OK` line of `TOP msg n`. */
export function expectedTop(raw: Buffer, n: number): Buffer {
  const lines = splitLines(raw);
  const blank = lines.findIndex((l) => l.terminated && l.content.length === 0);
  if (blank < 0) return render(lines);
  return render(lines.slice(0, blank + 1 + n));
}
