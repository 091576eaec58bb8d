/**
 * Serving adapters from one base model: folding one into the base weights in place and taking it out again,
 * folding for good (`mergeAndUnload`), and answering a batch whose rows use different adapters.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { BaseLayer } from "../layers.ts";
import { type Module, setModule } from "../module.ts";
import { checkAdapterNames, withAdapterPerRow } from "./_rows.ts";
import { loraLayers } from "./model.ts";

/**
 * Folds adapter `name` (default: each layer's active one) into the base weights of every layer that has it
 * (PEFT's `merge_adapter`), so inference costs one product per layer. Refused, with nothing changed, if
 * the adapter is already merged anywhere, adapters are disabled, or no layer has it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA, loraLayers } from "./model.ts";
 * import { mergeAdapter, unmergeAdapter } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * mergeAdapter(model);
 * assert.ok(loraLayers(model).every(([, layer]) => layer.merged));
 * assert.throws(() => mergeAdapter(model), /already merged/);
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
 * import assert from "node:assert/strict";
 * import { addLoRA, loraLayers } from "./model.ts";
 * import { mergeAdapter, unmergeAdapter } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * mergeAdapter(model);
 * unmergeAdapter(model);
 * assert.ok(loraLayers(model).every(([, layer]) => !layer.merged));
 * assert.throws(() => unmergeAdapter(model), /nothing to unmerge/);
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
 * PEFT's `merge_and_unload`. The update is each layer's active adapter (or what is already merged), folded as
 * its kind folds it (LoRA and VeRA add ΔW, DoRA stores `W′`); the tutorial's layers (`LinearWithLoRA`, …) fold
 * their one adapter. What is left is a model of plain layers that computes what the adapted model computed, up
 * to float32 rounding. Refused, with nothing changed, while adapters are disabled.
 *
 * On a quantized base (QLoRA) merging re-quantizes `W + ΔW`, which rounds it again; the merged model then differs
 * from the adapted one by that rounding (notebook 14 measures it). `{ dequantize: true }` instead replaces each
 * quantized base by a float32 copy of its dequantized weight and merges into that, exactly: a float32 model that
 * computes what the adapted model computed. PEFT 0.21.0 does the first by default (`merge_and_unload` on a
 * bitsandbytes base dequantizes, adds ΔW and quantizes again, with a warning about rounding); the second is what
 * its documentation suggests doing by hand, loading the base in float and merging there.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { mergeAndUnload } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = mergeAndUnload(addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 }));
 * assert.equal(model.layers[0].constructor.name, "Linear");
 * model.dispose();
 * ```
 */
export function mergeAndUnload<M extends Module>(model: M, options: { dequantize?: boolean } = {}): M {
  const layers = loraLayers(model); // the tutorial's layers too
  if (layers.some(([, layer]) => layer.adaptersDisabled)) {
    throw new Error("mergeAndUnload: adapters are disabled; call enableAdapters first.");
  }
  if (options.dequantize) {
    const merged = layers.find(([, layer]) => layer.merged && layer.linear.lossyWrites);
    if (merged !== undefined) {
      throw new Error(
        `mergeAndUnload: ${merged[0]} is already merged into its quantized base; dequantizing now would keep that ` +
          "rounding. Reload the quantized base and merge into float32 from the start.",
      );
    }
    for (const [, layer] of layers) {
      if (!layer.linear.lossyWrites) continue;
      const quantized = layer.linear as BaseLayer & { toLinear(): BaseLayer };
      layer.linear = quantized.toLinear(); // a float32 copy of the dequantized weight, then an exact merge
      quantized.dispose();
    }
  }
  for (const [name, layer] of layers) {
    if (!layer.merged && layer.adapters.has(layer.activeAdapter)) layer.merge();
    for (const adapter of layer.adapters.values()) adapter.dispose();
    setModule(model, name, layer.linear);
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
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { addAdapter, addLoRA } from "./model.ts";
 * import { applyMixedBatch } from "./serve.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * const logits = applyMixedBatch(model, tf.ones([3, 4]), ["default", "rotated", "__base__"]);
 * assert.deepEqual(logits.shape, [3, 2]);
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
