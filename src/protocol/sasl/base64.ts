const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict RFC 4648 base64 (RFC 5034 §4: a malformed response fails the exchange). Returns null when invalid. */
export function decodeBase64Strict(s: string): Buffer | null {
  if (!B64.test(s)) return null;
  return Buffer.from(s, 'base64');
}

export function encodeBase64(b: Buffer | string): string {
  return Buffer.from(b).toString('base64');
}
