/**
 * Every place this library reaches past TensorFlow.js's public API, fenced off in one file.
 *
 * Each function below relies on something tfjs does not promise to keep: a field of its engine, a method of a
 * backend, the type its code accepts rather than the one it declares. All were checked on
 * `@tensorflow/tfjs@4.22.0`, and `tests/tfjs_internals_test.ts` has one test per function that fails when an
 * upgrade changes what it relies on. Where an internal is missing, the callers fall back to public API
 * ({@linkcode hostMemory} returns `null` and Adam uses tensor kernels); nothing here is needed for correct
 * results, only for speed, silence or tidiness.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** The tfjs version every function in this file was checked against. */
export const CHECKED_TFJS_VERSION = "4.22.0";

/**
 * Whether a gradient with respect to `t` can be needed in the backward pass being recorded: PyTorch's
 * `requires_grad`, which tfjs does not track.
 *
 * A variable needs one when it is trainable. Any other tensor needs one when an operation recorded on the
 * active gradient tape produced it from at least one tensor that needs one, as PyTorch propagates the flag.
 * Raw input data was produced by no recorded operation, and outside `tf.grads`/`minimize` nothing is recorded
 * at all. Layers use this to skip backward products nobody reads: the input gradient of a network's first
 * layer, the weight gradient of a frozen layer.
 *
 * Relies on `tf.engine().state.activeTape` (an array of nodes with `inputs` and `outputs`) and
 * `gradientDepth`. Without them it answers `true` for every tensor that is not a variable: slower, never
 * wrong.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { requiresGrad } from "./tfjs_internals.ts";
 * const w = tf.variable(tf.ones([2, 2]));
 * const frozen = tf.variable(tf.ones([2, 2]), false);
 * const x = tf.ones([1, 2]);
 * tf.variableGrads(() => {
 *   const h = tf.matMul(x, w);
 *   console.log(requiresGrad(x), requiresGrad(h), requiresGrad(tf.matMul(x, frozen))); // false true false
 *   return tf.sum(h) as tf.Scalar;
 * });
 * ```
 */
export function requiresGrad(t: tf.Tensor): boolean {
  if (t instanceof tf.Variable) return t.trainable;
  const state = tf.engine().state as unknown as { gradientDepth?: number; activeTape?: unknown };
  if (typeof state.gradientDepth !== "number" || !("activeTape" in state)) return true; // internals moved
  if (state.gradientDepth === 0 || !Array.isArray(state.activeTape)) return false; // nothing is being recorded
  const tape = state.activeTape as TapeNode[];
  let index = tapeIndex.get(tape);
  if (index === undefined) tapeIndex.set(tape, index = { seen: 0, producer: new Map(), memo: new Map() });
  for (; index.seen < tape.length; index.seen++) {
    for (const output of tape[index.seen].outputs ?? []) index.producer.set(output.id, tape[index.seen]);
  }
  return propagates(t, index);
}

/** What `requiresGrad` remembers about one tape: which node made each tensor, and the answers so far. */
interface TapeIndex {
  seen: number;
  producer: Map<number, TapeNode>;
  memo: Map<number, boolean>;
}
type TapeNode = { inputs?: Record<string, tf.Tensor>; outputs?: tf.Tensor[] };
const tapeIndex = new WeakMap<TapeNode[], TapeIndex>();

function propagates(t: tf.Tensor, index: TapeIndex): boolean {
  if (t instanceof tf.Variable) return t.trainable;
  const known = index.memo.get(t.id);
  if (known !== undefined) return known;
  const node = index.producer.get(t.id);
  const answer = node !== undefined && Object.values(node.inputs ?? {}).some((input) => propagates(input, index));
  index.memo.set(t.id, answer);
  return answer;
}

/**
 * Frees what an abandoned gradient tape holds. An error inside the function given to `minimize` or
 * `variableGrads` (a bad label, say) leaves tfjs's tape behind with the tensors it kept for the backward
 * pass, and tfjs never frees them. Call this in the `catch`; it does nothing inside an outer gradient.
 *
 * Relies on `tf.engine().state.activeTape` nodes' `saved` arrays and on `gradientDepth`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { releaseAbandonedTape } from "./tfjs_internals.ts";
 * const w = tf.variable(tf.ones([2]));
 * const before = tf.memory().numTensors;
 * try {
 *   tf.variableGrads(() => {
 *     tf.exp(w); // exp keeps its output for the backward pass
 *     throw new Error("bad batch");
 *   });
 * } catch {
 *   releaseAbandonedTape();
 * }
 * console.log(tf.memory().numTensors - before); // 0
 * ```
 */
export function releaseAbandonedTape(): void {
  const state = tf.engine().state as unknown as {
    gradientDepth: number;
    activeTape: { saved?: tf.Tensor[] }[] | null;
  };
  if (state.gradientDepth !== 0 || state.activeTape == null) return; // inside an outer gradient: not ours
  for (const node of state.activeTape) tf.dispose(node.saved ?? []);
  state.activeTape = null;
}

/**
 * Whether an operation run now is recorded on a gradient tape: inside `tf.grad`, `tf.variableGrads` or `minimize`,
 * and not inside a kernel or a custom gradient's forward pass, whose inner operations tfjs does not record. Relies
 * on `tf.engine().state`'s `gradientDepth` and `kernelDepth` (tfjs's own `isTapeOn`); without them it answers
 * `true`, which costs a tape node, never a wrong gradient.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { tapeRecording } from "./tfjs_internals.ts";
 * assert.equal(tapeRecording(), false);
 * tf.grad((x) => {
 *   assert.equal(tapeRecording(), true);
 *   return tf.square(x);
 * })(tf.scalar(1));
 * ```
 */
export function tapeRecording(): boolean {
  const state = tf.engine().state as unknown as { gradientDepth?: unknown; kernelDepth?: unknown };
  if (typeof state.gradientDepth !== "number" || typeof state.kernelDepth !== "number") return true;
  return state.gradientDepth > 0 && state.kernelDepth === 0;
}

/**
 * Stops tfjs printing "Hi there 👋. Looks like you are running TensorFlow.js in Node.js" the first time its
 * cpu backend stores a tensor: Deno looks like Node.js to it, and the cpu backend serves internally even
 * when wasm is selected. Marks the cpu backend as already greeted through its `firstUse` flag.
 *
 * @example
 * ```ts
 * import { silenceCpuBanner } from "./tfjs_internals.ts";
 * silenceCpuBanner(); // safe to call any number of times
 * ```
 */
export function silenceCpuBanner(): void {
  const cpu = tf.findBackend("cpu") as unknown as { firstUse?: boolean } | null;
  if (cpu !== null && "firstUse" in cpu) cpu.firstUse = false;
}

/**
 * A seed in the form tfjs's random generators handle consistently. tfjs seeds its generators with
 * `String(seed)`, but `tf.randomNormal` treats a falsy seed as "no seed", so seed 0 would give new numbers
 * on every run. Handing it the string itself keeps every other seed's numbers and makes 0 a seed too. The
 * cast is the price: tfjs's types say number, its code accepts any value.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { tfSeed } from "./tfjs_internals.ts";
 * const a = tf.randomNormal([3], 0, 1, "float32", tfSeed(0));
 * const b = tf.randomNormal([3], 0, 1, "float32", tfSeed(0));
 * console.log(tf.equal(a, b).all().dataSync()[0]); // 1: seed 0 repeats
 * ```
 */
export function tfSeed(seed: number): number {
  return String(seed) as unknown as number;
}

/** Direct access to the float32 buffers of a backend that keeps them in memory JavaScript can reach. */
export interface HostMemory {
  /** A writable view of `t`'s values; take a fresh one after any allocation (wasm's heap may move). */
  view(t: tf.Tensor): Float32Array;
  /** A new float32 tensor of `shape` for a loop to fill: unwritten on wasm (no pass of zeros), zeros on cpu. */
  empty(shape: number[]): tf.Tensor;
}

/**
 * A backend's memory as typed arrays, for updating a tensor in one JavaScript loop instead of a dozen
 * kernels; `null` on backends whose memory is elsewhere (webgpu), or when the internals this needs are gone.
 * Relies on the wasm backend's `typedArrayFromHeap` and the cpu backend's `data.get(id).values`. By default
 * it looks at the current backend; `backend` and `name` let a test hand it another.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { hostMemory } from "./tfjs_internals.ts";
 * const t = tf.tensor1d([1, 2, 3]);
 * const host = hostMemory();
 * console.log(host === null ? "kernels only" : host.view(t)); // Float32Array(3) [1, 2, 3] on wasm and cpu
 * ```
 */
export function hostMemory(backend: object = tf.backend(), name: string = tf.getBackend()): HostMemory | null {
  const b = backend as {
    typedArrayFromHeap?: (info: { shape: number[]; dtype: string; dataId: object }) => Float32Array;
    data?: { get?: (dataId: object) => { values?: unknown } | undefined };
    makeOutput?: (shape: number[], dtype: string) => tf.TensorInfo;
  };
  if (name === "wasm" && typeof b.typedArrayFromHeap === "function" && typeof b.makeOutput === "function") {
    const fromHeap = b.typedArrayFromHeap.bind(b), makeOutput = b.makeOutput.bind(b);
    // A fresh view each time: the heap's ArrayBuffer is replaced whenever wasm memory grows.
    return {
      view: (t) => fromHeap(t),
      empty: (shape) => tf.engine().makeTensorFromTensorInfo(makeOutput(shape, "float32")),
    };
  }
  if (name === "cpu" && typeof b.data?.get === "function") {
    const data = b.data;
    return {
      view: (t) => {
        const values = data.get!(t.dataId)?.values;
        if (!(values instanceof Float32Array)) throw new Error("hostMemory: the cpu backend holds no float32 array");
        return values;
      },
      empty: (shape) => tf.zeros(shape),
    };
  }
  return null;
}

/** What a kernel receives for each input and returns as its output: a tensor's data handle, shape and type. */
export interface KernelTensor {
  /** The backend's key for the tensor's data. */
  dataId: object;
  /** The tensor's shape. */
  shape: number[];
  /** The tensor's element type. */
  dtype: string;
}

/** The wasm backend's heap as a kernel written in JavaScript needs it: where tensors lie, and new outputs. */
export interface WasmHeap {
  /** The whole heap as float32 values; take it again after any allocation (a growing heap replaces its buffer). */
  floats(): Float32Array;
  /** Where `t`'s first value lies, as an index into {@linkcode WasmHeap.floats}. */
  index(t: KernelTensor): number;
  /** A new float32 tensor of `shape` on the heap, its values not yet written (the backend's `makeOutput`). */
  makeOutput(shape: number[]): KernelTensor;
}

/**
 * The heap of the wasm backend `backend`, for kernels that read and write tensors in place (the BLAS products of
 * `blas.ts`); `null` when `backend` is not a wasm backend with the internals this needs. Relies on the wasm
 * backend's `wasm.HEAPU8` (the Emscripten heap, whose buffer is replaced when memory grows), `dataIdMap` entries'
 * `memoryOffset` (a byte offset on that heap) and `makeOutput(shape, dtype)`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import "@tensorflow/tfjs-backend-wasm";
 * import { wasmHeap } from "./tfjs_internals.ts";
 * await tf.setBackend("wasm");
 * const t = tf.tensor1d([1, 2, 3]);
 * const heap = wasmHeap(tf.backend())!;
 * const i = heap.index(t);
 * console.log(Array.from(heap.floats().subarray(i, i + 3))); // [1, 2, 3]
 * t.dispose();
 * ```
 */
export function wasmHeap(backend: object): WasmHeap | null {
  const b = backend as {
    wasm?: { HEAPU8?: Uint8Array };
    dataIdMap?: { get?: (dataId: object) => { memoryOffset?: unknown } | undefined };
    makeOutput?: (shape: number[], dtype: string) => KernelTensor;
  };
  if (
    !(b.wasm?.HEAPU8 instanceof Uint8Array) || typeof b.dataIdMap?.get !== "function" ||
    typeof b.makeOutput !== "function"
  ) {
    return null;
  }
  const wasm = b.wasm, data = b.dataIdMap as { get: (dataId: object) => { memoryOffset?: unknown } | undefined };
  const makeOutput = b.makeOutput.bind(backend);
  let buffer: ArrayBufferLike | null = null, floats: Float32Array = new Float32Array(0);
  return {
    floats() {
      const current = wasm.HEAPU8!.buffer;
      if (current !== buffer) [buffer, floats] = [current, new Float32Array(current)];
      return floats;
    },
    index(t) {
      const offset = data.get(t.dataId)?.memoryOffset;
      if (typeof offset !== "number" || offset % 4 !== 0) {
        throw new Error("wasmHeap: the wasm backend holds no float32 data for this tensor");
      }
      return offset / 4;
    },
    makeOutput: (shape) => makeOutput(shape, "float32"),
  };
}
