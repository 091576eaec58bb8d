/**
 * The tutorial's three-layer perceptron, and the model-wide operations: named parameters, freezing,
 * parameter counts and wrapping every `Linear` in LoRA.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  describeChildren,
  Linear,
  LinearWithLoRA,
  LinearWithLoRAMerged,
  type LoRAOptions,
  type Module,
  type NamedParameter,
  ReLU,
} from "./layers.ts";

/**
 * `Linear → ReLU → Linear → ReLU → Linear`, returning logits. Its `layers` array can be edited in place, as
 * the tutorial does with `model.layers[0] = LinearWithLoRAMerged(model.layers[0], …)`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { MultilayerPerceptron } from "./model.ts";
 * import { LinearWithLoRAMerged } from "./layers.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * model.layers[0] = new LinearWithLoRAMerged(model.layers[0], 4, 8);
 * const logits = model.apply(tf.zeros([1, 784]));
 * console.log(logits.shape); // [1, 10]
 * logits.dispose();
 * model.dispose();
 * ```
 */
export class MultilayerPerceptron implements Module {
  /** The sequence of layers; indices 0, 2 and 4 are the linear ones. */
  layers: Module[];

  /** Widths numFeatures → numHidden1 → numHidden2 → numClasses (the tutorial: 784, 128, 256, 10). */
  constructor(
    numFeatures: number,
    numHidden1: number,
    numHidden2: number,
    numClasses: number,
    options: { seed?: number } = {},
  ) {
    const seed = options.seed;
    const at = (i: number) => (seed === undefined ? {} : { seed: seed + 10 * i });
    this.layers = [];
    try {
      this.layers.push(new Linear(numFeatures, numHidden1, at(0)), new ReLU());
      this.layers.push(new Linear(numHidden1, numHidden2, at(1)), new ReLU());
      this.layers.push(new Linear(numHidden2, numClasses, at(2)));
    } catch (error) {
      this.dispose(); // free the layers built before the bad argument
      throw error;
    }
  }

  /**
   * Logits for `x` of shape `[batch, numFeatures]`. The input is normally raw data, which needs no gradient;
   * pass `needsInputGrad = true` when `x` comes from trainable layers (this model used inside another).
   */
  apply(x: tf.Tensor2D, needsInputGrad = false): tf.Tensor2D {
    return new Sequential(this.layers).apply(x, needsInputGrad);
  }

  children(): [string, Module][] {
    return [["layers", new Sequential(this.layers)]];
  }

  namedParameters(prefix = ""): NamedParameter[] {
    return new Sequential(this.layers).namedParameters(`${prefix}layers.`);
  }

  toString(): string {
    return describeChildren("MultilayerPerceptron", this.children());
  }

  clone(): MultilayerPerceptron {
    const copy = Object.create(MultilayerPerceptron.prototype) as MultilayerPerceptron;
    copy.layers = this.layers.map((layer) => layer.clone());
    return copy;
  }

  dispose(): void {
    for (const layer of this.layers) layer.dispose();
  }
}

/** A list of layers run one after the other, like PyTorch's `nn.Sequential`; here a view of `layers`. */
class Sequential implements Module {
  constructor(readonly layers: Module[]) {}
  apply(x: tf.Tensor2D, needsInputGrad = true): tf.Tensor2D {
    return tf.tidy(() => this.layers.reduce((h, layer, i) => layer.apply(h, needsInputGrad || i > 0), x));
  }
  children(): [string, Module][] {
    return this.layers.map((layer, i) => [String(i), layer]);
  }
  namedParameters(prefix = ""): NamedParameter[] {
    return this.layers.flatMap((layer, i) => layer.namedParameters(`${prefix}${i}.`));
  }
  toString(): string {
    return describeChildren("Sequential", this.children());
  }
  clone(): Sequential {
    return new Sequential(this.layers.map((layer) => layer.clone()));
  }
  dispose(): void {
    for (const layer of this.layers) layer.dispose();
  }
}

/**
 * Every parameter of `model` with its dotted name, as PyTorch's `model.named_parameters()`.
 *
 * @example
 * ```ts
 * import { MultilayerPerceptron, namedParameters } from "./model.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * for (const { name, variable } of namedParameters(model)) console.log(`${name}:${variable.trainable}`);
 * model.dispose();
 * ```
 */
export function namedParameters(model: Module): NamedParameter[] {
  return model.namedParameters();
}

/**
 * Freezes (marks not trainable) every parameter of every `Linear` layer, at any depth, and leaves the rest
 * (LoRA's A and B) trainable: the tutorial's `freeze_linear_layers`.
 *
 * @example
 * ```ts
 * import { freezeLinearLayers, MultilayerPerceptron, namedParameters } from "./model.ts";
 * import { LinearWithLoRA } from "./layers.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * model.layers[0] = new LinearWithLoRA(model.layers[0], 1, 2);
 * freezeLinearLayers(model);
 * console.log(namedParameters(model).filter((p) => p.variable.trainable).map((p) => p.name));
 * // ["layers.0.lora.A", "layers.0.lora.B"]
 * model.dispose();
 * ```
 */
export function freezeLinearLayers(model: Module): void {
  for (const [, child] of model.children()) {
    if (child instanceof Linear) {
      for (const { variable } of child.namedParameters()) variable.trainable = false;
    } else {
      freezeLinearLayers(child);
    }
  }
}

/** Total and trainable parameter counts of a model. */
export interface ParameterCount {
  /** Every parameter, frozen or not. */
  total: number;
  /** Parameters an optimizer would update. */
  trainable: number;
}

/**
 * Counts parameters, total and trainable.
 *
 * @example
 * ```ts
 * import { countParameters, MultilayerPerceptron } from "./model.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10);
 * console.log(countParameters(model)); // { total: 136074, trainable: 136074 }
 * model.dispose();
 * ```
 */
export function countParameters(model: Module): ParameterCount {
  let total = 0, trainable = 0;
  for (const { variable } of model.namedParameters()) {
    total += variable.size;
    if (variable.trainable) trainable += variable.size;
  }
  return { total, trainable };
}

/**
 * The variables an optimizer should update: the trainable ones.
 *
 * @example
 * ```ts
 * import { addLoRA, MultilayerPerceptron, trainableVariables } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * console.log(trainableVariables(model).length); // 6: A and B of three layers
 * model.dispose();
 * ```
 */
export function trainableVariables(model: Module): tf.Variable[] {
  return model.namedParameters().map((p) => p.variable).filter((v) => v.trainable);
}

/** Options for {@linkcode addLoRA}. */
export interface AddLoRAOptions extends LoRAOptions {
  /** Inner dimension of A and B. */
  rank: number;
  /** Scale hyperparameter; see {@linkcode loraScaling}. */
  alpha: number;
  /** Indices in `model.layers` to wrap; default: every `Linear`. PEFT calls this `target_modules`. */
  targetModules?: number[];
  /** Use {@linkcode LinearWithLoRAMerged} instead of {@linkcode LinearWithLoRA}. */
  merged?: boolean;
}

/**
 * Wraps the chosen `Linear` layers of a model in LoRA and freezes every base weight, in one step (what
 * PEFT's `get_peft_model` does). The model is changed in place and also returned. Each wrapped layer gets
 * its own seed derived from `seed`, so runs repeat.
 *
 * @example
 * ```ts
 * import { addLoRA, countParameters, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * console.log(countParameters(model)); // { total: 142322, trainable: 6248 }
 * model.dispose();
 * ```
 */
export function addLoRA(model: MultilayerPerceptron, options: AddLoRAOptions): MultilayerPerceptron {
  const targets = options.targetModules ??
    model.layers.flatMap((layer, i) => (layer instanceof Linear ? [i] : []));
  if (new Set(targets).size !== targets.length) {
    throw new RangeError(`addLoRA: targetModules lists a layer twice: [${targets.join(", ")}].`);
  }
  for (const i of targets) {
    if (!(model.layers[i] instanceof Linear)) {
      const got = model.layers[i] === undefined ? "nothing" : model.layers[i].constructor.name;
      throw new RangeError(`addLoRA: targetModules must index Linear layers; layers[${i}] is ${got}.`);
    }
  }
  // Build every wrapper before changing the model, so a bad rank leaves the model as it was.
  const Wrapper = options.merged ? LinearWithLoRAMerged : LinearWithLoRA;
  const wrapped: LinearWithLoRA[] = [];
  try {
    for (const [k, i] of targets.entries()) {
      const seed = options.seed === undefined ? undefined : options.seed + k;
      wrapped.push(new Wrapper(model.layers[i], options.rank, options.alpha, { scaling: options.scaling, seed }));
    }
  } catch (error) {
    for (const layer of wrapped) layer.lora.dispose();
    throw error;
  }
  targets.forEach((i, k) => model.layers[i] = wrapped[k]);
  freezeLinearLayers(model);
  return model;
}
