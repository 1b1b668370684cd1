/** The warm-up a `serve --workers` worker runs before it reports ready (cluster.ts warmUpListings). */
import { describe, expect, it } from 'vitest';
import { warmUpListings } from './cluster.js';

describe('worker warm-up', () => {
  it('reads its made-up saved scan and answers STAT, LIST and UIDL over every message of it, each round', async () => {
    // Per round: STAT's line, then LIST and UIDL with their first line, 50 message lines and the dot.
    expect(await warmUpListings(50, 2)).toBe(2 * (1 + 2 * (1 + 50 + 1)));
  });
});
