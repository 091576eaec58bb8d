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
import { type LoRAInit, type LoRALayer, loraScaling, type ScalingConvention } from "../lora.ts";
import { getModule, type Module } from "../module.ts";
import { decodeSafetensors, encodeSafetensors, type StoredTensor, type TensorData } from "../safetensors.ts";
import { assignFrom, transpose2d } from "../weights.ts";
import { checkAdapterName, LinearWithAdapters, listNames } from "./layer.ts";
import { attachWrappers, keepingWeights, loraLayers, requireAdapter } from "./model.ts";
import { findTargets, matchesTarget, type TargetModules } from "./targets.ts";

/** The two files PEFT's `save_pretrained` writes for one adapter, as bytes and text. */
export interface AdapterFiles {
  /** Contents of `adapter_model.safetensors`. */
  safetensors: Uint8Array;
  /** Contents of `adapter_config.json`. */
  config: string;
}

/**
 * The fields of PEFT's `LoraConfig` that this library writes and reads. PEFT's scaling is
 * `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`.
 */
export interface LoraConfig {
  /** Always `"LORA"`. */
  peft_type: "LORA";
  /** The rank. */
  r: number;
  /** PEFT's alpha: the tutorial's `alpha·r`, or the paper's and rsLoRA's `alpha` as is. */
  lora_alpha: number;
  /** Module names the adapter applies to, such as `layers.0`, or one regular expression (see `TargetModules`). */
  target_modules: TargetModules;
  /** Whether scaling is `lora_alpha / sqrt(r)`. */
  use_rslora: boolean;
  /** Other PEFT fields, written with PEFT's defaults. */
  [field: string]: unknown;
}

/** File names inside an adapter folder, as PEFT names them. */
const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
const ADAPTER_CONFIG_FILE = "adapter_config.json";

/** The key of a DoRA magnitude after the module name, as PEFT writes it (`save_and_load.py`). */
const MAGNITUDE = "lora_magnitude_vector";

/**
 * The `init_lora_weights` strings a file may carry: those after which PEFT's loader only overwrites A and B
 * (`"eva"` fills A from data, but leaves the base alone), and PiSSA, whose residual is recomputed here.
 */
const READABLE_INITS = ["gaussian", "eva", "pissa"];

/** PEFT's `init_lora_weights` for a start of this library: its own names, `true` for the other random ones. */
function peftInit(init: LoRAInit): boolean | string {
  return init === "gaussian" || init === "pissa" ? init : true;
}

/** Keys under which this library records its own scaling convention in the safetensors metadata. */
const CONVENTION_KEY = "lora_scaling_convention";
const ALPHA_KEY = "lora_alpha_as_given";

/**
 * Adapter `adapterName` of `model` in PEFT's layout, as bytes and text.
 *
 * Tensors are named `base_model.model.<module>.lora_A.weight`, shape `[r, in]`, and `…lora_B.weight`,
 * shape `[out, r]`: the transposes of this library's A (`[in, r]`) and B (`[r, out]`), because PyTorch
 * stores a linear map as `[out, in]`. The config's `lora_alpha` is chosen so that PEFT computes the same
 * scaling (see {@linkcode LoraConfig}); the safetensors metadata also records this library's convention and
 * alpha, so that loading here restores them exactly. Every layer of the adapter must share rank, alpha,
 * convention, DoRA or not, and start (`init`), since the config has one of each.
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
  const [, first] = loras[0];
  const describe = (lora: LoRALayer) =>
    `rank ${lora.rank}, alpha ${lora.alpha} (${lora.convention})${lora instanceof DoRALayer ? ", DoRA" : ""}` +
    (peftInit(lora.init) === true ? "" : `, init_lora_weights ${JSON.stringify(peftInit(lora.init))}`);
  for (const [module, lora] of loras) {
    if (describe(lora) !== describe(first)) {
      throw new Error(
        `adapterToFiles: adapter "${adapterName}" has ${describe(lora)} in ${module} but ${describe(first)} in ` +
          `${loras[0][0]}; PEFT's config holds one of each.`,
      );
    }
    if (lora instanceof DoRALayer && lora.normAxis !== "output") {
      throw new Error(
        `adapterToFiles: adapter "${adapterName}" is DoRA with one magnitude per input unit (normAxis "input") in ` +
          `${module}; PEFT's DoRA files hold one per output unit (lora_magnitude_vector [out]), so it cannot be saved.`,
      );
    }
  }
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
  const { rank, alpha, convention } = first;
  const config: LoraConfig = {
    peft_type: "LORA",
    task_type: null,
    base_model_name_or_path: null,
    r: rank,
    lora_alpha: convention === "tutorial" ? alpha * rank : alpha,
    use_rslora: convention === "rslora",
    target_modules: loras.map(([module]) => module),
    lora_dropout: 0,
    bias: "none",
    fan_in_fan_out: false,
    init_lora_weights: peftInit(first.init),
    inference_mode: true,
    modules_to_save: null,
    // PEFT writes use_dora always; its loader reads a missing one as false, so plain LoRA files leave it out.
    ...(first instanceof DoRALayer ? { use_dora: true } : {}),
  };
  const metadata = { format: "pt", [CONVENTION_KEY]: convention, [ALPHA_KEY]: String(alpha) };
  return { safetensors: encodeSafetensors(tensors, metadata), config: JSON.stringify(config, null, 2) + "\n" };
}

/**
 * Reads an adapter in PEFT's layout into `model` under the name `adapterName` (PEFT's `load_adapter`).
 * Layers that are plain `Linear` are wrapped (their weights frozen) and the adapter is active there; a
 * layer already wrapped gains it as one more adapter, inactive until {@linkcode setAdapter}.
 *
 * Everything is checked before the model is touched, and any problem throws an error that names it, with
 * the model left exactly as it was: a malformed safetensors file (see `decodeSafetensors`), a config that
 * is not PEFT LoRA JSON or asks for what this library does not do (rank or alpha patterns, starts such as
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
  const config = parseConfig(files.config);
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

  // Shapes: A is [r, in] and B is [out, r] in the file.
  const r = config.r;
  const layers = new Map(selected.map((module) => [module, getModule(model, module) as Linear | LinearWithAdapters]));
  for (const [module, layer] of layers) {
    const base = layer instanceof LinearWithAdapters ? layer.linear : layer;
    if (!(base instanceof Linear)) {
      throw new Error(`loadAdapter: ${module} is a ${layer.constructor.name}, which holds no named adapters.`);
    }
    const { A, B } = byModule.get(module) as Record<"A" | "B", StoredTensor>; // both present, checked above
    if (A.shape.length === 2 && B.shape.length === 2 && (A.shape[0] !== r || B.shape[1] !== r)) {
      throw new RangeError(
        `loadAdapter: the config says r = ${r} but ${module} has lora_A [${A.shape}] and lora_B [${B.shape}].`,
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
  }

  const { alpha, convention } = readScaling(config, metadata);

  // Everything checked: build the adapters, then attach them. (Should a step still fail, what was built is
  // undone and PiSSA's residuals are put back.)
  const activeBefore = loraLayers(model)[0]?.[1].activeAdapter;
  const wrappers = new Map<string, LinearWithAdapters>();
  const extended: LinearWithAdapters[] = [];
  const init: LoRAInit | undefined = config.init_lora_weights === "pissa" || config.init_lora_weights === "gaussian"
    ? config.init_lora_weights
    : undefined;
  const options = { scaling: convention, adapterName, useDora: config.use_dora === true, init };
  const plain = [...layers.values()].filter((layer): layer is Linear => layer instanceof Linear);
  keepingWeights(init === "pissa" ? plain : [], () => {
    try {
      for (const [module, layer] of layers) {
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

function parseConfig(text: string): LoraConfig {
  const where = `loadAdapter: ${ADAPTER_CONFIG_FILE}`;
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`${where} is not valid JSON (${(error as Error).message}).`);
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw new SyntaxError(`${where} must hold a JSON object.`);
  }
  const c = config as Record<string, unknown>;
  if (c.peft_type !== "LORA") {
    throw new Error(`${where} has peft_type ${JSON.stringify(c.peft_type)}; expected "LORA".`);
  }
  if (!Number.isInteger(c.r) || (c.r as number) <= 0) {
    throw new RangeError(`${where} has r = ${JSON.stringify(c.r)}; expected a positive integer.`);
  }
  if (typeof c.lora_alpha !== "number" || !Number.isFinite(c.lora_alpha)) {
    throw new RangeError(`${where} has lora_alpha = ${JSON.stringify(c.lora_alpha)}; expected a finite number.`);
  }
  const targets = c.target_modules;
  if (!(typeof targets === "string" || (Array.isArray(targets) && targets.every((t) => typeof t === "string")))) {
    throw new Error(
      `${where} has target_modules ${JSON.stringify(targets)}; expected a list of names or a regular expression.`,
    );
  }
  for (const flag of ["use_rslora", "use_dora"]) {
    if (c[flag] !== undefined && c[flag] !== null && typeof c[flag] !== "boolean") {
      throw new Error(`${where} has ${flag} ${JSON.stringify(c[flag])}; expected true or false.`);
    }
  }
  const init = c.init_lora_weights;
  if (
    !(init === undefined || typeof init === "boolean" || (typeof init === "string" && READABLE_INITS.includes(init)))
  ) {
    throw new Error(
      `${where} has init_lora_weights ${JSON.stringify(init)}; this library reads true, false, ` +
        `${
          READABLE_INITS.map((i) => `"${i}"`).join(", ")
        } (the starts that leave the base weight as it is, and PiSSA).`,
    );
  }
  const unsupported = [
    ["fan_in_fan_out", c.fan_in_fan_out === true],
    ["rank_pattern", isNonEmptyObject(c.rank_pattern)],
    ["alpha_pattern", isNonEmptyObject(c.alpha_pattern)],
  ].filter(([, used]) => used).map(([field]) => field);
  if (unsupported.length > 0) throw new Error(`${where} uses ${unsupported.join(", ")}, which this library does not.`);
  return { ...c, use_rslora: c.use_rslora === true } as LoraConfig;
}

/** This library's alpha and convention for a PEFT config, refined by our own metadata when present. */
function readScaling(
  config: LoraConfig,
  metadata: Record<string, string>,
): { alpha: number; convention: ScalingConvention } {
  const peftConvention: ScalingConvention = config.use_rslora ? "rslora" : "paper";
  const recorded = metadata[CONVENTION_KEY];
  if (recorded === undefined) return { alpha: config.lora_alpha, convention: peftConvention };
  const alpha = Number(metadata[ALPHA_KEY]);
  const convention = recorded as ScalingConvention;
  const fits = (convention === "tutorial" && !config.use_rslora) || convention === peftConvention;
  if (!fits || !Number.isFinite(alpha)) {
    throw new Error(
      `loadAdapter: the safetensors metadata records convention "${recorded}", alpha ${metadata[ALPHA_KEY]}, ` +
        `which the config (use_rslora: ${config.use_rslora}) does not allow.`,
    );
  }
  const peftScaling = config.use_rslora ? config.lora_alpha / Math.sqrt(config.r) : config.lora_alpha / config.r;
  const ours = loraScaling(alpha, config.r, convention);
  if (Math.abs(ours - peftScaling) > 1e-6 * Math.max(1, Math.abs(peftScaling))) {
    throw new Error(
      `loadAdapter: the config's scaling (lora_alpha ${config.lora_alpha}, r ${config.r}) is ${peftScaling}, but ` +
        `the metadata's alpha ${alpha} (${convention}) gives ${ours}.`,
    );
  }
  return { alpha, convention };
}

function isNonEmptyObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && Object.keys(value).length > 0;
}
