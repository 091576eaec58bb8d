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
  /** Token ids to continue, one row per sequence; all rows the same length, at least one token. */
  prompt: readonly (readonly number[])[];
  /** Tokens to add to each row (fewer if every row reaches `stopToken`). */
  maxNewTokens: number;
  /** Logits are divided by it before sampling; 0 picks the most likely token. Default 1. */
  temperature?: number;
  /** Sample only among the `topK` most likely tokens; default: all. */
  topK?: number;
  /** Seed of the sampling, so that the same call gives the same tokens; default 0. */
  seed?: number;
  /** Never sample these ids (padding, say). */
  suppressTokens?: readonly number[];
  /** A row ends once it has produced this id; generation stops when every row has. */
  stopToken?: number;
  /** `stopToken` is not sampled before this many new tokens (Hugging Face's `min_new_tokens`); default 0. */
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
 * import { GPT } from "./model.ts";
 * import { generate } from "./generate.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * const rows = await generate(gpt, { prompt: [[1], [1]], maxNewTokens: 5, seed: 7 });
 * console.log(rows.map((row) => row.length)); // [6, 6]
 * gpt.dispose();
 * ```
 */
export async function generate(model: CausalLM, options: GenerateOptions): Promise<number[][]> {
  const { prompt, maxNewTokens, temperature = 1, topK, stopToken, adapterNames } = options;
  const { vocabSize, blockSize } = model.config;
  const batch = prompt.length;
  if (batch === 0 || prompt.some((row) => row.length === 0 || row.length !== prompt[0].length)) {
    throw new RangeError("generate: prompt must hold at least one row, all rows of the same non-zero length.");
  }
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new RangeError(`generate: maxNewTokens must be a non-negative integer; got ${maxNewTokens}.`);
  }
  if (!(temperature >= 0 && Number.isFinite(temperature))) {
    throw new RangeError(`generate: temperature must be a finite number ≥ 0; got ${temperature}.`);
  }
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 1)) {
    throw new RangeError(`generate: topK must be a positive integer; got ${topK}.`);
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

/** Throws unless `names` holds one known adapter name (or `"__base__"`) per row and nothing is merged. */
function checkRowNames(model: Module, names: readonly string[], rows: number): void {
  if (names.length !== rows) {
    throw new RangeError(`generate: got ${names.length} adapter names for ${rows} rows; expected one per row.`);
  }
  checkAdapterNames(model, names, "generate");
}

/** What {@linkcode sampleWords} does. */
export interface SampleWordsOptions {
  /** Number of words. */
  count: number;
  /** See {@linkcode GenerateOptions.temperature}; default 1. */
  temperature?: number;
  /** See {@linkcode GenerateOptions.topK}. */
  topK?: number;
  /** Seed; default 0. */
  seed?: number;
  /** Characters every word starts with; default none. */
  prefix?: string;
  /** Longest word, in characters; a word not finished by then is returned cut. Default 34. */
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
 * import { GPT } from "./model.ts";
 * import { sampleWords } from "./generate.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * console.log(await sampleWords(gpt, { count: 3, seed: 1, maxLength: 8 })); // three random strings, untrained
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
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`sampleWords: count must be ≥ 1; got ${count}.`);
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
