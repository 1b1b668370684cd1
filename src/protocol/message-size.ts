/**
 * The POP3 size of a stored message (RFC 1939 §5 STAT/LIST: "the exact size
 * of the message in octets" as sent): the number of octets once every bare
 * LF has been turned into CRLF. A bare CR counts as one octet, no final CRLF
 * is added, and the dots added by dot-stuffing are not counted.
 */

const LF = 0x0a;
const CR = 0x0d;

/** Incremental size computation for a message read in arbitrary chunks. */
export class CrlfSizeCounter {
  #size = 0;
  #prevCR = false;

  push(chunk: Buffer): void {
    const len = chunk.length;
    if (len === 0) return;
    let extra = 0;
    let i = chunk.indexOf(LF);
    if (i === 0) {
      if (!this.#prevCR) extra++;
      i = chunk.indexOf(LF, 1);
    }
    while (i > 0) {
      if (chunk[i - 1] !== CR) extra++;
      i = chunk.indexOf(LF, i + 1);
    }
    this.#size += len + extra;
    this.#prevCR = chunk[len - 1] === CR;
  }

  get size(): number {
    return this.#size;
  }
}

/** POP3 size of a whole stored message. */
export function crlfSize(buf: Buffer): number {
  const c = new CrlfSizeCounter();
  c.push(buf);
  return c.size;
}
