import * as tf from "@tensorflow/tfjs";
import { initBackend, Linear, LinearWithLoRA, LinearWithLoRAMerged, LoRALayer, loraScaling, ReLU } from "../lib/mod.ts";
import {
  assert,
  assertBitIdentical,
  assertClose,
  assertEquals,
  assertNoLeak,
  assertThrows,
  maxAbsDiff,
} from "./assert.ts";

await initBackend();

/** Gives A and B non-zero values by a few optimizer steps toward a random target, so merges are non-trivial. */
function trainLoRA(layer: LinearWithLoRA, steps = 5): void {
  const x = tf.randomNormal([8, layer.linear.inFeatures], 0, 1, "float32", 7) as tf.Tensor2D;
  const target = tf.randomNormal([8, layer.linear.outFeatures], 0, 1, "float32", 8);
  const optimizer = tf.train.adam(0.05);
  for (let i = 0; i < steps; i++) {
    optimizer.minimize(() => tf.losses.meanSquaredError(target, layer.apply(x)) as tf.Scalar, false, [
      layer.lora.A,
      layer.lora.B,
    ]);
  }
  optimizer.dispose();
  tf.dispose([x, target]);
}

Deno.test("LoRALayer has A [in, rank] with std 1/sqrt(rank), B [rank, out] of zeros", () => {
  const lora = new LoRALayer(500, 300, 4, 8, { seed: 1 });
  assertEquals(lora.A.shape, [500, 4]);
  assertEquals(lora.B.shape, [4, 300]);
  assertEquals(Array.from(new Set(lora.B.dataSync())), [0]);
  const a = Array.from(lora.A.dataSync());
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  assert.ok(Math.abs(std - 0.5) < 0.02, `std of A is ${std}, expected 1/sqrt(4) = 0.5`);
  lora.dispose();
});

Deno.test("scaling conventions: tutorial alpha, paper alpha/r, rsLoRA alpha/sqrt(r)", () => {
  assertEquals([loraScaling(8, 4), loraScaling(8, 4, "paper"), loraScaling(8, 16, "rslora")], [8, 2, 2]);
  const layer = new LoRALayer(6, 5, 2, 3, { scaling: "paper", seed: 2 });
  layer.B.assign(tf.ones([2, 5]));
  const x = tf.ones([1, 6]) as tf.Tensor2D;
  // x·A·B with B all ones sums A's entries into every output; the paper scales that by 3 / 2.
  const expected = tf.mul(tf.sum(layer.A), 1.5).dataSync()[0];
  const out = layer.apply(x).dataSync();
  for (const v of out) assert.ok(Math.abs(v - expected) < 1e-5, `${v} vs ${expected}`);
  assertThrows(() => loraScaling(1, 1, "other" as "paper"), RangeError, /expected "tutorial", "paper" or "rslora"/);
  tf.dispose([x]);
  layer.dispose();
});

Deno.test("LoRA at initialisation leaves every output bit-identical to the base layer", () => {
  for (const Wrapper of [LinearWithLoRA, LinearWithLoRAMerged]) {
    const base = new Linear(20, 7, { seed: 3 });
    const x = tf.randomNormal([5, 20], 0, 1, "float32", 4) as tf.Tensor2D;
    const expected = base.apply(x);
    const wrapped = new Wrapper(base.clone(), 2, 4, { seed: 5 });
    const got = wrapped.apply(x);
    assertBitIdentical(got, expected, Wrapper.name);
    tf.dispose([x, expected, got]);
    base.dispose();
    wrapped.dispose();
  }
});

Deno.test("after training A and B, merged and unmerged outputs agree within 1e-5", () => {
  const layer = new LinearWithLoRA(new Linear(30, 12, { seed: 6 }), 3, 2, { seed: 7 });
  trainLoRA(layer);
  assert.ok(tf.abs(layer.lora.B).max().dataSync()[0] > 0.01, "B should have moved away from zero");
  const merged = new LinearWithLoRAMerged(layer.linear.clone(), 3, 2);
  merged.lora.A.assign(layer.lora.A);
  merged.lora.B.assign(layer.lora.B);
  const x = tf.randomNormal([16, 30], 0, 1, "float32", 9) as tf.Tensor2D;
  const unmergedOut = layer.apply(x);
  const mergedOut = merged.apply(x);
  // Both differ from the base output, so the agreement below is not the trivial one.
  const baseOut = layer.linear.apply(x);
  assert.ok(tf.abs(tf.sub(unmergedOut, baseOut)).max().dataSync()[0] > 1e-2);
  assertClose(mergedOut, unmergedOut, 1e-5, "x·(W + s·A·B) + b vs x·W + b + s·x·A·B");
  tf.dispose([x, unmergedOut, mergedOut, baseOut]);
  layer.dispose();
  merged.dispose();
});

Deno.test("bad arguments are clear errors naming what was expected", () => {
  const base = new Linear(10, 6);
  const count = tf.memory().numTensors;
  assertThrows(() => new LinearWithLoRA(base, 0, 1), RangeError, /integer from 1 to min\(in, out\) = 6.*got 0/);
  assertThrows(() => new LinearWithLoRA(base, -2, 1), RangeError, /got -2/);
  assertThrows(() => new LinearWithLoRA(base, 1.5, 1), RangeError, /got 1.5/);
  assertThrows(() => new LinearWithLoRA(base, 7, 1), RangeError, /10×6 layer; got 7/);
  assertThrows(() => new LoRALayer(10, 6, 2, Number.NaN), RangeError, /alpha must be a finite number; got NaN/);
  assertThrows(() => new LoRALayer(10, 6, 2, Infinity), RangeError, /got Infinity/);
  assertThrows(() => new LinearWithLoRA(new ReLU(), 2, 1), TypeError, /wraps a Linear layer; got ReLU/);
  assertThrows(() => new Linear(0, 3), RangeError, /inFeatures must be a positive integer; got 0/);
  assertEquals(tf.memory().numTensors, count, "a rejected layer must not leave tensors behind");
  const layer = new LinearWithLoRA(base, 2, 1);
  const wrong = tf.zeros([3, 11]) as tf.Tensor2D;
  assertThrows(
    () => layer.apply(wrong),
    RangeError,
    /Linear expects input of shape \[batch, 10\] or \[\.\.\., 10\]; got \[3, 11\]/,
  );
  assertThrows(() => layer.apply(tf.zeros([10]) as unknown as tf.Tensor2D), RangeError, /got \[10\]/);
  wrong.dispose();
  layer.dispose();
});

Deno.test("forward passes and clones leave no tensors behind", async () => {
  const layer = new LinearWithLoRAMerged(new Linear(8, 4), 2, 2);
  const x = tf.ones([2, 8]) as tf.Tensor2D;
  await assertNoLeak(() => layer.apply(x).dispose());
  await assertNoLeak(() => layer.clone().dispose());
  await assertNoLeak(() => layer.lora.deltaWeight().dispose());
  x.dispose();
  layer.dispose();
});

Deno.test("every seed repeats, 0 included (tfjs alone treats 0 as no seed)", () => {
  for (const seed of [0, 1, 123]) {
    const [a, b] = [new Linear(6, 4, { seed }), new Linear(6, 4, { seed })];
    const [la, lb] = [new LoRALayer(6, 4, 2, 1, { seed }), new LoRALayer(6, 4, 2, 1, { seed })];
    assertBitIdentical(a.weight, b.weight, `Linear weight, seed ${seed}`);
    assertBitIdentical(a.bias!, b.bias!, `Linear bias, seed ${seed}`);
    assertBitIdentical(la.A, lb.A, `LoRA A, seed ${seed}`);
    [a, b, la, lb].forEach((layer) => layer.dispose());
  }
  const [zero, one] = [new Linear(6, 4, { seed: 0 }), new Linear(6, 4, { seed: 1 })];
  assert.ok(maxAbsDiff(zero.weight, one.weight) > 0, "different seeds, different weights");
  zero.dispose();
  one.dispose();
});

Deno.test("the tutorial's layers act on the last axis: [batch, time, in] gives what each row gives alone", () => {
  const x = tf.randomNormal([3, 5, 12], 0, 1, "float32", 21);
  const rows = tf.reshape(x, [15, 12]) as tf.Tensor2D;
  for (
    const make of [
      () => new Linear(12, 7, { seed: 22 }),
      () => new LoRALayer(12, 7, 3, 2, { seed: 23 }),
      () => new LinearWithLoRA(new Linear(12, 7, { seed: 24 }), 3, 2, { seed: 25 }),
      () => new LinearWithLoRAMerged(new Linear(12, 7, { seed: 24 }), 3, 2, { seed: 25 }),
    ]
  ) {
    const layer = make();
    // B starts at zero; give the LoRA layers a non-zero update so the check is not trivial.
    for (const { name, variable } of layer.namedParameters()) {
      if (name.endsWith("B")) tf.tidy(() => variable.assign(tf.randomNormal(variable.shape, 0, 0.5, "float32", 26)));
    }
    const y = layer.apply(x);
    assertEquals(y.shape, [3, 5, 7], layer.constructor.name);
    const expected = tf.reshape(layer.apply(rows), [3, 5, 7]);
    assertBitIdentical(y, expected, `${layer.constructor.name} on [3, 5, 12]`);
    tf.dispose([y, expected]);
    layer.dispose();
  }
  const layer = new Linear(12, 7);
  assertThrows(() => layer.apply(tf.zeros([2, 3, 11])), RangeError, /\[\.\.\., 12\]; got \[2, 3, 11\]/);
  layer.dispose();
  tf.dispose([x, rows]);
});
