/**
 * Training and evaluating a language model on batches of token windows: the step `train()` runs for each
 * batch, and the validation loss per character.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Module } from "../module.ts";
import { optimizerStep } from "../train.ts";
import type { TokenBatch } from "../words.ts";
import { sequenceCrossEntropy } from "./ops.ts";

/** A model that maps int32 tokens `[batch, time]` to logits `[batch, time, vocab]`, such as the `GPT`. */
export type LanguageModel = Module & { apply(tokens: tf.Tensor): tf.Tensor };

/** Runs `fn` with `model.training` (the GPT's dropout switch) set to `training`, if the model has that switch. */
function withTraining<R>(model: Module, training: boolean, fn: () => R): R {
  const switchable = model as { training?: boolean };
  if (typeof switchable.training !== "boolean") return fn();
  const before = switchable.training;
  switchable.training = training;
  try {
    return fn();
  } finally {
    switchable.training = before;
  }
}

/**
 * One optimizer step of next-token prediction on `batch`: the mean cross-entropy over its counted targets
 * (padding left out), minimised over `variables`. Returns the loss, which the caller disposes. It is the
 * `step` to give `train()` for a language model.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adam, train } from "../train.ts";
 * import { GPT } from "./model.ts";
 * import { languageModelStep } from "./train.ts";
 * import { TokenLoader, wordWindows } from "../words.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * const loader = new TokenLoader(wordWindows(["ann", "bob", "eve"], { blockSize: 16 }), { batchSize: 3 });
 * const history = await train(gpt, adam(0.01), loader, { epochs: 2, step: languageModelStep });
 * assert.equal(history.steps, 2); // one batch per epoch
 * gpt.dispose();
 * ```
 */
export function languageModelStep(
  model: Module,
  optimizer: tf.Optimizer,
  batch: TokenBatch,
  variables: tf.Variable[],
): tf.Scalar {
  const tokens = tf.tensor2d(batch.inputs, [batch.size, batch.time], "int32");
  const targets = tf.tensor2d(batch.targets, [batch.size, batch.time], "int32");
  return withTraining(
    model,
    true,
    () =>
      optimizerStep(
        optimizer,
        variables,
        [tokens, targets],
        () => sequenceCrossEntropy((model as LanguageModel).apply(tokens) as tf.Tensor3D, targets),
      ),
  );
}

/** What {@linkcode evaluateLoss} measures. */
export interface LossReport {
  /** Mean cross-entropy per counted target, in nats: per character, the end of each word counting as one. */
  loss: number;
  /** Number of counted targets. */
  tokens: number;
}

/**
 * The mean next-token cross-entropy of `model` over every counted target of `batches` (nats per character;
 * each word's end counts as a character), with dropout off. Async, as GPU backends read results back so.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { GPT } from "./model.ts";
 * import { evaluateLoss } from "./train.ts";
 * import { TokenLoader, wordWindows } from "../words.ts";
 * const gpt = new GPT({ vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 });
 * const loader = new TokenLoader(wordWindows(["ann", "bob"], { blockSize: 16 }), { batchSize: 64 });
 * const { loss, tokens } = await evaluateLoss(gpt, loader);
 * assert.ok(Math.abs(loss - Math.log(30)) < 0.5); // about ln 30 = 3.4 nats before training
 * assert.equal(tokens, 8); // a, n, n, end and b, o, b, end
 * gpt.dispose();
 * ```
 */
export async function evaluateLoss(model: Module, batches: Iterable<TokenBatch>): Promise<LossReport> {
  let total: tf.Scalar = tf.scalar(0);
  let tokens = 0;
  try {
    for (const batch of batches) {
      if (batch.tokens === 0) continue;
      const next = withTraining(model, false, () =>
        tf.tidy(() => {
          const x = tf.tensor2d(batch.inputs, [batch.size, batch.time], "int32");
          const y = tf.tensor2d(batch.targets, [batch.size, batch.time], "int32");
          const loss = sequenceCrossEntropy((model as LanguageModel).apply(x) as tf.Tensor3D, y);
          return tf.add(total, tf.mul(loss, batch.tokens)) as tf.Scalar;
        }));
      total.dispose();
      total = next;
      tokens += batch.tokens;
    }
    if (tokens === 0) throw new Error("evaluateLoss: the batches hold no counted target.");
    return { loss: (await total.data())[0] / tokens, tokens };
  } finally {
    total.dispose();
  }
}
