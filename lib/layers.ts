/**
 * The base layers: `Linear` and `ReLU`, and the tutorial's `freezeLinearLayers`.
 *
 * Shapes follow the math `y = x·W + b`: a weight is stored as `[in, out]` (PyTorch stores the transpose,
 * `[out, in]`), and a layer acts on the last axis of its input, so `x` may be `[batch, in]` or
 * `[batch, time, in]`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { freezeBase, Module } from "./module.ts";
import { linear } from "./ops.ts";
import { tfSeed } from "./tfjs_internals.ts";

/** Options for a new {@linkcode Linear} layer. */
export interface LinearOptions {
  /** Whether the layer adds a bias; default `true`. */
  bias?: boolean;
  /** Seed for the random start, for repeatable runs. */
  seed?: number;
  /**
   * Whether the checkpoint this layer comes from stores its weight `[in, out]`, as Hugging Face's `Conv1D`
   * (GPT-2) does, rather than PyTorch's `[out, in]`; PEFT calls this `fan_in_fan_out`. It changes nothing in
   * the computation, only how weights and adapter configs are written. Default `false`.
   */
  fanInFanOut?: boolean;
}

/**
 * What an adapter needs of the linear layer under it: its widths, its output, its bias, and its weight to read
 * and to replace. {@linkcode Linear} is one (its weight is a `tf.Variable`); `QuantizedLinear` (in `quant.ts`) is
 * the other, a frozen layer whose weight is stored in 4 or 8 bits: reading dequantizes, replacing re-quantizes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isBaseLayer, Linear, ReLU } from "./layers.ts";
 * const linear = new Linear(4, 3);
 * assert.deepEqual([isBaseLayer(linear), isBaseLayer(new ReLU())], [true, false]);
 * assert.equal(linear.lossyWrites, false);
 * linear.dispose();
 * ```
 */
export interface BaseLayer extends Module {
  /** Input width. */
  readonly inFeatures: number;
  /** Output width. */
  readonly outFeatures: number;
  /** Bias `[outFeatures]`, or `null`. */
  readonly bias: tf.Tensor1D | null;
  /** Whether the checkpoint stores the weight `[in, out]` (see {@linkcode LinearOptions.fanInFanOut}). */
  readonly fanInFanOut: boolean;
  /** The float32 weight variable; a quantized layer has none and throws, pointing to `denseWeight`. */
  readonly weight: tf.Variable<tf.Rank.R2>;
  /** Whether {@linkcode BaseLayer.writeWeight} rounds what it is given (a quantized layer), so it cannot be undone exactly. */
  readonly lossyWrites: boolean;
  /** `x·W + b` over the last axis. */
  apply<T extends tf.Tensor>(x: T): T;
  /**
   * The weight `[in, out]` the layer computes with: `Linear`'s variable itself, or a quantized layer's dequantized
   * copy. Call it inside `tf.tidy`, which frees the copy and never the variable.
   */
  denseWeight(): tf.Tensor2D;
  /** Replaces the weight by `weight` `[in, out]`: `Linear` assigns it; a quantized layer re-quantizes it. */
  writeWeight(weight: tf.Tensor2D): void;
}

/**
 * Whether `module` is a {@linkcode BaseLayer}: a layer adapters can be put on.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isBaseLayer, Linear } from "./layers.ts";
 * const linear = new Linear(2, 2);
 * assert.ok(isBaseLayer(linear));
 * linear.dispose();
 * ```
 */
export function isBaseLayer(module: unknown): module is BaseLayer {
  const m = module as Partial<BaseLayer> | null;
  return m instanceof Module && typeof m.denseWeight === "function" && typeof m.writeWeight === "function" &&
    Number.isInteger(m.inFeatures) && Number.isInteger(m.outFeatures);
}

/**
 * A fully connected layer `y = x·W + b`, initialised as PyTorch's `nn.Linear`: W and b uniform in
 * `±1/sqrt(inFeatures)`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * const layer = new Linear(784, 128, { seed: 1 });
 * const y = layer.apply(tf.zeros([64, 784]));
 * assert.deepEqual(y.shape, [64, 128]);
 * assert.equal(String(layer), "Linear(in_features=784, out_features=128, bias=true)");
 * y.dispose();
 * layer.dispose();
 * ```
 */
export class Linear extends Module implements BaseLayer {
  /** Input width. */
  readonly inFeatures: number;
  /** Output width. */
  readonly outFeatures: number;
  /** Weight, shape `[inFeatures, outFeatures]`. */
  weight: tf.Variable<tf.Rank.R2>;
  /** Bias, shape `[outFeatures]`, or `null` for a layer without one. */
  bias: tf.Variable<tf.Rank.R1> | null;
  /** Whether the checkpoint stores the weight `[in, out]` (see {@linkcode LinearOptions.fanInFanOut}). */
  readonly fanInFanOut: boolean;

  /** A layer from `inFeatures` to `outFeatures` values, initialised at random (seeded by `options.seed`). */
  constructor(inFeatures: number, outFeatures: number, options: LinearOptions = {}) {
    super();
    checkDim("Linear", "inFeatures", inFeatures);
    checkDim("Linear", "outFeatures", outFeatures);
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.fanInFanOut = options.fanInFanOut ?? false;
    const bound = 1 / Math.sqrt(inFeatures);
    const seed = options.seed ?? nextSeed();
    // tidy frees the initial values; the variables themselves outlive it.
    this.weight = tf.tidy(() =>
      tf.variable(tf.randomUniform([inFeatures, outFeatures], -bound, bound, "float32", tfSeed(seed)))
    );
    this.bias = options.bias === false
      ? null
      : tf.tidy(() => tf.variable(tf.randomUniform([outFeatures], -bound, bound, "float32", tfSeed(seed + 1))));
  }

  /** `x·W + b` over the last axis of `x`. */
  apply<T extends tf.Tensor>(x: T): T {
    checkInput(this, x, this.inFeatures);
    return linear(x, this.weight, this.bias);
  }

  /** `false`: assigning a float32 weight is exact. */
  get lossyWrites(): boolean {
    return false;
  }

  /** The weight variable itself (see {@linkcode BaseLayer.denseWeight}). */
  denseWeight(): tf.Tensor2D {
    return this.weight;
  }

  /** Assigns `weight` to the weight variable. */
  writeWeight(weight: tf.Tensor2D): void {
    this.weight.assign(weight);
  }

  /** Widths and bias, as PyTorch prints them. */
  override extraRepr(): string {
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${this.bias !== null}`;
  }
}

/**
 * The activation `max(0, x)`; it has no parameters.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { ReLU } from "./layers.ts";
 * assert.deepEqual(new ReLU().apply(tf.tensor2d([[-1, 2]])).arraySync(), [[0, 2]]);
 * ```
 */
export class ReLU extends Module {
  /** `max(0, x)`, element by element. */
  apply<T extends tf.Tensor>(x: T): T {
    return tf.relu(x);
  }
}

/**
 * Freezes (marks not trainable) every parameter of the model except its adapters' (LoRA's A and B), the
 * tutorial's `freeze_linear_layers`. The tutorial's model is made of linear layers only, so that is every
 * `Linear`; in a model with other layers (a GPT's embeddings and LayerNorms) it is every parameter outside
 * the adapters, the same rule as `addLoRA` and PEFT (see `freezeBase`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { freezeLinearLayers } from "./layers.ts";
 * import { LinearWithLoRA } from "./lora.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { namedParameters } from "./module.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * model.layers[0] = new LinearWithLoRA(model.layers[0], 1, 2);
 * freezeLinearLayers(model);
 * const trainable = namedParameters(model).filter((p) => p.variable.trainable).map((p) => p.name);
 * assert.deepEqual(trainable, ["layers.0.lora.A", "layers.0.lora.B"]);
 * model.dispose();
 * ```
 */
export function freezeLinearLayers(model: Module): void {
  freezeBase(model);
}

let unseeded = 1;
/** A fresh seed for callers that gave none, so that two layers never start identical. */
export function nextSeed(): number {
  return Math.floor(Math.random() * 2 ** 31) + unseeded++;
}

/** Throws a `RangeError` naming `owner` and `what` unless `value` is a positive integer. */
export function checkDim(owner: string, what: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw new RangeError(`${owner}: ${what} must be a positive integer; got ${value}.`);
  }
}

/** Throws a `RangeError` unless `x` has at least two axes and its last one is `width` wide. */
export function checkInput(layer: Module, x: tf.Tensor, width: number): void {
  if (x.rank < 2 || x.shape[x.rank - 1] !== width) {
    throw new RangeError(
      `${layer.constructor.name} expects input of shape [batch, ${width}] or [..., ${width}]; ` +
        `got [${x.shape.join(", ")}].`,
    );
  }
}
