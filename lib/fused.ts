/**
 * Fused kernels for the wasm backend: a transformer's layer normalisation, GELU, attention and cross-entropy, a
 * product that starts from a third matrix (LoRA's sums), each with its gradient, as one loop (or one loop around
 * BLAS products) over the tensors as they lie on the wasm heap, where the readable formulas of `gpt/ops.ts` run
 * eight to forty kernels. Every tfjs kernel costs its own dispatch, allocation and pass over memory: on the bench's
 * tiny GPT a training step ran 652 of them, and runs 251 fused (242 with LoRA, where `ops.ts`'s `loraLinear` uses
 * {@linkcode fusedProduct}). `bench/profile.ts` prints the kernels of a step. This file turns them on and off and
 * runs them as tensor operations; the kernels themselves are in `fused_kernels.ts`.
 *
 * The loops are WebAssembly SIMD where the runtime has it (`simd.wat`: GELU, layer normalisation, attention for
 * heads of up to 1,024 values, and Adam's update in `optim.ts`), JavaScript otherwise; attention's larger heads and
 * the LoRA sums go to BLAS (`blas.ts`) when it is in use.
 *
 * The readable formulas stay in `gpt/ops.ts` beside the fused paths, as nanoGPT keeps its manual attention beside
 * flash attention: they run on every other backend, on wasm when {@linkcode disableFused} is called (or
 * `LORA_FUSED=off`), and `tests/fused_test.ts` compares the two, values and gradients, for each kind of loop.
 *
 * {@linkcode enableFused} (which `initBackend` calls on wasm) also replaces wasm's `Identity` kernel with one that
 * shares the input's buffer, as wasm's `Reshape` already does, instead of copying it. tfjs clones every tensor an
 * operation keeps for its gradient, so the copy ran for every saved activation (117 per step of that GPT). Sharing
 * is safe because no kernel writes into an existing buffer: outputs are always fresh (the one exception, Adam's
 * moments in `optim.ts`, are private tensors nobody clones).
 *
 * The JavaScript loops compute in float64 within each row (sums, means, softmax) and round to float32 on writing;
 * the vector loops compute in float32. Either way results agree with the readable formulas to float32 rounding, not
 * bit for bit. GELU's Φ comes from Abramowitz and Stegun's erf 7.1.26 in the vector loop (absolute error below
 * 1.5·10⁻⁷), from a table with cubic Hermite interpolation in the JavaScript one (below 3·10⁻¹⁰).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { blasGemm } from "./blas.ts";
import { sharedIdentity, useVectorLoops, vectorLoops } from "./fused_kernels.ts";

export { VECTOR_ATTENTION_MAX_VALUES } from "./fused_kernels.ts";

let enabled = false;
let originalIdentity: tf.KernelConfig | null = null;

/**
 * Puts the fused kernels in use on the wasm backend (and the sharing `Identity`); safe to call more than once, and
 * before the backend starts. GELU and layer normalisation run as the vector loops of `simd.wat` where the runtime
 * has WebAssembly SIMD, and as JavaScript loops otherwise or with `simd: false` (the tests compare the two).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { disableFused, enableFused, fusedInUse } from "./fused.ts";
 * enableFused();
 * disableFused();
 * assert.equal(fusedInUse(), false);
 * ```
 */
export function enableFused(options: { simd?: boolean } = {}): void {
  useVectorLoops(options.simd ?? true);
  const current = tf.getKernel("Identity", "wasm");
  if (current !== undefined && current.kernelFunc !== sharedIdentity) {
    originalIdentity = current;
    tf.unregisterKernel("Identity", "wasm");
    tf.registerKernel({ ...current, kernelFunc: sharedIdentity as unknown as tf.KernelFunc });
  }
  enabled = true;
}

/**
 * Back to the readable formulas and wasm's copying `Identity`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { disableFused, fusedInUse } from "./fused.ts";
 * disableFused();
 * assert.equal(fusedInUse(), false);
 * ```
 */
export function disableFused(): void {
  if (originalIdentity !== null && tf.getKernel("Identity", "wasm")?.kernelFunc === sharedIdentity) {
    tf.unregisterKernel("Identity", "wasm");
    tf.registerKernel(originalIdentity);
  }
  enabled = false;
}

/**
 * Whether the operations of `gpt/ops.ts` run the fused kernels now: enabled, and wasm is the current backend.
 *
 * @example
 * ```ts
 * import { fusedInUse } from "./fused.ts";
 * console.log(typeof fusedInUse()); // "boolean"
 * ```
 */
export function fusedInUse(): boolean {
  return enabled && tf.getBackend() === "wasm";
}

/**
 * Whether the fused kernels that need BLAS products (`blas.ts`) run now: {@linkcode fusedProduct} and the LoRA layer
 * of `ops.ts` built on it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fusedInUse, fusedProductsInUse } from "./fused.ts";
 * assert.ok(!fusedProductsInUse() || fusedInUse());
 * ```
 */
export function fusedProductsInUse(): boolean {
  return fusedInUse() && blasGemm() !== null;
}

/**
 * Whether the fused attention runs now for heads of `headSize` values: with the vector loops of `simd.wat` when the
 * head size is a multiple of four, else with BLAS products.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fusedAttentionInUse, fusedInUse } from "./fused.ts";
 * assert.ok(!fusedAttentionInUse(16) || fusedInUse());
 * ```
 */
export function fusedAttentionInUse(headSize: number): boolean {
  return fusedInUse() && (blasGemm() !== null || vectorLoops(tf.backend(), headSize % 4 === 0) !== null);
}

// --- the operations, as tensors in and out -------------------------------------------------------------------------

function run(name: string, inputs: Record<string, tf.Tensor>, attrs: Record<string, unknown> = {}): tf.Tensor[] {
  const out = tf.engine().runKernel(name, inputs as tf.NamedTensorMap, attrs as tf.NamedAttrMap);
  return Array.isArray(out) ? out : [out];
}

/**
 * Layer normalisation over the last axis in one pass: `y = (x − mean) · rstd · weight + bias`, with the
 * per-row `mean` and `rstd = 1 / sqrt(var + ε)` (biased variance) that its gradient needs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedLayerNorm } from "./fused.ts";
 * await initBackend("wasm");
 * const { y, mean } = fusedLayerNorm(tf.tensor2d([[1, 2, 3]]), tf.ones([3]), tf.zeros([3]), 1e-5);
 * assert.deepEqual(Array.from(mean.dataSync()), [2]);
 * assert.ok(Math.abs(y.dataSync()[2] - 1.2247) < 1e-4);
 * ```
 */
export function fusedLayerNorm(
  x: tf.Tensor,
  weight: tf.Tensor,
  bias: tf.Tensor,
  epsilon: number,
): { y: tf.Tensor; mean: tf.Tensor1D; rstd: tf.Tensor1D } {
  const [y, mean, rstd] = run("LoraLayerNorm", { x, weight, bias }, { epsilon });
  return { y, mean: mean as tf.Tensor1D, rstd: rstd as tf.Tensor1D };
}

/**
 * The gradients of {@linkcode fusedLayerNorm} in one pass: `dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))` with
 * `g = dy · weight` and `x̂ = (x − mean) · rstd`, `dWeight = Σ_rows dy · x̂`, `dBias = Σ_rows dy`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedLayerNorm, fusedLayerNormGrad } from "./fused.ts";
 * await initBackend("wasm");
 * const x = tf.tensor2d([[1, 2, 4]]), w = tf.ones([3]);
 * const { mean, rstd } = fusedLayerNorm(x, w, tf.zeros([3]), 1e-5);
 * const { dBias } = fusedLayerNormGrad(tf.ones([1, 3]), x, mean, rstd, w);
 * assert.deepEqual(Array.from(dBias.dataSync()), [1, 1, 1]);
 * ```
 */
export function fusedLayerNormGrad(
  dy: tf.Tensor,
  x: tf.Tensor,
  mean: tf.Tensor,
  rstd: tf.Tensor,
  weight: tf.Tensor,
): { dx: tf.Tensor; dWeight: tf.Tensor1D; dBias: tf.Tensor1D } {
  const [dx, dWeight, dBias] = run("LoraLayerNormGrad", { dy, x, mean, rstd, weight });
  return { dx, dWeight: dWeight as tf.Tensor1D, dBias: dBias as tf.Tensor1D };
}

/**
 * Exact GELU, `x · Φ(x)`, in one pass; with `derivative`, also `Φ(x) + x · φ(x)`, its gradient, from the same
 * exponential.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedGelu } from "./fused.ts";
 * await initBackend("wasm");
 * const { value, derivative } = fusedGelu(tf.tensor1d([0, 1]), true);
 * assert.ok(Math.abs(value.dataSync()[1] - 0.8413) < 1e-4);
 * assert.ok(Math.abs(derivative!.dataSync()[0] - 0.5) < 1e-6);
 * ```
 */
export function fusedGelu(x: tf.Tensor, derivative: boolean): { value: tf.Tensor; derivative: tf.Tensor | null } {
  const [value, d] = run("LoraGelu", { x }, { derivative });
  return { value, derivative: d ?? null };
}

/**
 * Multi-head attention on `q`, `k`, `v` `[batch, time, heads · size]` with an additive `mask` `[time, time]`:
 * for every sequence and head, `P = softmax(q·kᵀ · scale + mask)` and `out = P·v`, each head's columns read in
 * place, the softmax in between. Returns `out` in the layout of `q` and `p` `[batch, heads, time, time]`, which the
 * gradient needs. Requires {@linkcode fusedAttentionInUse}. Heads whose size is a multiple of four run in the vector
 * loops of `simd.wat` (one call for all heads, the products in register blocks against `kᵀ` copied to scratch) when
 * they hold at most {@linkcode VECTOR_ATTENTION_MAX_VALUES} values or BLAS is missing; others in BLAS, two
 * `cblas_sgemm` calls per head with the transposes as flags.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedAttention, fusedAttentionInUse } from "./fused.ts";
 * import { causalMask } from "./gpt/ops.ts";
 * await initBackend("wasm");
 * if (fusedAttentionInUse(2)) {
 *   const x = tf.randomNormal([2, 3, 4]);
 *   const { out, p } = fusedAttention(x, x, x, causalMask(3), 2, 0.5);
 *   assert.deepEqual(p.shape, [2, 2, 3, 3]);
 *   assert.deepEqual(out.shape, [2, 3, 4]);
 * }
 * ```
 */
export function fusedAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  mask: tf.Tensor,
  heads: number,
  scale: number,
): { out: tf.Tensor; p: tf.Tensor } {
  const [out, p] = run("LoraAttention", { q, k, v, mask }, { heads, scale });
  return { out, p };
}

/**
 * The gradients of {@linkcode fusedAttention} from the output's, `dy`: per sequence and head `dV = Pᵀ·dO`,
 * `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale`, `dQ = dS·k`, `dK = dSᵀ·q`. With `queriesAndKeys`
 * false only `dV` is computed (the others come back `null`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedAttention, fusedAttentionGrad, fusedAttentionInUse } from "./fused.ts";
 * import { causalMask } from "./gpt/ops.ts";
 * await initBackend("wasm");
 * if (fusedAttentionInUse(2)) {
 *   const x = tf.randomNormal([1, 3, 4]);
 *   const { p } = fusedAttention(x, x, x, causalMask(3), 2, 0.5);
 *   const { dv, dq } = fusedAttentionGrad(tf.onesLike(x), x, x, x, p, 2, 0.5, false);
 *   assert.deepEqual(dv.shape, [1, 3, 4]);
 *   assert.equal(dq, null);
 * }
 * ```
 */
export function fusedAttentionGrad(
  dy: tf.Tensor,
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  p: tf.Tensor,
  heads: number,
  scale: number,
  queriesAndKeys: boolean,
): { dq: tf.Tensor | null; dk: tf.Tensor | null; dv: tf.Tensor } {
  const [dv, dq, dk] = run("LoraAttentionGrad", { dy, q, k, v, p }, { heads, scale, queriesAndKeys });
  return { dq: dq ?? null, dk: dk ?? null, dv };
}

/**
 * Mean cross-entropy of `logits` `[rows, vocab]` against int32 `targets` `[rows]` over the rows whose target
 * lies in `0 … vocab − 1` (others, such as −1, are left out of sum and count); with `gradient`, also the
 * gradient of that mean with respect to the logits, `(softmax − onehot) · kept / count`. Loss 0 when no row counts.
 * float32 `targets` `[rows, vocab]` are distributions instead (one-hot or smoothed): every row counts, the loss is
 * the mean of `log Σⱼ e^zⱼ − Σⱼ tⱼ·zⱼ` and the gradient `(softmax − t) / rows`, as `softmaxCrossEntropy` in
 * `ops.ts` computes them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedCrossEntropy } from "./fused.ts";
 * await initBackend("wasm");
 * const { loss } = fusedCrossEntropy(tf.zeros([2, 4]), tf.tensor1d([1, -1], "int32"), false);
 * assert.ok(Math.abs(loss.dataSync()[0] - Math.log(4)) < 1e-6);
 * ```
 */
export function fusedCrossEntropy(
  logits: tf.Tensor,
  targets: tf.Tensor,
  gradient: boolean,
): { loss: tf.Scalar; grad: tf.Tensor | null } {
  const [loss, grad] = run("LoraCrossEntropy", { logits, targets }, { gradient });
  return { loss: loss as tf.Scalar, grad: grad ?? null };
}

/**
 * `α·op(a)·op(b) + c` for matrices `a`, `b` (and `c` of the result's shape, or none) as one BLAS product that
 * starts from `c`: the sums a LoRA layer needs (`x·W + s·(x·A)·B`, and backward `dy·Wᵀ + (s·dy·Bᵀ)·Aᵀ`) without a
 * separate scaling or addition. Requires {@linkcode fusedProductsInUse} (BLAS).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { fusedProduct, fusedProductsInUse } from "./fused.ts";
 * await initBackend("wasm");
 * if (fusedProductsInUse()) {
 *   const y = fusedProduct(tf.tensor2d([[1, 2]]), tf.tensor2d([[3], [4]]), { alpha: 2, c: tf.tensor2d([[1]]) });
 *   assert.deepEqual(Array.from(y.dataSync()), [23]); // 2·11 + 1
 * }
 * ```
 */
export function fusedProduct(
  a: tf.Tensor,
  b: tf.Tensor,
  options: { transposeA?: boolean; transposeB?: boolean; alpha?: number; c?: tf.Tensor } = {},
): tf.Tensor {
  const { transposeA = false, transposeB = false, alpha = 1, c } = options;
  const [out] = run("LoraGemm", c === undefined ? { a, b } : { a, b, c }, { transposeA, transposeB, alpha });
  return out;
}
