/**
 * Models, inputs and snapshots that several test files share.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { loraLayers, type Module, MultilayerPerceptron } from "../lib/mod.ts";
import { assertEquals } from "./assert.ts";

export const FIXTURES = "data/fixtures";
/** The tutorial's perceptron, 784-128-256-10. */
export const mlp = (seed = 123): MultilayerPerceptron => new MultilayerPerceptron(784, 128, 256, 10, { seed });
/** A small perceptron, 20-16-12-5, for tests that need many models. */
export const small = (seed = 1): MultilayerPerceptron => new MultilayerPerceptron(20, 16, 12, 5, { seed });

/** Values of every parameter, by name, so a test can tell whether a model changed at all. */
export function snapshot(model: Module): Map<string, Float32Array> {
  return new Map(model.namedParameters().map(({ name, variable }) => [name, variable.dataSync() as Float32Array]));
}

/** Asserts that every parameter of `model` holds what {@linkcode snapshot} recorded. */
export function assertUnchanged(model: Module, before: Map<string, Float32Array>): void {
  const after = snapshot(model);
  assertEquals([...after.keys()], [...before.keys()]);
  for (const [name, values] of before) assertEquals(after.get(name), values, name);
}

/**
 * Gives B of adapter `name` random values (it starts at zero, which would make tests trivial), sized so that
 * `scaling·A·B` is about as large as the base weights, as after finetuning. `seed` must not be 0: tfjs treats a
 * zero seed as no seed.
 */
export function randomize(model: Module, name: string, seed: number): void {
  for (const [, layer] of loraLayers(model)) {
    const lora = layer.adapters.get(name);
    if (lora === undefined) continue;
    const std = 1 / Math.sqrt(layer.linear.inFeatures) / lora.scaling;
    tf.tidy(() => lora.B.assign(tf.randomNormal(lora.B.shape, 0, std, "float32", seed++)));
  }
}

/** A `[rows, width]` batch of values in [0, 1). */
export const input = (rows: number, width: number, seed = 5): tf.Tensor2D =>
  tf.randomUniform([rows, width], 0, 1, "float32", seed) as tf.Tensor2D;
