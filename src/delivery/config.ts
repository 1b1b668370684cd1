/**
 * The `[lmtp]` and `[quota]` sections: where the LMTP listener is, how a
 * recipient address becomes a user, and the default limits of a maildrop.
 */
import { z } from 'zod';

/** HOST:PORT (IPv6 in brackets) or an absolute path of a UNIX socket. */
const lmtpAddress = z
  .string()
  .refine((a) => a.startsWith('/') ? !/[\0\n]/.test(a) && a.length < 108 : /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):\d{1,5}$/.test(a), 'expected HOST:PORT or an absolute socket path (shorter than 108 octets)');

const size = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

export const LmtpConfigSchema = z
  .object({
    /** TCP addresses and/or UNIX socket paths; empty: no LMTP. */
    listen: z.array(lmtpAddress).default([]),
    /** Accept TCP listeners on addresses other than loopback (anyone who reaches them can deliver mail). */
    allow_remote: z.boolean().default(false),
    /** Permissions of a UNIX socket (octal string); the directory it is in decides who reaches it too. */
    socket_mode: z.string().regex(/^0?[0-7]{3}$/, 'expected an octal mode such as "0660"').default('0666'),
    /** Group of a UNIX socket (name or number), e.g. postfix; default: as created. */
    socket_group: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/, 'expected a group name').optional(),
    /** Largest message accepted, in octets (advertised with SIZE). */
    max_message_size: z.number().int().min(1024).max(2 ** 31 - 1).default(50 * 1024 * 1024),
    max_recipients: z.number().int().min(1).max(10_000).default(100),
    max_connections: z.number().int().min(1).default(100),
    /** Seconds a connection may stay idle. */
    timeout: z.number().min(1).max(3600).default(300),
    /**
     * How a recipient address names a user: "full" the whole address, "local"
     * its local part, "auto" the whole address when such a user exists, else
     * the local part.
     */
    recipient_format: z.enum(['auto', 'full', 'local']).default('auto'),
    /** A character that separates an extension from the local part (`alice+lists` -> `alice`); empty: none. */
    recipient_delimiter: z.string().max(1).default(''),
    /** A full maildrop: "temporary" (452 4.2.2, the MTA tries again) or "permanent" (552 5.2.2, it bounces). */
    over_quota: z.enum(['temporary', 'permanent']).default('temporary'),
  })
  .strict();

export const QuotaConfigSchema = z
  .object({
    /** Default octets a maildrop may hold (as LIST counts them); 0 = no limit. */
    max_bytes: size.default(0),
    /** Default number of messages; 0 = no limit. */
    max_messages: size.default(0),
  })
  .strict();

export type LmtpConfig = z.output<typeof LmtpConfigSchema>;
export type QuotaConfig = z.output<typeof QuotaConfigSchema>;
