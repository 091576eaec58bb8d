/**
 * The layers of the tutorial: `Linear`, `ReLU`, `LoRALayer`, `LinearWithLoRA` and `LinearWithLoRAMerged`.
 *
 * Shapes follow the math `y = x·W + b` with `x` of shape `[batch, in]`: a weight is stored as `[in, out]`
 * (PyTorch stores the transpose, `[out, in]`), A as `[in, rank]` and B as `[rank, out]`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { matMul } from "./ops.ts";

/** A parameter with its dotted name, as PyTorch's `named_parameters()` lists it. */
export interface NamedParameter {
  /** Dotted path such as `layers.0.lora.A`. */
  name: string;
  /** The variable itself; `variable.trainable` plays the role of PyTorch's `requires_grad`. */
  variable: tf.Variable;
}

/**
 * What every layer and model here provides: a forward pass, its parameters by name, a printed structure,
 * a deep copy and disposal of its variables.
 *
 * @example
 * ```ts
 * import { Linear, type Module } from "./layers.ts";
 * const layer: Module = new Linear(3, 2);
 * console.log(layer.namedParameters().map((p) => p.name)); // ["weight", "bias"]
 * layer.dispose();
 * ```
 */
export interface Module {
  /**
   * Runs the layer on `x` of shape `[batch, in]`. `needsInputGrad` is `false` when `x` is raw data, so
   * the backward pass can skip the gradient with respect to `x` (PyTorch learns this from `requires_grad`).
   */
  apply(x: tf.Tensor2D, needsInputGrad?: boolean): tf.Tensor2D;
  /** The sub-layers, by the name they have in parameter names (`linear`, `lora`, `0`, …). */
  children(): [string, Module][];
  /** Every parameter of this layer and its children, with dotted names under `prefix`. */
  namedParameters(prefix?: string): NamedParameter[];
  /** A PyTorch-style description, as `print(module)` shows it. */
  toString(): string;
  /** A deep copy with new variables holding the same values and trainable flags. */
  clone(): Module;
  /** Frees the variables. */
  dispose(): void;
}

/** How the LoRA output is scaled; see {@linkcode loraScaling}. */
export type ScalingConvention = "tutorial" | "paper" | "rslora";

/**
 * The factor LoRA multiplies `x·A·B` by.
 *
 * - `"tutorial"` (the default here, as in the tutorial): `alpha`.
 * - `"paper"`: `alpha / rank`, as in the LoRA paper, Microsoft's loralib and Hugging Face PEFT. Changing the
 *   rank then changes the update's size less, so a tuned learning rate carries over between ranks.
 * - `"rslora"`: `alpha / sqrt(rank)`, rank-stabilised LoRA (Kalajdzievski, 2023; PEFT's `use_rslora`),
 *   which keeps learning stable at large ranks.
 *
 * @example
 * ```ts
 * import { loraScaling } from "./layers.ts";
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

/** Options for a new {@linkcode Linear} layer. */
export interface LinearOptions {
  /** Whether the layer adds a bias; default `true`. */
  bias?: boolean;
  /** Seed for the random start, for repeatable runs. */
  seed?: number;
}

let unseeded = 1;
/** A fresh seed for callers that gave none, so that two layers never start identical. */
function nextSeed(): number {
  return Math.floor(Math.random() * 2 ** 31) + unseeded++;
}

/**
 * A fully connected layer `y = x·W + b`, initialised as PyTorch's `nn.Linear`: W and b uniform in
 * `±1/sqrt(inFeatures)`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * const layer = new Linear(784, 128, { seed: 1 });
 * const y = layer.apply(tf.zeros([64, 784]));
 * console.log(y.shape); // [64, 128]
 * console.log(String(layer)); // Linear(in_features=784, out_features=128, bias=true)
 * y.dispose();
 * layer.dispose();
 * ```
 */
export class Linear implements Module {
  /** Input width. */
  readonly inFeatures: number;
  /** Output width. */
  readonly outFeatures: number;
  /** Weight, shape `[inFeatures, outFeatures]`. */
  weight: tf.Variable<tf.Rank.R2>;
  /** Bias, shape `[outFeatures]`, or `null` for a layer without one. */
  bias: tf.Variable<tf.Rank.R1> | null;

  constructor(inFeatures: number, outFeatures: number, options: LinearOptions = {}) {
    checkDim("Linear", "inFeatures", inFeatures);
    checkDim("Linear", "outFeatures", outFeatures);
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const bound = 1 / Math.sqrt(inFeatures);
    const seed = options.seed ?? nextSeed();
    // tidy frees the initial values; the variables themselves outlive it.
    this.weight = tf.tidy(() =>
      tf.variable(tf.randomUniform([inFeatures, outFeatures], -bound, bound, "float32", seed))
    );
    this.bias = options.bias === false
      ? null
      : tf.tidy(() => tf.variable(tf.randomUniform([outFeatures], -bound, bound, "float32", seed + 1)));
  }

  apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    checkInput(this, x, this.inFeatures);
    return tf.tidy(() => {
      const y = matMul(x, this.weight, needsInputGrad, this.weight.trainable);
      return this.bias === null ? y : tf.add(y, this.bias);
    });
  }

  children(): [string, Module][] {
    return [];
  }

  namedParameters(prefix = ""): NamedParameter[] {
    const out = [{ name: prefix + "weight", variable: this.weight as tf.Variable }];
    if (this.bias !== null) out.push({ name: prefix + "bias", variable: this.bias as tf.Variable });
    return out;
  }

  toString(): string {
    return `Linear(in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${this.bias !== null})`;
  }

  clone(): Linear {
    const copy = Object.create(Linear.prototype) as Linear;
    Object.assign(copy, {
      inFeatures: this.inFeatures,
      outFeatures: this.outFeatures,
      weight: copyVariable(this.weight),
      bias: this.bias === null ? null : copyVariable(this.bias),
    });
    return copy;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias?.dispose();
  }
}

/**
 * The activation `max(0, x)`; it has no parameters.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { ReLU } from "./layers.ts";
 * new ReLU().apply(tf.tensor2d([[-1, 2]])).print(); // [[0, 2]]
 * ```
 */
export class ReLU implements Module {
  apply(x: tf.Tensor2D): tf.Tensor2D {
    return tf.relu(x);
  }
  children(): [string, Module][] {
    return [];
  }
  namedParameters(): NamedParameter[] {
    return [];
  }
  toString(): string {
    return "ReLU()";
  }
  clone(): ReLU {
    return new ReLU();
  }
  dispose(): void {}
}

/**
 * The low-rank update on its own: `scaling · x·A·B`.
 *
 * A (`[inDim, rank]`) starts random with standard deviation `1/sqrt(rank)`; B (`[rank, outDim]`) starts at
 * zero, so a new layer outputs exactly zero and a model it is added to is unchanged until training moves B.
 * (PEFT and loralib draw A from a Kaiming-uniform distribution instead; either works, the zero B is what
 * matters.) `scaling` is `alpha` by the tutorial's convention; see {@linkcode loraScaling} for the others.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { LoRALayer } from "./layers.ts";
 * const lora = new LoRALayer(10, 10, 2, 4);
 * console.log(lora.A.shape, lora.B.shape); // [10, 2] [2, 10]
 * lora.apply(tf.ones([1, 10])).print(); // all zeros: B starts at zero
 * lora.dispose();
 * ```
 */
export class LoRALayer implements Module {
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

  constructor(inDim: number, outDim: number, rank: number, alpha: number, options: LoRAOptions = {}) {
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
    this.A = tf.tidy(() => tf.variable(tf.randomNormal([inDim, rank], 0, std, "float32", options.seed ?? nextSeed())));
    this.B = tf.tidy(() => tf.variable(tf.zeros([rank, outDim])));
  }

  apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    checkInput(this, x, this.inDim);
    return tf.tidy(() => {
      // Order matters for speed: (x·A)·B costs batch·rank·(in + out) multiplications and never forms the
      // [in, out] matrix A·B. The scale is applied to the small [batch, rank] product.
      const xa = matMul(x, this.A, needsInputGrad, this.A.trainable);
      const scaled = this.scaling === 1 ? xa : tf.mul(xa, this.scaling) as tf.Tensor2D;
      return matMul(scaled, this.B, needsInputGrad || this.A.trainable, this.B.trainable);
    });
  }

  /** The update this layer adds to a weight: `scaling · A·B`, shape `[inDim, outDim]`. */
  deltaWeight(): tf.Tensor2D {
    return tf.tidy(() => tf.mul(tf.matMul(this.A, this.B), this.scaling) as tf.Tensor2D);
  }

  children(): [string, Module][] {
    return [];
  }

  namedParameters(prefix = ""): NamedParameter[] {
    return [
      { name: prefix + "A", variable: this.A as tf.Variable },
      { name: prefix + "B", variable: this.B as tf.Variable },
    ];
  }

  toString(): string {
    return `LoRALayer(in_dim=${this.inDim}, out_dim=${this.outDim}, rank=${this.rank}, alpha=${this.alpha}, ` +
      `scaling=${formatNumber(this.scaling)})`;
  }

  clone(): LoRALayer {
    const copy = Object.create(LoRALayer.prototype) as LoRALayer;
    Object.assign(copy, { ...this, A: copyVariable(this.A), B: copyVariable(this.B) });
    return copy;
  }

  dispose(): void {
    this.A.dispose();
    this.B.dispose();
  }
}

/**
 * A `Linear` layer plus a LoRA update computed alongside it: `linear(x) + lora(x)`, the right-hand side of
 * `x·(W + ΔW) = x·W + x·ΔW`. The base weights stay untouched, so one base can serve several adapters.
 *
 * {@linkcode LinearWithLoRA.merge} folds the update into W for inference (one product instead of three);
 * {@linkcode LinearWithLoRA.unmerge} takes it out again, as loralib and PEFT do.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear, LinearWithLoRA } from "./layers.ts";
 * const layer = new LinearWithLoRA(new Linear(784, 128), 4, 8);
 * console.log(String(layer));
 * layer.apply(tf.zeros([2, 784])).dispose();
 * layer.dispose();
 * ```
 */
export class LinearWithLoRA implements Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** The low-rank update. */
  lora: LoRALayer;
  /** Whether `scaling·A·B` is currently folded into `linear.weight`. */
  merged = false;

  constructor(linear: Module, rank: number, alpha: number, options: LoRAOptions = {}) {
    const base = requireLinear(new.target.name, linear);
    this.linear = base;
    this.lora = new LoRALayer(base.inFeatures, base.outFeatures, rank, alpha, options);
  }

  apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    checkInput(this, x, this.linear.inFeatures);
    if (this.merged) return this.linear.apply(x, needsInputGrad);
    return tf.tidy(() => tf.add(this.linear.apply(x, needsInputGrad), this.lora.apply(x, needsInputGrad)));
  }

  /**
   * Adds `scaling·A·B` to the base weight in place, so that inference costs one product. Merging a layer
   * that is already merged is an error.
   */
  merge(): void {
    if (this.merged) throw new Error("merge(): this LinearWithLoRA is already merged; call unmerge() first.");
    const delta = this.lora.deltaWeight();
    const next = tf.add(this.linear.weight, delta);
    this.linear.weight.assign(next as tf.Tensor2D);
    tf.dispose([delta, next]);
    this.merged = true;
  }

  /**
   * Subtracts `scaling·A·B` from the base weight again. The result equals the original weight up to float32
   * rounding of the add and the subtract (a few units in the last place of the larger of `|W|` and `|ΔW|`).
   */
  unmerge(): void {
    if (!this.merged) throw new Error("unmerge(): this LinearWithLoRA is not merged; nothing to unmerge.");
    const delta = this.lora.deltaWeight();
    const next = tf.sub(this.linear.weight, delta);
    this.linear.weight.assign(next as tf.Tensor2D);
    tf.dispose([delta, next]);
    this.merged = false;
  }

  children(): [string, Module][] {
    return [["linear", this.linear], ["lora", this.lora]];
  }

  namedParameters(prefix = ""): NamedParameter[] {
    return [...this.linear.namedParameters(prefix + "linear."), ...this.lora.namedParameters(prefix + "lora.")];
  }

  toString(): string {
    return describeChildren(this.constructor.name, this.children());
  }

  clone(): this {
    const copy = Object.create(Object.getPrototypeOf(this)) as this;
    Object.assign(copy, { ...this, linear: this.linear.clone(), lora: this.lora.clone() });
    return copy;
  }

  dispose(): void {
    this.linear.dispose();
    this.lora.dispose();
  }
}

/**
 * The same model as {@linkcode LinearWithLoRA}, computed from the left-hand side of the distributive law:
 * `x·(W + scaling·A·B) + b`. Both give the same output up to float32 rounding. This form builds the full
 * `[in, out]` matrix on every call (and its gradient when training), so it is slower to train; its value is
 * that it shows the merged weight a deployment would store.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear, LinearWithLoRAMerged } from "./layers.ts";
 * const layer = new LinearWithLoRAMerged(new Linear(10, 3), 2, 4);
 * layer.apply(tf.ones([1, 10])).print();
 * layer.dispose();
 * ```
 */
export class LinearWithLoRAMerged extends LinearWithLoRA {
  override apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    checkInput(this, x, this.linear.inFeatures);
    if (this.merged) return this.linear.apply(x, needsInputGrad);
    return tf.tidy(() => {
      const { A, B, scaling } = this.lora;
      const trainDelta = A.trainable || B.trainable;
      const ab = matMul(A, B, A.trainable, B.trainable);
      const combined = tf.add(this.linear.weight, tf.mul(ab, scaling)) as tf.Tensor2D;
      const y = matMul(x, combined, needsInputGrad, this.linear.weight.trainable || trainDelta);
      return this.linear.bias === null ? y : tf.add(y, this.linear.bias);
    });
  }
}

/** Lays out children the way PyTorch prints a module. */
export function describeChildren(name: string, children: [string, Module][]): string {
  if (children.length === 0) return `${name}()`;
  const lines = children.map(([key, child]) => `(${key}): ${String(child)}`.replaceAll("\n", "\n  "));
  return `${name}(\n  ${lines.join("\n  ")}\n)`;
}

function copyVariable<R extends tf.Rank>(v: tf.Variable<R>): tf.Variable<R> {
  return tf.variable(v, v.trainable) as tf.Variable<R>;
}

function requireLinear(owner: string, layer: Module): Linear {
  if (!(layer instanceof Linear)) {
    const got = layer === null || typeof layer !== "object" ? String(layer) : layer.constructor.name;
    throw new TypeError(`${owner} wraps a Linear layer; got ${got}.`);
  }
  return layer;
}

function checkDim(owner: string, what: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw new RangeError(`${owner}: ${what} must be a positive integer; got ${value}.`);
  }
}

function checkRankAlpha(inDim: number, outDim: number, rank: number, alpha: number): void {
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

function checkInput(layer: Module, x: tf.Tensor, width: number): void {
  if (x.rank !== 2 || x.shape[1] !== width) {
    throw new RangeError(
      `${layer.constructor.name} expects input of shape [batch, ${width}]; got [${x.shape.join(", ")}].`,
    );
  }
}

function formatNumber(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toPrecision(4);
}
