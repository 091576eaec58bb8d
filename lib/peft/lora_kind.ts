/**
 * The LoRA kind: the tutorial's `LoRALayer` (`ΔW = s·A·B`) as PEFT stores it, `lora_A.weight` `[r, in]` and
 * `lora_B.weight` `[out, r]` under each module, with `r`, `lora_alpha`, `use_rslora` and the rank and alpha
 * patterns in the config (see `config.ts`). DoRA's kind (`dora_kind.ts`) reuses most of it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type BaseLayer, checkInput, Linear } from "../layers.ts";
import { loraLinear, loraLinearFused } from "../ops.ts";
import { createLoRALayer, LoRALayer, type LoRAOptions, loraScaling } from "../lora.ts";
import type { Module } from "../module.ts";
import type { StoredTensor } from "../safetensors.ts";
import { assignFrom, transpose2d } from "../weights.ts";
import {
  alphaEntry,
  checkLoraConfig,
  layerRank,
  type LayerSettings,
  layerSettings,
  type LoraConfig,
  writeConfig,
} from "./config.ts";
import type { AdapterKind, AdapterSource, AdapterSpec, Placed, SavedAdapter, Target } from "./kind.ts";

/** LoRA's two keys under a module, as PEFT writes them. */
export const LORA_KEYS = ["lora_A.weight", "lora_B.weight"] as const;

/**
 * LoRA, the tutorial's method and PEFT's default: `y = x·W + b + s·x·A·B`, merged as `W ← W + s·A·B`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "../layers.ts";
 * import { loraKind } from "./lora_kind.ts";
 * const base = new Linear(4, 3, { seed: 1 });
 * const [lora] = loraKind.create([{ module: "x", base, existing: [], merged: false }], { rank: 2, alpha: 4 });
 * const x = tf.ones([1, 4]);
 * assert.deepEqual(loraKind.forward(lora, base, x).arraySync(), base.apply(x).arraySync()); // B starts at zero
 * base.dispose();
 * lora.dispose();
 * ```
 */
export const loraKind: AdapterKind<LoRALayer> = {
  name: "lora",
  title: "LoRA",
  owns: (module: Module): module is LoRALayer => module instanceof LoRALayer,
  create(targets, spec) {
    const options = loraOptions(spec);
    refusePissaOnTop(targets, options.init);
    return buildAll(
      targets,
      options.init === "pissa",
      (target, k) => createLoRALayer(target.base, spec.rank, requireAlpha(spec), withSeed(options, spec.seed, k)),
    );
  },
  // One node when the fused kernels and BLAS are in use, for a plain Linear base and a plain LoRA layer.
  forward(lora, base, x) {
    if (loraLinearFused() && (base.constructor as unknown) === Linear && (lora.constructor as unknown) === LoRALayer) {
      checkInput(base, x, base.inFeatures); // the base layer's own message for a wrong input
      return loraLinear(x, base.weight, base.bias, lora.A, lora.B, lora.scaling);
    }
    return tf.tidy(() => tf.add(base.apply(x), lora.apply(x)));
  },
  delta: (lora, _base, x) => lora.apply(x),
  deltaWeight: (lora) => lora.deltaWeight(),
  merge(lora, base) {
    const merged = tf.tidy(() => tf.add(base.denseWeight(), lora.deltaWeight()) as tf.Tensor2D);
    assignFinite(base, merged, "LoRA");
    return () => tf.tidy(() => base.writeWeight(tf.sub(base.denseWeight(), lora.deltaWeight())));
  },
  factors: (lora) => ({
    a: Float64Array.from(lora.A.dataSync()),
    b: Float64Array.from(lora.B.dataSync()),
    rank: lora.rank,
    scaling: lora.scaling,
    convention: lora.convention,
  }),
  reads: (config) => config.peft_type === "LORA" && config.use_dora !== true,
  async save(placed, adapterName) {
    return await saveFactors(placed, adapterName, false);
  },
  checkConfig(config) {
    checkLoraConfig(config);
  },
  keys: () => ({ layer: LORA_KEYS, shared: [] }),
  load(targets, source) {
    const config = checkLoraConfig(source.config);
    const settings = checkFactors(targets, source, config);
    return buildAll(targets, config.init_lora_weights === "pissa", (target) => {
      const { rank, alpha, convention } = settings.get(target.module)!;
      const lora = createLoRALayer(target.base, rank, alpha, { scaling: convention, init: loadedInit(config) });
      assignFactors(lora, source.layers.get(target.module)!);
      return lora;
    });
  },
  describe: (lora) => `rank ${lora.rank}, scaling ${lora.scaling}`,
};

// Shared with the DoRA kind ---------------------------------------------------------------------------------

/** The LoRA options in `spec` (scaling, init, …) without the ones every kind shares. */
export function loraOptions(spec: AdapterSpec): LoRAOptions & Record<string, unknown> {
  const { kind: _kind, rank: _rank, alpha: _alpha, seed: _seed, useDora: _useDora, ...rest } = spec;
  return rest as LoRAOptions & Record<string, unknown>;
}

/** `spec.alpha`, or an error saying LoRA needs one. */
export function requireAlpha(spec: AdapterSpec): number {
  if (typeof spec.alpha !== "number") {
    throw new RangeError(`LoRA alpha must be a finite number; got ${spec.alpha}.`);
  }
  return spec.alpha;
}

/** `options` with the seed of target `k` (`seed + k`), or none when no seed was given. */
export function withSeed<O extends object>(options: O, seed: number | undefined, k: number): O & { seed?: number } {
  return { ...options, seed: seed === undefined ? undefined : seed + k };
}

/** PiSSA rewrites the base weight, so it can only be a layer's first adapter. */
export function refusePissaOnTop(targets: readonly Target[], init: unknown): void {
  const taken = targets.find((t) => t.existing.length > 0);
  if (init === "pissa" && taken !== undefined) {
    throw new Error(
      `${taken.module} already has adapters (${taken.existing.map((n) => `"${n}"`).join(", ")}); PiSSA replaces ` +
        "its base weight by a residual under them, so it can only be a layer's first adapter.",
    );
  }
}

/**
 * Builds one adapter per target with `build`; if any step throws, frees what was built and, when `rewritesBase`
 * (PiSSA), puts every target's base weight back, so that a refused call changes nothing.
 */
export function buildAll<A extends Module>(
  targets: readonly Target[],
  rewritesBase: boolean,
  build: (target: Target, k: number) => A,
): A[] {
  if (rewritesBase) {
    const quantized = targets.find((t) => t.base.lossyWrites);
    if (quantized !== undefined) {
      throw new Error(
        `${quantized.module} is a quantized base; PiSSA would write its residual there, rounded to the base's bits, ` +
          "so it is not offered on a quantized base (start from kaiming or gaussian, or quantize after PiSSA).",
      );
    }
  }
  const saved = rewritesBase ? targets.map((t) => tf.tidy(() => tf.clone(t.base.denseWeight()))) : [];
  const built: A[] = [];
  try {
    targets.forEach((target, k) => built.push(build(target, k)));
    return built;
  } catch (error) {
    built.forEach((adapter) => adapter.dispose());
    saved.forEach((weight, k) => targets[k].base.writeWeight(weight));
    const module = targets[built.length]?.module;
    if (error instanceof Error && module !== undefined && !error.message.includes(module)) {
      error.message = `${module}: ${error.message}`;
    }
    throw error;
  } finally {
    tf.dispose(saved);
  }
}

/** Assigns `merged` to `base.weight` unless it holds a value that is not finite (then throws, changing nothing). */
export function assignFinite(base: BaseLayer, merged: tf.Tensor2D, title: string): void {
  const finite = tf.tidy(() => tf.all(tf.isFinite(merged)).dataSync()[0] === 1);
  if (!finite) {
    merged.dispose();
    throw new Error(`merge(): merging this ${title} adapter gives weights that are not finite; it seems broken.`);
  }
  base.writeWeight(merged);
  merged.dispose();
}

/** Config, metadata and A/B tensors of LoRA-family adapters (DoRA adds its magnitudes). */
export async function saveFactors(
  placed: readonly Placed<LoRALayer>[],
  adapterName: string,
  useDora: boolean,
): Promise<SavedAdapter> {
  const fanInFanOut = placed[0].base.fanInFanOut;
  const odd = placed.find((p) => p.base.fanInFanOut !== fanInFanOut);
  if (odd !== undefined) {
    throw new Error(
      `adapterToFiles: ${odd.module} stores its weight ${odd.base.fanInFanOut ? "[in, out]" : "[out, in]"} but ` +
        `${placed[0].module} does not; PEFT's fan_in_fan_out is one setting for the whole adapter.`,
    );
  }
  const { config, metadata } = writeConfig(placed.map((p) => [p.module, p.adapter] as const), adapterName, {
    useDora,
    fanInFanOut,
  });
  const tensors = new Map();
  for (const { module, adapter } of placed) {
    tensors.set(`base_model.model.${module}.lora_A.weight`, transpose2d(await adapter.A.data(), adapter.A.shape));
    tensors.set(`base_model.model.${module}.lora_B.weight`, transpose2d(await adapter.B.data(), adapter.B.shape));
  }
  return { config: config as Record<string, unknown>, metadata, tensors };
}

/**
 * Checks each target's A and B against the config and the layer (present, shapes `[r, in]` and `[out, r]`, r
 * within the layer, PiSSA only as a first adapter) and returns
 * each module's rank, alpha and convention.
 */
export function checkFactors(
  targets: readonly Target[],
  source: AdapterSource,
  config: LoraConfig,
): Map<string, LayerSettings> {
  const settings = new Map<string, LayerSettings>();
  const targetsText = JSON.stringify(config.target_modules);
  refusePissaOnTop(targets, config.init_lora_weights);
  for (const { module, base } of targets) {
    const tensors = source.layers.get(module) ?? new Map<string, StoredTensor>();
    for (const key of LORA_KEYS) {
      if (!tensors.has(key)) {
        throw new Error(
          `loadAdapter: missing key "base_model.model.${module}.${key}": target_modules ${targetsText} selects ${module}.`,
        );
      }
    }
    const [A, B] = LORA_KEYS.map((key) => tensors.get(key)!);
    const r = layerRank(config, module);
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
    // fan_in_fan_out is not checked against the layer: PEFT 0.21.0 itself overrides it by the layer's type (a
    // warning, then true for a Conv1D and false for a Linear), and A and B are stored the same way either way.
    const layer = layerSettings(config, source.metadata, module);
    if (config.init_lora_weights === "pissa" && loraScaling(layer.alpha, layer.rank, layer.convention) === 0) {
      throw new RangeError(
        `loadAdapter: ${module} starts from PiSSA, which divides the singular values by the scaling, but its ` +
          `${alphaEntry(config, module)} gives scaling 0.`,
      );
    }
    settings.set(module, layer);
  }
  return settings;
}

/** The start a loaded adapter records: PiSSA and Gaussian keep their names; the rest start as the tutorial's. */
export function loadedInit(config: LoraConfig): "pissa" | "gaussian" | undefined {
  const init = config.init_lora_weights;
  return init === "pissa" || init === "gaussian" ? init : undefined;
}

/** Sets A and B of `lora` from the file's `[r, in]` and `[out, r]` tensors. */
export function assignFactors(lora: LoRALayer, tensors: Map<string, StoredTensor>): void {
  const [A, B] = LORA_KEYS.map((key) => tensors.get(key)!);
  assignFrom(lora.A, transpose2d(A.data, A.shape));
  assignFrom(lora.B, transpose2d(B.data, B.shape));
}
