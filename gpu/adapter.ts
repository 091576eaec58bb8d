/**
 * Which WebGPU adapter Deno sees, and whether TensorFlow.js's webgpu backend computes correctly on it, as one
 * JSON document on stdout. `gpu/run.sh` runs it first, so a GPU run says plainly whether it ran on the
 * GPU or on a software renderer.
 *
 *     deno run -A gpu/adapter.ts [--matmul=4096]
 *
 * `--matmul` is the largest square product timed: sizes double from 256 while one product takes under half a
 * second, so a software renderer stops early and a GPU reaches the largest.
 *
 * (`-A` because Deno lets only a fully trusted program read `/proc/self/maps`, where the loaded libraries show.)
 *
 * Exit code 0 when an adapter exists (even a software one: the JSON's `software` says so), 3 when none does.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/mod.ts";

/** PCI vendor ids Vulkan reports, and Mesa's id for its software drivers. */
const VENDORS: Record<number, string> = {
  0x10de: "NVIDIA",
  0x1002: "AMD",
  0x8086: "Intel",
  0x13b5: "ARM",
  0x5143: "Qualcomm",
  0x10005: "Mesa (software)",
};

const matmulArg = Deno.args.find((a) => a.startsWith("--matmul="));
const size = matmulArg ? Number(matmulArg.slice("--matmul=".length)) : 4096;
if (!Number.isInteger(size) || size < 256) {
  console.error(`adapter.ts: --matmul expects an integer of at least 256 (a matrix size); got "${matmulArg}".`);
  Deno.exit(2);
}

const report: Record<string, unknown> = {
  env: Object.fromEntries(
    ["VK_DRIVER_FILES", "VK_ICD_FILENAMES", "LD_LIBRARY_PATH", "XDG_RUNTIME_DIR"].map((
      k,
    ) => [k, Deno.env.get(k) ?? null]),
  ),
};
const adapter = "gpu" in navigator ? await navigator.gpu.requestAdapter({ powerPreference: "high-performance" }) : null;
if (adapter === null) {
  report.adapter = null;
  report.loadedLibraries = graphicsLibraries();
  report.error = "gpu" in navigator
    ? "navigator.gpu.requestAdapter() returned null: Deno found no Vulkan driver (ICD) it could use."
    : "navigator.gpu is missing from this Deno.";
  console.log(JSON.stringify(report, null, 2));
  Deno.exit(3);
}

const info = adapter.info;
const vendorId = Number(info.vendor);
const text = `${info.description} ${info.device} ${info.architecture}`;
const software = info.isFallbackAdapter || vendorId === 0x10005 ||
  /llvmpipe|lavapipe|softpipe|swiftshader|software/i.test(text);
const limits = adapter.limits as unknown as Record<string, number>;
report.adapter = {
  vendor: info.vendor,
  vendorName: VENDORS[vendorId] ?? (/nvidia/i.test(text) ? "NVIDIA" : "unknown"),
  architecture: info.architecture,
  device: info.device,
  description: info.description,
  isFallbackAdapter: info.isFallbackAdapter,
  software,
  nvidia: vendorId === 0x10de || /nvidia/i.test(text),
  features: [...adapter.features].sort(),
  limits: Object.fromEntries(
    [
      "maxBufferSize",
      "maxStorageBufferBindingSize",
      "maxComputeWorkgroupStorageSize",
      "maxComputeInvocationsPerWorkgroup",
      "maxComputeWorkgroupSizeX",
    ].map((k) => [k, limits[k]]),
  ),
};
// Which Vulkan loader and driver this process loaded: the bundle's loader or the system's, NVIDIA's or Mesa's.
report.loadedLibraries = graphicsLibraries();

try {
  await initBackend("webgpu");
  report.tfjs = { backend: tf.getBackend(), ...await checkMatMul(), ...await timeMatMul(size) };
} catch (error) {
  report.tfjs = { error: error instanceof Error ? error.message : String(error) };
}
console.log(JSON.stringify(report, null, 2));

/** The shared libraries of this process whose names say Vulkan, a GPU driver or GL. */
function graphicsLibraries(): string[] {
  try {
    const paths = Deno.readTextFileSync("/proc/self/maps").split("\n").map((line) => line.split(/\s+/)[5] ?? "");
    return [...new Set(paths.filter((p) => /vulkan|lvp|nvidia|GLX|EGL|GLdispatch/i.test(p)))].sort();
  } catch {
    return []; // not Linux, or run without -A
  }
}

/** A small product on the GPU against the same product in plain JavaScript. */
async function checkMatMul(): Promise<{ maxAbsDiff: number }> {
  const [m, k, n] = [96, 80, 64];
  let state = 12345;
  const random = () => ((state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5;
  const a = Float32Array.from({ length: m * k }, random), b = Float32Array.from({ length: k * n }, random);
  const c = tf.tidy(() => tf.matMul(tf.tensor2d(a, [m, k]), tf.tensor2d(b, [k, n])));
  const got = await c.data();
  c.dispose();
  let maxAbsDiff = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let sum = 0;
      for (let p = 0; p < k; p++) sum += a[i * k + p] * b[p * n + j];
      maxAbsDiff = Math.max(maxAbsDiff, Math.abs(sum - got[i * n + j]));
    }
  }
  return { maxAbsDiff };
}

interface MatMulTiming {
  size: number;
  ms: number;
  gflops: number;
}

/**
 * float32 `n × n` products for n = 256, 512, … up to `largest`, while one product takes under half a second: the
 * median of five after two warm-ups, each read back as one number. Returns the largest size reached and all.
 */
async function timeMatMul(largest: number): Promise<{ matmul: MatMulTiming | null; matmulBySize: MatMulTiming[] }> {
  const all: MatMulTiming[] = [];
  for (let n = 256; n <= largest; n *= 2) {
    const a = tf.randomUniform([n, n]), b = tf.randomUniform([n, n]);
    const times: number[] = [];
    try {
      for (let run = 0; run < 7; run++) {
        const start = performance.now();
        const total = tf.tidy(() => tf.sum(tf.matMul(a, b)));
        await total.data();
        total.dispose();
        if (run >= 2) times.push(performance.now() - start);
        if (run === 1 && performance.now() - start > 2000) break; // far too slow to time five more
      }
    } catch {
      // too large for this device's buffers: keep the sizes measured so far
    } finally {
      tf.dispose([a, b]);
    }
    if (times.length === 0) break;
    const ms = times.sort((x, y) => x - y)[times.length >> 1];
    all.push({ size: n, ms, gflops: (2 * n ** 3) / (ms * 1e6) });
    if (ms > 500) break;
  }
  return { matmul: all.at(-1) ?? null, matmulBySize: all };
}
