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
import { isBaseLayer } from "../layers.ts";
import { freezeBase, getModule, type Module, namedModules, setModule } from "../module.ts";
import { type AdapterSpec, kindNamed, type Target } from "./kind.ts";
import { type AdapterLayerOptions, checkAdapterName, isTutorialLayer, LinearWithAdapters, listNames } from "./layer.ts";
import { findTargets, type TargetOptions } from "./targets.ts";

/**
 * Options for {@linkcode addLoRA}: the kind (`kind`, or `useDora`), rank, alpha, which layers, and the kind's
 * own options (`init`, `scaling`, `normAxis`, `dInitial`, …).
 */
export interface AddLoRAOptions extends AdapterLayerOptions, TargetOptions {
  /** Inner dimension: LoRA's and DoRA's rank, VeRA's projection width. */
  rank: number;
  /** Scale hyperparameter of LoRA and DoRA (see `loraScaling`); VeRA has none. */
  alpha?: number;
}

/**
 * Wraps the chosen `Linear` layers of `model` in adapters and freezes everything else, in one step: PEFT's
 * `get_peft_model`. The default targets are every `Linear`, as in the tutorial; `targetModules` picks
 * others by name (see `TargetModules`). The model is changed in place and returned. Each wrapped layer gets
 * its own seed derived from `seed`, so runs repeat.
 *
 * The adapters are LoRA by default; `useDora: true` (PEFT's `use_dora`) or `kind: "dora"` makes DoRA adapters
 * (see `DoRALayer`: one more trainable magnitude per output unit), `kind: "vera"` VeRA adapters (see
 * `VeRALayer`). `init` chooses how LoRA's A and B start (see `LoRAInit`). Everything is built before the model
 * changes: a bad option or target leaves it as it was (PiSSA's residuals included).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { countParameters } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * assert.deepEqual(countParameters(model), { total: 142322, trainable: 6248 });
 * const dora = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8, useDora: true });
 * assert.equal(countParameters(dora).trainable, 6248 + 128 + 256 + 10); // one magnitude per output unit
 * model.dispose();
 * dora.dispose();
 * ```
 */
export function addLoRA<M extends Module>(model: M, options: AddLoRAOptions): M {
  if ("merged" in options) {
    throw new Error(
      "addLoRA: the merged option is gone; build the tutorial's LinearWithLoRAMerged by hand, or merge an adapter " +
        "with mergeAdapter.",
    );
  }
  const targets = findTargets(model, options, "addLoRA");
  for (const name of targets) {
    const layer = getModule(model, name);
    if (!isBaseLayer(layer)) {
      throw new Error(`addLoRA: ${name} already carries LoRA (${layer.constructor.name}); use addAdapter for more.`);
    }
  }
  return addAdapter(model, "default", options);
}

/**
 * The layers of `model` that carry adapters, with their module names. A layer built the tutorial's way
 * (`LinearWithLoRA`, `LinearWithLoRAMerged`, `LinearWithDoRA`, `LinearWithDoRAMerged`, or any module whose
 * children are a `linear` and a `lora`) is first turned, in place, into a {@linkcode LinearWithAdapters}
 * that holds the same `linear` and the same adapter as `"default"`: parameter names and variables stay the
 * same, and so do outputs (bit for bit for `LinearWithLoRA` and `LinearWithDoRA`, which compute as PEFT's layer
 * does; up to float32 rounding for the merged forms). So every model-wide operation sees the tutorial's layers.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA, loraLayers } from "./model.ts";
 * import { LinearWithLoRA } from "../lora.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2, targetModules: ["0", "2"] });
 * model.layers[4] = new LinearWithLoRA(model.layers[4], 1, 2); // the tutorial's way
 * assert.deepEqual(loraLayers(model).map(([name]) => name), ["layers.0", "layers.2", "layers.4"]);
 * model.dispose();
 * ```
 */
export function loraLayers(model: Module): [string, LinearWithAdapters][] {
  const out: [string, LinearWithAdapters][] = [];
  for (const [name, module] of namedModules(model)) {
    if (module instanceof LinearWithAdapters) {
      out.push([name, module]);
    } else if (isTutorialLayer(module)) {
      if (name === "") throw new Error("loraLayers: the model itself is a single adapted layer; wrap it in a model.");
      const layer = new LinearWithAdapters(module.linear, module.lora as never);
      setModule(model, name, layer);
      out.push([name, layer]);
    }
  }
  return out;
}

/**
 * The names of the adapters in `model`, in the order they first appear.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addAdapter, addLoRA, listAdapters } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 2, alpha: 2 });
 * assert.deepEqual(listAdapters(model), ["default", "rotated"]);
 * model.dispose();
 * ```
 */
export function listAdapters(model: Module): string[] {
  return [...new Set(loraLayers(model).flatMap(([, layer]) => [...layer.adapters.keys()]))];
}

/** Options for {@linkcode addAdapter}: the same as {@linkcode addLoRA}'s. */
export type AdapterOptions = AddLoRAOptions;

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
 * import assert from "node:assert/strict";
 * import { addAdapter, addLoRA } from "./model.ts";
 * import { namedParameters } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2, targetModules: ["layers.0"] });
 * addAdapter(model, "inverted", { rank: 1, alpha: 2, targetModules: ["layers.0"] });
 * assert.deepEqual(
 *   namedParameters(model).map((p) => p.name).slice(2, 6),
 *   ["layers.0.lora.A", "layers.0.lora.B", "layers.0.lora_inverted.A", "layers.0.lora_inverted.B"],
 * );
 * model.dispose();
 * ```
 */
export function addAdapter<M extends Module>(model: M, name: string, options: AdapterOptions): M {
  checkAdapterName(name);
  const kind = kindNamed(options);
  const targets = adapterTargets(model, name, findTargets(model, options, "addAdapter"), "addAdapter");
  const { targetModules: _targets, excludeModules: _exclude, ...spec } = options;
  let adapters: Module[];
  try {
    adapters = kind.create(targets, spec as AdapterSpec);
  } catch (error) {
    throw prefixed(error, "addAdapter");
  }
  attachAdapters(model, name, targets, adapters);
  return model;
}

/**
 * The targets of a new adapter `name`, each a plain `Linear` or a layer that carries adapters (but not one
 * called `name`), with what the kinds need to know of them; throws, naming the module, for anything else.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adapterTargets, addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2, targetModules: ["layers.0"] });
 * const [first, second] = adapterTargets(model, "other", ["layers.0", "layers.2"], "example");
 * assert.deepEqual([first.existing, second.existing], [["default"], []]);
 * model.dispose();
 * ```
 */
export function adapterTargets(model: Module, name: string, modules: readonly string[], caller: string): Target[] {
  const hosts = new Map(loraLayers(model));
  return modules.map((module) => {
    const layer = hosts.get(module) ?? getModule(model, module);
    if (layer instanceof LinearWithAdapters) {
      if (layer.adapters.has(name)) throw new Error(`${caller}: ${module} already has an adapter named "${name}".`);
      return { module, base: layer.linear, existing: [...layer.adapters.keys()], merged: layer.merged };
    }
    if (!isBaseLayer(layer)) {
      throw new Error(`${caller}: ${module} is a ${layer.constructor.name}, which holds no named adapters.`);
    }
    return { module, base: layer, existing: [], merged: false };
  });
}

/**
 * Puts `adapters` (one per target, already built) into `model` as adapter `name`, the commit step of every
 * operation that attaches adapters (`addLoRA`, `addAdapter`, `loadAdapter`, `addWeightedAdapter`): a plain
 * `Linear` is wrapped in a {@linkcode LinearWithAdapters}, a wrapped layer gains the adapter, and every base
 * weight is frozen. The model's current choice of active adapter is kept, so the new adapter stays frozen and
 * inactive until `setAdapter` (unless the model had none yet). Nothing here can fail once the targets are
 * checked by {@linkcode adapterTargets}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adapterTargets, attachAdapters, listAdapters } from "./model.ts";
 * import { loraKind } from "./lora_kind.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * const targets = adapterTargets(model, "default", ["layers.0"], "example");
 * attachAdapters(model, "default", targets, loraKind.create(targets, { rank: 1, alpha: 2 }));
 * assert.deepEqual(listAdapters(model), ["default"]);
 * model.dispose();
 * ```
 */
export function attachAdapters(model: Module, name: string, targets: readonly Target[], adapters: Module[]): void {
  const hosts = new Map(loraLayers(model));
  const activeBefore = [...hosts.values()][0]?.activeAdapter;
  targets.forEach(({ module }, k) => {
    const host = hosts.get(module);
    if (host !== undefined) {
      host.insertAdapter(name, adapters[k] as never);
    } else {
      const layer = new LinearWithAdapters(getModule(model, module), adapters[k] as never, undefined, {
        adapterName: name,
      });
      if (activeBefore !== undefined) layer.setAdapter(activeBefore);
      setModule(model, module, layer);
    }
  });
  freezeBase(model);
}

/** `error` with `caller: ` in front of its message, unless it is there already. */
function prefixed(error: unknown, caller: string): unknown {
  if (error instanceof Error && !error.message.startsWith(caller)) error.message = `${caller}: ${error.message}`;
  return error;
}

/**
 * Makes `name` the active adapter of every LoRA layer (PEFT's `set_adapter`): `apply` uses it, its A and B
 * become trainable and every other adapter's are frozen, so training afterwards updates only it. Layers
 * without an adapter of that name run their base layer alone.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addAdapter, addLoRA, setAdapter } from "./model.ts";
 * import { trainableVariables } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * setAdapter(model, "rotated");
 * assert.equal(trainableVariables(model).length, 6); // A and B of "rotated" in three layers
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
 * import assert from "node:assert/strict";
 * import { addAdapter, addLoRA, deleteAdapter, listAdapters, loraLayers } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * deleteAdapter(model, "default");
 * assert.deepEqual(listAdapters(model), ["rotated"]);
 * assert.equal(loraLayers(model)[0][1].activeAdapter, "rotated");
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
 * import assert from "node:assert/strict";
 * import { addLoRA, disableAdapters, enableAdapters, loraLayers } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * disableAdapters(model);
 * assert.equal(loraLayers(model)[0][1].adaptersDisabled, true);
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
 * import assert from "node:assert/strict";
 * import { addLoRA, disableAdapters, enableAdapters, loraLayers } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * disableAdapters(model);
 * enableAdapters(model);
 * assert.equal(loraLayers(model)[0][1].adaptersDisabled, false);
 * model.dispose();
 * ```
 */
export function enableAdapters(model: Module): void {
  for (const [, layer] of loraLayers(model)) layer.enableAdapters();
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
