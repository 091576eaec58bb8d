/**
 * A frozen base in four or eight bits, QLoRA's memory saving: the NormalFloat-4 code, blockwise absmax
 * quantization with optional double quantization of the block scales, int8 absmax per output row, and
 * {@linkcode QuantizedLinear}, a base layer that keeps only the packed weights and dequantizes them in its
 * forward pass.
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

const f32 = Math.fround;

/**
 * The sixteen NormalFloat-4 values, in index order (index 7 is the exact zero), as bitsandbytes lists them in
 * `get_4bit_type("nf4")` (`bitsandbytes/functional.py`, 0.50.2.dev0, commit 95f9af3): the output of
 * `create_normal_map(offset=0.9677083, use_extra_value=True)`, each a float32 value. They are the QLoRA paper's
 * asymmetric quantile code: 8 positive and 7 negative quantiles of N(0, 1), plus zero, divided by the largest so
 * that they span [−1, 1] (the project's tests recompute them from that definition).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { NF4_CODE } from "./quant.ts";
 * assert.equal(NF4_CODE.length, 16);
 * assert.deepEqual([NF4_CODE[0], NF4_CODE[7], NF4_CODE[15]], [-1, 0, 1]);
 * assert.ok(NF4_CODE.every((v, i) => i === 0 || v > NF4_CODE[i - 1])); // sorted
 * ```
 */
export const NF4_CODE: readonly number[] = Object.freeze([
  -1.0,
  -0.6961928009986877,
  -0.5250730514526367,
  -0.39491748809814453,
  -0.28444138169288635,
  -0.18477343022823334,
  -0.09105003625154495,
  0.0,
  0.07958029955625534,
  0.16093020141124725,
  0.24611230194568634,
  0.33791524171829224,
  0.44070982933044434,
  0.5626170039176941,
  0.7229568362236023,
  1.0,
]);

/**
 * Block sizes accepted for NF4, bitsandbytes' list in `quantize_4bit` (default 64, the QLoRA paper's choice).
 *
 * @example
 * ```ts
 * import { NF4_BLOCK_SIZES } from "./quant.ts";
 * console.log(NF4_BLOCK_SIZES.includes(64)); // true
 * ```
 */
export const NF4_BLOCK_SIZES: readonly number[] = Object.freeze([32, 64, 128, 256, 512, 1024, 2048, 4096]);

/**
 * The block size of double quantization: the block scales are quantized in groups of 256, as `quantize_4bit`
 * does with `compress_statistics=True` (`quantize_blockwise(absmax - offset, blocksize=256)`).
 *
 * @example
 * ```ts
 * import { DOUBLE_QUANT_BLOCK_SIZE } from "./quant.ts";
 * console.log(DOUBLE_QUANT_BLOCK_SIZE); // 256
 * ```
 */
export const DOUBLE_QUANT_BLOCK_SIZE = 256;

/**
 * PyTorch's float32 `torch.linspace(start, end, steps)` on the CPU: the first half counted up from `start`, the
 * second half down from `end` (`linspace_kernel` in ATen's `RangeFactoriesKernel.cpp`), each `start + step · i`
 * rounded once, as its fused multiply-add rounds it (checked against torch 2.13 for the sizes used here).
 */
function linspace32(start: number, end: number, steps: number): number[] {
  const [a, b] = [f32(start), f32(end)];
  const step = f32(f32(b - a) / (steps - 1));
  const half = Math.floor(steps / 2);
  return Array.from({ length: steps }, (_, i) => i < half ? f32(a + step * i) : f32(b - step * (steps - i - 1)));
}

let dynamicCodeCache: Float32Array | null = null;

/**
 * bitsandbytes' signed 8-bit "dynamic" code, `create_dynamic_map(signed=True, max_exponent_bits=7,
 * total_bits=8)`: 256 sorted values in [−1, 1] with a dynamic exponent (Dettmers, "8-Bit Approximations for
 * Parallelism in Deep Learning", 2016), the code `quantize_blockwise` uses by default and so the one double
 * quantization stores the NF4 block scales in. Computed here in float32 as bitsandbytes computes it. A fresh
 * copy each call.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dynamicCode } from "./quant.ts";
 * const code = dynamicCode();
 * assert.equal(code.length, 256);
 * assert.equal(code[255], 1);
 * assert.ok(code.includes(0));
 * ```
 */
export function dynamicCode(): Float32Array {
  if (dynamicCodeCache === null) {
    const data: number[] = [];
    for (let i = 0; i < 7; i++) {
      const boundaries = linspace32(0.1, 1, 2 ** i + 1);
      const means = boundaries.slice(1).map((b, j) => f32(f32(boundaries[j] + b) / 2));
      const scale = f32(10 ** (i - 6));
      data.push(...means.map((m) => f32(scale * m)), ...means.map((m) => f32(-scale * m)));
    }
    data.push(0, 1);
    dynamicCodeCache = Float32Array.from(data.sort((x, y) => x - y));
  }
  return dynamicCodeCache.slice();
}

/** Midpoints between adjacent code values in float32, `(code[:-1] + code[1:]) / 2`, bitsandbytes' bucket edges. */
function midpoints(code: ArrayLike<number>): Float32Array {
  const out = new Float32Array(code.length - 1);
  for (let i = 0; i < out.length; i++) out[i] = f32(f32(code[i] + code[i + 1]) / 2);
  return out;
}
const NF4_BOUNDS = midpoints(NF4_CODE);
const NF4_TABLE = Float32Array.from(NF4_CODE);

/** `torch.bucketize(x, bounds)` (right=False): how many edges lie strictly below `x`, so a tie goes down. */
function bucket(x: number, bounds: Float32Array): number {
  let [lo, hi] = [0, bounds.length];
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (bounds[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const TINY = f32(1e-38);

/**
 * The absmax of each block of `blockSize` values. The last block holds what is left and may be shorter; when it
 * is, its absmax is stored at least 1e-38, as bitsandbytes stores it (`am.clamp(min=1e-38)` for the remainder).
 */
function blockAbsmax(values: Float32Array, blockSize: number): Float32Array {
  const blocks = Math.ceil(values.length / blockSize);
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    let m = 0;
    const end = Math.min(values.length, (b + 1) * blockSize);
    for (let k = b * blockSize; k < end; k++) m = Math.max(m, Math.abs(values[k]));
    absmax[b] = end - b * blockSize < blockSize ? Math.max(m, TINY) : m;
  }
  return absmax;
}
/** A value's position in [−1, 1] as bitsandbytes computes it: `clamp(x · (1 / max(absmax, 1e-38)), −1, 1)`. */
const scaled = (x: number, inverse: number) => Math.min(1, Math.max(-1, f32(x * inverse)));
const inverseOf = (absmax: number) => f32(1 / Math.max(absmax, TINY));

function checkValues(values: ArrayLike<number>, caller: string): Float32Array {
  if (values === null || typeof values !== "object" || typeof values.length !== "number") {
    throw new TypeError(`${caller}: expected an array of numbers (a Float32Array or number[]); got ${values}.`);
  }
  if (values.length === 0) throw new RangeError(`${caller}: there is nothing to quantize (0 values).`);
  const out = values instanceof Float32Array ? values : Float32Array.from(values);
  const bad = out.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    throw new RangeError(`${caller}: value ${bad} is ${out[bad]}; only finite weights can be quantized.`);
  }
  return out;
}

function checkBlockSize(blockSize: number, allowed: readonly number[] | null, caller: string): void {
  const ok = allowed === null ? Number.isInteger(blockSize) && blockSize > 0 : allowed.includes(blockSize);
  if (!ok) {
    const expected = allowed === null ? "a positive integer" : `one of ${allowed.join(", ")} (bitsandbytes' sizes)`;
    throw new RangeError(`${caller}: blockSize must be ${expected}; got ${blockSize}.`);
  }
}

/** 8-bit blockwise quantization: one byte per value, a float32 absmax per block. */
export interface Blockwise8 {
  /** How many values were quantized. */
  readonly length: number;
  /** Values per block; the last block holds the remainder and may be shorter. */
  readonly blockSize: number;
  /** One code index per value. */
  readonly codes: Uint8Array;
  /** The absmax of each block, float32, `ceil(length / blockSize)` of them. */
  readonly absmax: Float32Array;
}

/**
 * bitsandbytes' `quantize_blockwise` with its default dynamic code ({@linkcode dynamicCode}): each block of
 * `blockSize` values is divided by its absmax and each value replaced by the index of the nearest code value (a
 * value exactly between two goes to the lower). A length that `blockSize` does not divide leaves a shorter last
 * block with its own absmax (stored at least 1e-38), as bitsandbytes does. Double quantization uses it on the NF4 block scales.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dequantizeBlockwise8, quantizeBlockwise8 } from "./quant.ts";
 * const x = [0.5, -1, 0.25, 2, -0.5];
 * const q = quantizeBlockwise8(x, 4);
 * assert.deepEqual(Array.from(q.absmax), [2, 0.5]); // a block of 4, then one of 1 value
 * const back = dequantizeBlockwise8(q);
 * assert.ok(back.every((v, i) => Math.abs(v - x[i]) < 0.01));
 * ```
 */
export function quantizeBlockwise8(values: ArrayLike<number>, blockSize = 4096): Blockwise8 {
  const x = checkValues(values, "quantizeBlockwise8");
  checkBlockSize(blockSize, null, "quantizeBlockwise8");
  const bounds = midpoints(dynamicCode());
  const absmax = blockAbsmax(x, blockSize);
  const codes = new Uint8Array(x.length);
  for (let b = 0; b < absmax.length; b++) {
    const inverse = inverseOf(absmax[b]);
    const end = Math.min(x.length, (b + 1) * blockSize);
    for (let k = b * blockSize; k < end; k++) codes[k] = bucket(scaled(x[k], inverse), bounds);
  }
  return { length: x.length, blockSize, codes, absmax };
}

/**
 * The values a {@linkcode Blockwise8} stands for: `code[index] · absmax` in float32, bitsandbytes'
 * `dequantize_blockwise`.
 *
 * @example
 * ```ts
 * import { dequantizeBlockwise8, quantizeBlockwise8 } from "./quant.ts";
 * import assert from "node:assert/strict";
 * const back = dequantizeBlockwise8(quantizeBlockwise8([1, -3]));
 * assert.ok(Math.abs(back[0] - 1) < 0.01 && Math.abs(back[1] + 3) < 0.03); // the code's lowest value is -0.993
 * ```
 */
export function dequantizeBlockwise8(q: Blockwise8): Float32Array {
  const code = dynamicCode();
  const out = new Float32Array(q.length);
  for (let k = 0; k < q.length; k++) out[k] = f32(code[q.codes[k]] * q.absmax[Math.floor(k / q.blockSize)]);
  return out;
}

/** Double quantization's state: the NF4 block scales, themselves quantized to 8 bits. */
export interface DoubleQuantState {
  /** The mean of the block scales, subtracted before quantizing them (bitsandbytes' `quant_state.offset`). */
  readonly offset: number;
  /** The centred scales in 8-bit blocks of {@linkcode DOUBLE_QUANT_BLOCK_SIZE} (bitsandbytes' `absmax` and `state2`). */
  readonly scales: Blockwise8;
}

/** A tensor in NF4: packed 4-bit code indices and one scale per block. */
export interface NF4Tensor {
  /** How many values were quantized. */
  readonly length: number;
  /** Values per block; the last block holds the remainder and may be shorter. */
  readonly blockSize: number;
  /**
   * Two code indices per byte, `ceil(length / 2)` bytes: value `2j` in the high nibble of byte `j`, value
   * `2j + 1` in its low nibble (bitsandbytes: `(q[::2] << 4) | q[1::2]`). An odd length leaves the last low
   * nibble as the index of zero, 7, as bitsandbytes pads it.
   */
  readonly packed: Uint8Array;
  /** The absmax of each block in float32, `ceil(length / blockSize)` of them; `null` under double quantization. */
  readonly absmax: Float32Array | null;
  /** The block scales quantized again; `null` without double quantization. */
  readonly doubleQuant: DoubleQuantState | null;
}

/** How to quantize to NF4. */
export interface NF4Options {
  /** Values per block: one of {@linkcode NF4_BLOCK_SIZES}; default 64. */
  blockSize?: number;
  /** Whether to quantize the block scales too (bitsandbytes' `compress_statistics`, QLoRA's double quantization). */
  doubleQuant?: boolean;
}

/**
 * NF4 blockwise quantization, bitsandbytes' `quantize_4bit(…, quant_type="nf4")`: each block of `blockSize`
 * values is scaled by the inverse of its absmax into [−1, 1], and each value replaced by the index of the nearest
 * {@linkcode NF4_CODE} value (a value exactly between two goes to the lower, `torch.bucketize`'s rule). A length
 * that `blockSize` does not divide is handled as bitsandbytes handles it, not refused: the last block is shorter
 * and has its own absmax. With `doubleQuant`, the block scales are stored as bitsandbytes' `compress_statistics`
 * stores them: their mean is subtracted and the rest quantized by {@linkcode quantizeBlockwise8} in blocks of 256.
 *
 * One departure: the mean is taken in float64 and rounded to float32, where PyTorch sums in float32 in its own
 * order; the two can differ in the last bit of the offset.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dequantizeNF4, quantizeNF4 } from "./quant.ts";
 * const q = quantizeNF4([0.5, -1, 0, 0.25, 1, 2], { blockSize: 32 });
 * assert.deepEqual(Array.from(q.absmax!), [2]); // one (short) block
 * // scaled by 1/2: 0.25, -0.5, 0, 0.125, 0.5, 1 → nearest code indices 10, 2, 7, 9, 12, 15, the first value high
 * assert.deepEqual(Array.from(q.packed), [0xa2, 0x79, 0xcf]);
 * const back = dequantizeNF4(q); // 2 · NF4_CODE[index]
 * assert.deepEqual(Array.from(back).map((v) => Math.round(v * 1000) / 1000), [0.492, -1.05, 0, 0.322, 0.881, 2]);
 * ```
 */
export function quantizeNF4(values: ArrayLike<number>, options: NF4Options = {}): NF4Tensor {
  const x = checkValues(values, "quantizeNF4");
  const blockSize = options.blockSize ?? 64;
  checkBlockSize(blockSize, NF4_BLOCK_SIZES, "quantizeNF4");
  const absmax = blockAbsmax(x, blockSize);
  const packed = new Uint8Array(Math.ceil(x.length / 2)).fill(0x07); // an odd length leaves index 7 (zero) low
  for (let b = 0; b < absmax.length; b++) {
    const inverse = inverseOf(absmax[b]);
    const end = Math.min(x.length, (b + 1) * blockSize);
    for (let k = b * blockSize; k < end; k++) {
      const q = bucket(scaled(x[k], inverse), NF4_BOUNDS);
      const j = k >> 1;
      packed[j] = k % 2 === 0 ? (q << 4) | (packed[j] & 0x0f) : (packed[j] & 0xf0) | q;
    }
  }
  if (!options.doubleQuant) return { length: x.length, blockSize, packed, absmax, doubleQuant: null };
  let sum = 0;
  for (const a of absmax) sum += a;
  const offset = f32(sum / absmax.length);
  const centred = absmax.map((a) => f32(a - offset));
  const scales = quantizeBlockwise8(centred, DOUBLE_QUANT_BLOCK_SIZE);
  return { length: x.length, blockSize, packed, absmax: null, doubleQuant: { offset, scales } };
}

/**
 * The float32 scale of each block of an {@linkcode NF4Tensor}: its absmax, or under double quantization the
 * dequantized absmax plus the offset (bitsandbytes: `dequantize_blockwise(absmax, state2) + offset`).
 *
 * @example
 * ```ts
 * import { nf4Scales, quantizeNF4 } from "./quant.ts";
 * console.log(nf4Scales(quantizeNF4([3, -1], { blockSize: 32 })).join()); // 3
 * ```
 */
export function nf4Scales(q: NF4Tensor): Float32Array {
  if (q.absmax !== null) return q.absmax.slice();
  const dq = q.doubleQuant!;
  return dequantizeBlockwise8(dq.scales).map((a) => f32(a + dq.offset));
}

/**
 * The values an {@linkcode NF4Tensor} stands for, `NF4_CODE[index] · scale` in float32 (bitsandbytes'
 * `dequantize_4bit`). The error against the quantized values is at most half the widest gap between adjacent
 * code values (`(−0.6961928 − (−1)) / 2 ≈ 0.1519`, between the two lowest) times the block's absmax, plus float32 rounding; under double
 * quantization the scale itself carries the 8-bit code's error too.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dequantizeNF4, quantizeNF4 } from "./quant.ts";
 * const x = Array.from({ length: 100 }, (_, i) => Math.sin(i));
 * const back = dequantizeNF4(quantizeNF4(x));
 * assert.ok(back.every((v, i) => Math.abs(v - x[i]) <= 0.152)); // absmax 1 here, max half-gap 0.1519
 * ```
 */
export function dequantizeNF4(q: NF4Tensor): Float32Array {
  const scales = nf4Scales(q);
  const { packed, blockSize, length } = q;
  const out = new Float32Array(length);
  for (let b = 0; b < scales.length; b++) {
    const scale = scales[b];
    const end = Math.min(length, (b + 1) * blockSize);
    // A float32 times a float32 is exact in a double; storing it rounds once, as float32 arithmetic does.
    for (let k = b * blockSize; k < end; k++) {
      const byte = packed[k >> 1];
      out[k] = NF4_TABLE[(k & 1) === 0 ? byte >> 4 : byte & 0x0f] * scale;
    }
  }
  return out;
}

/** int8 absmax quantization per row of a matrix. */
export interface Int8Rows {
  /** Rows of the matrix (for a weight: output features, PyTorch's first axis). */
  readonly rows: number;
  /** Columns (for a weight: input features). */
  readonly columns: number;
  /** The quantized values, row-major, in −127…127. */
  readonly values: Int8Array;
  /** Each row's absmax in float32 (bitsandbytes' `SCB`). */
  readonly scales: Float32Array;
}

/**
 * int8 absmax quantization per row, bitsandbytes' `int8_vectorwise_quant` with `threshold=0`: LLM.int8()'s
 * vector-wise quantization (Dettmers et al., 2022) without its outlier decomposition (no column is kept in 16
 * bits). Each row `r` of the row-major `[rows, columns]` matrix becomes `round(x · (127 / absmax_r))`, rounded
 * half to even as `torch.round` does. One departure: a row of zeros, for which bitsandbytes divides by zero,
 * gets scale 0 and values 0 here.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { quantizeInt8Rows } from "./quant.ts";
 * const q = quantizeInt8Rows([1, -0.5, 0, 2], 2, 2);
 * assert.deepEqual(Array.from(q.values), [127, -64, 0, 127]); // -63.5 rounds to even
 * assert.deepEqual(Array.from(q.scales), [1, 2]);
 * ```
 */
export function quantizeInt8Rows(values: ArrayLike<number>, rows: number, columns: number): Int8Rows {
  const x = checkValues(values, "quantizeInt8Rows");
  if (
    !(Number.isInteger(rows) && rows > 0 && Number.isInteger(columns) && columns > 0) || rows * columns !== x.length
  ) {
    throw new RangeError(
      `quantizeInt8Rows: expected rows and columns, positive integers whose product is the ${x.length} values; ` +
        `got ${rows} × ${columns}.`,
    );
  }
  const scales = blockAbsmax(x, columns);
  const out = new Int8Array(x.length);
  for (let r = 0; r < rows; r++) {
    if (scales[r] === 0) continue;
    const factor = f32(127 / scales[r]);
    for (let k = r * columns; k < (r + 1) * columns; k++) {
      out[k] = Math.max(-127, Math.min(127, roundHalfEven(f32(x[k] * factor))));
    }
  }
  return { rows, columns, values: out, scales };
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const INVERSE_127 = f32(7.874015718698502e-3);

/**
 * The values an {@linkcode Int8Rows} stands for, `value · scale / 127` computed as bitsandbytes'
 * `int8_vectorwise_dequant` computes it (`A * stats * 7.874015718698502e-3`, in float32). The error against the
 * quantized values is at most the row's absmax / 254, plus float32 rounding.
 *
 * @example
 * ```ts
 * import { dequantizeInt8Rows, quantizeInt8Rows } from "./quant.ts";
 * import assert from "node:assert/strict";
 * const back = dequantizeInt8Rows(quantizeInt8Rows([1, -2], 1, 2)); // 1 · 127/2 = 63.5 rounds to 64
 * assert.ok(Math.abs(back[0] - 1) <= 2 / 254 && Math.abs(back[1] + 2) < 1e-6);
 * ```
 */
export function dequantizeInt8Rows(q: Int8Rows): Float32Array {
  const { rows, columns, values, scales } = q;
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    const scale = scales[r];
    for (let k = r * columns; k < (r + 1) * columns; k++) out[k] = f32(values[k] * scale) * INVERSE_127;
  }
  return out;
}

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
