/**
 * Bounded line reader for the command side of POP3 (RFC 1939 §3, RFC 2449 §4).
 *
 * Bytes arrive in arbitrary chunks; complete lines (without their line end)
 * come out in order. A line longer than `maxLength` octets (line end
 * included) is never buffered: the reader reports it once as overlong and
 * discards the rest of it up to the next LF, so a client that never ends a
 * line costs at most `maxLength` bytes of memory.
 */
export type LineEvent = { readonly kind: 'line'; readonly line: Buffer } | { readonly kind: 'overlong' };

const LF = 0x0a;
const CR = 0x0d;

export class LineReader {
  #maxLength: number;
  #partial: Buffer | null = null;
  #discarding = false;

  constructor(maxLength: number) {
    this.#maxLength = maxLength;
  }

  set maxLength(n: number) {
    this.#maxLength = n;
  }
  get maxLength(): number {
    return this.#maxLength;
  }

  /** Bytes held while waiting for the end of a line. */
  get buffered(): number {
    return this.#partial?.length ?? 0;
  }

  /** Forget everything buffered (after STLS: RFC 2595 §4, plaintext after the command is discarded). */
  reset(): void {
    this.#partial = null;
    this.#discarding = false;
  }

  push(chunk: Buffer, out: LineEvent[]): void {
    let start = 0;
    while (start < chunk.length) {
      const lf = chunk.indexOf(LF, start);
      if (lf === -1) {
        this.#keep(chunk.subarray(start), out);
        return;
      }
      if (this.#discarding) {
        this.#discarding = false;
        start = lf + 1;
        continue;
      }
      let line: Buffer;
      if (this.#partial !== null) {
        line = Buffer.concat([this.#partial, chunk.subarray(start, lf)]);
        this.#partial = null;
      } else {
        line = chunk.subarray(start, lf);
      }
      start = lf + 1;
      // +1 for the LF itself; a CR before it is part of the counted octets.
      if (line.length + 1 > this.#maxLength) {
        out.push({ kind: 'overlong' });
        continue;
      }
      if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
      out.push({ kind: 'line', line });
    }
  }

  #keep(rest: Buffer, out: LineEvent[]): void {
    if (this.#discarding) return;
    const total = (this.#partial?.length ?? 0) + rest.length;
    if (total >= this.#maxLength) {
      // Already too long before its end arrived: report now, drop until LF.
      this.#partial = null;
      this.#discarding = true;
      out.push({ kind: 'overlong' });
      return;
    }
    // Copy: the chunk's memory may be reused by the socket.
    this.#partial = this.#partial === null ? Buffer.from(rest) : Buffer.concat([this.#partial, rest]);
  }
}
