/**
 * Where `poplar migrate` reads from and writes to, as given on the command
 * line: `maildir:ROOT`, `postgres` (the [store.postgres] of the config),
 * `postgres:URL`, and as a source only `pop3://USER@HOST[:PORT]` or
 * `pop3s://USER@HOST[:PORT]`. Nothing secret is ever part of an endpoint: a
 * password in a pop3 URL is refused.
 */
import path from 'node:path';
import { ConfigError } from '../config/errors.js';

export type Endpoint =
  | { readonly kind: 'maildir'; readonly root: string }
  | { readonly kind: 'postgres'; readonly url?: string | undefined }
  | { readonly kind: 'pop3'; readonly tls: 'implicit' | 'starttls' | 'none'; readonly host: string; readonly port: number; readonly user: string; readonly implicit: boolean };

/** `what`: --from or --to, for the messages. */
export function parseEndpoint(spec: string, what: '--from' | '--to'): Endpoint {
  if (spec.startsWith('maildir:')) {
    const root = spec.slice('maildir:'.length);
    if (root === '' || root.includes('\0')) throw new ConfigError(`${what} maildir: needs a directory (maildir:/var/mail)`);
    return { kind: 'maildir', root: path.resolve(root) };
  }
  if (spec === 'postgres') return { kind: 'postgres' };
  if (spec.startsWith('postgres:') || spec.startsWith('postgresql:')) {
    // postgres:postgres://... or a URL given whole (postgres://...).
    const rest = spec.startsWith('postgres:') && !spec.startsWith('postgres://') ? spec.slice('postgres:'.length) : spec;
    if (!/^postgres(ql)?:\/\//.test(rest)) throw new ConfigError(`${what} ${spec}: expected postgres or postgres:postgres://HOST/DATABASE`);
    return { kind: 'postgres', url: rest };
  }
  if (/^pop3s?:\/\//i.test(spec)) {
    if (what === '--to') throw new ConfigError('--to cannot be a POP3 server: migrate stores into maildir:ROOT or postgres');
    let url: URL;
    try {
      url = new URL(spec);
    } catch {
      throw new ConfigError(`${what}: not a valid URL: ${spec.slice(0, 200)}`);
    }
    if (url.password !== '') throw new ConfigError(`${what}: no password in the URL; use --password-env or --password-file`);
    const user = decodeURIComponent(url.username);
    if (user === '' || /[\r\n\0]/.test(user)) throw new ConfigError(`${what}: the URL needs the login name: pop3://USER@HOST`);
    if (url.hostname === '') throw new ConfigError(`${what}: the URL needs a host`);
    if ((url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '') throw new ConfigError(`${what}: a POP3 URL is pop3://USER@HOST[:PORT], nothing after it`);
    const implicit = url.protocol.toLowerCase() === 'pop3s:';
    const port = url.port === '' ? (implicit ? 995 : 110) : Number(url.port);
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    return { kind: 'pop3', tls: implicit ? 'implicit' : 'starttls', host, port, user, implicit };
  }
  throw new ConfigError(`${what} ${spec.slice(0, 200)}: expected maildir:ROOT, postgres, postgres:URL${what === '--from' ? ', pop3://USER@HOST or pop3s://USER@HOST' : ''}`);
}

/** An endpoint as it may appear in output and logs (never a password: a postgres URL loses its). */
export function describeEndpoint(e: Endpoint): string {
  switch (e.kind) {
    case 'maildir':
      return `maildir:${e.root}`;
    case 'postgres': {
      if (e.url === undefined) return 'postgres';
      try {
        const u = new URL(e.url);
        if (u.password !== '') u.password = '***';
        return `postgres:${u.toString()}`;
      } catch {
        return 'postgres:(URL)';
      }
    }
    case 'pop3':
      return `${e.implicit ? 'pop3s' : 'pop3'}://${e.user}@${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;
  }
}
