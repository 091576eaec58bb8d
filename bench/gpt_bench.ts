/**
 * The GPT part of `deno task bench`: training tokens/s of the tiny GPT (2 layers, 4 heads, width 64, context
 * 16, vocabulary 30, batch 64 sequences, Adam) for full finetuning and for LoRA r=8 on q_proj and v_proj, and
 * generation tokens/s with and without the key/value cache, on the backend of the running process.
 *
 *     deno task bench --model=gpt                 # wasm, cpu, and webgpu when an adapter exists
 *     deno task bench --model=gpt --backend=wasm --json
 *
 * Training batches are full windows of 16 positions, every position counted, so tokens/s is 1,024 times
 * steps/s. The runs of the two configurations take turns, as in the MLP's bench, so a busy moment of these
 * shared cores falls on both.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addLoRA,
  countParameters,
  generate,
  GPT,
  type GPTConfig,
  languageModelStep,
  type TokenBatch,
  trainableVariables,
} from "../lib/mod.ts";
import { type Spread, spread } from "./timing.ts";

/** The benchmarked model: what PyTorch trains at ~31,000 tokens/s on one thread here (see the README). */
export const GPT_BENCH_CONFIG: GPTConfig = { vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 };
const BATCH = 64, SEED = 123, LEARNING_RATE = 1e-3;

/** Median, extremes and count of repeated measurements (the bench's `Spread`). */
export type GptSpread = Spread;

/** Everything the GPT bench measures on one backend; what `--model=gpt --json` prints. */
export interface GptReport {
  backend: string;
  model: GPTConfig & { batch: number };
  /** Training tokens/s (batch × 16 positions per step): full finetuning and LoRA r=8 on q_proj, v_proj. */
  trainTokensPerSecond: { full: GptSpread; lora: GptSpread };
  /** LoRA's step time over full finetuning's: the median of the per-run ratios. */
  loraStepTimeRatio: number;
  /** Trainable parameters. */
  trainableParameters: { full: number; lora: number };
  /** Trainable parameters and Adam's two moments, 12 bytes per trainable parameter. */
  trainableBytes: { full: number; lora: number };
  /** Kernels one training step runs (`tf.profile`). */
  kernelsPerStep: { full: number; lora: number };
  /** Generated tokens/s (15 new tokens per row, filling the context), by batch size, with and without the cache. */
  generateTokensPerSecond: { cached: Record<string, GptSpread>; uncached: Record<string, GptSpread> };
  settings: { warmupSteps: number; stepsPerRun: number; runs: number; generateRuns: number; quick: boolean };
  /** Filled in by bench.ts: where the figures come from. */
  machine?: { cpu: string; cores: number; deno: string; tfjs: string; date: string; loadAverage: number | null };
}

function budget(backend: string, quick: boolean) {
  const slow = !backend.startsWith("wasm"); // the cpu backend and software webgpu are many times slower
  return {
    warmupSteps: slow ? 2 : quick ? 5 : 10,
    stepsPerRun: slow ? 2 : quick ? 5 : 8,
    runs: slow ? 3 : quick ? 5 : 11,
    generateRuns: slow ? 2 : quick ? 3 : 7,
  };
}

/** A batch of `BATCH` full windows of token ids 1–29, fixed by `seed`. */
function syntheticBatch(seed: number): TokenBatch {
  const { blockSize } = GPT_BENCH_CONFIG;
  let state = seed;
  const next = () => 1 + ((state = (state * 1103515245 + 12345) % 2 ** 31) % 29);
  const inputs = Int32Array.from({ length: BATCH * blockSize }, next);
  const targets = Int32Array.from({ length: BATCH * blockSize }, next);
  return { inputs, targets, size: BATCH, time: blockSize, tokens: BATCH * blockSize };
}

/** Measures the GPT on the backend this process runs on. */
export async function measureGpt(backend: string, quick: boolean, log: (line: string) => void): Promise<GptReport> {
  const b = budget(backend, quick);
  const batches = Array.from({ length: 8 }, (_, i) => syntheticBatch(i + 1));
  const base = new GPT(GPT_BENCH_CONFIG, { seed: SEED });
  const configs = [
    { name: "full", model: base.clone() },
    {
      name: "lora",
      model: addLoRA(base.clone(), { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 }),
    },
  ].map((c) => ({
    ...c,
    optimizer: adam(LEARNING_RATE),
    variables: trainableVariables(c.model),
    rates: [] as number[],
  }));
  const kernels: Record<string, number> = {}, parameters: Record<string, number> = {};
  const bytes: Record<string, number> = {};
  for (const c of configs) {
    for (let i = 0; i < b.warmupSteps; i++) {
      languageModelStep(c.model, c.optimizer, batches[i % batches.length], c.variables).dispose();
    }
    const profile = await tf.profile(() => languageModelStep(c.model, c.optimizer, batches[0], c.variables).dispose());
    kernels[c.name] = profile.kernels.length;
    parameters[c.name] = countParameters(c.model).trainable;
    bytes[c.name] = 4 * parameters[c.name] + c.optimizer.stateBytes;
  }
  log(`${backend}: GPT training, ${b.runs} runs × ${b.stepsPerRun} steps per configuration`);
  const tokensPerStep = BATCH * GPT_BENCH_CONFIG.blockSize;
  for (let run = 0; run < b.runs; run++) {
    for (let k = 0; k < configs.length; k++) {
      const c = configs[(k + run) % configs.length];
      const start = performance.now();
      let loss: tf.Scalar | null = null;
      for (let i = 0; i < b.stepsPerRun; i++) {
        loss?.dispose();
        loss = languageModelStep(c.model, c.optimizer, batches[(run + i) % batches.length], c.variables);
      }
      await loss!.data(); // a GPU backend runs asynchronously: count until the result exists
      loss!.dispose();
      c.rates.push(b.stepsPerRun * tokensPerStep / ((performance.now() - start) / 1000));
    }
  }
  const [full, lora] = configs;

  log(`${backend}: GPT generation, ${b.generateRuns} runs`);
  const newTokens = GPT_BENCH_CONFIG.blockSize - 1;
  const generation: Record<"cached" | "uncached", Record<string, number[]>> = { cached: {}, uncached: {} };
  for (const rows of [1, BATCH]) {
    const options = { prompt: Array.from({ length: rows }, () => [1]), maxNewTokens: newTokens, seed: 1 };
    for (const useCache of [true, false]) await generate(base, { ...options, useCache }); // warm-up
    generation.cached[rows] = [];
    generation.uncached[rows] = [];
    for (let run = 0; run < b.generateRuns; run++) {
      for (const useCache of run % 2 === 0 ? [true, false] : [false, true]) {
        const start = performance.now();
        await generate(base, { ...options, useCache });
        const rate = rows * newTokens / ((performance.now() - start) / 1000);
        generation[useCache ? "cached" : "uncached"][rows].push(rate);
      }
    }
  }
  for (const c of configs) {
    c.optimizer.dispose();
    c.model.dispose();
  }
  base.dispose();
  const bySize = (runs: Record<string, number[]>) =>
    Object.fromEntries(Object.entries(runs).map(([size, rates]) => [size, spread(rates)]));
  return {
    backend,
    model: { ...GPT_BENCH_CONFIG, batch: BATCH },
    trainTokensPerSecond: { full: spread(full.rates), lora: spread(lora.rates) },
    loraStepTimeRatio: spread(full.rates.map((r, i) => r / lora.rates[i])).median,
    trainableParameters: { full: parameters.full, lora: parameters.lora },
    trainableBytes: { full: bytes.full, lora: bytes.lora },
    kernelsPerStep: { full: kernels.full, lora: kernels.lora },
    generateTokensPerSecond: { cached: bySize(generation.cached), uncached: bySize(generation.uncached) },
    settings: { ...b, quick },
  };
}

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits });
const range = (s: GptSpread) => `${fmt(s.min)}–${fmt(s.max)}`;

/** The report as Markdown tables. */
export function formatGptReport(r: GptReport): string {
  const m = r.model, s = r.settings, host = r.machine;
  const lines = [
    `### GPT on ${r.backend}`,
    "",
    ...(host === undefined ? [] : [
      `${host.cpu}, ${host.cores} cores, Deno ${host.deno}, TensorFlow.js ${host.tfjs}, ${host.date.slice(0, 16)}Z, ` +
      `load average ${host.loadAverage?.toFixed(2) ?? "?"} at start.`,
      "",
    ]),
    `${m.nLayer} layers, ${m.nHead} heads, width ${m.nEmbd}, context ${m.blockSize}, vocabulary ${m.vocabSize}, ` +
    `batch ${m.batch} sequences, Adam; medians of ${s.runs} runs of ${s.stepsPerRun} steps after ` +
    `${s.warmupSteps} warm-up steps, min–max in brackets.`,
    "",
    "| training | trainable params | params + Adam bytes | vs full | kernels/step | tokens/s | step ms | step time vs full |",
    "|---|--:|--:|--:|--:|--:|--:|--:|",
  ];
  const tokens = m.batch * m.blockSize;
  for (const name of ["full", "lora"] as const) {
    const t = r.trainTokensPerSecond[name];
    lines.push(
      `| ${name === "full" ? "full finetuning" : "LoRA r=8 on q_proj, v_proj"} | ` +
        `${fmt(r.trainableParameters[name])} | ${fmt(r.trainableBytes[name])} | ` +
        `${(100 * r.trainableBytes[name] / r.trainableBytes.full).toFixed(1)}% | ${r.kernelsPerStep[name]} | ` +
        `${fmt(t.median)} (${range(t)}) | ${(1000 * tokens / t.median).toFixed(1)} | ` +
        `${(name === "full" ? 1 : r.loraStepTimeRatio).toFixed(2)}× |`,
    );
  }
  lines.push(
    "",
    `| generation (${m.blockSize - 1} new tokens per row) | tokens/s with the KV cache | without | cache speed-up |`,
    "|---|--:|--:|--:|",
  );
  for (const size of Object.keys(r.generateTokensPerSecond.cached)) {
    const [c, u] = [r.generateTokensPerSecond.cached[size], r.generateTokensPerSecond.uncached[size]];
    lines.push(
      `| batch ${size} | ${fmt(c.median)} (${range(c)}) | ${fmt(u.median)} (${range(u)}) | ` +
        `${(c.median / u.median).toFixed(2)}× |`,
    );
  }
  return lines.join("\n");
}
