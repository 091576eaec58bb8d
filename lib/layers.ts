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
 * - `"paper"`: `alpha / rank`, as in the LoRA paper, Microsoft's loralib and Hugging Face PEFT. The paper chose
 *   it hoping a tuned alpha would carry over between ranks; in practice it shrinks the update as the rank grows,
 *   so larger ranks learn more slowly.
 * - `"rslora"`: `alpha / sqrt(rank)`, rank-stabilised LoRA (Kalajdzievski, 2023; PEFT's `use_rslora`), which
 *   keeps the size of the update, and so the learning speed, about the same at every rank.
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

/**
 * tfjs seeds its generators with `String(seed)`, but its normal distribution treats a falsy seed as "none", so
 * seed 0 would give new numbers on every run. Handing it the string itself keeps every other seed's numbers and
 * makes 0 a seed too. (The cast is the price: tfjs's types say number, its code accepts any value.)
 */
function tfSeed(seed: number): number {
  return String(seed) as unknown as number;
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

  /** A layer from `inFeatures` to `outFeatures` values, initialised at random (seeded by `options.seed`). */
  constructor(inFeatures: number, outFeatures: number, options: LinearOptions = {}) {
    checkDim("Linear", "inFeatures", inFeatures);
    checkDim("Linear", "outFeatures", outFeatures);
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
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

  /** A rank-`rank` update from `inDim` to `outDim` values; the rank must be 1 to min(inDim, outDim). */
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
    this.A = tf.tidy(() =>
      tf.variable(tf.randomNormal([inDim, rank], 0, std, "float32", tfSeed(options.seed ?? nextSeed())))
    );
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

/** Options for a new {@linkcode LinearWithLoRA}. */
export interface LinearWithLoRAOptions extends LoRAOptions {
  /** Name of the first adapter; default `"default"`, as in PEFT. */
  adapterName?: string;
}

/**
 * The name that means "no adapter, the base layer alone" in a mixed batch (PEFT's `"__base__"`).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { BASE_ADAPTER, Linear, LinearWithLoRA } from "./layers.ts";
 * const layer = new LinearWithLoRA(new Linear(3, 2), 1, 2);
 * const y = layer.applyMixed(tf.ones([2, 3]), ["default", BASE_ADAPTER]);
 * console.log(y.shape); // [2, 2]
 * y.dispose();
 * layer.dispose();
 * ```
 */
export const BASE_ADAPTER = "__base__";

/**
 * A `Linear` layer plus a LoRA update computed alongside it: `linear(x) + lora(x)`, the right-hand side of
 * `x·(W + ΔW) = x·W + x·ΔW`. The base weights stay untouched, so one base can serve several adapters.
 *
 * {@linkcode LinearWithLoRA.merge} folds the update into W for inference (one product instead of three);
 * {@linkcode LinearWithLoRA.unmerge} takes it out again, as loralib and PEFT do.
 *
 * Several adapters can share the base layer, each under a name, in PEFT's vocabulary: the first one is
 * `"default"`, {@linkcode LinearWithLoRA.addAdapter} adds more, {@linkcode LinearWithLoRA.setAdapter}
 * chooses the one `apply` uses, and `lora` is that active adapter's `LoRALayer`. In parameter names the
 * adapter `"default"` is `lora` (`lora.A`, `lora.B`, as in the tutorial) and an adapter `"x"` is `lora_x`.
 * {@linkcode LinearWithLoRA.applyMixed} runs a batch whose rows each use their own adapter.
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
  /** Every adapter by name, in the order added. Change it through the methods, which keep the state right. */
  readonly adapters: Map<string, LoRALayer> = new Map();
  private active: string;
  private disabled = false;
  private mergedNames: string[] = [];

  /** Wraps `linear` (which must be a {@linkcode Linear}) with a first adapter of the given rank and alpha. */
  constructor(linear: Module, rank: number, alpha: number, options: LinearWithLoRAOptions = {}) {
    const base = requireLinear(new.target.name, linear);
    const name = options.adapterName ?? "default";
    checkAdapterName(name);
    this.linear = base;
    this.active = name;
    this.adapters.set(name, new LoRALayer(base.inFeatures, base.outFeatures, rank, alpha, options));
  }

  /** The active adapter's low-rank update (the tutorial's `self.lora`). */
  get lora(): LoRALayer {
    const lora = this.adapters.get(this.active);
    if (lora === undefined) {
      throw new Error(
        `This LinearWithLoRA has no adapter "${this.active}"; it has ${listNames(this.adapters.keys())}.`,
      );
    }
    return lora;
  }

  /** Name of the adapter `apply` uses. A layer that has no adapter of that name runs its base layer alone. */
  get activeAdapter(): string {
    return this.active;
  }

  /** Whether any adapter is currently folded into `linear.weight`. */
  get merged(): boolean {
    return this.mergedNames.length > 0;
  }

  /** The adapters folded into `linear.weight`, in the order they were merged (PEFT's `merged_adapters`). */
  get mergedAdapters(): readonly string[] {
    return [...this.mergedNames];
  }

  /** Whether `apply` skips every adapter and runs the base layer alone (PEFT's `disable_adapters`). */
  get adaptersDisabled(): boolean {
    return this.disabled;
  }

  apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    checkInput(this, x, this.linear.inFeatures);
    const lora = this.adapters.get(this.active);
    if (this.merged || this.disabled || lora === undefined) return this.linear.apply(x, needsInputGrad);
    return tf.tidy(() => tf.add(this.linear.apply(x, needsInputGrad), lora.apply(x, needsInputGrad)));
  }

  /**
   * Runs a batch in which row `i` uses the adapter `adapterNames[i]` ({@linkcode BASE_ADAPTER}, or a name
   * this layer lacks, means the base layer alone). The base product runs once for the whole batch; each
   * adapter's low-rank term runs on its own rows only. The names alone decide: the active adapter and
   * {@linkcode LinearWithLoRA.disableAdapters} play no part. For inference: no gradient flows to `x`.
   */
  applyMixed(x: tf.Tensor2D, adapterNames: readonly string[]): tf.Tensor2D {
    checkInput(this, x, this.linear.inFeatures);
    if (adapterNames.length !== x.shape[0]) {
      throw new RangeError(
        `applyMixed: got ${adapterNames.length} adapter names for a batch of ${x.shape[0]} rows; expected one per row.`,
      );
    }
    this.refuseMerged("applyMixed");
    return tf.tidy(() => {
      let y = this.linear.apply(x, false);
      for (const name of new Set(adapterNames)) {
        const lora = this.adapters.get(name);
        if (lora === undefined) continue; // base layer alone for these rows
        const rows = adapterNames.flatMap((n, i) => (n === name ? [i] : []));
        const index = tf.tensor2d(rows, [rows.length, 1], "int32");
        const delta = lora.apply(tf.gatherND(x, index) as tf.Tensor2D, false);
        y = tf.add(y, tf.scatterND(index, delta, y.shape));
      }
      return y;
    });
  }

  /**
   * Adds a new adapter named `name` and returns it. It starts as `LoRALayer` does (B zero, so outputs do not
   * change) and frozen unless it is the active one; {@linkcode LinearWithLoRA.setAdapter} makes it active
   * and trainable.
   */
  addAdapter(name: string, rank: number, alpha: number, options: LoRAOptions = {}): LoRALayer {
    checkAdapterName(name);
    if (this.adapters.has(name)) throw new Error(`addAdapter: this layer already has an adapter named "${name}".`);
    const lora = new LoRALayer(this.linear.inFeatures, this.linear.outFeatures, rank, alpha, options);
    lora.A.trainable = lora.B.trainable = name === this.active;
    this.adapters.set(name, lora);
    return lora;
  }

  /**
   * Makes `name` the adapter `apply` uses. As in PEFT, its A and B become trainable and every other
   * adapter's are frozen, so training afterwards updates only it. Not allowed while merged.
   */
  setAdapter(name: string): void {
    this.refuseMerged("setAdapter");
    this.active = name;
    for (const [key, lora] of this.adapters) lora.A.trainable = lora.B.trainable = key === name;
  }

  /**
   * Frees and removes the adapter `name`. If it was active, the first remaining adapter becomes active.
   * A merged adapter, or the only one, cannot be deleted.
   */
  deleteAdapter(name: string): void {
    const lora = this.adapters.get(name);
    if (lora === undefined) {
      throw new Error(`deleteAdapter: no adapter named "${name}"; this layer has ${listNames(this.adapters.keys())}.`);
    }
    if (this.mergedNames.includes(name)) {
      throw new Error(`deleteAdapter: adapter "${name}" is merged into the base weight; call unmerge() first.`);
    }
    if (this.adapters.size === 1) {
      throw new Error(`deleteAdapter: "${name}" is this layer's only adapter; use its .linear instead.`);
    }
    lora.dispose();
    this.adapters.delete(name);
    // The next adapter takes over as setAdapter would make it: active and the only trainable one.
    if (this.active === name) this.setAdapter(this.adapters.keys().next().value!);
  }

  /** Makes `apply` run the base layer alone until {@linkcode LinearWithLoRA.enableAdapters}. */
  disableAdapters(): void {
    this.refuseMerged("disableAdapters");
    this.disabled = true;
  }

  /** Undoes {@linkcode LinearWithLoRA.disableAdapters}. */
  enableAdapters(): void {
    this.disabled = false;
  }

  /**
   * Adds `scaling·A·B` of adapter `name` (default: the active one) to the base weight in place, so that
   * inference costs one product. While anything is merged, `apply` runs the base layer alone (which now
   * holds the update). Merging an adapter that is already merged is an error.
   */
  merge(name: string = this.active): void {
    if (this.mergedNames.includes(name)) {
      throw new Error(`merge(): adapter "${name}" of this LinearWithLoRA is already merged; call unmerge() first.`);
    }
    if (this.disabled) throw new Error("merge(): adapters are disabled; call enableAdapters() first.");
    const lora = this.adapters.get(name);
    if (lora === undefined) {
      throw new Error(`merge(): no adapter named "${name}"; this layer has ${listNames(this.adapters.keys())}.`);
    }
    tf.tidy(() => this.linear.weight.assign(tf.add(this.linear.weight, lora.deltaWeight()) as tf.Tensor2D));
    this.mergedNames.push(name);
  }

  /**
   * Subtracts every merged adapter's `scaling·A·B` from the base weight again, last merged first. The result
   * equals the original weight up to float32 rounding of the add and the subtract (a few units in the last
   * place of the larger of `|W|` and `|ΔW|`).
   */
  unmerge(): void {
    if (!this.merged) throw new Error("unmerge(): this LinearWithLoRA is not merged; nothing to unmerge.");
    while (this.mergedNames.length > 0) {
      const lora = this.adapters.get(this.mergedNames.at(-1)!)!;
      tf.tidy(() => this.linear.weight.assign(tf.sub(this.linear.weight, lora.deltaWeight()) as tf.Tensor2D));
      this.mergedNames.pop();
    }
  }

  /** Throws for `caller` while any adapter is folded into the base weight. */
  private refuseMerged(caller: string): void {
    if (this.merged) {
      throw new Error(`${caller}: adapters ${listNames(this.mergedNames)} are merged; call unmerge() first.`);
    }
  }

  children(): [string, Module][] {
    return [
      ["linear", this.linear],
      ...[...this.adapters].map(([name, lora]): [string, Module] => [adapterKey(name), lora]),
    ];
  }

  namedParameters(prefix = ""): NamedParameter[] {
    return this.children().flatMap(([key, child]) => child.namedParameters(`${prefix}${key}.`));
  }

  toString(): string {
    return describeChildren(this.constructor.name, this.children());
  }

  clone(): this {
    const copy = Object.create(Object.getPrototypeOf(this)) as this;
    Object.assign(copy, {
      linear: this.linear.clone(),
      adapters: new Map([...this.adapters].map(([name, lora]) => [name, lora.clone()])),
      active: this.active,
      disabled: this.disabled,
      mergedNames: [...this.mergedNames],
    });
    return copy;
  }

  dispose(): void {
    this.linear.dispose();
    for (const lora of this.adapters.values()) lora.dispose();
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
  /** `x·(W + scaling·A·B) + b`: the merged weight is formed on every call. */
  override apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    checkInput(this, x, this.linear.inFeatures);
    const lora = this.adapters.get(this.activeAdapter);
    if (this.merged || this.adaptersDisabled || lora === undefined) return this.linear.apply(x, needsInputGrad);
    return tf.tidy(() => {
      const { A, B, scaling } = lora;
      const trainDelta = A.trainable || B.trainable;
      const ab = matMul(A, B, A.trainable, B.trainable);
      const combined = tf.add(this.linear.weight, tf.mul(ab, scaling)) as tf.Tensor2D;
      const y = matMul(x, combined, needsInputGrad, this.linear.weight.trainable || trainDelta);
      return this.linear.bias === null ? y : tf.add(y, this.linear.bias);
    });
  }
}

/**
 * Lays out children the way PyTorch prints a module; every module's `toString` uses it.
 *
 * @example
 * ```ts
 * import { describeChildren, Linear, ReLU } from "./layers.ts";
 * const layer = new Linear(2, 3);
 * console.log(describeChildren("Block", [["0", layer], ["1", new ReLU()]]));
 * // Block(
 * //   (0): Linear(in_features=2, out_features=3, bias=true)
 * //   (1): ReLU()
 * // )
 * layer.dispose();
 * ```
 */
export function describeChildren(name: string, children: [string, Module][]): string {
  if (children.length === 0) return `${name}()`;
  const lines = children.map(([key, child]) => `(${key}): ${String(child)}`.replaceAll("\n", "\n  "));
  return `${name}(\n  ${lines.join("\n  ")}\n)`;
}

/** The child name of adapter `name`: `lora` for `"default"` (the tutorial's name), `lora_<name>` otherwise. */
function adapterKey(name: string): string {
  return name === "default" ? "lora" : `lora_${name}`;
}

/**
 * Throws a `RangeError` unless `name` can name an adapter: letters, digits, `_` and `-`, and not
 * {@linkcode BASE_ADAPTER}. (Parameter names such as `layers.0.lora_name.A` stay unambiguous.)
 *
 * @example
 * ```ts
 * import { checkAdapterName } from "./layers.ts";
 * checkAdapterName("rotated"); // fine
 * try {
 *   checkAdapterName("a.b");
 * } catch (error) {
 *   console.log((error as Error).message);
 * }
 * ```
 */
export function checkAdapterName(name: string): void {
  if (typeof name !== "string" || !/^[A-Za-z0-9_-]+$/.test(name) || name === BASE_ADAPTER) {
    throw new RangeError(
      `Adapter names are made of letters, digits, "_" and "-", and "${BASE_ADAPTER}" is reserved; got "${name}".`,
    );
  }
}

function listNames(names: Iterable<string>): string {
  const list = [...names];
  return list.length === 0 ? "none" : list.map((n) => `"${n}"`).join(", ");
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
