/**
 * The header lines a delivery agent puts on top of a message: Return-Path
 * (the envelope sender, RFC 5321 §4.4) and Delivered-To (the recipient, as
 * Postfix's local(8) and Dovecot add it). The message after them is left as
 * the MTA sent it. The line ends match the message's first line end (CRLF
 * when it has none), so the stored message keeps one convention.
 */

/** Why an envelope address cannot go into a header line, or undefined when it can. */
export function addressProblem(address: string): string | undefined {
  if (/[\u0000-\u001f\u007f]/.test(address)) return 'address contains a control character';
  if (Buffer.byteLength(address) > 998 - 'Return-Path: <>'.length) return 'address is too long';
  return undefined;
}

function lineEnd(message: Buffer): string {
  const lf = message.indexOf(0x0a);
  return lf > 0 && message[lf - 1] === 0x0d ? '\r\n' : lf === -1 ? '\r\n' : '\n';
}

/** `message` with Return-Path (when `sender` is given) and Delivered-To (when `deliveredTo` is) in front. */
export function withTraceHeaders(message: Buffer, sender: string | undefined, deliveredTo: string | undefined): Buffer {
  const eol = lineEnd(message);
  let head = sender !== undefined ? `Return-Path: <${sender}>${eol}` : '';
  if (deliveredTo !== undefined) head += `Delivered-To: ${deliveredTo}${eol}`;
  return Buffer.concat([Buffer.from(head, 'utf8'), message]);
}
