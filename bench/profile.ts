/**
 * Where one training step's time goes, kernel by kernel: the bench's MLP (batch 64) and tiny GPT (batch 64 × 16
 * tokens), full finetuning and LoRA, profiled with `tf.profile` after a warm-up. Prints, per configuration, the
 * number of kernels and their summed time, then the kernels grouped by name, slowest first.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/profile.ts [wasm|wasm+blas] [--model=gpt|mlp] [--top=12]
 *
 * `tf.profile` times each kernel alone, so the sums run above a step's time outside the profiler; compare
 * kernels with one another, and steps with `deno task bench --peers`. `LORA_FUSED=off` profiles the readable
 * formulas instead of the fused kernels (`lib/fused.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addLoRA,
  GPT,
  initBackend,
  languageModelStep,
  MultilayerPerceptron,
  trainableVariables,
  trainStep,
} from "../lib/mod.ts";
import { GPT_BENCH_CONFIG } from "./gpt_bench.ts";

const args = Deno.args.filter((a) => !a.startsWith("--"));
const flag = (name: string) => Deno.args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
const requested = args[0] ?? "wasm+blas";
// "wasm" means plain wasm here, not wasm with BLAS when it can be had
const backend = await initBackend(requested, requested === "wasm" ? { blas: false } : {});
const models = (flag("model") ?? "mlp,gpt").split(",");
const top = Number(flag("top") ?? 12);

function lcg(seed: number) {
  let state = seed;
  return () => (state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
}

async function profile(name: string, step: () => void) {
  for (let i = 0; i < 5; i++) step();
  const start = performance.now();
  for (let i = 0; i < 10; i++) step();
  const stepMs = (performance.now() - start) / 10;
  const info = await tf.profile(step);
  const byName = new Map<string, { count: number; ms: number }>();
  let total = 0;
  for (const k of info.kernels) {
    const ms = typeof k.kernelTimeMs === "number" ? k.kernelTimeMs : 0;
    total += ms;
    const entry = byName.get(k.name) ?? { count: 0, ms: 0 };
    entry.count++;
    entry.ms += ms;
    byName.set(k.name, entry);
  }
  console.log(
    `\n${backend} ${name}: step ${stepMs.toFixed(2)} ms unprofiled; ${info.kernels.length} kernels, ` +
      `${total.toFixed(2)} ms in kernels (profiled)`,
  );
  const rows = [...byName].sort((a, b) => b[1].ms - a[1].ms).slice(0, top);
  for (const [kernel, { count, ms }] of rows) {
    console.log(`  ${kernel.padEnd(28)} ${String(count).padStart(4)} × ${ms.toFixed(2).padStart(7)} ms`);
  }
}

if (models.includes("mlp")) {
  const random = lcg(7);
  const batch = {
    features: Float32Array.from({ length: 64 * 784 }, random),
    labels: Int32Array.from({ length: 64 }, (_, i) => i % 10),
    size: 64,
  };
  for (const kind of ["full", "lora"]) {
    const base = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
    const model = kind === "full" ? base : addLoRA(base, { rank: 4, alpha: 8, seed: 2 });
    const variables = trainableVariables(model), optimizer = adam(0.005);
    await profile(`MLP ${kind}`, () => trainStep(model, optimizer, batch, variables).dispose());
    model.dispose();
    optimizer.dispose();
  }
}

if (models.includes("gpt")) {
  const random = lcg(3), n = 64 * GPT_BENCH_CONFIG.blockSize;
  const ids = () => Int32Array.from({ length: n }, () => 1 + Math.floor(random() * 29));
  const batch = { inputs: ids(), targets: ids(), size: 64, time: GPT_BENCH_CONFIG.blockSize, tokens: n };
  for (const kind of ["full", "lora"]) {
    const base = new GPT(GPT_BENCH_CONFIG, { seed: 123 });
    const model = kind === "full"
      ? base
      : addLoRA(base, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 });
    const variables = trainableVariables(model), optimizer = adam(0.001);
    await profile(`GPT ${kind}`, () => languageModelStep(model, optimizer, batch, variables).dispose());
    model.dispose();
    optimizer.dispose();
  }
}
