/**
 * Serving adapters from one base model: folding one into the base weights in place and taking it out again,
 * folding for good (`mergeAndUnload`), and answering a batch whose rows use different adapters.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { LinearWithDoRA, LinearWithDoRAMerged } from "../dora.ts";
import { LinearWithLoRA, LinearWithLoRAMerged } from "../lora.ts";
import { type Module, namedModules, setModule } from "../module.ts";
import { BASE_ADAPTER, LinearWithAdapters, listNames } from "./layer.ts";
import { listAdapters, loraLayers, refuseMerged } from "./model.ts";

/**
 * Folds adapter `name` (default: each layer's active one) into the base weights of every layer that has it
 * (PEFT's `merge_adapter`), so inference costs one product per layer. Refused, with nothing changed, if
 * the adapter is already merged anywhere, adapters are disabled, or no layer has it.
 *
 * @example
 * ```ts
 * import { addLoRA } from "./model.ts";
 * import { mergeAdapter, unmergeAdapter } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * mergeAdapter(model);
 * unmergeAdapter(model);
 * model.dispose();
 * ```
 */
export function mergeAdapter(model: Module, name?: string): void {
  const layers = loraLayers(model).filter(([, layer]) => layer.adapters.has(name ?? layer.activeAdapter));
  if (layers.length === 0) {
    throw new Error(`mergeAdapter: no layer has adapter ${name === undefined ? "to merge" : `"${name}"`}.`);
  }
  for (const [module, layer] of layers) {
    const which = name ?? layer.activeAdapter;
    if (layer.mergedAdapters.includes(which)) {
      throw new Error(`mergeAdapter: adapter "${which}" of ${module} is already merged; call unmergeAdapter first.`);
    }
    if (layer.adaptersDisabled) throw new Error("mergeAdapter: adapters are disabled; call enableAdapters first.");
  }
  for (const [, layer] of layers) layer.merge(name ?? layer.activeAdapter);
}

/**
 * Takes every merged adapter out of the base weights again (PEFT's `unmerge_adapter`); the weights return
 * to their values before merging up to float32 rounding. Refused if nothing is merged.
 *
 * @example
 * ```ts
 * import { addLoRA } from "./model.ts";
 * import { mergeAdapter, unmergeAdapter } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * mergeAdapter(model);
 * unmergeAdapter(model);
 * model.dispose();
 * ```
 */
export function unmergeAdapter(model: Module): void {
  const merged = loraLayers(model).filter(([, layer]) => layer.merged);
  if (merged.length === 0) throw new Error("unmergeAdapter: no adapter is merged; nothing to unmerge.");
  for (const [, layer] of merged) layer.unmerge();
}

/**
 * Folds each LoRA layer's update into its base weight and puts the plain `Linear` back, freeing the adapters:
 * PEFT's `merge_and_unload`. For {@linkcode LinearWithAdapters} the update is the active adapter's (or what is
 * already merged); the tutorial's {@linkcode LinearWithLoRA} and {@linkcode LinearWithLoRAMerged} fold their
 * one update, and {@linkcode LinearWithDoRA} and {@linkcode LinearWithDoRAMerged} store their `W′`. What is left is a model of plain layers that computes what the adapted model computed, up to
 * float32 rounding. Refused, with nothing changed, while adapters are disabled.
 *
 * @example
 * ```ts
 * import { addLoRA } from "./model.ts";
 * import { mergeAndUnload } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = mergeAndUnload(addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 }));
 * console.log(model.layers[0].constructor.name); // Linear
 * model.dispose();
 * ```
 */
export function mergeAndUnload<M extends Module>(model: M): M {
  if (loraLayers(model).some(([, layer]) => layer.adaptersDisabled)) {
    throw new Error("mergeAndUnload: adapters are disabled; call enableAdapters first.");
  }
  for (const [name, layer] of namedModules(model)) {
    if (layer instanceof LinearWithAdapters) {
      if (!layer.merged && layer.adapters.has(layer.activeAdapter)) layer.merge();
      for (const lora of layer.adapters.values()) lora.dispose();
      setModule(model, name, layer.linear);
    } else if (layer instanceof LinearWithLoRA || layer instanceof LinearWithLoRAMerged) {
      const { linear, lora } = layer;
      tf.tidy(() => linear.weight.assign(tf.add(linear.weight, lora.deltaWeight())));
      lora.dispose();
      setModule(model, name, linear);
    } else if (layer instanceof LinearWithDoRA || layer instanceof LinearWithDoRAMerged) {
      const { linear, lora } = layer;
      tf.tidy(() => linear.weight.assign(lora.adaptedWeight(linear.weight)));
      lora.dispose();
      setModule(model, name, linear);
    }
  }
  return model;
}

/**
 * Runs `model` on a batch in which row `i` (the first axis of `x`) uses adapter `adapterNames[i]`, or
 * {@linkcode BASE_ADAPTER} (`"__base__"`) for the base model alone: PEFT's `model(x, adapter_names=…)`. Each
 * LoRA layer runs one base product for the whole batch plus, per adapter, a low-rank product on that
 * adapter's rows, so many customers' requests share one pass through the base model. Every name must belong
 * to the model; nothing may be merged.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { addAdapter, addLoRA } from "./model.ts";
 * import { applyMixedBatch } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * const logits = applyMixedBatch(model, tf.ones([3, 4]), ["default", "rotated", "__base__"]);
 * console.log(logits.shape); // [3, 2]
 * model.dispose();
 * ```
 */
export function applyMixedBatch<T extends tf.Tensor, R extends tf.Tensor>(
  model: Module & { apply(x: T): R },
  x: T,
  adapterNames: readonly string[],
): R {
  checkAdapterNames(model, adapterNames, "applyMixedBatch");
  if (x.rank < 1 || adapterNames.length !== x.shape[0]) {
    throw new RangeError(
      `applyMixedBatch: got ${adapterNames.length} adapter names for input of shape [${x.shape}]; ` +
        "expected one name per row (the first axis).",
    );
  }
  return tf.tidy(() => withAdapterPerRow(model, adapterNames, () => model.apply(x) as R));
}

/**
 * Throws, naming `caller`, unless every name in `adapterNames` is an adapter of `model` or
 * {@linkcode BASE_ADAPTER}, and nothing is merged: what a batch with one adapter per row needs.
 *
 * @example
 * ```ts
 * import { addLoRA } from "./model.ts";
 * import { checkAdapterNames } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * checkAdapterNames(model, ["default", "__base__"], "example"); // fine
 * model.dispose();
 * ```
 */
export function checkAdapterNames(model: Module, adapterNames: readonly string[], caller: string): void {
  const known = new Set(listAdapters(model));
  const unknown = [...new Set(adapterNames)].filter((name) => name !== BASE_ADAPTER && !known.has(name));
  if (unknown.length > 0) {
    throw new Error(
      `${caller}: unknown adapters ${listNames(unknown)}; the model has ${listNames(known)} ` +
        `(and "${BASE_ADAPTER}" for none).`,
    );
  }
  refuseMerged(model, caller);
}

/**
 * Runs `fn` (which runs `model`) with every LoRA layer of `model` taking row `i`'s adapter from
 * `adapterNames[i]`: the mechanism behind {@linkcode applyMixedBatch}, for callers that run the model
 * themselves, such as `generate`. Check the names first with {@linkcode checkAdapterNames}.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { addLoRA } from "./model.ts";
 * import { withAdapterPerRow } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * const y = withAdapterPerRow(model, ["default", "__base__"], () => model.apply(tf.ones([2, 4])));
 * console.log(y.shape); // [2, 2]
 * model.dispose();
 * ```
 */
export function withAdapterPerRow<R>(model: Module, adapterNames: readonly string[], fn: () => R): R {
  const layers = loraLayers(model).map(([, layer]) => layer);
  const run = (
    i: number,
  ): R => (i === layers.length ? fn() : layers[i].withRowAdapters(adapterNames, () => run(i + 1)));
  return run(0);
}
