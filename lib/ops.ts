/**
 * The one operation every layer here is built on: a matrix product whose gradient is written by hand.
 *
 * Two reasons. First, speed: tfjs differentiates `tf.matMul` with the transposed forms of matMul
 * (`transposeA`/`transposeB`), which the wasm backend runs about 15× slower than a plain product; an explicit
 * `tf.transpose` followed by a plain product is much faster. Second, work saved: PyTorch knows from
 * `requires_grad` which gradients nobody needs, tfjs computes every gradient a custom op returns. So the
 * caller says which operands need one, and a frozen weight or the raw input costs no backward product.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

type Save = (tensors: tf.Tensor[]) => void;
type Grad = { value: tf.Tensor2D; gradFunc: (dy: tf.Tensor2D, saved: tf.Tensor[]) => tf.Tensor[] };
// tf.customGrad is typed for any arity; this view of it states the arities used here.
const customGrad = tf.customGrad as unknown as {
  (f: (a: tf.Tensor2D, save: Save) => Grad): (a: tf.Tensor2D) => tf.Tensor2D;
  (f: (a: tf.Tensor2D, b: tf.Tensor2D, save: Save) => Grad): (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor2D;
};

/**
 * Computes `a·b` for 2-D tensors, with a backward pass that only computes the requested gradients.
 *
 * `gradA`/`gradB` say whether `a`/`b` need a gradient: pass `false` for a frozen weight or for data that is
 * not a function of any trainable variable. With both `false` this is a plain `tf.matMul`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { matMul } from "./ops.ts";
 * const x = tf.ones([2, 3]) as tf.Tensor2D;
 * const w = tf.variable(tf.ones([3, 4])) as tf.Variable<tf.Rank.R2>;
 * const { grads } = tf.variableGrads(() => matMul(x, w, false, true).sum(), [w]);
 * console.log(grads[w.name].shape); // [3, 4]
 * ```
 */
export function matMul(a: tf.Tensor2D, b: tf.Tensor2D, gradA: boolean, gradB: boolean): tf.Tensor2D {
  if (gradA && gradB) return bothGrads(a, b);
  // Each single-gradient form takes only the differentiated operand as its input, so the tape never asks for
  // the other one; the constant operand is saved for the backward pass alongside it.
  if (gradA) {
    const f = customGrad((a: tf.Tensor2D, save: Save): Grad => {
      save([b]);
      return {
        value: tf.matMul(a, b),
        gradFunc: (dy, [bSaved]) => [tf.matMul(dy, tf.transpose(bSaved))],
      };
    });
    return f(a);
  }
  if (gradB) {
    const f = customGrad((b: tf.Tensor2D, save: Save): Grad => {
      save([a]);
      return {
        value: tf.matMul(a, b),
        gradFunc: (dy, [aSaved]) => [tf.matMul(tf.transpose(aSaved), dy)],
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
      tf.matMul(dy, tf.transpose(bSaved)),
      tf.matMul(tf.transpose(aSaved), dy),
    ],
  };
});
