/**
 * The mechanism behind batches whose rows use different adapters, shared by `applyMixedBatch` and the GPT's
 * `generate`; not part of the public API.
 *
 * @module
 */
import type { Module } from "../module.ts";
import { BASE_ADAPTER, listNames } from "./layer.ts";
import { listAdapters, loraLayers, refuseMerged } from "./model.ts";

/**
 * Throws, naming `caller`, unless every name in `adapterNames` is an adapter of `model` or
 * {@linkcode BASE_ADAPTER}, and nothing is merged: what a batch with one adapter per row needs.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { checkAdapterNames } from "./_rows.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * checkAdapterNames(model, ["default", "__base__"], "example"); // fine
 * assert.throws(() => checkAdapterNames(model, ["other"], "example"), /example: unknown adapters "other"/);
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
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { addLoRA } from "./model.ts";
 * import { withAdapterPerRow } from "./_rows.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * const y = withAdapterPerRow(model, ["default", "__base__"], () => model.apply(tf.ones([2, 4])));
 * assert.deepEqual(y.shape, [2, 2]);
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
