/**
 * PEFT's LoRA layer: one frozen `Linear` with any number of named adapters, of which one is active, that can
 * be disabled, folded into the base weight in place and taken out again, or mixed row by row in one batch.
 *
 * It is the tutorial's `LinearWithLoRA` with PEFT's bookkeeping (`peft.tuners.lora.layer.Linear`); the
 * model-wide operations in `model.ts` drive it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { DoRAOptions } from "../dora.ts";
import { type BaseLayer, isBaseLayer, type Linear } from "../layers.ts";
import { type LoRALayer, requireLinear } from "../lora.ts";
import { Module } from "../module.ts";
import { listNames } from "../_names.ts";
import { type AdapterKind, kindNamed, kindOf } from "./kind.ts";

/**
 * The name that means "no adapter, the base layer alone" in a mixed batch (PEFT's `"__base__"`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BASE_ADAPTER } from "./layer.ts";
 * assert.equal(BASE_ADAPTER, "__base__");
 * ```
 */
export const BASE_ADAPTER = "__base__";

/**
 * Options for one new adapter: which kind (`kind`, or PEFT's `useDora`), and that kind's options — LoRA's
 * scaling, seed and init, DoRA's `normAxis` and `detachNorm`, VeRA's `dInitial`.
 */
export interface AdapterLayerOptions extends DoRAOptions {
  /** The adapter kind's name: `"lora"` (default), `"dora"`, `"vera"` (see `ADAPTER_KINDS`). */
  kind?: string;
  /** Make a DoRA adapter (PEFT's `use_dora`): the same as `kind: "dora"`. */
  useDora?: boolean;
  /** VeRA's starting value of `λ_d` (PEFT's `d_initial`); default 0.1. */
  dInitial?: number;
}

/** Options for a new {@linkcode LinearWithAdapters}. */
export interface LinearWithAdaptersOptions extends AdapterLayerOptions {
  /** Name of the first adapter; default `"default"`, as in PEFT. */
  adapterName?: string;
}

/**
 * A `Linear` layer with named adapters, in PEFT's vocabulary: the first one is `"default"`,
 * {@linkcode LinearWithAdapters.addAdapter} adds more, {@linkcode LinearWithAdapters.setAdapter} chooses the
 * one `apply` uses, {@linkcode LinearWithAdapters.merge} folds an adapter into the base weight in place and
 * {@linkcode LinearWithAdapters.unmerge} takes it out again.
 *
 * In parameter names the adapter `"default"` is `lora` (`lora.A`, `lora.B`, as in the tutorial) and an
 * adapter `"x"` is `lora_x`.
 *
 * Adapters may be of any registered kind (LoRA, DoRA, VeRA: see `ADAPTER_KINDS`), even mixed on one layer;
 * the kind decides the forward pass, the mixed-batch rows, merging and unmerging, and this layer names none.
 * The type parameter is the adapters' class for code that knows it (`LoRALayer`, the default, covers LoRA
 * and DoRA). PiSSA (`init: "pissa"`) rewrites the base weight, so it is accepted only as a layer's first adapter.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "../layers.ts";
 * import { LinearWithAdapters } from "./layer.ts";
 * const layer = new LinearWithAdapters(new Linear(784, 128), 4, 8);
 * layer.addAdapter("rotated", 8, 4);
 * assert.deepEqual(
 *   layer.namedParameters().map((p) => p.name),
 *   ["linear.weight", "linear.bias", "lora.A", "lora.B", "lora_rotated.A", "lora_rotated.B"],
 * );
 * layer.apply(tf.zeros([2, 784])).dispose();
 * layer.dispose();
 * ```
 */
export class LinearWithAdapters<A extends Module = LoRALayer> extends Module {
  /** The wrapped base layer: a `Linear`, or a frozen `QuantizedLinear` (QLoRA). */
  linear: BaseLayer;
  /** Every adapter by name, in the order added. Change it through the methods, which keep the state right. */
  readonly adapters: Map<string, A> = new Map();
  private active: string;
  private disabled = false;
  /** The merged adapters in merge order, each with the function that takes it out again. */
  private mergedUndo: [string, () => void][] = [];
  /** Set by `applyMixedBatch` for one forward pass: the adapter of each row of the batch. */
  private rowAdapters: readonly string[] | null = null;

  /**
   * Wraps `linear` (which must be a {@linkcode Linear}) with a first adapter of the given rank and alpha, of
   * the kind `options` asks for (with `init: "pissa"` the base weight becomes PiSSA's residual). Instead of a
   * rank, `first` may be an adapter already made for `linear` (the tutorial's `lora`), which the layer then
   * holds as it is.
   */
  constructor(linear: Module, first: number | Module, alpha?: number, options: LinearWithAdaptersOptions = {}) {
    super();
    if (!isBaseLayer(linear)) requireLinear("LinearWithAdapters", linear); // throws, naming what it got
    const base = linear as BaseLayer;
    const { adapterName = "default", ...spec } = options;
    checkAdapterName(adapterName);
    this.linear = base;
    this.active = adapterName;
    if (typeof first === "number") {
      const target = { module: "this layer", base, existing: [], merged: false };
      this.adapters.set(adapterName, kindNamed(spec).create([target], { ...spec, rank: first, alpha })[0] as A);
    } else {
      kindFor(first);
      this.adapters.set(adapterName, first as A);
    }
  }

  /** The active adapter (the tutorial's `self.lora`). */
  get lora(): A {
    const adapter = this.adapters.get(this.active);
    if (adapter === undefined) {
      throw new Error(`This layer has no adapter "${this.active}"; it has ${listNames(this.adapters.keys())}.`);
    }
    return adapter;
  }

  /** Name of the adapter `apply` uses. A layer that has no adapter of that name runs its base layer alone. */
  get activeAdapter(): string {
    return this.active;
  }

  /** Whether any adapter is currently folded into `linear.weight`. */
  get merged(): boolean {
    return this.mergedUndo.length > 0;
  }

  /** The adapters folded into `linear.weight`, in the order they were merged (PEFT's `merged_adapters`). */
  get mergedAdapters(): readonly string[] {
    return this.mergedUndo.map(([name]) => name);
  }

  /** Whether `apply` skips every adapter and runs the base layer alone (PEFT's `disable_adapters`). */
  get adaptersDisabled(): boolean {
    return this.disabled;
  }

  /** The base layer with the active adapter (as its kind computes it), or the base alone while merged or disabled. */
  apply<T extends tf.Tensor>(x: T): T {
    if (this.rowAdapters !== null) return this.applyMixed(x, this.rowAdapters);
    const adapter = this.adapters.get(this.active);
    if (this.merged || this.disabled || adapter === undefined) return this.linear.apply(x);
    return kindFor(adapter).forward(adapter, this.linear, x) as T;
  }

  /**
   * Runs a batch in which row `i` (the first axis) uses the adapter `adapterNames[i]`
   * ({@linkcode BASE_ADAPTER}, or a name this layer lacks, means the base layer alone). The base product runs
   * once for the whole batch; each adapter adds what its kind computes from its own rows and theirs of the
   * shared base output. The names alone decide: the active adapter and
   * {@linkcode LinearWithAdapters.disableAdapters} play no part.
   *
   * DoRA adapters take part too (PEFT refuses them: "Cannot pass `adapter_names` when DoRA is enabled"): their
   * rows get `c ⊙ (x·W + s·x·A·B) + b` from the shared `x·W`, or, with a norm per input unit, a second base
   * product on their own rows, `(x ⊙ c)·W`. Each row equals what `apply` gives with that adapter active, up to
   * float32 rounding.
   */
  applyMixed<T extends tf.Tensor>(x: T, adapterNames: readonly string[]): T {
    if (adapterNames.length !== x.shape[0]) {
      throw new RangeError(
        `applyMixed: got ${adapterNames.length} adapter names for a batch of ${x.shape[0]} rows; expected one per row.`,
      );
    }
    this.refuseMerged("applyMixed");
    return tf.tidy(() => {
      const base = this.linear.apply(x);
      let y: tf.Tensor = base;
      for (const name of new Set(adapterNames)) {
        const adapter = this.adapters.get(name);
        if (adapter === undefined) continue; // base layer alone for these rows
        const rows = adapterNames.flatMap((n, i) => (n === name ? [i] : []));
        const index = tf.tensor2d(rows, [rows.length, 1], "int32");
        const delta = kindFor(adapter).delta(adapter, this.linear, tf.gatherND(x, index), tf.gatherND(base, index));
        y = tf.add(y, tf.scatterND(index, delta, y.shape));
      }
      return y as T;
    });
  }

  /** Runs `fn` with every call of `apply` taking row `i`'s adapter from `adapterNames[i]`; see `applyMixedBatch`. */
  withRowAdapters<R>(adapterNames: readonly string[], fn: () => R): R {
    this.refuseMerged("applyMixedBatch");
    this.rowAdapters = adapterNames;
    try {
      return fn();
    } finally {
      this.rowAdapters = null;
    }
  }

  /**
   * Adds a new adapter named `name` of the kind `options` asks for and returns it. It starts as its kind
   * starts (B or λ_b zero, so outputs do not change) and frozen unless it is the active one;
   * {@linkcode LinearWithAdapters.setAdapter} makes it active and trainable. Its kind may refuse: PiSSA on a
   * layer that has adapters, DoRA on a merged layer (its magnitude starts from the base weight).
   */
  addAdapter(name: string, rank: number, alpha?: number, options: AdapterLayerOptions = {}): A {
    this.checkNewName(name);
    const target = {
      module: "this layer",
      base: this.linear,
      existing: [...this.adapters.keys()],
      merged: this.merged,
    };
    let adapter: A;
    try {
      [adapter] = kindNamed(options).create([target], { ...options, rank, alpha }) as A[];
    } catch (error) {
      if (error instanceof Error) error.message = `addAdapter: ${error.message}`;
      throw error;
    }
    this.insertAdapter(name, adapter);
    return adapter;
  }

  /**
   * Adds `adapter`, already made for this layer's `linear`, as `name`: frozen unless `name` is the active
   * adapter. The model-wide operations build adapters first and attach them with this, so that a failure
   * while building changes nothing.
   */
  insertAdapter(name: string, adapter: A): void {
    this.checkNewName(name);
    kindFor(adapter);
    setTrainable(adapter, name === this.active);
    this.adapters.set(name, adapter);
  }

  /**
   * Makes `name` the adapter `apply` uses. As in PEFT, its parameters become trainable and every other
   * adapter's are frozen, so training afterwards updates only it. Not allowed while merged.
   */
  setAdapter(name: string): void {
    this.refuseMerged("setAdapter");
    this.active = name;
    for (const [key, adapter] of this.adapters) setTrainable(adapter, key === name);
  }

  /**
   * Frees and removes the adapter `name`. If it was active, the first remaining adapter becomes active.
   * A merged adapter, or the only one, cannot be deleted.
   */
  deleteAdapter(name: string): void {
    const adapter = this.adapters.get(name);
    if (adapter === undefined) {
      throw new Error(`deleteAdapter: no adapter named "${name}"; this layer has ${listNames(this.adapters.keys())}.`);
    }
    if (this.mergedAdapters.includes(name)) {
      throw new Error(`deleteAdapter: adapter "${name}" is merged into the base weight; call unmerge() first.`);
    }
    if (this.adapters.size === 1) {
      throw new Error(`deleteAdapter: "${name}" is this layer's only adapter; use its .linear instead.`);
    }
    adapter.dispose();
    this.adapters.delete(name);
    // The next adapter takes over as setAdapter would make it: active and the only trainable one.
    if (this.active === name) this.setAdapter(this.adapters.keys().next().value!);
  }

  /** Makes `apply` run the base layer alone until {@linkcode LinearWithAdapters.enableAdapters}. */
  disableAdapters(): void {
    this.refuseMerged("disableAdapters");
    this.disabled = true;
  }

  /** Undoes {@linkcode LinearWithAdapters.disableAdapters}. */
  enableAdapters(): void {
    this.disabled = false;
  }

  /**
   * Folds adapter `name` (default: the active one) into the base weight in place, as its kind merges it
   * (LoRA and VeRA add ΔW; DoRA stores `m ⊙ (W + ΔW) / ‖W + ΔW‖`), so that inference costs one product.
   * While anything is merged, `apply` runs the base layer alone (which now holds the update). Merging an
   * adapter that is already merged is an error, and so is a merge that would give a weight that is not finite
   * (PEFT's `safe_merge` check); both change nothing.
   */
  merge(name: string = this.active): void {
    if (this.mergedAdapters.includes(name)) {
      throw new Error(`merge(): adapter "${name}" of this layer is already merged; call unmerge() first.`);
    }
    if (this.disabled) throw new Error("merge(): adapters are disabled; call enableAdapters() first.");
    const adapter = this.adapters.get(name);
    if (adapter === undefined) {
      throw new Error(`merge(): no adapter named "${name}"; this layer has ${listNames(this.adapters.keys())}.`);
    }
    this.mergedUndo.push([name, kindFor(adapter).merge(adapter, this.linear)]);
  }

  /**
   * Takes every merged adapter out of the base weight again, last merged first, as its kind unmerges it. The
   * result equals the original weight up to float32 rounding: for LoRA and VeRA the add and the subtract (a
   * few units in the last place of the larger of `|W|` and `|ΔW|`); for DoRA, whose factor `f` is kept from
   * merge time, four roundings bound the error per element by `2⁻²²·(|W| + |ΔW|)` (see `tests/dora_test.ts`).
   *
   * Refused after a merge into a quantized base, whose re-quantization of `W + ΔW` cannot be undone; PEFT 0.21.0
   * (`tuners/lora/bnb.py`) instead warns and re-quantizes `W + ΔW − ΔW`, keeping the rounding of both steps.
   */
  unmerge(): void {
    if (!this.merged) throw new Error("unmerge(): this layer is not merged; nothing to unmerge.");
    if (this.linear.lossyWrites) {
      throw new Error(
        `unmerge(): adapter(s) ${listNames(this.mergedAdapters)} merged into a quantized base, which rounded ` +
          `W + ΔW to its bits; subtracting ΔW again would not give back the original weight. Reload the base instead, or merge ` +
          "into a float32 copy (mergeAndUnload(model, { dequantize: true })).",
      );
    }
    while (this.mergedUndo.length > 0) this.mergedUndo.pop()![1]();
  }

  /** `linear`, then each adapter under its key (`lora`, `lora_<name>`). */
  override children(): [string, Module][] {
    return [
      ["linear", this.linear],
      ...[...this.adapters].map(([name, adapter]): [string, Module] => [adapterKey(name), adapter]),
    ];
  }

  /** Throws for `caller` while any adapter is folded into the base weight. */
  private refuseMerged(caller: string): void {
    if (this.merged) {
      throw new Error(`${caller}: adapters ${listNames(this.mergedAdapters)} are merged; call unmerge() first.`);
    }
  }

  private checkNewName(name: string): void {
    checkAdapterName(name);
    if (this.adapters.has(name)) throw new Error(`addAdapter: this layer already has an adapter named "${name}".`);
  }
}

/**
 * Whether `module` adds an adapter to a linear layer the way the tutorial's classes do: exactly two children,
 * `linear` (a `Linear`) and `lora` (an adapter of a registered kind), as `LinearWithLoRA`,
 * `LinearWithLoRAMerged`, `LinearWithDoRA` and `LinearWithDoRAMerged` are built. Model-wide operations turn
 * such a layer into a {@linkcode LinearWithAdapters} holding the same two modules (see `loraLayers`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Linear } from "../layers.ts";
 * import { LinearWithLoRA } from "../lora.ts";
 * import { isTutorialLayer, LinearWithAdapters } from "./layer.ts";
 * const tutorial = new LinearWithLoRA(new Linear(4, 3), 1, 2);
 * const peft = new LinearWithAdapters(new Linear(4, 3), 1, 2);
 * assert.deepEqual([isTutorialLayer(tutorial), isTutorialLayer(peft)], [true, false]);
 * tutorial.dispose();
 * peft.dispose();
 * ```
 */
export function isTutorialLayer(module: Module): module is Module & { linear: Linear; lora: Module } {
  if (module instanceof LinearWithAdapters) return false;
  const children = module.children();
  return children.length === 2 && children[0][0] === "linear" && isBaseLayer(children[0][1]) &&
    children[1][0] === "lora" && kindOf(children[1][1]) !== undefined;
}

/** The kind of `adapter`, or a `TypeError` saying it is not an adapter of a registered kind. */
export function kindFor<A extends Module>(adapter: A): AdapterKind<A> {
  const kind = kindOf(adapter);
  if (kind === undefined) {
    throw new TypeError(`${adapter?.constructor?.name ?? String(adapter)} is not an adapter of a registered kind.`);
  }
  return kind as unknown as AdapterKind<A>;
}

/** Marks every parameter of an adapter trainable or frozen. */
function setTrainable(adapter: Module, trainable: boolean): void {
  for (const { variable } of adapter.namedParameters()) variable.trainable = trainable;
}

/**
 * The child name of adapter `name` in parameter names: `lora` for `"default"` (the tutorial's name),
 * `lora_<name>` otherwise.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adapterKey } from "./layer.ts";
 * assert.equal(adapterKey("default"), "lora");
 * assert.equal(adapterKey("rotated"), "lora_rotated");
 * ```
 */
export function adapterKey(name: string): string {
  return name === "default" ? "lora" : `lora_${name}`;
}

/**
 * Throws a `RangeError` unless `name` can name an adapter: letters, digits, `_` and `-`, and not
 * {@linkcode BASE_ADAPTER}. (Parameter names such as `layers.0.lora_name.A` stay unambiguous.)
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkAdapterName } from "./layer.ts";
 * checkAdapterName("rotated"); // fine
 * assert.throws(() => checkAdapterName("a.b"), RangeError);
 * assert.throws(() => checkAdapterName("__base__"), /"__base__" is reserved/);
 * ```
 */
export function checkAdapterName(name: string): void {
  if (typeof name !== "string" || !/^[A-Za-z0-9_-]+$/.test(name) || name === BASE_ADAPTER) {
    throw new RangeError(
      `Adapter names are made of letters, digits, "_" and "-", and "${BASE_ADAPTER}" is reserved; got "${name}".`,
    );
  }
}

export { listNames };
