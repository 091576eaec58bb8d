/**
 * The tutorial's three-layer perceptron.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import { Linear, ReLU } from "./layers.ts";
import { Module, Sequential } from "./module.ts";

/**
 * `Linear → ReLU → Linear → ReLU → Linear`, returning logits. Its `layers` array can be edited in place, as
 * the tutorial does with `model.layers[0] = LinearWithLoRAMerged(model.layers[0], …)`; the layers are
 * named `layers.0` to `layers.4`, as in PyTorch's `nn.Sequential`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { LinearWithLoRAMerged } from "./lora.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * model.layers[0] = new LinearWithLoRAMerged(model.layers[0], 4, 8);
 * const logits = model.apply(tf.zeros([1, 784]));
 * assert.deepEqual(logits.shape, [1, 10]);
 * logits.dispose();
 * model.dispose();
 * ```
 */
export class MultilayerPerceptron extends Module {
  /** The sequence of layers; indices 0, 2 and 4 are the linear ones. */
  layers: Module[];

  /** Widths numFeatures → numHidden1 → numHidden2 → numClasses (the tutorial: 784, 128, 256, 10). */
  constructor(
    numFeatures: number,
    numHidden1: number,
    numHidden2: number,
    numClasses: number,
    options: { seed?: number } = {},
  ) {
    super();
    const seed = options.seed;
    const at = (i: number) => (seed === undefined ? {} : { seed: seed + 10 * i });
    this.layers = [];
    try {
      this.layers.push(new Linear(numFeatures, numHidden1, at(0)), new ReLU());
      this.layers.push(new Linear(numHidden1, numHidden2, at(1)), new ReLU());
      this.layers.push(new Linear(numHidden2, numClasses, at(2)));
    } catch (error) {
      this.dispose(); // free the layers built before the bad argument
      throw error;
    }
  }

  /** Logits `[batch, numClasses]` for images `x` of shape `[batch, numFeatures]`. */
  apply(x: tf.Tensor2D): tf.Tensor2D {
    return new Sequential(this.layers).apply(x) as tf.Tensor2D;
  }
}
