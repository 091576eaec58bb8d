/**
 * Training steps/s against batch size, for `deno task bench --batch-sizes=64,256,…`.
 *
 * A GPU pays a fixed cost per kernel launch and wins only once a step holds enough arithmetic; a CPU backend's
 * step time grows with the batch from the start. Measuring both at the same batch sizes shows where the lines
 * cross. Each size trains the tutorial's MLP (784-128-256-10, Adam lr 0.005) on MNIST images, full finetuning
 * and LoRA rank 4 (alpha 8) on all three layers, taking turns so a slow moment of the machine falls on both.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addLoRA,
  type Batch,
  DataLoader,
  loadMnist,
  type MnistSplit,
  MultilayerPerceptron,
  subset,
  trainableVariables,
  trainStep,
} from "../lib/mod.ts";
import { type Spread, spread } from "./timing.ts";

/** Median, extremes and count of one configuration's steps/s over the runs at one batch size. */
export type SweepSpread = Spread;

/** What was measured at one batch size. */
export interface SweepPoint {
  /** Examples per training step. */
  batch: number;
  /** Training steps taken in each timed run (chosen from the warm-up so a run lasts about `runSeconds`). */
  stepsPerRun: number;
  /** Full finetuning, steps/s. */
  full: SweepSpread;
  /** LoRA rank 4 on all three layers (base frozen), steps/s. */
  lora4: SweepSpread;
}

/** One backend's batch-size sweep: the JSON `deno task bench --batch-sizes=… --json` prints per backend. */
export interface BatchSweepReport {
  /** The TensorFlow.js backend measured. */
  backend: string;
  /** Marks this report apart from the ordinary bench report. */
  kind: "batch-sweep";
  /** One entry per batch size, in the order asked for. */
  points: SweepPoint[];
  /** How the figures were taken. */
  settings: { runs: number; warmupSteps: number; runSeconds: number; quick: boolean };
  /** Where they were taken. */
  machine: { deno: string; tfjs: string; cores: number; os: string; date: string };
}

/** Options of {@linkcode measureBatchSweep}. */
export interface SweepOptions {
  /** Fewer and shorter runs; default `false`. */
  quick?: boolean;
  /** Progress lines (to stderr in the bench). */
  log?: (line: string) => void;
  /** The images batches are cut from, the first `2 · batch` of them; default: MNIST's training split. */
  images?: MnistSplit;
}

/**
 * Parses the value of `--batch-sizes=`: comma-separated positive integers.
 *
 * @example
 * ```ts
 * import { parseBatchSizes } from "./sweep.ts";
 * console.log(parseBatchSizes("64,256,1024")); // [ 64, 256, 1024 ]
 * ```
 */
export function parseBatchSizes(text: string): number[] {
  const sizes = text.split(",").map((part) => Number(part.trim()));
  const bad = sizes.find((n) => !Number.isInteger(n) || n < 1 || n > 30_000);
  if (text.trim() === "" || bad !== undefined) {
    throw new Error(
      `bench: --batch-sizes expects comma-separated integers from 1 to 30000 (half of MNIST's training split, ` +
        `so that two different batches exist); got "${text}".`,
    );
  }
  return sizes;
}

/**
 * Measures training steps/s of full finetuning and LoRA rank 4 at each batch size, on the backend already
 * started (see `initBackend`). Leaves no tensor behind.
 *
 * @example A tiny sweep on synthetic images
 * ```ts
 * import { initBackend } from "../lib/mod.ts";
 * import { measureBatchSweep } from "./sweep.ts";
 * await initBackend("wasm");
 * const pixels = new Float32Array(16 * 784).fill(0.5);
 * const images = { images: pixels, labels: new Uint8Array(16), count: 16, rows: 28, cols: 28 };
 * const report = await measureBatchSweep([4, 8], { quick: true, images });
 * console.log(report.points.map((p) => p.batch)); // [ 4, 8 ]
 * ```
 */
export async function measureBatchSweep(batchSizes: number[], options: SweepOptions = {}): Promise<BatchSweepReport> {
  const quick = options.quick ?? false;
  const log = options.log ?? (() => {});
  const runs = quick ? 3 : 5, warmupSteps = 3, runSeconds = quick ? 0.25 : 0.5;
  const images = options.images ?? (await loadMnist()).train;
  const backend = tf.getBackend();
  const points: SweepPoint[] = [];
  for (const batch of batchSizes) {
    if (2 * batch > images.count) {
      throw new RangeError(`measureBatchSweep: batch ${batch} needs ${2 * batch} images; only ${images.count} given.`);
    }
    const batches = [...new DataLoader(subset(images, 0, 2 * batch), { batchSize: batch })];
    const base = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
    const configs = [
      { name: "full", model: base.clone() },
      { name: "lora4", model: addLoRA(base.clone(), { rank: 4, alpha: 8, seed: 123 }) },
    ].map((c) => ({ ...c, optimizer: adam(0.005), variables: trainableVariables(c.model), rates: [] as number[] }));
    base.dispose();
    // Warm-up: webgpu compiles its shaders for each new shape in the first step. Then the slower configuration's
    // time for two more steps sets how many steps a timed run takes.
    let slowest = 0;
    for (const c of configs) await timeSteps(c, batches, 1);
    for (const c of configs) slowest = Math.max(slowest, 1 / await timeSteps(c, batches, warmupSteps - 1));
    const stepsPerRun = Math.max(1, Math.min(100, Math.round(runSeconds / slowest)));
    for (let run = 0; run < runs; run++) {
      for (let k = 0; k < configs.length; k++) {
        const c = configs[(k + run) % configs.length];
        c.rates.push(await timeSteps(c, batches, stepsPerRun));
      }
    }
    for (const c of configs) {
      c.optimizer.dispose();
      c.model.dispose();
    }
    const [full, lora4] = configs.map((c) => spread(c.rates));
    points.push({ batch, stepsPerRun, full, lora4 });
    log(
      `${backend}: batch ${batch}: full ${full.median.toFixed(1)} steps/s, LoRA r=4 ${lora4.median.toFixed(1)} ` +
        `steps/s (${runs} runs × ${stepsPerRun} steps)`,
    );
  }
  return {
    backend,
    kind: "batch-sweep",
    points,
    settings: { runs, warmupSteps, runSeconds, quick },
    machine: {
      deno: Deno.version.deno,
      tfjs: tf.version.tfjs,
      cores: navigator.hardwareConcurrency,
      os: `${Deno.build.os} ${Deno.build.arch}`,
      date: new Date().toISOString(),
    },
  };
}

/**
 * The sweeps of several backends as one Markdown table, a row per batch size, with each backend's steps/s and
 * examples/s and, when wasm was measured too, each other backend's speed relative to wasm's at that size.
 *
 * @example
 * ```ts
 * import { formatBatchSweep } from "./sweep.ts";
 * const s = (median: number) => ({ median, min: median, max: median, runs: 1 });
 * const report = (backend: string, full: number) => ({
 *   backend,
 *   kind: "batch-sweep" as const,
 *   points: [{ batch: 64, stepsPerRun: 10, full: s(full), lora4: s(full) }],
 *   settings: { runs: 1, warmupSteps: 2, runSeconds: 0.5, quick: true },
 *   machine: { deno: "2.9.6", tfjs: "4.22.0", cores: 2, os: "linux x86_64", date: "2026-11-30T00:00:00Z" },
 * });
 * console.log(formatBatchSweep([report("wasm", 100), report("webgpu", 250)]).includes("2.50×")); // true
 * ```
 */
export function formatBatchSweep(reports: BatchSweepReport[]): string {
  const wasm = reports.find((r) => r.backend === "wasm");
  const others = reports.filter((r) => r !== wasm);
  const columns = [...(wasm ? [wasm] : []), ...others];
  const sizes = [...new Set(reports.flatMap((r) => r.points.map((p) => p.batch)))];
  const header = ["batch"];
  for (const r of columns) {
    header.push(`${r.backend} full steps/s`, `${r.backend} LoRA r=4 steps/s`, `${r.backend} full examples/s`);
    if (wasm && r !== wasm) header.push(`${r.backend} full vs wasm`, `${r.backend} LoRA r=4 vs wasm`);
  }
  const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "--:").join("|")}|`];
  const fixed = (n: number) => n.toLocaleString("en-US", { maximumFractionDigits: 1 });
  for (const size of sizes) {
    const row = [String(size)];
    const base = wasm?.points.find((p) => p.batch === size);
    for (const r of columns) {
      const p = r.points.find((q) => q.batch === size);
      if (!p) {
        row.push("–", "–", "–", ...(wasm && r !== wasm ? ["–", "–"] : []));
        continue;
      }
      row.push(fixed(p.full.median), fixed(p.lora4.median), Math.round(p.full.median * size).toLocaleString("en-US"));
      if (wasm && r !== wasm) {
        row.push(
          base ? `${(p.full.median / base.full.median).toFixed(2)}×` : "–",
          base ? `${(p.lora4.median / base.lora4.median).toFixed(2)}×` : "–",
        );
      }
    }
    lines.push(`| ${row.join(" | ")} |`);
  }
  return lines.join("\n");
}

interface Timed {
  model: MultilayerPerceptron;
  optimizer: ReturnType<typeof adam>;
  variables: tf.Variable[];
}

/** Runs `steps` training steps, waits for the last loss to exist (GPU work is asynchronous), returns steps/s. */
async function timeSteps(c: Timed, batches: Batch[], steps: number): Promise<number> {
  const start = performance.now();
  let loss: tf.Scalar | null = null;
  for (let i = 0; i < steps; i++) {
    loss?.dispose();
    loss = trainStep(c.model, c.optimizer, batches[i % batches.length], c.variables);
  }
  await loss!.data();
  loss!.dispose();
  return steps / ((performance.now() - start) / 1000);
}
