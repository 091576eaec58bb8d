/**
 * The number codes of QLoRA's frozen base, as bitsandbytes computes them: the NormalFloat-4 code with blockwise absmax
 * scales (and double quantization of those scales), bitsandbytes' dynamic 8-bit code for that double quantization,
 * and int8 absmax per output row. Pure arithmetic on arrays; `quant.ts` builds `QuantizedLinear` and `quantizeModel`
 * on it and re-exports all of it.
 *
 * Everything here follows bitsandbytes 0.50.2.dev0 (repository bitsandbytes-foundation/bitsandbytes, commit
 * 95f9af309d4d5793847169c39288dcd3fcbdf564, as read): `get_4bit_type`, `create_normal_map`, `create_dynamic_map`,
 * `quantize_4bit`, `quantize_blockwise` and `int8_vectorwise_quant` in `bitsandbytes/functional.py`, and their
 * PyTorch-only kernels in `bitsandbytes/backends/default/ops.py` and `bitsandbytes/_ops.py`, whose float32
 * arithmetic is reproduced step by step (each product and quotient rounded to float32 as PyTorch rounds it), so the
 * packed bytes and scales are the ones bitsandbytes writes.
 *
 * @module
 */
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
 * import { NF4_CODE } from "./quant_codes.ts";
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
 * import { NF4_BLOCK_SIZES } from "./quant_codes.ts";
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
 * import { DOUBLE_QUANT_BLOCK_SIZE } from "./quant_codes.ts";
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
 * import { dynamicCode } from "./quant_codes.ts";
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
/**
 * {@linkcode NF4_CODE} as float32 values, indexed by a 4-bit code: what dequantization looks up.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { NF4_TABLE } from "./quant_codes.ts";
 * assert.equal(NF4_TABLE[15], 1);
 * ```
 */
export const NF4_TABLE: Float32Array = Float32Array.from(NF4_CODE);

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

/**
 * Throws a clear error, naming `caller`, unless `blockSize` is a positive integer (one of `allowed`, when given).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkBlockSize } from "./quant_codes.ts";
 * assert.throws(() => checkBlockSize(48, [32, 64], "quantizeNF4"), /quantizeNF4/);
 * ```
 */
export function checkBlockSize(blockSize: number, allowed: readonly number[] | null, caller: string): void {
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
 * import { dequantizeBlockwise8, quantizeBlockwise8 } from "./quant_codes.ts";
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
 * import { dequantizeBlockwise8, quantizeBlockwise8 } from "./quant_codes.ts";
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
 * import { dequantizeNF4, quantizeNF4 } from "./quant_codes.ts";
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
 * import { nf4Scales, quantizeNF4 } from "./quant_codes.ts";
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
 * import { dequantizeNF4, quantizeNF4 } from "./quant_codes.ts";
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
 * import { quantizeInt8Rows } from "./quant_codes.ts";
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

/**
 * 1/127 as bitsandbytes' float32 arithmetic rounds it: int8 dequantization multiplies by it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { INVERSE_127 } from "./quant_codes.ts";
 * assert.equal(INVERSE_127, Math.fround(1 / 127));
 * ```
 */
export const INVERSE_127: number = f32(7.874015718698502e-3);

/**
 * The values an {@linkcode Int8Rows} stands for, `value · scale / 127` computed as bitsandbytes'
 * `int8_vectorwise_dequant` computes it (`A * stats * 7.874015718698502e-3`, in float32). The error against the
 * quantized values is at most the row's absmax / 254, plus float32 rounding.
 *
 * @example
 * ```ts
 * import { dequantizeInt8Rows, quantizeInt8Rows } from "./quant_codes.ts";
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
