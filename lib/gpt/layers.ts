/**
 * The transformer's own layers, besides `Linear`: an embedding table, layer normalisation and GELU, each
 * PyTorch's module of the same name, built on the hand-written operations of `ops.ts`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { checkDim, nextSeed } from "../layers.ts";
import { Module } from "../module.ts";
import { tfSeed } from "../tfjs_internals.ts";
import { embeddingLookup, gelu, layerNorm } from "./ops.ts";

/**
 * A lookup table of `num` vectors of `dim` values, PyTorch's `nn.Embedding`; its parameter is `weight`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { Embedding } from "./layers.ts";
 * const table = new Embedding(30, 8, { seed: 1 });
 * console.log(table.apply(tf.tensor2d([[1, 2, 3]], [1, 3], "int32")).shape); // [1, 3, 8]
 * table.dispose();
 * ```
 */
export class Embedding extends Module {
  /** The table, `[num, dim]`; row `i` is the vector of id `i`. */
  weight: tf.Variable<tf.Rank.R2>;

  /**
   * A table of `num` rows of `dim` values drawn from N(0, `std`²) (GPT-2's 0.02 by default; PyTorch's own
   * default is 1).
   */
  constructor(num: number, dim: number, options: { seed?: number; std?: number } = {}) {
    super();
    checkDim("Embedding", "num", num);
    checkDim("Embedding", "dim", dim);
    const seed = tfSeed(options.seed ?? nextSeed());
    this.weight = tf.tidy(() => tf.variable(tf.randomNormal([num, dim], 0, options.std ?? 0.02, "float32", seed)));
  }

  /** The rows of the int32 `ids`: `[...ids.shape, dim]`. */
  apply(ids: tf.Tensor): tf.Tensor {
    return embeddingLookup(this.weight, ids);
  }

  /** Sizes, as PyTorch prints them. */
  override extraRepr(): string {
    return `${this.weight.shape[0]}, ${this.weight.shape[1]}`;
  }
}

/**
 * Layer normalisation over the last axis with a learned `weight` (ones at first) and `bias` (zeros), PyTorch's
 * `nn.LayerNorm(width, eps=1e-5)`.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { LayerNorm } from "./layers.ts";
 * const norm = new LayerNorm(3);
 * norm.apply(tf.tensor2d([[1, 2, 3]])).print(); // [[-1.2247, 0, 1.2247]]
 * norm.dispose();
 * ```
 */
export class LayerNorm extends Module {
  /** Scale, `[width]`. */
  weight: tf.Variable<tf.Rank.R1>;
  /** Shift, `[width]`. */
  bias: tf.Variable<tf.Rank.R1>;
  /** Added to the variance before the square root. */
  readonly epsilon: number;

  /** A layer normalising `width` features. */
  constructor(width: number, epsilon = 1e-5) {
    super();
    checkDim("LayerNorm", "width", width);
    // tidy frees the initial values; the variables keep copies of their own.
    this.weight = tf.tidy(() => tf.variable(tf.ones([width])));
    this.bias = tf.tidy(() => tf.variable(tf.zeros([width])));
    this.epsilon = epsilon;
  }

  /** Normalises the last axis of `x`. */
  apply<T extends tf.Tensor>(x: T): T {
    return layerNorm(x, this.weight, this.bias, this.epsilon);
  }

  /** Width and ε, as PyTorch prints them. */
  override extraRepr(): string {
    return `(${this.weight.shape[0]},), eps=${this.epsilon}`;
  }
}

/**
 * The activation `x · Φ(x)` (exact, with erf), PyTorch's `nn.GELU()`; it has no parameters.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { GELU } from "./layers.ts";
 * new GELU().apply(tf.tensor1d([-1, 0, 1])).print(); // [-0.1587, 0, 0.8413]
 * ```
 */
export class GELU extends Module {
  /** GELU of every value. */
  apply<T extends tf.Tensor>(x: T): T {
    return gelu(x);
  }
}
