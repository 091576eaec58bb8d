/**
 * Training and evaluation: the tutorial's `train` and `compute_accuracy`, with Adam and cross-entropy.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type Module, trainableVariables } from "./module.ts";
import type { Batch } from "./mnist.ts";
import { Adam } from "./optim.ts";
import { softmaxCrossEntropy } from "./ops.ts";
import { releaseAbandonedTape } from "./tfjs_internals.ts";

export { Adam, type AdamOptions, type ParameterGroup } from "./optim.ts";

/**
 * Adam as PyTorch's `torch.optim.Adam(params, lr)` sets it up: β₁ = 0.9, β₂ = 0.999, ε = 1e-8
 * (tfjs's own default ε is 1e-7). It is this library's {@linkcode Adam}, a `tf.Optimizer` that takes far fewer
 * kernels per step than `tf.train.adam`.
 *
 * @example
 * ```ts
 * import { adam } from "./train.ts";
 * const optimizer = adam(0.005);
 * optimizer.dispose();
 * ```
 */
export function adam(learningRate: number): Adam {
  return new Adam(learningRate); // Adam's defaults are PyTorch's, and it checks the learning rate itself
}

/**
 * Mean cross-entropy between logits `[batch, classes]` and one-hot targets `[batch, classes]`:
 * PyTorch's `F.cross_entropy`, with the hand-written gradient of {@linkcode softmaxCrossEntropy}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { crossEntropy } from "./train.ts";
 * const targets = tf.oneHot(tf.tensor1d([3], "int32"), 10).toFloat() as tf.Tensor2D;
 * const loss = crossEntropy(tf.zeros([1, 10]), targets).dataSync()[0];
 * assert.ok(Math.abs(loss - Math.log(10)) < 1e-5); // ln 10 ≈ 2.3026: uniform logits over ten classes
 * ```
 */
export function crossEntropy(logits: tf.Tensor2D, oneHotTargets: tf.Tensor2D): tf.Scalar {
  return softmaxCrossEntropy(logits, oneHotTargets);
}

/** What {@linkcode train} reports every `logEvery` batches. */
export interface Progress {
  /** Zero-based epoch. */
  epoch: number;
  /** Number of epochs in this run. */
  epochs: number;
  /** Batches done in this epoch. */
  batch: number;
  /** Batches per epoch. */
  batches: number;
  /** Loss of the latest batch. */
  loss: number;
  /** Seconds since training started. */
  seconds: number;
}

/** What {@linkcode train} reports after each epoch. */
export interface EpochSummary {
  /** Zero-based epoch. */
  epoch: number;
  /** Mean training loss over the epoch's batches. */
  meanLoss: number;
  /** Seconds this epoch took. */
  seconds: number;
}

/** One optimizer step on one batch, returning the batch's loss (which the caller disposes). */
export type TrainStep<B> = (model: Module, optimizer: tf.Optimizer, batch: B, variables: tf.Variable[]) => tf.Scalar;

/** Options for {@linkcode train}. */
export interface TrainOptions<B = Batch> {
  /** Passes over the training data. */
  epochs: number;
  /** Called every `logEvery` batches (and after the last batch of each epoch); may be async. */
  onProgress?: (progress: Progress) => void | Promise<void>;
  /** Called after each epoch; may be async (to evaluate, say). */
  onEpochEnd?: (summary: EpochSummary) => void | Promise<void>;
  /** Batches between progress reports; default 50. Each report reads the loss back from the backend. */
  logEvery?: number;
  /**
   * How one batch is trained: {@linkcode trainStep} (a classifier's features and labels) by default; a
   * language model passes `languageModelStep` with batches of token windows.
   */
  step?: TrainStep<B>;
}

/** The record of a training run. */
export interface TrainHistory {
  /** Each epoch's summary. */
  epochs: EpochSummary[];
  /** The loss at every progress report, as `[global step, loss]`, for plotting. */
  losses: [number, number][];
  /** Total optimizer steps. */
  steps: number;
  /** Total seconds. */
  seconds: number;
}

/**
 * Trains `model` with `optimizer` on the batches of `loader` (anything iterable with a `length` in batches,
 * such as a `DataLoader`), updating only its trainable variables (so a model whose base layers were frozen
 * with `freezeLinearLayers` trains only A and B).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adam, train } from "./train.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { DataLoader, loadMnist } from "./mnist.ts";
 * const { train: data } = await loadMnist({ limit: 640 });
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * const optimizer = adam(0.005);
 * const history = await train(model, optimizer, new DataLoader(data, { batchSize: 64, shuffle: true }), {
 *   epochs: 1,
 * });
 * assert.equal(history.steps, 10); // 640 images in batches of 64
 * optimizer.dispose();
 * model.dispose();
 * ```
 */
export async function train<B = Batch>(
  model: Module,
  optimizer: tf.Optimizer,
  loader: Iterable<B> & { readonly length: number },
  options: TrainOptions<B>,
): Promise<TrainHistory> {
  const { epochs, onProgress, onEpochEnd } = options;
  const step = options.step ?? (trainStep as unknown as TrainStep<B>);
  const logEvery = options.logEvery ?? 50;
  if (!Number.isInteger(epochs) || epochs < 0) {
    throw new RangeError(`train: epochs must be a non-negative integer; got ${epochs}.`);
  }
  if (!Number.isInteger(logEvery) || logEvery <= 0) {
    throw new RangeError(`train: logEvery must be a positive integer; got ${logEvery}.`);
  }
  const variables = trainableVariables(model);
  if (variables.length === 0) throw new Error("train: the model has no trainable parameters.");

  const history: TrainHistory = { epochs: [], losses: [], steps: 0, seconds: 0 };
  const start = performance.now();
  const batches = loader.length;
  for (let epoch = 0; epoch < epochs; epoch++) {
    const epochStart = performance.now();
    // The loss is summed on the backend and read once per epoch, not once per batch.
    let lossSum: tf.Scalar = tf.scalar(0);
    let batch = 0;
    try {
      for (const data of loader) {
        const loss = step(model, optimizer, data, variables);
        try {
          const nextSum = tf.add(lossSum, loss) as tf.Scalar;
          lossSum.dispose();
          lossSum = nextSum;
          batch++;
          history.steps++;
          if (batch % logEvery === 0 || batch === batches) {
            const value = (await loss.data())[0];
            history.losses.push([history.steps, value]);
            const seconds = (performance.now() - start) / 1000;
            await onProgress?.({ epoch, epochs, batch, batches, loss: value, seconds });
          }
        } finally {
          loss.dispose();
        }
      }
    } catch (error) {
      lossSum.dispose(); // a failed step or callback leaves no tensor behind
      throw error;
    }
    if (batch === 0) {
      lossSum.dispose();
      throw new Error("train: the loader yielded no batches.");
    }
    const meanLoss = (await lossSum.data())[0] / batch;
    lossSum.dispose();
    const summary = { epoch, meanLoss, seconds: (performance.now() - epochStart) / 1000 };
    history.epochs.push(summary);
    await onEpochEnd?.(summary);
  }
  history.seconds = (performance.now() - start) / 1000;
  return history;
}

/**
 * One optimizer step on one batch; returns the batch's loss as a scalar tensor the caller must dispose.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adam, trainStep } from "./train.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { trainableVariables } from "./module.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * const optimizer = adam(0.01);
 * const batch = { features: new Float32Array(8), labels: new Int32Array([0, 1]), size: 2 };
 * const loss = trainStep(model, optimizer, batch, trainableVariables(model));
 * assert.equal(loss.rank, 0);
 * assert.ok(loss.dataSync()[0] > 0); // a cross-entropy, positive
 * loss.dispose();
 * ```
 */
export function trainStep(
  model: Module,
  optimizer: tf.Optimizer,
  batch: Batch,
  variables: tf.Variable[],
): tf.Scalar {
  const width = batch.features.length / batch.size;
  const x = tf.tensor2d(batch.features, [batch.size, width]);
  return optimizerStep(optimizer, variables, [x], () => {
    const logits = model.apply(x) as tf.Tensor2D;
    return crossEntropy(logits, oneHot(batch.labels, logits.shape[1]));
  });
}

/**
 * The part every training step shares: minimise `loss()` over `variables` with `optimizer`, free `inputs`
 * afterwards, and if anything throws, release the gradient tape tfjs would otherwise leave recording. Returns
 * the loss, which the caller disposes. {@linkcode trainStep} and the GPT's `languageModelStep` are both this
 * with their own inputs and loss.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { adam, optimizerStep } from "./train.ts";
 * const w = tf.variable(tf.scalar(3));
 * const x = tf.scalar(2);
 * const loss = optimizerStep(adam(0.1), [w], [x], () => tf.square(tf.mul(w, x)) as tf.Scalar);
 * assert.equal(loss.dataSync()[0], 36); // (3·2)², before the step
 * assert.ok(x.isDisposed);
 * loss.dispose();
 * ```
 */
export function optimizerStep(
  optimizer: tf.Optimizer,
  variables: tf.Variable[],
  inputs: tf.Tensor[],
  loss: () => tf.Scalar,
): tf.Scalar {
  try {
    return optimizer.minimize(loss, true, variables)!;
  } catch (error) {
    releaseAbandonedTape();
    throw error;
  } finally {
    tf.dispose(inputs);
  }
}

/**
 * Percentage of examples whose highest logit is the true label: the tutorial's `compute_accuracy`. It is async
 * because GPU backends (webgpu) can only read results back asynchronously.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeAccuracy } from "./train.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { DataLoader, loadMnist } from "./mnist.ts";
 * const { test } = await loadMnist({ limit: 100 });
 * const model = new MultilayerPerceptron(784, 128, 256, 10);
 * const accuracy = await computeAccuracy(model, new DataLoader(test, { batchSize: 64 }));
 * assert.ok(accuracy >= 0 && accuracy < 50); // a percentage, about 10 (chance) before training
 * model.dispose();
 * ```
 */
export async function computeAccuracy(model: Module, loader: Iterable<Batch>): Promise<number> {
  let correct = 0, total = 0;
  for (const batch of loader) {
    const width = batch.features.length / batch.size;
    const predicted = tf.tidy(() => {
      const logits = model.apply(tf.tensor2d(batch.features, [batch.size, width]));
      return tf.argMax(logits, 1);
    });
    const labels = await predicted.data();
    predicted.dispose();
    for (let i = 0; i < batch.size; i++) if (labels[i] === batch.labels[i]) correct++;
    total += batch.size;
  }
  if (total === 0) throw new Error("computeAccuracy: the loader yielded no examples.");
  return (correct / total) * 100;
}

function oneHot(labels: Int32Array, classes: number): tf.Tensor2D {
  const values = new Float32Array(labels.length * classes);
  labels.forEach((label, i) => {
    if (!(label >= 0 && label < classes)) {
      throw new RangeError(`Label ${label} at index ${i} is outside 0–${classes - 1}.`);
    }
    values[i * classes + label] = 1;
  });
  return tf.tensor2d(values, [labels.length, classes]);
}
