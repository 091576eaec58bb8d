/**
 * The timing and summary helpers every bench script shares: a median-min-max summary of repeated
 * measurements, and the mean time of a call measured over several runs.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";

/** Median, min and max of repeated measurements, and how many there were. */
export interface Spread {
  /** The median (the mean of the two middle values for an even count). */
  median: number;
  /** The smallest value. */
  min: number;
  /** The largest value. */
  max: number;
  /** How many values. */
  runs: number;
}

/**
 * Median, min and max of `values`.
 *
 * @example
 * ```ts
 * import { spread } from "./timing.ts";
 * console.log(spread([3, 1, 2, 10])); // { median: 2.5, min: 1, max: 10, runs: 4 }
 * ```
 */
export function spread(values: number[]): Spread {
  if (values.length === 0) throw new RangeError("spread: no values to summarise.");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1], runs: sorted.length };
}

/**
 * The median over `runs` runs of the mean time in milliseconds of `calls` calls of `f`, after `warmup` calls.
 * A tensor `f` returns is freed before the next call; the last one of each run is read back first, so that a
 * backend that queues its work (webgpu) has finished it.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { timeCalls } from "./timing.ts";
 * const a = tf.ones([64, 64]);
 * const ms = await timeCalls(() => tf.matMul(a, a), { runs: 3, calls: 5, warmup: 1 });
 * console.log(ms > 0); // true
 * a.dispose();
 * ```
 */
export async function timeCalls(
  f: () => tf.Tensor | void,
  { runs, calls, warmup }: { runs: number; calls: number; warmup: number },
): Promise<number> {
  for (let i = 0; i < warmup; i++) (f() as tf.Tensor | undefined)?.dispose();
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const start = performance.now();
    let last: tf.Tensor | void = undefined;
    for (let i = 0; i < calls; i++) {
      (last as tf.Tensor | undefined)?.dispose();
      last = f();
    }
    if (last) {
      await last.data();
      last.dispose();
    }
    times.push((performance.now() - start) / calls);
  }
  return spread(times).median;
}
