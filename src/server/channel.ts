import type { RespCode } from '../protocol/codes.js';
import type { LineEvent } from '../protocol/line-reader.js';
import type { Connection } from './connection.js';

/** Answers, as every command handler gives them. */
export interface Reply {
  ok(text?: string): void;
  err(text: string, code?: RespCode): void;
  /** A multi-line reply from ready-made lines; lines are dot-stuffed here (RFC 1939 §3). */
  multiline(first: string, lines: Iterable<string>): Promise<void>;
  /** Counts a bad command; after too many the client is dropped. */
  badCommand(text: string): void;
  /** Send the last words and end the session. */
  close(reason: string, last?: string): void;
}

/** Both halves of a session answer their handlers' replies straight on the channel they share. */
export class ChannelReplies implements Reply {
  readonly #channel: Channel;
  constructor(channel: Channel) {
    this.#channel = channel;
  }
  ok(text?: string): void {
    this.#channel.ok(text);
  }
  err(text: string, code?: RespCode): void {
    this.#channel.err(text, code);
  }
  multiline(first: string, lines: Iterable<string>): Promise<void> {
    return this.#channel.multiline(first, lines);
  }
  badCommand(text: string): void {
    this.#channel.badCommand(text);
  }
  close(reason: string, last?: string): void {
    this.#channel.close(reason, last);
  }
}

/**
 * The POP3 side of one connection that both halves of a session share:
 * replies, the bad-command count, how the session ended, and its timeout.
 */
export class Channel implements Reply {
  readonly conn: Connection;
  readonly #maxBadCommands: number;
  #badCommands = 0;
  #ended = false;
  #endReason = 'disconnected';
  readonly #onTimeout = (): void => {
    if (this.#ended) return;
    this.close('idle timeout', '-ERR Disconnected for inactivity.\r\n');
    this.conn.destroy();
  };

  constructor(conn: Connection, maxBadCommands: number) {
    this.conn = conn;
    this.#maxBadCommands = maxBadCommands;
  }

  get ended(): boolean {
    return this.#ended;
  }
  get endReason(): string {
    return this.#endReason;
  }

  ok(text = ''): void {
    this.conn.write(text === '' ? '+OK\r\n' : `+OK ${text}\r\n`);
  }

  err(text: string, code?: RespCode): void {
    this.conn.write(code !== undefined ? `-ERR [${code}] ${text}\r\n` : `-ERR ${text}\r\n`);
  }

  async multiline(first: string, lines: Iterable<string>): Promise<void> {
    let batch = `+OK ${first}\r\n`;
    for (const l of lines) {
      batch += (l.charCodeAt(0) === 0x2e ? '.' : '') + l + '\r\n';
      if (batch.length >= 16384) {
        this.conn.write(batch);
        batch = '';
        if (this.conn.needsDrain && !(await this.conn.drain())) return;
      }
    }
    this.conn.write(batch + '.\r\n');
  }

  badCommand(text: string): void {
    this.#badCommands++;
    if (this.#badCommands >= this.#maxBadCommands) {
      this.err('Too many invalid commands.');
      this.close('too many bad commands');
      return;
    }
    this.err(text);
  }

  close(reason: string, last?: string): void {
    this.#ended = true;
    this.#endReason = reason;
    this.conn.end(last);
  }

  /** The session ends without last words (the connection is cut, or it failed). */
  abandon(reason: string): void {
    this.#ended = true;
    this.#endReason = reason;
  }

  /** The next line from the client, or null once it is gone. */
  nextLine(): Promise<LineEvent | null> {
    return this.conn.nextLine();
  }

  /** Inactivity limit (0: none); when it passes the client is told and dropped. */
  setTimeout(ms: number): void {
    this.conn.setTimeout(ms, this.#onTimeout);
  }
}
