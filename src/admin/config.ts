/**
 * The `[admin]` section: the HTTP listener for Prometheus and health checks,
 * and the UNIX socket through which `poplar who` and `poplar kick` reach the
 * running server (docs/monitoring.md). Both are off until configured.
 */
import { z } from 'zod';

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):\d{1,5}$/, 'expected HOST:PORT');

export const AdminConfigSchema = z
  .object({
    /** HOST:PORT of the HTTP listener (/metrics, /healthz, /readyz); unset: none. */
    listen: hostPort.optional(),
    /** Accept a `listen` address other than loopback (metrics show user-independent counts, but anyone who reaches it reads them). */
    allow_remote: z.boolean().default(false),
    /** Absolute path of the control socket (who, kick, and everything the HTTP listener serves); unset: none. */
    socket: z
      .string()
      .refine((p) => p.startsWith('/') && p.length < 108 && !/[\0\n]/.test(p), 'expected an absolute socket path (shorter than 108 octets)')
      .optional(),
    /** Permissions of the socket (octal): owner and group only by default. */
    socket_mode: z.string().regex(/^0?[0-7]{3}$/, 'expected an octal mode such as "0660"').default('0660'),
    /** Group of the socket (name or number); default: the service group ([server] group, or the user's primary group). */
    socket_group: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/, 'expected a group name').optional(),
    /**
     * A file holding a secret (16 characters or more): with it, `who` and `kick`
     * are also served on `listen` to requests that bear it
     * (`Authorization: Bearer ...`). Without it they are served on the socket only.
     */
    token_file: z.string().min(1).optional(),
    /** Seconds /readyz waits for each backend probe. */
    probe_timeout: z.number().positive().max(60).default(2),
  })
  .strict();

export type AdminConfig = z.output<typeof AdminConfigSchema>;
