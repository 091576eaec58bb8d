import * as tf from "@tensorflow/tfjs";
import {
  getModule,
  initBackend,
  Linear,
  LinearWithLoRA,
  Module,
  MultilayerPerceptron,
  namedModules,
  ReLU,
  Sequential,
  setModule,
} from "../lib/mod.ts";
import { assert, assertBitIdentical, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";
import { TinyModel } from "./tiny_model.ts";

await initBackend();

Deno.test("namedModules walks the tree depth first with dotted names, as PyTorch's named_modules", () => {
  const model = new TinyModel(4, 3, 2);
  const names = namedModules(model).map(([name]) => name);
  assertEquals(names.slice(0, 12), [
    "",
    "blocks",
    "blocks.0",
    "blocks.0.attn",
    "blocks.0.attn.q_proj",
    "blocks.0.attn.v_proj",
    "blocks.0.attn.out_proj",
    "blocks.0.mlp",
    "blocks.0.mlp.0",
    "blocks.0.mlp.1",
    "blocks.0.mlp.2",
    "blocks.1",
  ]);
  assertEquals(names.at(-1), "lm_head");
  // Parameter names follow the same scheme, so weights files name what the module tree names.
  assertEquals(model.namedParameters().slice(0, 2).map((p) => p.name), [
    "blocks.0.attn.q_proj.weight",
    "blocks.0.attn.q_proj.bias",
  ]);
  assertEquals(model.namedParameters().at(-1)!.name, "lm_head.weight");
  model.dispose();
});

Deno.test("getModule and setModule reach any depth; the tutorial's layers[i] = … is the same change", () => {
  const model = new TinyModel(4, 3, 2);
  const q = getModule(model, "blocks.1.attn.q_proj");
  assert.ok(q === model.blocks[1].attn.q_proj);
  const wrapped = new LinearWithLoRA(q, 2, 4);
  assert.ok(setModule(model, "blocks.1.attn.q_proj", wrapped) === q);
  assert.ok(model.blocks[1].attn.q_proj === wrapped);
  assert.ok(getModule(model, "blocks.1.attn.q_proj.linear") === q);
  // Through an array, as in the perceptron: the Sequential view shares the array.
  const relu = new ReLU();
  setModule(model, "blocks.0.mlp.1", relu);
  assert.ok(model.blocks[0].mlp.layers[1] === relu);
  const mlp = new MultilayerPerceptron(4, 3, 3, 2);
  const first = mlp.layers[0];
  mlp.layers[0] = new LinearWithLoRA(mlp.layers[0], 1, 2);
  assert.ok(getModule(mlp, "layers.0.linear") === first);
  mlp.dispose();
  model.dispose();
});

Deno.test("getModule and setModule name the part of a path that does not exist", () => {
  const model = new TinyModel(4, 3, 2);
  assertThrows(
    () => getModule(model, "blocks.0.attn.k_proj"),
    RangeError,
    /No module "blocks.0.attn.k_proj": "blocks.0.attn" has no child "k_proj" \(its children: "q_proj", "v_proj", "out_proj"\)/,
  );
  assertThrows(() => getModule(model, "blocks.7"), RangeError, /"blocks" has no child "7"/);
  assertThrows(() => setModule(model, "", new ReLU()), RangeError, /expected a child's name/);
  assertThrows(() => setModule(model, "blocks.0.mlp.3", new ReLU()), RangeError, /has no child "3"/);
  const seq = new Sequential([new ReLU()]);
  assertThrows(() => seq.setChild("01", new ReLU()), RangeError, /Sequential has no layer "01"; it has 0 to 0/);
  assertThrows(() => model.setChild("nothing", new ReLU()), RangeError, /TinyModel has no child module "nothing"/);
  model.dispose();
});

Deno.test("a module finds its parameters and children among its properties, and prints like PyTorch", () => {
  class Scaled extends Module {
    linear = new Linear(3, 2, { seed: 1 });
    gain = tf.variable(tf.ones([2]));
    note = "not a parameter";
    apply(x: tf.Tensor): tf.Tensor {
      return tf.mul(this.linear.apply(x), this.gain);
    }
  }
  const m = new Scaled();
  assertEquals(m.namedParameters().map((p) => p.name), ["gain", "linear.weight", "linear.bias"]);
  assertEquals(String(m), "Scaled(\n  (linear): Linear(in_features=3, out_features=2, bias=true)\n)");
  m.dispose();
  assert.ok(m.gain.isDisposed && m.linear.weight.isDisposed);
});

Deno.test("clone is a deep copy: new variables, same values and flags, copied arrays; no leaks", async () => {
  const model = new TinyModel(4, 3, 2);
  model.blocks[0].attn.q_proj.namedParameters()[0].variable.trainable = false;
  const copy = model.clone();
  assert.ok(copy instanceof TinyModel && copy.blocks !== model.blocks && copy.blocks[0] !== model.blocks[0]);
  const [a, b] = [model.namedParameters(), copy.namedParameters()];
  assertEquals(b.map((p) => p.name), a.map((p) => p.name));
  a.forEach((p, i) => {
    assert.ok(p.variable !== b[i].variable, p.name);
    assertBitIdentical(p.variable, b[i].variable, p.name);
    assertEquals(b[i].variable.trainable, p.variable.trainable, p.name);
  });
  const x = tf.randomNormal([2, 3, 4], 0, 1, "float32", 3);
  const [y, z] = [model.apply(x), copy.apply(x)];
  assertBitIdentical(z, y, "outputs");
  model.dispose();
  assert.ok(!copy.lm_head.weight.isDisposed, "disposing the original leaves the copy alive");
  await assertNoLeak(() => copy.clone().dispose());
  tf.dispose([x, y, z]);
  copy.dispose();
});
