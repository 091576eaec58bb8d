/**
 * `deno task bench`: measured speed and memory of LoRA against full finetuning, merged against unmerged, per
 * backend, on the tutorial's MLP (784-128-256-10) at batch 64.
 *
 * Each backend runs in its own process (so one backend's memory and warm caches do not colour another's) and
 * reports training steps/s, inference latency, merge time, memory and test accuracy. Figures are medians over
 * repeated runs after a warm-up; the runs of different configurations are interleaved, so a slow moment of
 * the machine (other processes share these cores) falls on all of them alike, and the spread is printed.
 *
 *     deno task bench                      # every backend that starts here: wasm, cpu, webgpu (if an adapter)
 *     deno task bench --quick              # wasm only, fewer runs, a data subset: under a minute
 *     deno task bench --backend=wasm --json
 *     deno task bench --save               # also writes bench/results.json and bench/steps-vs-rank.svg
 *     deno task bench --numpy              # also times a numpy loop of the same MLP, if numpy is installed
 *     deno task bench --backend=wasm,webgpu --batch-sizes=64,256,1024   # only steps/s against batch size
 *     deno task bench --model=gpt          # only the tiny GPT (gpt_bench.ts); --model=mlp only the MLP
 *     deno task bench --peers              # the MLP and the GPT against PyTorch, same run, ratios (peers.ts)
 *
 * `wasm` here is plain wasm and `wasm+blas` wasm with OpenBLAS products (`lib/blas.ts`; skipped with the reason
 * when it cannot be used).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addLoRA,
  type BackendName,
  type Batch,
  computeAccuracy,
  countParameters,
  DataLoader,
  initBackend,
  type LinearWithAdapters,
  loadMnist,
  loraLayers,
  MultilayerPerceptron,
  subset,
  train,
  trainableVariables,
  trainStep,
} from "../lib/mod.ts";
import { formatGptReport, type GptReport, measureGpt } from "./gpt_bench.ts";
import { parsePeersArgs, runPeers } from "./peers.ts";
import { renderStepsVsRank } from "./plot.ts";
import { type Spread, spread } from "./timing.ts";

/** The ranks compared: from 1 to well past what these layers need. */
const RANKS = [1, 2, 4, 8, 16, 64] as const;
const ALPHA = 8, LEARNING_RATE = 0.005, BATCH = 64, SEED = 123;

/** Median, extremes and count of repeated measurements. */
export type { Spread } from "./timing.ts";

/** Everything measured on one backend; the shape `--json` prints. */
export interface BackendReport {
  backend: string;
  /** Median training steps/s at batch 64: full finetuning, and LoRA by rank (frozen base). */
  trainStepsPerSecond: { full: number; lora: Record<string, number> };
  /** The same, with spread. */
  trainStepsPerSecondSpread: { full: Spread; lora: Record<string, Spread> };
  /** LoRA rank 4's step time over full finetuning's: the median of that ratio over the interleaved runs. */
  loraRank4StepTimeRatio: number;
  /** The same for every rank. */
  stepTimeRatio: Record<string, number>;
  /** Median latency (ms) of one forward pass plus reading the logits back, by batch size. */
  inferenceMs: { base: Record<string, number>; unmerged: Record<string, number>; merged: Record<string, number> };
  /** The same, with spread. */
  inferenceMsSpread: Record<"base" | "unmerged" | "merged", Record<string, Spread>>;
  /** LoRA rank 4 unmerged latency over base, and merged over base, by batch size (medians of per-run ratios). */
  inferenceRatio: { unmerged: Record<string, number>; merged: Record<string, number> };
  /** Largest |merged − unmerged| logit on a test batch: merging must not change the model. */
  mergedMaxAbsDiff: number;
  /** Time to merge all three LoRA rank-4 layers into their weights (ms). */
  mergeMs: Spread;
  /** Bytes of trainable parameters plus Adam's two moments (4 bytes each per parameter). */
  trainableBytes: { full: number; lora: Record<string, number> };
  /** Trainable parameter counts. */
  trainableParameters: { full: number; lora: Record<string, number> };
  /** Peak `tf.memory().numBytes` during one training step, above what was allocated before the model. */
  trainingPeakBytes: { full: number; lora: Record<string, number> };
  /** Kernels one training step runs (from `tf.profile`). */
  kernelsPerStep: { full: number; lora: Record<string, number> };
  /** Test accuracy (%) after the same number of epochs. */
  accuracy: {
    epochs: number;
    trainExamples: number;
    testExamples: number;
    /** The MLP trained from scratch with this library's Adam and loss. */
    full: number;
    /** That model finetuned with LoRA rank 4 (alpha 8), its base frozen. */
    lora4: number;
    /** The MLP trained with `tf.train.adam` and `tf.losses.softmaxCrossEntropy`, same seeds and batches. */
    referenceTfAdam: number;
    /** Steps/s of `train()` over those epochs: this library, and the tfjs-optimizer reference. */
    trainStepsPerSecond: { library: number; referenceTfAdam: number };
  };
  /** How the figures were taken. */
  settings: { batch: number; warmupSteps: number; stepsPerRun: number; runs: number; quick: boolean };
  machine: Machine;
  /** A numpy + BLAS loop of the same MLP on the same machine, when asked for and available. */
  numpyReference?: NumpyReport;
}

/** Where the figures come from. */
export interface Machine {
  cpu: string;
  cores: number;
  os: string;
  deno: string;
  tfjs: string;
  date: string;
  /** 1-minute load average when the backend's run started: other processes slow every figure. */
  loadAverage: number | null;
}

/** What bench/numpy_mlp.py prints. */
export interface NumpyReport {
  numpy: string;
  full: number;
  lora4: number;
}

/** The backends the bench measures: tfjs's, and wasm with BLAS products. */
type BenchBackend = BackendName | "wasm+blas";

interface Options {
  quick: boolean;
  json: boolean;
  save: boolean;
  numpy: boolean;
  backends: BenchBackend[];
  child: boolean;
  /** `--batch-sizes=64,256,…`: measure only training steps/s at these batch sizes (see sweep.ts). */
  batchSizes?: string;
  /**
   * `--model=mlp,gpt`: which models to measure. Default: both, or the MLP alone with `--json`, whose document
   * holds one model's reports.
   */
  models: ("mlp" | "gpt")[];
}

function parseArgs(args: string[]): Options {
  const options: Options = {
    quick: false,
    json: false,
    save: false,
    numpy: false,
    backends: [],
    child: false,
    models: [],
  };
  for (const arg of args) {
    if (arg === "--quick") options.quick = true;
    else if (arg === "--json") options.json = true;
    else if (arg === "--save") options.save = true;
    else if (arg === "--numpy") options.numpy = true;
    else if (arg === "--child") options.child = true;
    else if (arg.startsWith("--batch-sizes=")) options.batchSizes = arg.slice("--batch-sizes=".length);
    else if (arg.startsWith("--model=")) {
      for (const name of arg.slice("--model=".length).split(",")) {
        if (name !== "mlp" && name !== "gpt") {
          throw new Error(`bench: unknown model "${name}"; expected mlp or gpt (comma-separated).`);
        }
        options.models.push(name);
      }
    } else if (arg.startsWith("--backend=")) {
      for (const name of arg.slice("--backend=".length).split(",")) {
        if (!["wasm", "wasm+blas", "cpu", "webgpu"].includes(name)) {
          throw new Error(
            `bench: unknown backend "${name}"; expected wasm, wasm+blas, cpu or webgpu (comma-separated).`,
          );
        }
        options.backends.push(name as BenchBackend);
      }
    } else {
      throw new Error(
        `bench: unknown argument "${arg}"; expected --quick, --json, --save, --numpy, --batch-sizes=64,256,…, ` +
          `--model=mlp,gpt, --backend=wasm,wasm+blas,cpu,webgpu or --peers (see peers.ts).`,
      );
    }
  }
  if (options.backends.length === 0) {
    options.backends = options.quick ? ["wasm", "wasm+blas"] : ["wasm", "wasm+blas", "cpu", "webgpu"];
  }
  // A child process measures one model; it is told which with --model=gpt.
  if (options.models.length === 0) options.models = options.json || options.child ? ["mlp"] : ["mlp", "gpt"];
  if (options.json && options.models.length > 1) {
    throw new Error("bench: --json prints one model's reports; pass --model=mlp or --model=gpt.");
  }
  return options;
}

/** The median over runs of `a[run] / b[run]`: e.g. full's steps/s over LoRA's, which is LoRA's step time over full's. */
function pairedRatio(a: number[], b: number[]): number {
  return spread(a.map((x, i) => x / b[i])).median;
}

/** How much work each backend gets: the cpu backend and software webgpu are ~15× slower than wasm. */
function budget(backend: string, quick: boolean) {
  const slow = !backend.startsWith("wasm");
  return {
    // Many short runs rather than a few long ones: other processes come and go on these shared cores, and
    // short interleaved runs let each configuration see the same mix of quiet and busy moments.
    warmupSteps: slow ? 3 : quick ? 10 : 30,
    stepsPerRun: slow ? 3 : quick ? 15 : 15,
    runs: slow ? 5 : quick ? 9 : 21,
    inferenceCalls: slow ? 3 : quick ? 10 : 20,
    inferenceRuns: slow ? 7 : quick ? 15 : 21,
    // Accuracy: full MNIST for two epochs on wasm (as the tutorial); a subset and one epoch elsewhere.
    epochs: slow || quick ? 1 : 2,
    trainExamples: slow ? 3_200 : quick ? 6_400 : 60_000,
    testExamples: slow ? 2_000 : quick ? 2_000 : 10_000,
  };
}

async function machine(): Promise<Machine> {
  let cpu = "unknown", load: number | null = null;
  try {
    const out = await new Deno.Command("lscpu", { stdout: "piped", stderr: "null" }).output();
    cpu = /^Model name:\s*(.+)$/m.exec(new TextDecoder().decode(out.stdout))?.[1] ?? cpu;
    load = Deno.loadavg()[0];
  } catch {
    // no lscpu, or no permission to run it or to read the load: leave unknown
  }
  return {
    cpu,
    cores: navigator.hardwareConcurrency,
    os: `${Deno.build.os} ${Deno.build.arch}`,
    deno: Deno.version.deno,
    tfjs: tf.version.tfjs,
    date: new Date().toISOString(),
    loadAverage: load,
  };
}

interface Config {
  name: string;
  model: MultilayerPerceptron;
  optimizer: ReturnType<typeof adam>;
  variables: tf.Variable[];
  rates: number[];
}

/**
 * Adds LoRA of `rank` to all three layers. A rank cannot exceed min(in, out), so the 256×10 output layer gets
 * at most rank 10.
 */
function withLoRA(model: MultilayerPerceptron, rank: number): MultilayerPerceptron {
  addLoRA(model, { rank, alpha: ALPHA, seed: SEED, targetModules: ["layers.0", "layers.2"] });
  return addLoRA(model, { rank: Math.min(rank, 10), alpha: ALPHA, seed: SEED + 2, targetModules: ["layers.4"] });
}

/** Runs `steps` training steps and waits for the last one to finish; returns steps per second. */
async function timeSteps(config: Config, batches: Batch[], steps: number, offset: number): Promise<number> {
  const start = performance.now();
  let loss: tf.Scalar | null = null;
  for (let i = 0; i < steps; i++) {
    loss?.dispose();
    loss = trainStep(config.model, config.optimizer, batches[(offset + i) % batches.length], config.variables);
  }
  await loss!.data(); // a GPU backend runs asynchronously: count the time until the result exists
  loss!.dispose();
  return steps / ((performance.now() - start) / 1000);
}

/** Measures everything for the backend this process runs on. */
async function measureBackend(backend: string, quick: boolean, log: (line: string) => void): Promise<BackendReport> {
  const b = budget(backend, quick);
  const host = await machine();
  const mnist = await loadMnist();
  const trainSplit = subset(mnist.train, 0, b.trainExamples);
  const testSplit = subset(mnist.test, 0, b.testExamples);
  const batches = [...new DataLoader(subset(mnist.train, 0, 16 * BATCH), { batchSize: BATCH })];

  // --- training speed and memory -------------------------------------------------------------------------
  const base = new MultilayerPerceptron(784, 128, 256, 10, { seed: SEED });
  const configs: Config[] = [];
  const trainableParameters = { full: 0, lora: {} as Record<string, number> };
  const trainableBytes = { full: 0, lora: {} as Record<string, number> };
  const trainingPeakBytes = { full: 0, lora: {} as Record<string, number> };
  const kernelsPerStep = { full: 0, lora: {} as Record<string, number> };
  for (const rank of [0, ...RANKS]) {
    const before = tf.memory().numBytes;
    const model = rank === 0 ? base.clone() : withLoRA(base.clone(), rank);
    const config = { name: rank === 0 ? "full" : String(rank), model, optimizer: adam(LEARNING_RATE), rates: [] };
    configs.push({ ...config, variables: trainableVariables(model) });
    const c = configs.at(-1)!;
    for (let i = 0; i < b.warmupSteps; i++) trainStep(c.model, c.optimizer, batches[i % 16], c.variables).dispose();
    const profile = await tf.profile(() => trainStep(c.model, c.optimizer, batches[0], c.variables).dispose());
    const params = countParameters(model).trainable;
    // Adam keeps two float32 moments per trainable parameter, next to the float32 parameter itself.
    const bytes = 4 * params + c.optimizer.stateBytes;
    if (rank === 0) {
      Object.assign(trainableParameters, { full: params });
      Object.assign(trainableBytes, { full: bytes });
      trainingPeakBytes.full = profile.peakBytes - before;
      kernelsPerStep.full = profile.kernels.length;
    } else {
      trainableParameters.lora[rank] = params;
      trainableBytes.lora[rank] = bytes;
      trainingPeakBytes.lora[rank] = profile.peakBytes - before;
      kernelsPerStep.lora[rank] = profile.kernels.length;
    }
  }
  log(`${backend}: training speed, ${b.runs} runs × ${b.stepsPerRun} steps per configuration`);
  for (let run = 0; run < b.runs; run++) {
    // Interleaved, and in a rotated order each run, so that drift in the machine's speed is shared out.
    for (let k = 0; k < configs.length; k++) {
      const config = configs[(k + run) % configs.length];
      config.rates.push(await timeSteps(config, batches, b.stepsPerRun, run * b.stepsPerRun));
    }
  }
  const rates = (name: string) => configs.find((c) => c.name === name)!.rates;
  const rate = (name: string) => spread(rates(name));
  const trainSpread = {
    full: rate("full"),
    lora: Object.fromEntries(RANKS.map((r) => [String(r), rate(String(r))])),
  };

  // --- inference and merging -------------------------------------------------------------------------------
  log(`${backend}: inference and merging`);
  const unmerged = configs.find((c) => c.name === "4")!.model; // B moved away from zero by the warm-up steps
  const merged = unmerged.clone();
  for (const [, layer] of loraLayers(merged)) layer.merge();
  const models = { base, unmerged, merged };
  const testBatch = [...new DataLoader(subset(mnist.test, 0, BATCH), { batchSize: BATCH })][0];
  const inputs: Record<string, tf.Tensor2D> = {
    "1": tf.tensor2d(testBatch.features.subarray(0, 784), [1, 784]),
    "64": tf.tensor2d(testBatch.features, [BATCH, 784]),
  };
  const gap = tf.tidy(() => tf.max(tf.abs(tf.sub(merged.apply(inputs["64"]), unmerged.apply(inputs["64"])))));
  const mergedMaxAbsDiff = (await gap.data())[0]; // asynchronously: webgpu cannot read back synchronously
  gap.dispose();
  const latencies: Record<string, Record<string, number[]>> = { base: {}, unmerged: {}, merged: {} };
  const timeInference = async (model: MultilayerPerceptron, x: tf.Tensor2D, calls: number) => {
    const start = performance.now();
    for (let i = 0; i < calls; i++) {
      const y = model.apply(x);
      await y.data(); // latency means: until the logits are in JavaScript
      y.dispose();
    }
    return (performance.now() - start) / calls;
  };
  for (const [size, x] of Object.entries(inputs)) {
    for (const model of Object.values(models)) await timeInference(model, x, 3); // warm-up: packing, shaders
    for (const name of Object.keys(models)) latencies[name][size] = [];
    for (let run = 0; run < b.inferenceRuns; run++) {
      // Rotated order within each run, as for training.
      const entries = Object.entries(models);
      for (let k = 0; k < entries.length; k++) {
        const [name, model] = entries[(k + run) % entries.length];
        latencies[name][size].push(await timeInference(model, x, b.inferenceCalls));
      }
    }
  }
  const inferenceMsSpread = Object.fromEntries(
    Object.entries(latencies).map(([name, bySize]) => [
      name,
      Object.fromEntries(Object.entries(bySize).map(([size, xs]) => [size, spread(xs)])),
    ]),
  ) as BackendReport["inferenceMsSpread"];
  const medians = (name: "base" | "unmerged" | "merged") =>
    Object.fromEntries(Object.entries(inferenceMsSpread[name]).map(([s, v]) => [s, v.median]));
  // Ratios are medians of per-run ratios: both sides of each were measured moments apart, so a slow spell of
  // the machine cancels out instead of landing on one side.
  const ratio = (name: "unmerged" | "merged") =>
    Object.fromEntries(Object.keys(inputs).map((s) => [s, pairedRatio(latencies[name][s], latencies.base[s])]));
  const mergeTimes: number[] = [];
  for (let run = 0; run < b.inferenceRuns + 2; run++) {
    const copy = unmerged.clone();
    const start = performance.now();
    for (const [, layer] of loraLayers(copy)) layer.merge();
    await (copy.layers[4] as LinearWithAdapters).linear.weight.data(); // until the merged weight exists
    if (run >= 2) mergeTimes.push(performance.now() - start); // the first two are warm-up
    copy.dispose();
  }
  tf.dispose(Object.values(inputs));
  merged.dispose();

  // --- accuracy after the same number of epochs ------------------------------------------------------------
  log(`${backend}: accuracy, ${b.epochs} epoch(s) on ${b.trainExamples} training images`);
  const loader = () => new DataLoader(trainSplit, { batchSize: BATCH, shuffle: true, seed: 1 });
  const testLoader = new DataLoader(testSplit, { batchSize: 256 });
  const trained = new MultilayerPerceptron(784, 128, 256, 10, { seed: SEED });
  const fullOptimizer = adam(LEARNING_RATE);
  const history = await train(trained, fullOptimizer, loader(), { epochs: b.epochs, logEvery: 1_000_000 });
  const fullAccuracy = await computeAccuracy(trained, testLoader);
  const lora = addLoRA(trained.clone(), { rank: 4, alpha: ALPHA, seed: SEED });
  const loraOptimizer = adam(LEARNING_RATE);
  await train(lora, loraOptimizer, loader(), { epochs: b.epochs, logEvery: 1_000_000 });
  const loraAccuracy = await computeAccuracy(lora, testLoader);
  const reference = await trainWithTfAdam(loader(), b.epochs);
  const referenceAccuracy = await computeAccuracy(reference.model, testLoader);
  fullOptimizer.dispose();
  loraOptimizer.dispose();
  for (const m of [trained, lora, reference.model]) m.dispose();
  for (const c of configs) {
    c.optimizer.dispose();
    c.model.dispose();
  }
  base.dispose();

  const report: BackendReport = {
    backend,
    trainStepsPerSecond: {
      full: trainSpread.full.median,
      lora: Object.fromEntries(Object.entries(trainSpread.lora).map(([r, s]) => [r, s.median])),
    },
    trainStepsPerSecondSpread: trainSpread,
    loraRank4StepTimeRatio: pairedRatio(rates("full"), rates("4")),
    stepTimeRatio: Object.fromEntries(RANKS.map((r) => [String(r), pairedRatio(rates("full"), rates(String(r)))])),
    inferenceMs: { base: medians("base"), unmerged: medians("unmerged"), merged: medians("merged") },
    inferenceMsSpread,
    inferenceRatio: { unmerged: ratio("unmerged"), merged: ratio("merged") },
    mergedMaxAbsDiff,
    mergeMs: spread(mergeTimes),
    trainableBytes,
    trainableParameters,
    trainingPeakBytes,
    kernelsPerStep,
    accuracy: {
      epochs: b.epochs,
      trainExamples: trainSplit.count,
      testExamples: testSplit.count,
      full: fullAccuracy,
      lora4: loraAccuracy,
      referenceTfAdam: referenceAccuracy,
      trainStepsPerSecond: { library: history.steps / history.seconds, referenceTfAdam: reference.stepsPerSecond },
    },
    settings: { batch: BATCH, warmupSteps: b.warmupSteps, stepsPerRun: b.stepsPerRun, runs: b.runs, quick },
    machine: host,
  };
  return report;
}

/** The library's training loop as it was before this benchmark: tfjs's Adam and tfjs's cross-entropy. */
async function trainWithTfAdam(loader: DataLoader, epochs: number) {
  const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: SEED });
  const optimizer = tf.train.adam(LEARNING_RATE, 0.9, 0.999, 1e-8);
  const variables = trainableVariables(model);
  let steps = 0;
  const start = performance.now();
  for (let epoch = 0; epoch < epochs; epoch++) {
    for (const batch of loader) {
      const x = tf.tensor2d(batch.features, [batch.size, 784]);
      const y = tf.oneHot(tf.tensor1d(batch.labels, "int32"), 10).toFloat();
      optimizer.minimize(() => tf.losses.softmaxCrossEntropy(y, model.apply(x)) as tf.Scalar, false, variables);
      tf.dispose([x, y]);
      steps++;
    }
  }
  await model.namedParameters()[0].variable.data();
  const stepsPerSecond = steps / ((performance.now() - start) / 1000);
  optimizer.dispose();
  return { model, stepsPerSecond };
}

/** Runs bench/numpy_mlp.py with Debian's python3, if it and numpy are there. */
async function numpyReference(quick: boolean): Promise<NumpyReport | string> {
  try {
    const script = new URL("./numpy_mlp.py", import.meta.url).pathname;
    const out = await new Deno.Command("/usr/bin/python3", { args: [script, ...(quick ? ["--quick"] : [])] })
      .output();
    if (!out.success) {
      return `numpy reference failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").at(-1)}`;
    }
    return JSON.parse(new TextDecoder().decode(out.stdout)) as NumpyReport;
  } catch (error) {
    return `numpy reference skipped: ${String(error)}`;
  }
}

// --- output ------------------------------------------------------------------------------------------------

const fmt = (n: number, digits = 1) => n.toLocaleString("en-US", { maximumFractionDigits: digits });
const pct = (n: number) => `${(n * 100).toFixed(1)}%`;
const range = (s: Spread, digits = 1) => `${fmt(s.min, digits)}–${fmt(s.max, digits)}`;

/** The report as readable Markdown tables (which also read well in a terminal). */
function formatReport(r: BackendReport): string {
  const lines: string[] = [];
  const m = r.machine;
  const load = m.loadAverage?.toFixed(2) ?? "?";
  lines.push(
    `### ${r.backend}`,
    "",
    `${m.cpu}, ${m.cores} cores, ${m.os}, Deno ${m.deno}, TensorFlow.js ${m.tfjs}, ${m.date.slice(0, 16)}Z, ` +
      `load average ${load} at start. Batch ${r.settings.batch}; medians of ${r.settings.runs} ` +
      `runs of ${r.settings.stepsPerRun} steps after ${r.settings.warmupSteps} warm-up steps, min–max in brackets.`,
    "",
    "| training | trainable params | params + Adam bytes | vs full | peak tf.memory | kernels/step | steps/s | step ms | step time vs full |",
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
  );
  const full = r.trainStepsPerSecondSpread.full;
  const row = (name: string, params: number, bytes: number, peak: number, kernels: number, s: Spread, t: number) =>
    lines.push(
      `| ${name} | ${fmt(params, 0)} | ${fmt(bytes, 0)} | ${pct(bytes / r.trainableBytes.full)} | ` +
        `${fmt(peak / 1e6, 2)} MB | ${kernels} | ${fmt(s.median)} (${range(s)}) | ${(1000 / s.median).toFixed(2)} | ` +
        `${t.toFixed(2)}× |`,
    );
  row(
    "full finetuning",
    r.trainableParameters.full,
    r.trainableBytes.full,
    r.trainingPeakBytes.full,
    r.kernelsPerStep.full,
    full,
    1,
  );
  for (const rank of RANKS) {
    const k = String(rank);
    row(
      `LoRA r=${rank}`,
      r.trainableParameters.lora[k],
      r.trainableBytes.lora[k],
      r.trainingPeakBytes.lora[k],
      r.kernelsPerStep.lora[k],
      r.trainStepsPerSecondSpread.lora[k],
      r.stepTimeRatio[k],
    );
  }
  lines.push(
    "",
    "| inference (LoRA r=4) | batch 1 ms | vs base | batch 64 ms | vs base |",
    "|---|--:|--:|--:|--:|",
  );
  for (const name of ["base", "unmerged", "merged"] as const) {
    const s = r.inferenceMsSpread[name];
    const vs = (size: string) => name === "base" ? "" : `${r.inferenceRatio[name][size].toFixed(3)}×`;
    lines.push(
      `| ${name === "base" ? "base model" : `LoRA ${name}`} | ${fmt(s["1"].median, 3)} (${range(s["1"], 3)}) | ` +
        `${vs("1")} | ${fmt(s["64"].median, 3)} (${range(s["64"], 3)}) | ${vs("64")} |`,
    );
  }
  const a = r.accuracy;
  lines.push(
    "",
    `Merging three rank-4 layers: ${fmt(r.mergeMs.median, 3)} ms (${range(r.mergeMs, 3)}); merged and unmerged ` +
      `logits differ by at most ${r.mergedMaxAbsDiff.toExponential(1)}.`,
    "",
    `Test accuracy after ${a.epochs} epoch(s) on ${fmt(a.trainExamples, 0)} training images, ` +
      `${fmt(a.testExamples, 0)} test images: full training ${a.full.toFixed(2)}% ` +
      `(${fmt(a.trainStepsPerSecond.library)} steps/s in \`train()\`), LoRA r=4 on top ${a.lora4.toFixed(2)}%; ` +
      `with tf.train.adam and tfjs's cross-entropy instead ${a.referenceTfAdam.toFixed(2)}% ` +
      `(${fmt(a.trainStepsPerSecond.referenceTfAdam)} steps/s).`,
  );
  if (r.numpyReference) {
    lines.push(
      "",
      `numpy ${r.numpyReference.numpy} reference loop of the same MLP on this machine: full ` +
        `${fmt(r.numpyReference.full)} steps/s, LoRA r=4 ${fmt(r.numpyReference.lora4)} steps/s.`,
    );
  }
  return lines.join("\n");
}

/** The project's speed and memory targets, each with whether it holds. */
function checks(r: BackendReport): string[] {
  const mark = (ok: boolean) => (ok ? "yes" : "NO ");
  return [
    `[${mark(r.trainStepsPerSecond.full >= 400)}] full finetuning ≥ 400 steps/s on wasm: ` +
    `${fmt(r.trainStepsPerSecond.full)} on ${r.backend}`,
    `[${mark(r.loraRank4StepTimeRatio <= 0.7)}] LoRA r=4 step time ≤ 0.7× full: ${
      r.loraRank4StepTimeRatio.toFixed(2)
    }×`,
    `[${mark(Math.max(r.inferenceRatio.merged["1"], r.inferenceRatio.merged["64"]) <= 1.05)}] merged inference ` +
    `within 5% of base: ${r.inferenceRatio.merged["1"].toFixed(3)}× (batch 1), ` +
    `${r.inferenceRatio.merged["64"].toFixed(3)}× (batch 64); unmerged ${
      r.inferenceRatio.unmerged["1"].toFixed(3)
    }×, ` +
    `${r.inferenceRatio.unmerged["64"].toFixed(3)}×`,
    `[${mark(r.trainableBytes.lora["4"] <= 0.05 * r.trainableBytes.full)}] trainable bytes at rank 4 ≤ 5% of full: ` +
    pct(r.trainableBytes.lora["4"] / r.trainableBytes.full),
  ];
}

// --- entry point -------------------------------------------------------------------------------------------

async function runChild(backend: BenchBackend, quick: boolean, batchSizes?: string, gpt = false): Promise<void> {
  try {
    await initBackend(backend, { blas: backend === "wasm+blas", quiet: true });
  } catch (error) {
    console.log(JSON.stringify({ skipped: String(error instanceof Error ? error.message : error) }));
    return;
  }
  if (batchSizes !== undefined) {
    const { measureBatchSweep, parseBatchSizes } = await import("./sweep.ts");
    const sweep = await measureBatchSweep(parseBatchSizes(batchSizes), { quick, log: (l) => console.error(l) });
    return console.log(JSON.stringify(sweep));
  }
  if (gpt) {
    const report = await measureGpt(backend, quick, (line) => console.error(line));
    return console.log(JSON.stringify({ ...report, machine: await machine() }));
  }
  const report = await measureBackend(backend, quick, (line) => console.error(line));
  console.log(JSON.stringify(report));
}

async function runBackend<T = BackendReport>(
  backend: BenchBackend,
  quick: boolean,
  extra: string[] = [],
): Promise<T | string> {
  const args = [
    "run",
    "--allow-read",
    "--allow-env",
    "--allow-write=/tmp", // webgpu: Mesa wants a private XDG_RUNTIME_DIR
    "--allow-run=lscpu",
    "--allow-sys=loadavg",
    "--allow-ffi", // wasm+blas
    new URL(import.meta.url).pathname,
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args: [...args, "--child", `--backend=${backend}`, ...(quick ? ["--quick"] : []), ...extra],
    stdout: "piped",
    stderr: "inherit",
  });
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
  if (!out.success) return `${backend} failed (exit code ${out.code})`;
  const parsed = JSON.parse(text);
  return "skipped" in parsed ? `${backend} skipped: ${parsed.skipped}` : parsed as T;
}

async function main(): Promise<void> {
  if (Deno.args.includes("--peers")) {
    const peers = parsePeersArgs(Deno.args);
    const report = await runPeers(peers);
    if (peers.json) console.log(JSON.stringify(report, null, 2));
    return;
  }
  const options = parseArgs(Deno.args);
  if (options.child) {
    return runChild(options.backends[0], options.quick, options.batchSizes, options.models.includes("gpt"));
  }
  if (options.batchSizes !== undefined) return runSweep(options);
  if (options.models.includes("mlp")) await runMlp(options);
  if (options.models.includes("gpt")) await runGpt(options);
}

/** The MLP's figures on every backend asked for. */
async function runMlp(options: Options): Promise<void> {
  const started = performance.now();
  const reports: BackendReport[] = [];
  const numpy = options.numpy ? await numpyReference(options.quick) : undefined;
  if (typeof numpy === "string") console.error(numpy);
  for (const backend of options.backends) {
    console.error(`— ${backend} —`);
    const result = await runBackend(backend, options.quick);
    if (typeof result === "string") {
      console.error(result);
      continue;
    }
    if (numpy !== undefined && typeof numpy !== "string") result.numpyReference = numpy;
    reports.push(result);
    if (!options.json) console.log(`\n${formatReport(result)}\n`);
  }
  if (reports.length === 0) throw new Error("bench: no backend could be measured.");
  const wasm = reports.find((r) => r.backend === "wasm+blas") ?? reports.find((r) => r.backend === "wasm") ??
    reports[0];
  if (options.json) {
    console.log(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2));
  } else {
    console.log(`Targets (${wasm.backend}):\n${checks(wasm).map((c) => `  ${c}`).join("\n")}`);
  }
  if (options.save) {
    const dir = new URL(".", import.meta.url);
    await Deno.writeTextFile(new URL("results.json", dir), JSON.stringify(reports, null, 2) + "\n");
    await Deno.writeTextFile(new URL("steps-vs-rank.svg", dir), renderStepsVsRank(reports) + "\n");
    console.error("wrote bench/results.json and bench/steps-vs-rank.svg");
  }
  console.error(`bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

/** The GPT's figures (gpt_bench.ts), each backend in its own process. */
async function runGpt(options: Options): Promise<void> {
  const started = performance.now();
  const reports: GptReport[] = [];
  for (const backend of options.backends) {
    console.error(`— ${backend}: GPT —`);
    const result = await runBackend<GptReport>(backend, options.quick, ["--model=gpt"]);
    if (typeof result === "string") {
      console.error(result);
      continue;
    }
    reports.push(result);
    if (!options.json) console.log(`\n${formatGptReport(result)}\n`);
  }
  if (reports.length === 0) throw new Error("bench: no backend could measure the GPT.");
  if (options.json) console.log(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2));
  if (options.save) {
    await Deno.writeTextFile(new URL("gpt-results.json", import.meta.url), JSON.stringify(reports, null, 2) + "\n");
    console.error("wrote bench/gpt-results.json");
  }
  console.error(`GPT bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

/** `--batch-sizes=…`: training steps/s against batch size, each backend in its own process (see sweep.ts). */
async function runSweep(options: Options): Promise<void> {
  const { formatBatchSweep, parseBatchSizes } = await import("./sweep.ts");
  parseBatchSizes(options.batchSizes!); // a bad list fails here, before any process starts
  const reports: import("./sweep.ts").BatchSweepReport[] = [];
  for (const backend of options.backends) {
    console.error(`— ${backend}: batch sizes ${options.batchSizes} —`);
    const result = await runBackend<(typeof reports)[number]>(backend, options.quick, [
      `--batch-sizes=${options.batchSizes}`,
    ]);
    if (typeof result === "string") console.error(result);
    else reports.push(result);
  }
  if (reports.length === 0) throw new Error("bench: no backend could be measured.");
  const json = JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2);
  console.log(options.json ? json : formatBatchSweep(reports));
}

if (import.meta.main) await main();
