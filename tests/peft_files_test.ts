import * as tf from "@tensorflow/tfjs";
import {
  type AdapterFiles,
  adapterFromFiles,
  adapterToFiles,
  addAdapter,
  addLoRA,
  countParameters,
  decodeSafetensors,
  encodeSafetensors,
  initBackend,
  Linear,
  type LinearWithAdapters,
  listAdapters,
  loadAdapter,
  loraLayers,
  MultilayerPerceptron,
  saveAdapter,
  type ScalingConvention,
  setAdapter,
  trainableVariables,
} from "../lib/mod.ts";
import {
  assert,
  assertBitIdentical,
  assertClose,
  assertEquals,
  assertNoLeak,
  assertRejects,
  assertThrows,
} from "./assert.ts";

import { assertUnchanged, FIXTURES, input, mlp, randomize, small, snapshot } from "./fixtures.ts";

await initBackend();

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
      const original = tuned.layers[Number(module.split(".")[1])] as LinearWithAdapters;
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
  const layer2 = model.layers[2] as LinearWithAdapters;
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
    assertEquals(peftScaling, (model.layers[0] as LinearWithAdapters).lora.scaling);
    model.dispose();
  }
});

Deno.test("adapter file written here equals the hand-made fixture byte for byte, config included", async () => {
  const model = addLoRA(new MultilayerPerceptron(2, 2, 2, 2, { seed: 1 }), {
    rank: 1,
    alpha: 2,
    targetModules: ["layers.0"],
  });
  const lora = (model.layers[0] as LinearWithAdapters).lora;
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
  const layer = model.layers[0] as LinearWithAdapters;
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
  const layer = model.layers[0] as LinearWithAdapters;
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
    addAdapter(tuned, "inverted", {
      rank: 3,
      alpha: 5,
      scaling: "paper",
      seed: 2,
      targetModules: ["layers.2", "layers.4"],
    });
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
    assertEquals((served.layers[2] as LinearWithAdapters).activeAdapter, "default");
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
  const target = addLoRA(small(), { rank: 2, alpha: 1, targetModules: ["layers.0"] });
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

Deno.test("layers of different ranks and alphas: PEFT's rank_pattern and alpha_pattern, written and read", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2, targetModules: ["layers.0"] });
  addAdapter(model, "uneven", { rank: 2, alpha: 2, targetModules: ["layers.4"], seed: 3 });
  (model.layers[0] as LinearWithAdapters).addAdapter("uneven", 3, 5, { seed: 4 });
  randomize(model, "uneven", 9);
  await assertRejects(() => adapterToFiles(model, "nope"), Error, /no adapter "nope"; it has "default"/);
  const files = await adapterToFiles(model, "uneven");
  const config = JSON.parse(files.config);
  // The first layer (layers.0, rank 3, alpha 5) sets r and lora_alpha; PEFT's lora_alpha is the tutorial's alpha·r.
  assertEquals([config.r, config.lora_alpha], [3, 15]);
  assertEquals([config.rank_pattern, config.alpha_pattern], [{ "layers.4": 2 }, { "layers.4": 4 }]);
  const served = small();
  adapterFromFiles(served, files, "uneven");
  const x = input(4, 20);
  setAdapter(model, "uneven");
  const [a, b] = [model.apply(x), served.apply(x)];
  assertBitIdentical(b, a, "reloaded outputs");
  const layers = loraLayers(served).map(([name, layer]) => [name, layer.lora.rank, layer.lora.alpha]);
  assertEquals(layers, [["layers.0", 3, 5], ["layers.4", 2, 2]]);
  // A file as PEFT would write it (no metadata): the patterns give each layer its rank and PEFT's scaling.
  const { tensors } = decodeSafetensors(files.safetensors);
  const peftFiles = { config: files.config, safetensors: encodeSafetensors(tensors) };
  const fromPeft = small();
  adapterFromFiles(fromPeft, peftFiles, "uneven");
  const scalings = loraLayers(fromPeft).map(([, layer]) => [layer.lora.rank, layer.lora.scaling]);
  assertEquals(scalings, [[3, 5], [2, 2]]);
  const c = fromPeft.apply(x);
  assertClose(c, a, 1e-6, "PEFT-style file");
  // Layers must still share convention: one config holds one.
  addAdapter(model, "mixed", { rank: 2, alpha: 2, targetModules: ["layers.0"] });
  addAdapter(model, "mixed", { rank: 2, alpha: 2, scaling: "paper", targetModules: ["layers.2"] });
  await assertRejects(
    () => adapterToFiles(model, "mixed"),
    Error,
    /convention paper in layers.2 but convention tutorial/,
  );
  tf.dispose([x, a, b, c]);
  [model, served, fromPeft].forEach((m) => m.dispose());
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
      /peft_type "PREFIX_TUNING"; this library reads "LORA" \(with or without use_dora\) and "VERA"/,
    ],
    ["rank not an integer", withConfig(good, (c) => c.r = 2.5), RangeError, /r = 2.5; expected a positive integer/],
    [
      "config rank disagrees with the tensors",
      withConfig(good, (c) => c.r = 4),
      RangeError,
      /config says r = 4 for layers.0, but it has lora_A \[2,20\] and lora_B \[16,2\]/,
    ],
    [
      "a rank_pattern that disagrees with the tensors",
      withConfig(good, (c) => c.rank_pattern = { "layers\\.2": 3 }),
      RangeError,
      /config says r = 3 for layers.2, but it has lora_A \[2,16\]/,
    ],
    [
      "a rank_pattern that is not a map of ranks",
      withConfig(good, (c) => c.rank_pattern = { "layers.2": 0 }),
      RangeError,
      /rank_pattern \{"layers.2":0\}; expected module names mapped to positive integers/,
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
      "a regular expression that does not parse",
      withConfig(good, (c) => c.target_modules = "layers\\.(0"),
      SyntaxError,
      /"layers\\.\(0" is not a valid regular expression/,
    ],
    [
      "a regular expression that selects fewer layers than the file holds",
      withConfig(good, (c) => c.target_modules = "layers\\.[02]"),
      Error,
      /the file has tensors for layers.4, which target_modules "layers\\\\.\[02\]" does not select/,
    ],
    [
      "DoRA config without magnitudes",
      withConfig(good, (c) => c.use_dora = true),
      Error,
      /missing key "base_model.model.layers.0.lora_magnitude_vector": the config sets use_dora/,
    ],
    [
      "scaling in config disagrees with the metadata",
      withConfig(good, (c) => c.lora_alpha = 5),
      Error,
      /config's scaling for layers.0 \(lora_alpha 5, r 2\) is 2.5, but the metadata's alpha 2 \(tutorial\) gives 2/,
    ],
    [
      "metadata convention the config forbids",
      withConfig(good, (c) => c.use_rslora = true),
      Error,
      /metadata records convention "tutorial", alpha 2 for layers.0, which the config \(use_rslora: true\) does not allow/,
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
    const target = name === "default" ? addLoRA(small(), { rank: 2, alpha: 2, targetModules: ["layers.0"] }) : small();
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
