/**
 * The transformer's operations, each with a hand-written gradient: layer normalisation, GELU, causal
 * self-attention, the embedding lookup and the cross-entropy of a sequence. The model in `model.ts` reads
 * like nanoGPT; the speed lives here.
 *
 * Why by hand, measured on the wasm backend (TensorFlow.js 4.22, 2 cores; `bench/gpt_ops_bench.ts` repeats the
 * comparisons):
 *
 * - tfjs differentiates `tf.gather` with `UnsortedSegmentSum`, which wasm does not have at all, and wasm's
 *   gather itself is over 10× slower than a product with the one-hot matrix of the tokens, which is how the
 *   lookup and its gradient are computed here.
 * - Attention multiplies 16×16 matrices for every sequence and head. wasm runs such batched products
 *   (`BatchMatMul` with a batch) in a scalar loop, about 4× slower than a depthwise convolution computing the
 *   same sums (see {@linkcode channelMatMul}).
 * - Summing over the first axis makes tfjs transpose first, which wasm does slowly; an average pool over all
 *   rows gives the same sums several times faster ({@linkcode sumRows}).
 * - Each op asks which of its inputs need a gradient (as `matMul` in `../ops.ts` does), so a frozen
 *   LayerNorm or the first block of a LoRA model skips work nobody reads.
 *
 * On wasm, layer normalisation, GELU, attention and the cross-entropy each run as one fused kernel forward and
 * one backward (`../fused.ts`) instead of the formulas written out here; the formulas are the reference the
 * fused kernels are tested against, and what runs on the other backends or with `LORA_FUSED=off`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { blasInUse } from "../blas.ts";
import {
  fusedAttention,
  fusedAttentionGrad,
  fusedAttentionInUse,
  fusedCrossEntropy,
  fusedGelu,
  fusedInUse,
  fusedLayerNorm,
  fusedLayerNormGrad,
} from "../fused.ts";
import { customOp, sumRows } from "../ops.ts";

export { sumRows };

/**
 * Layer normalisation over the last axis, PyTorch's `nn.LayerNorm`: `(x − mean) / sqrt(var + ε) · weight +
 * bias`, with the biased variance. The backward pass is the textbook one:
 * `dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))` with `g = dy · weight`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { layerNorm } from "./ops.ts";
 * layerNorm(tf.tensor2d([[1, 2, 3]]), tf.ones([3]), tf.zeros([3])).print(); // [[-1.2247, 0, 1.2247]]
 * ```
 */
export function layerNorm<T extends tf.Tensor>(x: T, weight: tf.Tensor1D, bias: tf.Tensor1D, epsilon = 1e-5): T {
  const width = x.shape[x.rank - 1];
  if (weight.size !== width || bias.size !== width) {
    throw new RangeError(
      `layerNorm: x has ${width} features in its last axis but weight and bias have ${weight.size} and ${bias.size}.`,
    );
  }
  if (fusedInUse()) {
    return customOp<T>([x, weight, bias], ([x, w, b], needs, save) => {
      const { y, mean, rstd } = fusedLayerNorm(x, w, b, epsilon);
      save([x, mean, rstd, w]);
      return {
        value: y as T,
        backward: (dy, [x, mean, rstd, w]) => {
          const { dx, dWeight, dBias } = fusedLayerNormGrad(dy, x, mean, rstd, w);
          return [needs[0] ? dx : null, needs[1] ? dWeight : null, needs[2] ? dBias : null];
        },
      };
    });
  }
  return customOp<T>([x, weight, bias], ([x, w, b], needs, save) => {
    const centered = tf.sub(x, tf.mean(x, -1, true));
    const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centered), -1, true), epsilon));
    const xhat = tf.mul(centered, rstd);
    save([xhat, rstd, w]);
    return {
      value: tf.add(tf.mul(xhat, w), b) as T,
      backward: (dy, [xhat, rstd, w]) => {
        const rows = (t: tf.Tensor) => sumRows(tf.reshape(t, [-1, width]));
        let dx = null;
        if (needs[0]) {
          const g = tf.mul(dy, w);
          const projection = tf.mul(xhat, tf.mean(tf.mul(g, xhat), -1, true));
          dx = tf.mul(tf.sub(tf.sub(g, tf.mean(g, -1, true)), projection), rstd);
        }
        return [dx, needs[1] ? rows(tf.mul(dy, xhat)) : null, needs[2] ? rows(dy) : null];
      },
    };
  });
}

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/**
 * GELU in its exact form, `x · Φ(x)` with Φ the standard normal distribution function, `0.5 · (1 +
 * erf(x/√2))` (PyTorch's `nn.GELU()`, not its tanh approximation). The gradient, `Φ(x) + x · φ(x)`, is
 * computed in the forward pass and kept alone, only when a gradient is needed (tfjs copies every tensor an
 * op keeps, and differentiating erf op by op would keep several).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { gelu } from "./ops.ts";
 * gelu(tf.tensor1d([-1, 0, 1])).print(); // [-0.1587, 0, 0.8413]
 * ```
 */
export function gelu<T extends tf.Tensor>(x: T): T {
  if (fusedInUse()) {
    return customOp<T>([x], ([x], needs, save) => {
      const { value, derivative } = fusedGelu(x, needs[0]);
      if (derivative !== null) save([derivative]);
      return { value: value as T, backward: (dy, [derivative]) => [tf.mul(dy, derivative)] };
    });
  }
  return customOp<T>([x], ([x], needs, save) => {
    const cdf = tf.add(tf.mul(tf.erf(tf.mul(x, Math.SQRT1_2)), 0.5), 0.5);
    if (needs[0]) {
      const density = tf.mul(tf.exp(tf.mul(tf.square(x), -0.5)), INV_SQRT_2PI); // φ(x)
      save([tf.add(cdf, tf.mul(x, density))]);
    }
    return { value: tf.mul(x, cdf) as T, backward: (dy, [derivative]) => [tf.mul(dy, derivative)] };
  });
}

/**
 * Per-channel matrix products `out[c] = a[c] · b[c]` for `C` channels, with `a` laid out `[m, k, C]`, `b`
 * as `[k, C, n]`, and the result as `[m, C, n]`. This is exactly what a depthwise convolution computes when
 * its filter spans the whole input width, and wasm runs that through XNNPACK's vectorised kernels, where
 * a batched `tf.matMul` of the same products takes a scalar loop. The sums are the same.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { channelMatMul } from "./ops.ts";
 * const a = tf.tensor3d([[[1], [2]]]); // one channel, a = [[1, 2]]
 * const b = tf.tensor3d([[[3]], [[4]]]); // b = [[3], [4]]
 * channelMatMul(a, b).print(); // [[[11]]]
 * ```
 */
export function channelMatMul(a: tf.Tensor, b: tf.Tensor): tf.Tensor3D {
  const [m, k, channels] = a.shape as number[], n = b.shape[2] as number;
  if (a.rank !== 3 || b.rank !== 3 || b.shape[0] !== k || b.shape[1] !== channels) {
    throw new RangeError(`channelMatMul: expected a [m, k, C] and b [k, C, n]; got [${a.shape}] and [${b.shape}].`);
  }
  return tf.tidy(() => {
    const input = tf.reshape(a, [1, m, k, channels]) as tf.Tensor4D;
    const filter = tf.reshape(b, [1, k, channels, n]) as tf.Tensor4D;
    return tf.reshape(tf.depthwiseConv2d(input, filter, 1, "valid"), [m, channels, n]);
  });
}

/**
 * An additive causal mask `[size, size]`: 0 where position `j ≤ i` may be attended to from `i`, `-Infinity`
 * above the diagonal, so softmax gives the future exactly zero weight.
 *
 * @example
 * ```ts
 * import { causalMask } from "./ops.ts";
 * causalMask(2).print(); // [[0, -Infinity], [0, 0]]
 * ```
 */
export function causalMask(size: number): tf.Tensor2D {
  const values = new Float32Array(size * size);
  for (let i = 0; i < size; i++) values.fill(-Infinity, i * size + i + 1, (i + 1) * size);
  return tf.tensor2d(values, [size, size]);
}

/** Reshapes between `[batch, time, heads · size]` and the channel layouts of {@linkcode channelMatMul}. */
function layouts(batch: number, time: number, heads: number, size: number) {
  const channels = batch * heads;
  // [batch, time, heads, size] rearranged; a channel is one (sequence, head) pair, written "bh" below.
  const split = (t: tf.Tensor, perm: number[], shape: [number, number, number]) =>
    tf.reshape(tf.transpose(tf.reshape(t, [batch, time, heads, size]), perm), shape) as tf.Tensor3D;
  return {
    /** As the left factor: `[i, d, bh]`. */
    rows: (t: tf.Tensor) => split(t, [1, 3, 0, 2], [time, size, channels]),
    /** As the right factor, per position: `[j, bh, d]`. */
    columns: (t: tf.Tensor) => split(t, [1, 0, 2, 3], [time, channels, size]),
    /** Transposed, as the right factor of `q·kᵀ`: `[d, bh, j]`. */
    transposed: (t: tf.Tensor) => split(t, [3, 0, 2, 1], [size, channels, time]),
    /** `[i, bh, d]` back to `[batch, time, heads · size]`. */
    merge: (t: tf.Tensor) =>
      tf.reshape(tf.transpose(tf.reshape(t, [time, batch, heads, size]), [1, 0, 2, 3]), [batch, time, heads * size]),
  };
}

/**
 * The attention weights and output for queries `[i, d, bh]` against keys `[d, bh, j]` and values
 * `[j, bh, d]`, with `mask` rows `[i, 1, j]`: `P = softmax(q·kᵀ · scale + mask)` as `[i, bh, j]` and `P·V`
 * as `[i, bh, d]`. Shared by the training path and the cached decoding path, so both do the same arithmetic.
 */
function attend(queries: tf.Tensor, keys: tf.Tensor, values: tf.Tensor, mask: tf.Tensor, scale: number) {
  const p = tf.softmax(tf.add(tf.mul(channelMatMul(queries, keys), scale), mask));
  return { p, out: channelMatMul(tf.transpose(p, [0, 2, 1]), values) };
}

function checkAttention(caller: string, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, heads: number): number[] {
  if (q.rank !== 3 || !tf.util.arraysEqual(q.shape, k.shape) || !tf.util.arraysEqual(q.shape, v.shape)) {
    throw new RangeError(
      `${caller}: q, k and v must share one shape [batch, time, width]; got [${q.shape}], [${k.shape}], [${v.shape}].`,
    );
  }
  if (!Number.isInteger(heads) || heads <= 0 || (q.shape[2] as number) % heads !== 0) {
    throw new RangeError(`${caller}: width ${q.shape[2]} does not split into ${heads} heads.`);
  }
  return q.shape;
}

/**
 * Causal multi-head self-attention on projected queries, keys and values `[batch, time, heads · headSize]`:
 * for each sequence and head, `softmax(q·kᵀ / √headSize + mask) · v`, heads concatenated back into
 * `[batch, time, heads · headSize]`. `mask` is `[time, time]`, as {@linkcode causalMask} makes it.
 *
 * Every (sequence, head) pair is a channel of {@linkcode channelMatMul}; the backward pass is written out:
 * `dP = dO·vᵀ`, `dV = Pᵀ·dO`, `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √headSize`, `dQ = dS·k`, `dK = dSᵀ·q`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { causalAttention, causalMask } from "./ops.ts";
 * const x = tf.randomNormal([2, 5, 8]);
 * console.log(causalAttention(x, x, x, 2, causalMask(5)).shape); // [2, 5, 8]
 * ```
 */
export function causalAttention<T extends tf.Tensor>(q: T, k: T, v: T, heads: number, mask: tf.Tensor2D): T {
  const [batch, time, width] = checkAttention("causalAttention", q, k, v, heads);
  if (!tf.util.arraysEqual(mask.shape, [time, time])) {
    throw new RangeError(`causalAttention: the mask must be [${time}, ${time}]; got [${mask.shape}].`);
  }
  const size = width / heads, scale = 1 / Math.sqrt(size);
  if (fusedAttentionInUse(size)) {
    return customOp<T>([q, k, v], ([q, k, v], needs, save) => {
      const { out, p } = fusedAttention(q, k, v, mask, heads, scale);
      save([q, k, v, p]);
      return {
        value: out as T,
        backward: (dy, [q, k, v, p]) => {
          const { dq, dk, dv } = fusedAttentionGrad(dy, q, k, v, p, heads, scale, needs[0] || needs[1]);
          return [dq, dk, needs[2] ? dv : null];
        },
      };
    });
  }
  const { rows, columns, transposed, merge } = layouts(batch, time, heads, size);
  return customOp<T>([q, k, v], ([q, k, v], needs, save) => {
    const { p, out } = attend(rows(q), transposed(k), columns(v), tf.reshape(mask, [time, 1, time]), scale);
    save([q, k, v, p]);
    return {
      value: merge(out) as T,
      backward: (dy, [q, k, v, p]) => {
        const dV = needs[2] ? merge(channelMatMul(tf.transpose(p, [2, 0, 1]), columns(dy))) : null; // Pᵀ·dO
        if (!needs[0] && !needs[1]) return [null, null, dV];
        const dP = channelMatMul(rows(dy), transposed(v)); // dO·vᵀ, [i, bh, j]
        const dS = tf.mul(tf.mul(p, tf.sub(dP, tf.sum(tf.mul(dP, p), -1, true))), scale);
        const dQ = needs[0] ? merge(channelMatMul(tf.transpose(dS, [0, 2, 1]), columns(k))) : null; // dS·k
        const dK = needs[1] ? merge(channelMatMul(tf.transpose(dS, [2, 0, 1]), columns(q))) : null; // dSᵀ·q
        return [dQ, dK, dV];
      },
    };
  });
}

/** The keys and values of the positions seen so far, as {@linkcode cachedAttention} keeps them for one layer. */
export interface LayerCache {
  /** Keys, transposed: `[headSize, batch · heads, length]`. */
  keys: tf.Tensor3D;
  /** Values: `[length, batch · heads, headSize]`. */
  values: tf.Tensor3D;
}

/**
 * {@linkcode causalAttention} for decoding, without gradients: `q`, `k`, `v` `[batch, time, width]` are the
 * newest `time` positions, which follow the `past` ones (if any). Returns the attention output for the new
 * positions and the cache extended by them. `mask` is the full `[blockSize, blockSize]` causal mask; the new
 * positions use its rows `past length …`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { cachedAttention, causalMask } from "./ops.ts";
 * const x = tf.randomNormal([1, 3, 4]);
 * const first = cachedAttention(x, x, x, 2, causalMask(8), null);
 * const y = tf.randomNormal([1, 1, 4]);
 * const next = cachedAttention(y, y, y, 2, causalMask(8), first.cache);
 * console.log(next.cache.values.shape); // [4, 2, 2]: four positions, two heads of size two
 * ```
 */
export function cachedAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  heads: number,
  mask: tf.Tensor2D,
  past: LayerCache | null,
): { out: tf.Tensor3D; cache: LayerCache } {
  const [batch, time, width] = checkAttention("cachedAttention", q, k, v, heads);
  const size = width / heads, start = past === null ? 0 : past.values.shape[0], length = start + time;
  if (length > mask.shape[0]) {
    throw new RangeError(`cachedAttention: ${length} positions do not fit the ${mask.shape[0]}-position mask.`);
  }
  const { rows, columns, transposed, merge } = layouts(batch, time, heads, size);
  return tf.tidy(
    (() => {
      const keys = past === null ? transposed(k) : tf.concat([past.keys, transposed(k)], 2);
      const values = past === null ? columns(v) : tf.concat([past.values, columns(v)], 0);
      const rowsOfMask = tf.reshape(tf.slice(mask, [start, 0], [time, length]), [time, 1, length]);
      const { out } = attend(rows(q), keys, values, rowsOfMask, 1 / Math.sqrt(size));
      return { out: merge(out) as tf.Tensor3D, cache: { keys, values } };
    }) as () => tf.TensorContainer,
  ) as unknown as { out: tf.Tensor3D; cache: LayerCache };
}

/**
 * Rows of `weight` `[vocab, width]` picked by integer `ids` (any shape): `[...ids.shape, width]`, PyTorch's
 * `nn.Embedding` lookup. Computed as `onehot(ids) · weight`, which gives the rows exactly (each sum has one
 * term `1 · w` and zeros), and differentiated as `onehot(ids)ᵀ · dy`. An id outside `0 … vocab − 1` gives a
 * row of zeros; the GPT checks its tokens before they get here.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { embeddingLookup } from "./ops.ts";
 * const table = tf.tensor2d([[0, 0], [1, 1], [2, 2]]);
 * embeddingLookup(table, tf.tensor2d([[2, 1]], [1, 2], "int32")).print(); // [[[2, 2], [1, 1]]]
 * ```
 */
export function embeddingLookup(weight: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
  if (ids.dtype !== "int32") throw new TypeError(`embeddingLookup: ids must be int32; got ${ids.dtype}.`);
  const [vocab, width] = weight.shape;
  return customOp([weight], ([w], needs, save) => {
    // tfjs 4.22's wasm oneHot writes nothing when asked for float32, so it is made as int32 and cast.
    const oneHot = tf.cast(tf.oneHot(tf.reshape(ids, [-1]), vocab), "float32") as tf.Tensor2D; // [n, vocab]
    if (needs[0]) save([oneHot]);
    return {
      value: tf.reshape(tf.matMul(oneHot, w), [...ids.shape, width]),
      backward: (dy, [oneHot]) => {
        const rows = tf.reshape(dy, [-1, width]) as tf.Tensor2D;
        // onehotᵀ·dy: with BLAS a flag of the product; on plain wasm an explicit transpose is faster
        return [blasInUse() ? tf.matMul(oneHot, rows, true) : tf.matMul(tf.transpose(oneHot), rows)];
      },
    };
  });
}

/**
 * Mean cross-entropy of `logits` `[batch, time, vocab]` against integer `targets` `[batch, time]`, over the
 * positions whose target is not negative: a target of `-1` (padding, or a position another window already
 * counts) is left out of both the sum and the count, as PyTorch's `ignore_index`. The gradient is written
 * by hand: `(softmax − onehot) · kept / count`. A batch with no kept position has loss 0.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { sequenceCrossEntropy } from "./ops.ts";
 * const logits = tf.zeros([1, 3, 4]) as tf.Tensor3D;
 * const targets = tf.tensor2d([[1, 2, -1]], [1, 3], "int32");
 * sequenceCrossEntropy(logits, targets).print(); // ln 4 ≈ 1.3863: the third position is ignored
 * ```
 */
export function sequenceCrossEntropy(logits: tf.Tensor3D, targets: tf.Tensor2D): tf.Scalar {
  if (logits.rank !== 3 || targets.rank !== 2 || !tf.util.arraysEqual(logits.shape.slice(0, 2), targets.shape)) {
    throw new RangeError(
      `sequenceCrossEntropy: expected logits [batch, time, vocab] and targets [batch, time]; got [${logits.shape}] ` +
        `and [${targets.shape}].`,
    );
  }
  if (targets.dtype !== "int32") {
    throw new TypeError(`sequenceCrossEntropy: targets must be int32; got ${targets.dtype}.`);
  }
  const vocab = logits.shape[2];
  if (fusedInUse()) {
    return customOp<tf.Scalar>([logits], ([logits], needs, save) => {
      const { loss, grad } = fusedCrossEntropy(tf.reshape(logits, [-1, vocab]), tf.reshape(targets, [-1]), needs[0]);
      if (grad !== null) save([grad]);
      return { value: loss, backward: (dy, [grad]) => [tf.reshape(tf.mul(grad, dy), logits.shape)] };
    });
  }
  return customOp<tf.Scalar>([logits], ([logits], _needs, save) => {
    const z = tf.reshape(logits, [-1, vocab]);
    // A negative target gives an all-zero one-hot row, so `kept` is 1 where the position counts and 0 elsewhere.
    const oneHot = tf.cast(tf.oneHot(tf.reshape(targets, [-1]), vocab), "float32");
    const kept = tf.sum(oneHot, 1, true);
    const count = tf.maximum(tf.sum(kept), 1);
    const shifted = tf.sub(z, tf.max(z, 1, true));
    const exp = tf.exp(shifted);
    const sumExp = tf.sum(exp, 1, true);
    const nll = tf.sub(tf.log(sumExp), tf.sum(tf.mul(shifted, oneHot), 1, true));
    save([exp, sumExp, oneHot, kept, count]);
    return {
      value: tf.div(tf.sum(tf.mul(nll, kept)), count) as tf.Scalar,
      backward: (dy, [exp, sumExp, oneHot, kept, count]) => {
        const grad = tf.mul(tf.sub(tf.div(exp, sumExp), oneHot), tf.mul(kept, tf.div(dy, count)));
        return [tf.reshape(grad, logits.shape)];
      },
    };
  });
}
