/**
 * PEFT's adapter files for a model loaded from a checkpoint: the library's `adapterToFiles`, with the config
 * fields PEFT fills in from the base model (`base_model_name_or_path`, `task_type`).
 *
 * @module
 */
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from "../peft/config.ts";
import { adapterToFiles } from "../peft/files.ts";
import type { PretrainedCausalLM } from "./models.ts";

/** Options for {@linkcode saveAdapterForModel}. */
export interface SaveAdapterOptions {
  /** The adapter to write; default `"default"`. */
  adapterName?: string;
  /**
   * PEFT's `base_model_name_or_path`: the hub name (such as `HuggingFaceTB/SmolLM2-135M`) or folder the base
   * model comes from. Default: the model's `config.nameOrPath` (the folder `loadPretrained` read).
   */
  baseModel?: string | null;
}

/**
 * Writes adapter `adapterName` of `model` into `dir` as PEFT's `adapter_model.safetensors` and
 * `adapter_config.json` (see `adapterToFiles`), with `base_model_name_or_path` and `"task_type": "CAUSAL_LM"`
 * as PEFT's `save_pretrained` records them for a `PeftModelForCausalLM`, so that
 * `AutoPeftModelForCausalLM.from_pretrained(dir)` can find the base model. Returns the size of the weights
 * file in bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "../peft/mod.ts";
 * import { loadPretrained } from "./load.ts";
 * import { saveAdapterForModel } from "./adapter.ts";
 * const { model } = await loadPretrained("data/fixtures/hf/tiny-qwen2");
 * addLoRA(model, { rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj"], scaling: "paper" });
 * await saveAdapterForModel(model, "data/example-hf-adapter", { baseModel: "tiny-qwen2" });
 * const config = JSON.parse(await Deno.readTextFile("data/example-hf-adapter/adapter_config.json"));
 * assert.equal(config.base_model_name_or_path, "tiny-qwen2");
 * assert.equal(config.lora_alpha, 4);
 * await Deno.remove("data/example-hf-adapter", { recursive: true });
 * model.dispose();
 * ```
 */
export async function saveAdapterForModel(
  model: PretrainedCausalLM,
  dir: string,
  options: SaveAdapterOptions = {},
): Promise<number> {
  const files = await adapterToFiles(model, options.adapterName ?? "default");
  const config = JSON.parse(files.config);
  config.base_model_name_or_path = options.baseModel === undefined ? model.config.nameOrPath : options.baseModel;
  config.task_type = "CAUSAL_LM";
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeFile(`${dir}/${ADAPTER_WEIGHTS_FILE}`, files.safetensors);
  await Deno.writeTextFile(`${dir}/${ADAPTER_CONFIG_FILE}`, JSON.stringify(config, null, 2) + "\n");
  return files.safetensors.length;
}
