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
import { requiresGrad } from "./tfjs_internals.ts";

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
