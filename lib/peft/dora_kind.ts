/**
 * The DoRA kind: a `DoRALayer` (A, B and a magnitude `m`) as PEFT stores it, LoRA's keys plus
 * `lora_magnitude_vector` `[out]` under each module and `"use_dora": true` in the config
 * (`utils/save_and_load.py` in PEFT 0.21.0 drops the `.weight` of the magnitude parameter; both forms are read).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { DoRALayer } from "../dora.ts";
import type { BaseLayer } from "../layers.ts";
import type { Module } from "../module.ts";
import { assignFrom } from "../weights.ts";
import { checkLoraConfig, MAGNITUDE } from "./config.ts";
import type { AdapterKind, Placed } from "./kind.ts";
import {
  assignFactors,
  assignFinite,
  buildAll,
  checkFactors,
  loadedInit,
  LORA_KEYS,
  loraOptions,
  refusePissaOnTop,
  requireAlpha,
  saveFactors,
  withSeed,
} from "./lora_kind.ts";

/**
 * DoRA (Liu et al., 2024): `W′ = m · (W + s·A·B) / ‖W + s·A·B‖`, computed without forming `W′` (see
 * `DoRALayer.applyWithBase`); merged as PEFT merges it, `W ← f ⊙ (W + ΔW)` with `f = m / ‖W + ΔW‖`, the norm
 * kept so that unmerging divides by the same factor (`W ← W_merged / f − ΔW`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Linear } from "../layers.ts";
 * import { doraKind } from "./dora_kind.ts";
 * const base = new Linear(4, 3, { seed: 1 });
 * const [dora] = doraKind.create([{ module: "x", base, existing: [], merged: false }], { rank: 2, alpha: 4 });
 * assert.deepEqual(dora.m.shape, [3]);
 * base.dispose();
 * dora.dispose();
 * ```
 */
export const doraKind: AdapterKind<DoRALayer> = {
  name: "dora",
  title: "DoRA",
  owns: (module: Module): module is DoRALayer => module instanceof DoRALayer,
  create(targets, spec) {
    const options = loraOptions(spec);
    refusePissaOnTop(targets, options.init);
    refuseMergedBase(targets);
    return buildAll(
      targets,
      options.init === "pissa",
      (target, k) => new DoRALayer(target.base, spec.rank, requireAlpha(spec), withSeed(options, spec.seed, k)),
    );
  },
  forward: (dora, base, x) => dora.applyWithBase(base, x),
  delta(dora, base, x, baseOut) {
    return tf.tidy(() => {
      if (dora.normAxis === "input") return tf.sub(dora.applyWithBase(base, x), baseOut);
      // c ⊙ (x·W + s·x·A·B) + b − (x·W + b), with x·W taken from the shared base output.
      const xw = base.bias === null ? baseOut : tf.sub(baseOut, base.bias);
      return tf.sub(tf.mul(tf.add(xw, dora.apply(x)), dora.factor(base.denseWeight())), xw);
    });
  },
  deltaWeight: (dora, base) =>
    tf.tidy(() => {
      const weight = base.denseWeight();
      return tf.sub(dora.adaptedWeight(weight), weight);
    }),
  merge(dora, base) {
    const { merged, norm } = tf.tidy(() => {
      const weight = base.denseWeight();
      const norm = dora.weightNorm(weight);
      return { merged: dora.scaleUnits(tf.add(weight, dora.deltaWeight()), tf.div(dora.m, norm)), norm };
    });
    const kept = norm.dataSync() as Float32Array; // the norm cannot be recomputed from the merged weight
    norm.dispose();
    assignFinite(base, merged, "DoRA");
    return () =>
      tf.tidy(() => {
        const factor = tf.div(dora.m, tf.tensor1d(kept)); // the same bits as at merge time
        const perUnit = dora.normAxis === "output" ? factor : tf.expandDims(factor, 1);
        base.writeWeight(tf.sub(tf.div(base.denseWeight(), perUnit), dora.deltaWeight()));
      });
  },
  factors: () => null, // W′ − W is not a scaled product of A and B: combining would drop the magnitudes
  reads: (config) => config.peft_type === "LORA" && config.use_dora === true,
  async save(placed: readonly Placed<DoRALayer>[], adapterName) {
    const input = placed.find((p) => p.adapter.normAxis !== "output");
    if (input !== undefined) {
      throw new Error(
        `adapterToFiles: adapter "${adapterName}" is DoRA with one magnitude per input unit (normAxis "input") in ` +
          `${input.module}; PEFT's DoRA files hold one per output unit (lora_magnitude_vector [out]), so it cannot be saved.`,
      );
    }
    const saved = await saveFactors(placed, adapterName, true);
    for (const { module, adapter } of placed) {
      saved.tensors.set(`base_model.model.${module}.${MAGNITUDE}`, {
        shape: adapter.m.shape,
        data: await adapter.m.data() as Float32Array,
      });
    }
    return saved;
  },
  checkConfig(config) {
    checkLoraConfig(config);
  },
  keys: () => ({ layer: [...LORA_KEYS, MAGNITUDE, `${MAGNITUDE}.weight`], shared: [] }),
  load(targets, source) {
    const config = checkLoraConfig(source.config);
    const settings = checkFactors(targets, source, config);
    refuseMergedBase(targets);
    const magnitudes = new Map(targets.map(({ module, base }) => {
      const tensors = source.layers.get(module)!;
      if (tensors.has(MAGNITUDE) && tensors.has(`${MAGNITUDE}.weight`)) {
        throw new Error(`loadAdapter: ${module} has two magnitude keys (with and without ".weight"); expected one.`);
      }
      const m = tensors.get(MAGNITUDE) ?? tensors.get(`${MAGNITUDE}.weight`);
      if (m === undefined) {
        throw new Error(
          `loadAdapter: missing key "base_model.model.${module}.${MAGNITUDE}": the config sets use_dora and ` +
            `target_modules ${JSON.stringify(config.target_modules)} selects ${module}.`,
        );
      }
      if (!tf.util.arraysEqual(m.shape, [base.outFeatures])) {
        throw new RangeError(
          `loadAdapter: ${module} has ${base.outFeatures} output units, so its ${MAGNITUDE} must have shape ` +
            `[${base.outFeatures}]; the file has [${m.shape}].`,
        );
      }
      return [module, m];
    }));
    return buildAll(targets, config.init_lora_weights === "pissa", (target) => {
      const { rank, alpha, convention } = settings.get(target.module)!;
      const dora = new DoRALayer(target.base, rank, alpha, { scaling: convention, init: loadedInit(config) });
      try {
        assignFactors(dora, source.layers.get(target.module)!);
        assignFrom(dora.m, magnitudes.get(target.module)!);
        checkNorms(dora, target.module, target.base);
      } catch (error) {
        dora.dispose();
        throw error;
      }
      return dora;
    });
  },
  describe: (dora) => `rank ${dora.rank}, scaling ${dora.scaling}, norm per ${dora.normAxis} unit`,
};

/** DoRA's magnitude starts from the base weight, which must not hold a merged adapter. */
function refuseMergedBase(targets: readonly { module: string; merged: boolean }[]): void {
  const merged = targets.find((t) => t.merged);
  if (merged !== undefined) {
    throw new Error(
      `${merged.module} has adapters merged into its base weight, from which a DoRA adapter starts; call ` +
        "unmergeAdapter first.",
    );
  }
}

/** Throws, naming the units, where `‖W + s·A·B‖` is zero or not finite or `m` is not finite (DoRA divides by it). */
function checkNorms(dora: DoRALayer, module: string, base: BaseLayer): void {
  const norm = tf.tidy(() => dora.weightNorm(base.denseWeight()).dataSync());
  const m = dora.m.dataSync();
  const bad = [...norm.keys()].filter((i) => !(norm[i] > 0 && Number.isFinite(norm[i]) && Number.isFinite(m[i])));
  if (bad.length > 0) {
    throw new RangeError(
      `loadAdapter: in ${module} the DoRA unit(s) ${bad.slice(0, 5).join(", ")}${bad.length > 5 ? ", …" : ""} ` +
        "have ‖W + s·A·B‖ = 0 or a value that is not finite, so their direction is undefined.",
    );
  }
}
