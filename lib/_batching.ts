/**
 * What the two data loaders (`DataLoader` for images, `TokenLoader` for token windows) share: the check of the
 * batch size and the order in which an epoch visits the examples. Not part of the public API.
 *
 * @module
 */
import { shuffleInPlace } from "./random.ts";

/**
 * Throws a `RangeError` naming `owner` unless `batchSize` is a positive integer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkBatchSize } from "./_batching.ts";
 * assert.throws(() => checkBatchSize("DataLoader", 0), /DataLoader: batchSize must be a positive integer; got 0/);
 * ```
 */
export function checkBatchSize(owner: string, batchSize: unknown): void {
  if (!Number.isInteger(batchSize) || (batchSize as number) <= 0) {
    throw new RangeError(`${owner}: batchSize must be a positive integer; got ${batchSize}.`);
  }
}

/**
 * The indices `0 … count − 1` in the order one epoch visits them: as they are, or shuffled by `random`
 * (Fisher–Yates, so a seeded generator gives the same order on every run).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { epochOrder } from "./_batching.ts";
 * import { seededRandom } from "./random.ts";
 * assert.deepEqual([...epochOrder(4, false, seededRandom(1))], [0, 1, 2, 3]);
 * assert.deepEqual([...epochOrder(4, true, seededRandom(1))].sort(), [0, 1, 2, 3]);
 * ```
 */
export function epochOrder(count: number, shuffle: boolean, random: () => number): Uint32Array {
  const order = Uint32Array.from({ length: count }, (_, i) => i);
  if (shuffle) shuffleInPlace(order, random);
  return order;
}
