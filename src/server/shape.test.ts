import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCircular, parseDependencyTree } from 'dpdm';
import { describe, expect, it } from 'vitest';
import type { LoginContext } from './context.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Every file the server reaches -> the files it imports (type-only imports included). */
function importTree(): ReturnType<typeof parseDependencyTree> {
  return parseDependencyTree('src/server/server.ts', { cwd: ROOT, context: ROOT, tsconfig: path.join(ROOT, 'tsconfig.json'), transform: false });
}

async function serverImports(): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const [file, deps] of Object.entries(await importTree())) {
    if (file.startsWith('src/server/')) out.set(file, (deps ?? []).map((d) => d.id).filter((id): id is string => id !== null));
  }
  return out;
}

describe('the shape of a session', () => {
  it('src/server has no import circles, counting type-only imports', async () => {
    expect(parseCircular(await importTree()).filter((c) => c.some((f) => f.startsWith('src/server/')))).toEqual([]);
  });

  it('the login half imports nothing from the store: only the hand-off side reaches a maildrop', async () => {
    const imports = await serverImports();
    const loginHalf = ['authorization.ts', 'login.ts', 'context.ts', 'verify.ts', 'channel.ts', 'capabilities.ts', 'login-delay.ts', 'observer.ts', 'client-info.ts'];
    for (const f of loginHalf) {
      const deps = imports.get(`src/server/${f}`);
      expect(deps, f).toBeDefined();
      expect(deps!.filter((d) => d.startsWith('src/store/')), f).toEqual([]);
    }
    // Handlers get a narrow interface, never the Session.
    for (const f of ['authorization.ts', 'transaction.ts', 'login.ts', 'mail.ts']) expect(imports.get(`src/server/${f}`), f).not.toContain('src/server/session.ts');
  });

  it('the login context has no store in its type', () => {
    const ctx = {} as LoginContext;
    // @ts-expect-error: LoginContext must not carry a store (checked by tsc in npm test)
    expect(ctx.store).toBeUndefined();
  });
});
