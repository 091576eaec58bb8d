/**
 * The adapter abstraction (lib/peft/kind.ts): the tutorial's layers are first-class, one freezing rule, one
 * transaction for attaching adapters, kinds named in one place, and LoRA+'s parameter groups.
 */
import * as tf from "@tensorflow/tfjs";
import {
  Adam,
  ADAPTER_KINDS,
  adapterFromFiles,
  adapterToFiles,
  addLoRA,
  createLoraPlusOptimizer,
  freezeLinearLayers,
  getModule,
  GPT,
  initBackend,
  LinearWithAdapters,
  LinearWithDoRA,
  LinearWithLoRA,
  LinearWithLoRAMerged,
  listAdapters,
  type LoRALayer,
  mergeAdapter,
  MultilayerPerceptron,
  namedParameters,
  trainableVariables,
  trainStep,
  unmergeAdapter,
} from "../lib/mod.ts";
import { assert, assertBitIdentical, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";

await initBackend();

const batch = {
  features: Float32Array.from({ length: 16 * 784 }, (_, i) => (i * 7919 % 255) / 255),
  labels: Int32Array.from({ length: 16 }, (_, i) => i % 10),
  size: 16,
};

/** The tutorial's way: replace each Linear by hand, freeze, and take a few Adam steps so that B is not zero. */
function tutorialModel(Wrapper: typeof LinearWithLoRA | typeof LinearWithDoRA = LinearWithLoRA): MultilayerPerceptron {
  const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
  for (const i of [0, 2, 4]) model.layers[i] = new Wrapper(model.layers[i], 4, 8, { seed: i });
  freezeLinearLayers(model);
  const optimizer = new Adam(0.01);
  for (let step = 0; step < 3; step++) trainStep(model, optimizer, batch, trainableVariables(model)).dispose();
  optimizer.dispose();
  return model;
}

const input = () => tf.tensor2d(batch.features.slice(0, 4 * 784), [4, 784]);

for (const Wrapper of [LinearWithLoRA, LinearWithDoRA]) {
  Deno.test(`a model built the tutorial's way (${Wrapper.name}) saves with saveAdapter and reloads bit for bit`, async () => {
    const model = tutorialModel(Wrapper);
    const x = input();
    const before = model.apply(x);
    const names = namedParameters(model).map((p) => p.name);
    assertEquals(listAdapters(model), ["default"]);
    const files = await adapterToFiles(model);
    // Seen by the model-wide operations, the layers became PEFT's layer with the same parameters and outputs.
    assert(model.layers[0] instanceof LinearWithAdapters);
    assertEquals(namedParameters(model).map((p) => p.name), names);
    assertBitIdentical(model.apply(x), before, "the adopted model");
    const fresh = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
    adapterFromFiles(fresh, files);
    assertBitIdentical(fresh.apply(x), before, "the reloaded model");
    mergeAdapter(model);
    assertClose(model.apply(x), before, 5e-5, "merged");
    unmergeAdapter(model);
    tf.dispose([x, before]);
    model.dispose();
    fresh.dispose();
  });
}

Deno.test("LinearWithLoRAMerged, built by hand, is seen too: listed, merged, saved", async () => {
  const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
  model.layers[2] = new LinearWithLoRAMerged(model.layers[2], 4, 8);
  tf.tidy(() =>
    (getModule(model, "layers.2.lora") as LoRALayer).B.assign(tf.randomNormal([4, 256], 0, 0.1, "float32", 1))
  );
  const x = input();
  const before = model.apply(x);
  const config = JSON.parse((await adapterToFiles(model)).config);
  assertEquals(config.target_modules, ["layers.2"]);
  assertClose(model.apply(x), before, 1e-5, "after adoption (x·W + x·ΔW instead of x·(W + ΔW))");
  tf.dispose([x, before]);
  model.dispose();
});

Deno.test("a second addLoRA never wraps a wrapper; the merged option is gone with a clear error", () => {
  const model = addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2 });
  assertThrows(() => addLoRA(model, { rank: 1, alpha: 2 }), Error, /layers\.0 already carries LoRA/);
  const tutorial = new MultilayerPerceptron(4, 3, 3, 2);
  tutorial.layers[0] = new LinearWithLoRA(tutorial.layers[0], 1, 2);
  assertThrows(() => addLoRA(tutorial, { rank: 1, alpha: 2 }), Error, /layers\.0 already carries LoRA/);
  assertThrows(
    () => addLoRA(new MultilayerPerceptron(4, 3, 3, 2), { rank: 1, alpha: 2, merged: true } as never),
    Error,
    /merged option is gone/,
  );
  model.dispose();
  tutorial.dispose();
});

Deno.test("one freezing rule: freezeLinearLayers and addLoRA freeze the same parameters of a GPT", () => {
  const config = { vocabSize: 30, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 8 };
  const byHand = new GPT(config, { seed: 1 });
  const attn = byHand.blocks[0].attn;
  attn.q_proj = new LinearWithLoRA(attn.q_proj, 2, 4, { seed: 1 });
  attn.v_proj = new LinearWithLoRA(attn.v_proj, 2, 4, { seed: 2 });
  freezeLinearLayers(byHand);
  const peft = addLoRA(new GPT(config, { seed: 1 }), { rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj"] });
  const trainable = (m: GPT) => namedParameters(m).filter((p) => p.variable.trainable).map((p) => p.name);
  assertEquals(trainable(byHand), trainable(peft));
  assertEquals(trainable(peft), [
    "blocks.0.attn.q_proj.lora.A",
    "blocks.0.attn.q_proj.lora.B",
    "blocks.0.attn.v_proj.lora.A",
    "blocks.0.attn.v_proj.lora.B",
  ]); // LayerNorms and embeddings frozen on both paths
  byHand.dispose();
  peft.dispose();
});

Deno.test("attaching is one transaction: a failure on the last target leaves the model as it was, no leak", async () => {
  // Rank 3 fits the first two layers (784→128, 128→256) but not the last (256→2).
  const model = new MultilayerPerceptron(784, 128, 256, 2, { seed: 1 });
  const names = namedParameters(model).map((p) => p.name);
  for (
    const options of [{ rank: 3, alpha: 1 }, { rank: 3, alpha: 1, useDora: true }, {
      rank: 3,
      alpha: 1,
      init: "pissa" as const,
    }]
  ) {
    const weights = namedParameters(model).map((p) => p.variable.dataSync().slice());
    await assertNoLeak(() => assertThrows(() => addLoRA(model, options), RangeError, /layers\.4: LoRA rank must be/));
    assertEquals(namedParameters(model).map((p) => p.name), names);
    namedParameters(model).forEach((p, k) => assertEquals([...p.variable.dataSync()], [...weights[k]]));
    assert(namedParameters(model).every((p) => p.variable.trainable), "nothing frozen either");
  }
  model.dispose();
});

Deno.test("kinds: LoRA, DoRA and VeRA are named in one table; no other lib/ file names DoRA's class", async () => {
  assertEquals(ADAPTER_KINDS.map((k) => k.name), ["dora", "lora", "vera"]);
  const offenders: string[] = [];
  const walk = async (dir: URL) => {
    for await (const entry of Deno.readDir(dir)) {
      const url = new URL(entry.name + (entry.isDirectory ? "/" : ""), dir);
      if (entry.isDirectory) await walk(url);
      else if (entry.name.endsWith(".ts") && /instanceof (DoRALayer|VeRALayer)/.test(await Deno.readTextFile(url))) {
        offenders.push(url.pathname.replace(/.*\/lib\//, "lib/"));
      }
    }
  };
  await walk(new URL("../lib/", import.meta.url));
  assertEquals(offenders.sort(), ["lib/peft/dora_kind.ts", "lib/peft/vera.ts"]);
});

Deno.test("LoRA+: B (and one-axis parameters) step as Adam at lr·ratio would, A as Adam at lr", () => {
  const make = () => {
    const model = addLoRA(new MultilayerPerceptron(784, 128, 256, 10, { seed: 5 }), {
      rank: 4,
      alpha: 8,
      seed: 1,
      useDora: true,
    });
    // B away from zero, so that A has a gradient in the first step (the three models stay identical).
    namedParameters(model).filter((p) => p.name.endsWith(".B")).forEach(({ variable }, k) =>
      tf.tidy(() => variable.assign(tf.randomNormal(variable.shape, 0, 0.1, "float32", k + 1)))
    );
    return model;
  };
  const [plus, slow, fast] = [make(), make(), make()];
  const optimizers = [
    createLoraPlusOptimizer(plus, { learningRate: 1e-3, loraplusLrRatio: 16 }),
    new Adam(1e-3),
    new Adam(16e-3),
  ];
  // One step: after it the three models differ, so their next gradients would too.
  [plus, slow, fast].forEach((model, k) => trainStep(model, optimizers[k], batch, trainableVariables(model)).dispose());
  const params = [plus, slow, fast].map((m) => namedParameters(m).filter((p) => p.variable.trainable));
  params[0].forEach(({ name, variable }, i) => {
    const fastOne = name.endsWith(".B") || name.endsWith(".m");
    const twin = params[fastOne ? 2 : 1][i].variable;
    assertBitIdentical(variable, twin, `${name} (${fastOne ? "lr·16" : "lr"})`);
  });
  assertEquals(optimizers[0].learningRateOf(params[0][0].variable), 1e-3); // layers.0.lora.A
  assertThrows(
    () => createLoraPlusOptimizer(plus, { learningRate: 1e-3, loraplusLrRatio: 0 }),
    RangeError,
    /loraplusLrRatio/,
  );
  assertThrows(
    () => createLoraPlusOptimizer(new MultilayerPerceptron(4, 3, 3, 2), { learningRate: 1e-3, loraplusLrRatio: 4 }),
    Error,
    /has no adapters/,
  );
  optimizers.forEach((o) => o.dispose());
  [plus, slow, fast].forEach((m) => m.dispose());
});
