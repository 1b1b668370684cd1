/**
 * The smallest LMTP client the soak needs (RFC 2033): one transaction per
 * connection, one reply per accepted recipient after the final dot. The
 * outcome of each recipient is what the server said, or 'unknown' when the
 * connection broke after DATA was sent (the message may or may not be stored).
 */
import net from 'node:net';
import { once } from 'node:events';

export type RecipientOutcome = 'delivered' | 'refused' | 'unknown';

class Replies {
  #buf = '';
  #waiters: (() => void)[] = [];
  #closed = false;
  constructor(sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.#buf += d;
      this.#wake();
    });
    sock.on('close', () => {
      this.#closed = true;
      this.#wake();
    });
    sock.on('error', () => undefined);
  }
  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }
  /** One whole reply (multi-line replies joined): its code and text. */
  async next(timeoutMs: number): Promise<{ code: number; text: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /^(?:\d{3}-[^\r\n]*\r\n)*(\d{3})(?: [^\r\n]*)?\r\n/.exec(this.#buf);
      if (m) {
        this.#buf = this.#buf.slice(m[0].length);
        return { code: Number(m[1]), text: m[0].trimEnd() };
      }
      if (this.#closed) throw new Error('LMTP connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('LMTP reply timeout');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

function dotStuff(message: string): string {
  const body = message.endsWith('\r\n') ? message : message + '\r\n';
  return body.replace(/^\./gm, '..') + '.\r\n';
}

/** Delivers `message` to `recipients` over LMTP on 127.0.0.1:`port`; one outcome per recipient, in order. */
export async function lmtpDeliver(port: number, recipients: readonly string[], message: string, timeoutMs = 30_000): Promise<RecipientOutcome[]> {
  const sock = net.connect({ host: '127.0.0.1', port });
  const replies = new Replies(sock);
  const outcomes: RecipientOutcome[] = recipients.map(() => 'refused');
  let dataSent = false;
  try {
    await once(sock, 'connect');
    if ((await replies.next(timeoutMs)).code !== 220) throw new Error('no LMTP greeting');
    sock.write('LHLO soak.test\r\n');
    if ((await replies.next(timeoutMs)).code !== 250) throw new Error('LHLO refused');
    sock.write('MAIL FROM:<soak@soak.test>\r\n');
    if ((await replies.next(timeoutMs)).code !== 250) throw new Error('MAIL refused');
    const accepted: number[] = [];
    for (const [i, r] of recipients.entries()) {
      sock.write(`RCPT TO:<${r}>\r\n`);
      if ((await replies.next(timeoutMs)).code === 250) accepted.push(i);
    }
    if (accepted.length === 0) {
      sock.end('QUIT\r\n');
      return outcomes;
    }
    sock.write('DATA\r\n');
    if ((await replies.next(timeoutMs)).code !== 354) throw new Error('DATA refused');
    dataSent = true;
    for (const i of accepted) outcomes[i] = 'unknown';
    sock.write(dotStuff(message));
    for (const i of accepted) {
      const r = await replies.next(timeoutMs);
      outcomes[i] = r.code === 250 ? 'delivered' : 'refused';
    }
    sock.end('QUIT\r\n');
    return outcomes;
  } catch (e) {
    sock.destroy();
    if (dataSent) return outcomes;
    throw e;
  }
}
