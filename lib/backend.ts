/**
 * Choosing and starting a TensorFlow.js backend.
 *
 * TensorFlow.js runs the same programs on several "backends". Under Deno the ones that work are `wasm`
 * (WebAssembly with SIMD, the fastest on a CPU), `cpu` (plain JavaScript, slow but simple) and `webgpu`
 * (Deno's built-in WebGPU, on a real GPU or on software Vulkan). `tensorflow` is the CUDA backend of
 * `@tensorflow/tfjs-node-gpu`; it needs libtensorflow and a matching CUDA, which are loaded only on request.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { blasStatus, disableBlas, enableBlas } from "./blas.ts";
import { disableFused, enableFused } from "./fused.ts";
import { silenceCpuBanner } from "./tfjs_internals.ts";

silenceCpuBanner();

/** The backends {@linkcode initBackend} knows how to start. */
export type BackendName = "wasm" | "cpu" | "webgpu" | "tensorflow";

/**
 * Every accepted {@linkcode BackendName}, in the order they are described in the README.
 *
 * @example
 * ```ts
 * import { BACKEND_NAMES } from "./backend.ts";
 * console.log(BACKEND_NAMES.join(", ")); // wasm, cpu, webgpu, tensorflow
 * ```
 */
export const BACKEND_NAMES: readonly BackendName[] = ["wasm", "cpu", "webgpu", "tensorflow"];

/** What {@linkcode initBackend} started: a {@linkcode BackendName}, or `wasm+blas` for wasm with BLAS products. */
export type StartedBackend = BackendName | "wasm+blas";

/** How {@linkcode initBackend} treats the BLAS products of the wasm backend (see `blas.ts`). */
export interface BackendOptions {
  /**
   * `true`: BLAS is required (an error says why it cannot be used); `false`: plain wasm. Default: the `LORA_BLAS`
   * environment variable (`off`, `on`, or `auto`), else `auto`: BLAS when the process may use FFI and a library
   * is found.
   */
  blas?: boolean;
  /** The BLAS shared library; default `LORA_BLAS_LIBRARY`, else the usual places of OpenBLAS. */
  blasLibrary?: string;
  /**
   * Threads for one BLAS product; default `LORA_BLAS_THREADS`, else 1. At the sizes of this library's models a
   * second thread gains little and competes with everything else on a small machine.
   */
  blasThreads?: number;
  /**
   * `false`: the readable formulas of `gpt/ops.ts` instead of the fused kernels of `fused.ts` on wasm. Default: the
   * `LORA_FUSED` environment variable (`off` or `on`), else on.
   */
  fused?: boolean;
  /** Print nothing when BLAS is not used (by default one line on standard error says why, once per reason). */
  quiet?: boolean;
}

/**
 * Picks, loads and initialises a backend, and returns its name.
 *
 * The choice is, in order: the `name` argument; the `LORA_BACKEND` environment variable; `wasm`; `cpu`.
 * `webgpu` and `tensorflow` are never picked unless asked for, because the first may be a slow software
 * renderer and the second needs CUDA libraries. Asking for a backend that cannot start throws an error that
 * says what it needs, rather than silently running somewhere else.
 *
 * On wasm the matrix products go to BLAS when `options` (or `LORA_BLAS`) allow it and it can be loaded, and the
 * name returned is then `wasm+blas`; otherwise it is `wasm`, and one line on standard error says why BLAS was not
 * used (no FFI permission, no library found, switched off). Asking for `wasm+blas` by name requires BLAS.
 * `tf.getBackend()` says `wasm` either way: BLAS replaces kernels of the wasm backend, not the backend.
 *
 * Call it before creating any tensor; calling it again switches backend (tensors stay where they were made).
 *
 * @example Start the default backend
 * ```ts
 * import { initBackend } from "./backend.ts";
 * const name = await initBackend();
 * console.log(name); // "wasm+blas" with --allow-ffi and OpenBLAS, else "wasm", unless LORA_BACKEND says otherwise
 * ```
 * @example Plain wasm, whatever is installed
 * ```ts
 * import assert from "node:assert/strict";
 * import { initBackend } from "./backend.ts";
 * assert.equal(await initBackend("wasm", { blas: false }), "wasm");
 * ```
 */
export async function initBackend(name?: string, options: BackendOptions = {}): Promise<StartedBackend> {
  const requested = name ?? readEnv("LORA_BACKEND");
  if (requested !== undefined && requested !== "") {
    if (requested === "wasm+blas") {
      await start("wasm");
      return useBlas({ ...options, blas: true });
    }
    if (!(BACKEND_NAMES as readonly string[]).includes(requested)) {
      throw new Error(
        `Unknown backend "${requested}": expected one of ${BACKEND_NAMES.join(", ")} (or wasm+blas).`,
      );
    }
    await start(requested as BackendName);
    return requested === "wasm" ? useBlas(options) : requested as BackendName;
  }
  try {
    await start("wasm");
  } catch {
    await start("cpu");
    return "cpu";
  }
  return useBlas(options);
}

const reported = new Set<string>();

/** Turns the BLAS products of the started wasm backend on or off as `options` and `LORA_BLAS` say. */
function useBlas(options: BackendOptions): "wasm" | "wasm+blas" {
  const fusedEnv = readEnv("LORA_FUSED")?.toLowerCase();
  if (fusedEnv !== undefined && !["", "on", "off", "1", "0", "true", "false"].includes(fusedEnv)) {
    throw new Error(`LORA_FUSED must be off or on; got "${readEnv("LORA_FUSED")}".`);
  }
  if (options.fused ?? !["off", "0", "false"].includes(fusedEnv ?? "")) enableFused();
  else disableFused();
  let wanted: boolean | "auto" = options.blas ?? "auto";
  if (options.blas === undefined) {
    const env = readEnv("LORA_BLAS")?.toLowerCase();
    if (env === "off" || env === "0" || env === "false") wanted = false;
    else if (env === "on" || env === "1" || env === "true") wanted = true;
    else if (env !== undefined && env !== "" && env !== "auto") {
      throw new Error(`LORA_BLAS must be off, on or auto; got "${readEnv("LORA_BLAS")}".`);
    }
  }
  if (wanted === false) {
    disableBlas(
      options.blas === false ? "BLAS switched off by the blas: false option" : "BLAS switched off: LORA_BLAS=off",
    );
  } else {
    enableBlas({ library: options.blasLibrary, threads: options.blasThreads });
  }
  const status = blasStatus();
  if (status.enabled) return "wasm+blas";
  if (wanted === true) throw new Error(`wasm+blas was asked for, but BLAS cannot be used: ${status.reason}.`);
  // A fallback is reported once; a switch the caller or LORA_BLAS set on purpose needs no message.
  if (options.quiet !== true && wanted !== false && !reported.has(status.reason!)) {
    reported.add(status.reason!);
    console.error(`wasm without BLAS: ${status.reason}`);
  }
  return "wasm";
}

async function start(name: BackendName): Promise<void> {
  if (name === "webgpu") await loadWebGpu();
  if (name === "tensorflow") await loadNodeGpu();
  let ok = false;
  try {
    ok = await tf.setBackend(name);
  } catch (error) {
    throw new Error(`The ${name} backend failed to initialise: ${String(error)}`);
  }
  if (!ok) {
    throw new Error(
      name === "webgpu"
        ? "The webgpu backend found no GPU adapter. Deno needs a WebGPU adapter: a GPU driver, or " +
          "software Vulkan (Debian package mesa-vulkan-drivers)."
        : `The ${name} backend failed to initialise.`,
    );
  }
  await tf.ready();
  silenceCpuBanner();
}

async function loadWebGpu(): Promise<void> {
  if (!("gpu" in navigator)) {
    throw new Error("The webgpu backend needs navigator.gpu, which this runtime does not provide.");
  }
  // Mesa's software Vulkan complains on every start unless XDG_RUNTIME_DIR is a private folder.
  if (readEnv("XDG_RUNTIME_DIR") === undefined) {
    try {
      const dir = await Deno.makeTempDir({ prefix: "xdg-" });
      await Deno.chmod(dir, 0o700);
      Deno.env.set("XDG_RUNTIME_DIR", dir);
    } catch {
      // Without permission to write a temporary folder Mesa only prints a warning.
    }
  }
  // Importing the package registers webgpu at the highest priority; initBackend then selects it by name.
  await import("@tensorflow/tfjs-backend-webgpu");
}

async function loadNodeGpu(): Promise<void> {
  try {
    // Imported only on request: loading it without its native binding throws.
    await import("@tensorflow/tfjs-node-gpu");
  } catch (error) {
    throw new Error(
      `The tensorflow (CUDA) backend could not be loaded from @tensorflow/tfjs-node-gpu: ${String(error)}\n` +
        "It needs the package's native binding (tfjs_binding.node), which its install script downloads " +
        "together with libtensorflow 2.9.1, plus CUDA 11.2 and cuDNN 8.1 on the library path. Install it on a " +
        "machine with internet access (deno install --allow-scripts=npm:@tensorflow/tfjs-node-gpu@4.22.0), or use " +
        "LORA_BACKEND=webgpu to run on a GPU through WebGPU instead.",
    );
  }
}

function readEnv(key: string): string | undefined {
  try {
    return Deno.env.get(key);
  } catch {
    return undefined; // no --allow-env: behave as if it were unset
  }
}
