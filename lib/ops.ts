/**
 * Operations with hand-written gradients: the matrix product every layer is built on, and the loss.
 *
 * Two reasons. First, speed: tfjs differentiates `tf.matMul` with the transposed forms of matMul
 * (`transposeA`/`transposeB`), which the wasm backend runs about 15× slower than a plain product; an explicit
 * `tf.transpose` followed by a plain product is much faster. With BLAS products (`blas.ts`) the transposed forms
 * cost nothing extra, and the explicit transpose would be wasted work, so the backward pass asks
 * `blasInUse()` which of the two to run; both compute the same products. Second, work saved: PyTorch knows from
 * `requires_grad` which gradients nobody needs, tfjs computes every gradient a custom op returns. So the
 * product asks which operands can need one, and a frozen weight or the raw input costs no backward product.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { blasInUse } from "./blas.ts";
import { fusedCrossEntropy, fusedInUse, fusedProduct, fusedProductsInUse } from "./fused.ts";
import { requiresGrad, tapeRecording } from "./tfjs_internals.ts";

type Save = (tensors: tf.Tensor[]) => void;
type Grad = { value: tf.Tensor2D; gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => tf.Tensor[] };
// tf.customGrad is typed for any arity; this view of it states the arities used here.
const customGrad = tf.customGrad as unknown as {
  (f: (a: tf.Tensor2D, save: Save) => Grad): (a: tf.Tensor2D) => tf.Tensor2D;
  (f: (a: tf.Tensor2D, b: tf.Tensor2D, save: Save) => Grad): (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;
};

/**
 * Mean softmax cross-entropy of `logits` `[batch, classes]` against one-hot (or any probability) `targets` of
 * the same shape, with the gradient written by hand: `(softmax(logits) − targets) / batch`. Same value as
 * `tf.losses.softmaxCrossEntropy(targets, logits)`; the targets are data and get no gradient.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { softmaxCrossEntropy } from "./ops.ts";
 * const logits = tf.variable(tf.zeros([1, 4])) as tf.Variable<tf.Rank.R2>;
 * const { value, grads } = tf.variableGrads(() => softmaxCrossEntropy(logits, tf.tensor2d([[0, 1, 0, 0]])));
 * value.print(); // ln 4 ≈ 1.3863
 * grads[logits.name].print(); // [[0.25, -0.75, 0.25, 0.25]]
 * ```
 */
export function softmaxCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor2D): tf.Scalar {
  if (logits.rank !== 2 || targets.rank !== 2 || !tf.util.arraysEqual(logits.shape, targets.shape)) {
    throw new RangeError(
      `softmaxCrossEntropy: logits and targets must both have shape [batch, classes]; got ` +
        `[${logits.shape}] and [${targets.shape}].`,
    );
  }
  if (fusedInUse()) {
    // One kernel forward (loss and, when needed, the gradient), one backward (the gradient times dy).
    return customOp<tf.Scalar>([logits], ([z], needs, save) => {
      const { loss, grad } = fusedCrossEntropy(z, targets, needs[0]);
      if (grad !== null) save([grad]);
      return { value: loss, backward: (dy, [grad]) => [tf.mul(grad, dy)] };
    });
  }
  // One custom-gradient node instead of tfjs's op-by-op differentiation of its loss: the backward pass is
  // three kernels, and the forward kernels inside a custom op are not recorded on the tape at all.
  const f = scalarGrad((z: tf.Tensor2D, save: Save) => {
    const batch = z.shape[0];
    // Shifting by the row maximum keeps exp from overflowing; the shift cancels in the loss.
    const shifted = tf.sub(z, tf.max(z, 1, true));
    const exp = tf.exp(shifted);
    const sumExp = tf.sum(exp, 1, true);
    // mean over the batch of log Σⱼ exp(zⱼ) − Σⱼ targetⱼ·zⱼ, both terms shifted by the same maximum
    const value = tf.div(tf.sub(tf.sum(tf.log(sumExp)), tf.sum(tf.mul(shifted, targets))), batch) as tf.Scalar;
    // Saved, not captured: the forward pass's tidy frees anything the backward pass has not asked to keep.
    save([exp, sumExp, targets]);
    return {
      value,
      gradFunc: (dy, [e, s, t]) => [tf.mul(tf.sub(tf.div(e, s), t), tf.div(dy, batch)) as tf.Tensor2D],
    };
  });
  return f(logits);
}

// The same view of tf.customGrad for a function of one matrix with a scalar value.
const scalarGrad = tf.customGrad as unknown as (
  f: (z: tf.Tensor2D, save: Save) => {
    value: tf.Scalar;
    gradFunc: (dy: tf.Scalar, saved: tf.Tensor[]) => tf.Tensor2D[];
  },
) => (z: tf.Tensor2D) => tf.Scalar;

/**
 * `x·w` over the last axis of `x`: `[..., k]` times `[k, n]` gives `[..., n]`, with a backward pass that
 * computes only the gradients that can be needed.
 *
 * Which ones is decided as PyTorch decides from `requires_grad` (see `requiresGrad` in
 * `tfjs_internals.ts`): a frozen weight gets none, and neither does raw input data, so the first layer of a
 * network and every frozen layer skip a backward product each. When neither operand needs a gradient this
 * is a plain `tf.matMul`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { matMul } from "./ops.ts";
 * const x = tf.ones([2, 5, 3]);
 * const w = tf.variable(tf.ones([3, 4])) as tf.Variable<tf.Rank.R2>;
 * console.log(matMul(x, w).shape); // [2, 5, 4]
 * const { grads } = tf.variableGrads(() => matMul(x, w).sum(), [w]);
 * console.log(grads[w.name].shape); // [3, 4]
 * ```
 */
export function matMul<T extends tf.Tensor>(x: T, w: tf.Tensor2D): T {
  if (x.rank < 2 || w.rank !== 2 || x.shape[x.rank - 1] !== w.shape[0]) {
    throw new RangeError(
      `matMul: expected x [..., k] and w [k, n] with the same k; got [${x.shape}] and [${w.shape}].`,
    );
  }
  const [gradX, gradW] = [requiresGrad(x), requiresGrad(w)];
  if (x.rank === 2) return product(x as unknown as tf.Tensor2D, w, gradX, gradW) as unknown as T;
  return tf.tidy(() => {
    const flat = tf.reshape(x, [-1, w.shape[0]]) as tf.Tensor2D;
    return tf.reshape(product(flat, w, gradX, gradW), [...x.shape.slice(0, -1), w.shape[1]]) as T;
  });
}

/**
 * `dy·bᵀ`, the gradient of `a·b` with respect to `a`: with the transpose flag where products take it for free,
 * else as an explicit transpose and a plain product.
 */
function timesTransposed(dy: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  return blasInUse() ? tf.matMul(dy, b, false, true) : tf.matMul(dy, tf.transpose(b));
}

/** `aᵀ·dy`, the gradient of `a·b` with respect to `b`, chosen the same way. */
function transposedTimes(a: tf.Tensor2D, dy: tf.Tensor2D): tf.Tensor2D {
  return blasInUse() ? tf.matMul(a, dy, true, false) : tf.matMul(tf.transpose(a), dy);
}

function product(a: tf.Tensor2D, b: tf.Tensor2D, gradA: boolean, gradB: boolean): tf.Tensor2D {
  if (gradA && gradB) return bothGrads(a, b);
  // Each single-gradient form takes only the differentiated operand as its input, so the tape never asks for
  // the other one; the constant operand is saved for the backward pass alongside it.
  if (gradA) {
    const f = customGrad((a: tf.Tensor2D, save: Save): Grad => {
      save([b]);
      return {
        value: tf.matMul(a, b),
        gradFunc: (dy, [bSaved]) => [timesTransposed(dy, bSaved as tf.Tensor2D)],
      };
    });
    return f(a);
  }
  if (gradB) {
    const f = customGrad((b: tf.Tensor2D, save: Save): Grad => {
      save([a]);
      return {
        value: tf.matMul(a, b),
        gradFunc: (dy, [aSaved]) => [transposedTimes(aSaved as tf.Tensor2D, dy)],
      };
    });
    return f(b);
  }
  return tf.matMul(a, b);
}

const bothGrads = customGrad((a: tf.Tensor2D, b: tf.Tensor2D, save: Save): Grad => {
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    gradFunc: (dy, [aSaved, bSaved]) => [
      timesTransposed(dy, bSaved as tf.Tensor2D),
      transposedTimes(aSaved as tf.Tensor2D, dy),
    ],
  };
});

/** What the forward pass of a {@linkcode customOp} returns. */
export interface Forward<T extends tf.Tensor> {
  /** The op's output. */
  value: T;
  /** The inputs' gradients from the output's, in input order (`null` where none is needed); called only when one is. */
  backward: (dy: T, saved: tf.Tensor[]) => (tf.Tensor | null)[];
}

/**
 * Runs `forward` as one node of the gradient tape whose inputs are only those of `inputs` that need a gradient
 * (`requiresGrad`; the others enter as constants); outside a gradient it is a plain tidy computation. When a tape
 * records but no input needs a gradient (a frozen start of a network, or `tf.grad` with respect to a plain tensor),
 * the node is still recorded, so that `tf.grad` reaches through fused kernels too. `forward` learns which inputs
 * need a gradient (`needs`) and must `save` every tensor its backward pass reads. The backward pass runs in its own tidy: tfjs runs a custom gradient outside the per-node
 * scope its own gradients get, so without it every temporary of every backward pass would live until the whole
 * backward pass ends. The operations of `gpt/ops.ts` and `hf/ops.ts` are built on it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { customOp } from "./ops.ts";
 * // y = x², with dy/dx = 2x written by hand
 * const square = (x: tf.Tensor) =>
 *   customOp([x], ([x], _needs, save) => {
 *     save([x]);
 *     return { value: tf.square(x), backward: (dy, [x]) => [tf.mul(dy, tf.mul(x, 2))] };
 *   });
 * const dx = tf.grad(square)(tf.tensor1d([3]));
 * assert.deepEqual(Array.from(dx.dataSync()), [6]);
 * ```
 */
export function customOp<T extends tf.Tensor>(
  inputs: tf.Tensor[],
  forward: (inputs: tf.Tensor[], needs: boolean[], save: Save) => Forward<T>,
): T {
  const needs = inputs.map((t) => requiresGrad(t));
  const active = needs.flatMap((need, i) => (need ? [i] : []));
  if (active.length > 0) return onTape(inputs, active, (all, save) => forward(all, needs, save));
  const floats = inputs.flatMap((t, i) => (t.dtype === "float32" ? [i] : []));
  if (!tapeRecording() || floats.length === 0) return tf.tidy(() => forward(inputs, needs, () => {}).value);
  // A tape records, yet no input needs a gradient: the frozen start of a network, or `tf.grad` with respect to a
  // plain tensor, which requiresGrad cannot tell apart (tfjs keeps tf.grad's x to itself). The forward pass computes
  // nothing for a gradient, but the node goes on the tape with every float input, so that tfjs's gradient reaches
  // through it. Only in tf.grad's case is that gradient asked for; the forward pass then runs again as if every float
  // input needed one, and an input the op gives no gradient for (attention's mask) gets zeros, as a constant.
  const wanted = inputs.map((t) => t.dtype === "float32");
  return onTape(inputs, floats, (all, save) => {
    save(all); // read again by the backward pass, after tfjs has freed the forward's intermediates
    return {
      value: tf.tidy(() => forward(all, needs, () => {}).value),
      backward: (dy, saved) => {
        let kept: tf.Tensor[] = [];
        const grads = forward(saved, wanted, (t) => (kept = t)).backward(dy, kept);
        return grads.map((g, k) => g ?? (wanted[k] ? tf.zerosLike(saved[k]) : null));
      },
    };
  });
}

/** `run` as one node of the tape whose inputs are `inputs[k]` for k in `active`; the others enter as they are. */
function onTape<T extends tf.Tensor>(
  inputs: tf.Tensor[],
  active: number[],
  run: (all: tf.Tensor[], save: Save) => Forward<T>,
): T {
  const op = tf.customGrad(
    ((...args: unknown[]) => {
      const save = args.pop() as Save;
      const all = [...inputs];
      active.forEach((k, j) => (all[k] = args[j] as tf.Tensor));
      const { value, backward } = run(all, save);
      return {
        value,
        gradFunc: (dy: T, saved: tf.Tensor[]) =>
          tf.tidy(() => {
            const grads = backward(dy, saved);
            return active.map((k) => grads[k]!);
          }),
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0],
  );
  return (op as unknown as (...x: tf.Tensor[]) => T)(...active.map((k) => inputs[k]));
}

/**
 * The sum of the rows of `x` (`[rows, n]` → `[n]`), as an average pool over all rows times their number:
 * tfjs's `tf.sum(x, 0)` transposes `x` first, which wasm does slowly, and a product with a row of ones
 * makes XNNPACK repack `x`; the pool reads `x` as it lies, several times faster than `tf.sum` for 1,024 rows. With
 * BLAS products (`blas.ts`), `tf.sum` itself runs as one BLAS product with a vector of ones, and is used.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { sumRows } from "./ops.ts";
 * sumRows(tf.tensor2d([[1, 2], [3, 4]])).print(); // [4, 6]
 * ```
 */
export function sumRows(x: tf.Tensor2D): tf.Tensor1D {
  const [rows, width] = x.shape;
  if (blasInUse()) return tf.sum(x, 0);
  return tf.tidy(() => {
    const mean = tf.avgPool(tf.reshape(x, [1, rows, 1, width]) as tf.Tensor4D, [rows, 1], 1, "valid");
    return tf.reshape(tf.mul(mean, rows), [width]);
  });
}

/**
 * `x·W + b` over the last axis of `x`, what a `Linear` layer computes. With the fused kernels in use (`fused.ts`)
 * it is one node: forward one product that starts from the bias (with BLAS; a product and an addition
 * without), backward only the gradients needed, `dx = dy·Wᵀ`, `dW = xᵀ·dy`, `db = Σ_rows dy`. Otherwise, or without a bias, it is {@linkcode matMul}
 * followed by `tf.add`, differentiated by tfjs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { linear } from "./ops.ts";
 * const y = linear(tf.tensor2d([[1, 2]]), tf.tensor2d([[1], [1]]), tf.tensor1d([10]));
 * assert.deepEqual(Array.from(y.dataSync()), [13]);
 * ```
 */
export function linear<T extends tf.Tensor>(x: T, weight: tf.Tensor2D, bias: tf.Tensor1D | null): T {
  const [k, n] = weight.shape;
  if (bias !== null && bias.size !== n) {
    throw new RangeError(`linear: the bias has ${bias.size} values; expected ${n}, one per output column.`);
  }
  if (bias === null) return matMul(x, weight);
  if (!fusedInUse() || x.rank < 2 || x.shape[x.rank - 1] !== k) return tf.tidy(() => tf.add(matMul(x, weight), bias));
  return customOp<T>([x, weight, bias], ([x, w, b], needs, save) => {
    const flat = tf.reshape(x, [-1, k]) as tf.Tensor2D;
    save([flat, w]);
    // With BLAS, one kernel (`_FusedMatMul` of blas.ts, which takes 2-D operands); on wasm alone, its own two.
    const y = blasInUse()
      ? tf.engine().runKernel("_FusedMatMul", { a: flat, b: w, bias: b }, {
        transposeA: false,
        transposeB: false,
        activation: "linear",
      }) as tf.Tensor
      : tf.add(tf.matMul(flat, w as tf.Tensor2D), b);
    return {
      value: tf.reshape(y, [...x.shape.slice(0, -1), n]) as T,
      backward: (dy, [flat, w]) => {
        const rows = tf.reshape(dy, [-1, n]) as tf.Tensor2D;
        return [
          needs[0] ? tf.reshape(timesTransposed(rows, w as tf.Tensor2D), x.shape) : null,
          needs[1] ? transposedTimes(flat as tf.Tensor2D, rows) : null,
          needs[2] ? sumRows(rows) : null,
        ];
      },
    };
  });
}

/**
 * Whether {@linkcode loraLinear} can run as one node now: the fused kernels and BLAS are in use.
 *
 * @example
 * ```ts
 * import { loraLinearFused } from "./ops.ts";
 * console.log(typeof loraLinearFused()); // "boolean"
 * ```
 */
export function loraLinearFused(): boolean {
  return fusedProductsInUse();
}

/**
 * A `Linear` layer with a LoRA update as one node of the tape, `x·W + b + s·(x·A)·B`: forward the base product with
 * its bias, `x·A`, and one product that adds `s·(x·A)·B` to the base output; backward `s·dy·Bᵀ` once, from which
 * `dA = xᵀ·(s·dy·Bᵀ)` and `dx = dy·Wᵀ + (s·dy·Bᵀ)·Aᵀ` (one product accumulating onto the other), `dB = s·(x·A)ᵀ·dy`,
 * and `dW`, `db` only if the base is trainable. What `LinearWithLoRA` computes as `linear(x) + lora(x)` in about
 * half the kernels. Requires {@linkcode loraLinearFused}; the adapters' kinds use it when it holds.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { loraLinear, loraLinearFused } from "./ops.ts";
 * await initBackend("wasm");
 * if (loraLinearFused()) {
 *   const x = tf.tensor2d([[1, 2]]), w = tf.tensor2d([[1], [1]]);
 *   const y = loraLinear(x, w, tf.tensor1d([10]), tf.tensor2d([[1], [0]]), tf.tensor2d([[1]]), 0.5);
 *   assert.deepEqual(Array.from(y.dataSync()), [13.5]); // 1 + 2 + 10, plus 0.5 · 1 · 1
 * }
 * ```
 */
export function loraLinear<T extends tf.Tensor>(
  x: T,
  weight: tf.Tensor2D,
  bias: tf.Tensor1D | null,
  a: tf.Tensor2D,
  b: tf.Tensor2D,
  scaling: number,
): T {
  if (!loraLinearFused()) throw new Error("loraLinear: needs the fused kernels and BLAS (see loraLinearFused).");
  const [k, n] = weight.shape, rank = a.shape[1];
  if (x.shape[x.rank - 1] !== k || a.shape[0] !== k || b.shape[0] !== rank || b.shape[1] !== n) {
    throw new RangeError(
      `loraLinear: expected x [..., ${k}], A [${k}, r], B [r, ${n}]; got [${x.shape}], [${a.shape}], [${b.shape}].`,
    );
  }
  const inputs = bias === null ? [x, weight, a, b] : [x, weight, a, b, bias];
  return customOp<T>(inputs, ([x, w, a, b, bias], needs, save) => {
    const flat = tf.reshape(x, [-1, k]) as tf.Tensor2D;
    const base = bias === undefined ? tf.matMul(flat, w as tf.Tensor2D) : tf.engine().runKernel("_FusedMatMul", {
      a: flat,
      b: w,
      bias,
    }, { transposeA: false, transposeB: false, activation: "linear" }) as tf.Tensor;
    const xa = tf.matMul(flat, a as tf.Tensor2D);
    save([flat, w, a, b, xa]);
    return {
      value: tf.reshape(fusedProduct(xa, b, { alpha: scaling, c: base }), [...x.shape.slice(0, -1), n]) as T,
      backward: (dy, [flat, w, a, b, xa]) => {
        const rows = tf.reshape(dy, [-1, n]);
        const dxa = fusedProduct(rows, b, { transposeB: true, alpha: scaling }); // s·dy·Bᵀ
        const dx = needs[0]
          ? tf.reshape(fusedProduct(dxa, a, { transposeB: true, c: tf.matMul(rows, w, false, true) }), x.shape)
          : null;
        return [
          dx,
          needs[1] ? tf.matMul(flat, rows, true, false) : null,
          needs[2] ? fusedProduct(flat, dxa, { transposeA: true }) : null,
          needs[3] ? fusedProduct(xa, rows, { transposeA: true, alpha: scaling }) : null,
          needs[4] ? sumRows(rows as tf.Tensor2D) : null,
        ];
      },
    };
  });
}
