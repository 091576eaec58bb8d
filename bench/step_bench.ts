/**
 * Micro-benchmarks of the pieces of a training step, for `deno bench` (which reports time per call and its
 * spread): a whole step, Adam's update alone, and the loss with its gradient, each against the tfjs version
 * it replaces. On the backend `LORA_BACKEND` names (default wasm).
 *
 *     deno bench --allow-read --allow-env bench/step_bench.ts
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  Adam,
  addLoRA,
  initBackend,
  MultilayerPerceptron,
  softmaxCrossEntropy,
  trainableVariables,
  trainStep,
} from "../lib/mod.ts";

await initBackend();

const batch = {
  features: Float32Array.from({ length: 64 * 784 }, (_, i) => ((i * 7919) % 255) / 255),
  labels: Int32Array.from({ length: 64 }, (_, i) => i % 10),
  size: 64,
};

function stepBench(name: string, model: MultilayerPerceptron, optimizer: tf.Optimizer, baseline = false): void {
  const variables = trainableVariables(model);
  Deno.bench(name, { group: "train step", baseline }, () => {
    trainStep(model, optimizer, batch, variables).dispose();
  });
}

const base = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
stepBench("full finetuning, tf.train.adam", base.clone(), tf.train.adam(0.005, 0.9, 0.999, 1e-8), true);
stepBench("full finetuning, this library's Adam", base.clone(), new Adam(0.005));
stepBench("LoRA r=4, this library's Adam", addLoRA(base.clone(), { rank: 4, alpha: 8 }), new Adam(0.005));

// Adam's update alone, on gradients shaped like the whole MLP's (136,074 parameters).
const variables = trainableVariables(base.clone());
const grads = variables.map((v) => ({ name: v.name, tensor: tf.randomNormal(v.shape, 0, 0.01) }));
for (
  const [name, optimizer, baseline] of [
    ["tf.train.adam", tf.train.adam(1e-4, 0.9, 0.999, 1e-8), true],
    ["this library's Adam, fused loop", new Adam(1e-4), false],
    ["this library's Adam, tensor kernels", new Adam(1e-4, { fused: false }), false],
  ] as const
) {
  Deno.bench(name, { group: "Adam update, 136k parameters", baseline }, () => optimizer.applyGradients(grads));
}

// The loss and its gradient with respect to the logits.
const logits = tf.variable(tf.randomNormal([64, 10])) as tf.Variable<tf.Rank.R2>;
const targets = tf.oneHot(tf.tensor1d(batch.labels, "int32"), 10).toFloat() as tf.Tensor2D;
for (
  const [name, loss, baseline] of [
    ["tf.losses.softmaxCrossEntropy", () => tf.losses.softmaxCrossEntropy(targets, logits) as tf.Scalar, true],
    ["softmaxCrossEntropy, hand-written gradient", () => softmaxCrossEntropy(logits, targets), false],
  ] as const
) {
  Deno.bench(name, { group: "cross-entropy, value and gradient", baseline }, () => {
    const { value, grads } = tf.variableGrads(loss, [logits]);
    tf.dispose([value, ...Object.values(grads)]);
  });
}
