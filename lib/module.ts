/**
 * The module tree: what every layer and model here is, and the one walk over it that everything model-wide
 * uses (freezing, adding LoRA, adapters, files).
 *
 * As in PyTorch's `nn.Module`, a {@linkcode Module} finds its parameters and sub-modules among its own
 * properties: every `tf.Variable` is a parameter and every `Module` a child, named by its property; an array
 * of modules is a {@linkcode Sequential} child whose members are named `0`, `1`, …. So a model's parameters
 * have dotted names such as `layers.0.lora.A`, and {@linkcode namedModules} lists `layers.0`,
 * `blocks.1.attn.q_proj` and so on, depth first.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** A parameter with its dotted name, as PyTorch's `named_parameters()` lists it. */
export interface NamedParameter {
  /** Dotted path such as `layers.0.lora.A`. */
  name: string;
  /** The variable itself; `variable.trainable` plays the role of PyTorch's `requires_grad`. */
  variable: tf.Variable;
}

/**
 * A layer or a model: a forward pass plus parameters and sub-modules found by name.
 *
 * A subclass defines `apply`; everything else works from its properties. `extraRepr` adds details to the
 * printed form, `children` can be overridden where sub-modules live somewhere other than in properties (a
 * `Map` of adapters, say).
 *
 * @example A layer of its own
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Module } from "./module.ts";
 * class Scale extends Module {
 *   factor = tf.variable(tf.scalar(2));
 *   apply(x: tf.Tensor): tf.Tensor {
 *     return tf.mul(x, this.factor);
 *   }
 * }
 * const scale = new Scale();
 * assert.deepEqual(scale.namedParameters().map((p) => p.name), ["factor"]);
 * assert.equal(String(scale), "Scale()");
 * scale.dispose();
 * ```
 */
export abstract class Module {
  /** The forward pass. Layers act on the last axis of `x`, so `[batch, in]` and `[batch, time, in]` both work. */
  abstract apply(x: tf.Tensor): tf.Tensor;

  /** The direct sub-modules, by the name they have in parameter names (`linear`, `lora`, `layers`, …). */
  children(): [string, Module][] {
    const out: [string, Module][] = [];
    for (const [key, value] of Object.entries(this)) {
      if (value instanceof Module) out.push([key, value]);
      else if (Array.isArray(value) && value.length > 0 && value.every((v) => v instanceof Module)) {
        out.push([key, new Sequential(value)]); // a view: it shares the array
      }
    }
    return out;
  }

  /** This module's own parameters (not its children's), by property name. */
  ownParameters(): [string, tf.Variable][] {
    return Object.entries(this).filter((entry): entry is [string, tf.Variable] => entry[1] instanceof tf.Variable);
  }

  /** Every parameter of this module and its children, with dotted names under `prefix`. */
  namedParameters(prefix = ""): NamedParameter[] {
    const own = this.ownParameters().map(([name, variable]) => ({ name: prefix + name, variable }));
    return own.concat(this.children().flatMap(([key, child]) => child.namedParameters(`${prefix}${key}.`)));
  }

  /** Replaces the direct child `name` (a property holding a module, or an index of a {@linkcode Sequential}). */
  setChild(name: string, module: Module): void {
    if (!(Object.hasOwn(this, name) && (this as Record<string, unknown>)[name] instanceof Module)) {
      throw new RangeError(`${this.constructor.name} has no child module "${name}".`);
    }
    (this as Record<string, unknown>)[name] = module;
  }

  /**
   * Whether this module is an adapter's trainable part (the tutorial's `LoRALayer`, DoRA's and VeRA's layers),
   * which freezing the base model leaves alone (see {@linkcode freezeBase}). Adapters override it to `true`.
   */
  get isAdapter(): boolean {
    return false;
  }

  /** Details shown inside the parentheses when the module is printed, as PyTorch's `extra_repr`. */
  extraRepr(): string {
    return "";
  }

  /** A PyTorch-style description, as `print(module)` shows it. */
  toString(): string {
    const children = this.children();
    if (children.length === 0) return `${this.constructor.name}(${this.extraRepr()})`;
    const lines = children.map(([key, child]) => `(${key}): ${String(child)}`.replaceAll("\n", "\n  "));
    const extra = this.extraRepr() === "" ? [] : [this.extraRepr()];
    return `${this.constructor.name}(\n  ${[...extra, ...lines].join("\n  ")}\n)`;
  }

  /**
   * A deep copy, PyTorch's `copy.deepcopy(model)`: new variables with the same values and trainable flags,
   * copied sub-modules, and every other property copied (arrays and maps element by element).
   */
  clone(): this {
    const copy = Object.create(Object.getPrototypeOf(this)) as this;
    for (const [key, value] of Object.entries(this)) (copy as Record<string, unknown>)[key] = copyValue(value);
    return copy;
  }

  /** Frees every variable and tensor this module and its children hold. */
  dispose(): void {
    for (const value of Object.values(this)) disposeValue(value);
  }
}

function copyValue(value: unknown): unknown {
  if (value instanceof tf.Variable) return tf.variable(value, value.trainable);
  if (value instanceof tf.Tensor) return tf.clone(value);
  if (value instanceof Module) return value.clone();
  if (Array.isArray(value)) return value.map(copyValue);
  if (value instanceof Map) return new Map([...value].map(([k, v]) => [k, copyValue(v)]));
  return value; // numbers, strings, booleans, null and settings objects, which are never changed in place
}

function disposeValue(value: unknown): void {
  if (value instanceof tf.Tensor || value instanceof Module) value.dispose();
  else if (Array.isArray(value)) value.forEach(disposeValue);
  else if (value instanceof Map) value.forEach(disposeValue);
}

/**
 * Layers run one after the other, PyTorch's `nn.Sequential`. A `Module[]` property of any module is shown
 * as one of these, sharing the array, so `model.layers[0] = …` and `setModule(model, "layers.0", …)` are
 * the same change.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Sequential } from "./module.ts";
 * import { Linear, ReLU } from "./layers.ts";
 * const net = new Sequential([new Linear(3, 4), new ReLU(), new Linear(4, 2)]);
 * assert.deepEqual(net.apply(tf.ones([5, 3])).shape, [5, 2]);
 * net.dispose();
 * ```
 */
export class Sequential extends Module {
  /** The layers, in order. */
  readonly layers: Module[];

  /** A sequence of `layers` (the array itself is kept, not copied). */
  constructor(layers: Module[]) {
    super();
    this.layers = layers;
  }

  /** Each layer's output is the next one's input. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.layers.reduce((h, layer) => layer.apply(h), x));
  }

  /** The layers, named by their index. */
  override children(): [string, Module][] {
    return this.layers.map((layer, i) => [String(i), layer]);
  }

  /** Replaces the layer at index `name`. */
  override setChild(name: string, module: Module): void {
    const index = Number(name);
    if (!(Number.isInteger(index) && index >= 0 && index < this.layers.length && String(index) === name)) {
      throw new RangeError(`Sequential has no layer "${name}"; it has 0 to ${this.layers.length - 1}.`);
    }
    this.layers[index] = module;
  }
}

/**
 * Every module in the tree with its dotted name, depth first, the model itself first under `""`: PyTorch's
 * `named_modules()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { namedModules } from "./module.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * assert.deepEqual(
 *   namedModules(model).map(([name]) => name),
 *   ["", "layers", "layers.0", "layers.1", "layers.2", "layers.3", "layers.4"],
 * );
 * model.dispose();
 * ```
 */
export function namedModules(model: Module, prefix = ""): [string, Module][] {
  const out: [string, Module][] = [[prefix, model]];
  for (const [key, child] of model.children()) {
    out.push(...namedModules(child, prefix === "" ? key : `${prefix}.${key}`));
  }
  return out;
}

/**
 * The module called `name` (a dotted path such as `blocks.0.attn.q_proj`): PyTorch's `get_submodule`.
 * Throws a `RangeError` naming the first part of the path that does not exist.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { getModule } from "./module.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * assert.equal(String(getModule(model, "layers.2")), "Linear(in_features=3, out_features=3, bias=true)");
 * model.dispose();
 * ```
 */
export function getModule(model: Module, name: string): Module {
  let module = model;
  let path = "";
  for (const part of name === "" ? [] : name.split(".")) {
    const child = module.children().find(([key]) => key === part)?.[1];
    if (child === undefined) {
      const where = path === "" ? "the model" : `"${path}"`;
      const has = module.children().map(([key]) => `"${key}"`).join(", ") || "none";
      throw new RangeError(`No module "${name}": ${where} has no child "${part}" (its children: ${has}).`);
    }
    module = child;
    path = path === "" ? part : `${path}.${part}`;
  }
  return module;
}

/**
 * Puts `module` in the place called `name` (`layers.0`, `blocks.1.attn.v_proj`, …) and returns the module
 * that was there. The tutorial's `model.layers[0] = new LinearWithLoRA(model.layers[0], 4, 8)` is
 * `setModule(model, "layers.0", new LinearWithLoRA(getModule(model, "layers.0"), 4, 8))`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { getModule, setModule } from "./module.ts";
 * import { LinearWithLoRA } from "./lora.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * setModule(model, "layers.0", new LinearWithLoRA(getModule(model, "layers.0"), 1, 2));
 * assert.equal(model.layers[0].constructor.name, "LinearWithLoRA");
 * model.dispose();
 * ```
 */
export function setModule(model: Module, name: string, module: Module): Module {
  const cut = name.lastIndexOf(".");
  if (name === "") throw new RangeError("setModule: the model itself has no name to replace; expected a child's name.");
  const parent = getModule(model, name.slice(0, Math.max(cut, 0)));
  const previous = getModule(parent, name.slice(cut + 1));
  parent.setChild(name.slice(cut + 1), module);
  return previous;
}

/**
 * Every parameter of `model` with its dotted name, as PyTorch's `model.named_parameters()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { namedParameters } from "./module.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * const names = namedParameters(model).map(({ name, variable }) => `${name}:${variable.trainable}`);
 * assert.deepEqual(names, [
 *   "layers.0.weight:true",
 *   "layers.0.bias:true",
 *   "layers.2.weight:true",
 *   "layers.2.bias:true",
 *   "layers.4.weight:true",
 *   "layers.4.bias:true",
 * ]);
 * model.dispose();
 * ```
 */
export function namedParameters(model: Module): NamedParameter[] {
  return model.namedParameters();
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
 * import assert from "node:assert/strict";
 * import { countParameters } from "./module.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10);
 * assert.deepEqual(countParameters(model), { total: 136074, trainable: 136074 });
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
 * Freezes every parameter of `model` outside its adapters (modules whose `isAdapter` is true) and leaves the
 * adapters' own flags alone: PEFT's `mark_only_lora_as_trainable`, and the one freezing rule under both the
 * tutorial's `freezeLinearLayers` and `addLoRA`. In a model of linear layers only, such as the perceptron,
 * that freezes exactly the linear layers; in a GPT it freezes the embeddings and LayerNorms too, as PEFT does.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { freezeBase, namedParameters } from "./module.ts";
 * import { LinearWithLoRA } from "./lora.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * model.layers[2] = new LinearWithLoRA(model.layers[2], 1, 2);
 * freezeBase(model);
 * const trainable = namedParameters(model).filter((p) => p.variable.trainable).map((p) => p.name);
 * assert.deepEqual(trainable, ["layers.2.lora.A", "layers.2.lora.B"]);
 * model.dispose();
 * ```
 */
export function freezeBase(model: Module): void {
  const visit = (module: Module): void => {
    if (module.isAdapter) return;
    for (const [, variable] of module.ownParameters()) variable.trainable = false;
    for (const [, child] of module.children()) visit(child);
  };
  visit(model);
}

/**
 * The variables an optimizer should update: the trainable ones.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { trainableVariables } from "./module.ts";
 * import { addLoRA } from "./peft/model.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * assert.equal(trainableVariables(model).length, 6); // A and B of three layers
 * model.dispose();
 * ```
 */
export function trainableVariables(model: Module): tf.Variable[] {
  return model.namedParameters().map((p) => p.variable).filter((v) => v.trainable);
}
