/**
 * Hugging Face's `config.json`, read into the few numbers the models here need. Every field that changes the
 * computation is read; a setting the models here do not implement (another architecture, a rope scaling
 * type, sliding-window attention, …) is an error that names it, never a silent approximation.
 *
 * The field names and defaults are those of transformers 5.17's `GPT2Config`, `LlamaConfig` and
 * `Qwen2Config`.
 *
 * @module
 */

/** The model classes {@linkcode parseConfig} knows, by the name `config.json` lists under `architectures`. */
export const ARCHITECTURES = ["GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM"] as const;

/** One of {@linkcode ARCHITECTURES}. */
export type Architecture = (typeof ARCHITECTURES)[number];

/** `model_type` → architecture, for a config without an `architectures` list. */
const BY_MODEL_TYPE: Record<string, Architecture> = {
  gpt2: "GPT2LMHeadModel",
  llama: "LlamaForCausalLM",
  qwen2: "Qwen2ForCausalLM",
};

/** The activations GPT-2's `activation_function` may name here (transformers' `ACT2FN` keys). */
export const GPT2_ACTIVATIONS = ["gelu_new", "gelu_pytorch_tanh", "gelu", "relu"] as const;

/** A model's shape and settings, in this library's names, with the `config.json` it came from. */
export interface PretrainedConfig {
  /** Which model class to build. */
  architecture: Architecture;
  /** Number of token ids (`vocab_size`). */
  vocabSize: number;
  /** Longest context, in positions (`n_positions` or `max_position_embeddings`). */
  blockSize: number;
  /** Width of the residual stream (`n_embd` or `hidden_size`). */
  hiddenSize: number;
  /** Number of transformer blocks (`n_layer` or `num_hidden_layers`). */
  numLayers: number;
  /** Query heads (`n_head` or `num_attention_heads`). */
  numHeads: number;
  /** Key/value heads (`num_key_value_heads`); equal to `numHeads` without grouped-query attention. */
  numKeyValueHeads: number;
  /** Values per head (`head_dim`, by default `hiddenSize / numHeads`). */
  headDim: number;
  /** Width inside the perceptron (`n_inner`, default `4 · n_embd`, or `intermediate_size`). */
  intermediateSize: number;
  /** ε of the normalisation layers (`layer_norm_epsilon` or `rms_norm_eps`). */
  normEpsilon: number;
  /** The perceptron's activation (`activation_function` or `hidden_act`). */
  activation: string;
  /** Whether q, k and v have biases (always for GPT-2 and Qwen2; `attention_bias` for Llama). */
  attentionBias: boolean;
  /** Whether the attention's output projection has a bias (GPT-2: yes; Llama: `attention_bias`; Qwen2: no). */
  outputBias: boolean;
  /** Whether the perceptron's layers have biases (GPT-2: yes; Llama: `mlp_bias`; Qwen2: no). */
  mlpBias: boolean;
  /** Whether `lm_head` is the token embedding itself (`tie_word_embeddings`). */
  tieWordEmbeddings: boolean;
  /** Rotary embeddings' base θ (`rope_parameters.rope_theta`, or the older `rope_theta`); absent for GPT-2. */
  ropeTheta?: number;
  /** `bos_token_id`, when the config names one. */
  bosTokenId: number | null;
  /** `eos_token_id` (one id or several), when the config names it. */
  eosTokenId: number | number[] | null;
  /** `_name_or_path` when the config records it (PEFT's `base_model_name_or_path`), else `null`. */
  nameOrPath: string | null;
  /** The parsed `config.json`, as it was. */
  raw: Record<string, unknown>;
}

type Json = Record<string, unknown>;

/**
 * Reads a `config.json` (its parsed object) into a {@linkcode PretrainedConfig}. `where` names the file in
 * error messages. Throws for an architecture other than {@linkcode ARCHITECTURES}, a missing or malformed
 * size, and any setting the models here do not implement: rope scaling types other than `"default"`
 * (`linear`, `dynamic`, `yarn`, `llama3`, …), sliding-window or non-full attention layers, activations other
 * than SiLU for Llama and Qwen2 or than {@linkcode GPT2_ACTIVATIONS} for GPT-2, GPT-2's
 * `scale_attn_by_inverse_layer_idx`, `scale_attn_weights: false` and cross-attention.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig({
 *   architectures: ["LlamaForCausalLM"], vocab_size: 400, hidden_size: 64, num_hidden_layers: 2,
 *   num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128, max_position_embeddings: 64,
 *   rope_parameters: { rope_type: "default", rope_theta: 10000 },
 * });
 * assert.equal(config.headDim, 16);
 * assert.equal(config.numKeyValueHeads, 2);
 * assert.throws(
 *   () => parseConfig({ ...config.raw, rope_parameters: { rope_type: "yarn", rope_theta: 1e4, factor: 4 } }),
 *   /rope_type "yarn"/,
 * );
 * ```
 */
export function parseConfig(json: unknown, where = "config.json"): PretrainedConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new SyntaxError(`${where} must hold a JSON object; got ${JSON.stringify(json)?.slice(0, 80)}.`);
  }
  const c = json as Json;
  const architecture = readArchitecture(c, where);
  const common = {
    architecture,
    bosTokenId: optionalId(c, "bos_token_id", where),
    eosTokenId: readEos(c, where),
    nameOrPath: typeof c._name_or_path === "string" && c._name_or_path !== "" ? c._name_or_path : null,
    raw: c,
  };
  if (architecture === "GPT2LMHeadModel") return { ...common, ...gpt2Fields(c, where) };
  return { ...common, ...llamaFields(c, where, architecture) };
}

function readArchitecture(c: Json, where: string): Architecture {
  const listed = c.architectures;
  if (listed !== undefined && listed !== null) {
    if (!Array.isArray(listed) || listed.length !== 1 || typeof listed[0] !== "string") {
      throw new Error(`${where} has architectures ${JSON.stringify(listed)}; expected one model class name.`);
    }
    const name = listed[0];
    if (!(ARCHITECTURES as readonly string[]).includes(name)) {
      throw new Error(`${where}: architecture "${name}" is not supported; supported: ${ARCHITECTURES.join(", ")}.`);
    }
    return name as Architecture;
  }
  const type = c.model_type;
  if (typeof type === "string" && type in BY_MODEL_TYPE) return BY_MODEL_TYPE[type];
  throw new Error(
    `${where} names no architecture (architectures) and model_type ${JSON.stringify(type)} is not one of ` +
      `${Object.keys(BY_MODEL_TYPE).join(", ")}.`,
  );
}

function gpt2Fields(c: Json, where: string) {
  const hiddenSize = size(c, "n_embd", where, 768);
  const numHeads = size(c, "n_head", where, 12);
  if (hiddenSize % numHeads !== 0) {
    throw new RangeError(`${where}: n_embd ${hiddenSize} is not divisible by n_head ${numHeads}.`);
  }
  const activation = c.activation_function ?? "gelu_new";
  if (!(GPT2_ACTIVATIONS as readonly unknown[]).includes(activation)) {
    throw new Error(
      `${where}: activation_function ${JSON.stringify(activation)} is not supported; supported: ` +
        `${GPT2_ACTIVATIONS.join(", ")}.`,
    );
  }
  refuse(c, where, "scale_attn_by_inverse_layer_idx", true, "scaling attention by 1/(layer + 1)");
  refuse(c, where, "scale_attn_weights", false, "attention without the 1/√head_dim scale");
  refuse(c, where, "add_cross_attention", true, "cross-attention");
  return {
    vocabSize: size(c, "vocab_size", where, 50257),
    blockSize: size(c, "n_positions", where, 1024),
    hiddenSize,
    numLayers: size(c, "n_layer", where, 12),
    numHeads,
    numKeyValueHeads: numHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: c.n_inner === null || c.n_inner === undefined ? 4 * hiddenSize : size(c, "n_inner", where),
    normEpsilon: positive(c, "layer_norm_epsilon", where, 1e-5),
    activation: activation as string,
    attentionBias: true,
    outputBias: true,
    mlpBias: true,
    tieWordEmbeddings: flag(c, "tie_word_embeddings", where, true),
  };
}

function llamaFields(c: Json, where: string, architecture: Architecture) {
  const qwen = architecture === "Qwen2ForCausalLM";
  const hiddenSize = size(c, "hidden_size", where);
  const numHeads = size(c, "num_attention_heads", where);
  const numKeyValueHeads = c.num_key_value_heads === null || c.num_key_value_heads === undefined
    ? numHeads
    : size(c, "num_key_value_heads", where);
  if (numHeads % numKeyValueHeads !== 0) {
    throw new RangeError(
      `${where}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKeyValueHeads}.`,
    );
  }
  const headDim = c.head_dim === null || c.head_dim === undefined ? hiddenSize / numHeads : size(c, "head_dim", where);
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new RangeError(`${where}: head_dim ${headDim} must be an even integer (hidden_size / num_attention_heads).`);
  }
  const activation = c.hidden_act ?? "silu";
  if (activation !== "silu") {
    throw new Error(`${where}: hidden_act ${JSON.stringify(activation)} is not supported; supported: silu.`);
  }
  if (qwen) {
    refuse(c, where, "use_sliding_window", true, "sliding-window attention");
    const types = c.layer_types;
    if (Array.isArray(types) && types.some((t) => t !== "full_attention")) {
      const other = types.find((t) => t !== "full_attention");
      throw new Error(
        `${where}: layer_types holds ${JSON.stringify(other)}; only "full_attention" layers are supported.`,
      );
    }
  }
  const attentionBias = qwen ? true : flag(c, "attention_bias", where, false);
  return {
    vocabSize: size(c, "vocab_size", where),
    blockSize: size(c, "max_position_embeddings", where),
    hiddenSize,
    numLayers: size(c, "num_hidden_layers", where),
    numHeads,
    numKeyValueHeads,
    headDim,
    intermediateSize: size(c, "intermediate_size", where),
    normEpsilon: positive(c, "rms_norm_eps", where, 1e-6),
    activation: "silu",
    attentionBias,
    outputBias: qwen ? false : attentionBias,
    mlpBias: qwen ? false : flag(c, "mlp_bias", where, false),
    tieWordEmbeddings: flag(c, "tie_word_embeddings", where, false),
    ropeTheta: readRope(c, where),
  };
}

/**
 * θ of the rotary embeddings: transformers 5 writes `rope_parameters: {rope_type, rope_theta}`; older
 * configs write `rope_theta` beside `rope_scaling` (null, or `{type | rope_type, factor, …}`). Only the
 * unscaled `"default"` type is implemented.
 */
function readRope(c: Json, where: string): number {
  const params = c.rope_parameters ?? c.rope_scaling;
  const field = c.rope_parameters !== undefined && c.rope_parameters !== null ? "rope_parameters" : "rope_scaling";
  let theta: unknown = c.rope_theta;
  if (params !== undefined && params !== null) {
    if (typeof params !== "object" || Array.isArray(params)) {
      throw new Error(`${where} has ${field} ${JSON.stringify(params)}; expected an object.`);
    }
    const p = params as Json;
    const type = p.rope_type ?? p.type ?? "default";
    if (type !== "default") {
      throw new Error(
        `${where}: ${field} has rope_type ${JSON.stringify(type)}, which is not supported; only "default" ` +
          "(unscaled rotary embeddings) is.",
      );
    }
    if (typeof p.partial_rotary_factor === "number" && p.partial_rotary_factor !== 1) {
      throw new Error(`${where}: ${field} has partial_rotary_factor ${p.partial_rotary_factor}; only 1 is supported.`);
    }
    theta = p.rope_theta ?? theta;
  }
  theta ??= 10000;
  if (typeof theta !== "number" || !(theta > 0) || !Number.isFinite(theta)) {
    throw new RangeError(`${where}: rope_theta ${JSON.stringify(theta)} must be a positive number.`);
  }
  return theta;
}

function size(c: Json, key: string, where: string, fallback?: number): number {
  const value = c[key] ?? fallback;
  if (!Number.isInteger(value) || (value as number) <= 0) {
    throw new RangeError(`${where}: ${key} is ${JSON.stringify(c[key])}; expected a positive integer.`);
  }
  return value as number;
}

function positive(c: Json, key: string, where: string, fallback: number): number {
  const value = c[key] ?? fallback;
  if (typeof value !== "number" || !(value > 0)) {
    throw new RangeError(`${where}: ${key} is ${JSON.stringify(c[key])}; expected a positive number.`);
  }
  return value;
}

function flag(c: Json, key: string, where: string, fallback: boolean): boolean {
  const value = c[key] ?? fallback;
  if (typeof value !== "boolean") {
    throw new TypeError(`${where}: ${key} is ${JSON.stringify(value)}; expected true or false.`);
  }
  return value;
}

function refuse(c: Json, where: string, key: string, value: unknown, what: string): void {
  if (c[key] === value) throw new Error(`${where}: ${key} = ${JSON.stringify(value)} (${what}) is not supported.`);
}

function optionalId(c: Json, key: string, where: string): number | null {
  const value = c[key];
  if (value === undefined || value === null) return null;
  if (!Number.isInteger(value) || (value as number) < 0) {
    throw new RangeError(`${where}: ${key} is ${JSON.stringify(value)}; expected a token id.`);
  }
  return value as number;
}

function readEos(c: Json, where: string): number | number[] | null {
  const value = c.eos_token_id;
  if (Array.isArray(value)) {
    if (!value.every((id) => Number.isInteger(id) && id >= 0)) {
      throw new RangeError(`${where}: eos_token_id is ${JSON.stringify(value)}; expected token ids.`);
    }
    return value as number[];
  }
  return optionalId(c, "eos_token_id", where);
}
