/**
 * `deno task bench --peers`: the bench's MLP and tiny GPT trained by this library (plain wasm, and wasm with BLAS
 * products) and by PyTorch (`bench/peers/torch_peer.py`), in the same run, in interleaved rounds, with 1 and 2
 * threads. The machine is shared, so absolute speeds move from minute to minute; the ratios of measurements taken
 * a few seconds apart within one round are what this prints per round, and their medians at the end.
 *
 *     deno task bench --peers                                  # Debian's PyTorch under /usr/bin/python3
 *     deno task bench --peers --torch-venv=/path/to/venv       # also the torch installed in that venv
 *     deno task bench --peers --rounds=9 --seconds=0.5 --threads=1 --models=gpt --json
 *
 * `LORA_TORCH_VENV` names the venv as `--torch-venv` does. Each runner is its own long-lived process per thread
 * count (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` and `torch.set_num_threads` for PyTorch;
 * `LORA_BLAS_THREADS` here), warmed up once; a measurement runs training steps for `--seconds` and reports steps/s.
 * Only one process computes at a time. The models (see `torch_peer.py`): the MLP 784-128-256-10 at batch 64 with
 * Adam, full finetuning and LoRA r=4 on its three layers; the GPT (2 layers, width 64, 4 heads, context 16,
 * vocabulary 30) at batch 64 windows of 16 tokens, full finetuning and LoRA r=8 on q_proj and v_proj.
 *
 * @module
 */
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
import { disableBlas, enableBlas } from "../lib/blas.ts";
import { GPT_BENCH_CONFIG } from "./gpt_bench.ts";
import { type Spread, spread } from "./timing.ts";

type Model = "mlp" | "gpt";
type Training = "full" | "lora";
const TOKENS_PER_STEP = 64 * GPT_BENCH_CONFIG.blockSize;

/** What `--peers` accepts. */
export interface PeersOptions {
  rounds: number;
  seconds: number;
  threads: number[];
  models: Model[];
  torchVenv?: string;
  json: boolean;
}

/** Reads `--rounds=`, `--seconds=`, `--threads=`, `--models=`, `--torch-venv=` and `--json`. */
export function parsePeersArgs(args: string[]): PeersOptions {
  const options: PeersOptions = { rounds: 5, seconds: 0.4, threads: [1, 2], models: ["mlp", "gpt"], json: false };
  const positive = (name: string, text: string, integer: boolean) => {
    const value = Number(text);
    if (!(value > 0) || (integer && !Number.isInteger(value))) {
      throw new Error(`bench --peers: ${name} must be a positive ${integer ? "integer" : "number"}; got "${text}".`);
    }
    return value;
  };
  for (const arg of args) {
    const [key, value = ""] = arg.split(/=(.*)/s, 2);
    if (key === "--peers") continue;
    else if (key === "--json") options.json = true;
    else if (key === "--rounds") options.rounds = positive(key, value, true);
    else if (key === "--seconds") options.seconds = positive(key, value, false);
    else if (key === "--threads") options.threads = value.split(",").map((t) => positive(key, t, true));
    else if (key === "--torch-venv") options.torchVenv = value;
    else if (key === "--models") {
      options.models = value.split(",").map((m) => {
        if (m !== "mlp" && m !== "gpt") throw new Error(`bench --peers: unknown model "${m}"; expected mlp or gpt.`);
        return m;
      });
    } else {
      throw new Error(
        `bench --peers: unknown argument "${arg}"; expected --rounds=N, --seconds=S, --threads=1,2, ` +
          "--models=mlp,gpt, --torch-venv=PATH or --json.",
      );
    }
  }
  options.torchVenv ??= readEnv("LORA_TORCH_VENV") || undefined;
  return options;
}

// --- the library's side: a worker process ----------------------------------------------------------------------

/** A training step of `model` with `training`, built as bench.ts and gpt_bench.ts build theirs. */
function libraryStep(model: Model, training: Training): () => void {
  if (model === "mlp") {
    const base = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
    const net = training === "lora" ? addLoRA(base, { rank: 4, alpha: 8, seed: 123 }) : base;
    const optimizer = adam(0.005);
    const variables = trainableVariables(net);
    const batch = {
      features: Float32Array.from({ length: 64 * 784 }, (_, i) => ((i * 7919) % 255) / 255),
      labels: Int32Array.from({ length: 64 }, (_, i) => i % 10),
      size: 64,
    };
    return () => trainStep(net, optimizer, batch, variables).dispose();
  }
  const base = new GPT(GPT_BENCH_CONFIG, { seed: 123 });
  const net = training === "lora"
    ? addLoRA(base, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 })
    : base;
  const optimizer = adam(1e-3);
  const variables = trainableVariables(net);
  let state = 1;
  const next = () => 1 + ((state = (state * 1103515245 + 12345) % 2 ** 31) % 29);
  const batch = {
    inputs: Int32Array.from({ length: TOKENS_PER_STEP }, next),
    targets: Int32Array.from({ length: TOKENS_PER_STEP }, next),
    size: 64,
    time: GPT_BENCH_CONFIG.blockSize,
    tokens: TOKENS_PER_STEP,
  };
  return () => languageModelStep(net, optimizer, batch, variables).dispose();
}

/** Requests a worker answers, one JSON object per line. */
type Request =
  | { op: "info" }
  | { op: "run"; model: Model; training: Training; seconds: number; runner?: "wasm" | "wasm+blas" };

/** The worker loop of this library's process: `--worker --threads=N`. */
export async function runLibraryWorker(threads: number): Promise<void> {
  await initBackend("wasm", { quiet: true });
  const blas = enableBlas({ threads });
  const steps = new Map<string, () => void>();
  for await (const line of lines(Deno.stdin.readable)) {
    const request = JSON.parse(line) as Request;
    let answer: unknown;
    if (request.op === "info") {
      answer = { blas: blas.enabled ? `${blas.library}, ${blas.threads} thread(s)` : blas.reason };
    } else {
      if (request.runner === "wasm") disableBlas("measuring plain wasm");
      else enableBlas({ threads });
      const key = `${request.runner} ${request.model} ${request.training}`;
      if (!steps.has(key)) {
        const step = libraryStep(request.model, request.training);
        for (let i = 0; i < 5; i++) step(); // warm-up
        steps.set(key, step);
      }
      const step = steps.get(key)!;
      const start = performance.now();
      let count = 0, elapsed = 0;
      do {
        step();
        count++;
        elapsed = (performance.now() - start) / 1000;
      } while (elapsed < request.seconds || count < 2);
      answer = { steps: count, seconds: elapsed, rate: count / elapsed };
    }
    await write(Deno.stdout.writable, JSON.stringify(answer) + "\n");
  }
}

// --- the orchestrator ------------------------------------------------------------------------------------------

/** One long-lived worker process, asked one request at a time. */
class Worker {
  private readonly child: Deno.ChildProcess;
  private readonly replies: AsyncIterator<string>;

  constructor(readonly label: string, command: string, args: string[], env: Record<string, string>) {
    this.child = new Deno.Command(command, { args, env, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
    this.replies = lines(this.child.stdout)[Symbol.asyncIterator]();
  }

  async ask<T>(request: Request): Promise<T> {
    await write(this.child.stdin, JSON.stringify(request) + "\n");
    const reply = await this.replies.next();
    if (reply.done) {
      const stderr = new TextDecoder().decode((await this.child.output()).stderr).trim().split("\n").slice(-3);
      throw new Error(`${this.label} stopped: ${stderr.join(" | ")}`);
    }
    return JSON.parse(reply.value) as T;
  }

  async close(): Promise<void> {
    try {
      await this.child.stdin.close();
    } catch {
      // already closed after a failure
    }
    await this.child.status;
  }
}

/** A thing that is timed: a runner (wasm, wasm+blas, a torch) at a thread count. */
interface Runner {
  name: string;
  threads: number;
  worker: Worker;
  request: Partial<Request>;
  /** Rates per model and training, one per round. */
  rates: Record<string, number[]>;
}

/** The ratios printed: this library's runner over a peer, at the same thread count. */
interface Comparison {
  ours: Runner;
  peer: Runner;
}

/** Everything `--peers --json` prints. */
export interface PeersReport {
  date: string;
  cores: number;
  loadAverages: number[];
  settings: PeersOptions;
  /** Steps/s by runner ("wasm+blas, 1 thread", …) and "model training"; tokens/s is 1,024 × steps/s for the GPT. */
  stepsPerSecond: Record<string, Record<string, Spread>>;
  /** Median over rounds of ours/peer steps/s, by "ours ÷ peer" and "model training". */
  ratios: Record<string, Record<string, Spread>>;
  peers: Record<string, string>;
}

const label = (r: Runner) => `${r.name}, ${r.threads} thread${r.threads === 1 ? "" : "s"}`;

/** Runs the whole comparison and prints it; returns the report. */
export async function runPeers(options: PeersOptions): Promise<PeersReport> {
  const env = (threads: number): Record<string, string> => ({
    OMP_NUM_THREADS: String(threads),
    MKL_NUM_THREADS: String(threads),
    OPENBLAS_NUM_THREADS: String(threads),
    LORA_BLAS_THREADS: String(threads),
  });
  const runners: Runner[] = [];
  const peers: Record<string, string> = {};
  const workers: Worker[] = [];
  const self = new URL(import.meta.url).pathname;
  const script = new URL("./peers/torch_peer.py", import.meta.url).pathname;
  const pythons: [string, string][] = [["/usr/bin/python3", "Debian"]];
  if (options.torchVenv !== undefined) pythons.push([`${options.torchVenv}/bin/python`, "venv"]);
  try {
    for (const threads of options.threads) {
      const args = ["run", "--allow-read", "--allow-env", "--allow-ffi", self, "--worker", `--threads=${threads}`];
      const worker = new Worker(`deno (${threads} threads)`, Deno.execPath(), args, env(threads));
      workers.push(worker);
      const info = await worker.ask<{ blas: string }>({ op: "info" });
      peers[`this library, ${threads} thread(s)`] = `BLAS: ${info.blas}`;
      if (threads === 1) runners.push({ name: "wasm", threads, worker, request: { runner: "wasm" }, rates: {} });
      if (!info.blas.includes("thread")) {
        console.error(`wasm+blas skipped: ${info.blas}`);
        continue;
      }
      runners.push({ name: "wasm+blas", threads, worker, request: { runner: "wasm+blas" }, rates: {} });
    }
    for (const [python, where] of pythons) {
      for (const threads of options.threads) {
        const worker = new Worker(`${python} (${threads} threads)`, python, [script, `--threads=${threads}`], {
          ...env(threads),
          PYTHONWARNINGS: "ignore",
        });
        workers.push(worker);
        let info: { torch: string; threads: number };
        try {
          info = await worker.ask({ op: "info" });
        } catch (error) {
          console.error(`PyTorch under ${python} skipped: ${error instanceof Error ? error.message : error}`);
          break;
        }
        const name = `torch ${info.torch.replace(/a0$|\+cpu$/, "")}`;
        peers[`${name}, ${threads} thread(s)`] = `${where}: ${python}, torch ${info.torch}, ${info.threads} thread(s)`;
        runners.push({ name, threads, worker, request: {}, rates: {} });
      }
    }
    const ourRunners = runners.filter((r) => r.name.startsWith("wasm"));
    const peerRunners = runners.filter((r) => r.name.startsWith("torch"));
    if (peerRunners.length === 0) console.error("No PyTorch found: only this library's own figures follow.");
    // Each of ours against each peer at the same thread count; plain wasm (one thread) against the 1-thread peers.
    const comparisons: Comparison[] = ourRunners.flatMap((ours) =>
      peerRunners.filter((peer) => peer.threads === ours.threads).map((peer) => ({ ours, peer }))
    );
    // wasm+blas against plain wasm, which runs only where one thread is asked for (--threads without 1: none)
    const plain = ourRunners.find((r) => r.name === "wasm");
    const blasVsWasm = plain === undefined
      ? []
      : ourRunners.filter((r) => r.name === "wasm+blas").map((ours) => ({ ours, peer: plain }));
    const configs = options.models.flatMap((m) => (["full", "lora"] as const).map((t) => [m, t] as const));
    const loads: number[] = [];
    const started = performance.now();
    console.log(
      `${options.rounds} rounds; each measurement trains for ${options.seconds} s after a warm-up; the runners' ` +
        `order rotates every round. Ratios: this library's steps/s over the peer's, same round, same thread count.`,
    );
    for (let round = 0; round < options.rounds; round++) {
      const load = loadAverage();
      loads.push(load);
      for (const [model, training] of configs) {
        for (let k = 0; k < runners.length; k++) {
          const runner = runners[(k + round) % runners.length];
          const { rate } = await runner.worker.ask<{ rate: number }>(
            { op: "run", model, training, seconds: options.seconds, ...runner.request } as Request,
          );
          (runner.rates[`${model} ${training}`] ??= []).push(rate);
        }
      }
      const cells = [...comparisons, ...blasVsWasm].map(({ ours, peer }) =>
        `${label(ours)} ÷ ${label(peer)}: ` +
        configs.map(([m, t]) =>
          `${m} ${t} ${(ours.rates[`${m} ${t}`][round] / peer.rates[`${m} ${t}`][round]).toFixed(2)}`
        )
          .join(", ")
      );
      console.log(`\nround ${round + 1}, load average ${load.toFixed(2)}:\n  ${cells.join("\n  ")}`);
    }
    const report: PeersReport = {
      date: new Date().toISOString(),
      cores: navigator.hardwareConcurrency,
      loadAverages: loads,
      settings: options,
      stepsPerSecond: Object.fromEntries(runners.map((r) => [
        label(r),
        Object.fromEntries(Object.entries(r.rates).map(([k, v]) => [k, spread(v)])),
      ])),
      ratios: Object.fromEntries([...comparisons, ...blasVsWasm].map(({ ours, peer }) => [
        `${label(ours)} ÷ ${label(peer)}`,
        Object.fromEntries(configs.map(([m, t]) => {
          const key = `${m} ${t}`;
          return [key, spread(ours.rates[key].map((x, i) => x / peer.rates[key][i]))];
        })),
      ])),
      peers,
    };
    console.log(`\n${formatPeers(report, configs.map(([m, t]) => `${m} ${t}`))}`);
    console.error(`peers bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
    return report;
  } finally {
    for (const worker of workers) await worker.close();
  }
}

/** The medians as Markdown tables. */
function formatPeers(r: PeersReport, keys: string[]): string {
  const name = (key: string) => key.replace("mlp", "MLP").replace("gpt", "GPT").replace("lora", "LoRA");
  const lines = [
    `${r.date.slice(0, 16)}Z, ${r.cores} cores, load average ${Math.min(...r.loadAverages).toFixed(2)}–` +
    `${Math.max(...r.loadAverages).toFixed(2)} over ${r.loadAverages.length} rounds. Medians, min–max in brackets.`,
    "",
    `| steps/s (GPT: tokens/s) | ${keys.map(name).join(" | ")} |`,
    `|---|${keys.map(() => "--:").join("|")}|`,
  ];
  for (const [runner, rates] of Object.entries(r.stepsPerSecond)) {
    const cell = (key: string) => {
      const s = rates[key], scale = key.startsWith("gpt") ? TOKENS_PER_STEP : 1, digits = scale === 1 ? 1 : 0;
      const f = (x: number) => (x * scale).toLocaleString("en-US", { maximumFractionDigits: digits });
      return `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
    };
    lines.push(`| ${runner} | ${keys.map(cell).join(" | ")} |`);
  }
  lines.push(
    "",
    `| ratio of steps/s, per round | ${keys.map(name).join(" | ")} |`,
    `|---|${keys.map(() => "--:").join("|")}|`,
  );
  for (const [pair, ratios] of Object.entries(r.ratios)) {
    const cell = (key: string) => {
      const s = ratios[key];
      return `**${s.median.toFixed(2)}×** (${s.min.toFixed(2)}–${s.max.toFixed(2)})`;
    };
    lines.push(`| ${pair} | ${keys.map(cell).join(" | ")} |`);
  }
  lines.push("", ...Object.entries(r.peers).map(([k, v]) => `- ${k}: ${v}`));
  return lines.join("\n");
}

// --- small helpers ---------------------------------------------------------------------------------------------

/** The lines of a byte stream. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let newline;
    while ((newline = rest.indexOf("\n")) >= 0) {
      const line = rest.slice(0, newline).trim();
      rest = rest.slice(newline + 1);
      if (line !== "") yield line;
    }
  }
  if (rest.trim() !== "") yield rest.trim();
}

async function write(stream: WritableStream<Uint8Array>, text: string): Promise<void> {
  const writer = stream.getWriter();
  try {
    await writer.write(new TextEncoder().encode(text));
  } finally {
    writer.releaseLock();
  }
}

function loadAverage(): number {
  try {
    return Deno.loadavg()[0];
  } catch {
    return NaN; // no --allow-sys=loadavg
  }
}

function readEnv(key: string): string | undefined {
  try {
    return Deno.env.get(key);
  } catch {
    return undefined;
  }
}

if (import.meta.main) {
  if (Deno.args.includes("--worker")) {
    const threads = Number(Deno.args.find((a) => a.startsWith("--threads="))?.slice("--threads=".length) ?? 1);
    await runLibraryWorker(threads);
  } else {
    const options = parsePeersArgs(Deno.args);
    const report = await runPeers(options);
    if (options.json) console.log(JSON.stringify(report, null, 2));
  }
}
