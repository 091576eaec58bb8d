/**
 * Sampling text from a {@linkcode GPT}: token by token, with temperature and top-k, seeded so that a run
 * repeats, through a key/value cache, and optionally with a different LoRA adapter for each row of the
 * batch (PEFT's mixed-batch inference).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { seededRandom } from "../random.ts";
import type { Module } from "../module.ts";
import { checkAdapterNames, withAdapterPerRow } from "../peft/_rows.ts";
import { CharTokenizer } from "../words.ts";
import { disposeCache, type GPT, type KVCache } from "./model.ts";

/**
 * What {@linkcode generate} needs of a model: token ids `[batch, time]` in, logits `[batch, time, vocab]` out,
 * and the same with a key/value cache. The {@linkcode GPT} here is one; any causal language model that keeps
 * its cache as a {@linkcode KVCache} can be another.
 */
export interface CausalLM extends Module {
  /** The vocabulary size and the longest context. */
  readonly config: { readonly vocabSize: number; readonly blockSize: number };
  /** Whether dropout (if any) is on; `generate` turns it off while sampling. */
  training: boolean;
  /** Logits for every position of `tokens`. */
  apply(tokens: tf.Tensor): tf.Tensor;
  /** Logits for `tokens`, which follow the positions `cache` holds, and the cache grown by them. */
  applyCached(tokens: tf.Tensor, cache: KVCache | null): { logits: tf.Tensor3D; cache: KVCache };
}

/** What {@linkcode generate} does. */
export interface GenerateOptions {
  /**
   * Token ids to continue, one row per sequence; all rows the same length, at least one token; every id an
   * integer from 0 to `vocabSize − 1`.
   */
  prompt: readonly (readonly number[])[];
  /**
   * Tokens to add to each row (fewer if every row reaches `stopToken`): an integer from 0 to 1,000,000, and
   * rows × (prompt length + maxNewTokens) at most 10,000,000 (see {@linkcode GENERATE_LIMITS}).
   */
  maxNewTokens: number;
  /** Logits are divided by it before sampling; 0 picks the most likely token. Default 1. */
  temperature?: number;
  /** Sample only among the `topK` most likely tokens (a positive integer; above `vocabSize`, all); default: all. */
  topK?: number;
  /** Seed of the sampling, so that the same call gives the same tokens; default 0. */
  seed?: number;
  /** Never sample these ids (padding, say). */
  suppressTokens?: readonly number[];
  /** A row ends once it has produced this id; generation stops when every row has. */
  stopToken?: number;
  /**
   * `stopToken` is not sampled before this many new tokens (Hugging Face's `min_new_tokens`); an integer from
   * 0 to `maxNewTokens`, default 0.
   */
  minNewTokens?: number;
  /**
   * One adapter name per row (or `"__base__"` for the base model alone): each row is computed with its own
   * LoRA adapter in one batch, as `applyMixedBatch` does. Default: the model's active adapter for every row.
   */
  adapterNames?: readonly string[];
  /**
   * Reuse the keys and values of earlier positions (incremental decoding) while the context fits in
   * `blockSize`; default `true`. Beyond `blockSize` every step recomputes the last `blockSize` tokens.
   */
  useCache?: boolean;
}

/**
 * Continues each row of `options.prompt` by sampling one token at a time from `model`: the prompt plus the
 * new tokens of each row (a row that reached `stopToken` ends with it). The logits of a step come from the
 * key/value cache (`model.applyCached`) or, with `useCache: false` or once the context outgrows the model's
 * `blockSize`, from `model.apply` on the last `blockSize` tokens. Sampling happens in JavaScript from one
 * seeded generator, row after row, so a call repeats exactly on the same backend. Dropout is off.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GPT } from "./model.ts";
 * import { generate } from "./generate.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * const rows = await generate(gpt, { prompt: [[1], [1]], maxNewTokens: 5, seed: 7 });
 * assert.deepEqual(rows.map((row) => row.length), [6, 6]); // the prompt and five new tokens
 * gpt.dispose();
 * ```
 */
export async function generate(model: CausalLM, options: GenerateOptions): Promise<number[][]> {
  const { prompt, maxNewTokens, temperature = 1, topK, stopToken, adapterNames } = options;
  const { vocabSize, blockSize } = model.config;
  checkPrompt(prompt, vocabSize);
  const batch = prompt.length;
  checkCount("maxNewTokens", maxNewTokens, 0, GENERATE_LIMITS.maxNewTokens);
  const total = batch * (prompt[0].length + maxNewTokens);
  if (total > GENERATE_LIMITS.ids) {
    throw new RangeError(
      `generate: ${batch} rows × (${prompt[0].length} prompt + ${maxNewTokens} new tokens) = ${total} ids, more than ` +
        `the ${GENERATE_LIMITS.ids} one call may produce; generate in smaller batches or fewer tokens.`,
    );
  }
  if (options.minNewTokens !== undefined) checkCount("minNewTokens", options.minNewTokens, 0, maxNewTokens);
  if (typeof temperature !== "number" || !(temperature >= 0 && Number.isFinite(temperature))) {
    throw new RangeError(`generate: temperature must be a finite number ≥ 0; got ${show(temperature)}.`);
  }
  if (topK !== undefined) checkCount("topK", topK, 1, Number.MAX_SAFE_INTEGER);
  if (options.seed !== undefined && !Number.isFinite(options.seed)) {
    throw new RangeError(`generate: seed must be a finite number; got ${show(options.seed)}.`);
  }
  if (options.suppressTokens !== undefined) {
    if (!Array.isArray(options.suppressTokens)) {
      throw new TypeError(
        `generate: suppressTokens must be an array of token ids; got ${show(options.suppressTokens)}.`,
      );
    }
    options.suppressTokens.forEach((id, i) => checkId(id, `suppressTokens[${i}]`, vocabSize));
  }
  if (stopToken !== undefined) checkId(stopToken, "stopToken", vocabSize);
  if (options.useCache !== undefined && typeof options.useCache !== "boolean") {
    throw new TypeError(`generate: useCache must be true or false; got ${show(options.useCache)}.`);
  }
  if (adapterNames !== undefined) checkRowNames(model, adapterNames, batch);
  const suppressed = new Set(options.suppressTokens ?? []);
  const early = new Set([...suppressed, ...(stopToken === undefined ? [] : [stopToken])]);
  const random = seededRandom(options.seed ?? 0);
  const rows = prompt.map((row) => [...row]);
  const done = rows.map(() => false);
  const training = model.training;
  model.training = false;
  let cache: KVCache | null = null;
  // With adapterNames, each step runs with row r's adapter on every LoRA layer, as in applyMixedBatch.
  const perRow = <R>(fn: () => R): R => adapterNames === undefined ? fn() : withAdapterPerRow(model, adapterNames, fn);
  try {
    for (let step = 0; step < maxNewTokens && !done.every(Boolean); step++) {
      const length = rows[0].length;
      const next = perRow(() =>
        tf.tidy(() => {
          if ((options.useCache ?? true) && length <= blockSize) {
            const fresh = cache === null || cache.length !== length - 1;
            const tokens = tf.tensor2d(rows.map((row) => fresh ? row : row.slice(-1)), undefined, "int32");
            const out = model.applyCached(tokens, fresh ? null : cache);
            return { logits: lastPosition(out.logits), cache: out.cache } as unknown as tf.TensorContainer;
          }
          const window = tf.tensor2d(rows.map((row) => row.slice(-blockSize)), undefined, "int32");
          return { logits: lastPosition(model.apply(window)), cache: null } as unknown as tf.TensorContainer;
        })
      ) as unknown as { logits: tf.Tensor2D; cache: KVCache | null };
      disposeCache(cache);
      cache = next.cache;
      const logits = await next.logits.data() as Float32Array;
      next.logits.dispose();
      rows.forEach((row, r) => {
        if (done[r]) return row.push(stopToken!); // keeps the batch rectangular; cut off below
        const token = sample(
          logits.subarray(r * vocabSize, (r + 1) * vocabSize),
          temperature,
          topK,
          step < (options.minNewTokens ?? 0) ? early : suppressed,
          random,
        );
        row.push(token);
        if (token === stopToken) done[r] = true;
      });
    }
  } finally {
    disposeCache(cache);
    model.training = training;
  }
  return rows.map((row) => {
    const end = stopToken === undefined ? -1 : row.indexOf(stopToken, prompt[0].length);
    return end < 0 ? row : row.slice(0, end + 1);
  });
}

/** The logits of the last position, `[batch, vocab]`. */
function lastPosition(logits: tf.Tensor): tf.Tensor2D {
  const [batch, time, vocab] = logits.shape as number[];
  return tf.reshape(tf.slice(logits, [0, time - 1, 0], [batch, 1, vocab]), [batch, vocab]);
}

/** One token drawn from `logits` / temperature among the `topK` largest and not suppressed (argmax at 0). */
function sample(
  logits: Float32Array,
  temperature: number,
  topK: number | undefined,
  suppressed: Set<number>,
  random: () => number,
): number {
  const allowed = Array.from(logits.keys()).filter((i) => !suppressed.has(i));
  if (allowed.length === 0) throw new RangeError("generate: suppressTokens leaves no token to sample.");
  allowed.sort((a, b) => logits[b] - logits[a] || a - b);
  if (temperature === 0) return allowed[0];
  const kept = allowed.slice(0, topK ?? allowed.length);
  const weights = kept.map((i) => Math.exp((logits[i] - logits[kept[0]]) / temperature));
  let r = random() * weights.reduce((a, b) => a + b, 0);
  for (let k = 0; k < kept.length; k++) if ((r -= weights[k]) < 0) return kept[k];
  return kept[kept.length - 1];
}

/**
 * The largest values {@linkcode generate} accepts: at most `maxNewTokens` (1,000,000) new tokens per row, and at
 * most `ids` (10,000,000) ids in the rows it returns, `rows × (prompt length + maxNewTokens)`: about 80 MB of
 * JavaScript numbers, and one forward pass of the model per new token, so a call always ends. `minNewTokens`
 * may not exceed `maxNewTokens`; token ids (prompt, `suppressTokens`, `stopToken`) are integers from 0 to the
 * model's `vocabSize − 1`, checked as given, before any conversion to int32 (which would wrap `2³² + 3` to 3).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GPT } from "./model.ts";
 * import { generate, GENERATE_LIMITS } from "./generate.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * await assert.rejects(generate(gpt, { prompt: [[1]], maxNewTokens: GENERATE_LIMITS.maxNewTokens + 1 }), /at most 1000000/);
 * await assert.rejects(generate(gpt, { prompt: [[1, 2 ** 32 + 3]], maxNewTokens: 1 }), /token 4294967299 at prompt\[0\]\[1\]/);
 * gpt.dispose();
 * ```
 */
export const GENERATE_LIMITS: { readonly maxNewTokens: number; readonly ids: number } = Object.freeze({
  maxNewTokens: 1_000_000,
  ids: 10_000_000,
});

/** Throws unless `prompt` is a non-empty array of equally long, non-empty rows of ids in the vocabulary. */
function checkPrompt(prompt: unknown, vocabSize: number): asserts prompt is readonly (readonly number[])[] {
  if (!Array.isArray(prompt) || prompt.length === 0 || !prompt.every((row) => Array.isArray(row))) {
    throw new RangeError(
      `generate: prompt must be an array of rows of token ids, at least one row; got ${show(prompt)}.`,
    );
  }
  const length = prompt[0].length;
  const uneven = prompt.findIndex((row) => row.length === 0 || row.length !== length);
  if (uneven >= 0) {
    throw new RangeError(
      `generate: prompt must hold rows of the same non-zero length; row 0 has ${length} ids, ` +
        `row ${uneven} has ${prompt[uneven].length}.`,
    );
  }
  if (prompt.length * length > GENERATE_LIMITS.ids) {
    throw new RangeError(`generate: the prompt has ${prompt.length * length} ids, more than ${GENERATE_LIMITS.ids}.`);
  }
  for (let r = 0; r < prompt.length; r++) {
    const row = prompt[r];
    for (let p = 0; p < length; p++) checkId(row[p], `prompt[${r}][${p}]`, vocabSize);
  }
}

/** Throws unless `id` is an integer from 0 to `vocabSize − 1`, as given (no conversion first). */
function checkId(id: unknown, what: string, vocabSize: number): void {
  if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
    throw new RangeError(
      `generate: token ${show(id)} at ${what} is not a token id of this model; ids must be integers from 0 to ` +
        `${vocabSize - 1} (its vocabSize is ${vocabSize}).`,
    );
  }
}

/** Throws unless `value` is an integer from `min` to `max`. */
function checkCount(what: string, value: unknown, min: number, max: number): void {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`generate: ${what} must be an integer from ${min} to at most ${max}; got ${show(value)}.`);
  }
}

/** A value as an error message shows it: numbers as JavaScript writes them, the rest as JSON or its type. */
function show(value: unknown): string {
  if (typeof value === "number" || typeof value === "bigint") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (value === undefined) return "undefined";
  try {
    const json = JSON.stringify(value);
    return json === undefined ? typeof value : json.length > 60 ? `${json.slice(0, 57)}...` : json;
  } catch {
    return typeof value;
  }
}

/** Throws unless `names` holds one known adapter name (or `"__base__"`) per row and nothing is merged. */
function checkRowNames(model: Module, names: readonly string[], rows: number): void {
  if (!Array.isArray(names) || !names.every((name) => typeof name === "string")) {
    throw new TypeError(`generate: adapterNames must be an array of adapter names; got ${show(names)}.`);
  }
  if (names.length !== rows) {
    throw new RangeError(`generate: got ${names.length} adapter names for ${rows} rows; expected one per row.`);
  }
  checkAdapterNames(model, names, "generate");
}

/** The most words one {@linkcode sampleWords} call samples. */
const MAX_SAMPLE_WORDS = 100_000;
/** The longest word {@linkcode sampleWords} samples, in characters. */
const MAX_WORD_LENGTH = 1000;

/** What {@linkcode sampleWords} does. */
export interface SampleWordsOptions {
  /** Number of words, 1 … 100,000. */
  count: number;
  /** See {@linkcode GenerateOptions.temperature}; default 1. */
  temperature?: number;
  /** See {@linkcode GenerateOptions.topK}. */
  topK?: number;
  /** Seed; default 0. */
  seed?: number;
  /** Characters every word starts with; default none. */
  prefix?: string;
  /** Longest word, in characters (1 … 1000); a word not finished by then is returned cut. Default 34. */
  maxLength?: number;
  /** One adapter per word (or `"__base__"`); see {@linkcode GenerateOptions.adapterNames}. */
  adapterNames?: readonly string[];
  /** See {@linkcode GenerateOptions.useCache}; default `true`. */
  useCache?: boolean;
}

/**
 * `count` words sampled from a model trained on words framed by boundary tokens (see `CharTokenizer`): each
 * starts from a boundary (and `prefix`) and ends at the next boundary, which is not part of the word. Padding
 * is never sampled, nor an empty word.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GPT } from "./model.ts";
 * import { sampleWords } from "./generate.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * const words = await sampleWords(gpt, { count: 3, seed: 1, maxLength: 8 }); // random strings: untrained
 * assert.equal(words.length, 3);
 * assert.ok(words.every((word) => typeof word === "string" && word.length <= 8));
 * gpt.dispose();
 * ```
 */
export async function sampleWords(model: GPT, options: SampleWordsOptions): Promise<string[]> {
  const tokenizer = new CharTokenizer();
  if (model.config.vocabSize !== tokenizer.vocabSize) {
    throw new RangeError(
      `sampleWords: the model has ${model.config.vocabSize} tokens; the character tokenizer has ${tokenizer.vocabSize}.`,
    );
  }
  const { count, prefix = "", maxLength = 34 } = options;
  if (typeof count !== "number" || !Number.isInteger(count) || count < 1 || count > MAX_SAMPLE_WORDS) {
    throw new RangeError(`sampleWords: count must be an integer from 1 to ${MAX_SAMPLE_WORDS}; got ${show(count)}.`);
  }
  if (typeof maxLength !== "number" || !Number.isInteger(maxLength) || maxLength < 1 || maxLength > MAX_WORD_LENGTH) {
    throw new RangeError(
      `sampleWords: maxLength must be an integer from 1 to ${MAX_WORD_LENGTH}; got ${show(maxLength)}.`,
    );
  }
  if (typeof prefix !== "string") throw new TypeError(`sampleWords: prefix must be a string; got ${show(prefix)}.`);
  const start = [tokenizer.boundary, ...tokenizer.encode(prefix, "sampleWords prefix")];
  const rows = await generate(model, {
    prompt: Array.from({ length: count }, () => start),
    maxNewTokens: Math.max(0, maxLength - prefix.length + 1),
    temperature: options.temperature,
    topK: options.topK,
    seed: options.seed,
    suppressTokens: [tokenizer.pad],
    stopToken: tokenizer.boundary,
    minNewTokens: prefix === "" ? 1 : 0, // a word has at least one character
    adapterNames: options.adapterNames,
    useCache: options.useCache,
  });
  return rows.map((row) =>
    tokenizer.decode(row.slice(1).filter((id) => id !== tokenizer.boundary)).slice(0, maxLength)
  );
}
