import type { Principal } from '../auth/types.js';
import { Pop3Error } from '../protocol/codes.js';
import type { Maildrop } from '../store/types.js';
import type { Reply } from './channel.js';
import { fileCodec, sendStuffedFile, sendStuffedStream, type WireOut } from './retr-file.js';

/**
 * What a TRANSACTION command handler may use: replies, the connection's
 * output, and the session around it. The mail half (mail.ts) provides it.
 */
export interface MailPort extends Reply {
  /** The connection's output, for message bodies (with backpressure). */
  readonly wire: Wire;
  /** Aborted when the client is gone. */
  readonly signal: AbortSignal;
  capabilities(): string[];
  /** QUIT: the UPDATE state. */
  update(): Promise<void>;
  /** A message body is out (the counters are the observer's). */
  messageSent(command: 'RETR' | 'TOP', bytes: number): void;
  deletionsMarked(count: number): void;
  /** A message could not be read after its +OK went out: logged, and the client dropped. */
  readFailed(index: number, e: unknown): void;
}

export interface Wire extends WireOut {
  write(data: string | Buffer, written?: () => void): void;
}

export type MailHandler = (s: MailPort, state: TransactionState, args: string) => Promise<void>;

/** TRANSACTION state (RFC 1939 §5): the locked maildrop, fixed message numbers, deletion marks. */
export class TransactionState {
  readonly principal: Principal;
  readonly maildrop: Maildrop;
  readonly #deleted: Uint8Array;
  /** RETR'd in this session (TOP does not count): marked seen at UPDATE, removed at UPDATE under EXPIRE 0. */
  readonly #retrieved: Uint8Array;
  #count: number;
  #octets: number;

  constructor(principal: Principal, maildrop: Maildrop) {
    this.principal = principal;
    this.maildrop = maildrop;
    this.#deleted = new Uint8Array(maildrop.messages.length);
    this.#retrieved = new Uint8Array(maildrop.messages.length);
    this.#count = maildrop.messages.length;
    let octets = 0;
    for (const m of maildrop.messages) octets += m.size;
    this.#octets = octets;
  }

  get count(): number {
    return this.#count;
  }
  get octets(): number {
    return this.#octets;
  }
  /** Messages marked for deletion now. */
  get marked(): number {
    return this.maildrop.messages.length - this.#count;
  }
  isDeleted(i: number): boolean {
    return this.#deleted[i] === 1;
  }
  markDeleted(i: number): void {
    this.#deleted[i] = 1;
    this.#count--;
    this.#octets -= this.maildrop.messages[i]!.size;
  }
  reset(): void {
    this.#deleted.fill(0);
    this.#count = this.maildrop.messages.length;
    this.#octets = 0;
    for (const m of this.maildrop.messages) this.#octets += m.size;
  }
  markRetrieved(i: number): void {
    this.#retrieved[i] = 1;
  }
  retrievedIndexes(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.#retrieved.length; i++) if (this.#retrieved[i] === 1) out.push(i);
    return out;
  }
  deletedIndexes(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.#deleted.length; i++) if (this.#deleted[i] === 1) out.push(i);
    return out;
  }
}

const DIGITS = /^[0-9]{1,10}$/;

/** Parse a message-number argument: 0-based index of a live message, or throw the precise -ERR. */
function messageIndex(st: TransactionState, arg: string | undefined): number {
  if (arg === undefined || !DIGITS.test(arg)) throw new Pop3Error('Invalid message number.');
  const n = Number(arg);
  if (n < 1 || n > st.maildrop.messages.length) throw new Pop3Error(`There's no message ${n}.`);
  if (st.isDeleted(n - 1)) throw new Pop3Error('Message is deleted.');
  return n - 1;
}

/** Arguments separated by single spaces; trailing spaces tolerated. */
function splitArgs(args: string): string[] {
  const t = args.trimEnd();
  return t === '' ? [] : t.split(' ');
}

function noArgs(args: string, name: string): void {
  if (args.trim() !== '') throw new Pop3Error(`${name} takes no arguments.`);
}

async function stat(s: MailPort, st: TransactionState, args: string): Promise<void> {
  noArgs(args, 'STAT');
  s.ok(`${st.count} ${st.octets}`);
}

async function list(s: MailPort, st: TransactionState, args: string): Promise<void> {
  const a = splitArgs(args);
  if (a.length > 1) throw new Pop3Error('Noise after message number.');
  const msgs = st.maildrop.messages;
  if (a.length === 1) {
    const i = messageIndex(st, a[0]);
    return s.ok(`${i + 1} ${msgs[i]!.size}`);
  }
  await s.multiline(`${st.count} messages (${st.octets} octets)`, liveLines(st, (i) => `${i + 1} ${msgs[i]!.size}`));
}

async function uidl(s: MailPort, st: TransactionState, args: string): Promise<void> {
  const a = splitArgs(args);
  if (a.length > 1) throw new Pop3Error('Noise after message number.');
  const msgs = st.maildrop.messages;
  if (a.length === 1) {
    const i = messageIndex(st, a[0]);
    return s.ok(`${i + 1} ${msgs[i]!.uidl}`);
  }
  await s.multiline('Unique-ID listing follows', liveLines(st, (i) => `${i + 1} ${msgs[i]!.uidl}`));
}

function* liveLines(st: TransactionState, line: (i: number) => string): Generator<string> {
  const n = st.maildrop.messages.length;
  for (let i = 0; i < n; i++) if (!st.isDeleted(i)) yield line(i);
}

/** Send a message (RETR) or its top (TOP) dot-stuffed, with output backpressure, through reused output buffers (retr-file.ts). */
async function sendMessage(s: MailPort, st: TransactionState, index: number, bodyLines: number | undefined): Promise<number> {
  if (bodyLines === undefined && fileCodec !== undefined && st.maildrop.openFile !== undefined) return sendFile(s, st, index, fileCodec);
  // sendStuffedStream encodes each chunk before it asks for the next.
  const stream = await st.maildrop.read(index, s.signal, { transient: true });
  const size = st.maildrop.messages[index]!.size;
  s.wire.write(bodyLines === undefined ? `+OK ${size} octets\r\n` : '+OK Top of message follows\r\n');
  try {
    return await sendStuffedStream(stream, s.wire, bodyLines);
  } catch (e) {
    s.readFailed(index, e);
    return 0;
  } finally {
    stream.destroy();
  }
}

/** RETR of a message stored as a file, with the native encoder (retr-file.ts). */
async function sendFile(s: MailPort, st: TransactionState, index: number, codec: NonNullable<typeof fileCodec>): Promise<number> {
  const fh = await st.maildrop.openFile!(index);
  s.wire.write(`+OK ${st.maildrop.messages[index]!.size} octets\r\n`);
  try {
    return await sendStuffedFile(codec, fh, s.wire);
  } catch (e) {
    s.readFailed(index, e);
    return 0;
  } finally {
    // Nothing waits for the close: the next command may start now.
    fh.close().catch(() => undefined);
  }
}

async function retr(s: MailPort, st: TransactionState, args: string): Promise<void> {
  const a = splitArgs(args);
  if (a.length > 1) throw new Pop3Error('Noise after message number.');
  const i = messageIndex(st, a[0]);
  const sent = await sendMessage(s, st, i, undefined);
  if (!s.wire.closed) st.markRetrieved(i);
  s.messageSent('RETR', sent);
}

async function top(s: MailPort, st: TransactionState, args: string): Promise<void> {
  const a = splitArgs(args);
  if (a.length !== 2) throw new Pop3Error('TOP needs a message number and a line count.');
  const i = messageIndex(st, a[0]);
  if (!DIGITS.test(a[1]!)) throw new Pop3Error('Invalid number of lines.');
  const sent = await sendMessage(s, st, i, Number(a[1]));
  s.messageSent('TOP', sent);
}

async function dele(s: MailPort, st: TransactionState, args: string): Promise<void> {
  const a = splitArgs(args);
  if (a.length > 1) throw new Pop3Error('Noise after message number.');
  const i = messageIndex(st, a[0]);
  st.markDeleted(i);
  s.deletionsMarked(st.marked);
  s.ok('Marked to be deleted.');
}

async function noop(s: MailPort, _st: TransactionState, args: string): Promise<void> {
  noArgs(args, 'NOOP');
  s.ok();
}

async function rset(s: MailPort, st: TransactionState, args: string): Promise<void> {
  noArgs(args, 'RSET');
  st.reset();
  s.deletionsMarked(0);
  s.ok(`${st.count} messages (${st.octets} octets)`);
}

async function capa(s: MailPort): Promise<void> {
  await s.multiline('Capability list follows', s.capabilities());
}

async function quit(s: MailPort): Promise<void> {
  await s.update();
}

export const TRANSACTION_COMMANDS: ReadonlyMap<string, MailHandler> = new Map<string, MailHandler>([
  ['STAT', stat],
  ['LIST', list],
  ['UIDL', uidl],
  ['RETR', retr],
  ['TOP', top],
  ['DELE', dele],
  ['NOOP', noop],
  ['RSET', rset],
  ['CAPA', capa],
  ['QUIT', quit],
]);
