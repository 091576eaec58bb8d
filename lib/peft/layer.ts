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
import { DoRALayer, type DoRAOptions } from "../dora.ts";
import type { Linear } from "../layers.ts";
import { createLoRALayer, type LoRALayer, requireLinear } from "../lora.ts";
import { Module } from "../module.ts";

/**
 * The name that means "no adapter, the base layer alone" in a mixed batch (PEFT's `"__base__"`).
 *
 * @example
 * ```ts
 * import { BASE_ADAPTER } from "./layer.ts";
 * console.log(BASE_ADAPTER); // "__base__"
 * ```
 */
export const BASE_ADAPTER = "__base__";

/** Options for one new adapter: LoRA's (scaling, seed, init), and whether it is a DoRA adapter. */
export interface AdapterLayerOptions extends DoRAOptions {
  /**
   * Make a DoRA adapter ({@linkcode DoRALayer}: A, B and a magnitude `m`), PEFT's `use_dora`; `normAxis` and
   * `detachNorm` then apply. Default `false`: plain LoRA.
   */
  useDora?: boolean;
}

/** Options for a new {@linkcode LinearWithAdapters}. */
export interface LinearWithAdaptersOptions extends AdapterLayerOptions {
  /** Name of the first adapter; default `"default"`, as in PEFT. */
  adapterName?: string;
}

/**
 * A `Linear` layer with named LoRA adapters, in PEFT's vocabulary: the first one is `"default"`,
 * {@linkcode LinearWithAdapters.addAdapter} adds more, {@linkcode LinearWithAdapters.setAdapter} chooses the
 * one `apply` uses (`linear(x) + lora(x)` for that adapter), {@linkcode LinearWithAdapters.merge} folds an
 * adapter into the base weight in place and {@linkcode LinearWithAdapters.unmerge} takes it out again.
 *
 * In parameter names the adapter `"default"` is `lora` (`lora.A`, `lora.B`, as in the tutorial) and an
 * adapter `"x"` is `lora_x`.
 *
 * An adapter made with `useDora: true` is a {@linkcode DoRALayer}: it keeps its own magnitude vector
 * (`lora.m`, PEFT's `lora_magnitude_vector[adapter]`), and `apply` computes DoRA's output with it. Such
 * adapters select, disable, merge, unmerge and mix in a batch like the others. PiSSA (`init: "pissa"`)
 * rewrites the base weight, so it is accepted only for the first adapter (the constructor's).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "../layers.ts";
 * import { LinearWithAdapters } from "./layer.ts";
 * const layer = new LinearWithAdapters(new Linear(784, 128), 4, 8);
 * layer.addAdapter("rotated", 8, 4);
 * console.log(layer.namedParameters().map((p) => p.name));
 * // ["linear.weight", "linear.bias", "lora.A", "lora.B", "lora_rotated.A", "lora_rotated.B"]
 * layer.apply(tf.zeros([2, 784])).dispose();
 * layer.dispose();
 * ```
 */
export class LinearWithAdapters extends Module {
  /** The wrapped base layer. */
  linear: Linear;
  /** Every adapter by name, in the order added. Change it through the methods, which keep the state right. */
  readonly adapters: Map<string, LoRALayer> = new Map();
  private active: string;
  private disabled = false;
  private mergedNames: string[] = [];
  /** Set by `applyMixedBatch` for one forward pass: the adapter of each row of the batch. */
  private rowAdapters: readonly string[] | null = null;
  /**
   * For each merged DoRA adapter, the norm `‖W + ΔW‖` it was merged with: unmerging divides by the same
   * factor (the norm cannot be recomputed from the merged weight). PEFT caches it the same way.
   */
  private mergedNorms: Map<string, Float32Array> = new Map();

  /**
   * Wraps `linear` (which must be a {@linkcode Linear}) with a first adapter of the given rank and alpha
   * (a DoRA adapter with `useDora`; with `init: "pissa"` the base weight becomes PiSSA's residual).
   */
  constructor(linear: Module, rank: number, alpha: number, options: LinearWithAdaptersOptions = {}) {
    super();
    const base = requireLinear("LinearWithAdapters", linear);
    const name = options.adapterName ?? "default";
    checkAdapterName(name);
    this.linear = base;
    this.active = name;
    this.adapters.set(name, newAdapter(base, rank, alpha, options));
  }

  /** The active adapter's low-rank update (the tutorial's `self.lora`). */
  get lora(): LoRALayer {
    const lora = this.adapters.get(this.active);
    if (lora === undefined) {
      throw new Error(`This layer has no adapter "${this.active}"; it has ${listNames(this.adapters.keys())}.`);
    }
    return lora;
  }

  /** Name of the adapter `apply` uses. A layer that has no adapter of that name runs its base layer alone. */
  get activeAdapter(): string {
    return this.active;
  }

  /** Whether any adapter is currently folded into `linear.weight`. */
  get merged(): boolean {
    return this.mergedNames.length > 0;
  }

  /** The adapters folded into `linear.weight`, in the order they were merged (PEFT's `merged_adapters`). */
  get mergedAdapters(): readonly string[] {
    return [...this.mergedNames];
  }

  /** Whether `apply` skips every adapter and runs the base layer alone (PEFT's `disable_adapters`). */
  get adaptersDisabled(): boolean {
    return this.disabled;
  }

  /**
   * The base layer plus the active adapter (DoRA's `x·W′ + b` for a DoRA adapter), or the base layer alone
   * while merged or disabled.
   */
  apply<T extends tf.Tensor>(x: T): T {
    if (this.rowAdapters !== null) return this.applyMixed(x, this.rowAdapters);
    const lora = this.adapters.get(this.active);
    if (this.merged || this.disabled || lora === undefined) return this.linear.apply(x);
    if (lora instanceof DoRALayer) return lora.applyWithBase(this.linear, x);
    return tf.tidy(() => tf.add(this.linear.apply(x), lora.apply(x)));
  }

  /**
   * Runs a batch in which row `i` (the first axis) uses the adapter `adapterNames[i]`
   * ({@linkcode BASE_ADAPTER}, or a name this layer lacks, means the base layer alone). The base product runs
   * once for the whole batch; each adapter's low-rank term runs on its own rows only. The names alone decide:
   * the active adapter and {@linkcode LinearWithAdapters.disableAdapters} play no part.
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
      const { weight, bias } = this.linear;
      const base = this.linear.apply(x);
      let y: tf.Tensor = base;
      for (const name of new Set(adapterNames)) {
        const lora = this.adapters.get(name);
        if (lora === undefined) continue; // base layer alone for these rows
        const rows = adapterNames.flatMap((n, i) => (n === name ? [i] : []));
        const index = tf.tensor2d(rows, [rows.length, 1], "int32");
        const xRows = tf.gatherND(x, index);
        let delta: tf.Tensor;
        if (!(lora instanceof DoRALayer)) {
          delta = lora.apply(xRows);
        } else if (lora.normAxis === "output") {
          // c ⊙ (x·W + s·x·A·B) + b − (x·W + b), with x·W taken from the shared base output.
          const xw = bias === null ? tf.gatherND(base, index) : tf.sub(tf.gatherND(base, index), bias);
          delta = tf.sub(tf.mul(tf.add(xw, lora.apply(xRows)), lora.factor(weight)), xw);
        } else {
          delta = tf.sub(lora.applyWithBase(this.linear, xRows), tf.gatherND(base, index));
        }
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
   * Adds a new adapter named `name` and returns it. It starts as `LoRALayer` does (B zero, so outputs do not
   * change) and frozen unless it is the active one; {@linkcode LinearWithAdapters.setAdapter} makes it active
   * and trainable. With `useDora` it is a {@linkcode DoRALayer}, whose magnitude starts from the base weight,
   * so that is refused while an adapter is merged into it. PiSSA is refused here: it would rewrite the base
   * weight under the adapters the layer already has.
   */
  addAdapter(name: string, rank: number, alpha: number, options: AdapterLayerOptions = {}): LoRALayer {
    checkAdapterName(name);
    if (this.adapters.has(name)) throw new Error(`addAdapter: this layer already has an adapter named "${name}".`);
    if (options.init === "pissa") {
      throw new Error(
        `addAdapter: PiSSA replaces the base weight by a residual, which would change the adapters this layer ` +
          `already has (${listNames(this.adapters.keys())}); PiSSA can only be a layer's first adapter.`,
      );
    }
    if (options.useDora) this.refuseMerged("addAdapter (DoRA, whose magnitude starts from the base weight)");
    const lora = newAdapter(this.linear, rank, alpha, options);
    setTrainable(lora, name === this.active);
    this.adapters.set(name, lora);
    return lora;
  }

  /**
   * Makes `name` the adapter `apply` uses. As in PEFT, its A and B become trainable and every other
   * adapter's are frozen, so training afterwards updates only it. Not allowed while merged.
   */
  setAdapter(name: string): void {
    this.refuseMerged("setAdapter");
    this.active = name;
    for (const [key, lora] of this.adapters) setTrainable(lora, key === name);
  }

  /**
   * Frees and removes the adapter `name`. If it was active, the first remaining adapter becomes active.
   * A merged adapter, or the only one, cannot be deleted.
   */
  deleteAdapter(name: string): void {
    const lora = this.adapters.get(name);
    if (lora === undefined) {
      throw new Error(`deleteAdapter: no adapter named "${name}"; this layer has ${listNames(this.adapters.keys())}.`);
    }
    if (this.mergedNames.includes(name)) {
      throw new Error(`deleteAdapter: adapter "${name}" is merged into the base weight; call unmerge() first.`);
    }
    if (this.adapters.size === 1) {
      throw new Error(`deleteAdapter: "${name}" is this layer's only adapter; use its .linear instead.`);
    }
    lora.dispose();
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
   * Adds `scaling·A·B` of adapter `name` (default: the active one) to the base weight in place, so that
   * inference costs one product. While anything is merged, `apply` runs the base layer alone (which now
   * holds the update). Merging an adapter that is already merged is an error.
   *
   * A DoRA adapter is merged as PEFT merges it: `W ← f ⊙ (W + ΔW)` with `f = m / ‖W + ΔW‖` per unit, the
   * norm kept for {@linkcode LinearWithAdapters.unmerge}. Merging fails, changing nothing, if that would give
   * a weight that is not finite (PEFT's `safe_merge` check).
   */
  merge(name: string = this.active): void {
    if (this.mergedNames.includes(name)) {
      throw new Error(`merge(): adapter "${name}" of this layer is already merged; call unmerge() first.`);
    }
    if (this.disabled) throw new Error("merge(): adapters are disabled; call enableAdapters() first.");
    const lora = this.adapters.get(name);
    if (lora === undefined) {
      throw new Error(`merge(): no adapter named "${name}"; this layer has ${listNames(this.adapters.keys())}.`);
    }
    if (lora instanceof DoRALayer) {
      const weight = this.linear.weight;
      const { merged, norm } = tf.tidy(() => {
        const norm = lora.weightNorm(weight);
        const merged = lora.scaleUnits(tf.add(weight, lora.deltaWeight()), tf.div(lora.m, norm));
        return { merged, norm };
      });
      const finite = tf.tidy(() => tf.all(tf.isFinite(merged)).dataSync()[0] === 1);
      if (!finite) {
        tf.dispose([merged, norm]);
        throw new Error(`merge(): merging DoRA adapter "${name}" gives weights that are not finite; it seems broken.`);
      }
      this.mergedNorms.set(name, norm.dataSync() as Float32Array);
      weight.assign(merged);
      tf.dispose([merged, norm]);
    } else {
      tf.tidy(() => this.linear.weight.assign(tf.add(this.linear.weight, lora.deltaWeight())));
    }
    this.mergedNames.push(name);
  }

  /**
   * Subtracts every merged adapter's `scaling·A·B` from the base weight again, last merged first. The result
   * equals the original weight up to float32 rounding of the add and the subtract (a few units in the last
   * place of the larger of `|W|` and `|ΔW|`).
   *
   * A DoRA adapter comes out as PEFT takes it out: `W ← W_merged / f − ΔW`, with the factor `f` of the norm
   * kept at merge time. Four float32 roundings (add, multiply, divide, subtract) bound the error per element
   * by `2⁻²²·(|W| + |ΔW|)` (each rounding is at most `2⁻²⁴` relative; see `tests/dora_test.ts`).
   */
  unmerge(): void {
    if (!this.merged) throw new Error("unmerge(): this layer is not merged; nothing to unmerge.");
    while (this.mergedNames.length > 0) {
      const name = this.mergedNames.at(-1)!;
      const lora = this.adapters.get(name)!;
      const weight = this.linear.weight;
      if (lora instanceof DoRALayer) {
        const norm = this.mergedNorms.get(name)!;
        tf.tidy(() => {
          const factor = tf.div(lora.m, tf.tensor1d(norm)); // the same bits as at merge time
          const perUnit = lora.normAxis === "output" ? factor : tf.expandDims(factor, 1);
          weight.assign(tf.sub(tf.div(weight, perUnit), lora.deltaWeight()));
        });
        this.mergedNorms.delete(name);
      } else {
        tf.tidy(() => weight.assign(tf.sub(weight, lora.deltaWeight())));
      }
      this.mergedNames.pop();
    }
  }

  /** `linear`, then each adapter under its key (`lora`, `lora_<name>`). */
  override children(): [string, Module][] {
    return [
      ["linear", this.linear],
      ...[...this.adapters].map(([name, lora]): [string, Module] => [adapterKey(name), lora]),
    ];
  }

  /** Throws for `caller` while any adapter is folded into the base weight. */
  private refuseMerged(caller: string): void {
    if (this.merged) {
      throw new Error(`${caller}: adapters ${listNames(this.mergedNames)} are merged; call unmerge() first.`);
    }
  }
}

/** A LoRA or DoRA adapter for `linear`, as `options` asks. */
function newAdapter(linear: Linear, rank: number, alpha: number, options: AdapterLayerOptions): LoRALayer {
  return options.useDora ? new DoRALayer(linear, rank, alpha, options) : createLoRALayer(linear, rank, alpha, options);
}

/** Marks every parameter of an adapter (A, B, and a DoRA adapter's m) trainable or frozen. */
function setTrainable(lora: LoRALayer, trainable: boolean): void {
  for (const [, variable] of lora.ownParameters()) variable.trainable = trainable;
}

/**
 * The child name of adapter `name` in parameter names: `lora` for `"default"` (the tutorial's name),
 * `lora_<name>` otherwise.
 *
 * @example
 * ```ts
 * import { adapterKey } from "./layer.ts";
 * console.log(adapterKey("default"), adapterKey("rotated")); // lora lora_rotated
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
 * import { checkAdapterName } from "./layer.ts";
 * checkAdapterName("rotated"); // fine
 * try {
 *   checkAdapterName("a.b");
 * } catch (error) {
 *   console.log((error as Error).message);
 * }
 * ```
 */
export function checkAdapterName(name: string): void {
  if (typeof name !== "string" || !/^[A-Za-z0-9_-]+$/.test(name) || name === BASE_ADAPTER) {
    throw new RangeError(
      `Adapter names are made of letters, digits, "_" and "-", and "${BASE_ADAPTER}" is reserved; got "${name}".`,
    );
  }
}

/**
 * Names in quotes, joined by commas, or `none`, for error messages.
 *
 * @example
 * ```ts
 * import { listNames } from "./layer.ts";
 * console.log(listNames(["a", "b"]), listNames([])); // "a", "b" none
 * ```
 */
export function listNames(names: Iterable<string>): string {
  const list = [...names];
  return list.length === 0 ? "none" : list.map((n) => `"${n}"`).join(", ");
}
