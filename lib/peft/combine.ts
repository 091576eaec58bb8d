/**
 * Combining adapters: several named adapters of one model become one new adapter, as PEFT's
 * `add_weighted_adapter` does it, by one of eleven methods (concatenation, weighted sums, truncated SVD,
 * TIES, DARE, magnitude pruning).
 *
 * Notation used throughout: adapter `i` has factors `Aᵢ` (`[in, rᵢ]`) and `Bᵢ` (`[rᵢ, out]`) and scaling
 * `sᵢ`, so the update it adds to a layer's weight is `ΔWᵢ = sᵢ·Aᵢ·Bᵢ`; `wᵢ` is the weight the caller gives it.
 * The target most methods aim at is the weighted sum of updates, `Σ wᵢ·ΔWᵢ = Σ wᵢ·sᵢ·Aᵢ·Bᵢ`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { svd } from "../linalg.ts";
import { LoRALayer, type ScalingConvention } from "../lora.ts";
import { seededRandom } from "../random.ts";
import type { Module } from "../module.ts";
import type { Factors } from "./kind.ts";
import { checkAdapterName, kindFor, type LinearWithAdapters, listNames } from "./layer.ts";
import { adapterTargets, attachAdapters, listAdapters, loraLayers } from "./model.ts";
import { checkDensity, type MajoritySignMethod, type MergeRule, mergeTaskTensors } from "./merge_utils.ts";

/**
 * The methods {@linkcode addWeightedAdapter} offers, with PEFT's names: `cat`, `linear`, `svd`, and the
 * pruning methods `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`, each also as `…_svd`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { COMBINATION_TYPES } from "./combine.ts";
 * assert.equal(COMBINATION_TYPES.length, 11);
 * ```
 */
export const COMBINATION_TYPES = [
  "cat",
  "linear",
  "svd",
  "ties",
  "ties_svd",
  "dare_linear",
  "dare_ties",
  "dare_linear_svd",
  "dare_ties_svd",
  "magnitude_prune",
  "magnitude_prune_svd",
] as const;

/** One of {@linkcode COMBINATION_TYPES}. */
export type CombinationType = (typeof COMBINATION_TYPES)[number];

/** Options for {@linkcode addWeightedAdapter}. */
export interface WeightedAdapterOptions {
  /** The method; default `"svd"`, as in PEFT. */
  combinationType?: CombinationType;
  /** Rank of the new adapter for the `svd` family; default the largest rank among the sources. */
  svdRank?: number;
  /** Fraction of entries kept by the pruning methods (`ties`, `dare_*`, `magnitude_prune`, and their `_svd`). */
  density?: number;
  /** Sign election of `ties`, `dare_ties` and their `_svd`; default `"total"`. */
  majoritySignMethod?: MajoritySignMethod;
  /** Seed of DARE's random drop (`dare_*` only), so that a combination repeats; default 0. */
  seed?: number;
}

/**
 * Adds adapter `adapterName` to `model`, made from the existing `adapters` with weights `weights` (PEFT's
 * `add_weighted_adapter`), and returns the model. The new adapter is an ordinary one: it covers every layer
 * that any source covers, is frozen and inactive until `setAdapter`, and can be merged, saved with
 * `saveAdapter` or served in a mixed batch. Its scaling is 1, so that `A·B` is its whole update: it keeps the
 * first source's convention, with alpha 1 (`"tutorial"`), `rank` (`"paper"`) or `√rank` (`"rslora"`).
 *
 * In a layer that some sources do not cover, those sources are left out (there is nothing of theirs to add).
 * With `ΔWᵢ = sᵢ·Aᵢ·Bᵢ` the update of source `i` and `wᵢ` its weight, each method gives:
 *
 * - **`cat`**: `A = [w₁s₁A₁ | w₂s₂A₂ | …]`, `B` the `Bᵢ` stacked: exactly `Σ wᵢ·ΔWᵢ`. Ranks may differ; the
 *   new rank is their sum, and a layer covered by fewer sources is padded with zeros.
 * - **`linear`**: with `cᵢ = wᵢ·sᵢ`, `A = Σ sign(cᵢ)·√|cᵢ|·Aᵢ` and `B = Σ √|cᵢ|·Bᵢ`. With one source that is
 *   exactly `w·ΔW`; with several, `A·B` also holds the cross terms `√|cᵢcⱼ|·AᵢBⱼ` (i ≠ j), so it is **not**
 *   `Σ wᵢ·ΔWᵢ`. Ranks must be equal; the new rank is that rank.
 * - **`ties`, `dare_linear`, `dare_ties`, `magnitude_prune`**: as `linear`, but the A's and the B's are each
 *   merged entry by entry with {@linkcode mergeTaskTensors} (weights `sign(cᵢ)·√|cᵢ|` for A, `√|cᵢ|` for B).
 *   Equal ranks needed, cross terms included.
 * - **`svd`**: the best rank-`svdRank` approximation (Eckart–Young) of `Σ wᵢ·ΔWᵢ`; exact when `svdRank` is at
 *   least the rank of that sum. **`ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`**:
 *   the same truncation of `mergeTaskTensors(rule, [ΔW₁, ΔW₂, …], [w₁, w₂, …])` on the full matrices. All
 *   singular values go to B; A's columns are orthonormal (or zero where a singular value is 0). Ranks may
 *   differ.
 *
 * DARE draws its masks from one generator seeded with `seed`, layer after layer in model order, so a
 * combination repeats exactly.
 *
 * Sources may be of any kind whose update is exactly a scaled product of two factors: LoRA, and VeRA (whose
 * factors are `A ⊙ λ_d` and `B ⊙ λ_b`, scaling 1); the result is always a LoRA adapter. The `svd` family
 * combines `Σ wᵢ·ΔWᵢ`, as PEFT 0.21.0 does (checked: its result equals `Σ wᵢ·ΔWᵢ` to 7e-7; PEFT 0.20.1.dev0
 * applied the scaling twice in these methods).
 *
 * Differences from PEFT 0.21.0 (`tuners/lora/model.py`, `add_weighted_adapter`), each on purpose:
 *
 * - With rsLoRA PEFT's new adapter (alpha = rank) scales by `√rank` instead of 1; here the scaling is 1 in every
 *   convention.
 * - An `adapterName` already in use is an error; PEFT returns without doing anything.
 * - One source keeps the method asked for (an `svd` of one adapter reduces its rank, `magnitude_prune` prunes
 *   it); PEFT switches to `linear` whenever there is one source.
 * - Bad input is refused, with the model unchanged: a count of weights that differs from the count of
 *   adapters (PEFT drops the extras), a missing or out-of-range `density` (PEFT fails inside, or skips pruning
 *   at `density ≥ 1`), an option the method does not use, and an `svdRank` above `min(in, out)` of a covered
 *   layer.
 * - A LoRA rank here is at most `min(in, out)` (PEFT has no such bound). Where `cat`'s summed rank exceeds it,
 *   that layer gets rank `min(in, out)` and holds the exact sum factored by SVD, which a matrix of that shape
 *   always allows; the adapter then has different ranks in different layers, which its PEFT config records
 *   in `rank_pattern`.
 * - DARE's masks come from `seed` (default 0), so a combination repeats; PEFT draws them from PyTorch's
 *   global generator.
 * - DoRA adapters are refused (their kind has no factors): PEFT's combination drops their magnitude vectors,
 *   so its result is not what the sources compute.
 * - PEFT's `svd_clamp`, `svd_full_matrices` and `svd_driver` are not offered; the SVD is float64 Jacobi.
 *
 * Like PEFT, sources may cover different layers (the new adapter covers their union).
 *
 * @example Two adapters become one, exactly, by concatenation
 * ```ts
 * import assert from "node:assert/strict";
 * import { addAdapter, addLoRA, listAdapters, loraLayers } from "./model.ts";
 * import { addWeightedAdapter } from "./combine.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(20, 16, 12, 5), { rank: 2, alpha: 4 });
 * addAdapter(model, "other", { rank: 3, alpha: 1 });
 * addWeightedAdapter(model, ["default", "other"], [1, -0.5], "both", { combinationType: "cat" });
 * assert.deepEqual(listAdapters(model), ["default", "other", "both"]);
 * assert.equal(loraLayers(model)[0][1].adapters.get("both")!.rank, 5); // 2 + 3
 * model.dispose();
 * ```
 */
export function addWeightedAdapter<M extends Module>(
  model: M,
  adapters: readonly string[],
  weights: readonly number[],
  adapterName: string,
  options: WeightedAdapterOptions = {},
): M {
  const plan = planCombination(model, adapters, weights, adapterName, options);
  const random = seededRandom(options.seed ?? 0);
  // Compute every layer's factors and build its adapter before the model changes, so that nothing is left
  // half-done.
  const factors = plan.layers.map((layer) => combineLayer(plan, layer, random));
  const targets = adapterTargets(model, adapterName, plan.layers.map((layer) => layer.module), "addWeightedAdapter");
  const built: LoRALayer[] = [];
  try {
    plan.layers.forEach(({ layer, rank }, k) => {
      const { inFeatures, outFeatures } = layer.linear;
      const alpha = plan.convention === "paper" ? rank : plan.convention === "rslora" ? Math.sqrt(rank) : 1;
      const lora = new LoRALayer(inFeatures, outFeatures, rank, alpha, { scaling: plan.convention, seed: 1 });
      built.push(lora);
      tf.tidy(() => {
        lora.A.assign(tf.tensor2d(Float32Array.from(factors[k].a), [inFeatures, rank]));
        lora.B.assign(tf.tensor2d(Float32Array.from(factors[k].b), [rank, outFeatures]));
      });
    });
  } catch (error) {
    built.forEach((lora) => lora.dispose());
    throw error;
  }
  attachAdapters(model, adapterName, targets, built);
  return model;
}

// Helpers ----------------------------------------------------------------------------------------------------

/** One source adapter as it appears in one layer, by its exact factors. */
interface Part {
  /** Position in the caller's list. */
  index: number;
  weight: number;
  factors: Factors;
}

/** One layer of the new adapter: the sources present there and the rank it gets. */
interface LayerPlan {
  module: string;
  layer: LinearWithAdapters;
  parts: Part[];
  rank: number;
}

/** Everything checked and decided before any computation. */
interface Plan {
  method: CombinationType;
  rule: MergeRule;
  density: number;
  majoritySignMethod: MajoritySignMethod;
  convention: ScalingConvention;
  layers: LayerPlan[];
}

const SIGN_ELECTING: readonly CombinationType[] = ["ties", "ties_svd", "dare_ties", "dare_ties_svd"];
const RANDOM: readonly CombinationType[] = ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"];
const EQUAL_RANKS: readonly CombinationType[] = ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"];

/** Checks the request against the model and decides each layer's rank; throws before anything changes. */
function planCombination(
  model: Module,
  adapters: readonly string[],
  weights: readonly number[],
  adapterName: string,
  options: WeightedAdapterOptions,
): Plan {
  const where = "addWeightedAdapter";
  checkAdapterName(adapterName);
  const method = options.combinationType ?? "svd";
  if (!COMBINATION_TYPES.includes(method)) {
    throw new RangeError(
      `${where}: unknown combinationType "${method}"; expected one of ${listNames(COMBINATION_TYPES)}.`,
    );
  }
  if (!Array.isArray(adapters) || adapters.length === 0) {
    throw new RangeError(`${where}: expected a non-empty list of adapter names; got ${JSON.stringify(adapters)}.`);
  }
  if (!Array.isArray(weights) || weights.length !== adapters.length) {
    throw new RangeError(
      `${where}: got ${Array.isArray(weights) ? weights.length : "no list of"} weights for ${adapters.length} ` +
        "adapters; expected one weight per adapter.",
    );
  }
  const badWeight = weights.findIndex((w) => typeof w !== "number" || !Number.isFinite(w));
  if (badWeight >= 0) {
    throw new RangeError(`${where}: weights must be finite numbers; weight ${badWeight} is ${weights[badWeight]}.`);
  }
  const known = listAdapters(model);
  const unknown = adapters.filter((name) => !known.includes(name));
  if (unknown.length > 0) {
    throw new Error(`${where}: the model has no adapter ${listNames(unknown)}; it has ${listNames(known)}.`);
  }
  if (known.includes(adapterName)) {
    throw new Error(
      `${where}: the model already has an adapter named "${adapterName}"; choose another name or delete it first.`,
    );
  }

  // Options: each must belong to the method.
  const isSvd = method.endsWith("svd");
  const rule = mergeRule(method);
  const uses = {
    svdRank: isSvd,
    density: rule !== "linear",
    majoritySignMethod: SIGN_ELECTING.includes(method),
    seed: RANDOM.includes(method),
  };
  for (const [option, used] of Object.entries(uses)) {
    if (!used && options[option as keyof WeightedAdapterOptions] !== undefined) {
      throw new RangeError(`${where}: combinationType "${method}" does not use options.${option}.`);
    }
  }
  if (uses.density) checkDensity(where, method, options.density);
  const majoritySignMethod = options.majoritySignMethod ?? "total";
  if (majoritySignMethod !== "total" && majoritySignMethod !== "frequency") {
    throw new RangeError(`${where}: majoritySignMethod must be "total" or "frequency"; got "${majoritySignMethod}".`);
  }
  if (options.seed !== undefined && !Number.isInteger(options.seed)) {
    throw new RangeError(`${where}: seed must be an integer; got ${options.seed}.`);
  }

  // The layers the new adapter covers, and which sources are present in each.
  const layers: LayerPlan[] = [];
  for (const [module, layer] of loraLayers(model)) {
    const parts = adapters.flatMap((name, index) => {
      const adapter = layer.adapters.get(name);
      if (adapter === undefined) return [];
      const kind = kindFor(adapter as Module);
      const factors = kind.factors(adapter as never, layer.linear);
      if (factors === null) {
        throw new Error(
          `${where}: adapter "${name}" is a ${kind.title} adapter (in ${module}), whose update is not a scaled ` +
            `product of two factors; combining ${kind.title} adapters is not supported.`,
        );
      }
      const product = weights[index] * factors.scaling;
      if (!Number.isFinite(Math.fround(product))) {
        throw new RangeError(
          `${where}: weight ${weights[index]} of adapter "${name}" times its scaling ${factors.scaling} in ${module} ` +
            `is ${product}, which float32 cannot hold.`,
        );
      }
      return [{ index, weight: weights[index], factors }];
    });
    if (parts.length > 0) layers.push({ module, layer, parts, rank: 0 });
  }
  if (EQUAL_RANKS.includes(method)) {
    for (const { module, parts } of layers) {
      const odd = parts.find((p) => p.factors.rank !== parts[0].factors.rank);
      if (odd !== undefined) {
        throw new Error(
          `${where}: combinationType "${method}" needs adapters of equal rank, but in ${module} ` +
            `"${adapters[parts[0].index]}" has rank ${parts[0].factors.rank} and "${adapters[odd.index]}" rank ` +
            `${odd.factors.rank}; use "cat" or a method ending in "svd".`,
        );
      }
    }
  }

  // Each source's rank is its largest over the layers it covers (PEFT: r, or the largest of a rank pattern).
  const sourceRank = adapters.map((name) =>
    Math.max(
      ...layers.flatMap(({ parts }) => parts.filter((p) => adapters[p.index] === name).map((p) => p.factors.rank)),
    )
  );
  if (method === "cat") {
    const total = sourceRank.reduce((a, b) => a + b, 0);
    for (const plan of layers) plan.rank = Math.min(total, maxRank(plan.layer));
  } else if (isSvd) {
    const rank = options.svdRank ?? Math.max(...sourceRank);
    const given = options.svdRank === undefined ? `the default svdRank (the largest source rank, ${rank})` : "svdRank";
    if (!Number.isInteger(rank) || rank < 1) {
      throw new RangeError(`${where}: svdRank must be a positive integer; got ${rank}.`);
    }
    for (const plan of layers) {
      if (rank > maxRank(plan.layer)) {
        const { inFeatures, outFeatures } = plan.layer.linear;
        throw new RangeError(
          `${where}: ${given} is ${rank}, more than ${plan.module} (${inFeatures}×${outFeatures}) can hold: a LoRA ` +
            `rank is at most min(in, out) = ${maxRank(plan.layer)}; pass a smaller svdRank.`,
        );
      }
      plan.rank = rank;
    }
  } else {
    for (const plan of layers) plan.rank = plan.parts[0].factors.rank;
  }
  const first = layers.flatMap(({ parts }) => parts).find((p) => p.index === 0)!.factors;
  return {
    method,
    rule,
    density: options.density ?? 1,
    majoritySignMethod,
    convention: first.convention,
    layers,
  };
}

/** The merge rule behind a combination type (`svd` is the weighted sum); `cat` has none. */
function mergeRule(method: CombinationType): MergeRule {
  if (method === "svd" || method === "cat") return "linear";
  return method.replace(/_svd$/, "") as MergeRule;
}

/** The largest rank a LoRA adapter on `layer` may have. */
function maxRank(layer: LinearWithAdapters): number {
  return Math.min(layer.linear.inFeatures, layer.linear.outFeatures);
}

/** Throws unless `density` is a number in (0, 1]. */

/** The new A (`[in, rank]`) and B (`[rank, out]`) of one layer, row-major, in float64. */
function combineLayer(plan: Plan, layerPlan: LayerPlan, random: () => number): { a: Float64Array; b: Float64Array } {
  const { layer, parts, rank } = layerPlan;
  const [m, n] = [layer.linear.inFeatures, layer.linear.outFeatures];
  const read = ({ factors }: Part) => ({ a: factors.a, b: factors.b, r: factors.rank, s: factors.scaling });
  const sources = parts.map(read);
  const options = { density: plan.density, majoritySignMethod: plan.majoritySignMethod, random };

  if (plan.method === "cat") {
    const total = sources.reduce((sum, { r }) => sum + r, 0);
    if (total > rank) {
      // More columns than the layer allows: the exact sum, refactored (its rank is at most min(in, out) = rank).
      const sum = new Float64Array(m * n);
      sources.forEach(({ a, b, r, s }, i) => addProduct(sum, a, b, m, r, n, parts[i].weight * s));
      return factorize(sum, m, n, rank);
    }
    const a = new Float64Array(m * rank), b = new Float64Array(rank * n);
    let offset = 0;
    sources.forEach(({ a: ai, b: bi, r, s }, i) => {
      const c = parts[i].weight * s;
      for (let row = 0; row < m; row++) {
        for (let k = 0; k < r; k++) a[row * rank + offset + k] = c * ai[row * r + k];
      }
      b.set(bi, offset * n);
      offset += r;
    });
    return { a, b };
  }

  if (plan.method.endsWith("svd")) {
    const updates = sources.map(({ a, b, r, s }) => addProduct(new Float64Array(m * n), a, b, m, r, n, s));
    const merged = mergeTaskTensors(plan.rule, updates, parts.map((p) => p.weight), options);
    return factorize(merged, m, n, rank);
  }

  // linear, ties, dare_linear, dare_ties, magnitude_prune: A's and B's merged separately, as PEFT does.
  const c = sources.map(({ s }, i) => parts[i].weight * s);
  return {
    a: mergeTaskTensors(
      plan.rule,
      sources.map((x) => x.a),
      c.map((ci) => Math.sign(ci) * Math.sqrt(Math.abs(ci))),
      options,
    ),
    b: mergeTaskTensors(plan.rule, sources.map((x) => x.b), c.map((ci) => Math.sqrt(Math.abs(ci))), options),
  };
}

/** `out += scale · a·b` for row-major `a` (`[m, r]`) and `b` (`[r, n]`); returns `out`. */
function addProduct(
  out: Float64Array,
  a: Float64Array,
  b: Float64Array,
  m: number,
  r: number,
  n: number,
  scale: number,
): Float64Array {
  for (let i = 0; i < m; i++) {
    for (let k = 0; k < r; k++) {
      const aik = scale * a[i * r + k];
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] += aik * b[k * n + j];
    }
  }
  return out;
}

/** The top `rank` singular triplets of `matrix` (`[m, n]`, row-major) as `A = U` and `B = diag(σ)·Vᵀ`. */
function factorize(matrix: Float64Array, m: number, n: number, rank: number): { a: Float64Array; b: Float64Array } {
  const { u, s, v } = svd(Array.from({ length: m }, (_, i) => Array.from(matrix.subarray(i * n, (i + 1) * n))));
  const a = new Float64Array(m * rank), b = new Float64Array(rank * n);
  for (let i = 0; i < m; i++) for (let k = 0; k < rank; k++) a[i * rank + k] = u[i][k];
  for (let k = 0; k < rank; k++) for (let j = 0; j < n; j++) b[k * n + j] = s[k] * v[j][k];
  return { a, b };
}
