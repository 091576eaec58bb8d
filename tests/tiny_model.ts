/**
 * A small nested model, shaped like a transformer's module tree, for tests of everything that walks a
 * model by name: `blocks.{i}.attn.{q,v,out}_proj`, `blocks.{i}.mlp.{0,2}` and an output layer `lm_head`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Linear, Module, ReLU, Sequential } from "../lib/mod.ts";

/** Two projections added and projected back: the shape of attention's `q_proj`, `v_proj`, `out_proj`. */
export class Attn extends Module {
  q_proj: Module;
  v_proj: Module;
  out_proj: Module;
  constructor(width: number, seed: number) {
    super();
    this.q_proj = new Linear(width, width, { seed });
    this.v_proj = new Linear(width, width, { seed: seed + 2 });
    this.out_proj = new Linear(width, width, { seed: seed + 4 });
  }
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.out_proj.apply(tf.tanh(tf.add(this.q_proj.apply(x), this.v_proj.apply(x)))));
  }
}

/** A residual block: attention, then a two-layer perceptron. */
export class Block extends Module {
  attn: Attn;
  mlp: Sequential;
  constructor(width: number, seed: number) {
    super();
    this.attn = new Attn(width, seed);
    this.mlp = new Sequential([
      new Linear(width, 2 * width, { seed: seed + 6 }),
      new ReLU(),
      new Linear(2 * width, width, { seed: seed + 8 }),
    ]);
  }
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.add(x, this.attn.apply(x));
      return tf.add(h, this.mlp.apply(h));
    });
  }
}

/** Blocks over `[batch, time, width]`, then an output layer that "all-linear" must leave alone. */
export class TinyModel extends Module {
  blocks: Block[];
  lm_head: Linear;
  constructor(width = 6, vocab = 5, layers = 2, seed = 1) {
    super();
    this.blocks = Array.from({ length: layers }, (_, i) => new Block(width, seed + 20 * i));
    this.lm_head = new Linear(width, vocab, { bias: false, seed: seed + 100 });
  }
  apply(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.lm_head.apply(this.blocks.reduce((h, block) => block.apply(h), x)));
  }
  /** The output layer, as a Transformers model names it. */
  getOutputEmbeddings(): Module {
    return this.lm_head;
  }
}
