/**
 * Weights and adapters as files, and many adapters on one base model.
 *
 * - {@linkcode saveWeights} / {@linkcode loadWeights}: every parameter of a model in one safetensors file,
 *   named as `namedParameters` names them, so a trained base model can be reused.
 * - {@linkcode saveAdapter} / {@linkcode loadAdapter}: one LoRA adapter in Hugging Face PEFT's layout,
 *   `adapter_model.safetensors` plus `adapter_config.json` (PEFT's `save_pretrained` / `load_adapter` layout).
 * - {@linkcode addAdapter}, {@linkcode setAdapter}, {@linkcode disableAdapters}, {@linkcode deleteAdapter},
 *   {@linkcode mergeAdapter}, {@linkcode unmergeAdapter}: PEFT's model-level operations, applied to every
 *   LoRA layer of a model; {@linkcode applyMixedBatch} serves a batch whose rows use different adapters.
 *
 * Files are written with `Deno.writeFile` and read with `Deno.readFile` (permissions `--allow-write` and
 * `--allow-read`); {@linkcode weightsToSafetensors}, {@linkcode adapterToFiles} and their inverses do the
 * same work on bytes.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  BASE_ADAPTER,
  checkAdapterName,
  Linear,
  LinearWithLoRA,
  loraScaling,
  type Module,
  type ScalingConvention,
} from "./layers.ts";
import { type AddLoRAOptions, freezeLinearLayers } from "./model.ts";
import { decodeSafetensors, encodeSafetensors, type StoredTensor, type TensorData } from "./safetensors.ts";

/**
 * Every parameter of `model` as the bytes of a safetensors file, under its `namedParameters` name.
 *
 * A `Linear` weight is stored as PyTorch stores it, `[out, in]` (this library keeps `[in, out]`); everything
 * else keeps its shape. The file is then the `state_dict` of the tutorial's PyTorch model with the same
 * layers: `model.load_state_dict(safetensors.torch.load_file(path))` reads it.
 *
 * @example
 * ```ts
 * import { MultilayerPerceptron } from "./model.ts";
 * import { weightsToSafetensors } from "./adapters.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
 * const bytes = await weightsToSafetensors(model);
 * console.log(bytes.length); // 4 × 136074 parameters + header
 * model.dispose();
 * ```
 */
export async function weightsToSafetensors(model: Module): Promise<Uint8Array> {
  refuseMerged(model, "saveWeights");
  const transposed = linearWeightNames(model);
  const tensors = new Map<string, TensorData>();
  for (const { name, variable } of model.namedParameters()) {
    const data = await variable.data() as Float32Array;
    tensors.set(
      name,
      transposed.has(name) ? transpose2d(data, variable.shape) : { shape: [...variable.shape], data },
    );
  }
  return encodeSafetensors(tensors, { format: "pt" });
}

/**
 * Sets every parameter of `model` from the bytes of a safetensors file written by
 * {@linkcode weightsToSafetensors} (or by PyTorch for the same model). The file must hold exactly the
 * model's parameters, with matching shapes; otherwise an error names what is missing, unexpected or
 * misshapen, and the model is left as it was. Trainable flags are kept.
 *
 * @example
 * ```ts
 * import { MultilayerPerceptron } from "./model.ts";
 * import { weightsFromSafetensors, weightsToSafetensors } from "./adapters.ts";
 * const trained = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * const fresh = new MultilayerPerceptron(4, 3, 3, 2, { seed: 2 });
 * weightsFromSafetensors(fresh, await weightsToSafetensors(trained));
 * console.log(fresh.layers[0].namedParameters()[0].variable.arraySync()); // trained's first weight
 * trained.dispose();
 * fresh.dispose();
 * ```
 */
export function weightsFromSafetensors(model: Module, bytes: Uint8Array): void {
  refuseMerged(model, "loadWeights");
  const { tensors } = decodeSafetensors(bytes);
  const parameters = model.namedParameters();
  const transposed = linearWeightNames(model);
  const expected = new Set(parameters.map((p) => p.name));
  checkKeys("loadWeights", [...tensors.keys()], expected);
  // Check every shape before assigning anything, so a bad file leaves the model unchanged.
  const values = parameters.map(({ name, variable }) => {
    const stored = tensors.get(name)!;
    const shape = transposed.has(name) ? [...variable.shape].reverse() : variable.shape;
    if (!tf.util.arraysEqual(stored.shape, shape)) {
      throw new RangeError(
        `loadWeights: "${name}" has shape [${stored.shape}] in the file; the model expects [${shape}].`,
      );
    }
    return transposed.has(name) ? transpose2d(stored.data, stored.shape) : stored;
  });
  parameters.forEach(({ variable }, i) => assignFrom(variable, values[i]));
}

/**
 * Writes every parameter of `model` to a safetensors file at `path` (see {@linkcode weightsToSafetensors}).
 * Needs `--allow-write` for `path`.
 *
 * @example
 * ```ts
 * import { saveWeights } from "./adapters.ts";
 * import { MultilayerPerceptron } from "./model.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * await saveWeights(model, "data/example-base.safetensors");
 * console.log((await Deno.stat("data/example-base.safetensors")).size); // 544808
 * await Deno.remove("data/example-base.safetensors");
 * model.dispose();
 * ```
 */
export async function saveWeights(model: Module, path: string | URL): Promise<void> {
  await Deno.writeFile(path, await weightsToSafetensors(model));
}

/**
 * Reads a safetensors file written by {@linkcode saveWeights} into `model`'s parameters (see
 * {@linkcode weightsFromSafetensors}). Needs `--allow-read` for `path`.
 *
 * @example
 * ```ts
 * import { loadWeights, saveWeights } from "./adapters.ts";
 * import { MultilayerPerceptron } from "./model.ts";
 * const trained = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * await saveWeights(trained, "data/example-weights.safetensors");
 * const model = new MultilayerPerceptron(4, 3, 3, 2, { seed: 2 });
 * await loadWeights(model, "data/example-weights.safetensors");
 * await Deno.remove("data/example-weights.safetensors");
 * trained.dispose();
 * model.dispose();
 * ```
 */
export async function loadWeights(model: Module, path: string | URL): Promise<void> {
  weightsFromSafetensors(model, await Deno.readFile(path));
}

// Several adapters on one base model ---------------------------------------------------------------------

/**
 * A model whose layers sit in one array, as in `MultilayerPerceptron`. Layer `i` has the module name
 * `layers.<i>`, as PyTorch's `nn.Sequential` names it.
 */
export interface LayeredModel extends Module {
  /** The layers, run in order. */
  layers: Module[];
}

/**
 * The LoRA-wrapped layers of `model`, with their module names.
 *
 * @example
 * ```ts
 * import { loraLayers } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * console.log(loraLayers(model).map(([name]) => name)); // ["layers.0", "layers.2", "layers.4"]
 * model.dispose();
 * ```
 */
export function loraLayers(model: LayeredModel): [string, LinearWithLoRA][] {
  return model.layers.flatMap((layer, i) => layer instanceof LinearWithLoRA ? [[`layers.${i}`, layer]] : []);
}

/**
 * The names of the adapters in `model`, in the order they first appear.
 *
 * @example
 * ```ts
 * import { addAdapter, listAdapters } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 2, alpha: 2 });
 * console.log(listAdapters(model)); // ["default", "rotated"]
 * model.dispose();
 * ```
 */
export function listAdapters(model: LayeredModel): string[] {
  return [...new Set(loraLayers(model).flatMap(([, layer]) => [...layer.adapters.keys()]))];
}

/** Options for {@linkcode addAdapter}: rank, alpha, scaling convention, seed and target layers. */
export type AdapterOptions = Omit<AddLoRAOptions, "merged">;

/**
 * Adds a new adapter called `name` to the chosen layers (default: every linear layer), as PEFT's
 * `add_adapter` does. A plain `Linear` is wrapped in `LinearWithLoRA`; a layer already wrapped gains one more
 * adapter. Every base weight of the model is frozen, and the new adapter is frozen and inactive until
 * {@linkcode setAdapter} selects it (unless the model had no adapter yet, when it becomes the active one).
 * If anything is wrong (a target that is not linear, a name already taken, a bad rank) the model is left
 * as it was.
 *
 * @example
 * ```ts
 * import { addAdapter } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron, namedParameters } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2, targetModules: [0] });
 * addAdapter(model, "inverted", { rank: 1, alpha: 2, targetModules: [0] });
 * console.log(namedParameters(model).map((p) => p.name).slice(2, 6));
 * // ["layers.0.lora.A", "layers.0.lora.B", "layers.0.lora_inverted.A", "layers.0.lora_inverted.B"]
 * model.dispose();
 * ```
 */
export function addAdapter(model: LayeredModel, name: string, options: AdapterOptions): LayeredModel {
  checkAdapterName(name);
  const targets = options.targetModules ?? linearModules(model).map(([, i]) => i);
  for (const i of targets) {
    const layer = model.layers[i];
    if (!(layer instanceof Linear || layer instanceof LinearWithLoRA)) {
      const got = layer === undefined ? "nothing" : layer.constructor.name;
      throw new RangeError(`addAdapter: targetModules must index linear layers; layers[${i}] is ${got}.`);
    }
    if (layer instanceof LinearWithLoRA && layer.adapters.has(name)) {
      throw new Error(`addAdapter: layers.${i} already has an adapter named "${name}".`);
    }
  }
  // Build everything first; undo what was built if a step fails, so the model is unchanged.
  const activeBefore = loraLayers(model)[0]?.[1].activeAdapter;
  const wrappers = new Map<number, LinearWithLoRA>();
  const extended: LinearWithLoRA[] = [];
  try {
    for (const [k, i] of targets.entries()) {
      const layer = model.layers[i];
      const lora = { scaling: options.scaling, seed: options.seed === undefined ? undefined : options.seed + k };
      if (layer instanceof LinearWithLoRA) {
        layer.addAdapter(name, options.rank, options.alpha, lora);
        extended.push(layer);
      } else {
        const wrapper = new LinearWithLoRA(layer, options.rank, options.alpha, { ...lora, adapterName: name });
        // As in PEFT, the new adapter stays inactive (and frozen) until setAdapter picks it, unless it is the first.
        if (activeBefore !== undefined) wrapper.setAdapter(activeBefore);
        wrappers.set(i, wrapper);
      }
    }
  } catch (error) {
    for (const layer of extended) layer.deleteAdapter(name);
    for (const wrapper of wrappers.values()) wrapper.lora.dispose();
    throw error;
  }
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
 * import { addAdapter, setAdapter } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron, trainableVariables } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * setAdapter(model, "rotated");
 * console.log(trainableVariables(model).length); // 6: A and B of "rotated" in three layers
 * model.dispose();
 * ```
 */
export function setAdapter(model: LayeredModel, name: string): void {
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
 * import { addAdapter, deleteAdapter, listAdapters, loraLayers } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * deleteAdapter(model, "default");
 * console.log(listAdapters(model), loraLayers(model)[0][1].activeAdapter); // ["rotated"] rotated
 * model.dispose();
 * ```
 */
export function deleteAdapter(model: LayeredModel, name: string): void {
  requireAdapter(model, name, "deleteAdapter");
  refuseMerged(model, "deleteAdapter");
  model.layers.forEach((layer, i) => {
    if (!(layer instanceof LinearWithLoRA) || !layer.adapters.has(name)) return;
    if (layer.adapters.size > 1) {
      layer.deleteAdapter(name);
    } else {
      layer.adapters.get(name)!.dispose();
      model.layers[i] = layer.linear;
    }
  });
}

/**
 * Makes every LoRA layer run its base layer alone, until {@linkcode enableAdapters} (PEFT's
 * `disable_adapters`): the base model's outputs, with no copy of its weights. Refused while merged.
 *
 * @example
 * ```ts
 * import { disableAdapters, enableAdapters } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * disableAdapters(model);
 * enableAdapters(model);
 * model.dispose();
 * ```
 */
export function disableAdapters(model: LayeredModel): void {
  refuseMerged(model, "disableAdapters");
  for (const [, layer] of loraLayers(model)) layer.disableAdapters();
}

/**
 * Undoes {@linkcode disableAdapters}.
 *
 * @example
 * ```ts
 * import { disableAdapters, enableAdapters, loraLayers } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * disableAdapters(model);
 * enableAdapters(model);
 * console.log(loraLayers(model)[0][1].adaptersDisabled); // false
 * model.dispose();
 * ```
 */
export function enableAdapters(model: LayeredModel): void {
  for (const [, layer] of loraLayers(model)) layer.enableAdapters();
}

/**
 * Folds adapter `name` (default: each layer's active one) into the base weights of every layer that has it
 * (PEFT's `merge_adapter`), so inference costs one product per layer. Refused, with nothing changed, if
 * the adapter is already merged anywhere, adapters are disabled, or no layer has it.
 *
 * @example
 * ```ts
 * import { mergeAdapter, unmergeAdapter } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * mergeAdapter(model);
 * unmergeAdapter(model);
 * model.dispose();
 * ```
 */
export function mergeAdapter(model: LayeredModel, name?: string): void {
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
 * import { mergeAdapter, unmergeAdapter } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * mergeAdapter(model);
 * unmergeAdapter(model);
 * model.dispose();
 * ```
 */
export function unmergeAdapter(model: LayeredModel): void {
  const merged = loraLayers(model).filter(([, layer]) => layer.merged);
  if (merged.length === 0) throw new Error("unmergeAdapter: no adapter is merged; nothing to unmerge.");
  for (const [, layer] of merged) layer.unmerge();
}

/**
 * Runs a batch in which row `i` uses adapter `adapterNames[i]` (or {@linkcode BASE_ADAPTER}, `"__base__"`,
 * for the base model alone): PEFT's `model(x, adapter_names=…)`. Each linear layer runs one base product
 * for the whole batch plus, per adapter, a low-rank product on that adapter's rows, so many customers'
 * requests share one pass through the base model. Every name must belong to the model; nothing may be merged.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { addAdapter, applyMixedBatch } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * addAdapter(model, "rotated", { rank: 1, alpha: 2 });
 * const logits = applyMixedBatch(model, tf.ones([3, 4]), ["default", "rotated", "__base__"]);
 * console.log(logits.shape); // [3, 2]
 * logits.dispose();
 * model.dispose();
 * ```
 */
export function applyMixedBatch(model: LayeredModel, x: tf.Tensor2D, adapterNames: readonly string[]): tf.Tensor2D {
  const known = new Set(listAdapters(model));
  const unknown = [...new Set(adapterNames)].filter((name) => name !== BASE_ADAPTER && !known.has(name));
  if (unknown.length > 0) {
    throw new Error(
      `applyMixedBatch: unknown adapters ${quoteAll(unknown)}; the model has ${quoteAll([...known])} ` +
        `(and "${BASE_ADAPTER}" for none).`,
    );
  }
  refuseMerged(model, "applyMixedBatch");
  if (x.rank !== 2 || adapterNames.length !== x.shape[0]) {
    throw new RangeError(
      `applyMixedBatch: got ${adapterNames.length} adapter names for input of shape [${x.shape}]; ` +
        "expected a [batch, features] input and one name per row.",
    );
  }
  return tf.tidy(() =>
    model.layers.reduce(
      (h, layer) => layer instanceof LinearWithLoRA ? layer.applyMixed(h, adapterNames) : layer.apply(h, false),
      x,
    )
  );
}

// Adapters in PEFT's file layout -------------------------------------------------------------------------

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
  /** Module names the adapter applies to, such as `layers.0`. */
  target_modules: string[];
  /** Whether scaling is `lora_alpha / sqrt(r)`. */
  use_rslora: boolean;
  /** Other PEFT fields, written with PEFT's defaults. */
  [field: string]: unknown;
}

/** File names inside an adapter folder, as PEFT names them. */
const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
const ADAPTER_CONFIG_FILE = "adapter_config.json";

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
 * alpha, so that loading here restores them exactly. Every layer of the adapter must share rank, alpha
 * and convention, since the config has one of each.
 *
 * @example
 * ```ts
 * import { adapterToFiles } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { rank: 4, alpha: 8 });
 * const { safetensors, config } = await adapterToFiles(model);
 * console.log(JSON.parse(config).lora_alpha); // 32: PEFT's 32 / r = 8 = this library's scaling
 * console.log(safetensors.length); // 4 bytes × 6248 parameters + header
 * model.dispose();
 * ```
 */
export async function adapterToFiles(model: LayeredModel, adapterName = "default"): Promise<AdapterFiles> {
  requireAdapter(model, adapterName, "adapterToFiles");
  const layers = loraLayers(model).filter(([, layer]) => layer.adapters.has(adapterName));
  const loras = layers.map(([module, layer]) => [module, layer.adapters.get(adapterName)!] as const);
  const [, first] = loras[0];
  for (const [module, lora] of loras) {
    if (lora.rank !== first.rank || lora.alpha !== first.alpha || lora.convention !== first.convention) {
      throw new Error(
        `adapterToFiles: adapter "${adapterName}" has rank ${lora.rank}, alpha ${lora.alpha} (${lora.convention}) ` +
          `in ${module} but rank ${first.rank}, alpha ${first.alpha} (${first.convention}) in ${loras[0][0]}; ` +
          "PEFT's config holds one of each.",
      );
    }
  }
  const tensors = new Map<string, TensorData>();
  for (const [module, lora] of loras) {
    tensors.set(`base_model.model.${module}.lora_A.weight`, transpose2d(await lora.A.data(), lora.A.shape));
    tensors.set(`base_model.model.${module}.lora_B.weight`, transpose2d(await lora.B.data(), lora.B.shape));
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
    init_lora_weights: true,
    inference_mode: true,
    modules_to_save: null,
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
 * is not PEFT LoRA JSON or asks for what this library does not do (DoRA, patterns, regex targets), keys
 * that are missing, unexpected or name no linear layer, `target_modules` or `r` that disagree with the
 * tensors, shapes that do not fit the layers, or a name already in use. F16 and BF16 tensors become
 * float32. Without this library's metadata (a file PEFT wrote), scaling is PEFT's `lora_alpha / r`: the
 * `"paper"` convention, or `"rslora"` with `use_rslora`.
 *
 * @example
 * ```ts
 * import { adapterFromFiles, adapterToFiles } from "./adapters.ts";
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * const tuned = addLoRA(new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 }), { rank: 1, alpha: 2 });
 * const base = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * adapterFromFiles(base, await adapterToFiles(tuned));
 * console.log(String(base.layers[0]).split("\n")[2]); // (lora): LoRALayer(in_dim=4, out_dim=3, rank=1, …)
 * tuned.dispose();
 * base.dispose();
 * ```
 */
export function adapterFromFiles(model: LayeredModel, files: AdapterFiles, adapterName = "default"): void {
  checkAdapterName(adapterName);
  const config = parseConfig(files.config);
  const { tensors, metadata } = decodeSafetensors(files.safetensors);
  const modules = new Map(linearModules(model));

  // Which modules the tensors cover, and does every key name something the model has?
  const byModule = new Map<string, { A?: StoredTensor; B?: StoredTensor }>();
  for (const [key, tensor] of tensors) {
    const match = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
    if (match === null || !modules.has(match[1])) {
      throw new Error(
        `loadAdapter: unexpected key "${key}"; expected base_model.model.<module>.lora_A.weight or ` +
          `…lora_B.weight with <module> one of ${quoteAll([...modules.keys()])}.`,
      );
    }
    byModule.set(match[1], { ...byModule.get(match[1]), [match[2]]: tensor });
  }
  const selected = [...modules.keys()].filter((module) =>
    config.target_modules.some((target) => module === target || module.endsWith(`.${target}`))
  );
  for (const module of selected) {
    for (const which of ["A", "B"] as const) {
      if (byModule.get(module)?.[which] === undefined) {
        throw new Error(
          `loadAdapter: missing key "base_model.model.${module}.lora_${which}.weight": target_modules ` +
            `${JSON.stringify(config.target_modules)} selects ${module}.`,
        );
      }
    }
  }
  if (selected.length === 0) {
    throw new Error(
      `loadAdapter: target_modules ${JSON.stringify(config.target_modules)} selects none of the model's linear ` +
        `layers ${quoteAll([...modules.keys()])}.`,
    );
  }
  for (const module of byModule.keys()) {
    if (!selected.includes(module)) {
      throw new Error(
        `loadAdapter: the file has tensors for ${module}, which target_modules ` +
          `${JSON.stringify(config.target_modules)} does not select.`,
      );
    }
  }

  // Shapes: A is [r, in] and B is [out, r] in the file.
  const r = config.r;
  for (const module of selected) {
    const index = modules.get(module)!;
    const layer = model.layers[index] as Linear | LinearWithLoRA;
    const base = layer instanceof LinearWithLoRA ? layer.linear : layer;
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
    if (layer instanceof LinearWithLoRA && layer.adapters.has(adapterName)) {
      throw new Error(
        `loadAdapter: ${module} already has an adapter named "${adapterName}"; delete it or choose another name.`,
      );
    }
  }

  const { alpha, convention } = readScaling(config, metadata);

  // Everything checked: build the adapters, then attach them.
  const activeBefore = loraLayers(model)[0]?.[1].activeAdapter;
  const wrappers = new Map<number, LinearWithLoRA>();
  for (const module of selected) {
    const index = modules.get(module)!;
    const layer = model.layers[index] as Linear | LinearWithLoRA;
    const options = { scaling: convention, adapterName };
    let lora;
    if (layer instanceof LinearWithLoRA) {
      lora = layer.addAdapter(adapterName, r, alpha, options);
    } else {
      const wrapper = new LinearWithLoRA(layer, r, alpha, options);
      // Keep the model's current choice of adapter, if it has one, on newly wrapped layers too.
      if (activeBefore !== undefined) wrapper.setAdapter(activeBefore);
      wrappers.set(index, wrapper);
      lora = wrapper.adapters.get(adapterName)!;
    }
    const { A, B } = byModule.get(module) as Record<"A" | "B", StoredTensor>;
    assignFrom(lora.A, transpose2d(A.data, A.shape));
    assignFrom(lora.B, transpose2d(B.data, B.shape));
  }
  attachWrappers(model, wrappers);
}

/**
 * Writes adapter `adapterName` of `model` into the folder `dir` as PEFT's `adapter_model.safetensors` and
 * `adapter_config.json` (see {@linkcode adapterToFiles}), creating the folder if needed. Needs
 * `--allow-write` for `dir`.
 *
 * @example
 * ```ts
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * import { saveAdapter } from "./adapters.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * await saveAdapter(model, "data/example-adapter");
 * for await (const file of Deno.readDir("data/example-adapter")) console.log(file.name);
 * // adapter_model.safetensors, adapter_config.json
 * await Deno.remove("data/example-adapter", { recursive: true });
 * model.dispose();
 * ```
 */
export async function saveAdapter(model: LayeredModel, dir: string, adapterName = "default"): Promise<void> {
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
 * import { addLoRA, MultilayerPerceptron } from "./model.ts";
 * import { listAdapters, loadAdapter, saveAdapter, setAdapter } from "./adapters.ts";
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
export async function loadAdapter(model: LayeredModel, dir: string, adapterName = "default"): Promise<void> {
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
  if (typeof c.target_modules === "string") {
    throw new Error(`${where}: target_modules is a regular expression; this library needs a list of module names.`);
  }
  if (!Array.isArray(c.target_modules) || !c.target_modules.every((t) => typeof t === "string")) {
    throw new Error(`${where} has target_modules ${JSON.stringify(c.target_modules)}; expected a list of names.`);
  }
  if (c.use_rslora !== undefined && typeof c.use_rslora !== "boolean") {
    throw new Error(`${where} has use_rslora ${JSON.stringify(c.use_rslora)}; expected true or false.`);
  }
  const unsupported = [
    ["use_dora", c.use_dora === true],
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

// Helpers ----------------------------------------------------------------------------------------------

/** Module names and indices of the layers an adapter can target: every `Linear`, wrapped or not. */
function linearModules(model: LayeredModel): [string, number][] {
  return model.layers.flatMap((layer, i) =>
    layer instanceof Linear || layer instanceof LinearWithLoRA ? [[`layers.${i}`, i]] : []
  );
}

/** Puts the new wrappers in place and freezes every base weight of the model, as `addLoRA` and PEFT do. */
function attachWrappers(model: LayeredModel, wrappers: Map<number, LinearWithLoRA>): void {
  for (const [i, wrapper] of wrappers) model.layers[i] = wrapper;
  freezeLinearLayers(model);
}

function requireAdapter(model: LayeredModel, name: string, caller: string): void {
  const names = listAdapters(model);
  if (!names.includes(name)) {
    throw new Error(`${caller}: the model has no adapter "${name}"; it has ${quoteAll(names)}.`);
  }
}

function assignFrom(variable: tf.Variable, { shape, data }: TensorData): void {
  const value = tf.tensor(data, shape, "float32");
  variable.assign(value);
  value.dispose();
}

function quoteAll(names: string[]): string {
  return names.length === 0 ? "none" : names.map((n) => `"${n}"`).join(", ");
}

function isNonEmptyObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && Object.keys(value).length > 0;
}

/** Names (as `namedParameters` gives them) of every `Linear` weight in `module`, at any depth. */
function linearWeightNames(module: Module, prefix = ""): Set<string> {
  if (module instanceof Linear) return new Set([prefix + "weight"]);
  return new Set(module.children().flatMap(([key, child]) => [...linearWeightNames(child, `${prefix}${key}.`)]));
}

function refuseMerged(module: Module, caller: string): void {
  if (module instanceof LinearWithLoRA && module.merged) {
    throw new Error(`${caller}: a LoRA layer is merged into its base weight; call unmerge() first.`);
  }
  for (const [, child] of module.children()) refuseMerged(child, caller);
}

function checkKeys(caller: string, found: string[], expected: Set<string>): void {
  const missing = [...expected].filter((name) => !found.includes(name));
  const unexpected = found.filter((name) => !expected.has(name));
  const parts = [];
  if (missing.length > 0) parts.push(`missing ${quoteAll(missing)}`);
  if (unexpected.length > 0) parts.push(`unexpected ${quoteAll(unexpected)}`);
  if (parts.length > 0) {
    throw new RangeError(`${caller}: the file's tensors do not match the model: ${parts.join("; ")}.`);
  }
}

function transpose2d(data: ArrayLike<number>, shape: readonly number[]): TensorData {
  const [rows, cols] = shape;
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j];
  return { shape: [cols, rows], data: out };
}
