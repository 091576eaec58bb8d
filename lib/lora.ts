/**
 * The tutorial's three classes: `LoRALayer` (the low-rank update `scaling · x·A·B`), `LinearWithLoRA` (a
 * frozen `Linear` plus that update, `x·W + x·ΔW`) and `LinearWithLoRAMerged` (the same model computed as
 * `x·(W + ΔW)`), with the scaling conventions.
 *
 * A is `[in, rank]` and B is `[rank, out]`, so `x·A·B` reads as the math does. Several named adapters on one
 * layer, in-place merging and mixed batches are PEFT's machinery and live in `peft/layer.ts`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { checkDim, Linear, nextSeed } from "./layers.ts";
import { Module } from "./module.ts";
import { matMul } from "./ops.ts";
import { tfSeed } from "./tfjs_internals.ts";

/** How the LoRA output is scaled; see {@linkcode loraScaling}. */
export type ScalingConvention = "tutorial" | "paper" | "rslora";

/**
 * The factor LoRA multiplies `x·A·B` by.
 *
 * - `"tutorial"` (the default here, as in the tutorial): `alpha`.
 * - `"paper"`: `alpha / rank`, as in the LoRA paper, Microsoft's loralib and Hugging Face PEFT. The paper
 *   chose it hoping that a tuned alpha would carry over between ranks.
 * - `"rslora"`: `alpha / sqrt(rank)`, rank-stabilised LoRA (Kalajdzievski, 2023; PEFT's `use_rslora`). Its
 *   argument: with A's entries drawn with a variance that does not depend on the rank (as PEFT draws them),
 *   this keeps the size of the update, and so the learning speed, about the same at every rank.
 *
 * Which one trains best at which rank depends on how A starts and on the optimizer; notebook 3 measures it.
 *
 * @example
 * ```ts
 * import { loraScaling } from "./lora.ts";
 * console.log(loraScaling(8, 4)); // 8
 * console.log(loraScaling(8, 4, "paper")); // 2
 * console.log(loraScaling(8, 4, "rslora")); // 4
 * ```
 */
export function loraScaling(alpha: number, rank: number, convention: ScalingConvention = "tutorial"): number {
  switch (convention) {
    case "tutorial":
      return alpha;
    case "paper":
      return alpha / rank;
    case "rslora":
      return alpha / Math.sqrt(rank);
    default:
      throw new RangeError(
        `Unknown LoRA scaling convention "${convention}": expected "tutorial", "paper" or "rslora".`,
      );
  }
}

/** Options for new LoRA weights. */
export interface LoRAOptions {
  /** How `alpha` becomes the output scale; default `"tutorial"`. */
  scaling?: ScalingConvention;
  /** Seed for A's random start, for repeatable runs. */
  seed?: number;
}

/**
 * The low-rank update on its own: `scaling · x·A·B`.
 *
 * A (`[inDim, rank]`) starts random with standard deviation `1/sqrt(rank)`; B (`[rank, outDim]`) starts at
 * zero, so a new layer outputs exactly zero and a model it is added to is unchanged until training moves B.
 * (PEFT and loralib draw A from a Kaiming-uniform distribution instead, whose spread does not depend on the
 * rank; the zero B is what keeps the model unchanged either way. How A starts does change how fast each
 * scaling convention learns at a given rank: notebook 3 measures it.) `scaling` is `alpha` by the tutorial's
 * convention; see {@linkcode loraScaling} for the others.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { LoRALayer } from "./lora.ts";
 * const lora = new LoRALayer(10, 10, 2, 4);
 * console.log(lora.A.shape, lora.B.shape); // [10, 2] [2, 10]
 * lora.apply(tf.ones([1, 10])).print(); // all zeros: B starts at zero
 * lora.dispose();
 * ```
 */
export class LoRALayer extends Module {
  /** Input width. */
  readonly inDim: number;
  /** Output width. */
  readonly outDim: number;
  /** Inner dimension of A and B. */
  readonly rank: number;
  /** The hyperparameter alpha, as given. */
  readonly alpha: number;
  /** How {@linkcode LoRALayer.scaling} was derived from `alpha` and `rank`. */
  readonly convention: ScalingConvention;
  /** The factor applied to `x·A·B`. */
  readonly scaling: number;
  /** Down-projection, shape `[inDim, rank]`. */
  A: tf.Variable<tf.Rank.R2>;
  /** Up-projection, shape `[rank, outDim]`; zeros at the start. */
  B: tf.Variable<tf.Rank.R2>;

  /** A rank-`rank` update from `inDim` to `outDim` values; the rank must be 1 to min(inDim, outDim). */
  constructor(inDim: number, outDim: number, rank: number, alpha: number, options: LoRAOptions = {}) {
    super();
    checkDim("LoRALayer", "inDim", inDim);
    checkDim("LoRALayer", "outDim", outDim);
    checkRankAlpha(inDim, outDim, rank, alpha);
    this.inDim = inDim;
    this.outDim = outDim;
    this.rank = rank;
    this.alpha = alpha;
    this.convention = options.scaling ?? "tutorial";
    this.scaling = loraScaling(alpha, rank, this.convention);
    const std = 1 / Math.sqrt(rank);
    const seed = tfSeed(options.seed ?? nextSeed());
    this.A = tf.tidy(() => tf.variable(tf.randomNormal([inDim, rank], 0, std, "float32", seed)));
    this.B = tf.tidy(() => tf.variable(tf.zeros([rank, outDim])));
  }

  /** `scaling · x·A·B` over the last axis of `x`. */
  apply<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => {
      // (x·A)·B costs batch·rank·(in + out) multiplications and never forms the [in, out] matrix A·B; the
      // scale goes on the small [batch, rank] product.
      const xa = matMul(x, this.A);
      return matMul(this.scaling === 1 ? xa : tf.mul(xa, this.scaling), this.B);
    });
  }

  /** The update this layer adds to a weight: `scaling · A·B`, shape `[inDim, outDim]`. */
  deltaWeight(): tf.Tensor2D {
    return tf.tidy(() => tf.mul(matMul(this.A, this.B), this.scaling));
  }

  /** Shapes, rank, alpha and the resulting scaling. */
  override extraRepr(): string {
    const scaling = Number.isInteger(this.scaling) ? String(this.scaling) : this.scaling.toPrecision(4);
    return `in_dim=${this.inDim}, out_dim=${this.outDim}, rank=${this.rank}, alpha=${this.alpha}, scaling=${scaling}`;
  }
}

/**
 * A `Linear` layer plus a LoRA update computed alongside it: `linear(x) + lora(x)`, the right-hand side of
 * `x·(W + ΔW) = x·W + x·ΔW`. The base weights stay untouched, so one base can serve several updates.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LinearWithLoRA } from "./lora.ts";
 * const layer = new LinearWithLoRA(new Linear(784, 128), 4, 8);
 * console.log(layer.apply(tf.zeros([2, 784])).shape); // [2, 128]
 * console.log(layer.namedParameters().map((p) => p.name)); // ["linear.weight", "linear.bias", "lora.A", "lora.B"]
 * layer.dispose();
 * ```
 */
export class LinearWithLoRA extends Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** The low-rank update. */
  lora: LoRALayer;

  /** Wraps `linear` (which must be a {@linkcode Linear}) with an update of the given rank and alpha. */
  constructor(linear: Module, rank: number, alpha: number, options: LoRAOptions = {}) {
    super();
    this.linear = requireLinear("LinearWithLoRA", linear);
    this.lora = new LoRALayer(this.linear.inFeatures, this.linear.outFeatures, rank, alpha, options);
  }

  /** `x·W + b + scaling · x·A·B`. */
  apply<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => tf.add(this.linear.apply(x), this.lora.apply(x)));
  }
}

/**
 * The same model as {@linkcode LinearWithLoRA}, computed from the left-hand side of the distributive law:
 * `x·(W + scaling·A·B) + b`. Both give the same output up to float32 rounding. This form builds the full
 * `[in, out]` matrix on every call (and its gradient when training), so it trains more slowly; it shows the
 * merged weight a deployment would store.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LinearWithLoRAMerged } from "./lora.ts";
 * const layer = new LinearWithLoRAMerged(new Linear(10, 3), 2, 4);
 * layer.apply(tf.ones([1, 10])).print();
 * layer.dispose();
 * ```
 */
export class LinearWithLoRAMerged extends Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** The low-rank update. */
  lora: LoRALayer;

  /** Wraps `linear` (which must be a {@linkcode Linear}) with an update of the given rank and alpha. */
  constructor(linear: Module, rank: number, alpha: number, options: LoRAOptions = {}) {
    super();
    this.linear = requireLinear("LinearWithLoRAMerged", linear);
    this.lora = new LoRALayer(this.linear.inFeatures, this.linear.outFeatures, rank, alpha, options);
  }

  /** `x·(W + scaling·A·B) + b`. */
  apply<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => {
      const combined = tf.add(this.linear.weight, this.lora.deltaWeight()) as tf.Tensor2D; // W + scaling·A·B
      const y = matMul(x, combined);
      return this.linear.bias === null ? y : tf.add(y, this.linear.bias);
    });
  }
}

/** Returns `layer` as a {@linkcode Linear}, or throws a `TypeError` saying that `owner` wraps one. */
export function requireLinear(owner: string, layer: Module): Linear {
  if (!(layer instanceof Linear)) {
    const got = layer === null || typeof layer !== "object" ? String(layer) : layer.constructor.name;
    throw new TypeError(`${owner} wraps a Linear layer; got ${got}.`);
  }
  return layer;
}

/** Throws a `RangeError` unless `rank` fits an `inDim × outDim` layer and `alpha` is a finite number. */
export function checkRankAlpha(inDim: number, outDim: number, rank: number, alpha: number): void {
  const most = Math.min(inDim, outDim);
  if (!Number.isInteger(rank) || rank <= 0 || rank > most) {
    throw new RangeError(
      `LoRA rank must be an integer from 1 to min(in, out) = ${most} for a ${inDim}×${outDim} layer; got ${rank}.`,
    );
  }
  if (typeof alpha !== "number" || !Number.isFinite(alpha)) {
    throw new RangeError(`LoRA alpha must be a finite number; got ${alpha}.`);
  }
}
