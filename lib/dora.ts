/**
 * DoRA, weight-decomposed low-rank adaptation (Liu et al., 2024, arXiv 2402.09353), from scratch.
 *
 * A weight matrix is a length times a direction for each unit: `W = m · V / ‖V‖`, with `m = ‖W‖` and
 * `V = W`. DoRA trains the two parts apart: the direction through LoRA (`V = W + s·A·B`, A and B trainable,
 * W frozen) and the length through its own vector `m` (trainable, one number per unit), so
 *
 *     W′ = m · (W + s·A·B) / ‖W + s·A·B‖.
 *
 * The norm is taken per OUTPUT unit, as the paper's code and Hugging Face PEFT (`tuners/lora/dora.py`) do:
 * weights here are stored `[in, out]`, so that is the norm of each column (over axis 0), and `m` has one
 * entry per output unit. `m` starts at `‖W‖`, so a new adapter changes nothing until training moves it.
 * As the paper's §4.3 recommends and PEFT does, the norm is a constant of the backward pass (it still
 * follows A and B in the forward pass); TensorFlow.js has no `stop_gradient`, so {@linkcode DoRALayer}
 * computes it inside a custom-gradient op whose gradient is zero.
 *
 * `normAxis: "input"` and `detachNorm: false` reproduce Sebastian Raschka's `LinearWithDoRAMerged` from
 * "Improving LoRA: implementing DoRA from scratch", which normalises the other axis (one magnitude per
 * input unit) and lets the gradient flow through the norm.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type BaseLayer, checkInput, isBaseLayer, type Linear } from "./layers.ts";
import { LoRALayer, type LoRAOptions, pissaInit, requireLinear } from "./lora.ts";
import { Module } from "./module.ts";
import { matMul } from "./ops.ts";

/**
 * Which units DoRA gives a magnitude to: `"output"` (the paper's code and PEFT: one per output unit, the
 * norm of each column of an `[in, out]` weight) or `"input"` (Raschka's `LinearWithDoRAMerged`: one per
 * input unit, the norm of each row).
 */
export type NormAxis = "output" | "input";

/** Options for a DoRA adapter: LoRA's, plus which norm and whether it is a constant of the backward pass. */
export interface DoRAOptions extends LoRAOptions {
  /** Norm per output unit (default, as the paper and PEFT) or per input unit (Raschka's merged class). */
  normAxis?: NormAxis;
  /**
   * Treat `‖W + s·A·B‖` as a constant when differentiating (default `true`: the paper's §4.3, PEFT's
   * `.detach()`); `false` differentiates through it, as Raschka's class does.
   */
  detachNorm?: boolean;
}

/**
 * A LoRA update with DoRA's magnitude vector `m`: A and B set the direction of `W + s·A·B`, `m` its length
 * per unit. It holds A, B (as {@linkcode LoRALayer}, whose `apply` it keeps: the low-rank term
 * `s·x·A·B` alone) and `m`, but not the base layer, so the methods that need W take it as an argument:
 * {@linkcode DoRALayer.applyWithBase} (the DoRA output), {@linkcode DoRALayer.adaptedWeight} (`W′`),
 * {@linkcode DoRALayer.weightNorm} and {@linkcode DoRALayer.factor}.
 *
 * In parameter names `m` follows A and B: `lora.A`, `lora.B`, `lora.m`. PEFT calls it
 * `lora_magnitude_vector`, the name its adapter files use (see `saveAdapter`).
 *
 * `m` starts at `‖W + s·A·B‖` (which is `‖W‖` while B is zero), computed by the same function the forward
 * pass uses, so at the start the factor `m / ‖W + s·A·B‖` is exactly 1 and the layer's output is the base
 * layer's, bit for bit. With `init: "pissa"` the base weight first becomes PiSSA's residual (see
 * `pissaInit`), as PEFT runs DoRA's start after LoRA's. A unit whose weights are all zero has no direction;
 * DoRA would divide by zero there, so the constructor refuses such a layer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { DoRALayer } from "./dora.ts";
 * const linear = new Linear(6, 4, { seed: 1 });
 * const dora = new DoRALayer(linear, 2, 4);
 * assert.deepEqual(dora.m.shape, [4]); // one magnitude per output unit
 * const x = tf.ones([3, 6]);
 * assert.deepEqual(dora.applyWithBase(linear, x).arraySync(), linear.apply(x).arraySync()); // same output
 * linear.dispose();
 * dora.dispose();
 * ```
 */
export class DoRALayer extends LoRALayer {
  /** Which units have a magnitude: `"output"` (m is `[outDim]`) or `"input"` (m is `[inDim]`). */
  readonly normAxis: NormAxis;
  /** Whether `‖W + s·A·B‖` is a constant of the backward pass. */
  readonly detachNorm: boolean;
  /** The magnitude: one length per unit of {@linkcode DoRALayer.normAxis}. */
  m: tf.Variable<tf.Rank.R1>;

  /** A DoRA adapter of the given rank and alpha for `linear` (a {@linkcode Linear}), with `m = ‖W + s·A·B‖`. */
  constructor(linear: Module, rank: number, alpha: number, options: DoRAOptions = {}) {
    if (!isBaseLayer(linear)) requireLinear("DoRALayer", linear); // throws, naming what it got
    const base = linear as BaseLayer;
    const normAxis = options.normAxis ?? "output";
    if (normAxis !== "output" && normAxis !== "input") {
      throw new RangeError(`DoRA normAxis must be "output" or "input"; got "${normAxis}".`);
    }
    const pissa = options.init === "pissa";
    super(base.inFeatures, base.outFeatures, rank, alpha, { ...options, init: pissa ? "tutorial" : options.init });
    this.normAxis = normAxis;
    this.detachNorm = options.detachNorm ?? true;
    try {
      // B is zero here, so this is ‖W‖; a zero unit stays zero under PiSSA too.
      const zero = tf.tidy(() => this.weightNorm(base.denseWeight()).arraySync())
        .flatMap((n, i) => (n === 0 ? [i] : []));
      if (zero.length > 0) {
        throw new RangeError(
          `DoRA: ${normAxis} unit(s) ${zero.slice(0, 5).join(", ")}${zero.length > 5 ? ", …" : ""} of this ` +
            `${base.inFeatures}→${base.outFeatures} layer have all-zero weights, so their direction W/‖W‖ is undefined.`,
        );
      }
      if (pissa) pissaInit(base, this);
      this.m = tf.tidy(() => tf.variable(this.weightNorm(base.denseWeight())));
    } catch (error) {
      super.dispose();
      throw error;
    }
  }

  /**
   * `‖W + s·A·B‖` for `weight` W: the norm of each column (`normAxis` `"output"`, shape `[outDim]`) or of each
   * row (`"input"`, `[inDim]`). With `detachNorm` it is computed inside a custom-gradient op that declares
   * its gradient with respect to A and B to be zero: the value follows A and B, the backward pass treats it
   * as a constant, as PyTorch's `.detach()` would (TensorFlow.js has no `stop_gradient`).
   */
  weightNorm(weight: tf.Tensor2D): tf.Tensor1D {
    if (!this.detachNorm) return tf.tidy(() => unitNorm(tf.add(weight, this.deltaWeight()), this.normAxis));
    const norm = customGrad2((a: tf.Tensor2D, b: tf.Tensor2D) => ({
      // The same products as deltaWeight(), so the two paths give the same bits.
      value: unitNorm(tf.add(weight, tf.mul(tf.matMul(a, b), this.scaling)), this.normAxis),
      gradFunc: () => [tf.zerosLike(a), tf.zerosLike(b)],
    }));
    return norm(this.A, this.B);
  }

  /** `m / ‖W + s·A·B‖`: what each unit of `W + s·A·B` is multiplied by; 1 everywhere at the start. */
  factor(weight: tf.Tensor2D): tf.Tensor1D {
    return tf.tidy(() => tf.div(this.m, this.weightNorm(weight)));
  }

  /** `W′ = m · (W + s·A·B) / ‖W + s·A·B‖`: the weight this adapter turns `weight` into (what merging stores). */
  adaptedWeight(weight: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => this.scaleUnits(tf.add(weight, this.deltaWeight()), this.factor(weight)));
  }

  /**
   * `matrix` with each unit (column for `"output"`, row for `"input"`) multiplied by the matching entry of
   * `factor`.
   */
  scaleUnits(matrix: tf.Tensor2D, factor: tf.Tensor1D): tf.Tensor2D {
    return tf.tidy(() => tf.mul(matrix, this.normAxis === "output" ? factor : tf.expandDims(factor, 1)));
  }

  /**
   * DoRA's output for `linear` on `x`, `x·W′ + b`, computed without forming `W′`, as PEFT does: with the
   * factor `c = m / ‖W + s·A·B‖`, it is `c ⊙ (x·W + s·x·A·B) + b` for a norm per output unit, and
   * `(x ⊙ c)·W + s·(x ⊙ c)·A·B + b` per input unit.
   */
  applyWithBase<T extends tf.Tensor>(linear: BaseLayer, x: T): T {
    checkInput(linear, x, linear.inFeatures);
    return tf.tidy(() => {
      const weight = linear.denseWeight(); // the variable itself for a Linear
      const c = this.factor(weight);
      let y: tf.Tensor;
      if (this.normAxis === "output") {
        y = tf.mul(tf.add(matMul(x, weight), this.apply(x)), c);
      } else {
        const xc = tf.mul(x, c);
        y = tf.add(matMul(xc, weight), this.apply(xc));
      }
      return (linear.bias === null ? y : tf.add(y, linear.bias)) as T;
    });
  }

  /** LoRA's details, plus the magnitude's shape and the norm's settings. */
  override extraRepr(): string {
    const size = this.normAxis === "output" ? this.outDim : this.inDim;
    return `${super.extraRepr()}, magnitude=[${size}], norm=${this.normAxis}, detach_norm=${this.detachNorm}`;
  }
}

/**
 * A `Linear` layer adapted by DoRA, computed as PEFT's forward pass does: `c ⊙ (x·W + s·x·A·B) + b` with
 * `c = m / ‖W + s·A·B‖`, which equals `x·W′ + b` without forming `W′` (see
 * {@linkcode DoRALayer.applyWithBase}). The base weights stay frozen and untouched.
 *
 * Raschka's `LinearWithDoRA` (in "Improving LoRA: implementing DoRA from scratch") computes something else
 * under this name: `linear(x) + m ⊙ lora(x) / ‖lora(x)‖`, the LoRA output of each sample scaled to unit
 * length and then by a learned vector. That normalises activations, not the weight, so it is not the
 * paper's decomposition (and it divides by zero-plus-epsilon while B is zero); it is not offered here.
 * His `LinearWithDoRAMerged` is the weight decomposition, with the norm per input unit:
 * `normAxis: "input", detachNorm: false`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LinearWithDoRA } from "./dora.ts";
 * const layer = new LinearWithDoRA(new Linear(784, 128), 4, 8);
 * assert.deepEqual(layer.apply(tf.zeros([2, 784])).shape, [2, 128]);
 * assert.deepEqual(
 *   layer.namedParameters().map((p) => p.name),
 *   ["linear.weight", "linear.bias", "lora.A", "lora.B", "lora.m"],
 * );
 * layer.dispose();
 * ```
 */
export class LinearWithDoRA extends Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** The low-rank direction update and the magnitude. */
  lora: DoRALayer;

  /** Wraps `linear` (which must be a {@linkcode Linear}) with a DoRA adapter of the given rank and alpha. */
  constructor(linear: Module, rank: number, alpha: number, options: DoRAOptions = {}) {
    super();
    this.linear = requireLinear("LinearWithDoRA", linear);
    this.lora = new DoRALayer(this.linear, rank, alpha, options);
  }

  /** `x·W′ + b`, as `c ⊙ (x·W + s·x·A·B) + b`. */
  apply<T extends tf.Tensor>(x: T): T {
    return this.lora.applyWithBase(this.linear, x);
  }
}

/**
 * The same model as {@linkcode LinearWithDoRA}, computed from the weight: `x·W′ + b` with
 * `W′ = m · (W + s·A·B) / ‖W + s·A·B‖` built on every call, the weight a deployment would store. Both
 * classes give the same output up to float32 rounding. With `{ normAxis: "input", detachNorm: false }` this
 * is Raschka's `LinearWithDoRAMerged`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LinearWithDoRAMerged } from "./dora.ts";
 * const linear = new Linear(10, 3);
 * const layer = new LinearWithDoRAMerged(linear, 2, 4, { normAxis: "input", detachNorm: false });
 * assert.deepEqual(layer.lora.m.shape, [10]); // one magnitude per input unit
 * const x = tf.ones([1, 10]);
 * const gap = tf.max(tf.abs(tf.sub(layer.apply(x), linear.apply(x)))).dataSync()[0];
 * assert.ok(gap < 1e-5); // m·W/‖W‖ = W while B is zero
 * layer.dispose();
 * ```
 */
export class LinearWithDoRAMerged extends Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** The low-rank direction update and the magnitude. */
  lora: DoRALayer;

  /** Wraps `linear` (which must be a {@linkcode Linear}) with a DoRA adapter of the given rank and alpha. */
  constructor(linear: Module, rank: number, alpha: number, options: DoRAOptions = {}) {
    super();
    this.linear = requireLinear("LinearWithDoRAMerged", linear);
    this.lora = new DoRALayer(this.linear, rank, alpha, options);
  }

  /** `x·W′ + b`. */
  apply<T extends tf.Tensor>(x: T): T {
    checkInput(this.linear, x, this.linear.inFeatures);
    return tf.tidy(() => {
      const y = matMul(x, this.lora.adaptedWeight(this.linear.weight));
      return (this.linear.bias === null ? y : tf.add(y, this.linear.bias)) as T;
    });
  }
}

/** How far a weight's magnitudes and directions moved from a starting weight: the paper's ΔM and ΔD. */
export interface MagnitudeDirectionChange {
  /** Mean over units of `|‖W_t‖ − ‖W₀‖|` (the paper's eq. 3). */
  deltaM: number;
  /** Mean over units of `1 − cos(W_t, W₀)` (eq. 4). */
  deltaD: number;
}

/**
 * The DoRA paper's measure of a finetuning update (§3.2, eqs. 3–4, its Figure 2): with each weight written
 * as magnitudes times unit directions per output unit (columns of an `[in, out]` weight), ΔM is the mean
 * absolute change of the magnitudes and ΔD the mean cosine distance between the directions of `weight`
 * and `start`. `weight` is whatever the layer computes with: the finetuned W, `W + s·A·B` for LoRA, `W′` for
 * DoRA. Computed in float64 from the float32 values.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { magnitudeDirectionChange } from "./dora.ts";
 * const w0 = tf.tensor2d([[1, 0], [0, 1]]);
 * assert.deepEqual(magnitudeDirectionChange(w0, tf.tensor2d([[2, 0], [0, 1]])), { deltaM: 0.5, deltaD: 0 });
 * assert.equal(magnitudeDirectionChange(w0, tf.tensor2d([[0, 0], [1, 1]])).deltaD, 0.5); // one column turned 90°
 * ```
 */
export function magnitudeDirectionChange(start: tf.Tensor2D, weight: tf.Tensor2D): MagnitudeDirectionChange {
  if (start.rank !== 2 || !tf.util.arraysEqual(start.shape, weight.shape)) {
    throw new RangeError(
      `magnitudeDirectionChange: expected two weights of the same [in, out] shape; got [${start.shape}] and ` +
        `[${weight.shape}].`,
    );
  }
  const [rows, cols] = start.shape;
  const [w0, w] = [start.dataSync(), weight.dataSync()];
  let deltaM = 0, deltaD = 0;
  for (let j = 0; j < cols; j++) {
    let n0 = 0, n = 0, dot = 0;
    for (let i = 0; i < rows; i++) {
      const [a, b] = [w0[i * cols + j], w[i * cols + j]];
      n0 += a * a;
      n += b * b;
      dot += a * b;
    }
    deltaM += Math.abs(Math.sqrt(n) - Math.sqrt(n0));
    deltaD += 1 - dot / Math.sqrt(n * n0);
  }
  return { deltaM: deltaM / cols, deltaD: deltaD / cols };
}

/** The Euclidean norm of each column (`"output"`) or row (`"input"`) of an `[in, out]` matrix. */
function unitNorm(v: tf.Tensor2D, axis: NormAxis): tf.Tensor1D {
  return tf.sqrt(tf.sum(tf.square(v), axis === "output" ? 0 : 1));
}

// tf.customGrad is typed for any arity; this view states the one used here: two matrices to a vector.
const customGrad2 = tf.customGrad as unknown as (
  f: (a: tf.Tensor2D, b: tf.Tensor2D) => { value: tf.Tensor1D; gradFunc: () => tf.Tensor[] },
) => (a: tf.Tensor2D, b: tf.Tensor2D) => tf.Tensor1D;
