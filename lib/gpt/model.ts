/**
 * A tiny GPT in the GPT-2 layout (pre-LayerNorm blocks of causal self-attention and a GELU perceptron), built
 * from this library's modules so that LoRA can target its layers by name: `blocks.0.attn.q_proj`,
 * `blocks.1.mlp.fc2`, …, exactly as in nanoGPT-style PyTorch code.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { checkDim, Linear } from "../layers.ts";
import { Module } from "../module.ts";
import { tfSeed } from "../tfjs_internals.ts";
import { Embedding, GELU, LayerNorm } from "./layers.ts";
import { cachedAttention, causalAttention, causalMask, type LayerCache } from "./ops.ts";

/** `tf.tidy` for a function that returns tensors inside plain objects (tfjs's types ask for an index signature). */
function tidy<T>(fn: () => T): T {
  return tf.tidy(fn as () => tf.TensorContainer) as unknown as T;
}

/** The shape of a {@linkcode GPT}, in nanoGPT's names. */
export interface GPTConfig {
  /** Number of token ids, `0 … vocabSize − 1`. */
  vocabSize: number;
  /** Longest context, in tokens (the number of position embeddings). */
  blockSize: number;
  /** Number of transformer blocks. */
  nLayer: number;
  /** Attention heads per block; `nEmbd` must be a multiple of it. */
  nHead: number;
  /** Width of the residual stream. */
  nEmbd: number;
}

/** How a new {@linkcode GPT} starts. */
export interface GPTOptions {
  /** Seed of every random initial weight, so that runs repeat. */
  seed: number;
  /**
   * Dropout probability after the embeddings and on each residual branch, while `training` is true;
   * default 0 (off).
   */
  dropout?: number;
}

/** A `Linear` started as GPT-2 starts it: weight from N(0, `std`²), bias zero. */
function gpt2Linear(inFeatures: number, outFeatures: number, seed: number, std: number, bias = true): Linear {
  const layer = new Linear(inFeatures, outFeatures, { seed, bias });
  tf.tidy(() => {
    layer.weight.assign(tf.randomNormal([inFeatures, outFeatures], 0, std, "float32", tfSeed(seed)));
    layer.bias?.assign(tf.zeros([outFeatures]));
  });
  return layer;
}

/**
 * Causal multi-head self-attention with four separate projections, `q_proj`, `k_proj`, `v_proj` and
 * `out_proj`, so that LoRA can adapt each by name. Each position attends to itself and the positions before
 * it; heads of `nEmbd / nHead` values each are computed side by side and concatenated.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { CausalSelfAttention } from "./model.ts";
 * const attn = new CausalSelfAttention({ vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 }, 1);
 * assert.deepEqual(attn.apply(tf.randomNormal([2, 10, 64])).shape, [2, 10, 64]);
 * attn.dispose();
 * ```
 */
export class CausalSelfAttention extends Module {
  /** Queries: what each position looks for. */
  q_proj: Module;
  /** Keys: what each position offers to be found by. */
  k_proj: Module;
  /** Values: what each position passes on when found. */
  v_proj: Module;
  /** Mixes the heads' outputs back into the residual stream. */
  out_proj: Module;
  /** Number of heads. */
  readonly nHead: number;
  /** `[blockSize, blockSize]`: 0 on and below the diagonal, −∞ above (a buffer, not a parameter). */
  readonly mask: tf.Tensor2D;

  /** The attention of one block of a model shaped by `config`, its weights seeded from `seed`. */
  constructor(config: GPTConfig, seed: number) {
    super();
    const { nEmbd, nHead, nLayer, blockSize } = config;
    this.q_proj = gpt2Linear(nEmbd, nEmbd, seed, 0.02);
    this.k_proj = gpt2Linear(nEmbd, nEmbd, seed + 2, 0.02);
    this.v_proj = gpt2Linear(nEmbd, nEmbd, seed + 4, 0.02);
    // GPT-2 scales the init of the layers that write into the residual stream by 1/√(2·layers).
    this.out_proj = gpt2Linear(nEmbd, nEmbd, seed + 6, 0.02 / Math.sqrt(2 * nLayer));
    this.nHead = nHead;
    this.mask = causalMask(blockSize);
  }

  /** `out_proj(attention(q_proj(x), k_proj(x), v_proj(x)))` for `x` `[batch, time, nEmbd]`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const time = x.shape[1]!;
      const mask = time === this.mask.shape[0] ? this.mask : tf.slice(this.mask, [0, 0], [time, time]);
      const q = this.q_proj.apply(x), k = this.k_proj.apply(x), v = this.v_proj.apply(x);
      return this.out_proj.apply(causalAttention(q, k, v, this.nHead, mask));
    });
  }

  /** The same for the newest positions `x`, given the keys and values of the earlier ones (no gradients). */
  applyCached(x: tf.Tensor, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache } {
    return tidy(() => {
      const q = this.q_proj.apply(x), k = this.k_proj.apply(x), v = this.v_proj.apply(x);
      const { out, cache } = cachedAttention(q, k, v, this.nHead, this.mask, past);
      return { y: this.out_proj.apply(out), cache };
    });
  }
}

/**
 * The block's perceptron: `fc2(gelu(fc1(x)))`, widening to `4 · nEmbd` in between.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { MLP } from "./model.ts";
 * const mlp = new MLP({ vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 }, 1);
 * assert.equal(String(mlp.fc1), "Linear(in_features=64, out_features=256, bias=true)");
 * mlp.dispose();
 * ```
 */
export class MLP extends Module {
  /** Widens `nEmbd` to `4 · nEmbd`. */
  fc1: Module;
  /** The activation. */
  gelu: GELU;
  /** Back to `nEmbd`. */
  fc2: Module;

  /** The perceptron of one block of a model shaped by `config`. */
  constructor(config: GPTConfig, seed: number) {
    super();
    const { nEmbd, nLayer } = config;
    this.fc1 = gpt2Linear(nEmbd, 4 * nEmbd, seed, 0.02);
    this.gelu = new GELU();
    this.fc2 = gpt2Linear(4 * nEmbd, nEmbd, seed + 2, 0.02 / Math.sqrt(2 * nLayer));
  }

  /** `fc2(gelu(fc1(x)))`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.fc2.apply(this.gelu.apply(this.fc1.apply(x))));
  }
}

/** Dropout of probability `rate` with a seed, or `x` itself when `rate` is 0. */
function dropout(x: tf.Tensor, rate: number, seed: number): tf.Tensor {
  return rate > 0 ? tf.dropout(x, rate, undefined, tfSeed(seed)) : x;
}

/**
 * One transformer block, GPT-2's pre-LayerNorm form: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Block } from "./model.ts";
 * const block = new Block({ vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 }, 1);
 * assert.deepEqual(block.apply(tf.randomNormal([2, 16, 64])).shape, [2, 16, 64]);
 * block.dispose();
 * ```
 */
export class Block extends Module {
  /** Normalises the input of the attention. */
  ln1: LayerNorm;
  /** Causal self-attention. */
  attn: CausalSelfAttention;
  /** Normalises the input of the perceptron. */
  ln2: LayerNorm;
  /** The perceptron. */
  mlp: MLP;
  /** Dropout on both residual branches while training (set by the {@linkcode GPT} that owns the block). */
  dropout = 0;
  /** Seed of the next dropout mask. */
  dropoutSeed = 0;

  /** A block of a model shaped by `config`, its weights seeded from `seed`. */
  constructor(config: GPTConfig, seed: number) {
    super();
    this.ln1 = new LayerNorm(config.nEmbd);
    this.attn = new CausalSelfAttention(config, seed);
    this.ln2 = new LayerNorm(config.nEmbd);
    this.mlp = new MLP(config, seed + 10);
  }

  /** `x + attn(ln1(x))`, then `+ mlp(ln2(·))`, for `x` `[batch, time, nEmbd]`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.add(x, dropout(this.attn.apply(this.ln1.apply(x)), this.dropout, this.dropoutSeed++));
      return tf.add(h, dropout(this.mlp.apply(this.ln2.apply(h)), this.dropout, this.dropoutSeed++));
    });
  }

  /** The same for the newest positions, with the attention's cache (no dropout, no gradients). */
  applyCached(x: tf.Tensor, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache } {
    return tidy(() => {
      const { y, cache } = this.attn.applyCached(this.ln1.apply(x), past);
      const h = tf.add(x, y);
      return { y: tf.add(h, this.mlp.apply(this.ln2.apply(h))), cache };
    });
  }
}

/** The keys and values of every block for the positions decoded so far; see {@linkcode GPT.applyCached}. */
export interface KVCache {
  /** One entry per block. */
  layers: LayerCache[];
  /** Number of positions held. */
  length: number;
}

/**
 * A GPT-2-style language model: token and position embeddings, `nLayer` {@linkcode Block}s, a final
 * LayerNorm and an output layer `lm_head` (no bias, not tied to the token embedding). `apply` maps int32
 * tokens `[batch, time]` (time ≤ `blockSize`) to next-token logits `[batch, time, vocabSize]`.
 *
 * Parameter names follow nanoGPT-style PyTorch code (`tok_emb.weight`, `blocks.0.attn.q_proj.weight`, …), so
 * `saveWeights` writes a file such a model loads, and LoRA's `targetModules` reads as it would in PEFT.
 * Weights start as GPT-2's do: N(0, 0.02²), the residual outputs (`out_proj`, `fc2`) scaled by 1/√(2·nLayer),
 * biases zero, LayerNorms one and zero.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { GPT } from "./model.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 }, { seed: 1 });
 * const logits = gpt.apply(tf.tensor2d([[1, 5, 12]], [1, 3], "int32"));
 * assert.deepEqual(logits.shape, [1, 3, 30]);
 * gpt.dispose();
 * ```
 */
export class GPT extends Module {
  /** The model's shape. */
  readonly config: GPTConfig;
  /** One vector per token id, `[vocabSize, nEmbd]`. */
  tok_emb: Embedding;
  /** One vector per position, `[blockSize, nEmbd]`. */
  pos_emb: Embedding;
  /** The transformer blocks. */
  blocks: Block[];
  /** The final LayerNorm. */
  ln_f: LayerNorm;
  /** The output layer, `nEmbd → vocabSize`, without bias. */
  lm_head: Module;
  /** Dropout probability while training (0: off). */
  readonly dropout: number;
  /** Whether dropout is active (PyTorch's `model.train()` / `model.eval()`); it has no effect when `dropout` is 0. */
  training = true;
  private dropoutSeed: number;

  /** A model shaped by `config`, with random weights seeded by `options.seed`. */
  constructor(config: GPTConfig, options: GPTOptions) {
    super();
    for (const key of ["vocabSize", "blockSize", "nLayer", "nHead", "nEmbd"] as const) {
      checkDim("GPT", key, config[key]);
    }
    if (config.nEmbd % config.nHead !== 0) {
      throw new RangeError(
        `GPT: nEmbd ${config.nEmbd} is not divisible by nHead ${config.nHead}; each head needs nEmbd / nHead values.`,
      );
    }
    const rate = options.dropout ?? 0;
    if (!(rate >= 0 && rate < 1)) throw new RangeError(`GPT: dropout must be in [0, 1); got ${rate}.`);
    if (!Number.isInteger(options.seed)) throw new RangeError(`GPT: seed must be an integer; got ${options.seed}.`);
    const { seed } = options;
    this.config = { ...config };
    this.tok_emb = new Embedding(config.vocabSize, config.nEmbd, { seed });
    this.pos_emb = new Embedding(config.blockSize, config.nEmbd, { seed: seed + 1 });
    this.blocks = Array.from({ length: config.nLayer }, (_, i) => new Block(config, seed + 100 * (i + 1)));
    this.ln_f = new LayerNorm(config.nEmbd);
    this.lm_head = gpt2Linear(config.nEmbd, config.vocabSize, seed + 2, 0.02, false);
    this.dropout = rate;
    this.dropoutSeed = seed;
  }

  /** Next-token logits `[batch, time, vocabSize]` for int32 `tokens` `[batch, time]`. */
  apply(tokens: tf.Tensor): tf.Tensor3D {
    const [, time] = this.checkTokens(tokens, 0);
    return tf.tidy(() => {
      const rate = this.training ? this.dropout : 0;
      // Fresh dropout masks every call: one seed for the embeddings, two for each block's residual branches.
      const seed = this.dropoutSeed;
      this.dropoutSeed += 1 + 2 * this.blocks.length;
      this.blocks.forEach((block, i) => [block.dropout, block.dropoutSeed] = [rate, seed + 1 + 2 * i]);
      let x = dropout(this.embed(tokens, 0, time), rate, seed);
      for (const block of this.blocks) x = block.apply(x);
      return this.lm_head.apply(this.ln_f.apply(x)) as tf.Tensor3D;
    });
  }

  /**
   * Logits for the newest `tokens` `[batch, time]`, which follow the positions in `cache` (`null` to start):
   * incremental decoding with a key/value cache, the same numbers as `apply` on the whole context up to
   * float32 rounding. Returns the new cache; the caller disposes both caches' tensors when done
   * ({@linkcode disposeCache}). No dropout, no gradients.
   */
  applyCached(tokens: tf.Tensor, cache: KVCache | null): { logits: tf.Tensor3D; cache: KVCache } {
    const start = cache?.length ?? 0;
    const [, time] = this.checkTokens(tokens, start);
    return tidy(() => {
      let x = this.embed(tokens, start, time);
      const layers: LayerCache[] = [];
      this.blocks.forEach((block, i) => {
        const out = block.applyCached(x, cache?.layers[i] ?? null);
        x = out.y;
        layers.push(out.cache);
      });
      const logits = this.lm_head.apply(this.ln_f.apply(x)) as tf.Tensor3D;
      return { logits, cache: { layers, length: start + time } };
    });
  }

  /** The output layer, for `targetModules: "all-linear"`, which leaves it out (as PEFT does for Transformers). */
  getOutputEmbeddings(): Module {
    return this.lm_head;
  }

  /** Token plus position embeddings for positions `start … start + time − 1`. */
  private embed(tokens: tf.Tensor, start: number, time: number): tf.Tensor {
    const { blockSize } = this.config;
    const positions = start === 0 && time === blockSize
      ? this.pos_emb.weight
      : tf.slice(this.pos_emb.weight, [start, 0], [time, this.config.nEmbd]);
    return tf.add(this.tok_emb.apply(tokens), positions);
  }

  /** Throws a clear error unless `tokens` is int32 `[batch, time]`, fits after `start` positions, and is in range. */
  private checkTokens(tokens: tf.Tensor, start: number): number[] {
    const { vocabSize, blockSize } = this.config;
    if (tokens.rank !== 2 || tokens.dtype !== "int32") {
      throw new RangeError(
        `GPT: tokens must be int32 of shape [batch, time]; got ${tokens.dtype} [${tokens.shape}].`,
      );
    }
    const time = tokens.shape[1] as number;
    if (time < 1 || start + time > blockSize) {
      const where = start === 0 ? "" : ` after the ${start} cached positions`;
      throw new RangeError(`GPT: ${time} tokens${where} exceed the context of ${blockSize} (blockSize).`);
    }
    // Backends that hold tensors in memory JavaScript reads synchronously (wasm, cpu) check every id; wasm's
    // gather reads them back anyway. GPU backends would have to stall, so there the ids are not checked.
    if (!["webgpu", "webgl"].includes(tf.getBackend())) {
      const ids = tokens.dataSync();
      const bad = ids.findIndex((id) => !(id >= 0 && id < vocabSize));
      if (bad >= 0) {
        const [row, column] = [Math.floor(bad / time), bad % time];
        throw new RangeError(
          `GPT: token ${ids[bad]} at [${row}, ${column}] is outside the vocabulary; expected 0 to ${vocabSize - 1}.`,
        );
      }
    }
    return tokens.shape;
  }
}

/**
 * Frees the tensors of a {@linkcode KVCache}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { disposeCache, GPT } from "./model.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 8 }, { seed: 1 });
 * const { logits, cache } = gpt.applyCached(tf.tensor2d([[1, 2]], [1, 2], "int32"), null);
 * assert.equal(cache.length, 2);
 * disposeCache(cache);
 * logits.dispose();
 * gpt.dispose();
 * ```
 */
export function disposeCache(cache: KVCache | null): void {
  for (const layer of cache?.layers ?? []) tf.dispose([layer.keys, layer.values]);
}
