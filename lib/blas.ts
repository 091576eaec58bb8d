/**
 * Matrix products for the wasm backend computed by a native BLAS library (OpenBLAS, or any library with the
 * CBLAS interface) through Deno's foreign-function interface.
 *
 * The wasm backend keeps every tensor on one WebAssembly heap, an `ArrayBuffer` that native code can read and
 * write as it lies. {@linkcode enableBlas} replaces the wasm backend's `BatchMatMul` kernel (what `tf.matMul`
 * runs) and its `_FusedMatMul` kernel (`tf.fused.matMul`: a product, a bias and an activation) with kernels that
 * hand `cblas_sgemm` the addresses of the operands and of a freshly allocated output on that heap: no copy in
 * either direction. Transposed operands are passed to BLAS as its transpose flags, which cost it nothing, where
 * wasm's own kernel runs transposed products in a slow loop. Its `Sum` kernel, for sums over the leading axes (the
 * gradient of every bias), becomes one `cblas_sgemv` with a vector of ones, where wasm's transposes the whole
 * tensor before summing.
 *
 * It needs the `--allow-ffi` permission and a shared library: the `library` option, else the
 * `LORA_BLAS_LIBRARY` environment variable, else the usual places of OpenBLAS (Debian's `libopenblas0-pthread`
 * installs `/usr/lib/x86_64-linux-gnu/libopenblas.so.0`) and, on macOS, Accelerate. Without either, nothing
 * changes and {@linkcode blasStatus} says why. `initBackend` in `backend.ts` calls it for the wasm backend.
 *
 * wasm's own kernels stay registered beside the BLAS ones: {@linkcode disableBlas} puts them back, and
 * {@linkcode referenceKernel} runs them directly, which is how the tests compare the two. Products BLAS does not take
 * (other element types; for the fused product, biases that are not one value per column) go to wasm's kernel.
 *
 * Two cases where the BLAS kernels differ from wasm's because wasm's are wrong (tfjs-backend-wasm 4.22): batch
 * axes that broadcast both ways (`[2, 1, …]` by `[1, 3, …]`), which wasm's `BatchMatMul` pairs up wrongly, and the
 * fused product with transposed operands, which wasm's `_FusedMatMul` computes wrongly; both are checked in
 * `tests/blas_test.ts` against products computed one by one.
 *
 * Summation order differs from wasm's (XNNPACK's) kernels, so results agree to float32 rounding (about 1e-6
 * relative), not bit for bit; and OpenBLAS chooses its inner kernels by shape, so one row of a product may round
 * differently in a product with another number of rows (wasm's products give each row the same bits in any batch).
 * Results repeat exactly for the same shapes and thread count.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type KernelTensor, type WasmHeap, wasmHeap } from "./tfjs_internals.ts";

/** How to find and run the BLAS library. */
export interface BlasOptions {
  /** Path (or bare file name, searched as the system loader does) of a shared library exporting `cblas_sgemm`. */
  library?: string;
  /**
   * Threads OpenBLAS may use for one product (`openblas_set_num_threads`); default `LORA_BLAS_THREADS`, else 1.
   * Ignored by libraries without that function.
   */
  threads?: number;
}

/** Whether the BLAS kernels are in use, and where they come from or why not. */
export interface BlasStatus {
  /** True while the BLAS kernels replace wasm's. */
  enabled: boolean;
  /** The library loaded, when one is. */
  library: string | null;
  /** The thread count set, when the library lets it be set. */
  threads: number | null;
  /** Why BLAS is not in use, in one line; `null` when it is. */
  reason: string | null;
}

/** The kernels replaced, with wasm's own configurations as `tf.getKernel` gave them before. */
const KERNELS = ["BatchMatMul", "_FusedMatMul", "Sum"] as const;
type KernelName = typeof KERNELS[number];

// cblas enums
const ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;

const SYMBOLS = {
  cblas_sgemm: {
    // order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
  cblas_sgemv: {
    // order, trans, M, N, alpha, A, lda, X, incX, beta, Y, incY
    parameters: ["i32", "i32", "i32", "i32", "f32", "buffer", "i32", "buffer", "i32", "f32", "buffer", "i32"],
    result: "void",
  },
  cblas_sger: {
    // order, M, N, alpha, X, incX, Y, incY, A, lda
    parameters: ["i32", "i32", "i32", "f32", "buffer", "i32", "buffer", "i32", "buffer", "i32"],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
} as const;

type Library = Deno.DynamicLibrary<typeof SYMBOLS>;

let lib: { handle: Library; path: string } | null = null;
let status: BlasStatus = { enabled: false, library: null, threads: null, reason: "BLAS has not been enabled" };
const reference = new Map<KernelName, tf.KernelConfig>();
let products = 0, sums = 0;

/** The places tried, in order, when neither the option nor `LORA_BLAS_LIBRARY` names a library. */
export const DEFAULT_BLAS_LIBRARIES: readonly string[] = Deno.build.os === "darwin"
  ? [
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
    "/System/Library/Frameworks/Accelerate.framework/Accelerate",
  ]
  : [
    `/usr/lib/${Deno.build.arch}-linux-gnu/libopenblas.so.0`,
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "libopenblas.so.0",
  ];

/**
 * Loads the BLAS library and registers its products in place of the wasm backend's, if this process may use FFI
 * and a library is found; returns the resulting {@linkcode BlasStatus}. Calling it again changes only the thread
 * count (a library, once loaded, stays loaded). Safe to call before or after the wasm backend starts.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import "@tensorflow/tfjs-backend-wasm";
 * import { blasStatus, disableBlas, enableBlas } from "./blas.ts";
 * await tf.setBackend("wasm");
 * const status = enableBlas();
 * // With --allow-ffi and OpenBLAS installed: enabled; otherwise the reason, e.g. "no FFI permission …".
 * console.log(status.enabled ? `BLAS from ${status.library}` : status.reason);
 * const product = tf.matMul(tf.ones([2, 3]), tf.ones([3, 4]));
 * console.log(product.dataSync()[0]); // 3, either way
 * disableBlas();
 * console.log(blasStatus().enabled); // false
 * ```
 */
export function enableBlas(options: BlasOptions = {}): BlasStatus {
  const threads = options.threads ?? parseThreads(readEnv("LORA_BLAS_THREADS"));
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
    throw new RangeError(`enableBlas: threads must be a positive integer; got ${threads}.`);
  }
  if (lib === null) {
    const loaded = load(options.library ?? readEnv("LORA_BLAS_LIBRARY"));
    if (typeof loaded === "string") {
      status = { enabled: false, library: null, threads: null, reason: loaded };
      return { ...status };
    }
    lib = loaded;
  }
  let setThreads: number | null = null;
  if (lib.handle.symbols.openblas_set_num_threads !== null) {
    lib.handle.symbols.openblas_set_num_threads(threads ?? 1);
    setThreads = lib.handle.symbols.openblas_get_num_threads?.() ?? threads ?? 1;
  }
  if (!register()) {
    status = { enabled: false, library: lib.path, threads: null, reason: "the wasm backend is not loaded" };
    return { ...status };
  }
  status = { enabled: true, library: lib.path, threads: setThreads, reason: null };
  return { ...status };
}

/**
 * Puts the wasm backend's own product kernels back; `reason` is what {@linkcode blasStatus} reports afterwards.
 *
 * @example
 * ```ts
 * import { blasStatus, disableBlas } from "./blas.ts";
 * disableBlas("switched off for a comparison");
 * console.log(blasStatus().reason); // "switched off for a comparison"
 * ```
 */
export function disableBlas(reason = "BLAS was switched off"): void {
  for (const name of KERNELS) {
    const original = reference.get(name);
    const current = tf.getKernel(name, "wasm");
    if (original !== undefined && current !== undefined && current !== original) {
      tf.unregisterKernel(name, "wasm");
      tf.registerKernel(original);
    }
  }
  status = { ...status, enabled: false, reason };
}

/**
 * Whether the BLAS kernels are in use, which library and thread count, or why not.
 *
 * @example
 * ```ts
 * import { blasStatus } from "./blas.ts";
 * const { enabled, reason } = blasStatus();
 * console.log(enabled || reason !== null); // true: either in use, or a reason is given
 * ```
 */
export function blasStatus(): BlasStatus {
  return { ...status };
}

/**
 * How many products the BLAS kernels have computed in this process: a way to check they are really used.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { blasProductCount, blasStatus } from "./blas.ts";
 * const before = blasProductCount();
 * tf.tidy(() => tf.matMul(tf.ones([2, 2]), tf.ones([2, 2])));
 * console.log(blasProductCount() - before); // 1 while BLAS is enabled on wasm, else 0
 * console.log(blasStatus().enabled || blasProductCount() === before); // true
 * ```
 */
export function blasProductCount(): number {
  return products;
}

/**
 * How many sums over leading axes (a bias's gradient, `Σ_rows dy`) BLAS has computed in this process.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { blasStatus, blasSumCount } from "./blas.ts";
 * const before = blasSumCount();
 * tf.tidy(() => tf.sum(tf.ones([4, 3]), 0));
 * console.log(blasSumCount() - before === (blasStatus().enabled && tf.getBackend() === "wasm" ? 1 : 0)); // true
 * ```
 */
export function blasSumCount(): number {
  return sums;
}

/**
 * Whether the current backend's products and sums over rows run in BLAS: true on wasm while BLAS is enabled. The
 * operations in `ops.ts` and `gpt/ops.ts` ask it to choose between two ways of computing the same thing. wasm's
 * own kernel multiplies a transposed operand about 15× slower than a plain one, so without BLAS an explicit
 * `tf.transpose` before a plain product is faster, and with BLAS the transpose flag costs nothing; wasm sums rows
 * fastest as an average pool, BLAS as one product with a vector of ones.
 *
 * @example
 * ```ts
 * import { blasInUse } from "./blas.ts";
 * console.log(typeof blasInUse()); // "boolean"
 * ```
 */
export function blasInUse(): boolean {
  return status.enabled && tf.getBackend() === "wasm";
}

/** `C ← α·op(A)·op(B) + β·C` for row-major float32 matrices, as `cblas_sgemm` takes it (see {@linkcode blasGemm}). */
export type Gemm = (
  transposeA: boolean,
  transposeB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Float32Array,
  lda: number,
  b: Float32Array,
  ldb: number,
  beta: number,
  c: Float32Array,
  ldc: number,
) => void;

/**
 * The loaded library's `cblas_sgemm` while BLAS is in use on wasm, else `null`: for kernels that run several
 * products on one tensor's memory (the fused attention of `fused.ts`). The arrays may be views of the wasm heap
 * or ordinary arrays; leading dimensions are strides in floats, so a head's columns of a `[time, width]` matrix
 * are read in place.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { blasGemm } from "./blas.ts";
 * const gemm = blasGemm();
 * if (gemm !== null) {
 *   const c = new Float32Array(1);
 *   gemm(false, false, 1, 1, 2, 1, Float32Array.of(1, 2), 2, Float32Array.of(3, 4), 1, 0, c, 1);
 *   assert.equal(c[0], 11);
 * }
 * ```
 */
export function blasGemm(): Gemm | null {
  if (!blasInUse() || lib === null) return null;
  const gemm = lib.handle.symbols.cblas_sgemm;
  return (ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) =>
    gemm(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/**
 * Runs wasm's own kernel `name` ("BatchMatMul", "_FusedMatMul" or "Sum") on `inputs`, whether or not BLAS is enabled:
 * the readable reference the BLAS kernels are compared against. Must be called with wasm as the current backend;
 * the result is a new tensor.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import "@tensorflow/tfjs-backend-wasm";
 * import { referenceKernel } from "./blas.ts";
 * await tf.setBackend("wasm");
 * const a = tf.tensor2d([[1, 2]]), b = tf.tensor2d([[3], [4]]);
 * const c = referenceKernel("BatchMatMul", { a, b }, { transposeA: false, transposeB: false });
 * console.log(Array.from(c.dataSync())); // [11]
 * tf.dispose([a, b, c]);
 * ```
 */
export function referenceKernel(
  name: KernelName,
  inputs: Record<string, tf.Tensor>,
  attrs: Record<string, unknown>,
): tf.Tensor {
  if (tf.getBackend() !== "wasm") {
    throw new Error(`referenceKernel: the current backend is ${tf.getBackend()}, not wasm.`);
  }
  const config = reference.get(name) ?? tf.getKernel(name, "wasm");
  if (config === undefined) throw new Error(`referenceKernel: the wasm backend has no ${name} kernel.`);
  const backend = tf.backend();
  const info = config.kernelFunc({
    inputs: inputs as unknown as tf.NamedTensorInfoMap,
    backend,
    attrs: attrs as tf.NamedAttrMap,
  }) as tf.TensorInfo;
  return tf.engine().makeTensorFromTensorInfo(info);
}

// --- loading ---------------------------------------------------------------------------------------------------

function load(requested: string | undefined): { handle: Library; path: string } | string {
  let permission: Deno.PermissionState;
  try {
    permission = Deno.permissions.querySync({ name: "ffi" }).state;
  } catch {
    permission = "denied";
  }
  if (permission !== "granted") return "no FFI permission (run Deno with --allow-ffi to use BLAS)";
  const candidates = requested !== undefined && requested !== "" ? [requested] : DEFAULT_BLAS_LIBRARIES;
  const failures: string[] = [];
  for (const path of candidates) {
    try {
      return { handle: Deno.dlopen(path, SYMBOLS), path };
    } catch (error) {
      failures.push(`${path}: ${error instanceof Error ? error.message.split("\n")[0] : String(error)}`);
    }
  }
  return requested !== undefined && requested !== ""
    ? `the BLAS library could not be loaded (${failures[0]})`
    : `no BLAS library found (tried ${DEFAULT_BLAS_LIBRARIES.join(", ")}; install OpenBLAS, e.g. Debian's ` +
      "libopenblas0-pthread, or set LORA_BLAS_LIBRARY)";
}

/** Puts the BLAS kernels in place of wasm's; false when wasm's product kernel is not registered at all. */
function register(): boolean {
  const kernels: Record<KernelName, tf.KernelFunc> = {
    BatchMatMul: batchMatMul as unknown as tf.KernelFunc,
    _FusedMatMul: fusedMatMul as unknown as tf.KernelFunc,
    Sum: sumLeadingAxes as unknown as tf.KernelFunc,
  };
  for (const name of KERNELS) {
    const current = tf.getKernel(name, "wasm");
    if (current === undefined) continue; // the wasm backend package did not register it
    if (!reference.has(name)) reference.set(name, current);
    const original = reference.get(name)!;
    if (current !== original) continue; // ours already
    tf.unregisterKernel(name, "wasm");
    // wasm's setup binds its own kernel's entry point; keeping it lets the fallback below run that kernel.
    tf.registerKernel({ ...original, kernelFunc: kernels[name] });
  }
  return reference.has("BatchMatMul");
}

// --- the kernels -----------------------------------------------------------------------------------------------

interface KernelArgs {
  inputs: Record<string, KernelTensor | undefined>;
  backend: object;
  attrs: Record<string, unknown>;
}

const heaps = new WeakMap<object, WasmHeap | null>();

function heapOf(backend: object): WasmHeap | null {
  if (!heaps.has(backend)) heaps.set(backend, wasmHeap(backend));
  return heaps.get(backend)!;
}

function fallback(name: KernelName, args: KernelArgs): KernelTensor {
  return reference.get(name)!.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0]) as KernelTensor;
}

const size = (shape: number[]) => shape.reduce((n, d) => n * d, 1);

/**
 * `C = op(A)·op(B)` for every entry of the batch axes (broadcast as NumPy does), on the heap, into a new output.
 * With `bias` (a float32 tensor of one value, or one per column), it is added to every row afterwards as a rank-one
 * update (`cblas_sger` with a vector of ones): the same float32 roundings as a product followed by `tf.add` (BLAS's
 * `β = 1` on rows that start as the bias would round differently wherever OpenBLAS splits the inner axis into
 * blocks), so a layer computed either way gives the same bits.
 */
function product(
  heap: WasmHeap,
  a: KernelTensor,
  b: KernelTensor,
  transposeA: boolean,
  transposeB: boolean,
  bias?: KernelTensor,
): KernelTensor {
  const ra = a.shape.length, rb = b.shape.length;
  const m = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const k = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (k !== kb) {
    throw new Error(
      `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${a.shape} and ${b.shape} and ` +
        `transposeA=${transposeA} and transposeB=${transposeB} must match.`,
    );
  }
  const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
  const outer = tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
  const batchA = size(outerA), batchB = size(outerB), batch = size(outer);
  const out = heap.makeOutput([...outer, m, n]);
  if (batch * m * n === 0) return out;
  const floats = heap.floats(); // after the allocation, which may have replaced the heap's buffer
  const ia = heap.index(a), ib = heap.index(b), ic = heap.index(out);
  if (k === 0) floats.fill(0, ic, ic + batch * m * n);
  else gemmAll(floats, ia, ib, ic, m, n, k, batch, batchA, batchB, outerA, outerB, outer, transposeA, transposeB);
  if (bias !== undefined) {
    // C += 1·biasᵀ over all rows, a rank-one update (cblas_sger): each value gets exactly `+ bias[j]`.
    const rows = batch * m, start = heap.index(bias);
    if (ones.length < rows) ones = new Float32Array(Math.max(rows, 2 * ones.length)).fill(1);
    const row = size(bias.shape) === 1 ? new Float32Array(n).fill(floats[start]) : floats.subarray(start, start + n);
    lib!.handle.symbols.cblas_sger(ROW_MAJOR, rows, n, 1, ones, 1, row, 1, floats.subarray(ic, ic + rows * n), n);
  }
  return out;
}

function gemmAll(
  floats: Float32Array,
  ia: number,
  ib: number,
  ic: number,
  m: number,
  n: number,
  k: number,
  batch: number,
  batchA: number,
  batchB: number,
  outerA: number[],
  outerB: number[],
  outer: number[],
  transposeA: boolean,
  transposeB: boolean,
): void {
  const gemm = lib!.handle.symbols.cblas_sgemm;
  const ta = transposeA ? TRANS : NO_TRANS, tb = transposeB ? TRANS : NO_TRANS;
  const lda = transposeA ? m : k, ldb = transposeB ? k : n;
  if (batchB === 1 && batchA === batch && !transposeA) {
    // Rows of every batch entry of A lie one after another: one product of [batch·m, k] by B.
    gemm(
      ROW_MAJOR,
      ta,
      tb,
      batch * m,
      n,
      k,
      1,
      floats.subarray(ia, ia + batch * m * k),
      lda,
      floats.subarray(ib, ib + k * n),
      ldb,
      0,
      floats.subarray(ic, ic + batch * m * n),
      n,
    );
  } else {
    const entryA = batchEntries(outerA, outer), entryB = batchEntries(outerB, outer);
    for (let i = 0; i < batch; i++) {
      const pa = ia + entryA[i] * m * k, pb = ib + entryB[i] * k * n, pc = ic + i * m * n;
      gemm(
        ROW_MAJOR,
        ta,
        tb,
        m,
        n,
        k,
        1,
        floats.subarray(pa, pa + m * k),
        lda,
        floats.subarray(pb, pb + k * n),
        ldb,
        0,
        floats.subarray(pc, pc + m * n),
        n,
      );
    }
  }
  products++;
}

/**
 * For each entry of the broadcast batch `outer` (in row-major order), the entry of an operand whose batch axes
 * are `own` (right-aligned with `outer`; an axis of size 1 repeats): NumPy's broadcasting rule.
 */
function batchEntries(own: number[], outer: number[]): Int32Array {
  const entries = new Int32Array(size(outer));
  const offset = outer.length - own.length;
  for (let i = 0; i < entries.length; i++) {
    let rest = i, entry = 0, stride = 1;
    for (let axis = outer.length - 1; axis >= 0; axis--) {
      const coordinate = rest % outer[axis];
      rest = (rest - coordinate) / outer[axis];
      const dim = axis >= offset ? own[axis - offset] : 1;
      if (dim !== 1) entry += coordinate * stride;
      stride *= dim;
    }
    entries[i] = entry;
  }
  return entries;
}

function batchMatMul(args: KernelArgs): KernelTensor {
  const { a, b } = args.inputs as { a: KernelTensor; b: KernelTensor };
  const heap = heapOf(args.backend);
  if (heap === null || a.dtype !== "float32" || b.dtype !== "float32") return fallback("BatchMatMul", args);
  return product(heap, a, b, args.attrs.transposeA === true, args.attrs.transposeB === true);
}

/** The activations of `tf.fused.matMul` computed here, each as an update of one value. */
const ACTIVATIONS: Record<string, ((x: number, alpha: number) => number) | undefined> = {
  linear: (x) => x,
  relu: (x) => (x > 0 ? x : 0),
  relu6: (x) => (x > 0 ? (x < 6 ? x : 6) : 0),
  elu: (x) => (x >= 0 ? x : Math.expm1(x)),
  leakyrelu: (x, alpha) => (x >= 0 ? x : alpha * x),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
};

function fusedMatMul(args: KernelArgs): KernelTensor {
  const { a, b, bias, preluActivationWeights: prelu } = args.inputs;
  const activation = String(args.attrs.activation ?? "linear");
  const heap = heapOf(args.backend);
  const n = args.attrs.transposeB === true ? b!.shape[b!.shape.length - 2] : b!.shape[b!.shape.length - 1];
  const perColumn = (t: KernelTensor | undefined) =>
    t === undefined || (t.dtype === "float32" && (size(t.shape) === n || size(t.shape) === 1) && t.shape.length <= 1);
  if (
    heap === null || a!.dtype !== "float32" || b!.dtype !== "float32" || !perColumn(bias) || !perColumn(prelu) ||
    (activation !== "prelu" && ACTIVATIONS[activation] === undefined) || (activation === "prelu" && prelu === undefined)
  ) {
    return fallback("_FusedMatMul", args);
  }
  const out = product(heap, a!, b!, args.attrs.transposeA === true, args.attrs.transposeB === true, bias);
  const total = size(out.shape);
  if (total === 0 || activation === "linear") return out;
  const floats = heap.floats(), ic = heap.index(out);
  const usePrelu = activation === "prelu" && prelu !== undefined;
  const ip = usePrelu ? heap.index(prelu) : -1, np = usePrelu ? size(prelu.shape) : 0;
  const f = ACTIVATIONS[activation], alpha = Number(args.attrs.leakyreluAlpha ?? 0.2);
  for (let row = ic; row < ic + total; row += n) {
    for (let j = 0; j < n; j++) {
      let x = floats[row + j];
      if (ip >= 0) {
        const slope = floats[ip + (np === 1 ? 0 : j)];
        x = x >= 0 ? x : slope * x;
      } else x = f!(x, alpha);
      floats[row + j] = x;
    }
  }
  return out;
}

/** A vector of ones for the sums below, grown as needed (outside the wasm heap: BLAS reads any memory). */
let ones = new Float32Array(0);

/**
 * `tf.sum` over the leading axes of a float32 tensor (the gradient of a bias, `Σ_rows dy`) as one product with a
 * vector of ones, `1ᵀ·X` (`cblas_sgemv`), reading `X` as it lies. wasm's own `Sum` reduces only the innermost axes,
 * so it transposes the whole tensor first; every other sum goes to it.
 */
function sumLeadingAxes(args: KernelArgs): KernelTensor {
  const { x } = args.inputs as { x: KernelTensor };
  const heap = heapOf(args.backend);
  const rank = x.shape.length;
  const requested = args.attrs.axis;
  const all = x.shape.map((_, i) => i); // no axis: every axis
  const axes = [...new Set((requested == null ? all : Array.isArray(requested) ? requested : [requested]) as number[])]
    .map((a) => (a < 0 ? a + rank : a)).sort((a, b) => a - b);
  const leading = axes.length > 0 && axes.length < rank && axes.every((a, i) => a === i);
  if (heap === null || x.dtype !== "float32" || !leading) return fallback("Sum", args);
  const rows = size(x.shape.slice(0, axes.length)), rest = x.shape.slice(axes.length), columns = size(rest);
  const shape = args.attrs.keepDims === true ? [...axes.map(() => 1), ...rest] : rest;
  const out = heap.makeOutput(shape);
  if (columns === 0) return out;
  const floats = heap.floats(), ix = heap.index(x), iy = heap.index(out);
  if (rows === 0) {
    floats.fill(0, iy, iy + columns);
    return out;
  }
  if (ones.length < rows) ones = new Float32Array(Math.max(rows, 2 * ones.length)).fill(1);
  lib!.handle.symbols.cblas_sgemv(
    ROW_MAJOR,
    TRANS,
    rows,
    columns,
    1,
    floats.subarray(ix, ix + rows * columns),
    columns,
    ones,
    1,
    0,
    floats.subarray(iy, iy + columns),
    1,
  );
  sums++;
  return out;
}

// --- small helpers ---------------------------------------------------------------------------------------------

function parseThreads(text: string | undefined): number | undefined {
  if (text === undefined || text === "") return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    throw new RangeError(`LORA_BLAS_THREADS must be a positive integer; got "${text}".`);
  }
  return value;
}

function readEnv(key: string): string | undefined {
  try {
    return Deno.env.get(key);
  } catch {
    return undefined; // no --allow-env: behave as if it were unset
  }
}
