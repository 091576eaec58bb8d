/**
 * LoRA on a whole model, as PEFT's `LoraModel` does it: adapters added to the layers chosen by name, then
 * listed, selected, disabled or deleted on every layer at once. Merging and mixed batches are in `serve.ts`.
 *
 * Every function walks the model with `namedModules`, so it works on any model built from `Module`s: the
 * perceptron (`layers.0`, `layers.2`, …) as well as the GPT (`blocks.0.attn.q_proj`, …). A function that
 * refuses leaves the model exactly as it was.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { LinearWithDoRAMerged } from "../dora.ts";
import { Linear } from "../layers.ts";
import { LinearWithLoRAMerged, LoRALayer } from "../lora.ts";
import { getModule, type Module, namedModules, setModule } from "../module.ts";
import { type AdapterLayerOptions, checkAdapterName, LinearWithAdapters, listNames } from "./layer.ts";
import { findTargets, type TargetOptions } from "./targets.ts";

/**
 * Options for {@linkcode addLoRA}: rank, alpha, which layers, how A and B start (`init`), and DoRA
 * (`useDora`, with `normAxis` and `detachNorm`).
 */
export interface AddLoRAOptions extends AdapterLayerOptions, TargetOptions {
  /** Inner dimension of A and B. */
  rank: number;
  /** Scale hyperparameter; see `loraScaling`. */
  alpha: number;
  /**
   * Wrap each target in the tutorial's {@linkcode LinearWithLoRAMerged} (`x·(W + ΔW)` on every call), or with
   * `useDora` in {@linkcode LinearWithDoRAMerged} (`x·W′`), instead of {@linkcode LinearWithAdapters}. Such a
   * model trains and saves its weights, but has no named adapters.
   */
  merged?: boolean;
}

/**
 * Wraps the chosen `Linear` layers of `model` in LoRA and freezes every base weight, in one step: PEFT's
 * `get_peft_model`. The default targets are every `Linear`, as in the tutorial; `targetModules` picks
 * others by name (see `TargetModules`). The model is changed in place and returned. Each wrapped layer gets
 * its own seed derived from `seed`, so runs repeat.
 *
 * `useDora: true` makes DoRA adapters (PEFT's `use_dora`; see `DoRALayer`): the trainable parameters gain
 * one magnitude per output unit (`lora.m`). `init` chooses how A and B start (see `LoRAInit`); with
 * `"pissa"` each target's base weight becomes PiSSA's residual, and if anything fails those weights are put
 * back before the error is thrown.
 *
 * @example
 * ```ts
 * import { addLoRA } from "./model.ts";
 * import { countParameters } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * console.log(countParameters(model)); // { total: 142322, trainable: 6248 }
 * const dora = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8, useDora: true });
 * console.log(countParameters(dora)); // { total: 142716, trainable: 6642 }: + 128 + 256 + 10 magnitudes
 * model.dispose();
 * dora.dispose();
 * ```
 */
export function addLoRA<M extends Module>(model: M, options: AddLoRAOptions): M {
  const targets = findTargets(model, options, "addLoRA");
  for (const name of targets) {
    const layer = getModule(model, name);
    if (!(layer instanceof Linear)) {
      throw new Error(`addLoRA: ${name} already carries LoRA (${layer.constructor.name}); use addAdapter for more.`);
    }
  }
  // Build every wrapper before changing the model, so a bad rank leaves the model as it was (PiSSA's
  // residuals, written while building, are undone).
  const Wrapper = options.merged ? (options.useDora ? LinearWithDoRAMerged : LinearWithLoRAMerged) : LinearWithAdapters;
  const wrapped: Module[] = [];
  keepingWeights(options.init === "pissa" ? targets.map((name) => getModule(model, name) as Linear) : [], () => {
    try {
      for (const [k, name] of targets.entries()) {
        wrapped.push(new Wrapper(getModule(model, name), options.rank, options.alpha, adapterOptions(options, k)));
      }
    } catch (error) {
      for (const layer of wrapped) (layer as LinearWithAdapters | LinearWithLoRAMerged).lora.dispose();
      throw error;
    }
  });
  targets.forEach((name, k) => setModule(model, name, wrapped[k]));
  freezeBase(model);
  return model;
}

/**
 * The layers of `model` that carry named adapters, with their module names.
 *
 * @example
 * ```ts
 * import { addLoRA, loraLayers } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * console.log(loraLayers(model).map(([name]) => name)); // ["layers.0", "layers.2", "layers.4"]
 * model.dispose();
 * ```
 */
export function loraLayers(model: Module): [string, LinearWithAdapters][] {
  return namedModules(model).filter((entry): entry is [string, LinearWithAdapters] =>
    entry[1] instanceof LinearWithAdapters
  );
}

/**
 * The names of the adapters in `model`, in the order they first appear.
 *
 * @example
 * ```ts
 * import { addAdapter, addLoRA, listAdapters } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 2, alpha: 2 });
 * console.log(listAdapters(model)); // ["default", "rotated"]
 * model.dispose();
 * ```
 */
export function listAdapters(model: Module): string[] {
  return [...new Set(loraLayers(model).flatMap(([, layer]) => [...layer.adapters.keys()]))];
}

/** Options for {@linkcode addAdapter}: rank, alpha, scaling convention, seed and target layers. */
export type AdapterOptions = Omit<AddLoRAOptions, "merged">;

/**
 * Adds a new adapter called `name` to the chosen layers (default: every linear layer), as PEFT's
 * `add_adapter` does. A plain `Linear` is wrapped in {@linkcode LinearWithAdapters}; a layer already wrapped
 * gains one more adapter. Every base weight of the model is frozen, and the new adapter is frozen and
 * inactive until {@linkcode setAdapter} selects it (unless the model had no adapter yet, when it becomes the
 * active one). If anything is wrong (a target that is not linear, a name already taken, a bad rank) the model
 * is left as it was.
 *
 * @example
 * ```ts
 * import { addAdapter, addLoRA } from "./model.ts";
 * import { namedParameters } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2, targetModules: ["layers.0"] });
 * addAdapter(model, "inverted", { rank: 1, alpha: 2, targetModules: ["layers.0"] });
 * console.log(namedParameters(model).map((p) => p.name).slice(2, 6));
 * // ["layers.0.lora.A", "layers.0.lora.B", "layers.0.lora_inverted.A", "layers.0.lora_inverted.B"]
 * model.dispose();
 * ```
 */
export function addAdapter<M extends Module>(model: M, name: string, options: AdapterOptions): M {
  checkAdapterName(name);
  const targets = findTargets(model, options, "addAdapter");
  const layers = targets.map((target) => {
    const layer = getModule(model, target);
    if (!(layer instanceof Linear || layer instanceof LinearWithAdapters)) {
      throw new Error(`addAdapter: ${target} is a ${layer.constructor.name}, which holds no named adapters.`);
    }
    if (layer instanceof LinearWithAdapters && layer.adapters.has(name)) {
      throw new Error(`addAdapter: ${target} already has an adapter named "${name}".`);
    }
    if (layer instanceof LinearWithAdapters && options.init === "pissa") {
      throw new Error(
        `addAdapter: ${target} already has adapters; PiSSA would replace its base weight under them, so it can ` +
          "only be a layer's first adapter.",
      );
    }
    return layer;
  });
  // Build everything first; undo what was built if a step fails, so the model is unchanged.
  const activeBefore = loraLayers(model)[0]?.[1].activeAdapter;
  const wrappers = new Map<string, LinearWithAdapters>();
  const extended: LinearWithAdapters[] = [];
  const plain = layers.filter((layer): layer is Linear => layer instanceof Linear);
  keepingWeights(options.init === "pissa" ? plain : [], () => {
    try {
      for (const [k, layer] of layers.entries()) {
        const lora = adapterOptions(options, k);
        if (layer instanceof LinearWithAdapters) {
          layer.addAdapter(name, options.rank, options.alpha, lora);
          extended.push(layer);
        } else {
          const wrapper = new LinearWithAdapters(layer, options.rank, options.alpha, { ...lora, adapterName: name });
          // As in PEFT, the new adapter stays inactive (and frozen) until setAdapter picks it, unless it is the
          // first.
          if (activeBefore !== undefined) wrapper.setAdapter(activeBefore);
          wrappers.set(targets[k], wrapper);
        }
      }
    } catch (error) {
      for (const layer of extended) layer.deleteAdapter(name);
      for (const wrapper of wrappers.values()) wrapper.lora.dispose();
      throw error;
    }
  });
  attachWrappers(model, wrappers);
  return model;
}

/**
 * Makes `name` the active adapter of every LoRA layer (PEFT's `set_adapter`): `apply` uses it, its A and B
 * become trainable and every other adapter's are frozen, so training afterwards updates only it. Layers
 * without an adapter of that name run their base layer alone.
 *
 * @example
 * ```ts
 * import { addAdapter, addLoRA, setAdapter } from "./model.ts";
 * import { trainableVariables } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * setAdapter(model, "rotated");
 * console.log(trainableVariables(model).length); // 6: A and B of "rotated" in three layers
 * model.dispose();
 * ```
 */
export function setAdapter(model: Module, name: string): void {
  requireAdapter(model, name, "setAdapter");
  refuseMerged(model, "setAdapter");
  for (const [, layer] of loraLayers(model)) layer.setAdapter(name);
}

/**
 * Frees and removes the adapter `name` from every layer (PEFT's `delete_adapter`). A layer left with no
 * adapter goes back to its plain `Linear`. Refused while any adapter is merged.
 *
 * @example
 * ```ts
 * import { addAdapter, addLoRA, deleteAdapter, listAdapters, loraLayers } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * deleteAdapter(model, "default");
 * console.log(listAdapters(model), loraLayers(model)[0][1].activeAdapter); // ["rotated"] rotated
 * model.dispose();
 * ```
 */
export function deleteAdapter(model: Module, name: string): void {
  requireAdapter(model, name, "deleteAdapter");
  refuseMerged(model, "deleteAdapter");
  for (const [module, layer] of loraLayers(model)) {
    if (!layer.adapters.has(name)) continue;
    if (layer.adapters.size > 1) {
      layer.deleteAdapter(name);
    } else {
      layer.adapters.get(name)!.dispose();
      setModule(model, module, layer.linear);
    }
  }
}

/**
 * Makes every LoRA layer run its base layer alone, until {@linkcode enableAdapters} (PEFT's
 * `disable_adapters`): the base model's outputs, with no copy of its weights. Refused while merged.
 *
 * @example
 * ```ts
 * import { addLoRA, disableAdapters, enableAdapters } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * disableAdapters(model);
 * enableAdapters(model);
 * model.dispose();
 * ```
 */
export function disableAdapters(model: Module): void {
  refuseMerged(model, "disableAdapters");
  for (const [, layer] of loraLayers(model)) layer.disableAdapters();
}

/**
 * Undoes {@linkcode disableAdapters}.
 *
 * @example
 * ```ts
 * import { addLoRA, disableAdapters, enableAdapters, loraLayers } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * disableAdapters(model);
 * enableAdapters(model);
 * console.log(loraLayers(model)[0][1].adaptersDisabled); // false
 * model.dispose();
 * ```
 */
export function enableAdapters(model: Module): void {
  for (const [, layer] of loraLayers(model)) layer.enableAdapters();
}

/** The options of one new adapter, target number `k`: each target's seed is `seed + k`. */
function adapterOptions(options: AdapterLayerOptions, k: number): AdapterLayerOptions {
  const { scaling, init, useDora, normAxis, detachNorm } = options;
  return {
    scaling,
    init,
    useDora,
    normAxis,
    detachNorm,
    seed: options.seed === undefined ? undefined : options.seed + k,
  };
}

/**
 * Runs `build`; if it throws, puts back the weights of `linears` it may have changed (PiSSA writes its
 * residual while adapters are built), so that a refused call leaves the model as it was.
 *
 * @example
 * ```ts
 * import { Linear } from "../layers.ts";
 * import { LoRALayer, pissaInit } from "../lora.ts";
 * import { keepingWeights } from "./model.ts";
 * const linear = new Linear(4, 3, { seed: 1 });
 * const before = linear.weight.dataSync().slice();
 * try {
 *   keepingWeights([linear], () => {
 *     pissaInit(linear, new LoRALayer(4, 3, 1, 2)); // rewrites the weight…
 *     throw new Error("a later step fails");
 *   });
 * } catch {
 *   console.log(linear.weight.dataSync().every((w, i) => w === before[i])); // true: …and it is put back
 * }
 * ```
 */
export function keepingWeights(linears: Linear[], build: () => void): void {
  const saved = linears.map((linear) => tf.clone(linear.weight));
  try {
    build();
  } catch (error) {
    linears.forEach((linear, k) => linear.weight.assign(saved[k]));
    throw error;
  } finally {
    tf.dispose(saved);
  }
}

/** Puts the new wrappers in place and freezes every base weight of the model, as `addLoRA` and PEFT do. */
export function attachWrappers(model: Module, wrappers: Map<string, LinearWithAdapters>): void {
  for (const [name, wrapper] of wrappers) setModule(model, name, wrapper);
  freezeBase(model);
}

/**
 * Freezes every parameter of `model` outside its adapters (`LoRALayer`s, DoRA's included), leaving the
 * adapters' own flags alone: PEFT's `mark_only_lora_as_trainable`. In a model made of linear layers only,
 * such as the perceptron, that is the tutorial's `freezeLinearLayers`; a GPT's embeddings and LayerNorms are
 * frozen too, as PEFT freezes them.
 */
function freezeBase(model: Module): void {
  for (const [, module] of namedModules(model)) {
    if (module instanceof LoRALayer) continue;
    for (const [, variable] of module.ownParameters()) variable.trainable = false;
  }
}

/** Throws, naming the adapters the model has, unless some layer of `model` has adapter `name`. */
export function requireAdapter(model: Module, name: string, caller: string): void {
  const names = listAdapters(model);
  if (!names.includes(name)) {
    throw new Error(`${caller}: the model has no adapter "${name}"; it has ${listNames(names)}.`);
  }
}

/** Throws for `caller` while any adapter of `model` is folded into its base weight. */
export function refuseMerged(model: Module, caller: string): void {
  if (loraLayers(model).some(([, layer]) => layer.merged)) {
    throw new Error(`${caller}: a LoRA layer is merged into its base weight; call unmerge() first.`);
  }
}
