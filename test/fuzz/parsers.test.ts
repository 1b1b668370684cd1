/**
 * A short run of every parser fuzz target (`npm run fuzz` runs them for
 * longer). A failure prints the shrunk input and the seed that found it.
 */
import { describe, expect, it } from 'vitest';
import { fuzzTarget } from './harness.js';
import { TARGETS } from './targets.js';

const SEED = Number(process.env.POPLAR_FUZZ_SEED ?? 0x9e3779b9) >>> 0;

describe('parsers of outside bytes end in a result or a typed error', () => {
  for (const t of TARGETS) {
    it(t.name, async () => {
      const r = await fuzzTarget(t, { numRuns: t.quickRuns ?? 200, seed: SEED });
      expect(r.failures).toEqual([]);
      expect(r.inputs).toBeGreaterThanOrEqual(t.quickRuns ?? 200);
    });
  }
});
