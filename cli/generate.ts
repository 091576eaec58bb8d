/**
 * `deno task generate`: text from a Hugging Face checkpoint folder, optionally with a PEFT adapter.
 *
 * ```sh
 * deno task generate --model DIR [--adapter ADAPTER_DIR] --prompt "Once upon a time"
 * ```
 *
 * @module
 */
import { initBackend } from "../lib/backend.ts";
import { loadAdapter } from "../lib/peft/files.ts";
import { generate } from "../lib/gpt/generate.ts";
import { loadPretrained } from "../lib/hf/load.ts";
import { numberOption, parseOptions, requiredOption, runCommand } from "./args.ts";

const COMMAND = "generate";

/** The usage text `--help` prints. */
export const GENERATE_USAGE = `Usage: deno task generate --model DIR --prompt TEXT [options]

Continues TEXT with the Hugging Face checkpoint in DIR (GPT-2, Llama or Qwen2), optionally with a PEFT LoRA
adapter, and prints the prompt and its continuation.

  --model DIR           checkpoint folder (config.json, model.safetensors, tokenizer.json)
  --adapter DIR         adapter folder (adapter_config.json, adapter_model.safetensors), as finetune or PEFT wrote it
  --prompt TEXT         the text to continue
  --max-new-tokens N    tokens to add at most (default 64); generation also stops at the end-of-sequence token
  --temperature X       0 picks the most likely token each time (default 0.8)
  --top-k N             sample among the N most likely tokens (default 50)
  --seed N              seed of the sampling (default 0)
  --help                this text`;

const SPEC = {
  model: "string",
  adapter: "string",
  prompt: "string",
  "max-new-tokens": "string",
  temperature: "string",
  "top-k": "string",
  seed: "string",
  help: "boolean",
} as const;

/** What {@linkcode generateText} does, as the command line gives it. */
export interface GenerateTextOptions {
  /** Checkpoint folder. */
  model: string;
  /** Adapter folder, or `null`. */
  adapter: string | null;
  /** Text to continue. */
  prompt: string;
  /** Most tokens added. */
  maxNewTokens: number;
  /** Sampling temperature (0: greedy). */
  temperature: number;
  /** Top-k. */
  topK: number;
  /** Seed. */
  seed: number;
}

/**
 * The options in `args`, checked; `null` for `--help`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseGenerateArgs } from "./generate.ts";
 * assert.equal(parseGenerateArgs(["--model", "m", "--prompt", "hi"])?.maxNewTokens, 64);
 * assert.throws(() => parseGenerateArgs(["--model", "m"]), /--prompt is required/);
 * ```
 */
export function parseGenerateArgs(args: string[]): GenerateTextOptions | null {
  const v = parseOptions(COMMAND, args, SPEC);
  if (v.help) return null;
  return {
    model: requiredOption(COMMAND, "model", v.model),
    adapter: typeof v.adapter === "string" ? v.adapter : null,
    prompt: requiredOption(COMMAND, "prompt", v.prompt),
    maxNewTokens: numberOption(COMMAND, "max-new-tokens", v["max-new-tokens"], 64, { integer: true, min: 1 }),
    temperature: numberOption(COMMAND, "temperature", v.temperature, 0.8, { min: 0 }),
    topK: numberOption(COMMAND, "top-k", v["top-k"], 50, { integer: true, min: 1 }),
    seed: numberOption(COMMAND, "seed", v.seed, 0, { integer: true, min: 0 }),
  };
}

/**
 * Loads the model (and adapter), continues the prompt and returns the text: prompt and continuation, special
 * tokens left out. Stops at the tokenizer's end-of-sequence token or after `maxNewTokens`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { generateText } from "./generate.ts";
 * const text = await generateText({ model: "data/fixtures/hf/tiny-gpt2", adapter: null, prompt: "the quick",
 *   maxNewTokens: 4, temperature: 0, topK: 50, seed: 0 });
 * assert.ok(text.startsWith("the quick"));
 * ```
 */
export async function generateText(options: GenerateTextOptions): Promise<string> {
  await initBackend();
  const { model, tokenizer } = await loadPretrained(options.model);
  try {
    if (options.adapter !== null) await loadAdapter(model, options.adapter);
    const prompt = tokenizer.encode(options.prompt);
    if (prompt.length === 0) throw new Error(`${COMMAND}: the prompt gives no tokens.`);
    const [row] = await generate(model, {
      prompt: [prompt],
      maxNewTokens: options.maxNewTokens,
      temperature: options.temperature,
      topK: options.topK,
      seed: options.seed,
      stopToken: tokenizer.eosTokenId ?? undefined,
    });
    return tokenizer.decode(row, { skipSpecialTokens: true });
  } finally {
    model.dispose();
  }
}

if (import.meta.main) {
  await runCommand(async () => {
    const options = parseGenerateArgs(Deno.args);
    if (options === null) return console.log(GENERATE_USAGE);
    console.log(await generateText(options));
  });
}
