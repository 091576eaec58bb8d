import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addLoRA,
  countParameters,
  freezeLinearLayers,
  initBackend,
  Linear,
  LinearWithLoRA,
  LinearWithLoRAMerged,
  LoRALayer,
  MultilayerPerceptron,
  namedParameters,
  ReLU,
  trainableVariables,
  trainStep,
} from "../lib/mod.ts";
import { assert, assertBitIdentical, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";

await initBackend();

const mlp = (seed = 123) => new MultilayerPerceptron(784, 128, 256, 10, { seed });

Deno.test("parameter counts: 10×10 is 100 against 40 at rank 2; 1000×1000 is 1,000,000 against 4,000", () => {
  for (const [n, expectedLoRA] of [[10, 40], [1000, 4000]]) {
    const layer = new LinearWithLoRA(new Linear(n, n, { bias: false }), 2, 1);
    freezeLinearLayers(layer);
    assertEquals(countParameters(layer.linear), { total: n * n, trainable: 0 });
    assertEquals(countParameters(layer.lora), { total: expectedLoRA, trainable: expectedLoRA });
    layer.dispose();
  }
});

Deno.test("the MLP has 136,074 parameters and rank-4 LoRA on its three layers adds 6,248", () => {
  const model = mlp();
  assertEquals(countParameters(model), { total: 136_074, trainable: 136_074 });
  for (const i of [0, 2, 4]) model.layers[i] = new LinearWithLoRAMerged(model.layers[i], 4, 8);
  freezeLinearLayers(model);
  assertEquals(countParameters(model), { total: 136_074 + 6_248, trainable: 6_248 });
  model.dispose();
});

Deno.test("named parameters and trainable flags after freezing match the tutorial's listing", () => {
  const model = mlp();
  for (const i of [0, 2, 4]) model.layers[i] = new LinearWithLoRAMerged(model.layers[i], 4, 8);
  freezeLinearLayers(model);
  const listing = namedParameters(model).map(({ name, variable }) =>
    `${name}:${variable.trainable ? "True" : "False"}`
  );
  assertEquals(
    listing,
    [0, 2, 4].flatMap((i) => [
      `layers.${i}.linear.weight:False`,
      `layers.${i}.linear.bias:False`,
      `layers.${i}.lora.A:True`,
      `layers.${i}.lora.B:True`,
    ]),
  );
  model.dispose();
});

Deno.test("the printed structure names every layer like PyTorch's print(model)", () => {
  const model = mlp();
  for (const i of [0, 2, 4]) model.layers[i] = new LinearWithLoRAMerged(model.layers[i], 4, 8); // the tutorial's way
  const text = String(model);
  assert.match(text, /^MultilayerPerceptron\(\n {2}\(layers\): Sequential\(\n {4}\(0\): LinearWithLoRAMerged\(/);
  assert.match(text, /\(linear\): Linear\(in_features=128, out_features=256, bias=true\)/);
  assert.match(text, /\(3\): ReLU\(\)/);
  assert.match(text, /\(lora\): LoRALayer\(in_dim=256, out_dim=10, rank=4, alpha=8, scaling=8\)/);
  assertEquals(text.split("\n").length, 18); // as the tutorial's printout
  model.dispose();
});

Deno.test("after freezing, optimizer steps change A and B and leave every base weight bit-identical", () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8, seed: 1 });
  const params = namedParameters(model);
  const before = params.map(({ variable }) => variable.clone());
  const optimizer = adam(0.005);
  const batch = {
    features: Float32Array.from({ length: 32 * 784 }, (_, i) => (i * 7919 % 255) / 255),
    labels: Int32Array.from({ length: 32 }, (_, i) => i % 10),
    size: 32,
  };
  for (let step = 0; step < 3; step++) trainStep(model, optimizer, batch, trainableVariables(model)).dispose();
  params.forEach(({ name, variable }, i) => {
    if (name.includes(".lora.")) {
      const moved = tf.abs(tf.sub(variable, before[i])).max().dataSync()[0];
      assert.ok(moved > 1e-4, `${name} should have changed (moved ${moved})`);
    } else {
      assertBitIdentical(variable, before[i], name);
    }
  });
  optimizer.dispose();
  tf.dispose(before);
  model.dispose();
});

Deno.test("freezeLinearLayers recurses into wrappers and leaves a bare LoRALayer trainable", () => {
  const layer = new LinearWithLoRA(new Linear(5, 5), 1, 1);
  freezeLinearLayers(layer);
  assertEquals(layer.namedParameters().map((p) => p.variable.trainable), [false, false, true, true]);
  const lora = new LoRALayer(5, 5, 1, 1);
  freezeLinearLayers(lora);
  assert.ok(lora.A.trainable && lora.B.trainable);
  layer.dispose();
  lora.dispose();
});

Deno.test("clone() is a deep copy: training the copy leaves the original untouched", () => {
  const model = mlp();
  const copy = addLoRA(model.clone(), { rank: 2, alpha: 4 });
  const original = namedParameters(model).map((p) => p.variable.clone());
  const optimizer = adam(0.01);
  const batch = { features: new Float32Array(4 * 784).fill(0.5), labels: new Int32Array([1, 2, 3, 4]), size: 4 };
  trainStep(copy, optimizer, batch, trainableVariables(copy)).dispose();
  namedParameters(model).forEach((p, i) => {
    assertBitIdentical(p.variable, original[i], p.name);
    assert.ok(p.variable.trainable, `${p.name} of the original must stay trainable`);
  });
  optimizer.dispose();
  tf.dispose(original);
  copy.dispose();
  model.dispose();
});

Deno.test("addLoRA validates everything before changing the model", () => {
  const model = mlp();
  const count = tf.memory().numTensors;
  assertThrows(
    () => addLoRA(model, { rank: 4, alpha: 8, targetModules: ["layers.0", "layers.1"] }),
    RangeError,
    /selects "layers.1", a ReLU; LoRA adapts linear layers: "layers.0", "layers.2", "layers.4"/,
  );
  // rank 11 fits layers 0 and 2 but not the 256×10 output layer: nothing may be wrapped.
  assertThrows(() => addLoRA(model, { rank: 11, alpha: 8 }), RangeError, /min\(in, out\) = 10/);
  assert.ok(model.layers.every((layer) => layer instanceof Linear || layer instanceof ReLU));
  assertEquals(countParameters(model), { total: 136_074, trainable: 136_074 });
  assertEquals(tf.memory().numTensors, count);
  model.dispose();
});

Deno.test("building and disposing models leaves no tensors behind", async () => {
  await assertNoLeak(() => addLoRA(mlp(), { rank: 4, alpha: 8 }).dispose());
  await assertNoLeak(() => {
    const model = mlp();
    model.clone().dispose();
    model.dispose();
  });
});

Deno.test("a forward pass of the MLP leaves no tensors behind", async () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8 });
  const x = tf.zeros([3, 784]) as tf.Tensor2D;
  await assertNoLeak(() => model.apply(x).dispose());
  assertThrows(() => model.apply(tf.zeros([3, 100]) as tf.Tensor2D), RangeError, /\[batch, 784\].*; got \[3, 100\]/);
  x.dispose();
  model.dispose();
});

Deno.test("an MLP used as a layer passes gradients back to the layers before it", () => {
  const first = new Linear(4, 3, { seed: 1 });
  const inner = new MultilayerPerceptron(3, 5, 5, 2, { seed: 2 });
  const x = tf.randomNormal([8, 4], 0, 1, "float32", 3) as tf.Tensor2D;
  const variables = [...first.namedParameters(), ...inner.namedParameters()].map((p) => p.variable);
  const { grads, value } = tf.variableGrads(
    () => tf.sum(tf.square(inner.apply(first.apply(x)))) as tf.Scalar,
    variables,
  );
  assertEquals(Object.keys(grads).length, variables.length, "every variable, the first layer's too, gets a gradient");
  assert.ok(tf.abs(grads[first.weight.name]).max().dataSync()[0] > 0);
  tf.dispose([x, value, grads]);
  first.dispose();
  inner.dispose();
});
