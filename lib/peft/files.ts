/**
 * PEFT's adapter files: `adapter_model.safetensors` and `adapter_config.json`, as `save_pretrained` writes
 * them and `load_adapter` reads them, for the adapters of `model.ts`.
 *
 * Files are written with `Deno.writeFile` and read with `Deno.readFile` (permissions `--allow-write` and
 * `--allow-read`); {@linkcode adapterToFiles} and {@linkcode adapterFromFiles} do the same work on bytes.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { DoRALayer } from "../dora.ts";
import { Linear } from "../layers.ts";
import type { LoRAInit } from "../lora.ts";
import { getModule, type Module } from "../module.ts";
import { decodeSafetensors, encodeSafetensors, type StoredTensor, type TensorData } from "../safetensors.ts";
import { assignFrom, transpose2d } from "../weights.ts";
import { checkAdapterName, LinearWithAdapters, listNames } from "./layer.ts";
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  layerRank,
  type LayerSettings,
  layerSettings,
  MAGNITUDE,
  readConfig,
  writeConfig,
} from "./config.ts";
import { attachWrappers, keepingWeights, loraLayers, requireAdapter } from "./model.ts";
import { findTargets, matchesTarget } from "./targets.ts";

/** The two files PEFT's `save_pretrained` writes for one adapter, as bytes and text. */
export interface AdapterFiles {
  /** Contents of `adapter_model.safetensors`. */
  safetensors: Uint8Array;
  /** Contents of `adapter_config.json`. */
  config: string;
}

/**
 * Adapter `adapterName` of `model` in PEFT's layout, as bytes and text.
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
 * import { adapterToFiles } from "./files.ts";
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * const { safetensors, config } = await adapterToFiles(model);
 * console.log(JSON.parse(config).lora_alpha); // 32: PEFT's 32 / r = 8 = this library's scaling
 * console.log(safetensors.length); // 4 bytes × 6248 parameters + header
 * model.dispose();
 * ```
 */
export async function adapterToFiles(model: Module, adapterName = "default"): Promise<AdapterFiles> {
  requireAdapter(model, adapterName, "adapterToFiles");
  const layers = loraLayers(model).filter(([, layer]) => layer.adapters.has(adapterName));
  const loras = layers.map(([module, layer]) => [module, layer.adapters.get(adapterName)!] as const);
  const { config, metadata } = writeConfig(loras, adapterName);
  const tensors = new Map<string, TensorData>();
  for (const [module, lora] of loras) {
    tensors.set(`base_model.model.${module}.lora_A.weight`, transpose2d(await lora.A.data(), lora.A.shape));
    tensors.set(`base_model.model.${module}.lora_B.weight`, transpose2d(await lora.B.data(), lora.B.shape));
    if (lora instanceof DoRALayer) {
      tensors.set(`base_model.model.${module}.${MAGNITUDE}`, {
        shape: lora.m.shape,
        data: await lora.m.data() as Float32Array,
      });
    }
  }
  return { safetensors: encodeSafetensors(tensors, metadata), config: JSON.stringify(config, null, 2) + "\n" };
}

/**
 * Reads an adapter in PEFT's layout into `model` under the name `adapterName` (PEFT's `load_adapter`).
 * Layers that are plain `Linear` are wrapped (their weights frozen) and the adapter is active there; a
 * layer already wrapped gains it as one more adapter, inactive until {@linkcode setAdapter}.
 *
 * Everything is checked before the model is touched, and any problem throws an error that names it, with
 * the model left exactly as it was: a malformed safetensors file (see `decodeSafetensors`), a config that
 * is not PEFT LoRA JSON or asks for what this library does not do (`fan_in_fan_out`, starts such as
 * `"olora"` or `"loftq"` that change the base weight), keys that are missing, unexpected or name no linear
 * layer, `target_modules` or `r` that disagree with the tensors, shapes that do not fit the layers, or a
 * name already in use. F16 and BF16 tensors become float32. Without this library's metadata (a file PEFT
 * wrote), scaling is PEFT's `lora_alpha / r`: the `"paper"` convention, or `"rslora"` with `use_rslora`.
 *
 * With `"use_dora": true` each selected module needs its magnitude, `base_model.model.<module>.lora_magnitude_vector`
 * of shape `[out]` (the key with PEFT's `.weight` suffix is read too, as PEFT's loader does), and the
 * adapter becomes a DoRA adapter with the norm per output unit, detached. With `"init_lora_weights": "pissa"`
 * the base weights of the selected layers are first turned into PiSSA's residual (which assumes they are the
 * original base weights, as PEFT does), then A and B are read; such an adapter must be a layer's first.
 *
 * @example
 * ```ts
 * import { adapterFromFiles, adapterToFiles } from "./files.ts";
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const tuned = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * const base = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * adapterFromFiles(base, await adapterToFiles(tuned));
 * console.log(String(base.layers[0]).split("\n")[2]); // (lora): LoRALayer(in_dim=4, out_dim=3, rank=1, …)
 * tuned.dispose();
 * base.dispose();
 * ```
 */
export function adapterFromFiles(model: Module, files: AdapterFiles, adapterName = "default"): void {
  checkAdapterName(adapterName);
  const config = readConfig(files.config);
  const { tensors, metadata } = decodeSafetensors(files.safetensors);
  const linear = findTargets(model, {}, "loadAdapter"); // every linear layer, wrapped or not

  // Which modules the tensors cover, and does every key name a linear layer of the model?
  const byModule = new Map<string, { A?: StoredTensor; B?: StoredTensor; m?: StoredTensor }>();
  for (const [key, tensor] of tensors) {
    const match = /^base_model\.model\.(.+)\.(?:lora_([AB])\.weight|lora_magnitude_vector(?:\.weight)?)$/.exec(key);
    if (match === null || !linear.includes(match[1])) {
      throw new Error(
        `loadAdapter: unexpected key "${key}"; expected base_model.model.<module>.lora_A.weight, …lora_B.weight` +
          `${config.use_dora ? " or …lora_magnitude_vector" : ""} with <module> one of ${listNames(linear)}.`,
      );
    }
    const [module, which] = [match[1], match[2] ?? "m"];
    if (which === "m" && !config.use_dora) {
      throw new Error(`loadAdapter: unexpected key "${key}": a DoRA magnitude, but the config does not set use_dora.`);
    }
    if (which === "m" && byModule.get(module)?.m !== undefined) {
      throw new Error(`loadAdapter: ${module} has two magnitude keys (with and without ".weight"); expected one.`);
    }
    byModule.set(module, { ...byModule.get(module), [which]: tensor });
  }
  const targets = config.target_modules;
  const selected = typeof targets === "string" && targets.toLowerCase() === "all-linear"
    ? findTargets(model, { targetModules: targets }, "loadAdapter")
    : linear.filter((module) => matchesTarget(module, targets));
  if (selected.length === 0) {
    throw new Error(
      `loadAdapter: target_modules ${JSON.stringify(targets)} selects none of the model's linear layers ` +
        `${listNames(linear)}.`,
    );
  }
  for (const module of selected) {
    for (const which of ["A", "B"] as const) {
      if (byModule.get(module)?.[which] === undefined) {
        throw new Error(
          `loadAdapter: missing key "base_model.model.${module}.lora_${which}.weight": target_modules ` +
            `${JSON.stringify(targets)} selects ${module}.`,
        );
      }
    }
    if (config.use_dora && byModule.get(module)?.m === undefined) {
      throw new Error(
        `loadAdapter: missing key "base_model.model.${module}.${MAGNITUDE}": the config sets use_dora and ` +
          `target_modules ${JSON.stringify(targets)} selects ${module}.`,
      );
    }
  }
  for (const module of byModule.keys()) {
    if (!selected.includes(module)) {
      throw new Error(
        `loadAdapter: the file has tensors for ${module}, which target_modules ${JSON.stringify(targets)} ` +
          "does not select.",
      );
    }
  }

  // Shapes: A is [r, in] and B is [out, r] in the file, with r from rank_pattern or the config's r.
  const layers = new Map(selected.map((module) => [module, getModule(model, module) as Linear | LinearWithAdapters]));
  const settings = new Map<string, LayerSettings>();
  for (const [module, layer] of layers) {
    const r = layerRank(config, module);
    const base = layer instanceof LinearWithAdapters ? layer.linear : layer;
    if (!(base instanceof Linear)) {
      throw new Error(`loadAdapter: ${module} is a ${layer.constructor.name}, which holds no named adapters.`);
    }
    const { A, B } = byModule.get(module) as Record<"A" | "B", StoredTensor>; // both present, checked above
    if (A.shape.length === 2 && B.shape.length === 2 && (A.shape[0] !== r || B.shape[1] !== r)) {
      throw new RangeError(
        `loadAdapter: the config says r = ${r} for ${module}, but it has lora_A [${A.shape}] and lora_B [${B.shape}].`,
      );
    }
    const [wantA, wantB] = [[r, base.inFeatures], [base.outFeatures, r]];
    if (!tf.util.arraysEqual(A.shape, wantA) || !tf.util.arraysEqual(B.shape, wantB)) {
      throw new RangeError(
        `loadAdapter: ${module} is a ${base.inFeatures}→${base.outFeatures} linear layer, so with r = ${r} it ` +
          `needs lora_A [${wantA}] and lora_B [${wantB}]; the file has [${A.shape}] and [${B.shape}].`,
      );
    }
    if (r > Math.min(base.inFeatures, base.outFeatures)) {
      throw new RangeError(`loadAdapter: r = ${r} exceeds min(in, out) of the ${module} layer.`);
    }
    const m = byModule.get(module)?.m;
    if (m !== undefined && !tf.util.arraysEqual(m.shape, [base.outFeatures])) {
      throw new RangeError(
        `loadAdapter: ${module} has ${base.outFeatures} output units, so its ${MAGNITUDE} must have shape ` +
          `[${base.outFeatures}]; the file has [${m.shape}].`,
      );
    }
    if (layer instanceof LinearWithAdapters && layer.adapters.has(adapterName)) {
      throw new Error(
        `loadAdapter: ${module} already has an adapter named "${adapterName}"; delete it or choose another name.`,
      );
    }
    if (layer instanceof LinearWithAdapters && config.init_lora_weights === "pissa") {
      throw new Error(
        `loadAdapter: the adapter was trained from PiSSA's start, which replaces the base weight of ${module} by a ` +
          "residual; that layer already has adapters, so the file can only be loaded onto a model without them.",
      );
    }
    if (layer instanceof LinearWithAdapters && config.use_dora && layer.merged) {
      throw new Error(
        `loadAdapter: ${module} has adapters merged into its base weight, from which a DoRA adapter starts; ` +
          "call unmergeAdapter first.",
      );
    }
    settings.set(module, layerSettings(config, metadata, module));
  }

  // Everything checked: build the adapters, then attach them. (Should a step still fail, what was built is
  // undone and PiSSA's residuals are put back.)
  const activeBefore = loraLayers(model)[0]?.[1].activeAdapter;
  const wrappers = new Map<string, LinearWithAdapters>();
  const extended: LinearWithAdapters[] = [];
  const init: LoRAInit | undefined = config.init_lora_weights === "pissa" || config.init_lora_weights === "gaussian"
    ? config.init_lora_weights
    : undefined;
  const useDora = config.use_dora === true;
  const plain = [...layers.values()].filter((layer): layer is Linear => layer instanceof Linear);
  keepingWeights(init === "pissa" ? plain : [], () => {
    try {
      for (const [module, layer] of layers) {
        const { rank: r, alpha, convention } = settings.get(module)!;
        const options = { scaling: convention, adapterName, useDora, init };
        let lora;
        if (layer instanceof LinearWithAdapters) {
          lora = layer.addAdapter(adapterName, r, alpha, options);
          extended.push(layer);
        } else {
          const wrapper = new LinearWithAdapters(layer, r, alpha, options);
          // Keep the model's current choice of adapter, if it has one, on newly wrapped layers too.
          if (activeBefore !== undefined) wrapper.setAdapter(activeBefore);
          wrappers.set(module, wrapper);
          lora = wrapper.adapters.get(adapterName)!;
        }
        const { A, B, m } = byModule.get(module)!;
        assignFrom(lora.A, transpose2d(A!.data, A!.shape));
        assignFrom(lora.B, transpose2d(B!.data, B!.shape));
        if (lora instanceof DoRALayer) assignFrom(lora.m, m!);
      }
    } catch (error) {
      for (const layer of extended) layer.deleteAdapter(adapterName);
      for (const wrapper of wrappers.values()) wrapper.lora.dispose();
      throw error;
    }
  });
  attachWrappers(model, wrappers);
}

/**
 * Writes adapter `adapterName` of `model` into the folder `dir` as PEFT's `adapter_model.safetensors` and
 * `adapter_config.json` (see {@linkcode adapterToFiles}), creating the folder if needed. Needs
 * `--allow-write` for `dir`.
 *
 * @example
 * ```ts
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * import { saveAdapter } from "./files.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * await saveAdapter(model, "data/example-adapter");
 * for await (const file of Deno.readDir("data/example-adapter")) console.log(file.name);
 * // adapter_model.safetensors, adapter_config.json
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
 * import { addLoRA } from "./model.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * import { loadAdapter, saveAdapter } from "./files.ts";
 * import { listAdapters, setAdapter } from "./model.ts";
 * const tuned = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * await saveAdapter(tuned, "data/example-rotated");
 * const served = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * await loadAdapter(served, "data/example-rotated", "rotated");
 * setAdapter(served, "rotated");
 * console.log(listAdapters(served)); // ["default", "rotated"]
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
