import * as tf from "@tensorflow/tfjs";
import {
  addAdapter,
  addLoRA,
  applyMixedBatch,
  deleteAdapter,
  disableAdapters,
  enableAdapters,
  initBackend,
  Linear,
  LinearWithAdapters,
  listAdapters,
  loraLayers,
  mergeAdapter,
  namedParameters,
  setAdapter,
  trainableVariables,
  unmergeAdapter,
} from "../lib/mod.ts";
import {
  assert,
  assertBitIdentical,
  assertClose,
  assertEquals,
  assertNoLeak,
  assertThrows,
  maxAbsDiff,
} from "./assert.ts";

import { assertUnchanged, input, mlp, randomize, small, snapshot } from "./fixtures.ts";

await initBackend();

// Named adapters on one layer and on a model -------------------------------------------------------------

Deno.test("a model with only the default adapter keeps the tutorial's parameter names", () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8 });
  assertEquals(namedParameters(model).map((p) => p.name).slice(0, 4), [
    "layers.0.linear.weight",
    "layers.0.linear.bias",
    "layers.0.lora.A",
    "layers.0.lora.B",
  ]);
  assertEquals(listAdapters(model), ["default"]);
  model.dispose();
});

Deno.test("addAdapter: new adapters are frozen and inactive; names are lora_<name>; setAdapter switches", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2, seed: 1 });
  addAdapter(model, "rotated", { rank: 3, alpha: 1, seed: 2 });
  assertEquals(listAdapters(model), ["default", "rotated"]);
  assertEquals(namedParameters(model).slice(0, 6).map((p) => `${p.name}:${p.variable.trainable}`), [
    "layers.0.linear.weight:false",
    "layers.0.linear.bias:false",
    "layers.0.lora.A:true",
    "layers.0.lora.B:true",
    "layers.0.lora_rotated.A:false",
    "layers.0.lora_rotated.B:false",
  ]);
  assert.match(String(model), /\(lora_rotated\): LoRALayer\(in_dim=20, out_dim=16, rank=3, alpha=1, scaling=1\)/);
  randomize(model, "default", 1);
  randomize(model, "rotated", 100);
  const x = input(3, 20);
  const withDefault = model.apply(x);

  setAdapter(model, "rotated");
  const layer0 = model.layers[0] as LinearWithAdapters;
  assertEquals([layer0.activeAdapter, layer0.lora.rank], ["rotated", 3]);
  assertEquals(trainableVariables(model).length, 6); // A and B of "rotated" in three layers
  const withRotated = model.apply(x);
  assert.ok(maxAbsDiff(withRotated, withDefault) > 1e-3, "switching adapters changes the output");
  // Against an independent computation: base plus the rotated adapter, layer by layer.
  const expected = tf.tidy(() =>
    model.layers.reduce((h: tf.Tensor, layer) => {
      if (!(layer instanceof LinearWithAdapters)) return layer.apply(h);
      return tf.add(layer.linear.apply(h), layer.adapters.get("rotated")!.apply(h));
    }, x)
  );
  assertClose(withRotated, expected, 1e-6, "rotated adapter output");

  setAdapter(model, "default");
  const again = model.apply(x);
  assertBitIdentical(again, withDefault, "back to default");
  assertThrows(() => setAdapter(model, "nope"), Error, /no adapter "nope"; it has "default", "rotated"/);
  assertThrows(() => addAdapter(model, "rotated", { rank: 1, alpha: 1 }), Error, /layers.0 already has an adapter/);
  assertThrows(() => addAdapter(model, "a.b", { rank: 1, alpha: 1 }), RangeError, /letters, digits/);
  assertThrows(() => addAdapter(model, "__base__", { rank: 1, alpha: 1 }), RangeError, /"__base__" is reserved/);
  tf.dispose([x, withDefault, withRotated, expected, again]);
  model.dispose();
});

Deno.test("addAdapter with a rank too big for one layer changes nothing and leaks nothing", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2 });
  const before = snapshot(model);
  await assertNoLeak(() => {
    // rank 6 fits 20×16 and 16×12 but not the 12×5 last layer.
    assertThrows(() => addAdapter(model, "big", { rank: 6, alpha: 1 }), RangeError, /rank must be an integer/);
    assertThrows(() => addAdapter(model, "x", { rank: 1, alpha: 1, targetModules: ["layers.1"] }), RangeError, /ReLU/);
  });
  assertUnchanged(model, before);
  assertEquals(listAdapters(model), ["default"]);
  model.dispose();
});

Deno.test("addAdapter on a plain model wraps the chosen layers and freezes every base weight", () => {
  const model = addAdapter(small(), "task", { rank: 2, alpha: 4, targetModules: ["layers.0", "layers.4"] });
  assertEquals(loraLayers(model).map(([name, layer]) => `${name}:${layer.activeAdapter}`), [
    "layers.0:task",
    "layers.4:task",
  ]);
  assertEquals(namedParameters(model).filter((p) => p.variable.trainable).map((p) => p.name), [
    "layers.0.lora_task.A",
    "layers.0.lora_task.B",
    "layers.4.lora_task.A",
    "layers.4.lora_task.B",
  ]);
  model.dispose();
});

Deno.test("a second adapter, even on newly wrapped layers, stays inactive and frozen until setAdapter", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 4, targetModules: ["layers.0"] });
  addAdapter(model, "x", { rank: 2, alpha: 4, targetModules: ["layers.0", "layers.2"] });
  assertEquals(loraLayers(model).map(([name, layer]) => `${name}:${layer.activeAdapter}`), [
    "layers.0:default",
    "layers.2:default", // layers.2 has no "default": it runs its base layer alone
  ]);
  const trainable = () => namedParameters(model).filter((p) => p.variable.trainable).map((p) => p.name);
  assertEquals(trainable(), ["layers.0.lora.A", "layers.0.lora.B"]);
  setAdapter(model, "x");
  assertEquals(trainable(), ["layers.0.lora_x.A", "layers.0.lora_x.B", "layers.2.lora_x.A", "layers.2.lora_x.B"]);
  model.dispose();
});

Deno.test("deleting the active adapter hands over to the next one, active and trainable", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 4 });
  addAdapter(model, "rotated", { rank: 2, alpha: 4 });
  deleteAdapter(model, "default");
  assertEquals(listAdapters(model), ["rotated"]);
  assertEquals(trainableVariables(model).length, 6);
  assert.ok(loraLayers(model).every(([, layer]) => layer.activeAdapter === "rotated" && layer.lora.B.trainable));
  model.dispose();
});

Deno.test("disableAdapters gives the base model's output; refused while merged", () => {
  const base = small();
  const model = addLoRA(base.clone(), { rank: 2, alpha: 2 });
  randomize(model, "default", 3);
  const x = input(4, 20);
  const [baseOut, adapted] = [base.apply(x), model.apply(x)];
  disableAdapters(model);
  const disabled = model.apply(x);
  assertBitIdentical(disabled, baseOut, "disabled adapters");
  assertThrows(() => mergeAdapter(model), Error, /adapters are disabled/);
  enableAdapters(model);
  const enabled = model.apply(x);
  assertBitIdentical(enabled, adapted, "enabled again");
  mergeAdapter(model);
  assertThrows(() => disableAdapters(model), Error, /merged into its base weight; call unmerge\(\) first/);
  assertThrows(() => setAdapter(model, "default"), Error, /merged/);
  unmergeAdapter(model);
  tf.dispose([x, baseOut, adapted, disabled, enabled]);
  model.dispose();
  base.dispose();
});

Deno.test("deleteAdapter frees the adapter; the last one unwraps the layer; merged adapters are kept", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2 });
  addAdapter(model, "second", { rank: 2, alpha: 2, targetModules: ["layers.0"] });
  mergeAdapter(model, "second");
  assertThrows(() => deleteAdapter(model, "second"), Error, /merged/);
  unmergeAdapter(model);
  const layer0 = model.layers[0] as LinearWithAdapters;
  assertThrows(() => layer0.deleteAdapter("nope"), Error, /no adapter named "nope"/);
  await assertNoLeak(() => deleteAdapter(model, "default"), -(2 * 3));
  // layers.0 keeps "second", now active; layers.2 and layers.4 had only "default" and are plain Linear again.
  assertEquals(listAdapters(model), ["second"]);
  assertEquals(layer0.activeAdapter, "second");
  assert.ok(model.layers[2] instanceof Linear && model.layers[4] instanceof Linear);
  assertThrows(() => layer0.deleteAdapter("second"), Error, /only adapter; use its .linear instead/);
  model.dispose();
});

// Mixed batches ---------------------------------------------------------------------------------------------

Deno.test("a mixed batch equals each row run through its own merged model, within 1e-5", async () => {
  const base = mlp(7);
  const model = addLoRA(base.clone(), { rank: 4, alpha: 8, seed: 1 });
  addAdapter(model, "rotated", { rank: 2, alpha: 1, scaling: "paper", seed: 2 });
  addAdapter(model, "inverted", {
    rank: 8,
    alpha: 4,
    scaling: "rslora",
    seed: 3,
    targetModules: ["layers.0", "layers.2"],
  });
  for (const [k, name] of listAdapters(model).entries()) randomize(model, name, 100 * k + 1);
  const names = ["rotated", "default", "__base__", "inverted", "rotated", "default", "inverted", "inverted"];
  const x = input(names.length, 784, 11);
  let mixed!: tf.Tensor2D;
  await assertNoLeak(() => {
    mixed = applyMixedBatch(model, x, names);
  }, 1);
  let worst = 0;
  for (const name of new Set(names)) {
    // The reference: a separate copy of the model with this adapter active, then merged into its weights.
    const reference = name === "__base__" ? base.clone() : model.clone();
    const rows = names.flatMap((n, i) => (n === name ? [i] : []));
    const index = tf.tensor1d(rows, "int32");
    const [input, got] = [tf.gather(x, index), tf.gather(mixed, index)] as tf.Tensor2D[];
    if (name !== "__base__") setAdapter(reference, name);
    const active = reference.apply(input);
    assertClose(got, active, 1e-6, `rows of ${name}, adapter active`);
    if (name !== "__base__") mergeAdapter(reference);
    const expected = reference.apply(input);
    worst = Math.max(worst, maxAbsDiff(got, expected));
    assertClose(got, expected, 1e-5, `rows of ${name}, adapter merged`);
    tf.dispose([index, input, got, active, expected]);
    reference.dispose();
  }
  console.log(`mixed batch vs per-row merged models: max |difference| = ${worst.toExponential(2)}`);
  // Different adapters really do give different rows: the test would catch rows swapped between adapters.
  assert.ok(maxAbsDiff(tf.slice(mixed, [0, 0], [1, 10]), tf.slice(mixed, [1, 0], [1, 10])) > 0);
  tf.dispose([x, mixed]);
  model.dispose();
  base.dispose();
});

Deno.test("a mixed batch of one adapter equals the model with that adapter active", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2 });
  randomize(model, "default", 1);
  const x = input(5, 20);
  const [mixed, plain] = [applyMixedBatch(model, x, Array(5).fill("default")), model.apply(x)];
  assertClose(mixed, plain, 1e-6, "all rows default");
  tf.dispose([x, mixed, plain]);
  model.dispose();
});

Deno.test("mixed batches refuse unknown names, a wrong count and merged models", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2 });
  const x = input(2, 20);
  assertThrows(() => applyMixedBatch(model, x, ["default", "typo"]), Error, /unknown adapters "typo"; the model has/);
  assertThrows(() => applyMixedBatch(model, x, ["default"]), RangeError, /1 adapter names for input of shape \[2,20\]/);
  mergeAdapter(model);
  assertThrows(() => applyMixedBatch(model, x, ["default", "default"]), Error, /merged/);
  x.dispose();
  model.dispose();
});
