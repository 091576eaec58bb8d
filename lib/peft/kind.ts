/**
 * Adapter kinds: everything that differs between LoRA, DoRA and VeRA, each in one object, and the table that
 * lists them, as PEFT's `lora_variants` table lists its LoRA variants (`tuners/lora/layer.py`, `LoraVariant`:
 * `init`, `merge_safe`, `merge_unsafe`, `unmerge`, `forward`).
 *
 * An adapter is a {@linkcode Module} whose `isAdapter` is `true` (the tutorial's `LoRALayer`, DoRA's
 * `DoRALayer`, VeRA's `VeRALayer`); its kind knows how it starts from a base layer, what it adds to the base
 * layer's output, its ΔW, how it folds into the base weight and comes out again, and how it maps to PEFT's files.
 * `LinearWithAdapters`, targets, serving, files and combining ask the kind and name none.
 *
 * A new kind is one file that exports an `AdapterKind` and one line in {@linkcode ADAPTER_KINDS}.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import type { BaseLayer } from "../layers.ts";
import type { Module } from "../module.ts";
import type { StoredTensor, TensorData } from "../safetensors.ts";
import { doraKind } from "./dora_kind.ts";
import { loraKind } from "./lora_kind.ts";
import { veraKind } from "./vera.ts";

/** What every adapter-making call accepts: the union of what the kinds read (each ignores what is not its own). */
export interface AdapterSpec {
  /** The kind's name (`"lora"`, `"dora"`, `"vera"`); default `"lora"`, or `"dora"` with `useDora`. */
  kind?: string;
  /** Inner dimension (LoRA's and DoRA's rank, VeRA's shared projection width). */
  rank: number;
  /** LoRA's and DoRA's scale hyperparameter (see `loraScaling`); VeRA has none. */
  alpha?: number;
  /** Seed of the random start of the adapter on the first target; target `k` uses `seed + k`. */
  seed?: number;
  /** Any other option of the kind (`scaling`, `init`, `normAxis`, `dInitial`, …). */
  [option: string]: unknown;
}

/** One base layer an adapter is being made for: its module name, the base `Linear`, and whether it has adapters. */
export interface Target {
  /** Dotted module name, such as `layers.0` or `blocks.1.attn.q_proj`. */
  module: string;
  /** The frozen base layer: a `Linear`, or a quantized one. */
  base: BaseLayer;
  /** Names of the adapters the layer already has (empty for a plain `Linear`). */
  existing: readonly string[];
  /** Whether one of them is folded into `base.weight` right now. */
  merged: boolean;
}

/** An adapter with the layer it belongs to, as files and combinations see it. */
export interface Placed<A extends Module = Module> {
  /** Dotted module name. */
  module: string;
  /** The base layer. */
  base: BaseLayer;
  /** The adapter. */
  adapter: A;
}

/** What a kind writes for one adapter: the config's fields, the safetensors metadata and the tensors by full key. */
export interface SavedAdapter {
  /** Fields of `adapter_config.json`. */
  config: Record<string, unknown>;
  /** Safetensors metadata. */
  metadata: Record<string, string>;
  /** Tensors by their full key (`base_model.model.layers.0.lora_A.weight`, `base_model.vera_A`, …). */
  tensors: Map<string, TensorData>;
}

/** What a kind reads to build one adapter: a checked config, the metadata and the tensors of the targets. */
export interface AdapterSource {
  /** The parsed `adapter_config.json`. */
  config: Record<string, unknown>;
  /** Safetensors metadata. */
  metadata: Record<string, string>;
  /** Per selected module, its tensors by the key after `base_model.model.<module>.`. */
  layers: Map<string, Map<string, StoredTensor>>;
  /** Tensors outside any module, by the key after `base_model.` (VeRA's shared projections). */
  shared: Map<string, StoredTensor>;
}

/** An adapter's exact low-rank factors, `ΔW = scaling · A·B`, in float64 row-major arrays. */
export interface Factors {
  /** `[in, rank]`. */
  a: Float64Array;
  /** `[rank, out]`. */
  b: Float64Array;
  /** Inner dimension. */
  rank: number;
  /** The factor in front of `A·B`. */
  scaling: number;
  /** The scaling convention new adapters made from these factors should keep. */
  convention: "tutorial" | "paper" | "rslora";
}

/**
 * One kind of adapter on one linear layer. `A` is the adapter's class.
 *
 * Creation and loading are transactions on their own: they either return every adapter asked for or throw with
 * nothing left allocated and every base weight as it was (PiSSA rewrites base weights while it builds).
 */
export interface AdapterKind<A extends Module = Module> {
  /** Short name: `"lora"`, `"dora"`, `"vera"`. */
  readonly name: string;
  /** How error messages and `print` name it: `"LoRA"`, `"DoRA"`, `"VeRA"`. */
  readonly title: string;
  /** Whether `module` is an adapter of this kind. The table is searched in order, so a subclass's kind comes first. */
  owns(module: Module): module is A;
  /** New adapters, one per target, in order. Throws (with nothing changed) on a bad option or target. */
  create(targets: readonly Target[], spec: AdapterSpec): A[];
  /** The adapted layer's output: the base layer and this adapter. */
  forward(adapter: A, base: BaseLayer, x: tf.Tensor): tf.Tensor;
  /**
   * What this adapter adds to the base layer's output `baseOut = base.apply(x)` (mixed batches run the base
   * product once for all rows and add each row's adapter).
   */
  delta(adapter: A, base: BaseLayer, x: tf.Tensor, baseOut: tf.Tensor): tf.Tensor;
  /** `W′ − W`: how the adapter changes the weight `[in, out]` it computes with. */
  deltaWeight(adapter: A, base: BaseLayer): tf.Tensor2D;
  /**
   * Folds the adapter into `base.weight` in place and returns the function that takes it out again. Throws,
   * changing nothing, if the merged weight would not be finite (PEFT's `safe_merge`).
   */
  merge(adapter: A, base: BaseLayer): () => void;
  /** Exact factors of ΔW for combining adapters, or `null` when ΔW is not a scaled product of two factors. */
  factors(adapter: A, base: BaseLayer): Factors | null;
  /** Whether a PEFT config (already known to be an object) describes an adapter of this kind. */
  reads(config: Record<string, unknown>): boolean;
  /** The config, metadata and tensors of one adapter, all of this kind. */
  save(placed: readonly Placed<A>[], adapterName: string): Promise<SavedAdapter>;
  /** Checks the config on its own; throws naming the field. Returns the modules it selects by name. */
  checkConfig(config: Record<string, unknown>): void;
  /** Key suffixes a module may carry (after `base_model.model.<module>.`), and shared keys (after `base_model.`). */
  keys(config: Record<string, unknown>): { layer: readonly string[]; shared: readonly string[] };
  /** Adapters for `targets` from files, values checked; a transaction like `create`. */
  load(targets: readonly Target[], source: AdapterSource): A[];
  /** One line on an adapter, for messages (`rank 4, scaling 2`). */
  describe(adapter: A): string;
}

/**
 * Every adapter kind, searched in order: DoRA before LoRA, since a DoRA adapter is also a LoRA layer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ADAPTER_KINDS } from "./kind.ts";
 * assert.deepEqual(ADAPTER_KINDS.map((kind) => kind.name), ["dora", "lora", "vera"]);
 * ```
 */
export const ADAPTER_KINDS: readonly AdapterKind[] = [
  doraKind as unknown as AdapterKind,
  loraKind as unknown as AdapterKind,
  veraKind as unknown as AdapterKind,
];

/**
 * The kind of `adapter`, or `undefined` for a module that is not an adapter of a registered kind.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kindOf } from "./kind.ts";
 * import { LoRALayer } from "../lora.ts";
 * const lora = new LoRALayer(4, 3, 1, 2);
 * assert.equal(kindOf(lora)?.name, "lora");
 * lora.dispose();
 * ```
 */
export function kindOf(adapter: Module): AdapterKind | undefined {
  return ADAPTER_KINDS.find((kind) => kind.owns(adapter));
}

/**
 * The kind named by `spec.kind` (or `"dora"` when `spec.useDora` is set, PEFT's flag); default LoRA. Throws
 * naming the registered kinds for an unknown name.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kindNamed } from "./kind.ts";
 * assert.equal(kindNamed({ rank: 2, useDora: true }).title, "DoRA");
 * assert.throws(() => kindNamed({ rank: 2, kind: "ia3" }), /unknown adapter kind "ia3"/);
 * ```
 */
export function kindNamed(spec: { kind?: unknown; useDora?: unknown; rank?: unknown }): AdapterKind {
  const name = spec.kind ?? (spec.useDora === true ? "dora" : "lora");
  if (spec.kind !== undefined && spec.useDora === true && spec.kind !== "dora") {
    throw new RangeError(`useDora asks for a DoRA adapter, but kind is "${spec.kind}"; give one of them.`);
  }
  const kind = ADAPTER_KINDS.find((k) => k.name === name);
  if (kind === undefined) {
    const names = ADAPTER_KINDS.map((k) => `"${k.name}"`).join(", ");
    throw new RangeError(`unknown adapter kind "${String(name)}"; expected one of ${names}.`);
  }
  return kind;
}

/**
 * The kind that reads a PEFT config, or an error naming the config's `peft_type` and what can be read.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kindReading } from "./kind.ts";
 * assert.equal(kindReading({ peft_type: "LORA", use_dora: true }).name, "dora");
 * assert.equal(kindReading({ peft_type: "VERA" }).name, "vera");
 * assert.throws(() => kindReading({ r: 8 }), /has no peft_type/);
 * ```
 */
export function kindReading(config: Record<string, unknown>, where = "loadAdapter: adapter_config.json"): AdapterKind {
  const kind = ADAPTER_KINDS.find((k) => k.reads(config));
  if (kind !== undefined) return kind;
  const type = config.peft_type;
  const found = type === undefined ? "has no peft_type" : `has peft_type ${JSON.stringify(type)}`;
  throw new Error(`${where} ${found}; this library reads "LORA" (with or without use_dora) and "VERA".`);
}
