/**
 * No import circles in src/: a module must not reach itself through its own
 * imports, type-only imports included (a circle of types is still two
 * modules that cannot be understood, changed or reused one without the
 * other). dpdm parses every file with TypeScript and resolves its imports;
 * the circles are the strongly connected components of that graph with more
 * than one file (or a file that imports itself).
 *
 * A circle that exists and is being removed can be listed in KNOWN_CIRCLES
 * below, exactly (all of its files); anything else, a new circle or a known
 * one that has grown, fails the run. A listed circle that is gone fails too,
 * so the list only shrinks.
 *
 * The same graph shows what `poplar/client` loads: the client alone, never
 * the server, a store or an authenticator (docs/client.md).
 */
import path from 'node:path';
import { parseDependencyTree, type DependencyTree } from 'dpdm';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';

/** Each entry: the files of one circle, sorted. */
const KNOWN_CIRCLES: readonly (readonly string[])[] = [];

/** Tarjan's algorithm: the strongly connected components of the import graph that contain a circle. */
function circles(tree: DependencyTree): string[][] {
  const edges = new Map<string, string[]>();
  for (const [file, deps] of Object.entries(tree)) {
    edges.set(file, (deps ?? []).flatMap((d) => (d.id !== null && d.id in tree ? [d.id] : [])));
  }
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next++;
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (edges.get(v) ?? []).includes(v)) found.push(component.sort());
    }
  };
  for (const v of edges.keys()) if (!index.has(v)) visit(v);
  return found.sort((a, b) => a[0]!.localeCompare(b[0]!));
}

/** One way round a circle, for the failure message: a -> b -> ... -> a. */
function route(tree: DependencyTree, component: readonly string[]): string {
  const inside = new Set(component);
  const start = component[0]!;
  const from = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift()!;
    for (const d of tree[v] ?? []) {
      if (d.id === null || !inside.has(d.id)) continue;
      if (d.id === start) {
        const path = [start];
        for (let u = v; u !== start; u = from.get(u)!) path.splice(1, 0, u);
        return [...path, start].join(' -> ');
      }
      if (!from.has(d.id)) {
        from.set(d.id, v);
        queue.push(d.id);
      }
    }
  }
  return component.join(', ');
}

async function sourceTree(): Promise<DependencyTree> {
  return parseDependencyTree('src/**/*.ts', { cwd: ROOT, context: ROOT, tsconfig: path.join(ROOT, 'tsconfig.json'), transform: false });
}

/** Every file `entry` reaches through its imports (type-only ones included), and every package it names. */
function reach(tree: DependencyTree, entry: string): { files: string[]; packages: string[] } {
  const files = new Set([entry]);
  const packages = new Set<string>();
  for (const file of files) {
    for (const d of tree[file] ?? []) {
      if (d.request.startsWith('.')) {
        if (d.id !== null) files.add(d.id);
      } else packages.add(d.request);
    }
  }
  return { files: [...files].sort(), packages: [...packages].sort() };
}

let parsed: Promise<DependencyTree> | undefined;
const sourceTreeOnce = (): Promise<DependencyTree> => (parsed ??= sourceTree());

describe('poplar/client', () => {
  it('reaches only the client, the wire code and the protocol-neutral contracts, and no package but those of Node', async () => {
    const { files, packages } = reach(await sourceTreeOnce(), 'src/client/index.ts');
    expect(files).toContain('src/client/pop3-client.ts');
    expect(files.filter((f) => !/^src\/(client|protocol|secrets)\//.test(f) && f !== 'src/errors.ts' && f !== 'src/auth/types.ts')).toEqual([]);
    expect(packages.filter((p) => !p.startsWith('node:'))).toEqual([]);
  });
});

describe('the authentication contracts', () => {
  it('src/auth imports nothing of the POP3 wire code (src/protocol); stored-secret formats live in src/secrets', async () => {
    const tree = await sourceTreeOnce();
    const crossing = Object.entries(tree)
      .filter(([file]) => file.startsWith('src/auth/') && !file.endsWith('.test.ts'))
      .flatMap(([file, deps]) => (deps ?? []).filter((d) => d.id?.startsWith('src/protocol/')).map((d) => `${file} -> ${d.id}`));
    expect(crossing).toEqual([]);
  });
});

describe('import circles in src/', () => {
  it('are none but the known ones', async () => {
    const tree = await sourceTreeOnce();
    // The check sees the whole source tree, and every relative import resolves: an import it could
    // not follow would hide a circle.
    expect(Object.keys(tree)).toContain('src/index.ts');
    expect(Object.keys(tree)).toContain('src/client/index.ts');
    const unresolved = Object.values(tree).flatMap((deps) => (deps ?? []).filter((d) => d.request.startsWith('.') && d.id === null).map((d) => `${d.issuer}: ${d.request}`));
    expect(unresolved).toEqual([]);

    const found = circles(tree);
    const key = (c: readonly string[]): string => c.join(' ');
    const known = new Set(KNOWN_CIRCLES.map(key));
    const unexpected = found.filter((c) => !known.has(key(c))).map((c) => `${c.join(', ')}: ${route(tree, c)}`);
    expect(unexpected, 'new import circles (break them; see docs/architecture.md, "Dependencies")').toEqual([]);
    const gone = KNOWN_CIRCLES.filter((c) => !found.some((f) => key(f) === key(c)));
    expect(gone, 'known circles that no longer exist: remove them from KNOWN_CIRCLES').toEqual([]);
  });

  it('finds a circle, a longer one and a file that imports itself', () => {
    const dep = (issuer: string, id: string) => ({ issuer, request: `./${id}`, kind: 0 as never, id });
    const tree: DependencyTree = {
      'a.ts': [dep('a.ts', 'b.ts')],
      'b.ts': [dep('b.ts', 'a.ts'), dep('b.ts', 'c.ts')],
      'c.ts': [dep('c.ts', 'd.ts')],
      'd.ts': [dep('d.ts', 'e.ts')],
      'e.ts': [dep('e.ts', 'c.ts')],
      'f.ts': [dep('f.ts', 'f.ts'), dep('f.ts', 'a.ts')],
      'g.ts': [dep('g.ts', 'a.ts')],
    };
    expect(circles(tree)).toEqual([['a.ts', 'b.ts'], ['c.ts', 'd.ts', 'e.ts'], ['f.ts']]);
    expect(route(tree, ['c.ts', 'd.ts', 'e.ts'])).toBe('c.ts -> d.ts -> e.ts -> c.ts');
  });
});
