/**
 * QLoRA: adapters (LoRA, DoRA, VeRA) on a frozen quantized base (lib/quant.ts `QuantizedLinear`), their files,
 * and merging into a quantized base: lossy, bounded, and refused to unmerge; exact into a float32 copy.
 */
import * as tf from "@tensorflow/tfjs";
import {
  Adam,
  adapterFromFiles,
  adapterToFiles,
  addLoRA,
  type AddLoRAOptions,
  applyMixedBatch,
  countParameters,
  GPT,
  initBackend,
  Linear,
  loadPretrained,
  loraLayers,
  mergeAdapter,
  mergeAndUnload,
  MultilayerPerceptron,
  namedParameters,
  trainableVariables,
  trainStep,
  unmergeAdapter,
} from "../lib/mod.ts";
import { QuantizedLinear, quantizeModel } from "../lib/quant.ts";
import { assert, assertBitIdentical, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";

await initBackend();

const batch = {
  features: Float32Array.from({ length: 32 * 784 }, (_, i) => (i * 7919 % 255) / 255),
  labels: Int32Array.from({ length: 32 }, (_, i) => i % 10),
  size: 32,
};
const input = () => tf.tensor2d(batch.features.slice(0, 8 * 784), [8, 784]);
const quantized = (bits: 4 | 8 = 4) =>
  quantizeModel(new MultilayerPerceptron(784, 128, 256, 10, { seed: 3 }), { bits, doubleQuant: bits === 4 });

/** A few Adam steps, so that B (or λ_b, or m) is away from its start. */
function trainFew(model: MultilayerPerceptron, steps = 3): void {
  const optimizer = new Adam(0.01);
  for (let k = 0; k < steps; k++) trainStep(model, optimizer, batch, trainableVariables(model)).dispose();
  optimizer.dispose();
}

const kinds: [string, Partial<AddLoRAOptions>][] = [
  ["LoRA", { rank: 4, alpha: 8 }],
  ["DoRA", { rank: 4, alpha: 8, useDora: true }],
  ["VeRA", { kind: "vera", rank: 16 }],
];

for (const [name, options] of kinds) {
  Deno.test(`QLoRA (${name}): at its start the adapted 4-bit model is the 4-bit base, bit for bit; only adapters train`, () => {
    const model = quantized();
    const x = input();
    const before = model.apply(x);
    addLoRA(model, { rank: 4, ...options, seed: 1 });
    assert(loraLayers(model).every(([, layer]) => layer.linear instanceof QuantizedLinear), "the bases stay quantized");
    assertBitIdentical(model.apply(x), before, "adapted 4-bit model at its start");
    assert(countParameters(model).total === countParameters(model).trainable, "the quantized base has no parameters");
    const frozen = loraLayers(model).map(([, layer]) => (layer.linear as QuantizedLinear).quantized);
    trainFew(model);
    loraLayers(model).forEach(([, layer], k) => assert((layer.linear as QuantizedLinear).quantized === frozen[k]));
    const after = model.apply(x);
    assert(tf.max(tf.abs(tf.sub(after, before))).dataSync()[0] > 1e-4, "training moved the outputs");
    tf.dispose([x, before, after]);
    model.dispose();
  });
}

Deno.test("QLoRA: an adapter trained on a 4-bit base saves as PEFT's files and reloads onto a 4-bit base, bit for bit", async () => {
  for (const [name, options] of kinds) {
    const model = quantized();
    addLoRA(model, { rank: 4, ...options, seed: 1 });
    trainFew(model);
    const files = await adapterToFiles(model);
    const fresh = quantized();
    adapterFromFiles(fresh, files);
    const x = input();
    assertBitIdentical(fresh.apply(x), model.apply(x), `${name} reloaded`);
    tf.dispose(x);
    model.dispose();
    fresh.dispose();
  }
});

Deno.test("QLoRA: mixed batches give each row its adapter's output on a 4-bit base", () => {
  const model = quantized(8);
  addLoRA(model, { rank: 4, alpha: 8, seed: 1 });
  trainFew(model);
  const x = input();
  const names = ["default", "__base__", "default", "__base__", "default", "default", "__base__", "default"];
  const mixed = applyMixedBatch(model, x, names);
  const adapted = model.apply(x);
  for (const [, layer] of loraLayers(model)) layer.disableAdapters();
  const base = model.apply(x);
  names.forEach((n, i) => {
    const [row, want] = [tf.slice(mixed, [i, 0], [1, 10]), tf.slice(n === "default" ? adapted : base, [i, 0], [1, 10])];
    assertClose(row, want, 1e-5, `row ${i}`);
    tf.dispose([row, want]);
  });
  tf.dispose([x, mixed, adapted, base]);
  model.dispose();
});

Deno.test("QLoRA: merging into a 4-bit base rounds W + ΔW again (bounded), and cannot be undone", () => {
  const model = quantized();
  addLoRA(model, { rank: 4, alpha: 8, seed: 1 });
  trainFew(model, 5);
  const x = input();
  const adapted = model.apply(x);
  // Each re-quantized weight is off by at most half the widest gap of the NF4 code (0.1519) times its block's absmax,
  // which is at most the layer's largest |W + ΔW|.
  const deltas = loraLayers(model).map(([, layer]) =>
    tf.tidy(() => tf.add(layer.linear.denseWeight(), layer.lora.deltaWeight()))
  );
  mergeAdapter(model);
  loraLayers(model).forEach(([module, layer], k) => {
    const [merged, exact] = [tf.tidy(() => layer.linear.denseWeight()), deltas[k]];
    const err = tf.tidy(() => tf.max(tf.abs(tf.sub(merged, exact))).dataSync()[0]);
    const absmax = tf.tidy(() => tf.max(tf.abs(exact)).dataSync()[0]);
    assert(err > 0, `${module}: the merge rounded`);
    assert(err <= 0.1519 * absmax * (1 + 1e-3) + 1e-6, `${module}: error ${err} within half an NF4 gap of ${absmax}`);
    merged.dispose();
  });
  const merged = model.apply(x);
  const outputError = tf.max(tf.abs(tf.sub(merged, adapted))).dataSync()[0];
  assert(outputError > 1e-4, `a quantized merge changes the outputs (${outputError})`);
  assertThrows(() => unmergeAdapter(model), Error, /merged into a quantized base.*not give back the original weight/);
  tf.dispose([x, adapted, merged, ...deltas]);
  model.dispose();
});

Deno.test("QLoRA: mergeAndUnload({ dequantize: true }) merges into float32 copies, exactly; without it, into 4 bits", () => {
  for (const dequantize of [true, false]) {
    const model = quantized();
    addLoRA(model, { rank: 4, alpha: 8, seed: 1 });
    trainFew(model, 5);
    const x = input();
    const adapted = model.apply(x);
    const before = tf.memory().numTensors;
    mergeAndUnload(model, { dequantize });
    const out = model.apply(x);
    if (dequantize) {
      assert(model.layers[0] instanceof Linear, "a float32 Linear after dequantizing");
      assertClose(out, adapted, 1e-5, "merged into float32");
    } else {
      assert(model.layers[0] instanceof QuantizedLinear, "still 4-bit");
      assert(tf.max(tf.abs(tf.sub(out, adapted))).dataSync()[0] > 1e-4, "rounded");
    }
    assert(tf.memory().numTensors <= before + 1, "the adapters were freed");
    tf.dispose([x, adapted, out]);
    model.dispose();
  }
});

Deno.test("QLoRA: PiSSA is refused on a quantized base; nothing changes, nothing leaks", async () => {
  const model = quantized();
  const snapshot = (model.layers[0] as QuantizedLinear).quantized;
  await assertNoLeak(() =>
    assertThrows(() => addLoRA(model, { rank: 4, alpha: 8, init: "pissa" }), Error, /PiSSA.*quantized base/)
  );
  assert((model.layers[0] as QuantizedLinear).quantized === snapshot);
  assertEquals(loraLayers(model).length, 0);
  assertEquals(namedParameters(model).length, 0);
  model.dispose();
});

Deno.test("QLoRA: a step on part of a 4-bit model leaks nothing; a 4-bit GPT takes LoRA on q and v", async () => {
  const model = quantized();
  addLoRA(model, { rank: 2, alpha: 4, targetModules: ["layers.0", "layers.4"], seed: 2 });
  const optimizer = new Adam(0.01);
  trainStep(model, optimizer, batch, trainableVariables(model)).dispose(); // moments exist from here on
  await assertNoLeak(() => trainStep(model, optimizer, batch, trainableVariables(model)).dispose());
  optimizer.dispose();
  model.dispose();
  const gpt = quantizeModel(new GPT({ vocabSize: 30, blockSize: 8, nLayer: 1, nHead: 2, nEmbd: 16 }, { seed: 1 }), {
    bits: 4,
  });
  const tokens = tf.tensor2d([[1, 2, 3, 4]], undefined, "int32");
  const before = gpt.apply(tokens);
  addLoRA(gpt, { rank: 2, alpha: 4, targetModules: ["q_proj", "v_proj"] });
  assertEquals(loraLayers(gpt).map(([name]) => name), ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj"]);
  assert(gpt.lm_head instanceof Linear, "the output layer stays float32, as transformers keeps it");
  assertBitIdentical(gpt.apply(tokens), before, "4-bit GPT with new adapters");
  tf.dispose([tokens, before]);
  gpt.dispose();
});

for (const name of ["tiny-llama", "tiny-gpt2"]) {
  Deno.test(`QLoRA on a Hugging Face checkpoint (${name}): 4-bit layers, LoRA by PEFT's names, PEFT's files`, async () => {
    const { model } = await loadPretrained(new URL(`../data/fixtures/hf/${name}`, import.meta.url).pathname);
    const tokens = tf.tensor2d([[1, 2, 3, 4, 5]], undefined, "int32");
    const full = model.apply(tokens);
    quantizeModel(model, { bits: 4 });
    const quantizedOut = model.apply(tokens);
    const gap = tf.tidy(() => tf.max(tf.abs(tf.sub(quantizedOut, full))).dataSync()[0]);
    assert(gap > 0 && gap < 1, `4-bit logits move a little (${gap})`);
    const targets = name === "tiny-gpt2" ? ["c_attn"] : ["q_proj", "v_proj"];
    addLoRA(model, { rank: 2, alpha: 4, targetModules: targets, seed: 1 });
    assert(loraLayers(model).every(([, layer]) => layer.linear instanceof QuantizedLinear));
    assertBitIdentical(model.apply(tokens), quantizedOut, "LoRA at its start on the 4-bit checkpoint");
    const config = JSON.parse((await adapterToFiles(model)).config);
    assertEquals(config.fan_in_fan_out, name === "tiny-gpt2", "GPT-2's Conv1D layers keep fan_in_fan_out");
    tf.dispose([tokens, full, quantizedOut]);
    model.dispose();
  });
}
