/**
 * The vector loops of `simd.wat` (four float32 lanes per instruction), instantiated on the wasm backend's own
 * WebAssembly memory, so they read and write tensors where they lie. `fused_kernels.ts` runs GELU, layer
 * normalisation, attention and the cross-entropy's softmax through them when they are available, and its JavaScript
 * loops (or BLAS products) otherwise.
 *
 * @module
 */
import { SIMD_WASM_BASE64 } from "./simd_wasm.ts";

/** The loops, as `simd.wat` exports them; every pointer is a byte offset on the wasm backend's memory. */
export interface SimdLoops {
  /** `value = gelu(x)`, and its derivative where `withDerivative` is 1, for `n ≥ 4` values. */
  gelu(x: number, value: number, derivative: number, withDerivative: number, n: number): void;
  /** Layer normalisation of `rows` rows of `width` values (a multiple of 4), writing `y`, `mean` and `rstd`. */
  layer_norm(
    x: number,
    w: number,
    b: number,
    y: number,
    mean: number,
    rstd: number,
    rows: number,
    width: number,
    epsilon: number,
  ): void;
  /** The gradients of `layer_norm`: `dx`, and `dw`, `db` summed over the rows. */
  layer_norm_grad(
    dy: number,
    x: number,
    mean: number,
    rstd: number,
    w: number,
    dx: number,
    dw: number,
    db: number,
    rows: number,
    width: number,
  ): void;
  /**
   * Multi-head attention: `out` and `p` from `q`, `k`, `v` and the additive `mask` (head size a multiple of 4), with
   * `scratch` room for `(size + 2·time)·t` values, `t` = `time` rounded up to a multiple of 4.
   */
  attention(
    q: number,
    k: number,
    v: number,
    mask: number,
    out: number,
    p: number,
    scratch: number,
    batch: number,
    time: number,
    width: number,
    heads: number,
    scale: number,
  ): void;
  /** Its gradients: `dv`, and `dq`, `dk` when `both` is 1, with `scratch` room for `(size + time)·t` values. */
  attention_grad(
    dy: number,
    q: number,
    k: number,
    v: number,
    p: number,
    dq: number,
    dk: number,
    dv: number,
    scratch: number,
    batch: number,
    time: number,
    width: number,
    heads: number,
    scale: number,
    both: number,
  ): void;
  /**
   * Per row of `x` `[rows, n]` (`n ≥ 4`): its largest value into `maxes`, `e^(x − max)` into `out` where `store` is 1,
   * and the sum of those into `sums`.
   */
  softmax_rows(x: number, out: number, maxes: number, sums: number, rows: number, n: number, store: number): void;
  /** `x[i] ← x[i]·factor` for `i < n`. */
  scale(x: number, n: number, factor: number): void;
  /** One Adam step for `n` values: the moments `m`, `v` in place, the new values into `next`; `rest` is 1 − β. */
  adam(
    p: number,
    g: number,
    m: number,
    v: number,
    next: number,
    n: number,
    beta1: number,
    rest1: number,
    beta2: number,
    rest2: number,
    alpha: number,
    epsilon: number,
  ): void;
}

let compiled: WebAssembly.Module | null | undefined;
const instances = new WeakMap<WebAssembly.Memory, SimdLoops>();

/**
 * The loops on the memory of the wasm backend `backend`, or `null` when that memory is not reachable (another
 * backend, or internals that changed) or this runtime cannot compile the module (no WebAssembly SIMD). Relies on
 * the wasm backend's `wasm.asm.memory`, the `WebAssembly.Memory` its module exports.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { initBackend } from "./backend.ts";
 * import { simdLoops } from "./simd.ts";
 * await initBackend("wasm");
 * const loops = simdLoops(tf.backend());
 * assert.ok(loops === null || typeof loops.gelu === "function");
 * assert.equal(simdLoops({}), null);
 * ```
 */
export function simdLoops(backend: object): SimdLoops | null {
  const memory = (backend as { wasm?: { asm?: { memory?: unknown } } }).wasm?.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return null;
  const known = instances.get(memory);
  if (known !== undefined) return known;
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(Uint8Array.from(atob(SIMD_WASM_BASE64), (c) => c.charCodeAt(0)));
    } catch {
      compiled = null; // no WebAssembly SIMD here
    }
  }
  if (compiled === null) return null;
  const loops = new WebAssembly.Instance(compiled, { env: { memory } }).exports as unknown as SimdLoops;
  instances.set(memory, loops);
  return loops;
}
