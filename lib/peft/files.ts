/**
 * PEFT's adapter files: `adapter_model.safetensors` and `adapter_config.json`, as `save_pretrained` writes
 * them and `load_adapter` reads them, for the adapters of `model.ts`.
 *
 * Files are written with `Deno.writeFile` and read with `Deno.readFile` (permissions `--allow-write` and
 * `--allow-read`); {@linkcode adapterToFiles} and {@linkcode adapterFromFiles} do the same work on bytes.
 *
 * @module
 */
import type { Module } from "../module.ts";
import { decodeSafetensors, encodeSafetensors, type StoredTensor } from "../safetensors.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, parseConfig } from "./config.ts";
import { type AdapterSource, kindReading } from "./kind.ts";
import { checkAdapterName, kindFor, listNames } from "./layer.ts";
import { adapterTargets, attachAdapters, loraLayers, requireAdapter } from "./model.ts";
import { findTargets, matchesTarget } from "./targets.ts";

/** The two files PEFT's `save_pretrained` writes for one adapter, as bytes and text. */
export interface AdapterFiles {
  /** Contents of `adapter_model.safetensors`. */
  safetensors: Uint8Array;
  /** Contents of `adapter_config.json`. */
  config: string;
}

/**
 * Adapter `adapterName` of `model` in PEFT's layout, as bytes and text. Its kind (see `ADAPTER_KINDS`) writes
 * the config and the tensors; every layer of the adapter must be of one kind. For LoRA:
 *
 * Tensors are named `base_model.model.<module>.lora_A.weight`, shape `[r, in]`, and `…lora_B.weight`,
 * shape `[out, r]`: the transposes of this library's A (`[in, r]`) and B (`[r, out]`), because PyTorch
 * stores a linear map as `[out, in]`. The config's `lora_alpha` is chosen so that PEFT computes the same
 * scaling (see `writeConfig` in `config.ts`); the safetensors metadata also records this library's convention
 * and alpha, so that loading here restores them exactly. Layers may differ in rank and alpha (PEFT's
 * `rank_pattern` and `alpha_pattern` record it); they must share convention, DoRA or not, and start (`init`),
 * since the config has one of each.
 *
 * A DoRA adapter is written as PEFT writes one (`utils/save_and_load.py`, `get_peft_model_state_dict`, which
 * drops the `.weight` of PEFT's `lora_magnitude_vector.<adapter>.weight` parameter):
 * `"use_dora": true` in the config and each layer's magnitude under
 * `base_model.model.<module>.lora_magnitude_vector`, shape `[out]`. PEFT's magnitude is per output unit, so
 * an adapter with `normAxis: "input"` cannot be written (an error says so); whether the norm was detached
 * only matters for training and is not recorded.
 *
 * `init_lora_weights` records the start: `"gaussian"` and `"pissa"` as PEFT names them, `true` otherwise.
 * A PiSSA adapter is saved as PEFT's plain `save_pretrained` saves it: the trained A and B, and
 * `"init_lora_weights": "pissa"`. Its A and B only make sense on PiSSA's residual base, so
 * {@linkcode adapterFromFiles} recomputes that residual from the original base weights, as PEFT's loader does.
 * (PEFT's other option, converting the adapter to a plain LoRA of rank 2r on save with
 * `path_initial_model_for_weight_conversion`, is not offered.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adapterToFiles } from "./files.ts";
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * const { safetensors, config } = await adapterToFiles(model);
 * assert.equal(JSON.parse(config).lora_alpha, 32); // PEFT's 32 / r = 8 = this library's scaling
 * const headerBytes = Number(new DataView(safetensors.buffer, safetensors.byteOffset).getBigUint64(0, true));
 * assert.equal(safetensors.length, 8 + headerBytes + 4 * 6248); // size, header, 6248 float32 parameters
 * model.dispose();
 * ```
 */
export async function adapterToFiles(model: Module, adapterName = "default"): Promise<AdapterFiles> {
  requireAdapter(model, adapterName, "adapterToFiles");
  const placed = loraLayers(model).flatMap(([module, layer]) => {
    const adapter = layer.adapters.get(adapterName);
    return adapter === undefined ? [] : [{ module, base: layer.linear, adapter }];
  });
  const kind = kindFor(placed[0].adapter as Module);
  const other = placed.find((p) => kindFor(p.adapter as Module) !== kind);
  if (other !== undefined) {
    throw new Error(
      `adapterToFiles: adapter "${adapterName}" is ${kind.title} in ${placed[0].module} but ` +
        `${kindFor(other.adapter as Module).title} in ${other.module}; a PEFT file holds one kind.`,
    );
  }
  const { config, metadata, tensors } = await kind.save(placed as never, adapterName);
  return { safetensors: encodeSafetensors(tensors, metadata), config: JSON.stringify(config, null, 2) + "\n" };
}

/**
 * Reads an adapter in PEFT's layout into `model` under the name `adapterName` (PEFT's `load_adapter`).
 * Layers that are plain `Linear` are wrapped (their weights frozen) and the adapter is active there; a
 * layer already wrapped gains it as one more adapter, inactive until {@linkcode setAdapter}.
 *
 * Everything is checked before the model is touched, and any problem throws an error that names it, with
 * the model left exactly as it was: a malformed safetensors file (see `decodeSafetensors`), a config that
 * is not a PEFT config of a kind this library reads (`"LORA"`, with or without `use_dora`, and `"VERA"`) or
 * asks for what it does not do (starts such as `"olora"` or `"loftq"` that change the base weight), keys that are missing, unexpected or name no linear
 * layer, `target_modules` or `r` that disagree with the tensors, shapes that do not fit the layers, or a
 * name already in use, or values that are not finite (see `decodeSafetensors`). F16 and BF16 tensors become
 * float32. Without this library's metadata (a file PEFT
 * wrote), scaling is PEFT's `lora_alpha / r`: the `"paper"` convention, or `"rslora"` with `use_rslora`.
 *
 * With `"use_dora": true` each selected module needs its magnitude, `base_model.model.<module>.lora_magnitude_vector`
 * of shape `[out]` (the key with PEFT's `.weight` suffix is read too, as PEFT's loader does), and the
 * adapter becomes a DoRA adapter with the norm per output unit, detached. With `"init_lora_weights": "pissa"`
 * the base weights of the selected layers are first turned into PiSSA's residual (which assumes they are the
 * original base weights, as PEFT does), then A and B are read; such an adapter must be a layer's first.
 * A `"VERA"` file needs the shared `base_model.vera_A` and `base_model.vera_B` (see `vera.ts`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adapterFromFiles, adapterToFiles } from "./files.ts";
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const tuned = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * const base = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * adapterFromFiles(base, await adapterToFiles(tuned));
 * assert.match(String(base.layers[0]).split("\n")[2], /\(lora\): LoRALayer\(in_dim=4, out_dim=3, rank=1, /);
 * tuned.dispose();
 * base.dispose();
 * ```
 */
export function adapterFromFiles(model: Module, files: AdapterFiles, adapterName = "default"): void {
  checkAdapterName(adapterName);
  const config = parseConfig(files.config);
  const kind = kindReading(config);
  kind.checkConfig(config);
  const { tensors, metadata } = decodeSafetensors(files.safetensors, { source: ADAPTER_WEIGHTS_FILE });
  const linear = findTargets(model, {}, "loadAdapter"); // every linear layer, wrapped or not
  const keys = kind.keys(config);

  // Which modules the tensors cover, and does every key name a linear layer of the model (or a shared tensor)?
  const source: AdapterSource = { config, metadata, layers: new Map(), shared: new Map() };
  for (const [key, tensor] of tensors) {
    const shared = key.startsWith("base_model.") ? key.slice("base_model.".length) : "";
    if (keys.shared.includes(shared)) {
      source.shared.set(shared, tensor);
      continue;
    }
    const suffix = keys.layer.find((s) => key.endsWith(`.${s}`));
    const module = suffix === undefined ? undefined : key.slice("base_model.model.".length, -suffix.length - 1);
    if (!key.startsWith("base_model.model.") || module === undefined || !linear.includes(module)) {
      const expected = [
        ...keys.layer.map((s) => `base_model.model.<module>.${s}`),
        ...keys.shared.map((s) => `base_model.${s}`),
      ];
      throw new Error(
        `loadAdapter: unexpected key "${key}" in a ${kind.title} file; expected ${expected.join(", ")} with ` +
          `<module> one of ${listNames(linear)}.`,
      );
    }
    const layer = source.layers.get(module) ?? new Map<string, StoredTensor>();
    layer.set(suffix!, tensor);
    source.layers.set(module, layer);
  }
  const targets = config.target_modules as string | string[];
  const selected = typeof targets === "string" && targets.toLowerCase() === "all-linear"
    ? findTargets(model, { targetModules: targets }, "loadAdapter")
    : linear.filter((module) => matchesTarget(module, targets));
  if (selected.length === 0) {
    throw new Error(
      `loadAdapter: target_modules ${JSON.stringify(targets)} selects none of the model's linear layers ` +
        `${listNames(linear)}.`,
    );
  }
  for (const module of source.layers.keys()) {
    if (!selected.includes(module)) {
      throw new Error(
        `loadAdapter: the file has tensors for ${module}, which target_modules ${JSON.stringify(targets)} ` +
          "does not select.",
      );
    }
  }
  const where = adapterTargets(model, adapterName, selected, "loadAdapter");
  let adapters: Module[];
  try {
    adapters = kind.load(where, source); // checks every tensor against its layer; changes nothing on failure
  } catch (error) {
    if (error instanceof Error && !error.message.startsWith("loadAdapter")) {
      error.message = `loadAdapter: ${error.message}`;
    }
    throw error;
  }
  attachAdapters(model, adapterName, where, adapters);
}

/**
 * Writes adapter `adapterName` of `model` into the folder `dir` as PEFT's `adapter_model.safetensors` and
 * `adapter_config.json` (see {@linkcode adapterToFiles}), creating the folder if needed. Needs
 * `--allow-write` for `dir`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * import { saveAdapter } from "./files.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * await saveAdapter(model, "data/example-adapter");
 * const names = (await Array.fromAsync(Deno.readDir("data/example-adapter"))).map((file) => file.name);
 * assert.deepEqual(names.sort(), ["adapter_config.json", "adapter_model.safetensors"]);
 * await Deno.remove("data/example-adapter", { recursive: true });
 * model.dispose();
 * ```
 */
export async function saveAdapter(model: Module, dir: string, adapterName = "default"): Promise<void> {
  const files = await adapterToFiles(model, adapterName);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeFile(`${dir}/${ADAPTER_WEIGHTS_FILE}`, files.safetensors);
  await Deno.writeTextFile(`${dir}/${ADAPTER_CONFIG_FILE}`, files.config);
}

/**
 * Reads the adapter in folder `dir` (PEFT's layout) into `model` as `adapterName` (see
 * {@linkcode adapterFromFiles}). Needs `--allow-read` for `dir`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * import { loadAdapter, saveAdapter } from "./files.ts";
 * import { listAdapters, setAdapter } from "./model.ts";
 * const tuned = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * await saveAdapter(tuned, "data/example-rotated");
 * const served = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * await loadAdapter(served, "data/example-rotated", "rotated");
 * setAdapter(served, "rotated");
 * assert.deepEqual(listAdapters(served), ["default", "rotated"]);
 * await Deno.remove("data/example-rotated", { recursive: true });
 * tuned.dispose();
 * served.dispose();
 * ```
 */
export async function loadAdapter(model: Module, dir: string, adapterName = "default"): Promise<void> {
  const [safetensors, config] = await Promise.all([
    Deno.readFile(`${dir}/${ADAPTER_WEIGHTS_FILE}`),
    Deno.readTextFile(`${dir}/${ADAPTER_CONFIG_FILE}`),
  ]);
  adapterFromFiles(model, { safetensors, config }, adapterName);
}
