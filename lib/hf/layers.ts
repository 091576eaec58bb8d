/**
 * The layers GPT-2, Llama and Qwen2 add to this library's `Linear`, `LayerNorm`, `Embedding` and GELU:
 * RMSNorm, GELU's tanh form, rotary position embeddings, grouped-query attention, the SwiGLU perceptron, an
 * embedding that gathers rows, and an output layer tied to the embedding. Each is named and laid out as in
 * transformers 5.17 (`modeling_llama.py`, `modeling_gpt2.py`), so that parameter names are the checkpoint's.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { checkDim, checkInput, Linear } from "../layers.ts";
import { Module } from "../module.ts";
import { matMul } from "../ops.ts";
import { requiresGrad } from "../tfjs_internals.ts";
import { Embedding, GELU, LayerNorm } from "../gpt/layers.ts";
import { cachedAttention, causalAttention, causalMask, embeddingLookup, type LayerCache } from "../gpt/ops.ts";
import {
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

/** `tf.tidy` for a function that returns tensors inside plain objects. */
export function tidy<T>(fn: () => T): T {
  return tf.tidy(fn as () => tf.TensorContainer) as unknown as T;
}

/**
 * What a block needs besides its input: where the new positions start, and the causal mask. The uncached
 * path's mask is `[time, time]`; the cached path's covers every position so far (see `cachedAttention`).
 */
export interface Positions {
  /** Number of positions before the first of `x` (0 without a cache). */
  start: number;
  /** The additive causal mask (see `causalMask`). */
  mask: tf.Tensor2D;
}

/** The positions of a standalone call on `x` `[batch, time, …]`: from 0, with a fresh mask the caller frees. */
function fromStart(x: tf.Tensor): Positions {
  return { start: 0, mask: causalMask(x.shape[1] as number) };
}

/**
 * A token embedding, this library's {@linkcode Embedding} (same `weight`, `[num, dim]`) that looks rows up with
 * `tf.gather` while its weight is frozen: the one-hot product `Embedding` uses is exact and fast for a
 * character vocabulary, but for 50,000 tokens it would cost as much as the output layer. A trainable table
 * takes `Embedding`'s one-hot path, whose gradient wasm can compute.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { TokenEmbedding } from "./layers.ts";
 * const table = new TokenEmbedding(10, 4, { seed: 1 });
 * table.weight.trainable = false;
 * const rows = table.apply(tf.tensor2d([[3]], [1, 1], "int32"));
 * assert.deepEqual(Array.from(rows.dataSync()), Array.from(table.weight.dataSync().slice(12, 16)));
 * table.dispose();
 * ```
 */
export class TokenEmbedding extends Embedding {
  /** The rows of the int32 `ids`: `[...ids.shape, dim]`. */
  override apply(ids: tf.Tensor): tf.Tensor {
    if (requiresGrad(this.weight)) return embeddingLookup(this.weight, ids);
    return gatherFrozen(this.weight, ids);
  }
}

/**
 * This library's {@linkcode Linear} (same weight `[in, out]`, bias, `fanInFanOut`, and so the same LoRA
 * targeting, wrapping and files), whose forward pass, while its weight and bias are frozen, goes through
 * `frozenLinear`: the gradient for the input is computed from the variables themselves, where `Linear` keeps
 * a copy of the weight for the backward pass (tfjs's wasm backend copies every tensor kept so). In a LoRA
 * step on a checkpoint that copy is every frozen weight of the model, once per step. A trainable layer runs
 * `Linear`'s own forward pass.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { Linear } from "../layers.ts";
 * import { HFLinear } from "./layers.ts";
 * const layer = new HFLinear(4, 3, { seed: 1 });
 * assert.ok(layer instanceof Linear);
 * const x = tf.ones([2, 4]);
 * const trainable = layer.apply(x).dataSync();
 * layer.weight.trainable = false;
 * layer.bias!.trainable = false;
 * assert.deepEqual(layer.apply(x).dataSync(), trainable);
 * layer.dispose();
 * ```
 */
export class HFLinear extends Linear {
  /** `x·W + b` over the last axis of `x`. */
  override apply<T extends tf.Tensor>(x: T): T {
    if (requiresGrad(this.weight) || (this.bias !== null && requiresGrad(this.bias))) return super.apply(x);
    checkInput(this, x, this.inFeatures);
    return frozenLinear(x, this.weight, this.bias);
  }
}

/**
 * The output layer of a model whose `tie_word_embeddings` is true: logits `x · Eᵀ` with `E` the token
 * embedding's own variable, so the two stay one parameter (training or loading one changes the other). It
 * holds no parameter of its own, so `namedParameters` lists the table once, under the embedding's name.
 *
 * While the table is frozen its transpose `[dim, num]` is kept between calls (recomputed if the table is
 * assigned new values); that costs one more copy of the table in memory and saves a transpose per call, and
 * the gradient for `x` is `dy · E` (see `projectTied`), which needs no transpose either.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { TiedLMHead, TokenEmbedding } from "./layers.ts";
 * const table = new TokenEmbedding(10, 4, { seed: 1 });
 * const head = new TiedLMHead(table);
 * assert.deepEqual(head.apply(tf.ones([1, 4])).shape, [1, 10]);
 * assert.equal(head.namedParameters().length, 0);
 * head.dispose();
 * table.dispose();
 * ```
 */
export class TiedLMHead extends Module {
  declare private readonly embedding: Embedding;
  declare private cached: { dataId: object; transposed: tf.Tensor2D } | null;

  /** The output layer that shares `embedding.weight`. */
  constructor(embedding: Embedding) {
    super();
    // Not enumerable: the module tree must not see the embedding (or the cached copy) a second time here.
    Object.defineProperty(this, "embedding", { value: embedding, enumerable: false, writable: true });
    Object.defineProperty(this, "cached", { value: null, enumerable: false, writable: true });
  }

  /** `x · Eᵀ` over the last axis of `x`. */
  apply(x: tf.Tensor): tf.Tensor {
    const weight = this.embedding.weight;
    if (requiresGrad(weight)) return tf.tidy(() => matMul(x, tf.transpose(weight) as tf.Tensor2D));
    const dataId = (weight as unknown as { dataId: object }).dataId;
    if (this.cached?.dataId !== dataId) {
      this.cached?.transposed.dispose();
      this.cached = { dataId, transposed: tf.keep(tf.tidy(() => tf.transpose(weight) as tf.Tensor2D)) };
    }
    return projectTied(x, weight, this.cached.transposed);
  }

  /** Frees the cached transpose (the table belongs to the embedding). */
  override dispose(): void {
    this.cached?.transposed.dispose();
    this.cached = null;
  }

  /** Sizes, and what it is tied to. */
  override extraRepr(): string {
    const [num, dim] = this.embedding.weight.shape;
    return `in_features=${dim}, out_features=${num}, tied to the token embedding`;
  }
}

/**
 * This library's `LayerNorm` (PyTorch's `nn.LayerNorm`), made so that its initial values leave no tensor
 * behind: `LayerNorm`'s constructor keeps the `ones` and `zeros` it starts its variables from.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { newLayerNorm } from "./layers.ts";
 * const before = tf.memory().numTensors;
 * newLayerNorm(8, 1e-5).dispose();
 * assert.equal(tf.memory().numTensors, before);
 * ```
 */
export function newLayerNorm(width: number, epsilon: number): LayerNorm {
  return tf.tidy(() => new LayerNorm(width, epsilon) as unknown as tf.TensorContainer) as unknown as LayerNorm;
}

/**
 * Root-mean-square normalisation with a learned scale `weight` (ones at first), Llama's `LlamaRMSNorm`:
 * `x / sqrt(mean(x²) + ε) · weight`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { RMSNorm } from "./layers.ts";
 * const norm = new RMSNorm(2, 0);
 * const y = norm.apply(tf.tensor2d([[3, 4]])).dataSync();
 * assert.ok(Math.abs(y[0] ** 2 + y[1] ** 2 - 2) < 1e-5); // mean square 1
 * norm.dispose();
 * ```
 */
export class RMSNorm extends Module {
  /** Scale, `[width]`. */
  weight: tf.Variable<tf.Rank.R1>;
  /** Added to the mean square before the square root. */
  readonly epsilon: number;

  /** A layer normalising `width` features. */
  constructor(width: number, epsilon = 1e-6) {
    super();
    checkDim("RMSNorm", "width", width);
    this.weight = tf.tidy(() => tf.variable(tf.ones([width])));
    this.epsilon = epsilon;
  }

  /** Normalises the last axis of `x`. */
  apply<T extends tf.Tensor>(x: T): T {
    return rmsNorm(x, this.weight, this.epsilon);
  }

  /** Width and ε, as PyTorch prints them. */
  override extraRepr(): string {
    return `(${this.weight.shape[0]},), eps=${this.epsilon}`;
  }
}

/**
 * GELU's tanh approximation (see `geluTanh`), transformers' `NewGELUActivation`, GPT-2's `gelu_new`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { NewGELU } from "./layers.ts";
 * assert.ok(Math.abs(new NewGELU().apply(tf.tensor1d([-1])).dataSync()[0] + 0.1588) < 1e-4);
 * ```
 */
export class NewGELU extends Module {
  /** The activation of every value. */
  apply<T extends tf.Tensor>(x: T): T {
    return geluTanh(x);
  }
}

/**
 * The activation `max(0, x)`, for GPT-2 configs whose `activation_function` is `"relu"`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { activation } from "./layers.ts";
 * assert.deepEqual(Array.from(activation("relu").apply(tf.tensor1d([-1, 2])).dataSync()), [0, 2]);
 * ```
 */
export function activation(name: string): Module {
  switch (name) {
    case "gelu_new":
    case "gelu_pytorch_tanh":
      return new NewGELU();
    case "gelu":
      return new GELU();
    case "relu":
      return new ReLUActivation();
  }
  throw new Error(`activation: "${name}" is not supported; expected gelu_new, gelu_pytorch_tanh, gelu or relu.`);
}

class ReLUActivation extends Module {
  apply<T extends tf.Tensor>(x: T): T {
    return tf.relu(x);
  }
}

/**
 * Rotary position embeddings, Llama's `LlamaRotaryEmbedding` with the default (unscaled) `rope_type`: it turns
 * each pair `(i, i + headDim/2)` of a query or key head by the angle `position / θ^(2i/headDim)`, so that the
 * product of a query and a key depends on how far apart they are. It has no parameters; the angle tables of
 * the last call are kept (as plain arrays) for the next layer.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { RotaryEmbedding } from "./layers.ts";
 * const rope = new RotaryEmbedding(4, 10000);
 * const x = tf.randomNormal([1, 3, 8]); // two heads of 4
 * const y = rope.rotate(x, 0, 2);
 * // A rotation keeps lengths.
 * assert.ok(Math.abs(tf.norm(x).dataSync()[0] - tf.norm(y).dataSync()[0]) < 1e-4);
 * ```
 */
export class RotaryEmbedding extends Module {
  /** Values per head; every one of them is rotated. */
  readonly headDim: number;
  /** The base θ of the frequencies. */
  readonly theta: number;
  private last: { start: number; time: number; cos: Float32Array; sin: Float32Array } | null = null;

  /** Rotary embeddings for heads of `headDim` values, base `theta`. */
  constructor(headDim: number, theta: number) {
    super();
    checkDim("RotaryEmbedding", "headDim", headDim);
    if (headDim % 2 !== 0) throw new RangeError(`RotaryEmbedding: headDim must be even; got ${headDim}.`);
    this.headDim = headDim;
    this.theta = theta;
  }

  /** `x` `[batch, time, heads · headDim]` rotated as positions `0 … time − 1`. */
  apply(x: tf.Tensor): tf.Tensor {
    return this.rotate(x, 0, (x.shape[2] as number) / this.headDim);
  }

  /** `x` `[batch, time, heads · headDim]` rotated as positions `start … start + time − 1`. */
  rotate<T extends tf.Tensor>(x: T, start: number, heads: number): T {
    const time = x.shape[1] as number;
    if (this.last?.start !== start || this.last.time !== time) {
      this.last = { start, time, ...rotaryTables(start, time, this.headDim, this.theta) };
    }
    const { cos, sin } = this.last;
    return tf.tidy(() =>
      applyRotary(x, tf.tensor2d(cos, [time, this.headDim]), tf.tensor2d(sin, [time, this.headDim]), heads)
    );
  }

  /** Sizes. */
  override extraRepr(): string {
    return `head_dim=${this.headDim}, theta=${this.theta}`;
  }
}

/** The shape of a {@linkcode GroupedQueryAttention}. */
export interface AttentionShape {
  /** Width of the residual stream. */
  hiddenSize: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads; `numHeads` must be a multiple of it. */
  numKeyValueHeads: number;
  /** Values per head. */
  headDim: number;
  /** Whether q, k and v have biases. */
  attentionBias: boolean;
  /** Whether `o_proj` has a bias. */
  outputBias: boolean;
}

/**
 * Causal self-attention with rotary embeddings and grouped-query attention, Llama's and Qwen2's
 * `LlamaAttention` / `Qwen2Attention`: `q_proj` makes `numHeads` query heads, `k_proj` and `v_proj` only
 * `numKeyValueHeads` key and value heads, each shared by `numHeads / numKeyValueHeads` query heads; queries
 * and keys are rotated by position (`rotary_emb`) before `softmax(q·kᵀ/√headDim + mask)·v`, and `o_proj`
 * mixes the heads back. With as many key/value heads as query heads this is plain multi-head attention.
 *
 * The shared heads are repeated (`repeatHeads`) before the attention of `../gpt/ops.ts`, so the key/value
 * cache holds them repeated too, as transformers' eager attention computes them; a cache of the unrepeated
 * heads would be `numHeads / numKeyValueHeads` times smaller.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { GroupedQueryAttention, RotaryEmbedding } from "./layers.ts";
 * const shape = { hiddenSize: 32, numHeads: 4, numKeyValueHeads: 2, headDim: 8, attentionBias: false, outputBias: false };
 * const attn = new GroupedQueryAttention(shape, new RotaryEmbedding(8, 10000), 1);
 * assert.equal(attn.k_proj.apply(tf.ones([1, 32])).shape[1], 16); // two key heads of 8
 * assert.deepEqual(attn.apply(tf.randomNormal([2, 5, 32])).shape, [2, 5, 32]);
 * attn.dispose();
 * ```
 */
export class GroupedQueryAttention extends Module {
  /** Queries, `hiddenSize → numHeads · headDim`. */
  q_proj: Module;
  /** Keys, `hiddenSize → numKeyValueHeads · headDim`. */
  k_proj: Module;
  /** Values, `hiddenSize → numKeyValueHeads · headDim`. */
  v_proj: Module;
  /** Output, `numHeads · headDim → hiddenSize`. */
  o_proj: Module;
  /** The rotary embeddings (shared by every layer of a model; no parameters). */
  rotary_emb: RotaryEmbedding;
  /** Query heads. */
  readonly numHeads: number;
  /** Key/value heads. */
  readonly numKeyValueHeads: number;

  /** The attention of one layer shaped by `shape`, rotating by `rotary`, its weights seeded from `seed`. */
  constructor(shape: AttentionShape, rotary: RotaryEmbedding, seed: number) {
    super();
    const { hiddenSize, numHeads, numKeyValueHeads, headDim, attentionBias, outputBias } = shape;
    if (numHeads % numKeyValueHeads !== 0) {
      throw new RangeError(
        `GroupedQueryAttention: numHeads ${numHeads} is not a multiple of numKeyValueHeads ${numKeyValueHeads}.`,
      );
    }
    this.q_proj = new HFLinear(hiddenSize, numHeads * headDim, { bias: attentionBias, seed });
    this.k_proj = new HFLinear(hiddenSize, numKeyValueHeads * headDim, { bias: attentionBias, seed: seed + 2 });
    this.v_proj = new HFLinear(hiddenSize, numKeyValueHeads * headDim, { bias: attentionBias, seed: seed + 4 });
    this.o_proj = new HFLinear(numHeads * headDim, hiddenSize, { bias: outputBias, seed: seed + 6 });
    this.rotary_emb = rotary;
    this.numHeads = numHeads;
    this.numKeyValueHeads = numKeyValueHeads;
  }

  /** Queries, keys and values of `x` for positions from `start`: rotated, and the shared heads repeated. */
  private project(x: tf.Tensor, start: number): [tf.Tensor, tf.Tensor, tf.Tensor] {
    const groups = this.numHeads / this.numKeyValueHeads;
    const q = this.rotary_emb.rotate(this.q_proj.apply(x), start, this.numHeads);
    const k = this.rotary_emb.rotate(this.k_proj.apply(x), start, this.numKeyValueHeads);
    const v = this.v_proj.apply(x);
    return [q, repeatHeads(k, this.numKeyValueHeads, groups), repeatHeads(v, this.numKeyValueHeads, groups)];
  }

  /** The attention output for `x` `[batch, time, hiddenSize]` at positions `0 … time − 1`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.forward(x, fromStart(x)));
  }

  /** The same with the mask given (`positions.start` must be 0: without a cache every position is in `x`). */
  forward(x: tf.Tensor, positions: Positions): tf.Tensor {
    return tf.tidy(() => {
      const [q, k, v] = this.project(x, 0);
      return this.o_proj.apply(causalAttention(q, k, v, this.numHeads, positions.mask));
    });
  }

  /** The output for the newest positions `x`, given the keys and values of the earlier ones (no gradients). */
  forwardCached(x: tf.Tensor, positions: Positions, past: LayerCache | null): { y: tf.Tensor; cache: LayerCache } {
    return tidy(() => {
      const [q, k, v] = this.project(x, positions.start);
      const { out, cache } = cachedAttention(q, k, v, this.numHeads, positions.mask, past);
      return { y: this.o_proj.apply(out), cache };
    });
  }

  /** Head counts. */
  override extraRepr(): string {
    return `num_heads=${this.numHeads}, num_key_value_heads=${this.numKeyValueHeads}`;
  }
}

/**
 * The SwiGLU perceptron, Llama's `LlamaMLP`: `down_proj(silu(gate_proj(x)) · up_proj(x))`, a gated linear
 * unit whose gate goes through SiLU.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import assert from "node:assert/strict";
 * import { SwiGLUMLP } from "./layers.ts";
 * const mlp = new SwiGLUMLP(16, 40, false, 1);
 * assert.equal(String(mlp.gate_proj), "HFLinear(in_features=16, out_features=40, bias=false)");
 * assert.deepEqual(mlp.apply(tf.ones([2, 3, 16])).shape, [2, 3, 16]);
 * mlp.dispose();
 * ```
 */
export class SwiGLUMLP extends Module {
  /** The gate, `hidden → intermediate`. */
  gate_proj: Module;
  /** The gated values, `hidden → intermediate`. */
  up_proj: Module;
  /** Back to `hidden`. */
  down_proj: Module;

  /** A perceptron from `hiddenSize` through `intermediateSize` and back, with or without biases. */
  constructor(hiddenSize: number, intermediateSize: number, bias: boolean, seed: number) {
    super();
    this.gate_proj = new HFLinear(hiddenSize, intermediateSize, { bias, seed });
    this.up_proj = new HFLinear(hiddenSize, intermediateSize, { bias, seed: seed + 2 });
    this.down_proj = new HFLinear(intermediateSize, hiddenSize, { bias, seed: seed + 4 });
  }

  /** `down_proj(silu(gate_proj(x)) · up_proj(x))`. */
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.down_proj.apply(siluGate(this.gate_proj.apply(x), this.up_proj.apply(x))));
  }
}
