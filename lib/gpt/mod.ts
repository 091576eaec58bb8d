/**
 * A tiny GPT to put LoRA on attention: the model, its operations, training on token windows and sampling.
 * Its data (words, names, the character tokenizer, windows and batches) is in `../words.ts`, re-exported here.
 *
 * - {@link ./model.ts}: `GPT` and its modules (`CausalSelfAttention`, `MLP`, `Block`), with a key/value cache;
 *   {@link ./layers.ts}: `Embedding`, `LayerNorm`, `GELU`.
 * - {@link ./ops.ts}: layer normalisation, GELU, causal attention, the embedding lookup and the sequence loss,
 *   each with a hand-written gradient.
 * - {@link ./train.ts}: `languageModelStep` (the `step` of `train()`) and `evaluateLoss`.
 * - {@link ./generate.ts}: `generate` (seeded, cached, mixed adapters) and `sampleWords`.
 *
 * @example Finetune a GPT's attention with LoRA on q_proj and v_proj
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA, countParameters, initBackend } from "../mod.ts";
 * import { GPT } from "./mod.ts";
 * await initBackend();
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 }, { seed: 1 });
 * addLoRA(gpt, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 });
 * // trainable: q and v of 2 blocks, 64·8 + 8·64 each
 * assert.deepEqual(countParameters(gpt), { total: 109056, trainable: 4096 });
 * gpt.dispose();
 * ```
 *
 * @module
 */
export {
  Block,
  CausalSelfAttention,
  disposeCache,
  GPT,
  type GPTConfig,
  type GPTOptions,
  type KVCache,
  MLP,
} from "./model.ts";
export { Embedding, GELU, LayerNorm } from "./layers.ts";
export {
  cachedAttention,
  causalAttention,
  causalMask,
  channelMatMul,
  embeddingLookup,
  gelu,
  type LayerCache,
  layerNorm,
  sequenceCrossEntropy,
  sumRows,
} from "./ops.ts";
export { evaluateLoss, type LanguageModel, languageModelStep, type LossReport } from "./train.ts";
export { type CausalLM, generate, type GenerateOptions, sampleWords, type SampleWordsOptions } from "./generate.ts";
export {
  CharTokenizer,
  cmudictDir,
  firstNamesDir,
  loadNames,
  loadWords,
  splitWords,
  type TokenBatch,
  TokenLoader,
  type TokenLoaderOptions,
  type Windows,
  wordWindows,
} from "../words.ts";
