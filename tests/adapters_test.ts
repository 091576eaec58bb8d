import * as tf from "@tensorflow/tfjs";
import {
  type AdapterFiles,
  adapterFromFiles,
  adapterToFiles,
  addAdapter,
  addLoRA,
  applyMixedBatch,
  countParameters,
  decodeSafetensors,
  deleteAdapter,
  disableAdapters,
  enableAdapters,
  encodeSafetensors,
  initBackend,
  Linear,
  LinearWithLoRA,
  LinearWithLoRAMerged,
  listAdapters,
  loadAdapter,
  loadWeights,
  loraLayers,
  mergeAdapter,
  type Module,
  MultilayerPerceptron,
  namedParameters,
  saveAdapter,
  saveWeights,
  type ScalingConvention,
  setAdapter,
  trainableVariables,
  unmergeAdapter,
  weightsFromSafetensors,
  weightsToSafetensors,
} from "../lib/mod.ts";
import {
  assert,
  assertBitIdentical,
  assertClose,
  assertEquals,
  assertNoLeak,
  assertRejects,
  assertThrows,
  maxAbsDiff,
} from "./assert.ts";

await initBackend();

const FIXTURES = "data/fixtures";
const mlp = (seed = 123) => new MultilayerPerceptron(784, 128, 256, 10, { seed });
const small = (seed = 1) => new MultilayerPerceptron(20, 16, 12, 5, { seed });

/** Values of every parameter, by name, so a test can tell whether a model changed at all. */
function snapshot(model: Module): Map<string, Float32Array> {
  return new Map(model.namedParameters().map(({ name, variable }) => [name, variable.dataSync() as Float32Array]));
}

function assertUnchanged(model: Module, before: Map<string, Float32Array>): void {
  const after = snapshot(model);
  assertEquals([...after.keys()], [...before.keys()]);
  for (const [name, values] of before) assertEquals(after.get(name), values, name);
}

/**
 * Gives B of adapter `name` random values (it starts at zero, which would make tests trivial), sized so that
 * `scaling·A·B` is about as large as the base weights, as after finetuning. `seed` must not be 0: tfjs treats a
 * zero seed as no seed.
 */
function randomize(model: MultilayerPerceptron, name: string, seed: number): void {
  for (const [, layer] of loraLayers(model)) {
    const lora = layer.adapters.get(name);
    if (lora === undefined) continue;
    const std = 1 / Math.sqrt(layer.linear.inFeatures) / lora.scaling;
    tf.tidy(() => lora.B.assign(tf.randomNormal(lora.B.shape, 0, std, "float32", seed++)));
  }
}

const input = (rows: number, width: number, seed = 5) =>
  tf.randomUniform([rows, width], 0, 1, "float32", seed) as tf.Tensor2D;

// Merge and unmerge ----------------------------------------------------------------------------------------

Deno.test("merge/unmerge round trip: every element of W within 2^-24·(|W| + |W+ΔW|) of where it started", () => {
  const layer = new LinearWithLoRA(new Linear(784, 128, { seed: 1 }), 8, 16, { seed: 3 });
  tf.tidy(() => layer.lora.B.assign(tf.randomNormal([8, 128], 0, 0.05, "float32", 2)));
  const w = layer.linear.weight.dataSync().slice();
  const delta = layer.lora.deltaWeight();
  const d = delta.dataSync();
  delta.dispose();
  layer.merge();
  layer.unmerge();
  const back = layer.linear.weight.dataSync();
  // One rounding in W + ΔW, one in (W + ΔW) − ΔW: each at most half an ulp, i.e. 2^-24 of the magnitude.
  let worst = 0, changed = 0;
  for (let i = 0; i < w.length; i++) {
    const bound = 2 ** -24 * (Math.abs(w[i]) + Math.abs(w[i] + d[i])) * (1 + 2 ** -20);
    const error = Math.abs(back[i] - w[i]);
    assert.ok(error <= bound, `element ${i}: |${back[i]} − ${w[i]}| = ${error} > ${bound}`);
    worst = Math.max(worst, error / bound);
    if (error > 0) changed++;
  }
  console.log(`round trip: ${changed} of ${w.length} elements moved; worst error / bound = ${worst.toFixed(3)}`);
  assert.ok(Math.max(...d.map(Math.abs)) > 0.1, "ΔW should be large enough to matter");
  layer.dispose();
});

Deno.test("merging twice, unmerging an unmerged layer, and merging a missing adapter are errors", () => {
  const layer = new LinearWithLoRA(new Linear(6, 4, { seed: 1 }), 2, 2);
  assertThrows(() => layer.unmerge(), Error, /not merged; nothing to unmerge/);
  layer.merge();
  assertThrows(() => layer.merge(), Error, /adapter "default" of this LinearWithLoRA is already merged/);
  assertThrows(() => layer.merge("other"), Error, /no adapter named "other"; this layer has "default"/);
  layer.unmerge();
  assertThrows(() => layer.unmerge(), Error, /not merged/);
  layer.dispose();
});

Deno.test("merging two named adapters adds both; unmerge takes both out", async () => {
  await assertNoLeak(() => {
    const layer = new LinearWithLoRA(new Linear(12, 6, { seed: 1 }), 2, 2);
    const other = layer.addAdapter("other", 3, 1.5, { seed: 4 });
    tf.tidy(() => {
      layer.lora.B.assign(tf.randomNormal([2, 6], 0, 0.3, "float32", 2));
      other.B.assign(tf.randomNormal([3, 6], 0, 0.3, "float32", 3));
    });
    const x = input(4, 12);
    const expected = tf.tidy(() => tf.add(tf.add(layer.linear.apply(x), layer.lora.apply(x)), other.apply(x)));
    const w = layer.linear.weight.dataSync().slice();
    layer.merge();
    layer.merge("other");
    assertEquals(layer.mergedAdapters, ["default", "other"]);
    const merged = layer.apply(x);
    assertClose(merged, expected, 1e-5, "W + ΔW_default + ΔW_other");
    layer.unmerge();
    assertEquals(layer.mergedAdapters, []);
    assert.ok(maxAbsDiff(layer.linear.weight.dataSync(), w) < 1e-6);
    tf.dispose([x, expected, merged]);
    layer.dispose();
  });
});

Deno.test("mergeAdapter / unmergeAdapter on a whole model: merged output equals the unmerged one within 1e-5", () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8, seed: 1 });
  randomize(model, "default", 10);
  const x = input(16, 784);
  const before = snapshot(model);
  const unmerged = model.apply(x);
  mergeAdapter(model);
  assertThrows(() => mergeAdapter(model), Error, /adapter "default" of layers.0 is already merged/);
  const merged = model.apply(x);
  assertClose(merged, unmerged, 1e-5, "merged model");
  unmergeAdapter(model);
  assertThrows(() => unmergeAdapter(model), Error, /no adapter is merged/);
  for (const [name, values] of snapshot(model)) assert.ok(maxAbsDiff(values, before.get(name)!) < 1e-6, name);
  tf.dispose([x, unmerged, merged]);
  model.dispose();
});

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
  const layer0 = model.layers[0] as LinearWithLoRA;
  assertEquals([layer0.activeAdapter, layer0.lora.rank], ["rotated", 3]);
  assertEquals(trainableVariables(model).length, 6); // A and B of "rotated" in three layers
  const withRotated = model.apply(x);
  assert.ok(maxAbsDiff(withRotated, withDefault) > 1e-3, "switching adapters changes the output");
  // Against an independent computation: base plus the rotated adapter, layer by layer.
  const expected = tf.tidy(() =>
    model.layers.reduce((h, layer) => {
      if (!(layer instanceof LinearWithLoRA)) return layer.apply(h);
      return tf.add(layer.linear.apply(h), layer.adapters.get("rotated")!.apply(h)) as tf.Tensor2D;
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
    assertThrows(() => addAdapter(model, "x", { rank: 1, alpha: 1, targetModules: [1] }), RangeError, /ReLU/);
  });
  assertUnchanged(model, before);
  assertEquals(listAdapters(model), ["default"]);
  model.dispose();
});

Deno.test("addAdapter on a plain model wraps the chosen layers and freezes every base weight", () => {
  const model = addAdapter(small(), "task", { rank: 2, alpha: 4, targetModules: [0, 4] });
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
  const model = addLoRA(small(), { rank: 2, alpha: 4, targetModules: [0] });
  addAdapter(model, "x", { rank: 2, alpha: 4, targetModules: [0, 2] });
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
  addAdapter(model, "second", { rank: 2, alpha: 2, targetModules: [0] });
  mergeAdapter(model, "second");
  assertThrows(() => deleteAdapter(model, "second"), Error, /merged/);
  unmergeAdapter(model);
  const layer0 = model.layers[0] as LinearWithLoRA;
  assertThrows(() => layer0.deleteAdapter("nope"), Error, /no adapter named "nope"/);
  await assertNoLeak(() => deleteAdapter(model, "default"), -(2 * 3));
  // layers.0 keeps "second", now active; layers.2 and layers.4 had only "default" and are plain Linear again.
  assertEquals(listAdapters(model), ["second"]);
  assertEquals(layer0.activeAdapter, "second");
  assert.ok(model.layers[2] instanceof Linear && model.layers[4] instanceof Linear);
  assertThrows(() => layer0.deleteAdapter("second"), Error, /only adapter; use its .linear instead/);
  model.dispose();
});

Deno.test("clone copies every adapter and its state into new variables", () => {
  const layer = new LinearWithLoRAMerged(new Linear(6, 4, { seed: 1 }), 2, 2);
  layer.addAdapter("b", 1, 3);
  layer.setAdapter("b");
  const copy = layer.clone();
  assert.ok(copy instanceof LinearWithLoRAMerged);
  assertEquals([...copy.adapters.keys()], ["default", "b"]);
  assertEquals(copy.activeAdapter, "b");
  assert.notEqual(copy.adapters.get("b")!.A, layer.adapters.get("b")!.A);
  assertEquals(copy.adapters.get("b")!.A.dataSync(), layer.adapters.get("b")!.A.dataSync());
  assertEquals(copy.adapters.get("default")!.A.trainable, false);
  layer.dispose();
  assertEquals(copy.lora.A.isDisposed, false);
  copy.dispose();
});

// Mixed batches ---------------------------------------------------------------------------------------------

Deno.test("a mixed batch equals each row run through its own merged model, within 1e-5", async () => {
  const base = mlp(7);
  const model = addLoRA(base.clone(), { rank: 4, alpha: 8, seed: 1 });
  addAdapter(model, "rotated", { rank: 2, alpha: 1, scaling: "paper", seed: 2 });
  addAdapter(model, "inverted", { rank: 8, alpha: 4, scaling: "rslora", seed: 3, targetModules: [0, 2] });
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

// Weights files -------------------------------------------------------------------------------------------

Deno.test("weights: save → load gives bit-identical parameters and outputs", async () => {
  await assertNoLeak(async () => {
    const trained = mlp(1);
    const fresh = mlp(2);
    weightsFromSafetensors(fresh, await weightsToSafetensors(trained));
    assertUnchanged(fresh, snapshot(trained));
    const x = input(5, 784);
    const [a, b] = [trained.apply(x), fresh.apply(x)];
    assertBitIdentical(a, b, "outputs");
    tf.dispose([x, a, b]);
    trained.dispose();
    fresh.dispose();
  });
});

Deno.test("weights: PyTorch's layout, and 4 bytes per parameter plus the header", async () => {
  const model = mlp(1);
  const bytes = await weightsToSafetensors(model);
  const { tensors, metadata } = decodeSafetensors(bytes);
  assertEquals(metadata, { format: "pt" });
  assertEquals([...tensors.keys()].sort(), namedParameters(model).map((p) => p.name).sort());
  assertEquals(tensors.get("layers.0.weight")!.shape, [128, 784]);
  assertEquals(tensors.get("layers.0.bias")!.shape, [128]);
  // [out, in] in the file is the transpose of the library's [in, out].
  const w = (model.layers[0] as Linear).weight.dataSync();
  assertEquals(tensors.get("layers.0.weight")!.data[1 * 784 + 5], w[5 * 128 + 1]);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals(bytes.length, 8 + headerLength + 4 * countParameters(model).total);
  console.log(`base model: ${countParameters(model).total} parameters, file ${bytes.length} bytes`);
  model.dispose();
});

Deno.test("weights: a LoRA model's file keeps A and B as they are and refuses a merged model", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2 });
  const { tensors } = decodeSafetensors(await weightsToSafetensors(model));
  assertEquals(tensors.get("layers.0.linear.weight")!.shape, [16, 20]);
  assertEquals(tensors.get("layers.0.lora.A")!.shape, [20, 2]);
  mergeAdapter(model);
  await assertRejects(() => weightsToSafetensors(model), Error, /merged into its base weight/);
  model.dispose();
});

Deno.test("weights: a mismatched file is refused and leaves the model unchanged", async () => {
  const target = new MultilayerPerceptron(4, 3, 3, 2, { seed: 3 });
  const before = snapshot(target);
  const other = new MultilayerPerceptron(4, 5, 3, 2, { seed: 2 });
  const short = new MultilayerPerceptron(4, 3, 3, 2, { seed: 4 });
  short.layers.pop()!.dispose();
  await assertNoLeak(async () => {
    assertThrows(() => weightsFromSafetensors(target, new Uint8Array(3)), RangeError, /8-byte length/);
    const otherBytes = await weightsToSafetensors(other);
    assertThrows(
      () => weightsFromSafetensors(target, otherBytes),
      RangeError,
      /"layers.0.weight" has shape \[5,4\] in the file; the model expects \[3,4\]/,
    );
    const shortBytes = await weightsToSafetensors(short);
    assertThrows(
      () => weightsFromSafetensors(target, shortBytes),
      RangeError,
      /missing "layers.4.weight", "layers.4.bias"/,
    );
    const targetBytes = await weightsToSafetensors(target);
    assertThrows(
      () => weightsFromSafetensors(short, targetBytes),
      RangeError,
      /unexpected "layers.4.bias", "layers.4.weight"/,
    );
  });
  assertUnchanged(target, before);
  for (const m of [other, target, short]) m.dispose();
});

Deno.test("weights: saveWeights and loadWeights round-trip through a file under data/", async () => {
  const dir = await Deno.makeTempDir({ dir: "data", prefix: "tmp-adapters-test-" });
  try {
    const trained = small(1);
    const fresh = small(2);
    await saveWeights(trained, `${dir}/base.safetensors`);
    await loadWeights(fresh, `${dir}/base.safetensors`);
    assertUnchanged(fresh, snapshot(trained));
    trained.dispose();
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// Adapter files in PEFT's layout ---------------------------------------------------------------------------

Deno.test("adapter save → load: bit-identical A, B and outputs, for each scaling convention", async () => {
  const cases: [number, number, ScalingConvention][] = [[4, 8, "tutorial"], [3, 0.1, "tutorial"], [
    8,
    16,
    "paper",
  ], [3, 0.7, "rslora"]];
  for (const [rank, alpha, scaling] of cases) {
    const base = mlp(3);
    const tuned = addLoRA(base.clone(), { rank, alpha, scaling, seed: 4 });
    randomize(tuned, "default", 9);
    const files = await adapterToFiles(tuned);
    await assertNoLeak(() => adapterFromFiles(base, files), 2 * 3); // A and B in three layers
    for (const [module, layer] of loraLayers(base)) {
      const original = tuned.layers[Number(module.split(".")[1])] as LinearWithLoRA;
      assertEquals([layer.lora.rank, layer.lora.alpha, layer.lora.convention], [rank, alpha, scaling]);
      assertEquals(layer.lora.scaling, original.lora.scaling);
      assertBitIdentical(layer.lora.A, original.lora.A, `${module} A`);
      assertBitIdentical(layer.lora.B, original.lora.B, `${module} B`);
    }
    const x = input(6, 784);
    const [a, b] = [tuned.apply(x), base.apply(x)];
    assertBitIdentical(b, a, `outputs, rank ${rank} alpha ${alpha} ${scaling}`);
    tf.dispose([x, a, b]);
    tuned.dispose();
    base.dispose();
  }
});

Deno.test("adapter file: PEFT keys, transposed shapes, config, and size = 4 bytes per LoRA parameter + header", async () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8, seed: 1 });
  randomize(model, "default", 1);
  const { safetensors, config } = await adapterToFiles(model);
  const { tensors } = decodeSafetensors(safetensors);
  assertEquals(
    [...tensors].map(([key, t]) => `${key} ${t.dtype} [${t.shape}]`),
    [
      "base_model.model.layers.0.lora_A.weight F32 [4,784]",
      "base_model.model.layers.0.lora_B.weight F32 [128,4]",
      "base_model.model.layers.2.lora_A.weight F32 [4,128]",
      "base_model.model.layers.2.lora_B.weight F32 [256,4]",
      "base_model.model.layers.4.lora_A.weight F32 [4,256]",
      "base_model.model.layers.4.lora_B.weight F32 [10,4]",
    ],
  );
  const layer2 = model.layers[2] as LinearWithLoRA;
  const [a, b] = [layer2.lora.A.dataSync(), layer2.lora.B.dataSync()]; // [128, 4] and [4, 256]
  assertEquals(tensors.get("base_model.model.layers.2.lora_A.weight")!.data[3 * 128 + 17], a[17 * 4 + 3]);
  assertEquals(tensors.get("base_model.model.layers.2.lora_B.weight")!.data[200 * 4 + 1], b[1 * 256 + 200]);
  const parsed = JSON.parse(config);
  assertEquals(
    [parsed.peft_type, parsed.r, parsed.lora_alpha, parsed.use_rslora, parsed.target_modules],
    ["LORA", 4, 32, false, ["layers.0", "layers.2", "layers.4"]],
  );
  assertEquals(parsed.lora_alpha / parsed.r, layer2.lora.scaling); // PEFT's scaling = this library's
  const loraParameters = countParameters(model).trainable;
  assertEquals(loraParameters, 4 * (784 + 128) + 4 * (128 + 256) + 4 * (256 + 10));
  const headerLength = Number(new DataView(safetensors.buffer).getBigUint64(0, true));
  assertEquals(safetensors.length, 8 + headerLength + 4 * loraParameters);
  console.log(
    `adapter r=4: ${loraParameters} parameters, file ${safetensors.length} bytes (header ${headerLength})`,
  );
  model.dispose();
});

Deno.test("PEFT's lora_alpha for each convention: tutorial alpha·r, paper alpha, rslora alpha with use_rslora", async () => {
  for (
    const [scaling, expected] of [["tutorial", [12, false]], ["paper", [3, false]], ["rslora", [3, true]]] as const
  ) {
    const model = addLoRA(small(), { rank: 4, alpha: 3, scaling });
    const config = JSON.parse((await adapterToFiles(model)).config);
    assertEquals([config.lora_alpha, config.use_rslora], expected);
    const peftScaling = config.use_rslora ? config.lora_alpha / Math.sqrt(config.r) : config.lora_alpha / config.r;
    assertEquals(peftScaling, (model.layers[0] as LinearWithLoRA).lora.scaling);
    model.dispose();
  }
});

Deno.test("adapter file written here equals the hand-made fixture byte for byte, config included", async () => {
  const model = addLoRA(new MultilayerPerceptron(2, 2, 2, 2, { seed: 1 }), { rank: 1, alpha: 2, targetModules: [0] });
  const lora = (model.layers[0] as LinearWithLoRA).lora;
  lora.A.assign(tf.tensor2d([[0.5], [-1]]));
  lora.B.assign(tf.tensor2d([[2, 0.25]]));
  const { safetensors, config } = await adapterToFiles(model);
  assertEquals(safetensors, await Deno.readFile(`${FIXTURES}/tiny-adapter/adapter_model.safetensors`));
  assertEquals(config, await Deno.readTextFile(`${FIXTURES}/tiny-adapter/adapter_config.json`));
  model.dispose();
});

Deno.test("loadAdapter reads the hand-made fixture folder", async () => {
  const model = new MultilayerPerceptron(2, 2, 2, 2, { seed: 1 });
  await loadAdapter(model, `${FIXTURES}/tiny-adapter`);
  const layer = model.layers[0] as LinearWithLoRA;
  assertEquals([layer.lora.rank, layer.lora.alpha, layer.lora.convention, layer.lora.scaling], [1, 2, "tutorial", 2]);
  assertEquals(layer.lora.A.arraySync(), [[0.5], [-1]]);
  assertEquals(layer.lora.B.arraySync(), [[2, 0.25]]);
  assert.ok(model.layers[2] instanceof Linear, "only layers.0 is targeted");
  assertEquals(layer.linear.weight.trainable, false);
  model.dispose();
});

Deno.test("an adapter as PEFT writes it (no metadata, BF16 A, F16 B) loads with PEFT's scaling lora_alpha / r", async () => {
  const model = new MultilayerPerceptron(2, 2, 2, 2, { seed: 1 });
  await loadAdapter(model, `${FIXTURES}/peft-half-adapter`, "peft");
  const layer = model.layers[0] as LinearWithLoRA;
  assertEquals(layer.activeAdapter, "peft");
  assertEquals([layer.lora.rank, layer.lora.alpha, layer.lora.convention, layer.lora.scaling], [1, 4, "paper", 4]);
  assertEquals(layer.lora.A.arraySync(), [[0.5], [-1]]);
  assertEquals(layer.lora.B.arraySync(), [[2, 0.25]]);
  model.dispose();
});

Deno.test("saveAdapter / loadAdapter through a folder; loading next to an existing adapter adds it inactive", async () => {
  const dir = await Deno.makeTempDir({ dir: "data", prefix: "tmp-adapters-test-" });
  try {
    const base = small(2);
    const tuned = addLoRA(base.clone(), { rank: 2, alpha: 2, seed: 1 });
    addAdapter(tuned, "inverted", { rank: 3, alpha: 5, scaling: "paper", seed: 2, targetModules: [2, 4] });
    randomize(tuned, "inverted", 3);
    await saveAdapter(tuned, `${dir}/inverted`, "inverted");
    assertEquals((await Deno.stat(`${dir}/inverted/adapter_model.safetensors`)).isFile, true);
    assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/inverted/adapter_config.json`)).target_modules, [
      "layers.2",
      "layers.4",
    ]);

    const served = addLoRA(base.clone(), { rank: 2, alpha: 2, seed: 1 });
    await loadAdapter(served, `${dir}/inverted`, "inverted");
    assertEquals(listAdapters(served), ["default", "inverted"]);
    assertEquals((served.layers[2] as LinearWithLoRA).activeAdapter, "default");
    assertEquals(trainableVariables(served).length, 6, "only default's A and B are trainable");
    setAdapter(served, "inverted");
    setAdapter(tuned, "inverted");
    const x = input(4, 20);
    const [a, b] = [tuned.apply(x), served.apply(x)];
    assertBitIdentical(b, a, "the loaded adapter's outputs");
    await assertRejects(
      () => loadAdapter(served, `${dir}/inverted`, "inverted"),
      Error,
      /layers.2 already has an adapter named "inverted"/,
    );
    tf.dispose([x, a, b]);
    for (const m of [base, tuned, served]) m.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loading into a model whose other layers already have adapters keeps their active choice", async () => {
  const source = addAdapter(small(), "all", { rank: 2, alpha: 1 });
  const target = addLoRA(small(), { rank: 2, alpha: 1, targetModules: [0] });
  adapterFromFiles(target, await adapterToFiles(source, "all"), "all");
  assertEquals(loraLayers(target).map(([, layer]) => layer.activeAdapter), ["default", "default", "default"]);
  source.dispose();
  target.dispose();
});

Deno.test("target_modules match as PEFT matches them: the whole name or a dotted suffix", async () => {
  const source = addLoRA(small(), { rank: 2, alpha: 2, seed: 1 });
  const files = await adapterToFiles(source);
  const config = JSON.parse(files.config);
  for (const targets of [["0", "2", "4"], ["layers.0", "2", "layers.4"]]) {
    const target = small();
    adapterFromFiles(target, { ...files, config: JSON.stringify({ ...config, target_modules: targets }) });
    assertEquals(loraLayers(target).map(([name]) => name), ["layers.0", "layers.2", "layers.4"]);
    target.dispose();
  }
  const target = small();
  assertThrows(
    () => adapterFromFiles(target, { ...files, config: JSON.stringify({ ...config, target_modules: ["s.0"] }) }),
    Error,
    /selects none of the model's linear layers/,
  );
  target.dispose();
  source.dispose();
});

Deno.test("adapterToFiles refuses unknown names and adapters whose layers differ in rank", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2, targetModules: [0] });
  addAdapter(model, "uneven", { rank: 1, alpha: 2, targetModules: [2] });
  addAdapter(model, "uneven2", { rank: 2, alpha: 2, targetModules: [4] });
  (model.layers[0] as LinearWithLoRA).addAdapter("uneven2", 3, 2);
  await assertRejects(() => adapterToFiles(model, "nope"), Error, /no adapter "nope"; it has "default"/);
  await assertRejects(() => adapterToFiles(model, "uneven2"), Error, /rank 2, alpha 2 \(tutorial\) in layers.4/);
  model.dispose();
});

// Corrupt and mismatched adapter files -------------------------------------------------------------------------

/** Rewrites the config of `files` with `change` applied to its parsed JSON. */
function withConfig(files: AdapterFiles, change: (config: Record<string, unknown>) => void): AdapterFiles {
  const config = JSON.parse(files.config);
  change(config);
  return { ...files, config: JSON.stringify(config) };
}

/** Rewrites the tensors of `files`, keeping its metadata. */
function withTensors(
  files: AdapterFiles,
  change: (tensors: Map<string, { shape: number[]; data: Float32Array }>) => void,
): AdapterFiles {
  const { tensors, metadata } = decodeSafetensors(files.safetensors);
  const plain = new Map([...tensors].map(([key, { shape, data }]) => [key, { shape, data }]));
  change(plain);
  return { ...files, safetensors: encodeSafetensors(plain, metadata) };
}

Deno.test("corrupt or mismatched adapter files: a clear error each, the model exactly as it was, no leak", async () => {
  const source = addLoRA(small(), { rank: 2, alpha: 2, seed: 1 });
  randomize(source, "default", 1);
  const good = await adapterToFiles(source);
  const wider = new MultilayerPerceptron(20, 17, 12, 5, { seed: 1 });
  const widerFiles = await adapterToFiles(addLoRA(wider, { rank: 2, alpha: 2 }));
  const keyA0 = "base_model.model.layers.0.lora_A.weight";
  const truncated = { ...good, safetensors: good.safetensors.subarray(0, good.safetensors.length - 4) };
  const oversized = { ...good, safetensors: good.safetensors.slice() };
  new DataView(oversized.safetensors.buffer).setBigUint64(0, 10n ** 9n, true);
  const halfHeader = { ...good, safetensors: good.safetensors.slice() };
  new DataView(halfHeader.safetensors.buffer).setBigUint64(0, 50n, true);
  const badDtype = { ...good, safetensors: good.safetensors.slice() };
  const at = new TextDecoder().decode(badDtype.safetensors).indexOf('"F32"');
  badDtype.safetensors.set(new TextEncoder().encode('"F64"'), at);

  const cases: [string, AdapterFiles, new (...args: never[]) => Error, RegExp, string?][] = [
    ["truncated data", truncated, RangeError, /lies outside the \d+-byte data/],
    ["oversized header", oversized, RangeError, /exceeds the limit of 100000000 bytes/],
    ["header cut in the middle of its JSON", halfHeader, SyntaxError, /not valid UTF-8 JSON/],
    ["unknown dtype", badDtype, TypeError, /dtype "F64"; this reader supports F32, F16 and BF16/],
    ["config not JSON", { ...good, config: "{r: 2" }, SyntaxError, /adapter_config.json is not valid JSON/],
    [
      "not LoRA",
      withConfig(good, (c) => c.peft_type = "PREFIX_TUNING"),
      Error,
      /peft_type "PREFIX_TUNING"; expected "LORA"/,
    ],
    ["rank not an integer", withConfig(good, (c) => c.r = 2.5), RangeError, /r = 2.5; expected a positive integer/],
    [
      "config rank disagrees with the tensors",
      withConfig(good, (c) => c.r = 4),
      RangeError,
      /config says r = 4 but layers.0 has lora_A \[2,20\] and lora_B \[16,2\]/,
    ],
    [
      "targets select a module with no tensors",
      withTensors(good, (t) => {
        t.delete("base_model.model.layers.4.lora_A.weight");
        t.delete("base_model.model.layers.4.lora_B.weight");
      }),
      Error,
      /missing key "base_model.model.layers.4.lora_A.weight": target_modules .* selects layers.4/,
    ],
    [
      "targets leave out a module the tensors cover",
      withConfig(good, (c) => c.target_modules = ["layers.0", "layers.2"]),
      Error,
      /tensors for layers.4, which target_modules \["layers.0","layers.2"\] does not select/,
    ],
    [
      "targets select nothing",
      withConfig(good, (c) => c.target_modules = ["q_proj", "v_proj"]),
      Error,
      /target_modules \["q_proj","v_proj"\] selects none of the model's linear layers/,
    ],
    [
      "regex targets",
      withConfig(good, (c) => c.target_modules = ".*"),
      Error,
      /target_modules is a regular expression/,
    ],
    ["DoRA", withConfig(good, (c) => c.use_dora = true), Error, /uses use_dora, which this library does not/],
    [
      "scaling in config disagrees with the metadata",
      withConfig(good, (c) => c.lora_alpha = 5),
      Error,
      /config's scaling \(lora_alpha 5, r 2\) is 2.5, but the metadata's alpha 2 \(tutorial\) gives 2/,
    ],
    [
      "metadata convention the config forbids",
      withConfig(good, (c) => c.use_rslora = true),
      Error,
      /metadata records convention "tutorial", alpha 2, which the config \(use_rslora: true\) does not allow/,
    ],
    [
      "missing key",
      withTensors(good, (t) => t.delete("base_model.model.layers.2.lora_B.weight")),
      Error,
      /missing key "base_model.model.layers.2.lora_B.weight": target_modules .* selects layers.2/,
    ],
    [
      "unexpected key",
      withTensors(good, (t) => t.set("base_model.model.layers.0.bias", { shape: [16], data: new Float32Array(16) })),
      Error,
      /unexpected key "base_model.model.layers.0.bias"/,
    ],
    [
      "key naming a ReLU",
      withTensors(good, (t) => t.set("base_model.model.layers.1.lora_A.weight", t.get(keyA0)!)),
      Error,
      /unexpected key "base_model.model.layers.1.lora_A.weight".*one of "layers.0", "layers.2", "layers.4"/,
    ],
    [
      "shapes from another model",
      widerFiles,
      RangeError,
      /layers.0 is a 20→16 linear layer, so with r = 2 it needs lora_A \[2,20\] and lora_B \[16,2\]; the file has \[2,20\] and \[17,2\]/,
    ],
    [
      "a 1-D tensor",
      withTensors(good, (t) => t.set(keyA0, { shape: [40], data: new Float32Array(40) })),
      RangeError,
      /needs lora_A \[2,20\].*the file has \[40\]/,
    ],
    ["a name already in use", good, Error, /layers.0 already has an adapter named "default"/, "default"],
    ["a bad adapter name", good, RangeError, /letters, digits/, "a b"],
  ];
  for (const [what, files, type, message, name] of cases) {
    const target = addLoRA(small(), { rank: 2, alpha: 2, targetModules: name === "default" ? [0] : [] });
    const before = snapshot(target);
    const layersBefore = [...target.layers];
    try {
      await assertNoLeak(() => assertThrows(() => adapterFromFiles(target, files, name ?? "new"), type, message));
    } catch (error) {
      throw new Error(`${what}: ${(error as Error).message}`);
    }
    assertUnchanged(target, before);
    assert.ok(target.layers.every((layer, i) => layer === layersBefore[i]), `${what}: layers replaced`);
    target.dispose();
  }
  source.dispose();
  wider.dispose();
});
