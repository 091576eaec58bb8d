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
import { type BaseLayer, checkDim, isBaseLayer, Linear, nextSeed } from "./layers.ts";
import { svd, toMatrix } from "./linalg.ts";
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
 * import assert from "node:assert/strict";
 * import { loraScaling } from "./lora.ts";
 * assert.equal(loraScaling(8, 4), 8);
 * assert.equal(loraScaling(8, 4, "paper"), 2);
 * assert.equal(loraScaling(8, 4, "rslora"), 4);
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

/**
 * How A and B start (PEFT's `init_lora_weights`); see {@linkcode LoRALayer}.
 *
 * - `"tutorial"` (the default): A ~ N(0, 1/rank), i.e. standard deviation `1/sqrt(rank)`; B = 0.
 * - `"kaiming"`: PEFT's default (`init_lora_weights=True`): A uniform in `±1/sqrt(inDim)` (PyTorch's
 *   `kaiming_uniform_` with `a = sqrt(5)`); B = 0.
 * - `"gaussian"`: PEFT's `"gaussian"`: A ~ N(0, std = 1/rank) (the standard deviation is `1/rank`, not
 *   `1/sqrt(rank)`); B = 0.
 * - `"pissa"`: PiSSA (Meng et al., 2024): A and B from the top `rank` singular triplets of the base weight,
 *   which is replaced by the residual. It needs the base layer, so only {@linkcode pissaInit} and the
 *   wrappers that hold a base layer ({@linkcode createLoRALayer}, `LinearWithLoRA`, `LinearWithAdapters`,
 *   `addLoRA`) accept it.
 */
export type LoRAInit = "tutorial" | "kaiming" | "gaussian" | "pissa";

/** Options for new LoRA weights. */
export interface LoRAOptions {
  /** How `alpha` becomes the output scale; default `"tutorial"`. */
  scaling?: ScalingConvention;
  /** Seed for A's random start, for repeatable runs. */
  seed?: number;
  /** How A and B start; default `"tutorial"` (see {@linkcode LoRAInit}). */
  init?: LoRAInit;
}

/**
 * The low-rank update on its own: `scaling · x·A·B`.
 *
 * A (`[inDim, rank]`) starts random with standard deviation `1/sqrt(rank)`; B (`[rank, outDim]`) starts at
 * zero, so a new layer outputs exactly zero and a model it is added to is unchanged until training moves B.
 * (PEFT and loralib draw A from a Kaiming-uniform distribution instead, whose spread does not depend on the
 * rank: `init: "kaiming"`, or `"gaussian"` for PEFT's other random start; see {@linkcode LoRAInit}. The zero
 * B is what keeps the model unchanged either way. How A starts does change how fast each scaling convention
 * learns at a given rank: notebooks 3 and 10 measure it.) `scaling` is `alpha` by the tutorial's convention;
 * see {@linkcode loraScaling} for the others.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { LoRALayer } from "./lora.ts";
 * const lora = new LoRALayer(10, 10, 2, 4);
 * assert.deepEqual(lora.A.shape, [10, 2]);
 * assert.deepEqual(lora.B.shape, [2, 10]);
 * assert.ok(lora.apply(tf.ones([1, 10])).dataSync().every((v) => v === 0)); // all zeros: B starts at zero
 * const peft = new LoRALayer(10, 10, 2, 4, { init: "kaiming", seed: 1 });
 * assert.ok(peft.A.abs().max().dataSync()[0] <= 1 / Math.sqrt(10));
 * lora.dispose();
 * peft.dispose();
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
  /** How A and B started; {@linkcode pissaInit} sets it to `"pissa"`. */
  init: LoRAInit;
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
    if (!Number.isFinite(Math.fround(this.scaling))) {
      throw new RangeError(
        `LoRA scaling ${this.scaling} (alpha ${alpha}, rank ${rank}, ${this.convention}) is not a finite float32 number.`,
      );
    }
    this.init = options.init ?? "tutorial";
    const seed = tfSeed(options.seed ?? nextSeed());
    this.A = tf.tidy(() => tf.variable(randomA(this.init, inDim, rank, seed)));
    this.B = tf.tidy(() => tf.variable(tf.zeros([rank, outDim])));
  }

  /** A LoRA layer is an adapter: freezing the base model leaves A and B alone. */
  override get isAdapter(): boolean {
    return true;
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
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LinearWithLoRA } from "./lora.ts";
 * const layer = new LinearWithLoRA(new Linear(784, 128), 4, 8);
 * assert.deepEqual(layer.apply(tf.zeros([2, 784])).shape, [2, 128]);
 * assert.deepEqual(layer.namedParameters().map((p) => p.name), ["linear.weight", "linear.bias", "lora.A", "lora.B"]);
 * layer.dispose();
 * ```
 */
export class LinearWithLoRA extends Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** The low-rank update. */
  lora: LoRALayer;

  /**
   * Wraps `linear` (which must be a {@linkcode Linear}) with an update of the given rank and alpha. With
   * `init: "pissa"` the base weight becomes the residual (see {@linkcode pissaInit}).
   */
  constructor(linear: Module, rank: number, alpha: number, options: LoRAOptions = {}) {
    super();
    this.linear = requireLinear("LinearWithLoRA", linear);
    this.lora = createLoRALayer(this.linear, rank, alpha, options);
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
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LinearWithLoRAMerged } from "./lora.ts";
 * const linear = new Linear(10, 3);
 * const layer = new LinearWithLoRAMerged(linear, 2, 4);
 * const x = tf.ones([1, 10]);
 * assert.deepEqual(layer.apply(x).arraySync(), linear.apply(x).arraySync()); // B starts at zero
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
    this.lora = createLoRALayer(this.linear, rank, alpha, options);
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

/**
 * A {@linkcode LoRALayer} sized for `linear` and started as `options.init` says: the wrappers' way to make
 * their update, since PiSSA (`init: "pissa"`) needs the base layer and rewrites its weight (see
 * {@linkcode pissaInit}). Every other start leaves `linear` untouched.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Linear } from "./layers.ts";
 * import { createLoRALayer } from "./lora.ts";
 * const linear = new Linear(8, 6, { seed: 1 });
 * const lora = createLoRALayer(linear, 2, 2, { init: "pissa" });
 * assert.equal(lora.init, "pissa");
 * assert.ok(lora.B.abs().sum().dataSync()[0] > 0);
 * linear.dispose();
 * lora.dispose();
 * ```
 */
export function createLoRALayer(linear: Module, rank: number, alpha: number, options: LoRAOptions = {}): LoRALayer {
  const pissa = options.init === "pissa";
  if (!isBaseLayer(linear) || pissa) requireLinear("createLoRALayer", linear); // PiSSA rewrites a float32 weight
  const base = linear as BaseLayer;
  const lora = new LoRALayer(base.inFeatures, base.outFeatures, rank, alpha, {
    ...options,
    init: pissa ? "tutorial" : options.init, // a placeholder that pissaInit overwrites
  });
  if (pissa) {
    try {
      pissaInit(linear, lora);
    } catch (error) {
      lora.dispose();
      throw error;
    }
  }
  return lora;
}

/**
 * PiSSA's start (Meng et al., 2024, "Principal Singular values and Singular vectors Adaptation"; PEFT's
 * `init_lora_weights="pissa"`): A and B take the top `rank` singular triplets of `linear`'s weight, and the
 * weight is replaced by the residual `W − scaling·A·B`, so the layer computes what it computed before while
 * the trainable part starts on the weight's principal directions instead of at zero.
 *
 * With `W = U·diag(σ)·Vᵀ` (the float64 Jacobi {@linkcode svd}), A = `U_r·diag(sqrt(σ_r/|s|))` and
 * B = `sign(s)·diag(sqrt(σ_r/|s|))·V_rᵀ`, so `s·A·B` is the best rank-r part of W whatever the scaling `s`.
 * (PEFT divides σ by s and takes its square root, which needs s > 0; the sign here makes a negative scaling
 * work too. A zero scaling is an error.) As in PEFT, the residual is computed in float32 from the float32 A
 * and B actually stored, so `residual + s·A·B` gives back W up to one float32 rounding of each of the
 * subtraction and the addition: `|error| ≤ 2⁻²³·(|W| + |s·A·B|)` element by element.
 *
 * `linear.weight` is changed in place (as PEFT does): every other adapter on that layer would then see the
 * residual, so the PEFT layer here accepts PiSSA only as a layer's first adapter. `lora.init` becomes
 * `"pissa"`, which saved adapter files record (see `saveAdapter`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { LoRALayer, pissaInit } from "./lora.ts";
 * const linear = new Linear(6, 4, { seed: 1 });
 * const x = tf.ones([1, 6]);
 * const before = linear.apply(x);
 * const lora = new LoRALayer(6, 4, 2, 2);
 * pissaInit(linear, lora);
 * const after = tf.add(linear.apply(x), lora.apply(x)); // residual + principal part
 * assert.ok(tf.max(tf.abs(tf.sub(after, before))).dataSync()[0] < 1e-6);
 * linear.dispose();
 * lora.dispose();
 * ```
 */
export function pissaInit(linear: Module, lora: LoRALayer): void {
  const base = requireLinear("pissaInit", linear);
  if (lora.inDim !== base.inFeatures || lora.outDim !== base.outFeatures) {
    throw new RangeError(
      `pissaInit: a ${lora.inDim}→${lora.outDim} LoRA update cannot start from a ` +
        `${base.inFeatures}→${base.outFeatures} linear layer.`,
    );
  }
  if (lora.scaling === 0 || !Number.isFinite(lora.scaling)) {
    throw new RangeError(`pissaInit: PiSSA divides the singular values by the scaling; got scaling ${lora.scaling}.`);
  }
  const { u, s, v } = svd(toMatrix(base.weight)); // W [in, out] = U·diag(s)·Vᵀ, U [in, k], V [out, k]
  const r = lora.rank; // at most min(in, out) = k, as LoRALayer checked
  const root = s.slice(0, r).map((sigma) => Math.sqrt(sigma / Math.abs(lora.scaling)));
  const sign = Math.sign(lora.scaling);
  const a = u.map((row) => root.map((rt, k) => row[k] * rt));
  const b = root.map((rt, k) => v.map((row) => sign * rt * row[k]));
  tf.tidy(() => {
    lora.A.assign(tf.tensor2d(a, [lora.inDim, r]));
    lora.B.assign(tf.tensor2d(b, [r, lora.outDim]));
    base.weight.assign(tf.sub(base.weight, lora.deltaWeight()));
  });
  lora.init = "pissa";
}

/** A's random start for `init` (B always starts at zero). */
function randomA(init: LoRAInit, inDim: number, rank: number, seed: number): tf.Tensor2D {
  switch (init) {
    case "tutorial":
      return tf.randomNormal([inDim, rank], 0, 1 / Math.sqrt(rank), "float32", seed);
    case "kaiming": {
      // PyTorch's kaiming_uniform_(a=sqrt(5)) on lora_A [rank, in]: fan_in = in, gain sqrt(1/3), bound 1/sqrt(in).
      const bound = 1 / Math.sqrt(inDim);
      return tf.randomUniform([inDim, rank], -bound, bound, "float32", seed);
    }
    case "gaussian":
      return tf.randomNormal([inDim, rank], 0, 1 / rank, "float32", seed);
    case "pissa":
      throw new RangeError(
        'LoRALayer: init "pissa" starts A and B from the base weight, which a LoRALayer does not hold; use ' +
          "createLoRALayer(linear, …), LinearWithLoRA, LinearWithAdapters or addLoRA, or call pissaInit(linear, lora).",
      );
    default:
      throw new RangeError(
        `Unknown LoRA init "${init}": expected "tutorial", "kaiming", "gaussian" or "pissa".`,
      );
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
