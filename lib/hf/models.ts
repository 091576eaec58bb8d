/**
 * GPT-2, Llama and Qwen2 as Hugging Face's transformers 5.17 lays them out (`GPT2LMHeadModel`,
 * `LlamaForCausalLM`, `Qwen2ForCausalLM`), built from this library's modules. Property names are the
 * checkpoint's, so parameter names are its tensor names (`transformer.h.0.attn.c_attn.weight`,
 * `model.layers.0.self_attn.q_proj.weight`) and LoRA's `targetModules` select what PEFT selects.
 *
 * Each model is a `CausalLM` (see `../gpt/generate.ts`): `apply` maps int32 tokens `[batch, time]` to logits
 * `[batch, time, vocab]`, `applyCached` does the same with a key/value cache, so `generate` samples from it.
 * The base models' dropout is not implemented: a model here computes what transformers computes in
 * `eval()` mode, in training as well (LoRA's own dropout is PEFT's `lora_dropout`, 0 here).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Module } from "../module.ts";
import { requiresGrad } from "../tfjs_internals.ts";
import type { LayerNorm } from "../gpt/layers.ts";
import { disposeCache, type KVCache } from "../gpt/model.ts";
import { cachedAttention, causalAttention, causalMask, type LayerCache } from "../gpt/ops.ts";
import type { PretrainedConfig } from "./config.ts";
import {
  activation,
  GroupedQueryAttention,
  HFLinear,
  newLayerNorm,
  type Positions,
  RMSNorm,
  RotaryEmbedding,
  SwiGLUMLP,
  tidy,
  TiedLMHead,
  TokenEmbedding,
} from "./layers.ts";

export { disposeCache, type KVCache };

/** How a new model starts. */
export interface ModelOptions {
  /** Seed of every random initial weight; default 0. */
  seed?: number;
}

/** What a transformer block of these models does, with and without a cache. */
interface Block extends Module {
  forward(x: tf.Tensor, positions: Positions): tf.Tensor;
  forwardCached(x: tf.Tensor, positions: Positions, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache };
}

/**
 * What the three models share: checking tokens, running the blocks with or without a cache, the final norm
 * and the output layer. A subclass says where its embedding, blocks, norm and head are.
 */
export abstract class PretrainedCausalLM extends Module {
  /** The model's shape and settings, from its `config.json`. */
  readonly config: PretrainedConfig;
  /** Has no effect (no dropout); kept for `CausalLM`, whose `generate` turns it off while sampling. */
  training = false;
  /**
   * Recompute each block's activations during the backward pass instead of keeping them (transformers'
   * `gradient_checkpointing_enable()`): a training step then holds one block's intermediate tensors at a time
   * plus each block's input, for about one more forward pass of compute. Default `false`.
   */
  gradientCheckpointing = false;
  /** The output layer: a `Linear` without bias, or a {@linkcode TiedLMHead} on the token embedding. */
  lm_head: Module;

  /** A model shaped by `config`, whose subclass builds the rest; `head` is the output layer. */
  protected constructor(config: PretrainedConfig, embedding: TokenEmbedding, seed: number) {
    super();
    this.config = config;
    this.lm_head = config.tieWordEmbeddings
      ? new TiedLMHead(embedding)
      : new HFLinear(config.hiddenSize, config.vocabSize, { bias: false, seed: seed + 7 });
  }

  /** The token embedding. */
  abstract getInputEmbeddings(): TokenEmbedding;
  /** The blocks, in order. */
  protected abstract blocks(): Block[];
  /** The norm after the last block. */
  protected abstract finalNorm(): Module;
  /** The embedded tokens at positions `start …` (GPT-2 adds its learned positions). */
  protected abstract embed(tokens: tf.Tensor, start: number): tf.Tensor;

  /** The output layer, which `targetModules: "all-linear"` leaves out, as PEFT does for transformers models. */
  getOutputEmbeddings(): Module {
    return this.lm_head;
  }

  /** Next-token logits `[batch, time, vocab]` for int32 `tokens` `[batch, time]`. */
  apply(tokens: tf.Tensor): tf.Tensor3D {
    const time = this.checkTokens(tokens, 0);
    return tf.tidy(() => {
      const positions = { start: 0, mask: causalMask(time) };
      let x = this.embed(tokens, 0);
      for (const block of this.blocks()) {
        x = this.gradientCheckpointing ? checkpointed(block, x) : block.forward(x, positions);
      }
      return this.lm_head.apply(this.finalNorm().apply(x)) as tf.Tensor3D;
    });
  }

  /**
   * Logits for the newest `tokens` `[batch, time]`, which follow the positions in `cache` (`null` to start),
   * and the cache grown by them; the caller frees both caches when done (`disposeCache`). No gradients.
   */
  applyCached(tokens: tf.Tensor, cache: KVCache | null): { logits: tf.Tensor3D; cache: KVCache } {
    const start = cache?.length ?? 0;
    const time = this.checkTokens(tokens, start);
    return tidy(() => {
      const positions = { start, mask: causalMask(start + time) };
      let x = this.embed(tokens, start);
      const layers: LayerCache[] = [];
      this.blocks().forEach((block, i) => {
        const out = block.forwardCached(x, positions, cache?.layers[i] ?? null);
        x = out.y;
        layers.push(out.cache);
      });
      const logits = this.lm_head.apply(this.finalNorm().apply(x)) as tf.Tensor3D;
      return { logits, cache: { layers, length: start + time } };
    });
  }

  /** A deep copy whose output layer (if tied) is tied to the copy's own embedding. */
  override clone(): this {
    const copy = super.clone();
    if (this.lm_head instanceof TiedLMHead) copy.lm_head = new TiedLMHead(copy.getInputEmbeddings());
    return copy;
  }

  /** Throws a clear error unless `tokens` is int32 `[batch, time]`, fits after `start` positions, and is in range. */
  private checkTokens(tokens: tf.Tensor, start: number): number {
    const { vocabSize, blockSize, architecture } = this.config;
    if (tokens.rank !== 2 || tokens.dtype !== "int32") {
      throw new RangeError(
        `${architecture}: tokens must be int32 of shape [batch, time]; got ${tokens.dtype} [${tokens.shape}].`,
      );
    }
    const time = tokens.shape[1] as number;
    if (time < 1 || start + time > blockSize) {
      const where = start === 0 ? "" : ` after the ${start} cached positions`;
      throw new RangeError(`${architecture}: ${time} tokens${where} exceed the context of ${blockSize} positions.`);
    }
    if (!["webgpu", "webgl"].includes(tf.getBackend())) {
      const ids = tokens.dataSync();
      const bad = ids.findIndex((id) => !(id >= 0 && id < vocabSize));
      if (bad >= 0) {
        throw new RangeError(
          `${architecture}: token ${ids[bad]} at [${Math.floor(bad / time)}, ${bad % time}] is outside the ` +
            `vocabulary; expected 0 to ${vocabSize - 1}.`,
        );
      }
    }
    return time;
  }
}

/**
 * `block` on `x` (positions from 0) with gradient checkpointing: one node of the gradient tape whose inputs are
 * `x` (when it needs a gradient) and the block's trainable variables. Only `x` is kept; the backward pass runs
 * the block again under its own gradient computation and returns the gradients for `x` and the variables,
 * freeing everything else of that block before the next one. Outside a gradient computation, or for a block
 * with nothing to differentiate, it is `block.forward`.
 */
function checkpointed(block: Block, x: tf.Tensor): tf.Tensor {
  const time = x.shape[1] as number;
  const variables = block.namedParameters().map((p) => p.variable).filter((v) => v.trainable);
  const needsX = requiresGrad(x);
  if (!isRecording() || (!needsX && variables.length === 0)) {
    return block.forward(x, { start: 0, mask: causalMask(time) });
  }
  const op = tf.customGrad(
    ((...args: unknown[]) => {
      const save = args.pop() as (tensors: tf.Tensor[]) => void;
      const input = needsX ? args[0] as tf.Tensor : x;
      save([input]);
      const value = tf.tidy(() => block.forward(input, { start: 0, mask: causalMask(time) }));
      return {
        value,
        gradFunc: (dy: tf.Tensor, [saved]: tf.Tensor[]) =>
          tf.tidy(() => {
            const start = tf.variable(saved, true);
            // The nested gradient computation replaces the engine's tape and clears it when done; the outer
            // one, still running, needs its own tape back afterwards (tfjs keeps one tape per engine).
            const state = tf.engine().state as unknown as { activeTape: unknown };
            const outer = state.activeTape;
            try {
              const wrt = needsX ? [start, ...variables] : variables;
              const { grads } = tf.variableGrads(
                () => tf.sum(tf.mul(block.forward(start, { start: 0, mask: causalMask(time) }), dy)) as tf.Scalar,
                wrt,
              );
              return wrt.map((v) => grads[v.name]);
            } finally {
              state.activeTape = outer;
              start.dispose();
            }
          }),
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0],
  );
  const inputs = needsX ? [x, ...variables] : variables;
  return (op as unknown as (...t: tf.Tensor[]) => tf.Tensor)(...inputs);
}

/** Whether a gradient tape is recording (inside `tf.grads`, `variableGrads` or `optimizer.minimize`). */
function isRecording(): boolean {
  const state = tf.engine().state as unknown as { gradientDepth?: number };
  return (state.gradientDepth ?? 0) > 0;
}

/**
 * GPT-2's attention, `GPT2Attention`: one fused projection `c_attn` makes queries, keys and values side by
 * side (`[q | k | v]`, `3 · hidden` wide), then causal multi-head attention, then `c_proj`. Both projections
 * are `Conv1D`s in the checkpoint, whose weights are stored `[in, out]` (`fanInFanOut`), as `Linear` holds
 * them here.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { GPT2Attention } from "./models.ts";
 * const attn = new GPT2Attention(32, 4, 1);
 * assert.equal(String(attn.c_attn), "HFLinear(in_features=32, out_features=96, bias=true)");
 * assert.deepEqual(attn.apply(tf.randomNormal([2, 5, 32])).shape, [2, 5, 32]);
 * attn.dispose();
 * ```
 */
export class GPT2Attention extends Module {
  /** Queries, keys and values in one, `hidden → 3 · hidden`. */
  c_attn: Module;
  /** Mixes the heads back, `hidden → hidden`. */
  c_proj: Module;
  /** Number of heads. */
  readonly numHeads: number;

  /** The attention of a `hiddenSize`-wide block with `numHeads` heads. */
  constructor(hiddenSize: number, numHeads: number, seed: number) {
    super();
    this.c_attn = new HFLinear(hiddenSize, 3 * hiddenSize, { seed, fanInFanOut: true });
    this.c_proj = new HFLinear(hiddenSize, hiddenSize, { seed: seed + 2, fanInFanOut: true });
    this.numHeads = numHeads;
  }

  /** The attention output for `x` `[batch, time, hidden]` at positions `0 … time − 1`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.forward(x, { start: 0, mask: causalMask(x.shape[1] as number) }));
  }

  /** The same with the mask given. */
  forward(x: tf.Tensor, positions: Positions): tf.Tensor {
    return tf.tidy(() => {
      const [q, k, v] = tf.split(this.c_attn.apply(x), 3, -1);
      return this.c_proj.apply(causalAttention(q, k, v, this.numHeads, positions.mask));
    });
  }

  /** The output for the newest positions, with the cache of the earlier ones (no gradients). */
  forwardCached(x: tf.Tensor, positions: Positions, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache } {
    return tidy(() => {
      const [q, k, v] = tf.split(this.c_attn.apply(x), 3, -1);
      const { out, cache } = cachedAttention(q, k, v, this.numHeads, positions.mask, past);
      return { y: this.c_proj.apply(out), cache };
    });
  }
}

/**
 * GPT-2's perceptron, `GPT2MLP`: `c_proj(act(c_fc(x)))`, both `Conv1D`s (`fanInFanOut`), the activation
 * `gelu_new` for GPT-2 itself.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { GPT2MLP } from "./models.ts";
 * const mlp = new GPT2MLP(32, 128, "gelu_new", 1);
 * assert.equal(mlp.act.constructor.name, "NewGELU");
 * assert.deepEqual(mlp.apply(tf.ones([1, 2, 32])).shape, [1, 2, 32]);
 * mlp.dispose();
 * ```
 */
export class GPT2MLP extends Module {
  /** Widens, `hidden → inner`. */
  c_fc: Module;
  /** The activation. */
  act: Module;
  /** Back, `inner → hidden`. */
  c_proj: Module;

  /** A perceptron from `hiddenSize` through `innerSize` with the activation `activationName`. */
  constructor(hiddenSize: number, innerSize: number, activationName: string, seed: number) {
    super();
    this.c_fc = new HFLinear(hiddenSize, innerSize, { seed, fanInFanOut: true });
    this.act = activation(activationName);
    this.c_proj = new HFLinear(innerSize, hiddenSize, { seed: seed + 2, fanInFanOut: true });
  }

  /** `c_proj(act(c_fc(x)))`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.c_proj.apply(this.act.apply(this.c_fc.apply(x))));
  }
}

/**
 * One GPT-2 block, `GPT2Block`: `x + attn(ln_1(x))`, then `+ mlp(ln_2(·))`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { GPT2Block } from "./models.ts";
 * const block = new GPT2Block(32, 4, 128, 1e-5, "gelu_new", 1);
 * assert.deepEqual(block.apply(tf.randomNormal([1, 3, 32])).shape, [1, 3, 32]);
 * block.dispose();
 * ```
 */
export class GPT2Block extends Module implements Block {
  /** Normalises the attention's input. */
  ln_1: LayerNorm;
  /** The attention. */
  attn: GPT2Attention;
  /** Normalises the perceptron's input. */
  ln_2: LayerNorm;
  /** The perceptron. */
  mlp: GPT2MLP;

  /** A block of the given sizes. */
  constructor(hidden: number, heads: number, inner: number, epsilon: number, act: string, seed: number) {
    super();
    this.ln_1 = newLayerNorm(hidden, epsilon);
    this.attn = new GPT2Attention(hidden, heads, seed);
    this.ln_2 = newLayerNorm(hidden, epsilon);
    this.mlp = new GPT2MLP(hidden, inner, act, seed + 10);
  }

  /** The block on `x` at positions `0 … time − 1`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.forward(x, { start: 0, mask: causalMask(x.shape[1] as number) }));
  }

  /** The block with the mask given. */
  forward(x: tf.Tensor, positions: Positions): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.add(x, this.attn.forward(this.ln_1.apply(x), positions));
      return tf.add(h, this.mlp.apply(this.ln_2.apply(h)));
    });
  }

  /** The block for the newest positions, with the attention's cache. */
  forwardCached(x: tf.Tensor, positions: Positions, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache } {
    return tidy(() => {
      const { y, cache } = this.attn.forwardCached(this.ln_1.apply(x), positions, past);
      const h = tf.add(x, y);
      return { y: tf.add(h, this.mlp.apply(this.ln_2.apply(h))), cache };
    });
  }
}

/**
 * GPT-2's body, `GPT2Model`: token embedding `wte`, learned position embedding `wpe`, the blocks `h` and the
 * final LayerNorm `ln_f`. Its `apply` gives the last hidden states; {@linkcode GPT2LMHeadModel} adds the head.
 */
export class GPT2Model extends Module {
  /** Token embedding, `[vocab, hidden]`. */
  wte: TokenEmbedding;
  /** Position embedding, `[positions, hidden]`. */
  wpe: TokenEmbedding;
  /** The blocks. */
  h: GPT2Block[];
  /** The final LayerNorm. */
  ln_f: LayerNorm;

  /** The body of a model shaped by `config`. */
  constructor(config: PretrainedConfig, seed: number) {
    super();
    const { vocabSize, blockSize, hiddenSize, numHeads, intermediateSize, normEpsilon, numLayers } = config;
    this.wte = new TokenEmbedding(vocabSize, hiddenSize, { seed });
    this.wpe = new TokenEmbedding(blockSize, hiddenSize, { seed: seed + 1, std: 0.01 });
    this.h = Array.from(
      { length: numLayers },
      (_, i) =>
        new GPT2Block(hiddenSize, numHeads, intermediateSize, normEpsilon, config.activation, seed + 100 * (i + 1)),
    );
    this.ln_f = newLayerNorm(hiddenSize, normEpsilon);
  }

  /** Token plus position embeddings for positions `start … start + time − 1`. */
  embed(tokens: tf.Tensor, start: number): tf.Tensor {
    return tf.tidy(() => {
      const time = tokens.shape[1] as number;
      const positions = tf.slice(this.wpe.weight, [start, 0], [time, this.wpe.weight.shape[1]]);
      return tf.add(this.wte.apply(tokens), positions);
    });
  }

  /** The last hidden states `[batch, time, hidden]` (after `ln_f`) for int32 `tokens`. */
  apply(tokens: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const positions = { start: 0, mask: causalMask(tokens.shape[1] as number) };
      let x = this.embed(tokens, 0);
      for (const block of this.h) x = block.forward(x, positions);
      return this.ln_f.apply(x);
    });
  }
}

/**
 * GPT-2 with its language-model head, transformers' `GPT2LMHeadModel`: `transformer` (the {@linkcode GPT2Model})
 * and `lm_head`, tied to `transformer.wte` when `tie_word_embeddings` is true (as in every GPT-2 checkpoint).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * import { GPT2LMHeadModel } from "./models.ts";
 * const config = parseConfig({ architectures: ["GPT2LMHeadModel"], vocab_size: 50, n_positions: 16, n_embd: 32,
 *   n_layer: 2, n_head: 4 });
 * const gpt2 = new GPT2LMHeadModel(config, { seed: 1 });
 * assert.deepEqual(gpt2.apply(tf.tensor2d([[1, 2, 3]], [1, 3], "int32")).shape, [1, 3, 50]);
 * assert.equal(gpt2.namedParameters()[0].name, "transformer.wte.weight");
 * gpt2.dispose();
 * ```
 */
export class GPT2LMHeadModel extends PretrainedCausalLM {
  /** The body. */
  transformer: GPT2Model;

  /** A randomly initialised model shaped by `config` (an architecture `GPT2LMHeadModel`). */
  constructor(config: PretrainedConfig, options: ModelOptions = {}) {
    const seed = options.seed ?? 0;
    const transformer = new GPT2Model(config, seed);
    super(config, transformer.wte, seed);
    this.transformer = transformer;
  }

  /** `transformer.wte`. */
  getInputEmbeddings(): TokenEmbedding {
    return this.transformer.wte;
  }

  protected blocks(): Block[] {
    return this.transformer.h;
  }

  protected finalNorm(): Module {
    return this.transformer.ln_f;
  }

  protected embed(tokens: tf.Tensor, start: number): tf.Tensor {
    return this.transformer.embed(tokens, start);
  }
}

/**
 * One Llama (or Qwen2) layer, `LlamaDecoderLayer`: `x + self_attn(input_layernorm(x))`, then
 * `+ mlp(post_attention_layernorm(·))`, with RMSNorm, grouped-query attention and the SwiGLU perceptron.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * import { RotaryEmbedding } from "./layers.ts";
 * import { LlamaDecoderLayer } from "./models.ts";
 * const config = parseConfig({ architectures: ["LlamaForCausalLM"], vocab_size: 50, hidden_size: 32,
 *   num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 64,
 *   max_position_embeddings: 16 });
 * const layer = new LlamaDecoderLayer(config, new RotaryEmbedding(8, 10000), 1);
 * assert.deepEqual(layer.apply(tf.randomNormal([1, 4, 32])).shape, [1, 4, 32]);
 * layer.dispose();
 * ```
 */
export class LlamaDecoderLayer extends Module implements Block {
  /** The attention. */
  self_attn: GroupedQueryAttention;
  /** The perceptron. */
  mlp: SwiGLUMLP;
  /** Normalises the attention's input. */
  input_layernorm: RMSNorm;
  /** Normalises the perceptron's input. */
  post_attention_layernorm: RMSNorm;

  /** A layer of a model shaped by `config`, rotating by `rotary`. */
  constructor(config: PretrainedConfig, rotary: RotaryEmbedding, seed: number) {
    super();
    this.self_attn = new GroupedQueryAttention(config, rotary, seed);
    this.mlp = new SwiGLUMLP(config.hiddenSize, config.intermediateSize, config.mlpBias, seed + 10);
    this.input_layernorm = new RMSNorm(config.hiddenSize, config.normEpsilon);
    this.post_attention_layernorm = new RMSNorm(config.hiddenSize, config.normEpsilon);
  }

  /** The layer on `x` at positions `0 … time − 1`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.forward(x, { start: 0, mask: causalMask(x.shape[1] as number) }));
  }

  /** The layer with the mask given. */
  forward(x: tf.Tensor, positions: Positions): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.add(x, this.self_attn.forward(this.input_layernorm.apply(x), positions));
      return tf.add(h, this.mlp.apply(this.post_attention_layernorm.apply(h)));
    });
  }

  /** The layer for the newest positions, with the attention's cache. */
  forwardCached(x: tf.Tensor, positions: Positions, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache } {
    return tidy(() => {
      const { y, cache } = this.self_attn.forwardCached(this.input_layernorm.apply(x), positions, past);
      const h = tf.add(x, y);
      return { y: tf.add(h, this.mlp.apply(this.post_attention_layernorm.apply(h))), cache };
    });
  }
}

/**
 * Llama's body, `LlamaModel`: `embed_tokens`, the `layers`, the final RMSNorm `norm`, and `rotary_emb` (no
 * parameters; every layer's attention holds the same one).
 */
export class LlamaModel extends Module {
  /** Token embedding, `[vocab, hidden]`. */
  embed_tokens: TokenEmbedding;
  /** The layers. */
  layers: LlamaDecoderLayer[];
  /** The final RMSNorm. */
  norm: RMSNorm;
  /** Rotary position embeddings. */
  rotary_emb: RotaryEmbedding;

  /** The body of a model shaped by `config`. */
  constructor(config: PretrainedConfig, seed: number) {
    super();
    this.embed_tokens = new TokenEmbedding(config.vocabSize, config.hiddenSize, { seed });
    this.rotary_emb = new RotaryEmbedding(config.headDim, config.ropeTheta ?? 10000);
    this.layers = Array.from(
      { length: config.numLayers },
      (_, i) => new LlamaDecoderLayer(config, this.rotary_emb, seed + 100 * (i + 1)),
    );
    this.norm = new RMSNorm(config.hiddenSize, config.normEpsilon);
  }

  /** The last hidden states `[batch, time, hidden]` (after `norm`) for int32 `tokens`. */
  apply(tokens: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const positions = { start: 0, mask: causalMask(tokens.shape[1] as number) };
      let x = this.embed_tokens.apply(tokens);
      for (const layer of this.layers) x = layer.forward(x, positions);
      return this.norm.apply(x);
    });
  }
}

/**
 * Llama with its language-model head, transformers' `LlamaForCausalLM` (SmolLM, TinyLlama and many small
 * open models have this architecture): `model` (the {@linkcode LlamaModel}) and `lm_head`, tied to
 * `model.embed_tokens` when `tie_word_embeddings` is true.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * import { LlamaForCausalLM } from "./models.ts";
 * const config = parseConfig({ architectures: ["LlamaForCausalLM"], vocab_size: 50, hidden_size: 32,
 *   num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 64,
 *   max_position_embeddings: 16, tie_word_embeddings: true });
 * const llama = new LlamaForCausalLM(config, { seed: 1 });
 * assert.deepEqual(llama.apply(tf.tensor2d([[1, 2]], [1, 2], "int32")).shape, [1, 2, 50]);
 * assert.ok(llama.namedParameters().some((p) => p.name === "model.layers.1.mlp.down_proj.weight"));
 * llama.dispose();
 * ```
 */
export class LlamaForCausalLM extends PretrainedCausalLM {
  /** The body. */
  model: LlamaModel;

  /** A randomly initialised model shaped by `config`. */
  constructor(config: PretrainedConfig, options: ModelOptions = {}) {
    const seed = options.seed ?? 0;
    const model = new LlamaModel(config, seed);
    super(config, model.embed_tokens, seed);
    this.model = model;
  }

  /** `model.embed_tokens`. */
  getInputEmbeddings(): TokenEmbedding {
    return this.model.embed_tokens;
  }

  protected blocks(): Block[] {
    return this.model.layers;
  }

  protected finalNorm(): Module {
    return this.model.norm;
  }

  protected embed(tokens: tf.Tensor): tf.Tensor {
    return this.model.embed_tokens.apply(tokens);
  }
}

/**
 * Qwen2 with its language-model head, transformers' `Qwen2ForCausalLM`: the Llama layout with biases on
 * `q_proj`, `k_proj` and `v_proj` (none on `o_proj` or the perceptron). Sliding-window attention is not
 * implemented (`parseConfig` refuses configs that turn it on).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * import { Qwen2ForCausalLM } from "./models.ts";
 * const config = parseConfig({ architectures: ["Qwen2ForCausalLM"], vocab_size: 50, hidden_size: 32,
 *   num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 64,
 *   max_position_embeddings: 16 });
 * const qwen = new Qwen2ForCausalLM(config, { seed: 1 });
 * assert.ok(qwen.namedParameters().some((p) => p.name === "model.layers.0.self_attn.q_proj.bias"));
 * assert.ok(!qwen.namedParameters().some((p) => p.name === "model.layers.0.self_attn.o_proj.bias"));
 * qwen.dispose();
 * ```
 */
export class Qwen2ForCausalLM extends LlamaForCausalLM {}

/**
 * A randomly initialised model of the architecture `config` names (seeded by `options.seed`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * import { buildModel } from "./models.ts";
 * const model = buildModel(parseConfig({ model_type: "gpt2", vocab_size: 50, n_positions: 8, n_embd: 16,
 *   n_layer: 1, n_head: 2 }));
 * assert.equal(model.constructor.name, "GPT2LMHeadModel");
 * model.dispose();
 * ```
 */
export function buildModel(config: PretrainedConfig, options: ModelOptions = {}): PretrainedCausalLM {
  switch (config.architecture) {
    case "GPT2LMHeadModel":
      return new GPT2LMHeadModel(config, options);
    case "LlamaForCausalLM":
      return new LlamaForCausalLM(config, options);
    case "Qwen2ForCausalLM":
      return new Qwen2ForCausalLM(config, options);
  }
}
