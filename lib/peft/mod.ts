/**
 * What Hugging Face PEFT users expect on top of the tutorial's layers: named adapters on one base model,
 * targets by name, merging in place, mixed-adapter batches, and adapter files in PEFT's own format.
 *
 * - {@link ./layer.ts}: `LinearWithAdapters`, PEFT's layer with named adapters of any kind.
 * - {@link ./kind.ts}: what an adapter kind is, and the table of kinds: {@link ./lora_kind.ts} (LoRA),
 *   {@link ./dora_kind.ts} (DoRA), {@link ./vera.ts} (VeRA, its layer and kind in one file).
 * - {@link ./loraplus.ts}: LoRA+'s optimizer, B learning faster than A.
 * - {@link ./targets.ts}: `target_modules` matching (names, dotted suffixes, regular expressions, `"all-linear"`).
 * - {@link ./model.ts}: `addLoRA` and the model-wide adapter operations (add, select, disable, delete).
 * - {@link ./serve.ts}: merging in place, `mergeAndUnload`, mixed-adapter batches.
 * - {@link ./files.ts}: `saveAdapter` / `loadAdapter` in PEFT's `adapter_model.safetensors` + `adapter_config.json`;
 *   {@link ./config.ts}: the config, with per-layer ranks and alphas (`rank_pattern`, `alpha_pattern`).
 * - {@link ./combine.ts}: `addWeightedAdapter`, several adapters combined into one (cat, svd, TIES, DARE, …);
 *   {@link ./merge_utils.ts}: the merge rules it uses.
 *
 * @example Two adapters on one base, one of them saved in PEFT's format
 * ```ts
 * import assert from "node:assert/strict";
 * import { addAdapter, addLoRA, listAdapters, saveAdapter } from "./mod.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * addAdapter(model, "rotated", { rank: 8, alpha: 4, targetModules: ["layers.0", "layers.2"] });
 * assert.deepEqual(listAdapters(model), ["default", "rotated"]);
 * await saveAdapter(model, "data/example-peft", "rotated");
 * await Deno.remove("data/example-peft", { recursive: true });
 * model.dispose();
 * ```
 *
 * @module
 */
export {
  type AdapterLayerOptions,
  BASE_ADAPTER,
  isTutorialLayer,
  LinearWithAdapters,
  type LinearWithAdaptersOptions,
} from "./layer.ts";
export {
  ADAPTER_KINDS,
  type AdapterKind,
  type AdapterSource,
  type AdapterSpec,
  type Factors,
  kindOf,
  type Placed,
  type SavedAdapter,
  type Target,
} from "./kind.ts";
export { loraKind } from "./lora_kind.ts";
export { createLoraPlusOptimizer, type LoraPlusOptions } from "./loraplus.ts";
export { doraKind } from "./dora_kind.ts";
export { veraKind, VeRALayer, type VeRAOptions, type VeRAProjections, veraProjections } from "./vera.ts";
export { findTargets, matchesTarget, type TargetModules, type TargetOptions } from "./targets.ts";
export {
  type AdapterOptions,
  addAdapter,
  addLoRA,
  type AddLoRAOptions,
  deleteAdapter,
  disableAdapters,
  enableAdapters,
  listAdapters,
  loraLayers,
  setAdapter,
} from "./model.ts";
export { applyMixedBatch, mergeAdapter, mergeAndUnload, unmergeAdapter } from "./serve.ts";
export { type AdapterFiles, adapterFromFiles, adapterToFiles, loadAdapter, saveAdapter } from "./files.ts";
export { layerRank, type LayerSettings, layerSettings, type LoraConfig, readConfig, writeConfig } from "./config.ts";
export { addWeightedAdapter, COMBINATION_TYPES, type CombinationType, type WeightedAdapterOptions } from "./combine.ts";
export { type MajoritySignMethod, type MergeOptions, type MergeRule, mergeTaskTensors } from "./merge_utils.ts";
