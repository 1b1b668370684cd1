import { z } from 'zod';

/**
 * Certificates chosen by the name a client asks for in its TLS ClientHello
 * (SNI): one `[[tls.sni]]` table per name, on implicit TLS and after STLS
 * alike. A client that sends no name, or a name no entry matches, gets the
 * default `[tls] cert`.
 */
export const SniEntrySchema = z
  .object({
    /** A host name (`pop.example.org`) or a wildcard for one label (`*.example.org`). */
    name: z
      .string()
      .regex(/^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/, 'expected a host name or *.domain')
      .max(253),
    cert: z.string().min(1),
    key: z.string().min(1),
  })
  .strict();

export type SniEntry = z.infer<typeof SniEntrySchema>;

/** A `[[tls.sni]]` entry with its files resolved. */
export interface SniCertificate {
  readonly name: string;
  readonly certFile: string;
  readonly keyFile: string;
}

/**
 * The entry for `serverName`, or undefined: an exact name first, then a
 * wildcard, which stands for exactly one label (`*.example.org` matches
 * `pop.example.org`, not `example.org` nor `a.pop.example.org`), as in
 * RFC 6125 §6.4.3. Names compare without regard to case.
 */
export function matchServerName<T extends { name: string }>(entries: readonly T[], serverName: string): T | undefined {
  const want = serverName.toLowerCase().replace(/\.$/, '');
  if (want === '') return undefined;
  const exact = entries.find((e) => e.name.toLowerCase() === want);
  if (exact !== undefined) return exact;
  const dot = want.indexOf('.');
  if (dot <= 0) return undefined;
  const parent = want.slice(dot + 1);
  return entries.find((e) => e.name.startsWith('*.') && e.name.slice(2).toLowerCase() === parent);
}
