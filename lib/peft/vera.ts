/**
 * VeRA, vector-based random matrix adaptation (Kopiczko et al., 2024, arXiv 2310.11454): one pair of frozen
 * random projections shared by every adapted layer, and per layer two trainable scaling vectors,
 *
 *     ΔW = (A ⊙ λ_d) · B ⊙ λ_b        (weights `[in, out]`, A `[in, r]`, B `[r, out]`)
 *
 * with `λ_d` `[r]` scaling the r columns of A and `λ_b` `[out]` scaling the output units. A layer trains
 * `r + out` numbers where LoRA trains `r·(in + out)`, so VeRA's rank is usually far larger (PEFT's default
 * is 256).
 *
 * What was read in PEFT 0.21.0 (`tuners/vera/layer.py`, `model.py`, and a file its `save_pretrained` wrote):
 *
 * - The shared projections are sized for the largest adapted layer: `vera_A` `[r, max in]` and `vera_B`
 *   `[max out, r]` in PyTorch's layout, and each layer uses the top-left part, `vera_A[:, :in]` and
 *   `vera_B[:out, :]`. Here they are kept transposed (`[max in, r]` and `[r, max out]`) and sliced the same way.
 * - Starts: `λ_b = 0` (so the model is unchanged), `λ_d = d_initial` (0.1); the projections are Kaiming-uniform,
 *   `±√(6 / fan_in)`, with fan_in = max in for A and r for B.
 * - Files: `base_model.model.<module>.vera_lambda_b` `[out]` and `…vera_lambda_d` `[r]`, and the shared
 *   `base_model.vera_A` and `base_model.vera_B` when `save_projection` is true (PEFT's default), with
 *   `"peft_type": "VERA"`, `r`, `projection_prng_key`, `d_initial` in the config.
 *
 * Departures, on purpose: the projections are drawn from TensorFlow.js's seeded generator, not PyTorch's, so
 * this library always saves them (`save_projection: true`) and refuses a file without them (PEFT would rebuild
 * them from `projection_prng_key` with PyTorch's generator). Each named VeRA adapter has its own projection
 * pair; PEFT shares one pair between all VeRA adapters of a model (and so requires the same key for all).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { checkDim, nextSeed } from "../layers.ts";
import { Module } from "../module.ts";
import { matMul } from "../ops.ts";
import type { StoredTensor } from "../safetensors.ts";
import { tfSeed } from "../tfjs_internals.ts";
import { assignFrom, transpose2d } from "../weights.ts";
import type { AdapterKind, AdapterSource, SavedAdapter, Target } from "./kind.ts";
import { assignFinite, buildAll } from "./lora_kind.ts";

/** VeRA's options (PEFT's `VeraConfig` names in brackets). */
export interface VeRAOptions {
  /** The starting value of every entry of `λ_d` [`d_initial`]; default 0.1. */
  dInitial?: number;
  /** Seed of the shared projections [`projection_prng_key`]; default 0. */
  seed?: number;
}

/** The two frozen projections one VeRA adapter shares between its layers: A `[maxIn, r]`, B `[r, maxOut]`. */
export type VeRAProjections = {
  /** `[maxIn, r]`. */
  A: tf.Tensor2D;
  /** `[r, maxOut]`. */
  B: tf.Tensor2D;
};

/**
 * The shared projections for adapters of rank `rank` on layers up to `maxIn` inputs and `maxOut` outputs,
 * Kaiming-uniform as PEFT draws them, from `seed`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { veraProjections } from "./vera.ts";
 * const { A, B } = veraProjections(6, 5, 2, 7);
 * assert.deepEqual([A.shape, B.shape], [[6, 2], [2, 5]]);
 * assert.ok(A.abs().max().dataSync()[0] <= Math.sqrt(6 / 6));
 * A.dispose();
 * B.dispose();
 * ```
 */
export function veraProjections(maxIn: number, maxOut: number, rank: number, seed: number): VeRAProjections {
  checkDim("VeRA", "rank", rank);
  return tf.tidy((): VeRAProjections => ({
    A: tf.randomUniform<tf.Rank.R2>(
      [maxIn, rank],
      -Math.sqrt(6 / maxIn),
      Math.sqrt(6 / maxIn),
      "float32",
      tfSeed(seed),
    ),
    B: tf.randomUniform<tf.Rank.R2>(
      [rank, maxOut],
      -Math.sqrt(6 / rank),
      Math.sqrt(6 / rank),
      "float32",
      tfSeed(seed + 1),
    ),
  }));
}

/**
 * One layer's VeRA adapter: the trainable vectors `lambda_d` `[rank]` and `lambda_b` `[outDim]`, and its own
 * handle on the shared projections (frozen tensors, not parameters). `apply(x)` is the update alone,
 * `((x·A) ⊙ λ_d)·B ⊙ λ_b` with A and B cut to this layer's size.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { VeRALayer, veraProjections } from "./vera.ts";
 * const projections = veraProjections(6, 5, 4, 1);
 * const vera = new VeRALayer(6, 5, projections);
 * assert.deepEqual(vera.namedParameters().map((p) => p.name), ["lambda_d", "lambda_b"]);
 * assert.equal(tf.abs(vera.apply(tf.ones([2, 6]))).sum().dataSync()[0], 0); // λ_b starts at zero
 * vera.dispose();
 * tf.dispose([projections.A, projections.B]);
 * ```
 */
export class VeRALayer extends Module {
  /** Input width. */
  readonly inDim: number;
  /** Output width. */
  readonly outDim: number;
  /** Width of the shared projections. */
  readonly rank: number;
  /** The value `lambda_d` started from. */
  readonly dInitial: number;
  /** Seed the shared projections were drawn from (PEFT's `projection_prng_key`). */
  readonly seed: number;
  /** Scales the r columns of the projection A; starts at `dInitial`. */
  lambda_d: tf.Variable<tf.Rank.R1>;
  /** Scales the output units; starts at zero. */
  lambda_b: tf.Variable<tf.Rank.R1>;
  /** This layer's handle on the shared `[maxIn, rank]` projection (a frozen tensor). */
  sharedA: tf.Tensor2D;
  /** This layer's handle on the shared `[rank, maxOut]` projection (a frozen tensor). */
  sharedB: tf.Tensor2D;

  /** A VeRA adapter from `inDim` to `outDim` values on `projections`, which must be at least that large. */
  constructor(inDim: number, outDim: number, projections: VeRAProjections, options: VeRAOptions = {}) {
    super();
    checkDim("VeRALayer", "inDim", inDim);
    checkDim("VeRALayer", "outDim", outDim);
    const [maxIn, rank] = projections.A.shape, maxOut = projections.B.shape[1];
    if (projections.B.shape[0] !== rank || maxIn < inDim || maxOut < outDim) {
      throw new RangeError(
        `VeRALayer: projections A [${projections.A.shape}] and B [${projections.B.shape}] cannot serve a ` +
          `${inDim}→${outDim} layer; expected A [≥ ${inDim}, r] and B [r, ≥ ${outDim}].`,
      );
    }
    const dInitial = options.dInitial ?? 0.1;
    if (typeof dInitial !== "number" || !Number.isFinite(dInitial)) {
      throw new RangeError(`VeRA dInitial must be a finite number; got ${dInitial}.`);
    }
    this.inDim = inDim;
    this.outDim = outDim;
    this.rank = rank;
    this.dInitial = dInitial;
    this.seed = options.seed ?? 0;
    this.lambda_d = tf.tidy(() => tf.variable(tf.fill([rank], dInitial)));
    this.lambda_b = tf.tidy(() => tf.variable(tf.zeros([outDim])));
    // Handles of their own (same memory): freeing one layer leaves the others' projections alive.
    this.sharedA = tf.clone(projections.A);
    this.sharedB = tf.clone(projections.B);
  }

  /** A VeRA layer is an adapter: freezing the base leaves its vectors alone. */
  override get isAdapter(): boolean {
    return true;
  }

  /** `((x·A) ⊙ λ_d)·B ⊙ λ_b` over the last axis of `x`. */
  apply<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => {
      const { A, B } = this.projections();
      return tf.mul(matMul(tf.mul(matMul(x, A), this.lambda_d), B), this.lambda_b) as T;
    });
  }

  /** `ΔW = (A ⊙ λ_d)·B ⊙ λ_b`, `[inDim, outDim]`. */
  deltaWeight(): tf.Tensor2D {
    return tf.tidy(() => {
      const { A, B } = this.projections();
      return tf.mul(matMul(tf.mul(A, this.lambda_d), B), this.lambda_b) as tf.Tensor2D;
    });
  }

  /** The parts of the shared projections this layer uses: A `[inDim, rank]`, B `[rank, outDim]`. */
  projections(): VeRAProjections {
    return tf.tidy(() => ({
      A: tf.slice(this.sharedA, [0, 0], [this.inDim, this.rank]),
      B: tf.slice(this.sharedB, [0, 0], [this.rank, this.outDim]),
    }));
  }

  /** Shapes, rank and the shared projections' size. */
  override extraRepr(): string {
    return `in_dim=${this.inDim}, out_dim=${this.outDim}, rank=${this.rank}, projections=[${this.sharedA.shape}]` +
      `·[${this.sharedB.shape}]`;
  }
}

/**
 * The VeRA kind: `addLoRA(model, { kind: "vera", rank: 256 })` (PEFT's `VeraConfig`), with `dInitial` and
 * `seed` (the projections' seed) as options.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { countParameters } from "../module.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10), { kind: "vera", rank: 64 });
 * assert.equal(countParameters(model).trainable, 3 * 64 + 128 + 256 + 10); // λ_d per layer and λ_b
 * model.dispose();
 * ```
 */
export const veraKind: AdapterKind<VeRALayer> = {
  name: "vera",
  title: "VeRA",
  owns: (module: Module): module is VeRALayer => module instanceof VeRALayer,
  create(targets, spec) {
    const { rank, seed = nextSeed() } = spec;
    const dInitial = spec.dInitial as number | undefined;
    const projections = veraProjections(
      Math.max(...targets.map((t) => t.base.inFeatures)),
      Math.max(...targets.map((t) => t.base.outFeatures)),
      rank,
      seed,
    );
    try {
      return buildAll(
        targets,
        false,
        (t) => new VeRALayer(t.base.inFeatures, t.base.outFeatures, projections, { dInitial, seed }),
      );
    } finally {
      tf.dispose([projections.A, projections.B]);
    }
  },
  forward: (vera, base, x) => tf.tidy(() => tf.add(base.apply(x), vera.apply(x))),
  delta: (vera, _base, x) => vera.apply(x),
  deltaWeight: (vera) => vera.deltaWeight(),
  merge(vera, base) {
    assignFinite(base, tf.tidy(() => tf.add(base.denseWeight(), vera.deltaWeight()) as tf.Tensor2D), "VeRA");
    return () => tf.tidy(() => base.writeWeight(tf.sub(base.denseWeight(), vera.deltaWeight())));
  },
  factors(vera) {
    const { a, b } = tf.tidy(() => {
      const { A, B } = vera.projections();
      return { a: tf.mul(A, vera.lambda_d), b: tf.mul(B, vera.lambda_b) };
    });
    const out = {
      a: Float64Array.from(a.dataSync()),
      b: Float64Array.from(b.dataSync()),
      rank: vera.rank,
      scaling: 1,
      convention: "tutorial" as const,
    };
    tf.dispose([a, b]);
    return out;
  },
  reads: (config) => config.peft_type === "VERA",
  async save(placed, adapterName): Promise<SavedAdapter> {
    const first = placed[0].adapter;
    const odd = placed.find((p) =>
      !tf.util.arraysEqual(p.adapter.sharedA.shape, first.sharedA.shape) ||
      !tf.util.arraysEqual(p.adapter.sharedB.shape, first.sharedB.shape) || p.adapter.seed !== first.seed ||
      p.adapter.dInitial !== first.dInitial || p.base.fanInFanOut !== placed[0].base.fanInFanOut
    );
    if (odd !== undefined) {
      throw new Error(
        `adapterToFiles: VeRA adapter "${adapterName}" has other projections, seed, dInitial or weight layout in ` +
          `${odd.module} than in ${placed[0].module}; PEFT's file holds one shared pair and one config.`,
      );
    }
    const tensors = new Map();
    for (const { module, adapter } of placed) {
      tensors.set(`base_model.model.${module}.vera_lambda_b`, vector(await adapter.lambda_b.data()));
      tensors.set(`base_model.model.${module}.vera_lambda_d`, vector(await adapter.lambda_d.data()));
    }
    tensors.set("base_model.vera_A", transpose2d(await first.sharedA.data(), first.sharedA.shape));
    tensors.set("base_model.vera_B", transpose2d(await first.sharedB.data(), first.sharedB.shape));
    const config = {
      peft_type: "VERA",
      task_type: null,
      base_model_name_or_path: null,
      r: first.rank,
      target_modules: placed.map((p) => p.module),
      projection_prng_key: first.seed,
      save_projection: true,
      vera_dropout: 0,
      d_initial: first.dInitial,
      fan_in_fan_out: placed[0].base.fanInFanOut,
      bias: "none",
      modules_to_save: null,
      init_weights: true,
      layers_to_transform: null,
      layers_pattern: null,
      inference_mode: true,
    };
    return { config, metadata: { format: "pt" }, tensors };
  },
  checkConfig(config) {
    const where = "loadAdapter: adapter_config.json";
    if (!(Number.isInteger(config.r) && (config.r as number) > 0)) {
      throw new RangeError(`${where} has r = ${JSON.stringify(config.r)}; expected a positive integer.`);
    }
    if (config.save_projection === false) {
      throw new Error(
        `${where} has save_projection false: the shared projections are not in the file, and rebuilding them from ` +
          "projection_prng_key needs PyTorch's random generator, which this library does not reproduce.",
      );
    }
    for (const field of ["d_initial", "projection_prng_key"]) {
      const value = config[field];
      if (value !== undefined && !(typeof value === "number" && Number.isFinite(value))) {
        throw new RangeError(`${where} has ${field} ${JSON.stringify(value)}; expected a finite number.`);
      }
    }
    if (config.fan_in_fan_out !== undefined && typeof config.fan_in_fan_out !== "boolean") {
      throw new Error(`${where} has fan_in_fan_out ${JSON.stringify(config.fan_in_fan_out)}; expected true or false.`);
    }
    const targets = config.target_modules;
    if (!(typeof targets === "string" || (Array.isArray(targets) && targets.every((t) => typeof t === "string")))) {
      throw new Error(
        `${where} has target_modules ${JSON.stringify(targets)}; expected a list of names or a regular expression.`,
      );
    }
  },
  keys: () => ({ layer: ["vera_lambda_b", "vera_lambda_d"], shared: ["vera_A", "vera_B"] }),
  load(targets: readonly Target[], source: AdapterSource) {
    const { config, shared } = source;
    const r = config.r as number;
    const [maxIn, maxOut] = [
      Math.max(...targets.map((t) => t.base.inFeatures)),
      Math.max(...targets.map((t) => t.base.outFeatures)),
    ];
    const [A, B] = ["vera_A", "vera_B"].map((key) => {
      const tensor = shared.get(key);
      if (tensor === undefined) throw new Error(`loadAdapter: missing key "base_model.${key}" (VeRA's projection).`);
      return tensor;
    });
    if (A.shape.length !== 2 || A.shape[0] !== r || A.shape[1] < maxIn) {
      throw new RangeError(
        `loadAdapter: base_model.vera_A must be [r = ${r}, ≥ ${maxIn}] for the selected layers; it is [${A.shape}].`,
      );
    }
    if (B.shape.length !== 2 || B.shape[1] !== r || B.shape[0] < maxOut) {
      throw new RangeError(
        `loadAdapter: base_model.vera_B must be [≥ ${maxOut}, r = ${r}] for the selected layers; it is [${B.shape}].`,
      );
    }
    for (const { module, base } of targets) {
      const tensors = source.layers.get(module) ?? new Map<string, StoredTensor>();
      for (const [key, size] of [["vera_lambda_b", base.outFeatures], ["vera_lambda_d", r]] as const) {
        const tensor = tensors.get(key);
        if (tensor === undefined) {
          throw new Error(
            `loadAdapter: missing key "base_model.model.${module}.${key}": target_modules ` +
              `${JSON.stringify(config.target_modules)} selects ${module}.`,
          );
        }
        if (!tf.util.arraysEqual(tensor.shape, [size])) {
          throw new RangeError(
            `loadAdapter: ${module}'s ${key} must have shape [${size}]; the file has [${tensor.shape}].`,
          );
        }
      }
    }
    const projections = tf.tidy(() => ({
      A: tf.tensor2d(transpose2d(A.data, A.shape).data as Float32Array, [A.shape[1], r]),
      B: tf.tensor2d(transpose2d(B.data, B.shape).data as Float32Array, [r, B.shape[0]]),
    }));
    const options = {
      dInitial: (config.d_initial as number | undefined) ?? 0.1,
      seed: Number(config.projection_prng_key ?? 0),
    };
    try {
      return buildAll(targets, false, (t) => {
        const vera = new VeRALayer(t.base.inFeatures, t.base.outFeatures, projections, options);
        const tensors = source.layers.get(t.module)!;
        assignFrom(vera.lambda_b, tensors.get("vera_lambda_b")!);
        assignFrom(vera.lambda_d, tensors.get("vera_lambda_d")!);
        return vera;
      });
    } finally {
      tf.dispose([projections.A, projections.B]);
    }
  },
  describe: (vera) => `rank ${vera.rank}`,
};

function vector(data: ArrayLike<number>): { shape: number[]; data: Float32Array } {
  return { shape: [data.length], data: Float32Array.from(data) };
}
