/**
 * Seeded randomness shared by the data loaders, DARE's masks and sampling: one small generator and a shuffle.
 *
 * @module
 */
/**
 * A small, fast, seedable pseudo-random generator (mulberry32) returning floats in [0, 1).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { seededRandom } from "./random.ts";
 * const random = seededRandom(123);
 * assert.equal(random(), seededRandom(123)()); // the same seed gives the same numbers
 * ```
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Puts `items` in a random order in place (Fisher–Yates), drawing from `random`, so a seeded generator gives
 * the same order on every run.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { seededRandom, shuffleInPlace } from "./random.ts";
 * const items = [1, 2, 3, 4, 5];
 * shuffleInPlace(items, seededRandom(1));
 * assert.deepEqual([...items].sort((a, b) => a - b), [1, 2, 3, 4, 5]); // the same items, reordered
 * ```
 */
export function shuffleInPlace<T>(items: T[] | Uint32Array, random: () => number): void {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
}
