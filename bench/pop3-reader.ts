/**
 * Incremental POP3 response parser for the load generator: status lines, and
 * multi-line bodies found by scanning for CRLF "." CRLF without copying the data.
 * The caller says, in order, which replies it expects to be multi-line.
 */

const TERM = Buffer.from('\r\n.\r\n');
const CR = 0x0d;
const LF = 0x0a;

export interface ReaderEvents {
  /** A status line ("+OK ..." / "-ERR ..."), without CRLF. */
  status(line: string, multi: boolean): void;
  /** End of a multi-line body; `bodyBytes` counts the bytes between the status line and the final ".\r\n". */
  bodyEnd(bodyBytes: number, body: Buffer | undefined): void;
}

export class Pop3Reader {
  readonly #ev: ReaderEvents;
  readonly #expect: boolean[] = []; // true = multi-line reply expected
  #expectHead = 0;
  #line: Buffer | null = null; // partial status line
  #inBody = false;
  /** Bytes of the body consumed so far (in earlier chunks). */
  #bodyBytes = 0;
  /** How many bytes of TERM the data seen so far ends with (0..4). */
  #match = 0;
  #collect = false;
  #parts: Buffer[] = [];

  constructor(events: ReaderEvents) {
    this.#ev = events;
  }

  /** Register the next reply's shape; `collect` keeps a multi-line body for the caller. */
  expect(multi: boolean, collect = false): void {
    this.#expect.push(multi);
    if (multi && collect) this.#collect = true;
  }

  get pendingReplies(): number {
    return this.#expect.length - this.#expectHead;
  }

  push(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.#inBody) pos = this.#scanBody(chunk, pos);
      else pos = this.#scanLine(chunk, pos);
    }
  }

  #scanLine(chunk: Buffer, pos: number): number {
    const nl = chunk.indexOf(LF, pos);
    if (nl < 0) {
      const rest = chunk.subarray(pos);
      this.#line = this.#line === null ? Buffer.from(rest) : Buffer.concat([this.#line, rest]);
      if (this.#line.length > 65536) throw new Error('status line longer than 64 KiB');
      return chunk.length;
    }
    let lineBuf = chunk.subarray(pos, nl);
    if (this.#line !== null) {
      lineBuf = Buffer.concat([this.#line, lineBuf]);
      this.#line = null;
    }
    let end = lineBuf.length;
    if (end > 0 && lineBuf[end - 1] === CR) end--;
    const line = lineBuf.toString('latin1', 0, end);
    const multi = this.#expectHead < this.#expect.length ? this.#expect[this.#expectHead++] === true : false;
    if (this.#expectHead > 1024) {
      this.#expect.splice(0, this.#expectHead);
      this.#expectHead = 0;
    }
    const isMulti = multi && line.startsWith('+OK');
    if (isMulti) {
      this.#inBody = true;
      this.#bodyBytes = 0;
      this.#match = 2; // the status line's CRLF starts a possible terminator (empty body)
      this.#parts = [];
    }
    this.#ev.status(line, isMulti);
    return nl + 1;
  }

  /** Returns the position after the terminator, or chunk.length if the body goes on. */
  #scanBody(chunk: Buffer, pos: number): number {
    const data = chunk.subarray(pos);
    // A terminator that started in earlier data and ends in this chunk.
    let found: number | null = null; // index in `data` where the terminator starts (negative: in earlier data)
    if (this.#match > 0) {
      const probe = Buffer.concat([TERM.subarray(0, this.#match), data.subarray(0, TERM.length)]);
      const k = probe.indexOf(TERM);
      if (k >= 0 && k < this.#match) found = k - this.#match;
    }
    if (found === null) {
      const j = data.indexOf(TERM);
      if (j >= 0) found = j;
    }
    if (found !== null) {
      const bodyBytes = this.#bodyBytes + found + 2;
      const endInData = found + TERM.length;
      let body: Buffer | undefined;
      if (this.#collect) {
        this.#parts.push(data.subarray(0, Math.max(0, found + 2)));
        body = Buffer.concat(this.#parts);
        if (body.length > bodyBytes) body = body.subarray(0, bodyBytes);
        this.#parts = [];
        this.#collect = false;
      }
      this.#inBody = false;
      this.#match = 0;
      this.#ev.bodyEnd(bodyBytes, body);
      return pos + endInData;
    }
    if (this.#collect) this.#parts.push(Buffer.from(data));
    this.#bodyBytes += data.length;
    this.#match = this.#suffixMatch(data);
    return chunk.length;
  }

  /** Longest prefix of TERM that the data seen so far ends with. */
  #suffixMatch(data: Buffer): number {
    const tail = data.length >= TERM.length - 1 ? data.subarray(data.length - (TERM.length - 1)) : Buffer.concat([TERM.subarray(0, this.#match), data]);
    for (let l = Math.min(TERM.length - 1, tail.length); l > 0; l--) {
      if (tail.subarray(tail.length - l).equals(TERM.subarray(0, l))) return l;
    }
    return 0;
  }
}
