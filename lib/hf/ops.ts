/**
 * The operations GPT-2, Llama and Qwen2 need beyond those of `../gpt/ops.ts`: RMS normalisation, GELU's tanh
 * approximation, SwiGLU's gated SiLU, rotary position embeddings and the repetition of key/value heads for
 * grouped-query attention. Each has a hand-written gradient in the style of `../gpt/ops.ts` (which see for
 * why): the backward pass computes only the gradients some input needs, and keeps as few tensors as it can.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { customOp, sumRows } from "../ops.ts";

/**
 * Root-mean-square normalisation over the last axis, Llama's `LlamaRMSNorm`: `x / sqrt(mean(x²) + ε) · weight`
 * (no centring, no bias). With `r = 1/sqrt(mean(x²) + ε)`, `x̂ = x·r` and `g = dy · weight`, the gradients are
 * `dx = r · (g − x̂ · mean(g · x̂))` and `dweight = Σ_rows dy · x̂`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { rmsNorm } from "./ops.ts";
 * const y = rmsNorm(tf.tensor2d([[3, 4]]), tf.ones([2]), 0);
 * // mean(x²) = 12.5, so y = x / √12.5
 * assert.ok(Math.abs(y.dataSync()[1] - 4 / Math.sqrt(12.5)) < 1e-6);
 * ```
 */
export function rmsNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, epsilon: number): T {
  const width = x.shape[x.rank - 1];
  if (weight.size !== width) {
    throw new RangeError(`rmsNorm: x has ${width} features in its last axis but weight has ${weight.size}.`);
  }
  return customOp<T>([x, weight], ([x, w], needs, save) => {
    const r = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), epsilon));
    const xhat = tf.mul(x, r);
    save([xhat, r, w]);
    return {
      value: tf.mul(xhat, w) as T,
      backward: (dy, [xhat, r, w]) => {
        let dx = null;
        if (needs[0]) {
          const g = tf.mul(dy, w);
          dx = tf.mul(tf.sub(g, tf.mul(xhat, tf.mean(tf.mul(g, xhat), -1, true))), r);
        }
        const dw = needs[1] ? sumRows(tf.reshape(tf.mul(dy, xhat), [-1, width]) as tf.Tensor2D) : null;
        return [dx, dw];
      },
    };
  });
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/**
 * GELU's tanh approximation, `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`: GPT-2's `gelu_new` (and
 * PyTorch's `gelu(approximate="tanh")`, transformers' `gelu_pytorch_tanh`). It differs from the exact GELU of
 * `../gpt/ops.ts` by up to about 5·10⁻⁴ (notebook 13 measures it), enough to matter when matching a checkpoint's
 * logits. The derivative, `0.5 · (1 + t) + 0.5 · x · (1 − t²) · √(2/π) · (1 + 3 · 0.044715 · x²)`, is computed in the
 * forward pass and kept alone, only when a gradient is needed.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { geluTanh } from "./ops.ts";
 * const [y] = geluTanh(tf.tensor1d([1])).dataSync();
 * assert.ok(Math.abs(y - 0.8412) < 1e-4); // exact GELU(1) is 0.84134
 * ```
 */
export function geluTanh<T extends tf.Tensor>(x: T): T {
  return customOp<T>([x], ([x], needs, save) => {
    const cube = tf.mul(tf.mul(x, x), x);
    const t = tf.tanh(tf.mul(tf.add(x, tf.mul(cube, 0.044715)), SQRT_2_OVER_PI));
    const half = tf.mul(tf.add(t, 1), 0.5);
    if (needs[0]) {
      const slope = tf.mul(tf.add(tf.mul(tf.square(x), 3 * 0.044715), 1), SQRT_2_OVER_PI);
      const dt = tf.mul(tf.mul(tf.sub(1, tf.square(t)), slope), tf.mul(x, 0.5));
      save([tf.add(half, dt)]);
    }
    return { value: tf.mul(x, half) as T, backward: (dy, [derivative]) => [tf.mul(dy, derivative)] };
  });
}

/**
 * SwiGLU's gate, `silu(gate) · up` with `silu(g) = g · σ(g)`: Llama's `act_fn(gate_proj(x)) * up_proj(x)`. With
 * `s = σ(g)`, `dgate = dy · up · s · (1 + g · (1 − s))` and `dup = dy · g · s`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { siluGate } from "./ops.ts";
 * const [y] = siluGate(tf.tensor1d([2]), tf.tensor1d([3])).dataSync();
 * assert.ok(Math.abs(y - 3 * 2 / (1 + Math.exp(-2))) < 1e-5);
 * ```
 */
export function siluGate<T extends tf.Tensor>(gate: T, up: T): T {
  if (!tf.util.arraysEqual(gate.shape, up.shape)) {
    throw new RangeError(`siluGate: gate [${gate.shape}] and up [${up.shape}] must have one shape.`);
  }
  return customOp<T>([gate, up], ([g, u], needs, save) => {
    const s = tf.sigmoid(g);
    const silu = tf.mul(g, s);
    save([g, u, s, silu]);
    return {
      value: tf.mul(silu, u) as T,
      backward: (dy, [g, u, s, silu]) => [
        needs[0] ? tf.mul(tf.mul(dy, u), tf.mul(s, tf.add(1, tf.mul(g, tf.sub(1, s))))) : null,
        needs[1] ? tf.mul(dy, silu) : null,
      ],
    };
  });
}

/** `[−x₂, x₁]` for the two halves of the last axis: the rotation by 90° in each (i, i + d/2) plane. */
function rotateHalf(x: tf.Tensor): tf.Tensor {
  const [first, second] = tf.split(x, 2, -1);
  return tf.concat([tf.neg(second), first], -1);
}

/** The transpose of {@linkcode rotateHalf}: `[x₂, −x₁]`. */
function rotateHalfBack(x: tf.Tensor): tf.Tensor {
  const [first, second] = tf.split(x, 2, -1);
  return tf.concat([second, tf.neg(first)], -1);
}

/**
 * Rotary position embeddings on the heads of `x` `[batch, time, heads · headDim]`, as Llama's
 * `apply_rotary_pos_emb`: `x · cos + rotate_half(x) · sin` for each head, with `cos` and `sin`
 * `[time, headDim]` of the positions (see `rotaryTables`) and `rotate_half([x₁, x₂]) = [−x₂, x₁]` on the
 * halves of a head. The map is a rotation, so its gradient is the inverse rotation:
 * `dx = dy · cos + rotate_halfᵀ(dy · sin)`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { applyRotary } from "./ops.ts";
 * // One head of size 2 at angle π/2: (1, 0) turns to (0, 1).
 * const y = applyRotary(tf.tensor3d([[[1, 0]]]), tf.tensor2d([[0, 0]]), tf.tensor2d([[1, 1]]), 1);
 * assert.deepEqual(Array.from(y.dataSync()), [0, 1]);
 * ```
 */
export function applyRotary<T extends tf.Tensor>(x: T, cos: tf.Tensor2D, sin: tf.Tensor2D, heads: number): T {
  const [batch, time, width] = x.shape as number[];
  const size = width / heads;
  if (x.rank !== 3 || !Number.isInteger(size) || size % 2 !== 0) {
    throw new RangeError(
      `applyRotary: expected x [batch, time, heads · even headDim]; got [${x.shape}], ${heads} heads.`,
    );
  }
  if (!tf.util.arraysEqual(cos.shape, [time, size]) || !tf.util.arraysEqual(sin.shape, [time, size])) {
    throw new RangeError(`applyRotary: cos and sin must be [${time}, ${size}]; got [${cos.shape}] and [${sin.shape}].`);
  }
  const split = (t: tf.Tensor) => tf.reshape(t, [batch, time, heads, size]);
  return customOp<T>([x], ([x], _needs, save) => {
    const [c, s] = [tf.reshape(cos, [time, 1, size]), tf.reshape(sin, [time, 1, size])];
    const h = split(x);
    save([c, s]);
    return {
      value: tf.reshape(tf.add(tf.mul(h, c), tf.mul(rotateHalf(h), s)), x.shape) as T,
      backward: (dy, [c, s]) => {
        const g = split(dy);
        return [tf.reshape(tf.add(tf.mul(g, c), rotateHalfBack(tf.mul(g, s))), x.shape)];
      },
    };
  });
}

/**
 * The cosines and sines of the rotary embeddings for positions `start … start + time − 1`, `[time, headDim]`
 * each, as Llama's `LlamaRotaryEmbedding` computes them in float32: inverse frequencies
 * `1 / θ^(2i/headDim)`, angles `position · frequency`, each repeated for both halves of a head. Each step is
 * rounded to float32 as PyTorch's float32 arithmetic rounds it, so long contexts get the same angles.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rotaryTables } from "./ops.ts";
 * const { cos, sin } = rotaryTables(0, 2, 4, 10000);
 * assert.deepEqual(Array.from(cos.slice(0, 4)), [1, 1, 1, 1]); // position 0: no rotation
 * assert.equal(sin[4], Math.fround(Math.sin(1))); // position 1, first frequency 1
 * ```
 */
export function rotaryTables(
  start: number,
  time: number,
  headDim: number,
  theta: number,
): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const inverse = Array.from(
    { length: half },
    (_, i) => Math.fround(1 / Math.fround(theta ** Math.fround(2 * i / headDim))),
  );
  const cos = new Float32Array(time * headDim), sin = new Float32Array(time * headDim);
  for (let t = 0; t < time; t++) {
    for (let i = 0; i < half; i++) {
      const angle = Math.fround((start + t) * inverse[i]);
      cos[t * headDim + i] = cos[t * headDim + half + i] = Math.cos(angle);
      sin[t * headDim + i] = sin[t * headDim + half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * Each of the `kvHeads` heads of `x` `[batch, time, kvHeads · headDim]` repeated `groups` times in place,
 * `[batch, time, kvHeads · groups · headDim]`: grouped-query attention's `repeat_kv`, which lets `groups`
 * query heads share one key/value head. The gradient sums each group back into its head.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { repeatHeads } from "./ops.ts";
 * const y = repeatHeads(tf.tensor3d([[[1, 2, 3, 4]]]), 2, 2); // two heads of size 2, each twice
 * assert.deepEqual(Array.from(y.dataSync()), [1, 2, 1, 2, 3, 4, 3, 4]);
 * ```
 */
export function repeatHeads<T extends tf.Tensor>(x: T, kvHeads: number, groups: number): T {
  if (groups === 1) return x;
  const [batch, time, width] = x.shape as number[];
  const size = width / kvHeads;
  if (x.rank !== 3 || !Number.isInteger(size)) {
    throw new RangeError(
      `repeatHeads: expected x [batch, time, kvHeads · headDim]; got [${x.shape}], ${kvHeads} heads.`,
    );
  }
  const rows = batch * time * kvHeads;
  return customOp<T>([x], ([x]) => ({
    value: tf.reshape(tf.tile(tf.reshape(x, [rows, 1, size]), [1, groups, 1]), [batch, time, width * groups]) as T,
    backward: (dy) => [tf.reshape(tf.sum(tf.reshape(dy, [rows, groups, size]), 1), x.shape)],
  }));
}

/**
 * `x · tableᵀ` over the last axis of `x`, for an output layer tied to an embedding `table` `[num, dim]`, given
 * that transpose `transposed` `[dim, num]` too: the forward product reads `transposed` as it lies and the
 * gradient `dx = dy · table` reads `table` as it lies, so neither pass transposes the table (for GPT-2's
 * 50,257 × 768 table a transpose per step is a 154 MB copy). Only `x` gets a gradient; a table that is being
 * trained takes `matMul` with `tf.transpose` instead (see `TiedLMHead`).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { projectTied } from "./ops.ts";
 * const table = tf.tensor2d([[1, 0], [0, 1], [1, 1]]); // 3 tokens of width 2
 * const logits = projectTied(tf.tensor2d([[2, 3]]), table, tf.transpose(table) as tf.Tensor2D);
 * assert.deepEqual(Array.from(logits.dataSync()), [2, 3, 5]);
 * ```
 */
export function projectTied<T extends tf.Tensor>(x: T, table: tf.Tensor2D, transposed: tf.Tensor2D): T {
  const [num, dim] = table.shape;
  if (x.shape[x.rank - 1] !== dim || !tf.util.arraysEqual(transposed.shape, [dim, num])) {
    throw new RangeError(
      `projectTied: expected x [..., ${dim}], table [${num}, ${dim}] and its transpose; got [${x.shape}], ` +
        `[${table.shape}] and [${transposed.shape}].`,
    );
  }
  const outShape = [...x.shape.slice(0, -1), num];
  return customOp<T>([x], ([x]) => ({
    value: tf.reshape(tf.matMul(tf.reshape(x, [-1, dim]), transposed), outShape) as T,
    backward: (dy) => [tf.reshape(tf.matMul(tf.reshape(dy, [-1, num]), table), x.shape)],
  }));
}

/**
 * Runs `compute(...inputs)` as a single node of the gradient tape, whose input gradients `backward` gives from
 * the output's. The kernels inside are not recorded, so none of them keeps a copy of its inputs for a backward
 * pass (on the wasm backend every tensor tfjs keeps for one is copied, weights included). `backward` may read
 * only `dy` and tensors that outlive the step, such as variables: the inputs are not kept.
 */
function untaped<T extends tf.Tensor>(
  inputs: tf.Tensor[],
  compute: (...inputs: tf.Tensor[]) => T,
  backward: (dy: T) => tf.Tensor[],
): T {
  const op = tf.customGrad(
    ((...args: unknown[]) => {
      args.pop(); // the save function, unused: nothing is kept
      return { value: compute(...(args as tf.Tensor[])), gradFunc: (dy: T) => tf.tidy(() => backward(dy)) };
    }) as unknown as Parameters<typeof tf.customGrad>[0],
  );
  return (op as unknown as (...x: tf.Tensor[]) => T)(...inputs);
}

/**
 * `x · weight + bias` over the last axis of `x` for a frozen `weight` `[in, out]` (and frozen `bias`), with the
 * gradient for `x` alone, `dy · weightᵀ`. Nothing is kept for the backward pass but the variables themselves:
 * the general product (`matMul` in `../ops.ts`) keeps its constant operand, which tfjs copies on the wasm
 * backend, so a LoRA step on a frozen model would copy every frozen weight once per step.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { frozenLinear } from "./ops.ts";
 * const w = tf.variable(tf.tensor2d([[1, 2], [3, 4]]), false) as tf.Variable<tf.Rank.R2>;
 * const x = tf.tensor2d([[1, 1]]);
 * assert.deepEqual(Array.from(frozenLinear(x, w, null).dataSync()), [4, 6]);
 * const dx = tf.grad((x: tf.Tensor) => tf.sum(frozenLinear(x, w, null)))(x);
 * assert.deepEqual(Array.from(dx.dataSync()), [3, 7]); // rows of W summed
 * ```
 */
export function frozenLinear<T extends tf.Tensor>(x: T, weight: tf.Tensor2D, bias: tf.Tensor1D | null): T {
  const [inFeatures, outFeatures] = weight.shape;
  if (x.shape[x.rank - 1] !== inFeatures) {
    throw new RangeError(`frozenLinear: expected x [..., ${inFeatures}]; got [${x.shape}].`);
  }
  const outShape = [...x.shape.slice(0, -1), outFeatures];
  return untaped<T>(
    [x],
    (x) =>
      tf.tidy(() => {
        const y = tf.matMul(tf.reshape(x, [-1, inFeatures]), weight);
        return tf.reshape(bias === null ? y : tf.add(y, bias), outShape) as T;
      }),
    (dy) => [tf.tidy(() => tf.reshape(tf.matMul(tf.reshape(dy, [-1, outFeatures]), tf.transpose(weight)), x.shape))],
  );
}

/**
 * The rows of a frozen `table` `[num, dim]` for int32 `ids` (any shape), `[...ids.shape, dim]`, by `tf.gather`,
 * outside the gradient tape (the tape would keep, and on wasm copy, the whole table).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { gatherFrozen } from "./ops.ts";
 * const rows = gatherFrozen(tf.tensor2d([[0, 0], [1, 1], [2, 2]]), tf.tensor1d([2, 0], "int32"));
 * assert.deepEqual(Array.from(rows.dataSync()), [2, 2, 0, 0]);
 * ```
 */
export function gatherFrozen(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
  if (ids.dtype !== "int32") throw new TypeError(`gatherFrozen: ids must be int32; got ${ids.dtype}.`);
  const dim = table.shape[1], shape = ids.shape;
  return untaped(
    [ids],
    (ids) => tf.tidy(() => tf.reshape(tf.gather(table, tf.reshape(ids, [-1])), [...shape, dim])),
    () => [tf.zeros(shape, "int32")], // ids are data: nothing upstream of them is trained
  );
}
