/**
 * The kernels behind `fused.ts`, registered on the wasm backend when this module loads: each reads its inputs where
 * they lie on the wasm heap and writes fresh outputs there, through the vector loops of `simd.wat`, JavaScript
 * loops, or BLAS products (`blas.ts`). `fused.ts` turns them on and off and runs them as tensor operations; the
 * readable formulas they replace are in `gpt/ops.ts`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { blasGemm } from "./blas.ts";
import { type SimdLoops, simdLoops } from "./simd.ts";
import { type KernelTensor, type WasmHeap, wasmHeap } from "./tfjs_internals.ts";

let simd = true;

/**
 * Whether the kernels may use the vector loops of `simd.wat` (where the runtime has WebAssembly SIMD), or only their
 * JavaScript loops; `enableFused({ simd })` sets it.
 *
 * @example
 * ```ts
 * import { useVectorLoops } from "./fused_kernels.ts";
 * useVectorLoops(false); // the JavaScript loops, as enableFused({ simd: false }) asks
 * useVectorLoops(true);
 * ```
 */
export function useVectorLoops(on: boolean): void {
  simd = on;
}

interface KernelArgs {
  inputs: Record<string, KernelTensor>;
  backend: object;
  attrs: Record<string, unknown>;
}

const heaps = new WeakMap<object, WasmHeap>();

function heapOf(backend: object): WasmHeap {
  let heap = heaps.get(backend);
  if (heap === undefined) {
    const found = wasmHeap(backend);
    if (found === null) throw new Error("fused kernels: the wasm backend's heap is not reachable");
    heaps.set(backend, heap = found);
  }
  return heap;
}

const sizeOf = (shape: number[]) => shape.reduce((n, d) => n * d, 1);

function checkFloat(kernel: string, tensors: Record<string, KernelTensor>): void {
  for (const [name, t] of Object.entries(tensors)) {
    if (t.dtype !== "float32") throw new TypeError(`${kernel}: ${name} must be float32; got ${t.dtype}.`);
  }
}

/**
 * wasm's `Identity` without the copy: the output is the input's buffer, counted once more, as wasm's `Reshape` does
 * (`enableFused` registers it).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { enableFused } from "./fused.ts";
 * await initBackend("wasm");
 * enableFused();
 * const x = tf.tensor1d([1, 2]);
 * console.log(tf.clone(x).dataId === x.dataId); // true: the same buffer
 * ```
 */
export function sharedIdentity(args: KernelArgs): KernelTensor {
  const { x } = args.inputs;
  (args.backend as { incRef(dataId: object): void }).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/** The vector loops for `backend` when they are in use and `fits`; else null (the JavaScript loops run). */
/** Frees a scratch buffer a kernel made with `makeOutput` and does not return. */
function freeScratch(backend: object, scratch: KernelTensor): void {
  (backend as { disposeData(dataId: object): void }).disposeData(scratch.dataId);
}

/**
 * The vector loops on `backend`'s memory when they are allowed ({@linkcode useVectorLoops}), the runtime has them and
 * the shapes `fits` them; else `null`, and the caller takes its JavaScript loops or BLAS.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { vectorLoops } from "./fused_kernels.ts";
 * await initBackend("wasm");
 * assert.equal(vectorLoops(tf.backend(), false), null);
 * ```
 */
export function vectorLoops(backend: object, fits: boolean): SimdLoops | null {
  return simd && fits ? simdLoops(backend) : null;
}

function layerNormKernel(args: KernelArgs): KernelTensor[] {
  const { x, weight, bias } = args.inputs;
  checkFloat("LoraLayerNorm", { x, weight, bias });
  const width = x.shape[x.shape.length - 1], rows = sizeOf(x.shape) / width;
  const epsilon = args.attrs.epsilon as number;
  const heap = heapOf(args.backend);
  const y = heap.makeOutput(x.shape), mean = heap.makeOutput([rows]), rstd = heap.makeOutput([rows]);
  const loops = vectorLoops(args.backend, width % 4 === 0);
  if (loops !== null) {
    const at = (t: KernelTensor) => 4 * heap.index(t);
    loops.layer_norm(at(x), at(weight), at(bias), at(y), at(mean), at(rstd), rows, width, epsilon);
    return [y, mean, rstd];
  }
  const f = heap.floats();
  const ix = heap.index(x), iw = heap.index(weight), ib = heap.index(bias), iy = heap.index(y);
  const im = heap.index(mean), ir = heap.index(rstd);
  for (let r = 0; r < rows; r++) {
    const o = r * width;
    let sum = 0;
    for (let j = 0; j < width; j++) sum += f[ix + o + j];
    const mu = sum / width;
    let squares = 0;
    for (let j = 0; j < width; j++) {
      const d = f[ix + o + j] - mu;
      squares += d * d;
    }
    const s = 1 / Math.sqrt(squares / width + epsilon);
    for (let j = 0; j < width; j++) f[iy + o + j] = (f[ix + o + j] - mu) * s * f[iw + j] + f[ib + j];
    f[im + r] = mu;
    f[ir + r] = s;
  }
  return [y, mean, rstd];
}

function layerNormGradKernel(args: KernelArgs): KernelTensor[] {
  const { dy, x, mean, rstd, weight } = args.inputs;
  checkFloat("LoraLayerNormGrad", { dy, x, mean, rstd, weight });
  const width = x.shape[x.shape.length - 1], rows = sizeOf(x.shape) / width;
  const heap = heapOf(args.backend);
  const dx = heap.makeOutput(x.shape), dw = heap.makeOutput([width]), db = heap.makeOutput([width]);
  const loops = vectorLoops(args.backend, width % 4 === 0);
  if (loops !== null) {
    const at = (t: KernelTensor) => 4 * heap.index(t);
    loops.layer_norm_grad(at(dy), at(x), at(mean), at(rstd), at(weight), at(dx), at(dw), at(db), rows, width);
    return [dx, dw, db];
  }
  const f = heap.floats();
  const idy = heap.index(dy), ix = heap.index(x), im = heap.index(mean), ir = heap.index(rstd);
  const iw = heap.index(weight), idx = heap.index(dx);
  const sumW = new Float64Array(width), sumB = new Float64Array(width), xhat = new Float64Array(width);
  for (let r = 0; r < rows; r++) {
    const o = r * width, mu = f[im + r], s = f[ir + r];
    let meanG = 0, meanGX = 0;
    for (let j = 0; j < width; j++) {
      const h = xhat[j] = (f[ix + o + j] - mu) * s, d = f[idy + o + j], g = d * f[iw + j];
      meanG += g;
      meanGX += g * h;
      sumW[j] += d * h;
      sumB[j] += d;
    }
    meanG /= width;
    meanGX /= width;
    for (let j = 0; j < width; j++) {
      f[idx + o + j] = s * (f[idy + o + j] * f[iw + j] - meanG - xhat[j] * meanGX);
    }
  }
  f.set(sumW, heap.index(dw));
  f.set(sumB, heap.index(db));
  return [dx, dw, db];
}

/** `2^k` for `k = −150 … 9`, with `2^−150` (below float32's range) as exactly 0. */
const POW2 = Float64Array.from({ length: 160 }, (_, i) => (i === 0 ? 0 : 2 ** (i - 150)));
const ROUND = 6755399441055744; // 1.5 · 2⁵²: adding and subtracting it rounds a float64 to the nearest integer

/**
 * `e^x` for `x ≤ 0`, to 1e-8 relative (float32 needs 6e-8): `x = (k + f)·ln 2` with `k` an integer and `|f| ≤ ½`,
 * `e^(f·ln 2)` by its Taylor series to the 7th power, times `2^k` from a table; 0 below −103 (and for −∞), NaN for
 * NaN. V8 runs `Math.exp` as a call (about 20 ns here); this inlines to a few multiplications (about 6 ns).
 */
function expNonPositive(x: number): number {
  const y = x < -103 ? -150 : x * Math.LOG2E, k = (y + ROUND) - ROUND, r = (y - k) * Math.LN2;
  const p = 1 + r * (1 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r / 5040))))));
  return p * POW2[(k | 0) + 150];
}

// GELU from tables of Φ and φ at x = −6 + i/64 (i = 0 … 768), interpolated by cubic Hermite polynomials, whose slopes
// are known exactly (Φ′ = φ, φ′ = −x·φ): error below 3·10⁻¹⁰ for Φ and φ, so x·Φ(x) is as close as float32 rounding
// of x allows. Outside ±6, Φ is taken as 0 and 1 and φ as 0 (they differ from that by less than 10⁻⁸). Each interval
// keeps its two cubics' coefficients side by side. Measured on these CPUs, this runs in about a third of the time of
// the same loop with an erf polynomial and an exponential.
const GELU_LO = -6, GELU_STEPS = 64, GELU_POINTS = 12 * GELU_STEPS + 1, GELU_H = 1 / GELU_STEPS;
const GELU_TOP = GELU_POINTS - 1 - 1e-9, INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);
const GELU_TABLE = (() => {
  const cdf = new Float64Array(GELU_POINTS), pdf = new Float64Array(GELU_POINTS);
  const phi = (x: number) => Math.exp(-x * x / 2) * INV_SQRT_2PI;
  // Φ(x + h) = Φ(x) + ∫ φ over [x, x + h], each interval by 4-point Gauss–Legendre, from Φ(−10) ≈ 7.62·10⁻²⁴.
  const nodes = [0.3399810435848563, 0.8611363115940526], weights = [0.6521451548625461, 0.3478548451374538];
  let total = 7.619853024160527e-24;
  for (let i = -4 * GELU_STEPS; i < GELU_POINTS; i++) {
    const x = GELU_LO + i * GELU_H;
    if (i >= 0) [cdf[i], pdf[i]] = [total, phi(x)];
    const middle = x + GELU_H / 2;
    for (let k = 0; k < 2; k++) {
      const d = nodes[k] * GELU_H / 2;
      total += weights[k] * (phi(middle - d) + phi(middle + d)) * GELU_H / 2;
    }
  }
  [cdf[0], pdf[0], cdf[GELU_POINTS - 1], pdf[GELU_POINTS - 1]] = [0, 0, 1, 0];
  // The Hermite cubic through (0, y₀) and (1, y₁) with slopes m₀, m₁ (per unit of u = (x − xⱼ)/h), as powers of u.
  const cubic = (
    y0: number,
    y1: number,
    m0: number,
    m1: number,
  ) => [y0, m0, 3 * (y1 - y0) - 2 * m0 - m1, 2 * (y0 - y1) + m0 + m1];
  const table = new Float64Array(8 * GELU_POINTS);
  for (let j = 0; j + 1 < GELU_POINTS; j++) {
    const x0 = GELU_LO + j * GELU_H, x1 = x0 + GELU_H;
    table.set(cubic(cdf[j], cdf[j + 1], GELU_H * pdf[j], GELU_H * pdf[j + 1]), 8 * j);
    table.set(cubic(pdf[j], pdf[j + 1], -GELU_H * x0 * pdf[j], -GELU_H * x1 * pdf[j + 1]), 8 * j + 4);
  }
  return table;
})();

function geluKernel(args: KernelArgs): KernelTensor[] {
  const { x } = args.inputs;
  checkFloat("LoraGelu", { x });
  const withDerivative = args.attrs.derivative === true;
  const heap = heapOf(args.backend), n = sizeOf(x.shape);
  const value = heap.makeOutput(x.shape), derivative = withDerivative ? heap.makeOutput(x.shape) : null;
  const loops = vectorLoops(args.backend, n >= 4);
  if (loops !== null) {
    const at = (t: KernelTensor | null) => (t === null ? 0 : 4 * heap.index(t));
    loops.gelu(at(x), at(value), at(derivative), derivative === null ? 0 : 1, n);
    return derivative === null ? [value] : [value, derivative];
  }
  const f = heap.floats(), ix = heap.index(x), iv = heap.index(value), c = GELU_TABLE;
  if (derivative === null) {
    for (let i = 0; i < n; i++) {
      const xi = f[ix + i], t = Math.min(Math.max((xi - GELU_LO) * GELU_STEPS, 0), GELU_TOP);
      const j = t | 0, u = t - j, o = 8 * j; // NaN stays NaN through u
      f[iv + i] = xi * (c[o] + u * (c[o + 1] + u * (c[o + 2] + u * c[o + 3])));
    }
    return [value];
  }
  const id = heap.index(derivative);
  for (let i = 0; i < n; i++) {
    const xi = f[ix + i], t = Math.min(Math.max((xi - GELU_LO) * GELU_STEPS, 0), GELU_TOP);
    const j = t | 0, u = t - j, o = 8 * j;
    const cdf = c[o] + u * (c[o + 1] + u * (c[o + 2] + u * c[o + 3]));
    f[iv + i] = xi * cdf;
    f[id + i] = cdf + xi * (c[o + 4] + u * (c[o + 5] + u * (c[o + 6] + u * c[o + 7])));
  }
  return [value, derivative];
}

/**
 * Where BLAS is available, heads with at most this many values (time × head size) run the fused attention in the
 * vector loops, larger ones in BLAS. Measured here (`bench/attention_bench.ts`, forward and backward, one thread):
 * the loops take 0.29× BLAS's time at 8 × 16, 0.54× at 16 × 16 (the bench's GPT), 0.66–0.84× up to 32 × 32, 0.73×
 * at 64 × 16 and 0.90× at 16 × 64, but 1.28× at 64 × 64 and 1.38× at 128 × 64, where BLAS's blocking pays for its
 * four calls per head. Without BLAS the loops run whatever the size.
 */
export const VECTOR_ATTENTION_MAX_VALUES = 1024;

function attentionLoops(backend: object, size: number, time: number, blas: boolean): SimdLoops | null {
  return blas && time * size > VECTOR_ATTENTION_MAX_VALUES ? null : vectorLoops(backend, size % 4 === 0);
}

/** Values of scratch the vector attention needs (`simd.wat`): (size + 2·time) rows of time rounded up to four. */
function attentionScratch(size: number, time: number): number {
  return (size + 2 * time) * (Math.ceil(time / 4) * 4);
}

function attentionShapes(kernel: string, q: KernelTensor, heads: number) {
  if (q.shape.length !== 3) throw new RangeError(`${kernel}: expected [batch, time, width]; got [${q.shape}].`);
  const [batch, time, width] = q.shape;
  return { batch, time, width, size: width / heads };
}

/** Row-wise softmax of `s` (`rows × n`, in place) after adding `mask` (`rows × n`, from index `im` of `f`). */
function maskedSoftmax(s: Float32Array, at: number, f: Float32Array, im: number, n: number): void {
  for (let i = 0; i < n; i++) {
    const row = at + i * n, mrow = im + i * n;
    let max = -Infinity;
    for (let j = 0; j < n; j++) {
      const value = s[row + j] + f[mrow + j];
      s[row + j] = value;
      if (value > max) max = value;
    }
    let total = 0;
    for (let j = 0; j < n; j++) total += s[row + j] = expNonPositive(s[row + j] - max);
    for (let j = 0; j < n; j++) s[row + j] /= total;
  }
}

function attentionKernel(args: KernelArgs): KernelTensor[] {
  const { q, k, v, mask } = args.inputs;
  checkFloat("LoraAttention", { q, k, v, mask });
  const heads = args.attrs.heads as number, scale = args.attrs.scale as number;
  const { batch, time, width, size } = attentionShapes("LoraAttention", q, heads);
  const gemm = blasGemm(), loops = attentionLoops(args.backend, size, time, gemm !== null);
  if (gemm === null && loops === null) {
    throw new Error("LoraAttention: needs the vector loops (heads of a multiple of four values) or BLAS products");
  }
  const heap = heapOf(args.backend);
  const out = heap.makeOutput([batch, time, width]), p = heap.makeOutput([batch, heads, time, time]);
  if (loops !== null) {
    const scratch = heap.makeOutput([attentionScratch(size, time)]);
    const at = (t: KernelTensor) => 4 * heap.index(t);
    loops.attention(at(q), at(k), at(v), at(mask), at(out), at(p), at(scratch), batch, time, width, heads, scale);
    freeScratch(args.backend, scratch);
    return [out, p];
  }
  const f = heap.floats();
  const iq = heap.index(q), ik = heap.index(k), iv = heap.index(v), im = heap.index(mask);
  const io = heap.index(out), ip = heap.index(p);
  const square = time * time;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const column = b * time * width + h * size, at = ip + (b * heads + h) * square;
      const scores = f.subarray(at, at + square);
      // BLAS from here (checked above: no loops means a BLAS library). S = q·kᵀ · scale: the head's columns of q and k, rows `width` apart
      gemm!(
        false,
        true,
        time,
        time,
        size,
        scale,
        f.subarray(iq + column),
        width,
        f.subarray(ik + column),
        width,
        0,
        scores,
        time,
      );
      maskedSoftmax(f, at, f, im, time);
      // out = P·v, written into the head's columns of the output
      gemm!(
        false,
        false,
        time,
        size,
        time,
        1,
        scores,
        time,
        f.subarray(iv + column),
        width,
        0,
        f.subarray(io + column),
        width,
      );
    }
  }
  return [out, p];
}

function attentionGradKernel(args: KernelArgs): KernelTensor[] {
  const { dy, q, k, v, p } = args.inputs;
  checkFloat("LoraAttentionGrad", { dy, q, k, v, p });
  const heads = args.attrs.heads as number, scale = args.attrs.scale as number;
  const both = args.attrs.queriesAndKeys === true;
  const { batch, time, width, size } = attentionShapes("LoraAttentionGrad", q, heads);
  const gemm = blasGemm(), loops = attentionLoops(args.backend, size, time, gemm !== null);
  if (gemm === null && loops === null) {
    throw new Error("LoraAttentionGrad: needs the vector loops (heads of a multiple of four values) or BLAS products");
  }
  const heap = heapOf(args.backend);
  const dv = heap.makeOutput(q.shape);
  const dq = both ? heap.makeOutput(q.shape) : null, dk = both ? heap.makeOutput(q.shape) : null;
  if (loops !== null) {
    const scratch = heap.makeOutput([attentionScratch(size, time)]);
    const at = (t: KernelTensor | null) => (t === null ? 0 : 4 * heap.index(t));
    loops.attention_grad(
      at(dy),
      at(q),
      at(k),
      at(v),
      at(p),
      at(dq),
      at(dk),
      at(dv),
      at(scratch),
      batch,
      time,
      width,
      heads,
      scale,
      both ? 1 : 0,
    );
    freeScratch(args.backend, scratch);
    return dq === null ? [dv] : [dv, dq, dk!];
  }
  const f = heap.floats();
  const idy = heap.index(dy), iq = heap.index(q), ik = heap.index(k), iv = heap.index(v), ip = heap.index(p);
  const idv = heap.index(dv), idq = dq === null ? 0 : heap.index(dq), idk = dk === null ? 0 : heap.index(dk);
  const square = time * time, ds = new Float32Array(square);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const column = b * time * width + h * size, at = ip + (b * heads + h) * square;
      const probabilities = f.subarray(at, at + square), gradOut = f.subarray(idy + column);
      // dV = Pᵀ·dO
      gemm!(true, false, time, size, time, 1, probabilities, time, gradOut, width, 0, f.subarray(idv + column), width);
      if (!both) continue;
      // dP = dO·vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, in place
      gemm!(false, true, time, time, size, 1, gradOut, width, f.subarray(iv + column), width, 0, ds, time);
      for (let i = 0; i < time; i++) {
        let dot = 0;
        for (let j = 0; j < time; j++) dot += ds[i * time + j] * probabilities[i * time + j];
        for (let j = 0; j < time; j++) {
          ds[i * time + j] = probabilities[i * time + j] * (ds[i * time + j] - dot) * scale;
        }
      }
      // dQ = dS·k, dK = dSᵀ·q
      gemm!(
        false,
        false,
        time,
        size,
        time,
        1,
        ds,
        time,
        f.subarray(ik + column),
        width,
        0,
        f.subarray(idq + column),
        width,
      );
      gemm!(
        true,
        false,
        time,
        size,
        time,
        1,
        ds,
        time,
        f.subarray(iq + column),
        width,
        0,
        f.subarray(idk + column),
        width,
      );
    }
  }
  return dq === null ? [dv] : [dv, dq, dk!];
}

function gemmKernel(args: KernelArgs): KernelTensor[] {
  const { a, b, c } = args.inputs;
  checkFloat("LoraGemm", c === undefined ? { a, b } : { a, b, c });
  const ta = args.attrs.transposeA === true, tb = args.attrs.transposeB === true, alpha = args.attrs.alpha as number;
  if (a.shape.length !== 2 || b.shape.length !== 2) {
    throw new RangeError(`LoraGemm: expected two matrices; got [${a.shape}] and [${b.shape}].`);
  }
  const [m, k] = ta ? [a.shape[1], a.shape[0]] : a.shape, [kb, n] = tb ? [b.shape[1], b.shape[0]] : b.shape;
  if (k !== kb || (c !== undefined && (c.shape.length !== 2 || c.shape[0] !== m || c.shape[1] !== n))) {
    throw new RangeError(`LoraGemm: shapes [${a.shape}], [${b.shape}]${c ? `, [${c.shape}]` : ""} do not fit.`);
  }
  const gemm = blasGemm();
  if (gemm === null) throw new Error("LoraGemm: needs BLAS products (blas.ts), which are not in use");
  const heap = heapOf(args.backend), out = heap.makeOutput([m, n]);
  const f = heap.floats(), io = heap.index(out);
  if (c !== undefined) f.copyWithin(io, heap.index(c), heap.index(c) + m * n);
  else if (k === 0) f.fill(0, io, io + m * n);
  if (m * n > 0 && k > 0) {
    const ia = heap.index(a), ib = heap.index(b);
    gemm(
      ta,
      tb,
      m,
      n,
      k,
      alpha,
      f.subarray(ia),
      ta ? m : k,
      f.subarray(ib),
      tb ? k : n,
      c === undefined ? 0 : 1,
      f.subarray(io),
      n,
    );
  }
  return [out];
}

function crossEntropyKernel(args: KernelArgs): KernelTensor[] {
  const { logits, targets } = args.inputs;
  checkFloat("LoraCrossEntropy", { logits });
  if (targets.dtype === "float32") return denseCrossEntropy(args);
  if (targets.dtype !== "int32") {
    throw new TypeError(`LoraCrossEntropy: targets must be int32 ids or float32 distributions; got ${targets.dtype}.`);
  }
  const [rows, vocab] = logits.shape;
  const heap = heapOf(args.backend);
  const loss = heap.makeOutput([]), grad = args.attrs.gradient === true ? heap.makeOutput(logits.shape) : null;
  const iz = heap.index(logits), it = heap.index(targets), ig = grad === null ? -1 : heap.index(grad);
  const counted = (t: number) => t >= 0 && t < vocab;
  // Per row, the largest logit and the sum of e^(z − max), the exponentials kept in the gradient's row (which the
  // last pass only scales, once the number of counted rows, the mean's divisor, is known): four at a time in the
  // vector loops (softmax_rows; a logarithm per row and the scaling stay here), else one at a time.
  const loops = vectorLoops(args.backend, vocab >= 4);
  const pieces = loops === null ? null : heap.makeOutput([2, rows]);
  const f = heap.floats(), ints = new Int32Array(f.buffer);
  let maxes: ArrayLike<number>, sums: ArrayLike<number>, scaleRow: (g: number, factor: number) => void;
  if (loops !== null) {
    const ip = heap.index(pieces!);
    loops.softmax_rows(4 * iz, 4 * Math.max(ig, 0), 4 * ip, 4 * (ip + rows), rows, vocab, ig >= 0 ? 1 : 0);
    [maxes, sums] = [f.subarray(ip, ip + rows), f.subarray(ip + rows, ip + 2 * rows)];
    scaleRow = (g, factor) => loops.scale(4 * g, vocab, factor);
  } else {
    const top = new Float64Array(rows), total = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      if (!counted(ints[it + r])) continue;
      const o = iz + r * vocab, g = ig + r * vocab;
      let max = -Infinity, sum = 0;
      for (let j = 0; j < vocab; j++) if (f[o + j] > max) max = f[o + j];
      if (ig >= 0) { for (let j = 0; j < vocab; j++) sum += f[g + j] = expNonPositive(f[o + j] - max); }
      else for (let j = 0; j < vocab; j++) sum += expNonPositive(f[o + j] - max);
      [top[r], total[r]] = [max, sum];
    }
    [maxes, sums] = [top, total];
    scaleRow = (g, factor) => {
      for (let j = 0; j < vocab; j++) f[g + j] *= factor;
    };
  }
  let total = 0, count = 0;
  for (let r = 0; r < rows; r++) {
    const t = ints[it + r];
    if (!counted(t)) continue;
    total += Math.log(sums[r]) - (f[iz + r * vocab + t] - maxes[r]);
    count++;
  }
  const scale = 1 / Math.max(count, 1);
  f[heap.index(loss)] = total * scale;
  if (ig >= 0) {
    for (let r = 0; r < rows; r++) {
      const t = ints[it + r], g = ig + r * vocab;
      if (!counted(t)) {
        f.fill(0, g, g + vocab);
        continue;
      }
      scaleRow(g, scale / sums[r]);
      f[g + t] -= scale;
    }
  }
  if (pieces !== null) freeScratch(args.backend, pieces);
  return grad === null ? [loss] : [loss, grad];
}

function denseCrossEntropy(args: KernelArgs): KernelTensor[] {
  const { logits, targets } = args.inputs;
  const [rows, vocab] = logits.shape;
  const heap = heapOf(args.backend);
  const loss = heap.makeOutput([]), grad = args.attrs.gradient === true ? heap.makeOutput(logits.shape) : null;
  const f = heap.floats(), iz = heap.index(logits), it = heap.index(targets);
  const ig = grad === null ? -1 : heap.index(grad), scale = 1 / rows;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const o = iz + r * vocab, t = it + r * vocab;
    let max = -Infinity;
    for (let j = 0; j < vocab; j++) if (f[o + j] > max) max = f[o + j];
    let sum = 0, dot = 0;
    for (let j = 0; j < vocab; j++) {
      sum += expNonPositive(f[o + j] - max);
      dot += f[t + j] * (f[o + j] - max);
    }
    total += Math.log(sum) - dot;
    if (ig < 0) continue;
    const g = ig + r * vocab, norm = scale / sum;
    for (let j = 0; j < vocab; j++) f[g + j] = expNonPositive(f[o + j] - max) * norm - f[t + j] * scale;
  }
  f[heap.index(loss)] = total * scale;
  return grad === null ? [loss] : [loss, grad];
}

const KERNELS: [string, (args: KernelArgs) => KernelTensor[]][] = [
  ["LoraLayerNorm", layerNormKernel],
  ["LoraLayerNormGrad", layerNormGradKernel],
  ["LoraGelu", geluKernel],
  ["LoraAttention", attentionKernel],
  ["LoraAttentionGrad", attentionGradKernel],
  ["LoraCrossEntropy", crossEntropyKernel],
  ["LoraGemm", gemmKernel],
];
for (const [kernelName, kernelFunc] of KERNELS) {
  if (tf.getKernel(kernelName, "wasm") === undefined) {
    tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  }
}
