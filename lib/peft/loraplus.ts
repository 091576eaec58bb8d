/**
 * LoRA+ (Hayou, Ghosh & Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv 2402.12354):
 * the same adapters, trained with B learning `loraplusLrRatio` times faster than A. The paper's argument: with
 * B starting at zero and A random, one learning rate for both is too small for B or too large for A once the
 * width is large; a ratio of about 16 worked across its tasks.
 *
 * @module
 */
import { type Module, namedModules } from "../module.ts";
import { Adam, type AdamOptions } from "../optim.ts";

/** Options for {@linkcode createLoraPlusOptimizer}. */
export interface LoraPlusOptions extends Omit<AdamOptions, "groups"> {
  /** A's learning rate (PEFT's `lr`). */
  learningRate: number;
  /** How many times faster B learns: `η_B / η_A` (PEFT's `loraplus_lr_ratio`); at least 1 in the paper. */
  loraplusLrRatio: number;
}

/**
 * An {@linkcode Adam} whose parameter groups are LoRA+'s, as PEFT 0.21.0's `create_loraplus_optimizer`
 * (`optimizers/loraplus.py`) builds them: every trainable adapter parameter called `B` (LoRA's and DoRA's
 * up-projection, PEFT's `lora_B`) or with one axis (DoRA's magnitude, VeRA's λ vectors) learns at
 * `learningRate · loraplusLrRatio`; every other trainable parameter (A, and anything outside the adapters that
 * was left trainable) at `learningRate`. PEFT also puts trainable one-axis parameters outside the adapters
 * (biases, with `bias="all"`) in the fast group; here the base stays frozen, so that case does not arise.
 * PEFT's separate rate for adapters on embedding layers does not apply (adapters go on linear layers here),
 * and its weight decay is not offered (this Adam has none).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { addLoRA } from "./model.ts";
 * import { createLoraPlusOptimizer } from "./loraplus.ts";
 * import { getModule } from "../module.ts";
 * import { LoRALayer } from "../lora.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
 * const optimizer = createLoraPlusOptimizer(model, { learningRate: 1e-3, loraplusLrRatio: 16 });
 * const lora = getModule(model, "layers.0.lora") as LoRALayer;
 * assert.equal(optimizer.learningRateOf(lora.A), 1e-3);
 * assert.equal(optimizer.learningRateOf(lora.B), 16e-3);
 * optimizer.dispose();
 * model.dispose();
 * ```
 */
export function createLoraPlusOptimizer(model: Module, options: LoraPlusOptions): Adam {
  const { learningRate, loraplusLrRatio, ...adam } = options;
  if (!(typeof loraplusLrRatio === "number" && loraplusLrRatio > 0 && Number.isFinite(loraplusLrRatio))) {
    throw new RangeError(
      `createLoraPlusOptimizer: loraplusLrRatio must be a positive finite number; got ${loraplusLrRatio}.`,
    );
  }
  const adapters = namedModules(model).filter(([, module]) => module.isAdapter);
  if (adapters.length === 0) throw new Error("createLoraPlusOptimizer: the model has no adapters; add some first.");
  const fast = adapters.flatMap(([, adapter]) => adapter.namedParameters())
    .filter(({ name, variable }) => variable.trainable && (name === "B" || variable.rank === 1))
    .map(({ variable }) => variable);
  return new Adam(learningRate, {
    ...adam,
    groups: [{ variables: fast, learningRate: learningRate * loraplusLrRatio }],
  });
}
