/**
 * A frozen base in four or eight bits, QLoRA's memory saving: the NormalFloat-4 code, blockwise absmax
 * quantization with optional double quantization of the block scales, int8 absmax per output row, and
 * {@linkcode QuantizedLinear}, a base layer that keeps only the packed weights and dequantizes them in its
 * forward pass. The codes themselves are in `quant_codes.ts`, re-exported here.
 *
 * Everything here follows bitsandbytes 0.50.2.dev0 (repository bitsandbytes-foundation/bitsandbytes, commit
 * 95f9af309d4d5793847169c39288dcd3fcbdf564, as read): `get_4bit_type`, `create_normal_map`, `create_dynamic_map`,
 * `quantize_4bit`, `quantize_blockwise` and `int8_vectorwise_quant` in `bitsandbytes/functional.py`, and their
 * PyTorch-only kernels in `bitsandbytes/backends/default/ops.py` and `bitsandbytes/_ops.py`, whose float32
 * arithmetic is reproduced step by step (each product and quotient rounded to float32 as PyTorch rounds it), so
 * the packed bytes and scales are the ones bitsandbytes writes. The NF4 code itself is defined in Dettmers et al.,
 * "QLoRA: Efficient Finetuning of Quantized LLMs" (2023), §3 "4-bit NormalFloat Quantization" and "Double
 * Quantization".
 *
 * **Order of the weights.** bitsandbytes quantizes a PyTorch weight, stored `[out, in]`, flattened row-major:
 * value `k` is `W_pt[o][i]` with `k = o·in + i`. A {@linkcode Linear} here stores the transpose, `[in, out]`, so
 * {@linkcode QuantizedLinear} quantizes `W[i][o]` at position `o·in + i`: the same flat order, the same blocks, the
 * same bytes, so that an exporter can write tensors bitsandbytes (and PEFT's `Linear4bit`) read as they are.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type BaseLayer, checkInput, Linear } from "./layers.ts";
import { getModule, Module, setModule } from "./module.ts";
import { matMul } from "./ops.ts";
import { findTargets, type TargetModules } from "./peft/targets.ts";
import {
  checkBlockSize,
  DOUBLE_QUANT_BLOCK_SIZE,
  type Int8Rows,
  INVERSE_127,
  NF4_BLOCK_SIZES,
  NF4_TABLE,
  nf4Scales,
  type NF4Tensor,
  quantizeInt8Rows,
  quantizeNF4,
} from "./quant_codes.ts";

export {
  type Blockwise8,
  dequantizeBlockwise8,
  dequantizeInt8Rows,
  dequantizeNF4,
  DOUBLE_QUANT_BLOCK_SIZE,
  type DoubleQuantState,
  dynamicCode,
  type Int8Rows,
  NF4_BLOCK_SIZES,
  NF4_CODE,
  type NF4Options,
  nf4Scales,
  type NF4Tensor,
  quantizeBlockwise8,
  quantizeInt8Rows,
  quantizeNF4,
} from "./quant_codes.ts";

const f32 = Math.fround;

/** Bytes of a quantized weight, by part; the code tables are shared constants and not counted. */
export interface QuantizedBytes {
  /** The packed 4-bit indices (`ceil(n / 2)`) or the int8 values (`n`). */
  weights: number;
  /** float32 block absmax (NF4), float32 row scales (int8), or one byte per block under double quantization. */
  scales: number;
  /** Double quantization's float32 absmax per 256 block scales, and its float32 offset; 0 without it. */
  doubleQuant: number;
  /** The sum of the three. */
  total: number;
}

/** What {@linkcode quantizedBytes} counts for. */
export interface QuantizeSpec {
  /** 4 for NF4, 8 for int8 per row. */
  bits: 4 | 8;
  /** NF4 values per block (default 64). */
  blockSize?: number;
  /** NF4 double quantization (default false). */
  doubleQuant?: boolean;
}

/**
 * Exact bytes of an `[outFeatures, inFeatures]` weight quantized as `spec` says, before quantizing it: NF4 takes
 * `ceil(n / 2)` bytes of indices and 4 bytes per block of scales, or with double quantization 1 byte per block
 * plus 4 per 256 blocks plus a 4-byte offset; int8 takes `n` bytes plus 4 per output row. (bitsandbytes' state
 * also keeps copies of the 16- and 256-value code tables, 64 and 1024 bytes per tensor, which are the same for
 * every layer and not counted here.) A float32 weight is `4n` bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { quantizedBytes } from "./quant.ts";
 * assert.deepEqual(quantizedBytes(784, 128, { bits: 4 }), { weights: 50176, scales: 6272, doubleQuant: 0, total: 56448 });
 * assert.equal(quantizedBytes(784, 128, { bits: 4, doubleQuant: true }).total, 50176 + 1568 + 4 * 7 + 4);
 * assert.equal(quantizedBytes(784, 128, { bits: 8 }).total, 784 * 128 + 4 * 128);
 * ```
 */
export function quantizedBytes(inFeatures: number, outFeatures: number, spec: QuantizeSpec): QuantizedBytes {
  const n = inFeatures * outFeatures;
  checkSpec(spec, "quantizedBytes");
  if (spec.bits === 8) return sizes(n, 4 * outFeatures, 0);
  const blocks = Math.ceil(n / (spec.blockSize ?? 64));
  if (!spec.doubleQuant) return sizes(Math.ceil(n / 2), 4 * blocks, 0);
  return sizes(Math.ceil(n / 2), blocks, 4 * Math.ceil(blocks / DOUBLE_QUANT_BLOCK_SIZE) + 4);
}

function sizes(weights: number, scales: number, doubleQuant: number): QuantizedBytes {
  return { weights, scales, doubleQuant, total: weights + scales + doubleQuant };
}

function checkSpec(spec: QuantizeSpec, caller: string): void {
  if (spec === null || typeof spec !== "object") {
    throw new TypeError(`${caller}: expected options such as { bits: 4 } or { bits: 8 }; got ${spec}.`);
  }
  if (spec.bits !== 4 && spec.bits !== 8) {
    throw new RangeError(`${caller}: bits must be 4 (NF4) or 8 (int8 per row); got ${JSON.stringify(spec.bits)}.`);
  }
  if (spec.bits === 8 && (spec.blockSize !== undefined || spec.doubleQuant)) {
    throw new RangeError(
      `${caller}: blockSize and doubleQuant apply to 4 bits only; int8 uses one scale per output row.`,
    );
  }
  if (spec.blockSize !== undefined) checkBlockSize(spec.blockSize, NF4_BLOCK_SIZES, caller);
  if (spec.doubleQuant !== undefined && typeof spec.doubleQuant !== "boolean") {
    throw new TypeError(`${caller}: doubleQuant must be true or false; got ${JSON.stringify(spec.doubleQuant)}.`);
  }
}

/** A quantized weight, as {@linkcode QuantizedLinear} holds it. */
export type QuantizedWeight = { bits: 4; nf4: NF4Tensor } | { bits: 8; int8: Int8Rows };

/**
 * A frozen linear layer `y = x·W + b` whose weight is stored quantized: NF4 (QLoRA's 4-bit NormalFloat, bitsandbytes'
 * `Linear4bit`) or int8 per output row (bitsandbytes' `Linear8bitLt` without outlier decomposition). Only the
 * packed weight and its scales stay in memory (plain `Uint8Array`/`Int8Array`/`Float32Array`, shared by clones,
 * never changed in place); `apply` dequantizes to float32 and multiplies, so its output is exactly
 * `matMul(x, layer.dequantize())` plus the bias.
 *
 * Its layout is that of {@linkcode Linear}: the weight is conceptually `[inFeatures, outFeatures]`; it is
 * quantized in PyTorch's `[out, in]` row-major order (see the module's notes), so blocks run along the input axis.
 * The bias stays float32, as in bitsandbytes.
 *
 * **Frozen by construction.** The layer holds no `tf.Variable`: `namedParameters` lists nothing, so no optimizer
 * and no `tf.variableGrads` can update it, while gradients still flow through it to the input (to adapters and
 * layers below it). Setting `trainable = true` throws, and so do reading or assigning `weight`, which would be a
 * float copy: read {@linkcode QuantizedLinear.dequantize} instead, or build a new layer with
 * {@linkcode QuantizedLinear.fromLinear}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Linear } from "./layers.ts";
 * import { QuantizedLinear } from "./quant.ts";
 * const linear = new Linear(128, 16, { seed: 1 });
 * const q = QuantizedLinear.fromLinear(linear, { bits: 4 });
 * assert.equal(String(q), "QuantizedLinear(in_features=128, out_features=16, bias=true, bits=4, block_size=64)");
 * assert.equal(q.namedParameters().length, 0);
 * assert.throws(() => { q.trainable = true; }, /frozen/);
 * const x = tf.randomNormal([2, 128], 0, 1, "float32", 7);
 * const err = tf.tidy(() => tf.max(tf.abs(tf.sub(q.apply(x), linear.apply(x)))).dataSync()[0]);
 * assert.ok(err > 0 && err < 0.3, `4-bit output error ${err}`); // |W| ≤ 0.09, so each weight is off by ≤ 0.014
 * tf.dispose([x]);
 * q.dispose();
 * linear.dispose();
 * ```
 */
export class QuantizedLinear extends Module implements BaseLayer {
  /** Input width. */
  readonly inFeatures: number;
  /** Output width. */
  readonly outFeatures: number;
  /**
   * The quantized weight: 4 (NF4) or 8 (int8 per row) bits, with its packed values and scales. Replaced whole
   * (never changed in place) by {@linkcode QuantizedLinear.writeWeight}.
   */
  quantized: QuantizedWeight;
  /** Bias `[outFeatures]` in float32, a plain tensor (never trained), or `null`. */
  readonly bias: tf.Tensor1D | null;
  /** Whether the source checkpoint stored the weight `[in, out]` (see `LinearOptions.fanInFanOut`). */
  readonly fanInFanOut: boolean;

  /**
   * A layer from an already quantized weight (`[outFeatures, inFeatures]` row-major, see the module's notes) and
   * a float32 bias, which the layer takes over (and disposes with itself). Most callers want
   * {@linkcode QuantizedLinear.fromLinear}.
   */
  constructor(
    inFeatures: number,
    outFeatures: number,
    quantized: QuantizedWeight,
    bias: tf.Tensor1D | null = null,
    options: { fanInFanOut?: boolean } = {},
  ) {
    super();
    for (const [what, v] of [["inFeatures", inFeatures], ["outFeatures", outFeatures]] as const) {
      if (!Number.isInteger(v) || v <= 0) {
        throw new RangeError(`QuantizedLinear: ${what} must be a positive integer; got ${v}.`);
      }
    }
    const n = inFeatures * outFeatures;
    const fits = quantized?.bits === 4
      ? quantized.nf4.length === n
      : quantized?.bits === 8 && quantized.int8.rows === outFeatures && quantized.int8.columns === inFeatures;
    if (!fits) {
      throw new RangeError(
        `QuantizedLinear: the quantized weight does not fit a ${inFeatures}→${outFeatures} layer; expected ` +
          `bits 4 with ${n} values or bits 8 with ${outFeatures} rows of ${inFeatures}.`,
      );
    }
    if (bias !== null && !(bias.rank === 1 && bias.shape[0] === outFeatures && bias.dtype === "float32")) {
      throw new RangeError(
        `QuantizedLinear: bias must be a float32 tensor [${outFeatures}]; got ${bias.dtype} [${bias.shape}].`,
      );
    }
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.quantized = quantized;
    this.bias = bias;
    this.fanInFanOut = options.fanInFanOut ?? false;
  }

  /**
   * Quantizes `linear`'s weight (in PyTorch's `[out, in]` row-major order) and copies its bias; `linear` is left
   * as it was (the caller still owns and disposes it). `bits: 4` is NF4 with `blockSize` (default 64) and
   * optional `doubleQuant`; `bits: 8` is int8 per output row.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { Linear } from "./layers.ts";
   * import { QuantizedLinear } from "./quant.ts";
   * const linear = new Linear(784, 128, { seed: 3 });
   * const q = QuantizedLinear.fromLinear(linear, { bits: 4, doubleQuant: true });
   * assert.equal(q.bytes().total, 50176 + 1568 + 32 + 4 * 128); // packed + scale codes + state + bias
   * q.dispose();
   * linear.dispose();
   * ```
   */
  static fromLinear(linear: Linear, spec: QuantizeSpec): QuantizedLinear {
    if (!(linear instanceof Linear)) {
      const got = (linear as object | null)?.constructor?.name ?? String(linear);
      throw new TypeError(`QuantizedLinear.fromLinear: expected a Linear layer; got ${got}.`);
    }
    return QuantizedLinear.fromWeight(linear.weight, linear.bias, spec, { fanInFanOut: linear.fanInFanOut });
  }

  /**
   * A layer from a float32 weight `[inFeatures, outFeatures]` (the layout of `Linear.weight`) and an optional
   * bias `[outFeatures]`, quantized as `spec` says; both are copied, the caller keeps and disposes its tensors.
   * With `spec` a layer's own {@linkcode QuantizedLinear.spec}, this re-quantizes a changed weight (a merged
   * one, say) the way the layer was quantized. Re-quantizing the dequantized weight itself gives back the same
   * 4-bit codes and, without double quantization, the same scales (double quantization recomputes the scales'
   * 8-bit codes around their new mean, which can move a scale by one step of that code).
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import * as tf from "@tensorflow/tfjs";
   * import { QuantizedLinear } from "./quant.ts";
   * const w = tf.randomNormal([64, 2], 0, 0.02, "float32", 1) as tf.Tensor2D;
   * const q = QuantizedLinear.fromWeight(w, null, { bits: 4, blockSize: 32 });
   * const dense = q.dequantize();
   * const again = QuantizedLinear.fromWeight(dense, null, q.spec);
   * assert.ok(q.quantized.bits === 4 && again.quantized.bits === 4);
   * assert.deepEqual(again.quantized.nf4.packed, q.quantized.nf4.packed);
   * tf.dispose([w, dense]);
   * q.dispose();
   * again.dispose();
   * ```
   */
  static fromWeight(
    weight: tf.Tensor2D,
    bias: tf.Tensor1D | null,
    spec: QuantizeSpec,
    options: { fanInFanOut?: boolean } = {},
  ): QuantizedLinear {
    if (!(weight instanceof tf.Tensor) || weight.rank !== 2 || weight.dtype !== "float32") {
      const got = weight instanceof tf.Tensor ? `${weight.dtype} [${weight.shape}]` : String(weight);
      throw new TypeError(`QuantizedLinear.fromWeight: expected a float32 weight [in, out]; got ${got}.`);
    }
    checkSpec(spec, "QuantizedLinear.fromWeight");
    const [inFeatures, outFeatures] = weight.shape;
    if (bias !== null && !(bias instanceof tf.Tensor && bias.rank === 1 && bias.shape[0] === outFeatures)) {
      const got = bias instanceof tf.Tensor ? `[${bias.shape}]` : String(bias);
      throw new RangeError(`QuantizedLinear.fromWeight: bias must be [${outFeatures}] or null; got ${got}.`);
    }
    // [in, out] transposed to PyTorch's [out, in], flattened row-major: bitsandbytes' order.
    const flat = tf.tidy(() => tf.transpose(weight).dataSync() as Float32Array);
    const quantized: QuantizedWeight = spec.bits === 4
      ? { bits: 4, nf4: quantizeNF4(flat, { blockSize: spec.blockSize ?? 64, doubleQuant: spec.doubleQuant }) }
      : { bits: 8, int8: quantizeInt8Rows(flat, outFeatures, inFeatures) };
    const copy = bias === null ? null : tf.clone(bias) as tf.Tensor1D;
    return new QuantizedLinear(inFeatures, outFeatures, quantized, copy, options);
  }

  /**
   * How this layer was quantized, as {@linkcode QuantizedLinear.fromWeight} takes it.
   *
   * @example
   * ```ts
   * import { Linear } from "./layers.ts";
   * import { QuantizedLinear } from "./quant.ts";
   * const linear = new Linear(64, 2, { seed: 1 });
   * const q = QuantizedLinear.fromLinear(linear, { bits: 4, doubleQuant: true });
   * console.log(q.spec); // { bits: 4, blockSize: 64, doubleQuant: true }
   * q.dispose();
   * linear.dispose();
   * ```
   */
  get spec(): QuantizeSpec {
    const q = this.quantized;
    return q.bits === 8
      ? { bits: 8 }
      : { bits: 4, blockSize: q.nf4.blockSize, doubleQuant: q.nf4.doubleQuant !== null };
  }

  /**
   * A float32 `Linear` holding the dequantized weight and a copy of the bias: the base to merge adapters into
   * when the merged model should stay in float32. The caller disposes it.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import * as tf from "@tensorflow/tfjs";
   * import { Linear } from "./layers.ts";
   * import { QuantizedLinear } from "./quant.ts";
   * const base = new Linear(64, 2, { seed: 1 });
   * const q = QuantizedLinear.fromLinear(base, { bits: 8 });
   * const linear = q.toLinear();
   * const x = tf.ones([1, 64]);
   * assert.deepEqual(linear.apply(x).arraySync(), q.apply(x).arraySync());
   * [base, q, linear].forEach((m) => m.dispose());
   * ```
   */
  toLinear(): Linear {
    const linear = new Linear(this.inFeatures, this.outFeatures, {
      bias: this.bias !== null,
      fanInFanOut: this.fanInFanOut,
      seed: 0,
    });
    tf.tidy(() => {
      linear.weight.assign(this.dequantize());
      if (this.bias !== null) linear.bias!.assign(this.bias);
    });
    return linear;
  }

  /**
   * The dequantized weight as a dense float32 tensor `[inFeatures, outFeatures]`, the layout of
   * `Linear.weight`; a new tensor the caller disposes.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { Linear } from "./layers.ts";
   * import { QuantizedLinear } from "./quant.ts";
   * const linear = new Linear(64, 3, { seed: 2 });
   * const q = QuantizedLinear.fromLinear(linear, { bits: 8 });
   * const w = q.dequantize();
   * assert.deepEqual(w.shape, [64, 3]);
   * w.dispose();
   * q.dispose();
   * linear.dispose();
   * ```
   */
  dequantize(): tf.Tensor2D {
    // bitsandbytes' dequantization of value k = o·in + i of the [out, in] weight, written straight to [i][o]. The
    // products are those of dequantizeNF4 and dequantizeInt8Rows: a float32 times a float32 is exact in a double,
    // and storing it rounds once, as float32 arithmetic does.
    const [n, m] = [this.inFeatures, this.outFeatures];
    const dense = new Float32Array(n * m);
    const q = this.quantized;
    if (q.bits === 4) {
      const scales = nf4Scales(q.nf4);
      const { packed } = q.nf4;
      const shift = Math.log2(q.nf4.blockSize); // NF4 block sizes are powers of two
      for (let o = 0, k = 0; o < m; o++) {
        for (let i = 0; i < n; i++, k++) {
          const byte = packed[k >> 1];
          dense[i * m + o] = NF4_TABLE[(k & 1) === 0 ? byte >> 4 : byte & 0x0f] * scales[k >> shift];
        }
      }
    } else {
      const { values, scales } = q.int8;
      for (let o = 0, k = 0; o < m; o++) {
        const scale = scales[o];
        for (let i = 0; i < n; i++, k++) dense[i * m + o] = f32(values[k] * scale) * INVERSE_127;
      }
    }
    return tf.tensor2d(dense, [n, m], "float32");
  }

  /** `true`: writing a weight rounds it to the layer's 4 or 8 bits. */
  get lossyWrites(): boolean {
    return true;
  }

  /** The dequantized weight (see {@linkcode QuantizedLinear.dequantize}); call it inside `tf.tidy`. */
  denseWeight(): tf.Tensor2D {
    return this.dequantize();
  }

  /**
   * Re-quantizes `weight` `[in, out]` as this layer was quantized (its {@linkcode QuantizedLinear.spec}) and
   * keeps that instead: how an adapter is merged into a quantized base, with the rounding that implies.
   */
  writeWeight(weight: tf.Tensor2D): void {
    if (!tf.util.arraysEqual(weight.shape, [this.inFeatures, this.outFeatures])) {
      throw new RangeError(
        `QuantizedLinear.writeWeight: expected [${this.inFeatures}, ${this.outFeatures}]; got [${weight.shape}].`,
      );
    }
    this.quantized = QuantizedLinear.fromWeight(weight, null, this.spec).quantized;
  }

  /** `x·W + b` over the last axis of `x`, with `W` dequantized for this call and freed after it. */
  apply<T extends tf.Tensor>(x: T): T {
    checkInput(this, x, this.inFeatures);
    return tf.tidy(() => {
      const y = matMul(x, this.dequantize());
      return this.bias === null ? y : tf.add(y, this.bias);
    });
  }

  /** Exact bytes held: the quantized weight's parts, plus the float32 bias (0 without one). */
  bytes(): QuantizedBytes & { bias: number } {
    const q = this.quantized;
    let parts: QuantizedBytes;
    if (q.bits === 8) parts = sizes(q.int8.values.byteLength, q.int8.scales.byteLength, 0);
    else {
      const { packed, absmax, doubleQuant } = q.nf4;
      parts = doubleQuant === null
        ? sizes(packed.byteLength, absmax!.byteLength, 0)
        : sizes(packed.byteLength, doubleQuant.scales.codes.byteLength, doubleQuant.scales.absmax.byteLength + 4);
    }
    const bias = this.bias === null ? 0 : 4 * this.bias.size;
    return { ...parts, bias, total: parts.total + bias };
  }

  /** Always `false`: a quantized layer is frozen. */
  get trainable(): boolean {
    return false;
  }

  /** Setting `false` does nothing; setting `true` throws, since 4- and 8-bit codes cannot take gradient steps. */
  set trainable(value: boolean) {
    if (value) {
      throw new TypeError(
        `QuantizedLinear is frozen: its ${this.quantized.bits}-bit weight cannot be trained (QLoRA trains ` +
          `adapters on top of it). To train this layer itself, train a float32 Linear instead.`,
      );
    }
  }

  /**
   * Throws: the layer keeps no float32 weight. Use {@linkcode QuantizedLinear.dequantize} for a dense copy
   * (which the caller disposes).
   */
  get weight(): tf.Variable<tf.Rank.R2> {
    throw new TypeError(
      `QuantizedLinear keeps no float32 weight, only its ${this.quantized.bits}-bit codes; call dequantize() for ` +
        `a dense [${this.inFeatures}, ${this.outFeatures}] copy (which you dispose).`,
    );
  }

  /** Throws: a quantized weight is not assigned; quantize a new layer with `QuantizedLinear.fromLinear`. */
  set weight(_value: tf.Variable<tf.Rank.R2>) {
    throw new TypeError(
      "QuantizedLinear's weight cannot be assigned: it is stored quantized; build a new layer with " +
        "QuantizedLinear.fromLinear from a Linear holding the new weight.",
    );
  }

  /** Widths, bias and the quantization, in the style of PyTorch's printout. */
  override extraRepr(): string {
    const q = this.quantized;
    const detail = q.bits === 4
      ? `bits=4, block_size=${q.nf4.blockSize}${q.nf4.doubleQuant === null ? "" : ", double_quant=true"}`
      : "bits=8";
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${this.bias !== null}, ${detail}`;
  }
}

/** What {@linkcode quantizeModel} does. */
export interface QuantizeModelOptions extends QuantizeSpec {
  /**
   * Which linear layers to quantize, named as for `addLoRA` (see `TargetModules`); default `"all-linear"`: every
   * `Linear` except the model's output layer where it names one (the GPT's `lm_head`), which transformers'
   * bitsandbytes integration also keeps in full precision.
   */
  targetModules?: TargetModules;
  /** Layers to leave in float32 even where `targetModules` selects them. */
  excludeModules?: TargetModules;
}

/**
 * Replaces `model`'s selected `Linear` layers in place by {@linkcode QuantizedLinear}s and disposes the float32
 * layers they replace (the memory is the point); returns `model`. Layers are chosen by name as `addLoRA` chooses
 * them (`findTargets`). Quantize before adding adapters: a layer that already carries an adapter is refused. On
 * any error nothing is replaced.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { namedModules } from "./module.ts";
 * import { quantizeModel } from "./quant.ts";
 * const model = quantizeModel(new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 }), { bits: 4 });
 * const kinds = namedModules(model).filter(([name]) => /^layers\.\d$/.test(name)).map(([, m]) => m.constructor.name);
 * assert.deepEqual(kinds, ["QuantizedLinear", "ReLU", "QuantizedLinear", "ReLU", "QuantizedLinear"]);
 * model.dispose();
 * ```
 */
export function quantizeModel<M extends Module>(model: M, options: QuantizeModelOptions): M {
  checkSpec(options, "quantizeModel");
  const names = findTargets(
    model,
    { targetModules: options.targetModules ?? "all-linear", excludeModules: options.excludeModules },
    "quantizeModel",
  );
  const sources = names.map((name) => getModule(model, name));
  sources.forEach((layer, k) => {
    if (layer instanceof QuantizedLinear) {
      throw new RangeError(
        `quantizeModel: "${names[k]}" is a QuantizedLinear already; a quantized weight is not quantized again ` +
          "(pick other targetModules, or start from the float32 model).",
      );
    }
    if (!(layer instanceof Linear)) {
      throw new TypeError(
        `quantizeModel: "${names[k]}" is a ${layer.constructor.name}, a layer that already carries an adapter; ` +
          `quantize the base model first, then add adapters.`,
      );
    }
  });
  const spec: QuantizeSpec = { bits: options.bits, blockSize: options.blockSize, doubleQuant: options.doubleQuant };
  const made: QuantizedLinear[] = [];
  try {
    for (const layer of sources) made.push(QuantizedLinear.fromLinear(layer as Linear, spec));
  } catch (error) {
    made.forEach((m) => m.dispose());
    throw error;
  }
  names.forEach((name, k) => setModule(model, name, made[k]).dispose());
  return model;
}
