/**
 * VeRA (lib/peft/vera.ts): the adapter, its merge, mixed batches, combinations, and PEFT 0.21.0's files both
 * ways (data/fixtures/peft-vera was written by real PEFT; see make_peft_vera_fixture.py).
 */
import * as tf from "@tensorflow/tfjs";
import {
  adapterFromFiles,
  adapterToFiles,
  addAdapter,
  addLoRA,
  addWeightedAdapter,
  applyMixedBatch,
  countParameters,
  decodeSafetensors,
  encodeSafetensors,
  getModule,
  initBackend,
  type LinearWithAdapters,
  loraLayers,
  mergeAdapter,
  mergeAndUnload,
  MultilayerPerceptron,
  setAdapter,
  unmergeAdapter,
  type VeRALayer,
  weightsFromSafetensors,
} from "../lib/mod.ts";
import { assert, assertBitIdentical, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";

await initBackend();

const FIXTURE = new URL("../data/fixtures/peft-vera/", import.meta.url);

function mlp(seed = 1): MultilayerPerceptron {
  return new MultilayerPerceptron(20, 16, 12, 5, { seed });
}

/** A VeRA model whose λ_b are random, so the adapter changes the outputs. */
function trainedVera(seed = 3): MultilayerPerceptron {
  const model = addLoRA(mlp(), { kind: "vera", rank: 8, seed });
  for (const [, layer] of loraLayers(model)) {
    const vera = layer.lora as unknown as VeRALayer;
    tf.tidy(() => vera.lambda_b.assign(tf.randomNormal([vera.outDim], 0, 0.5, "float32", seed)));
  }
  return model;
}

const x = () => tf.randomNormal([7, 20], 0, 1, "float32", 11) as tf.Tensor2D;

Deno.test("VeRA: trains r + out numbers per layer, starts bit-identical to the base, shares one projection", () => {
  const base = mlp();
  const input = x();
  const before = base.apply(input);
  const model = addLoRA(base, { kind: "vera", rank: 8, seed: 2 });
  assertEquals(countParameters(model).trainable, 3 * 8 + 16 + 12 + 5);
  assertBitIdentical(model.apply(input), before, "VeRA at its start (λ_b = 0)");
  const [a, b] = loraLayers(model).map(([, layer]) => layer.lora as unknown as VeRALayer);
  assertEquals(a.sharedA.shape, [20, 8]); // sized for the widest input of the adapted layers
  assertEquals(b.sharedB.shape, [8, 16]); // and the widest output
  assertEquals([...a.sharedA.dataSync()], [...b.sharedA.dataSync()]);
  assertEquals([...a.lambda_d.dataSync()], new Array(8).fill(Math.fround(0.1)));
  model.dispose();
  tf.dispose([input, before]);
});

Deno.test("VeRA: the forward pass is x·(W + ΔW) + b with ΔW = (A ⊙ λ_d)·B ⊙ λ_b; merging and unmerging", () => {
  const model = trainedVera();
  const input = x();
  const adapted = model.apply(input);
  const layer = getModule(model, "layers.0") as LinearWithAdapters;
  const vera = layer.lora as unknown as VeRALayer;
  const w = layer.linear.weight.clone();
  const by = tf.tidy(() => {
    // ΔW from its definition, element by element on the host: ΔW[i][j] = Σ_k A[i][k]·λ_d[k]·B[k][j]·λ_b[j].
    const { A, B } = vera.projections();
    const [a, b, d, lb] = [A.arraySync(), B.arraySync(), vera.lambda_d.arraySync(), vera.lambda_b.arraySync()];
    return tf.tensor2d(a.map((row) => lb.map((l, j) => row.reduce((s, aik, k) => s + aik * d[k] * b[k][j], 0) * l)));
  });
  assertClose(vera.deltaWeight(), by, 1e-6, "ΔW");
  mergeAdapter(model);
  assertClose(model.apply(input), adapted, 1e-5, "merged against unmerged");
  unmergeAdapter(model);
  assertClose(layer.linear.weight, w, 1e-6, "the weight after unmerging");
  tf.dispose([input, adapted, w, by]);
  model.dispose();
});

Deno.test("VeRA: mixed batches give each row its adapter's output; mergeAndUnload keeps the outputs", () => {
  const model = trainedVera();
  addAdapter(model, "other", { kind: "vera", rank: 4, seed: 9 });
  setAdapter(model, "other");
  for (const [, layer] of loraLayers(model)) {
    const vera = layer.adapters.get("other") as unknown as VeRALayer;
    tf.tidy(() => vera.lambda_b.assign(tf.randomNormal([vera.outDim], 0, 0.5, "float32", 5)));
  }
  const input = x();
  const names = ["default", "other", "__base__", "other", "default", "default", "__base__"];
  const mixed = applyMixedBatch(model, input, names);
  const rows = (name: string) => {
    if (name === "__base__") {
      for (const [, layer] of loraLayers(model)) layer.disableAdapters();
    } else {
      setAdapter(model, name);
    }
    const out = model.apply(input);
    for (const [, layer] of loraLayers(model)) layer.enableAdapters();
    return out;
  };
  const single = Object.fromEntries(["default", "other", "__base__"].map((n) => [n, rows(n)]));
  names.forEach((name, i) => {
    const row = tf.slice(mixed, [i, 0], [1, 5]), expected = tf.slice(single[name], [i, 0], [1, 5]);
    assertClose(row, expected, 1e-6, `row ${i} (${name})`);
    tf.dispose([row, expected]);
  });
  setAdapter(model, "default");
  const plain = mergeAndUnload(model);
  assertClose(plain.apply(input), single.default, 1e-5, "after mergeAndUnload");
  assertEquals(plain.layers[0].constructor.name, "Linear");
  tf.dispose([input, mixed, ...Object.values(single)]);
  plain.dispose();
});

Deno.test("VeRA: files round-trip bit for bit, in PEFT's layout (shared vera_A/vera_B, λ per module)", async () => {
  const model = trainedVera();
  const files = await adapterToFiles(model);
  const config = JSON.parse(files.config);
  assertEquals(
    [config.peft_type, config.r, config.save_projection, config.projection_prng_key, config.d_initial],
    ["VERA", 8, true, 3, 0.1],
  );
  const { tensors } = decodeSafetensors(files.safetensors);
  assertEquals(tensors.get("base_model.vera_A")!.shape, [8, 20]); // PyTorch's [r, max in]
  assertEquals(tensors.get("base_model.vera_B")!.shape, [16, 8]); // [max out, r]
  assertEquals(tensors.get("base_model.model.layers.2.vera_lambda_b")!.shape, [12]);
  assertEquals(tensors.get("base_model.model.layers.2.vera_lambda_d")!.shape, [8]);
  assertEquals(tensors.size, 2 + 3 * 2);
  const fresh = mlp();
  adapterFromFiles(fresh, files);
  const input = x();
  assertBitIdentical(fresh.apply(input), model.apply(input), "reloaded VeRA model");
  tf.dispose(input);
  model.dispose();
  fresh.dispose();
});

Deno.test("VeRA: a file PEFT 0.21.0 wrote loads and gives PEFT's outputs", async () => {
  const reference = JSON.parse(await Deno.readTextFile(new URL("reference.json", FIXTURE)));
  const model = new MultilayerPerceptron(6, 5, 4, 3, { seed: 1 });
  weightsFromSafetensors(model, await Deno.readFile(new URL("base.safetensors", FIXTURE)));
  const input = tf.tensor2d(reference.input);
  assertClose(model.apply(input), tf.tensor2d(reference.base_logits), 1e-6, "base logits");
  adapterFromFiles(model, {
    safetensors: await Deno.readFile(new URL("adapter/adapter_model.safetensors", FIXTURE)),
    config: await Deno.readTextFile(new URL("adapter/adapter_config.json", FIXTURE)),
  });
  const out = model.apply(input);
  assertClose(out, tf.tensor2d(reference.adapter_logits), 1e-6, "PEFT's VeRA logits");
  assert(tf.max(tf.abs(tf.sub(out, tf.tensor2d(reference.base_logits)))).dataSync()[0] > 1e-2, "the adapter acts");
  model.dispose();
});

Deno.test("VeRA: combined as exact factors (A ⊙ λ_d, B ⊙ λ_b); cat of two VeRA adapters is their sum", () => {
  const model = trainedVera();
  addAdapter(model, "b", { kind: "vera", rank: 2, seed: 4 });
  for (const [, layer] of loraLayers(model)) {
    const vera = layer.adapters.get("b") as unknown as VeRALayer;
    tf.tidy(() => vera.lambda_b.assign(tf.randomNormal([vera.outDim], 0, 0.5, "float32", 6)));
  }
  addWeightedAdapter(model, ["default", "b"], [1, -0.5], "both", { combinationType: "cat" });
  for (const [module, layer] of loraLayers(model)) {
    const delta = (name: string) => {
      const adapter = layer.adapters.get(name)! as unknown as VeRALayer;
      return adapter.deltaWeight();
    };
    const combined = (layer.adapters.get("both")!).deltaWeight();
    const expected = tf.tidy(() => tf.sub(delta("default"), tf.mul(delta("b"), 0.5)));
    assertClose(combined, expected, 1e-6, `cat in ${module}`);
    tf.dispose([combined, expected]);
  }
  model.dispose();
});

Deno.test("VeRA: bad files and options are refused with the model unchanged and no leak", async () => {
  const source = trainedVera();
  const good = await adapterToFiles(source);
  source.dispose();
  const { tensors, metadata } = decodeSafetensors(good.safetensors);
  const without = (key: string) => encodeSafetensors(new Map([...tensors].filter(([k]) => k !== key)), metadata);
  const config = (edit: Record<string, unknown>) => JSON.stringify({ ...JSON.parse(good.config), ...edit });
  const cases: [string, (model: MultilayerPerceptron) => void, RegExp][] = [
    [
      "no projection",
      (m) => adapterFromFiles(m, { ...good, safetensors: without("base_model.vera_A") }),
      /missing key "base_model\.vera_A"/,
    ],
    [
      "no λ",
      (m) => adapterFromFiles(m, { ...good, safetensors: without("base_model.model.layers.4.vera_lambda_b") }),
      /missing key "base_model\.model\.layers\.4\.vera_lambda_b"/,
    ],
    [
      "projections not saved",
      (m) => adapterFromFiles(m, { ...good, config: config({ save_projection: false }) }),
      /save_projection false.*PyTorch's random generator/,
    ],
    ["r disagrees", (m) => adapterFromFiles(m, { ...good, config: config({ r: 6 }) }), /vera_A must be \[r = 6/],
    ["bad rank", (m) => addLoRA(m, { kind: "vera", rank: 0 }), /rank must be a positive integer/],
    ["bad dInitial", (m) => addLoRA(m, { kind: "vera", rank: 2, dInitial: Number.NaN }), /dInitial must be a finite/],
  ];
  for (const [what, fn, message] of cases) {
    const model = mlp();
    await assertNoLeak(() => assertThrows(() => fn(model), Error, message)).catch((error) => {
      throw new Error(`${what}: ${(error as Error).message}`);
    });
    assertEquals(model.layers[0].constructor.name, "Linear", `${what}: the model is unchanged`);
    model.dispose();
  }
  const wide = new MultilayerPerceptron(30, 16, 12, 5);
  assertThrows(() => adapterFromFiles(wide, good), Error, /vera_A must be \[r = 8, ≥ 30\]/);
  wide.dispose();
  // A refused load leaves an adapted model as it was.
  const model = trainedVera();
  const input = x();
  const before = model.apply(input);
  assertThrows(() => adapterFromFiles(model, { ...good, config: config({ r: 6 }) }, "again"), Error, /vera_A/);
  assertBitIdentical(model.apply(input), before, "model after a refused load");
  tf.dispose([input, before]);
  assertEquals(loraLayers(model).map(([, l]) => [...l.adapters.keys()]), [["default"], ["default"], ["default"]]);
  model.dispose();
});
