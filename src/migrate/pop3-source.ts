/**
 * A live POP3 server as a migration source: one maildrop, read through
 * Poplar's client with the UIDLs that server reports (RFC 1939 §7), so mail
 * clients do not download everything again after the switch.
 *
 * Everything the server sends is checked: a UIDL that is not 1 to 70
 * characters 0x21..0x7E, a UIDL listed for two messages, a number listed
 * twice, a message without a LIST size, or one larger than the size limit is
 * left out (reported through `skip`, never retrieved). A retrieval may carry
 * at most its LIST size plus a margin. Nothing is ever deleted on the server.
 */
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { Pop3Client, type Pop3Client as Client } from '../client/index.js';
import { printable } from '../client/errors.js';
import { ConfigError } from '../config/errors.js';
import { crlfSize } from '../protocol/message-size.js';
import { usableListings } from '../fetch/listing.js';
import type { MigratedMessage, MigrationSource } from '../store/migration.js';
import type { Endpoint } from './endpoints.js';

export interface Pop3SourceOptions {
  /** The password (read by the caller from an environment variable or a file). */
  readonly password: string;
  readonly tls?: 'none' | 'starttls' | 'implicit' | undefined;
  readonly ca?: string | undefined;
  readonly fingerprint?: string | undefined;
  readonly insecure?: boolean | undefined;
  readonly auth?: string | undefined;
  /** Messages larger than this (by LIST) are left on the server, reported. */
  readonly maxMessageOctets: number;
  /** Seconds the server may stay silent. */
  readonly timeoutSeconds?: number | undefined;
  readonly signal?: AbortSignal | undefined;
  readonly allowPlaintextPassword?: boolean | undefined;
}

/** UIDL and LIST replies: at most this many lines and octets. */
const MAX_LIST_LINES = 1_000_000;
const MAX_LIST_OCTETS = 64 * 1024 * 1024;

export interface Pop3Source extends MigrationSource {
  /** Messages the server listed (usable or not). */
  readonly listed: number;
}

/** The password for a pop3:// source: from an environment variable or the first line of a file. */
export async function readPassword(opts: { passwordEnv?: string | undefined; passwordFile?: string | undefined }, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (opts.passwordEnv !== undefined && opts.passwordFile !== undefined) throw new ConfigError('--password-env and --password-file exclude each other');
  if (opts.passwordEnv !== undefined) {
    const v = env[opts.passwordEnv];
    if (v === undefined || v === '') throw new ConfigError(`--password-env: environment variable ${opts.passwordEnv} is not set`);
    return v;
  }
  if (opts.passwordFile !== undefined) {
    let text: string;
    try {
      text = await readFile(opts.passwordFile, 'utf8');
    } catch (e) {
      throw new ConfigError(`--password-file: cannot read ${opts.passwordFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const line = text.split(/\r?\n/, 1)[0] ?? '';
    if (line === '') throw new ConfigError(`--password-file: ${opts.passwordFile} is empty`);
    return line;
  }
  throw new ConfigError('a pop3:// source needs --password-env VAR or --password-file FILE');
}

/**
 * A message stored without a final line end goes out with a CRLF before the
 * terminating dot that its LIST size does not count (Dovecot does this, and
 * so does Poplar). When the body is exactly that CRLF longer than announced,
 * the CRLF is the server's, not the message's: it is dropped, so the
 * migrated message has the size the server listed and is sent the same way.
 */
export function withoutAddedLineEnd(body: Buffer, listed: number): Buffer {
  const n = body.length;
  if (n >= 2 && body[n - 2] === 0x0d && body[n - 1] === 0x0a && crlfSize(body) === listed + 2) return body.subarray(0, n - 2);
  return body;
}

/** Connect, log in and list. `skip` hears of each message left on the server, and why. */
export async function openPop3Source(ep: Extract<Endpoint, { kind: 'pop3' }>, o: Pop3SourceOptions, skip: (number: number, why: string) => void): Promise<Pop3Source> {
  let ca: Buffer | undefined;
  if (o.ca !== undefined) {
    try {
      ca = await readFile(o.ca);
    } catch (e) {
      throw new ConfigError(`--ca: cannot read ${o.ca}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  const timeoutMs = (o.timeoutSeconds ?? 60) * 1000;
  const client: Client = await Pop3Client.connect({
    host: ep.host,
    port: ep.port,
    tls: o.tls ?? ep.tls,
    ca,
    fingerprint: o.fingerprint,
    insecure: o.insecure,
    timeoutMs,
    signal: o.signal,
    allowPlaintextPassword: o.allowPlaintextPassword,
  });
  try {
    await client.login(ep.user, o.password, { mechanism: o.auth });
    const bounds = { maxLines: MAX_LIST_LINES, maxOctets: MAX_LIST_OCTETS };
    const listed = await client.uidl(bounds);
    const sizes = new Map((await client.list(bounds)).map((l) => [l.number, l.octets]));
    const usable = usableListings(listed, sizes, skip).filter((u) => {
      const size = sizes.get(u.number)!;
      if (size <= o.maxMessageOctets) return true;
      skip(u.number, `its LIST size ${size} is larger than the limit (${o.maxMessageOctets} octets, --max-message-size)`);
      return false;
    });
    const now = new Date();
    const messages: MigratedMessage[] = usable.map((u) => ({ uidl: u.uid, size: sizes.get(u.number)!, arrived: now, firstRetrieved: null }));
    const numbers = usable.map((u) => u.number);
    return {
      listed: listed.length,
      messages,
      read: async (index: number, signal?: AbortSignal): Promise<Readable> => {
        const n = numbers[index];
        if (n === undefined) throw new RangeError(`no message ${index}`);
        const size = messages[index]!.size;
        // The announced size bounds what is accepted, with room for a server that counts a little differently.
        const body = await client.retrBuffer(n, { maxOctets: size + Math.max(64 * 1024, Math.ceil(size / 10)), signal });
        return Readable.from([withoutAddedLineEnd(body, size)]);
      },
      close: async () => {
        // QUIT without DELE: nothing changes on the server.
        await client.quit().catch(() => undefined);
        client.close();
      },
    };
  } catch (e) {
    client.close();
    throw e;
  }
}

export { printable };
