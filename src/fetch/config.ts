/**
 * Fetch configuration: a TOML file with any number of `[[account]]` tables,
 * or one account built from command-line flags. docs/fetch.md is the
 * reference; the zod schemas in ./config-schema.ts are the single source of
 * truth for it.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { ConfigError } from '../config/errors.js';
import { FetchConfigSchema, type ResolvedAccount, type ResolvedFetchConfig, type SinkSpecValue } from './config-schema.js';
import { accountTableFromFlags, defaultStateDir, expandHome, resolveSpec, type AccountFlags } from './config-flags.js';

export { OAuth2Schema } from './oauth2-schema.js';
export * from './config-schema.js';
export { defaultStateDir, type AccountFlags } from './config-flags.js';

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = issue.path.length > 0 ? issue.path.join('.') : '(top level)';
  if (issue.code === 'unrecognized_keys') return `unknown setting ${issue.keys.map((k) => (issue.path.length ? `${where}.${k}` : k)).join(', ')}`;
  return `${where}: ${issue.message}`;
}

/** Validate a parsed TOML object (or one built from flags); `base` resolves relative paths. */
export function resolveFetchConfig(raw: unknown, base: string, env: NodeJS.ProcessEnv = process.env): ResolvedFetchConfig {
  const parsed = FetchConfigSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(parsed.error.issues.map(describeIssue).join('; '));
  const c = parsed.data;
  const stateDir = path.resolve(base, expandHome(c.fetch.state_dir ?? defaultStateDir(env)));
  const named = (s: string | SinkSpecValue): SinkSpecValue => resolveSpec(typeof s === 'string' ? c.sinks[s]! : s, base);
  const accounts = c.account.map((a): ResolvedAccount => {
    const { sink, rule, state, port, ...rest } = a;
    return {
      ...rest,
      port: port ?? (a.tls === 'implicit' ? 995 : 110),
      ...(a.ca !== undefined ? { ca: path.resolve(base, expandHome(a.ca)) } : {}),
      sink: named(sink),
      rule: rule.map((r, i) => {
        const { sink: rs, ...rr } = r;
        return rs === undefined ? rr : { ...rr, sink: named(rs), sinkKey: typeof rs === 'string' ? `sink:${rs}` : `rule:${i + 1}` };
      }),
      state: state !== undefined ? path.resolve(base, expandHome(state)) : path.join(stateDir, `${a.name}.ledger`),
    };
  });
  return { fetch: { ...c.fetch, state_dir: stateDir }, accounts };
}

export function loadFetchConfig(file: string, cwd = process.cwd(), env: NodeJS.ProcessEnv = process.env): ResolvedFetchConfig {
  const abs = path.resolve(cwd, expandHome(file));
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${abs}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (e) {
    throw new ConfigError(`config file ${abs}: ${(e as Error).message.split('\n')[0] ?? 'syntax error'}`);
  }
  try {
    return resolveFetchConfig(raw, path.dirname(abs), env);
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(`config file ${abs}: ${e.message}`);
    throw e;
  }
}

/** The one-account-on-the-command-line form, checked by the schema (./config-flags.ts builds the account). */
export function accountFromFlags(f: AccountFlags, cwd = process.cwd(), env: NodeJS.ProcessEnv = process.env): ResolvedFetchConfig {
  return resolveFetchConfig({ account: [accountTableFromFlags(f)] }, cwd, env);
}
