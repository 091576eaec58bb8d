/**
 * Hugging Face checkpoints: GPT-2, Llama and Qwen2 opened from a `save_pretrained` folder, with their
 * tokenizers, ready for LoRA by PEFT's module names.
 *
 * - {@link ./load.ts}: `loadPretrained` (config, weights, tokenizer), `readCheckpoint`, `loadWeights`;
 * - {@link ./config.ts}: `parseConfig`, the `config.json` fields read;
 * - {@link ./models.ts}: `GPT2LMHeadModel`, `LlamaForCausalLM`, `Qwen2ForCausalLM` and their blocks;
 * - {@link ./layers.ts}: `RMSNorm`, `RotaryEmbedding`, `GroupedQueryAttention`, `SwiGLUMLP`, `NewGELU`,
 *   `TokenEmbedding`, `TiedLMHead`, `HFLinear`; {@link ./ops.ts}: their operations, with hand-written gradients;
 * - {@link ./tokenizer.ts}: `HFTokenizer`;
 * - {@link ./adapter.ts}: `saveAdapterForModel`, PEFT's adapter files with the base model's name.
 *
 * @example LoRA on a Llama checkpoint's q_proj and v_proj, as PEFT would put it
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA, findTargets } from "../peft/mod.ts";
 * import { loadPretrained } from "./mod.ts";
 * const { model } = await loadPretrained("data/fixtures/hf/tiny-llama");
 * assert.deepEqual(findTargets(model, { targetModules: ["q_proj", "v_proj"] }).slice(0, 2), [
 *   "model.layers.0.self_attn.q_proj",
 *   "model.layers.0.self_attn.v_proj",
 * ]);
 * addLoRA(model, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"] });
 * model.dispose();
 * ```
 *
 * @module
 */
export { type Architecture, ARCHITECTURES, GPT2_ACTIVATIONS, parseConfig, type PretrainedConfig } from "./config.ts";
export {
  type CheckpointTensor,
  loadPretrained,
  loadWeights,
  type Pretrained,
  readCheckpoint,
  readJson,
  WEIGHTS_FILE,
  WEIGHTS_INDEX_FILE,
} from "./load.ts";
export {
  buildModel,
  disposeCache,
  GPT2Attention,
  GPT2Block,
  GPT2LMHeadModel,
  GPT2MLP,
  GPT2Model,
  type KVCache,
  LlamaDecoderLayer,
  LlamaForCausalLM,
  LlamaModel,
  type ModelOptions,
  PretrainedCausalLM,
  Qwen2ForCausalLM,
} from "./models.ts";
export {
  activation,
  type AttentionShape,
  GroupedQueryAttention,
  HFLinear,
  NewGELU,
  newLayerNorm,
  type Positions,
  RMSNorm,
  RotaryEmbedding,
  SwiGLUMLP,
  TiedLMHead,
  TokenEmbedding,
} from "./layers.ts";
export {
  applyRotary,
  frozenLinear,
  gatherFrozen,
  geluTanh,
  projectTied,
  repeatHeads,
  rmsNorm,
  rotaryTables,
  siluGate,
} from "./ops.ts";
export { saveAdapterForModel, type SaveAdapterOptions } from "./adapter.ts";
export { type DecodeOptions, type EncodeOptions, HFTokenizer } from "./tokenizer.ts";
