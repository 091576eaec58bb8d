/**
 * The merge rules behind combining adapters, on plain arrays (PEFT's `utils/merge_utils.py`): weighted sums,
 * TIES (trim, elect a sign, average what agrees; Yadav et al., 2023, arXiv 2306.01708), DARE (drop at random
 * and rescale; Yu et al., 2023, arXiv 2311.03099) and magnitude pruning. `combine.ts` applies them to
 * adapters.
 *
 * @module
 */

/**
 * How {@linkcode mergeTaskTensors} merges same-shaped tensors (PEFT's `merge_utils`): `linear` is the weighted
 * sum; `magnitude_prune` keeps each tensor's largest entries first; `dare_linear` drops entries at random and
 * rescales the rest; `ties` and `dare_ties` prune likewise, then elect a sign per entry and average the
 * entries that agree with it.
 */
export type MergeRule = "linear" | "ties" | "dare_linear" | "dare_ties" | "magnitude_prune";

/** How TIES elects the sign of an entry: by the sign of the sum of values, or by a vote of signs. */
export type MajoritySignMethod = "total" | "frequency";

/** Options for {@linkcode mergeTaskTensors}. */
export interface MergeOptions {
  /** Fraction of entries each tensor keeps, in (0, 1]; 1 prunes nothing. Needed by every rule but `linear`. */
  density?: number;
  /** How `ties` and `dare_ties` elect signs; default `"total"`. */
  majoritySignMethod?: MajoritySignMethod;
  /** Uniform numbers in [0, 1) for DARE's random drop; needed by `dare_linear` and `dare_ties`. */
  random?: () => number;
}

/**
 * Merges task tensors `tensors[i]` (all the same length, flattened) with weights `weights[i]` into one, by
 * `rule`, as PEFT's `merge_utils` does:
 *
 * - **trim** (`ties`, `magnitude_prune`): each tensor keeps its `⌊density·n⌋` entries of largest magnitude
 *   (ties between equal magnitudes go to the earlier entry) and the others become 0;
 * - **drop and rescale** (`dare_linear`, `dare_ties`): each entry survives with probability `density`,
 *   independently, and survivors are divided by `density`, so the expected value of every entry is unchanged;
 * - **elect and average** (`ties`, `dare_ties`): the sign of each entry is elected from the pruned, unweighted
 *   tensors: with `"total"` the sign of their sum, with `"frequency"` the sign with more votes (a tie elects
 *   +); then the weighted entries whose sign equals the elected one (zeros never do) are averaged, and an entry
 *   where none agrees is 0;
 * - otherwise the pruned tensors are summed with their weights.
 *
 * Computed in float64.
 *
 * @example Three tasks, two entries: the first entry's elected sign is − (3 − 1 − 5 < 0)
 * ```ts
 * import assert from "node:assert/strict";
 * import { mergeTaskTensors } from "./merge_utils.ts";
 * const tasks = [new Float64Array([3, 1]), new Float64Array([-1, 2]), new Float64Array([-5, 0])];
 * assert.deepEqual(mergeTaskTensors("linear", tasks, [1, 1, 1]), new Float64Array([-3, 3]));
 * assert.deepEqual(mergeTaskTensors("ties", tasks, [1, 1, 1], { density: 1 }), new Float64Array([-3, 1.5]));
 * ```
 */
export function mergeTaskTensors(
  rule: MergeRule,
  tensors: readonly Float64Array[],
  weights: readonly number[],
  options: MergeOptions = {},
): Float64Array {
  const n = tensors[0]?.length ?? 0;
  if (tensors.length === 0 || tensors.some((t) => t.length !== n) || weights.length !== tensors.length) {
    throw new RangeError(
      `mergeTaskTensors: expected one or more tensors of equal length and one weight each; got lengths ` +
        `[${tensors.map((t) => t.length)}] and ${weights.length} weights.`,
    );
  }
  const density = options.density ?? 1;
  if (rule !== "linear") checkDensity("mergeTaskTensors", rule, options.density);
  let pruned = tensors;
  if (rule === "ties" || rule === "magnitude_prune") pruned = tensors.map((t) => trimByMagnitude(t, density));
  if (rule === "dare_linear" || rule === "dare_ties") {
    const random = options.random;
    if (random === undefined) throw new RangeError(`mergeTaskTensors: ${rule} needs options.random.`);
    pruned = tensors.map((t) => dropAndRescale(t, density, random));
  }
  const merged = new Float64Array(n);
  if (rule === "ties" || rule === "dare_ties") {
    const method = options.majoritySignMethod ?? "total";
    for (let j = 0; j < n; j++) {
      let score = 0;
      for (const t of pruned) score += method === "total" ? t[j] : Math.sign(t[j]);
      const elected = score >= 0 ? 1 : -1;
      let sum = 0, count = 0;
      pruned.forEach((t, i) => {
        if (Math.sign(t[j]) === elected) {
          sum += weights[i] * t[j];
          count++;
        }
      });
      merged[j] = sum / Math.max(count, 1);
    }
  } else {
    pruned.forEach((t, i) => {
      for (let j = 0; j < n; j++) merged[j] += weights[i] * t[j];
    });
  }
  return merged;
}

/** `t` with all but its `⌊density·n⌋` largest-magnitude entries set to 0 (PEFT's `magnitude_based_pruning`). */
function trimByMagnitude(t: Float64Array, density: number): Float64Array {
  if (density >= 1) return t;
  const keep = Math.floor(density * t.length);
  const order = Array.from(t.keys()).sort((i, j) => Math.abs(t[j]) - Math.abs(t[i]) || i - j);
  const out = new Float64Array(t.length);
  for (const i of order.slice(0, keep)) out[i] = t[i];
  return out;
}

/** `t` with each entry kept with probability `density` and divided by it, or else 0 (PEFT's `random_pruning`). */
function dropAndRescale(t: Float64Array, density: number, random: () => number): Float64Array {
  if (density >= 1) return t;
  return t.map((x) => (random() < density ? x / density : 0));
}

/**
 * Throws a `RangeError` naming `where` and `method` unless `density` is a number in (0, 1].
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkDensity } from "./merge_utils.ts";
 * checkDensity("example", "ties", 0.5); // fine
 * assert.throws(() => checkDensity("example", "ties", 1.5), /in \(0, 1\]; got 1\.5/);
 * ```
 */
export function checkDensity(where: string, method: string, density: number | undefined): void {
  if (typeof density !== "number" || !(density > 0 && density <= 1)) {
    throw new RangeError(
      `${where}: "${method}" needs options.density, the fraction of entries kept, in (0, 1]; got ${density}.`,
    );
  }
}
