/**
 * `deno task finetune`: LoRA (or DoRA) on a Hugging Face checkpoint folder, trained on a text or JSONL file,
 * written as PEFT's adapter files.
 *
 * ```sh
 * deno task finetune --model DIR --data FILE --targets q_proj,v_proj --rank 8 --alpha 16 --steps 200 --out ADAPTER_DIR
 * ```
 *
 * @module
 */
import { initBackend } from "../lib/backend.ts";
import { trainableVariables } from "../lib/module.ts";
import { addLoRA, loraLayers } from "../lib/peft/model.ts";
import { seededRandom, shuffleInPlace } from "../lib/random.ts";
import { adam } from "../lib/train.ts";
import { evaluateLoss, languageModelStep } from "../lib/gpt/train.ts";
import { loadPretrained } from "../lib/hf/load.ts";
import { saveAdapterForModel } from "../lib/hf/adapter.ts";
import { numberOption, parseOptions, requiredOption, runCommand, UsageError } from "./args.ts";
import { type Example, makeBatch, readExamples } from "./data.ts";

const COMMAND = "finetune";

/** The usage text `--help` prints. */
export const FINETUNE_USAGE = `Usage: deno task finetune --model DIR --data FILE --out ADAPTER_DIR [options]

Trains a LoRA adapter on the Hugging Face checkpoint in DIR (GPT-2, Llama or Qwen2; config.json,
model.safetensors and tokenizer.json) and writes PEFT's adapter_model.safetensors and adapter_config.json.

  --model DIR          checkpoint folder, as save_pretrained (or huggingface-cli download) writes it
  --data FILE          a text file, or .jsonl with {"text": ...} or {"prompt": ..., "completion": ...} per line
                       (prompt-completion records count only the completion in the loss)
  --out DIR            where the adapter is written
  --targets LIST       modules to adapt, comma-separated, or all-linear (default q_proj,v_proj; c_attn for GPT-2)
  --rank N             LoRA rank r (default 8)
  --alpha X            PEFT's lora_alpha; the scaling is alpha / rank (default 16)
  --dora               DoRA instead of plain LoRA
  --gradient-checkpointing  recompute each block in the backward pass: far less memory, about a third more time
  --steps N            optimizer steps (default 100)
  --lr X               Adam's learning rate (default 2e-4)
  --batch-size N       examples per step (default 4)
  --seq-len N          longest example, in tokens (default 256, or the model's context if shorter)
  --val-fraction X     share of the examples held out for the validation loss (default 0.1; 0 for none)
  --eval-every N       steps between validation losses (default: a fifth of --steps)
  --log-every N        steps between progress lines (default 10)
  --seed N             seed of LoRA's initial A, the split and the batch order (default 0)
  --base-model NAME    base_model_name_or_path written into adapter_config.json (default: DIR)
  --help               this text`;

const SPEC = {
  model: "string",
  data: "string",
  out: "string",
  targets: "string",
  rank: "string",
  alpha: "string",
  dora: "boolean",
  "gradient-checkpointing": "boolean",
  steps: "string",
  lr: "string",
  "batch-size": "string",
  "seq-len": "string",
  "val-fraction": "string",
  "eval-every": "string",
  "log-every": "string",
  seed: "string",
  "base-model": "string",
  help: "boolean",
} as const;

/** What a finetuning run does, as the command line gives it. */
export interface FinetuneOptions {
  /** Checkpoint folder. */
  model: string;
  /** Training data file. */
  data: string;
  /** Adapter folder to write. */
  out: string;
  /** Module names, or `"all-linear"`; `null` for the architecture's default. */
  targets: string[] | "all-linear" | null;
  /** LoRA rank. */
  rank: number;
  /** PEFT's `lora_alpha`. */
  alpha: number;
  /** DoRA instead of LoRA. */
  dora: boolean;
  /** Recompute each block's activations in the backward pass (see `PretrainedCausalLM.gradientCheckpointing`). */
  gradientCheckpointing?: boolean;
  /** Optimizer steps. */
  steps: number;
  /** Learning rate. */
  lr: number;
  /** Examples per step. */
  batchSize: number;
  /** Longest example, in tokens; `null` for 256 or the model's context if shorter. */
  seqLen: number | null;
  /** Share of examples held out. */
  valFraction: number;
  /** Steps between validation losses. */
  evalEvery: number;
  /** Steps between progress lines. */
  logEvery: number;
  /** Seed. */
  seed: number;
  /** `base_model_name_or_path`, or `null` for the folder. */
  baseModel: string | null;
}

/**
 * The options in `args` (the command line after `finetune`), checked; `null` for `--help`. Throws a
 * `UsageError` naming the option for anything missing or malformed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseFinetuneArgs } from "./finetune.ts";
 * const options = parseFinetuneArgs(["--model", "m", "--data", "d.txt", "--out", "a", "--targets", "q_proj,v_proj"]);
 * assert.deepEqual(options?.targets, ["q_proj", "v_proj"]);
 * assert.equal(options?.rank, 8);
 * assert.throws(() => parseFinetuneArgs(["--model", "m", "--data", "d.txt"]), /--out is required/);
 * ```
 */
export function parseFinetuneArgs(args: string[]): FinetuneOptions | null {
  const v = parseOptions(COMMAND, args, SPEC);
  if (v.help) return null;
  const steps = numberOption(COMMAND, "steps", v.steps, 100, { integer: true, min: 1 });
  const targets = typeof v.targets === "string"
    ? (v.targets.trim().toLowerCase() === "all-linear" ? "all-linear" : v.targets.split(",").map((t) => t.trim()))
    : null;
  if (Array.isArray(targets) && targets.some((t) => t === "")) {
    throw new UsageError(`${COMMAND}: --targets "${v.targets}" has an empty name; expected names like q_proj,v_proj.`);
  }
  return {
    model: requiredOption(COMMAND, "model", v.model),
    data: requiredOption(COMMAND, "data", v.data),
    out: requiredOption(COMMAND, "out", v.out),
    targets,
    rank: numberOption(COMMAND, "rank", v.rank, 8, { integer: true, min: 1 }),
    alpha: numberOption(COMMAND, "alpha", v.alpha, 16, { min: 0, exclusiveMin: true }),
    dora: v.dora === true,
    gradientCheckpointing: v["gradient-checkpointing"] === true,
    steps,
    lr: numberOption(COMMAND, "lr", v.lr, 2e-4, { min: 0, exclusiveMin: true }),
    batchSize: numberOption(COMMAND, "batch-size", v["batch-size"], 4, { integer: true, min: 1 }),
    seqLen: v["seq-len"] === undefined
      ? null
      : numberOption(COMMAND, "seq-len", v["seq-len"], 0, { integer: true, min: 1 }),
    valFraction: numberOption(COMMAND, "val-fraction", v["val-fraction"], 0.1, { min: 0, max: 0.9 }),
    evalEvery: numberOption(COMMAND, "eval-every", v["eval-every"], Math.max(1, Math.round(steps / 5)), {
      integer: true,
      min: 1,
    }),
    logEvery: numberOption(COMMAND, "log-every", v["log-every"], 10, { integer: true, min: 1 }),
    seed: numberOption(COMMAND, "seed", v.seed, 0, { integer: true, min: 0 }),
    baseModel: typeof v["base-model"] === "string" ? v["base-model"] : null,
  };
}

/** What {@linkcode finetune} reports when done. */
export interface FinetuneSummary {
  /** Training loss of each step. */
  losses: number[];
  /** Validation losses, with the step after which each was measured. */
  validation: { step: number; loss: number }[];
  /** Modules that carry the adapter. */
  targets: string[];
  /** Trainable parameters. */
  trainable: number;
  /** Size of `adapter_model.safetensors`, in bytes. */
  adapterBytes: number;
  /** Training examples and held-out examples. */
  examples: { train: number; validation: number };
  /** Input tokens per second over the whole run. */
  tokensPerSecond: number;
}

/** `m:ss` or `h:mm:ss`. */
function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const [h, m, r] = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  return h > 0
    ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`
    : `${m}:${String(r).padStart(2, "0")}`;
}

/**
 * Runs a finetuning: loads the checkpoint, reads and splits the data, adds LoRA (PEFT's scaling, `alpha /
 * rank`) to the target modules, trains with Adam, prints a progress line every `logEvery` steps (step, loss,
 * tokens per second, time left) and the validation loss every `evalEvery`, and writes the adapter. `log`
 * receives each line. Everything the run allocates is freed at the end, on success or error.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { finetune } from "./finetune.ts";
 * await Deno.writeTextFile("data/example-train.txt", "the quick brown fox jumps over the lazy dog. ".repeat(20));
 * const summary = await finetune({
 *   model: "data/fixtures/hf/tiny-llama", data: "data/example-train.txt", out: "data/example-cli-adapter",
 *   targets: ["q_proj", "v_proj"], rank: 4, alpha: 8, dora: false, steps: 2, lr: 1e-3, batchSize: 2, seqLen: 32,
 *   valFraction: 0.2, evalEvery: 2, logEvery: 1, seed: 0, baseModel: null,
 * }, () => {});
 * assert.equal(summary.losses.length, 2);
 * await Deno.remove("data/example-cli-adapter", { recursive: true });
 * await Deno.remove("data/example-train.txt");
 * ```
 */
export async function finetune(
  options: FinetuneOptions,
  log: (line: string) => void = console.log,
): Promise<FinetuneSummary> {
  await initBackend();
  const { model, tokenizer, config } = await loadPretrained(options.model);
  const optimizer = adam(options.lr);
  try {
    const seqLen = options.seqLen ?? Math.min(256, config.blockSize);
    if (seqLen > config.blockSize) {
      throw new UsageError(`${COMMAND}: --seq-len ${seqLen} exceeds the model's context of ${config.blockSize}.`);
    }
    let text: string;
    try {
      text = await Deno.readTextFile(options.data);
    } catch (error) {
      throw new Error(`${COMMAND}: cannot read --data ${options.data} (${(error as Error).message}).`);
    }
    const examples = readExamples(text, options.data, tokenizer, seqLen);
    const tooBig = examples.flatMap((e) => e.ids).find((id) => id >= config.vocabSize);
    if (tooBig !== undefined) {
      throw new Error(`${COMMAND}: the tokenizer gave id ${tooBig}, outside the model's ${config.vocabSize} ids.`);
    }
    const random = seededRandom(options.seed + 1);
    shuffleInPlace(examples, random);
    const held = options.valFraction > 0 && examples.length >= 2
      ? Math.min(examples.length - 1, Math.max(1, Math.round(examples.length * options.valFraction)))
      : 0;
    const validation = examples.slice(0, held), train = examples.slice(held);
    const targets = options.targets ?? (config.architecture === "GPT2LMHeadModel" ? ["c_attn"] : ["q_proj", "v_proj"]);
    addLoRA(model, {
      rank: options.rank,
      alpha: options.alpha,
      targetModules: targets,
      useDora: options.dora,
      scaling: "paper",
      seed: options.seed + 1,
    });
    model.gradientCheckpointing = options.gradientCheckpointing ?? false;
    const variables = trainableVariables(model);
    const trainable = variables.reduce((n, v) => n + v.size, 0);
    const adapted = loraLayers(model).map(([name]) => name);
    log(
      `${config.architecture} from ${options.model}: ${adapted.length} modules adapted ` +
        `(${options.dora ? "DoRA" : "LoRA"} r=${options.rank}, alpha=${options.alpha}), ${trainable} trainable ` +
        `parameters; ${train.length} training and ${validation.length} validation examples.`,
    );
    const pad = tokenizer.eosTokenId ?? 0;
    const validationBatches = () => {
      const batches = [];
      for (let i = 0; i < validation.length; i += options.batchSize) {
        batches.push(makeBatch(validation.slice(i, i + options.batchSize), pad));
      }
      return batches;
    };
    let order: Example[] = [], next = 0;
    const nextBatch = () => {
      const picked: Example[] = [];
      while (picked.length < Math.min(options.batchSize, train.length)) {
        if (next >= order.length) {
          order = [...train];
          shuffleInPlace(order, random);
          next = 0;
        }
        picked.push(order[next++]);
      }
      return makeBatch(picked, pad);
    };
    const losses: number[] = [], validationLosses: { step: number; loss: number }[] = [];
    const started = performance.now();
    let tokens = 0;
    for (let step = 1; step <= options.steps; step++) {
      const batch = nextBatch();
      const loss = languageModelStep(model, optimizer, batch, variables);
      const value = (await loss.data())[0];
      loss.dispose();
      if (!Number.isFinite(value)) {
        throw new Error(`${COMMAND}: the loss became ${value} at step ${step}; try a lower --lr.`);
      }
      losses.push(value);
      tokens += batch.size * batch.time;
      const seconds = (performance.now() - started) / 1000;
      if (step === 1 || step % options.logEvery === 0 || step === options.steps) {
        const left = seconds / step * (options.steps - step);
        log(
          `step ${step}/${options.steps} | loss ${value.toFixed(4)} | ${Math.round(tokens / seconds)} tokens/s | ` +
            `${clock(left)} left`,
        );
      }
      if (validation.length > 0 && (step % options.evalEvery === 0 || step === options.steps)) {
        const { loss: validationLoss, tokens: counted } = await evaluateLoss(model, validationBatches());
        validationLosses.push({ step, loss: validationLoss });
        log(`step ${step}/${options.steps} | validation loss ${validationLoss.toFixed(4)} over ${counted} tokens`);
      }
    }
    const seconds = (performance.now() - started) / 1000;
    const adapterBytes = await saveAdapterForModel(model, options.out, {
      baseModel: options.baseModel ?? options.model,
    });
    log(`wrote ${options.out}/adapter_model.safetensors (${adapterBytes} bytes) and adapter_config.json`);
    return {
      losses,
      validation: validationLosses,
      targets: adapted,
      trainable,
      adapterBytes,
      examples: { train: train.length, validation: validation.length },
      tokensPerSecond: tokens / seconds,
    };
  } finally {
    optimizer.dispose();
    model.dispose();
  }
}

if (import.meta.main) {
  await runCommand(async () => {
    const options = parseFinetuneArgs(Deno.args);
    if (options === null) return console.log(FINETUNE_USAGE);
    await finetune(options);
  });
}
