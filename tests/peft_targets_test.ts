import * as tf from "@tensorflow/tfjs";
import {
  adapterFromFiles,
  adapterToFiles,
  addAdapter,
  addLoRA,
  applyMixedBatch,
  findTargets,
  initBackend,
  LinearWithAdapters,
  loraLayers,
  matchesTarget,
  mergeAdapter,
  mergeAndUnload,
  MultilayerPerceptron,
  setAdapter,
  unmergeAdapter,
  weightsFromSafetensors,
  weightsToSafetensors,
} from "../lib/mod.ts";
import { assert, assertBitIdentical, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";
import { randomize, snapshot } from "./fixtures.ts";
import { TinyModel } from "./tiny_model.ts";

await initBackend();

const attn = (i: number) => ["q_proj", "v_proj", "out_proj"].map((p) => `blocks.${i}.attn.${p}`);
const mlp = (i: number) => [`blocks.${i}.mlp.0`, `blocks.${i}.mlp.2`];

Deno.test("targets by name: a full name or a dotted suffix, as PEFT matches a list", () => {
  assert.ok(matchesTarget("blocks.0.attn.q_proj", ["q_proj"]));
  assert.ok(matchesTarget("blocks.0.attn.q_proj", ["attn.q_proj"]));
  assert.ok(matchesTarget("layers.0", ["layers.0"]));
  assert.ok(!matchesTarget("blocks.0.attn.q_proj", ["proj"]), "a suffix starts after a dot");
  assert.ok(!matchesTarget("blocks.0.attn.xq_proj", ["q_proj"]));
  const model = new TinyModel();
  assertEquals(findTargets(model, { targetModules: ["q_proj", "v_proj"] }), [
    "blocks.0.attn.q_proj",
    "blocks.0.attn.v_proj",
    "blocks.1.attn.q_proj",
    "blocks.1.attn.v_proj",
  ]);
  assertEquals(findTargets(model, { targetModules: ["blocks.1.mlp.2"] }), ["blocks.1.mlp.2"]);
  model.dispose();
});

Deno.test("targets by regular expression: the whole name must match (re.fullmatch)", () => {
  const model = new TinyModel();
  assertEquals(findTargets(model, { targetModules: "blocks\\.1\\.attn\\.(q|v)_proj" }), [
    "blocks.1.attn.q_proj",
    "blocks.1.attn.v_proj",
  ]);
  assertEquals(findTargets(model, { targetModules: ".*mlp\\.[02]" }), [...mlp(0), ...mlp(1)]);
  // PEFT refuses a match it cannot adapt rather than skipping it; so does this library.
  assertThrows(() => findTargets(model, { targetModules: ".*mlp\\.\\d" }), RangeError, /"blocks.0.mlp.1", a ReLU/);
  assertThrows(() => findTargets(model, { targetModules: "q_proj" }), RangeError, /selects no linear layer/);
  assertThrows(() => findTargets(model, { targetModules: "(" }), SyntaxError, /"\(" is not a valid regular expression/);
  model.dispose();
});

Deno.test('"all-linear": every linear layer but the output layer a model names; every one for the perceptron', () => {
  const model = new TinyModel();
  assertEquals(findTargets(model, { targetModules: "all-linear" }), [...attn(0), ...mlp(0), ...attn(1), ...mlp(1)]);
  assertEquals(findTargets(model, {}).at(-1), "lm_head", "the default, every Linear, keeps the output layer");
  const perceptron = new MultilayerPerceptron(4, 3, 3, 2);
  assertEquals(findTargets(perceptron, { targetModules: "all-linear" }), ["layers.0", "layers.2", "layers.4"]);
  perceptron.dispose();
  model.dispose();
});

Deno.test("excludeModules takes selected layers out again, by the same rules", () => {
  const model = new TinyModel();
  assertEquals(findTargets(model, { targetModules: "all-linear", excludeModules: ["out_proj", "mlp.0", "mlp.2"] }), [
    "blocks.0.attn.q_proj",
    "blocks.0.attn.v_proj",
    "blocks.1.attn.q_proj",
    "blocks.1.attn.v_proj",
  ]);
  assertThrows(
    () => findTargets(model, { targetModules: ["q_proj"], excludeModules: ".*" }),
    RangeError,
    /selects no linear layer once excludeModules is applied/,
  );
  model.dispose();
});

Deno.test("targets that are not linear, match nothing or are not names are clear errors; nothing changes", async () => {
  const model = new TinyModel();
  const before = snapshot(model);
  await assertNoLeak(() => {
    assertThrows(
      () => addLoRA(model, { rank: 2, alpha: 4, targetModules: ["attn"] }),
      RangeError,
      /selects "blocks.0.attn", a Attn; LoRA adapts linear layers: "blocks.0.attn.q_proj", /,
    );
    assertThrows(
      () => addLoRA(model, { rank: 2, alpha: 4, targetModules: ["k_proj"] }),
      RangeError,
      /targetModules \["k_proj"\] selects no linear layer; the model's linear layers are "blocks.0.attn.q_proj"/,
    );
    assertThrows(
      () => addLoRA(model, { rank: 2, alpha: 4, targetModules: [0] as unknown as string[] }),
      TypeError,
      /must be a list of module names, a regular expression or "all-linear"; got \[0\]/,
    );
  });
  assertEquals(loraLayers(model).length, 0);
  assertEquals([...snapshot(model).keys()], [...before.keys()]);
  model.dispose();
});

Deno.test("LoRA on attention of a nested model: names, freezing, rank-3 input, merge, files", async () => {
  const model = addLoRA(new TinyModel(), { rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj"], seed: 3 });
  assertEquals(loraLayers(model).map(([name]) => name), attn(0).slice(0, 2).concat(attn(1).slice(0, 2)));
  assertEquals(
    model.namedParameters().filter((p) => p.variable.trainable).map((p) => p.name).slice(0, 2),
    ["blocks.0.attn.q_proj.lora.A", "blocks.0.attn.q_proj.lora.B"],
  );
  // Layers inside a LoRA wrapper are never targets themselves.
  assertThrows(() => addLoRA(model, { rank: 2, alpha: 4, targetModules: ["linear"] }), RangeError, /selects no linear/);
  randomize(model, "default", 7);
  const x = tf.randomNormal([3, 4, 6], 0, 1, "float32", 8);
  const unmerged = model.apply(x);
  mergeAdapter(model);
  const merged = model.apply(x);
  assertClose(merged, unmerged, 1e-5, "merged vs unmerged on [batch, time, width]");
  unmergeAdapter(model);

  // The adapter file names the nested modules as PEFT does, and loads into a fresh copy of the base.
  const files = await adapterToFiles(model);
  const config = JSON.parse(files.config);
  assertEquals(config.target_modules, attn(0).slice(0, 2).concat(attn(1).slice(0, 2)));
  const fresh = new TinyModel();
  adapterFromFiles(fresh, files);
  const reloaded = fresh.apply(x);
  assertBitIdentical(reloaded, unmerged, "reloaded adapter");
  // Weights of the whole model round-trip under the same names.
  const copy = addLoRA(new TinyModel(6, 5, 2, 99), { rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj"] });
  weightsFromSafetensors(copy, await weightsToSafetensors(model));
  const [now, again] = [model.apply(x), copy.apply(x)];
  assertBitIdentical(again, now, "weights round trip");
  tf.dispose([x, unmerged, merged, reloaded, now, again]);
  [model, fresh, copy].forEach((m) => m.dispose());
});

Deno.test("a mixed batch on a nested model: each row of [batch, time, width] gets its own adapter", () => {
  const model = addLoRA(new TinyModel(), { rank: 2, alpha: 4, targetModules: "all-linear", seed: 3 });
  addAdapter(model, "other", { rank: 3, alpha: 2, targetModules: ["q_proj"], seed: 5 });
  randomize(model, "default", 7);
  randomize(model, "other", 50);
  const x = tf.randomNormal([3, 4, 6], 0, 1, "float32", 9);
  const names = ["other", "__base__", "default"];
  const mixed = applyMixedBatch(model, x, names);
  for (const [i, name] of names.entries()) {
    const row = tf.slice(x, [i, 0, 0], [1, 4, 6]);
    let expected: tf.Tensor;
    if (name === "__base__") {
      for (const [, layer] of loraLayers(model)) layer.disableAdapters();
      expected = model.apply(row);
      for (const [, layer] of loraLayers(model)) layer.enableAdapters();
    } else {
      setAdapter(model, name);
      expected = model.apply(row);
    }
    const got = tf.slice(mixed, [i, 0, 0], [1, 4, 5]);
    assertClose(got, expected, 1e-5, `row ${i} (${name})`);
    tf.dispose([row, expected, got]);
  }
  tf.dispose([x, mixed]);
  model.dispose();
});

Deno.test("mergeAndUnload leaves plain Linear layers that compute what the adapted model computed", () => {
  const model = addLoRA(new TinyModel(), { rank: 2, alpha: 4, targetModules: "all-linear", seed: 3 });
  randomize(model, "default", 7);
  const x = tf.randomNormal([2, 4, 6], 0, 1, "float32", 10);
  const before = model.apply(x);
  mergeAndUnload(model);
  assertEquals(loraLayers(model).length, 0);
  assert.ok(!(model.blocks[0].attn.q_proj instanceof LinearWithAdapters));
  const after = model.apply(x);
  assertClose(after, before, 1e-5, "after mergeAndUnload");
  assertEquals(model.namedParameters().length, new TinyModel(6, 5, 2, 1).namedParameters().length);
  tf.dispose([x, before, after]);
  model.dispose();
});
