/**
 * The fuzzing harness: a target is a parser of bytes from outside with the
 * errors it may throw. Every input must end in a result or one of those
 * errors; anything else (a TypeError from a missed case, a run longer than
 * the target's time bound, memory that stays behind) is a failure, reported
 * with the shrunk input so it can become a fixed test case.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';

export interface FuzzTarget<T = unknown> {
  readonly name: string;
  /** What the parser reads, generated and mutated. */
  readonly arbitrary: fc.Arbitrary<T>;
  /** Parse one input; return anything, or throw an error `allowed` accepts. */
  run(input: T): unknown;
  /** The typed errors this parser may end in. Default: none. */
  allowed?(e: unknown): boolean;
  /** One input may take at most this long (a longer run is reported as a hang). Default 2000 ms. */
  readonly timeoutMs?: number;
  /** Runs in `npm test` (kept small: the whole suite shares about a minute of CI time). */
  readonly quickRuns?: number;
  /** Set up once before the runs (servers, temp dirs); torn down after. */
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
}

export interface Failure {
  readonly error: string;
  /** The shrunk counterexample, printable. */
  readonly input: string;
  readonly seed: number;
  readonly path: string | undefined;
}

export interface TargetResult {
  readonly target: string;
  readonly inputs: number;
  readonly failures: Failure[];
  readonly ms: number;
  /** Heap after the runs and a full collection, minus before (bytes). */
  readonly heapGrowth: number;
}

/** Heap that may stay behind after a target's runs and a full collection. */
/** mulberry32: a small seeded PRNG, so a failing run replays with its seed (POPLAR_FUZZ_SEED). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const HEAP_GROWTH_BOUND = 64 * 1024 * 1024;

class Hang extends Error {
  override name = 'Hang';
}
class Unexpected extends Error {
  override name = 'Unexpected';
}

let gcFn: (() => void) | undefined;
/** A full collection, when the runtime lets one be asked for (it does once --expose-gc is set at run time). */
function fullGc(): void {
  if (gcFn === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      gcFn = runInNewContext('gc') as () => void;
    } catch {
      gcFn = () => undefined;
    }
  }
  gcFn();
}

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}${e instanceof Unexpected || e instanceof Hang ? '' : `\n${e.stack ?? ''}`}`;
  return String(e);
}

/** Runs one input under the target's contract; throws only when the contract is broken. */
async function runOne<T>(t: FuzzTarget<T>, input: T): Promise<void> {
  const limit = t.timeoutMs ?? 2000;
  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    const r = t.run(input);
    if (r instanceof Promise) {
      await Promise.race([
        r,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Hang(`no result after ${limit} ms`)), limit);
        }),
      ]);
    }
  } catch (e) {
    if (e instanceof Hang) throw e;
    if (t.allowed?.(e) !== true) throw new Unexpected(describe(e), { cause: e });
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
  const ms = performance.now() - t0;
  if (ms > limit) throw new Hang(`one input took ${Math.round(ms)} ms (bound ${limit} ms)`);
}

export interface RunOptions {
  /** Stop after this many inputs. */
  readonly numRuns?: number;
  /** Or stop after this long (ms). */
  readonly timeLimitMs?: number;
  readonly seed?: number;
}

/** Fuzz one target; never throws for a broken contract, it is in `failures`. */
export async function fuzzTarget<T>(t: FuzzTarget<T>, o: RunOptions): Promise<TargetResult> {
  const seed = o.seed ?? (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
  await t.setup?.();
  fullGc();
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  let inputs = 0;
  const failures: Failure[] = [];
  try {
    const details = await fc.check(
      fc.asyncProperty(t.arbitrary, async (input) => {
        inputs++;
        await runOne(t, input);
      }),
      {
        seed,
        numRuns: o.numRuns ?? 1_000_000_000,
        ...(o.timeLimitMs !== undefined ? { interruptAfterTimeLimit: o.timeLimitMs, markInterruptAsFailure: false } : {}),
        endOnFailure: false,
      },
    );
    if (details.failed) {
      failures.push({
        error: describe(details.errorInstance),
        input: fc.stringify(details.counterexample?.[0]).slice(0, 4000),
        seed: details.seed,
        path: details.counterexamplePath ?? undefined,
      });
    }
  } finally {
    await t.teardown?.();
  }
  const ms = performance.now() - t0;
  fullGc();
  const heapGrowth = process.memoryUsage().heapUsed - heap0;
  if (heapGrowth > HEAP_GROWTH_BOUND) {
    failures.push({ error: `heap grew by ${Math.round(heapGrowth / 1048576)} MB`, input: '', seed, path: undefined });
  }
  return { target: t.name, inputs, failures, ms: Math.round(ms), heapGrowth };
}

// ---------------------------------------------------------------------------
// Mutations of valid seeds

export type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; byte: number }
  | { op: 'truncate'; at: number }
  | { op: 'delete'; at: number; len: number }
  | { op: 'splice'; at: number; from: number; start: number; len: number }
  | { op: 'repeat'; at: number; len: number; times: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'number'; at: number; digits: string };

/** Bytes that break parsers: line-end games, NUL, separators, signs, high bytes. */
const NASTY = ['\r\n', '\r', '\n', '\0', '\r\r\n', '\n.\r\n', '.', ' ', '\t', ':', '=', ',', '/', '..', '-', '+', '\\', '"', '[', ']', '<', '>', '\x7f', '\xff', '\xc3', '\x80', '%', '{', '}', '#'];

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ op: fc.constant('splice' as const), at: fc.nat(), from: fc.nat(), start: fc.nat(), len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ op: fc.constant('repeat' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 8 }), times: fc.oneof(fc.integer({ min: 2, max: 20 }), fc.integer({ min: 1000, max: 20_000 })) }),
  fc.record({
    op: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.oneof(
      fc.constantFrom(...NASTY).map((s) => Buffer.from(s, 'latin1')),
      fc.uint8Array({ minLength: 1, maxLength: 8 }),
    ),
  }),
  fc.record({
    op: fc.constant('number' as const),
    at: fc.nat(),
    digits: fc.constantFrom('0', '-1', '00000000000000000000001', '4294967296', '9007199254740993', '1e400', '99999999999999999999999999999', '9'.repeat(400), 'NaN', '0x10', '+1', '1.5', '١'),
  }),
);

/** Up to `max` mutations, to be applied with mutate(). */
export function mutations(max = 6): fc.Arbitrary<Mutation[]> {
  return fc.array(mutation, { minLength: 0, maxLength: max });
}

/** `b` with the mutations applied in order; `seeds` are what splices take from. */
export function mutate(b: Buffer, ms: readonly Mutation[], seeds: readonly Buffer[] = [b]): Buffer {
  return ms.reduce((x, m) => apply(x, m, seeds.length > 0 ? seeds : [x]), b);
}

function apply(b: Buffer, m: Mutation, seeds: readonly Buffer[]): Buffer {
  const at = b.length === 0 ? 0 : m.at % (b.length + 1);
  switch (m.op) {
    case 'flip':
      if (b.length === 0) return b;
      b = Buffer.from(b);
      b[at % b.length]! ^= 1 << m.bit;
      return b;
    case 'set':
      if (b.length === 0) return Buffer.from([m.byte]);
      b = Buffer.from(b);
      b[at % b.length] = m.byte;
      return b;
    case 'truncate':
      return b.subarray(0, at);
    case 'delete':
      return Buffer.concat([b.subarray(0, at), b.subarray(at + m.len)]);
    case 'splice': {
      const other = seeds[m.from % seeds.length]!;
      const start = other.length === 0 ? 0 : m.start % other.length;
      return Buffer.concat([b.subarray(0, at), other.subarray(start, start + m.len), b.subarray(at)]);
    }
    case 'repeat': {
      const piece = b.subarray(at, at + m.len);
      if (piece.length === 0) return b;
      return Buffer.concat([b.subarray(0, at), Buffer.alloc(piece.length * m.times, piece), b.subarray(at)]);
    }
    case 'insert':
      return Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    case 'number': {
      // Replace the run of digits at or after `at` (or insert) with an overlong or odd number.
      let s = at;
      while (s < b.length && !(b[s]! >= 0x30 && b[s]! <= 0x39)) s++;
      let e = s;
      while (e < b.length && b[e]! >= 0x30 && b[e]! <= 0x39) e++;
      if (s >= b.length) s = e = at;
      return Buffer.concat([b.subarray(0, s), Buffer.from(m.digits), b.subarray(e)]);
    }
  }
}

/**
 * Valid seeds and their mutations (up to `maxMutations` each), plus some
 * plain random bytes: most inputs are near-valid, so they reach deep into the
 * parser, and a few are noise.
 */
export function mutated(seeds: readonly (string | Buffer)[], o: { maxMutations?: number; randomMax?: number } = {}): fc.Arbitrary<Buffer> {
  const bufs = seeds.map((s) => (typeof s === 'string' ? Buffer.from(s, 'latin1') : s));
  const fromSeed = fc
    .tuple(fc.nat({ max: bufs.length - 1 }), fc.array(mutation, { minLength: 0, maxLength: o.maxMutations ?? 6 }))
    .map(([i, ms]) => ms.reduce((b, m) => apply(b, m, bufs), bufs[i]!));
  return fc.oneof(
    { weight: 8, arbitrary: fromSeed },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: o.randomMax ?? 512 }).map((a) => Buffer.from(a)) },
  );
}

/** The same as `mutated`, as latin1 text (every byte a character, so nothing is lost). */
export function mutatedText(seeds: readonly string[], o: { maxMutations?: number; randomMax?: number } = {}): fc.Arbitrary<string> {
  return mutated(seeds, o).map((b) => b.toString('latin1'));
}

/** The same, read as UTF-8 (invalid sequences become U+FFFD, as a reader of files would see them). */
export function mutatedUtf8(seeds: readonly string[], o: { maxMutations?: number; randomMax?: number } = {}): fc.Arbitrary<string> {
  return mutated(seeds.map((s) => Buffer.from(s, 'utf8')), o).map((b) => b.toString('utf8'));
}

/** Cut a buffer into chunks at the given points (parsers fed from sockets and streams see any split). */
export function chunked(b: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => (b.length === 0 ? 0 : c % b.length)))].sort((x, y) => x - y);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    if (p > from) out.push(b.subarray(from, p));
    from = Math.max(from, p);
  }
  out.push(b.subarray(from));
  return out;
}

export const cuts = fc.array(fc.nat(), { maxLength: 8 });
