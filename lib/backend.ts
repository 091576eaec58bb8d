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

/**
 * Picks, loads and initialises a backend, and returns its name.
 *
 * The choice is, in order: the `name` argument; the `LORA_BACKEND` environment variable; `wasm`; `cpu`.
 * `webgpu` and `tensorflow` are never picked unless asked for, because the first may be a slow software
 * renderer and the second needs CUDA libraries. Asking for a backend that cannot start throws an error that
 * says what it needs, rather than silently running somewhere else.
 *
 * Call it once, before creating any tensor.
 *
 * @example Start the default backend
 * ```ts
 * import { initBackend } from "./backend.ts";
 * const name = await initBackend();
 * console.log(name); // "wasm" unless LORA_BACKEND says otherwise
 * ```
 */
export async function initBackend(name?: string): Promise<BackendName> {
  const requested = name ?? readEnv("LORA_BACKEND");
  if (requested !== undefined && requested !== "") {
    if (!(BACKEND_NAMES as readonly string[]).includes(requested)) {
      throw new Error(
        `Unknown backend "${requested}": expected one of ${BACKEND_NAMES.join(", ")}.`,
      );
    }
    await start(requested as BackendName);
    return requested as BackendName;
  }
  try {
    await start("wasm");
    return "wasm";
  } catch {
    await start("cpu");
    return "cpu";
  }
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
