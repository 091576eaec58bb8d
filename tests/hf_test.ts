import * as tf from "@tensorflow/tfjs";
import {
  adapterFromFiles,
  addLoRA,
  countParameters,
  decodeSafetensors,
  encodeSafetensors,
  findTargets,
  generate,
  initBackend,
  loadAdapter,
  loraLayers,
  saveAdapter,
  sequenceCrossEntropy,
  trainableVariables,
} from "../lib/mod.ts";
import {
  applyRotary,
  buildModel,
  disposeCache,
  geluTanh,
  type KVCache,
  loadPretrained,
  parseConfig,
  type PretrainedCausalLM,
  readCheckpoint,
  repeatHeads,
  rmsNorm,
  rotaryTables,
  siluGate,
  TiedLMHead,
} from "../lib/hf/mod.ts";
import { assert, assertBitIdentical, assertEquals, assertRejects, maxAbsDiff } from "./assert.ts";
import { FIXTURES, randomize } from "./fixtures.ts";

await initBackend();

const HF = `${FIXTURES}/hf`;
const NAMES = ["tiny-gpt2", "tiny-llama", "tiny-qwen2"] as const;
/** Scratch folders for broken checkpoints and written adapters, removed when the tests end. */
const SCRATCH = await Deno.makeTempDir({ dir: "data", prefix: "hf-test-" });
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));

interface Reference {
  input_ids: number[][];
  logits: number[];
  logits_shape: number[];
  greedy_prompt: number[][];
  greedy_ids: number[][];
  encodings: Record<string, number[]>;
  decoded: Record<string, string>;
  adapter_logits: number[];
}

async function reference(name: string): Promise<Reference> {
  return JSON.parse(await Deno.readTextFile(`${HF}/${name}/reference.json`));
}

/** `max |a − b|` relative to the largest reference value: 1e-4 means "to 1e-4 of the logits' scale". */
function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  return maxAbsDiff(got, want) / scale;
}

function logitsOf(model: PretrainedCausalLM, ids: number[][]): Float32Array {
  return tf.tidy(() => model.apply(tf.tensor2d(ids, undefined, "int32")).dataSync() as Float32Array);
}

// Loading and numerics -------------------------------------------------------------------------------------

for (const name of NAMES) {
  Deno.test(`${name}: logits equal transformers' to 1e-4 relative, and nothing leaks`, async () => {
    const ref = await reference(name);
    const before = tf.memory().numTensors;
    const { model, config } = await loadPretrained(`${HF}/${name}`);
    const logits = tf.tidy(() => model.apply(tf.tensor2d(ref.input_ids, undefined, "int32")));
    assertEquals(logits.shape, ref.logits_shape);
    const error = relativeError(logits.dataSync(), ref.logits);
    assert.ok(error < 1e-4, `${name}: relative error ${error}`);
    // A model with random weights is far off: the comparison can fail.
    const random = buildModel(config, { seed: 3 });
    assert.ok(relativeError(logitsOf(random, ref.input_ids), ref.logits) > 0.1);
    tf.dispose([logits]);
    random.dispose();
    model.dispose();
    assertEquals(tf.memory().numTensors, before);
  });

  Deno.test(`${name}: cached decoding gives the logits of the whole context`, async () => {
    const ref = await reference(name);
    const { model } = await loadPretrained(`${HF}/${name}`);
    const ids = ref.input_ids;
    const whole = logitsOf(model, ids);
    const [batch, time] = [ids.length, ids[0].length];
    const vocab = model.config.vocabSize;
    let cache: KVCache | null = null;
    const pieces: Float32Array[] = [];
    for (const [from, to] of [[0, 5], [5, 6], [6, 8]]) {
      const tokens = tf.tensor2d(ids.map((row) => row.slice(from, to)), undefined, "int32");
      const out = model.applyCached(tokens, cache);
      tokens.dispose();
      disposeCache(cache);
      cache = out.cache;
      pieces.push(out.logits.dataSync() as Float32Array);
      out.logits.dispose();
    }
    disposeCache(cache);
    // Put the pieces back in [batch, time, vocab] order and compare.
    const joined = new Float32Array(batch * time * vocab);
    const spans = [[0, 5], [5, 6], [6, 8]];
    pieces.forEach((piece, k) => {
      const [from, to] = spans[k];
      for (let b = 0; b < batch; b++) {
        for (let t = from; t < to; t++) {
          const src = (b * (to - from) + (t - from)) * vocab;
          joined.set(piece.subarray(src, src + vocab), (b * time + t) * vocab);
        }
      }
    });
    assert.ok(maxAbsDiff(joined, whole) < 1e-5, `cached vs whole: ${maxAbsDiff(joined, whole)}`);
    model.dispose();
  });

  Deno.test(`${name}: greedy generation gives transformers' ids`, async () => {
    const ref = await reference(name);
    const { model } = await loadPretrained(`${HF}/${name}`);
    const before = tf.memory().numTensors;
    const rows = await generate(model, { prompt: ref.greedy_prompt, maxNewTokens: 8, temperature: 0 });
    assertEquals(rows, ref.greedy_ids);
    const uncached = await generate(model, {
      prompt: ref.greedy_prompt,
      maxNewTokens: 8,
      temperature: 0,
      useCache: false,
    });
    assertEquals(uncached, ref.greedy_ids);
    assertEquals(tf.memory().numTensors, before);
    model.dispose();
  });

  Deno.test(`${name}: tokenizer ids equal transformers' for every sample, and decode round-trips`, async () => {
    const ref = await reference(name);
    const { model, tokenizer } = await loadPretrained(`${HF}/${name}`);
    model.dispose();
    assertEquals(Object.keys(ref.encodings).length, 4);
    for (const [text, ids] of Object.entries(ref.encodings)) {
      assertEquals(tokenizer.encode(text), ids, text);
      assertEquals(tokenizer.decode(ids), ref.decoded[text], text);
      // These Llama tokenizers mark their byte-fallback tokens (<0xC3>, …) special too, so only ASCII text
      // survives skipping special tokens whole.
      if (/^[ -~]*$/.test(text)) assertEquals(tokenizer.decode(ids, { skipSpecialTokens: true }).trim(), text);
    }
    assert.throws(() => tokenizer.decode([tokenizer.vocabSize]), /not a token id/);
  });
}

Deno.test("tied embeddings stay one variable; parameter counts are the checkpoint's", async () => {
  const { model } = await loadPretrained(`${HF}/tiny-llama`);
  const index = JSON.parse(await Deno.readTextFile(`${HF}/tiny-llama/model.safetensors.index.json`));
  assertEquals(countParameters(model).total, index.metadata.total_parameters);
  assert.ok(model.lm_head instanceof TiedLMHead);
  assert.ok(!model.namedParameters().some((p) => p.name.startsWith("lm_head")));
  // Changing the embedding changes the output layer: they are one variable.
  const ids = [[1, 2, 3]];
  const before = logitsOf(model, ids);
  const table = model.getInputEmbeddings().weight;
  tf.tidy(() => table.assign(tf.mul(table, 2)));
  const after = logitsOf(model, ids);
  assert.ok(maxAbsDiff(before, after) > 1e-3);
  // A clone is tied to its own table.
  const copy = model.clone();
  tf.tidy(() => copy.getInputEmbeddings().weight.assign(tf.zerosLike(table)));
  assert.ok(maxAbsDiff(logitsOf(copy, ids), new Float32Array(3 * 400)) === 0);
  assertEquals(logitsOf(model, ids), after);
  copy.dispose();
  model.dispose();
});

Deno.test("module names are Hugging Face's: targets select what PEFT selects", async () => {
  const { model: llama } = await loadPretrained(`${HF}/tiny-llama`);
  const { model: gpt2 } = await loadPretrained(`${HF}/tiny-gpt2`);
  assertEquals(findTargets(llama, { targetModules: ["q_proj", "v_proj"] }), [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
  ]);
  const linear = findTargets(llama, { targetModules: "all-linear" });
  assertEquals(linear.length, 14);
  assert.ok(linear.includes("model.layers.1.mlp.down_proj"));
  assertEquals(findTargets(gpt2, { targetModules: "all-linear" }), [
    "transformer.h.0.attn.c_attn",
    "transformer.h.0.attn.c_proj",
    "transformer.h.0.mlp.c_fc",
    "transformer.h.0.mlp.c_proj",
    "transformer.h.1.attn.c_attn",
    "transformer.h.1.attn.c_proj",
    "transformer.h.1.mlp.c_fc",
    "transformer.h.1.mlp.c_proj",
  ]);
  // An untied model's lm_head is a Linear, and all-linear still leaves it out, as PEFT does.
  const config = parseConfig({ ...llama.config.raw, tie_word_embeddings: false });
  const untied = buildModel(config, { seed: 1 });
  assert.ok(findTargets(untied, {}).includes("lm_head"));
  assert.ok(!findTargets(untied, { targetModules: "all-linear" }).includes("lm_head"));
  const names = new Set(untied.namedParameters().map((p) => p.name));
  assert.ok(names.has("lm_head.weight") && names.has("model.layers.0.self_attn.q_proj.weight"));
  for (const model of [llama, gpt2, untied]) model.dispose();
});

Deno.test("GPT-2 files without the transformer. prefix (the original gpt2 checkpoint's) load the same", async () => {
  const ref = await reference("tiny-gpt2");
  const tensors = await readCheckpoint(`${HF}/tiny-gpt2`);
  const renamed = new Map(
    [...tensors].map(([name, t]) => [name.replace(/^transformer\./, ""), { shape: t.shape, data: t.data }]),
  );
  renamed.set("h.0.attn.bias", { shape: [1, 1, 4, 4], data: new Float32Array(16).fill(1) }); // a mask buffer
  const dir = `${SCRATCH}/old-gpt2`;
  await Deno.mkdir(dir, { recursive: true });
  for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${HF}/tiny-gpt2/${file}`, `${dir}/${file}`);
  }
  await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors(renamed));
  const { model } = await loadPretrained(dir);
  assert.ok(relativeError(logitsOf(model, ref.input_ids), ref.logits) < 1e-4);
  model.dispose();
  await Deno.remove(dir, { recursive: true });
});

// Bad folders ----------------------------------------------------------------------------------------------

/** A copy of fixture `name` in a scratch folder, with `edit` applied to it. */
async function brokenCopy(name: string, edit: (dir: string) => Promise<void>): Promise<string> {
  const dir = `${SCRATCH}/broken-${name}-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(dir, { recursive: true });
  for await (const entry of Deno.readDir(`${HF}/${name}`)) {
    if (entry.isFile) await Deno.copyFile(`${HF}/${name}/${entry.name}`, `${dir}/${entry.name}`);
  }
  await edit(dir);
  return dir;
}

async function editJson(path: string, edit: (json: Record<string, unknown>) => void): Promise<void> {
  const json = JSON.parse(await Deno.readTextFile(path));
  edit(json);
  await Deno.writeTextFile(path, JSON.stringify(json));
}

/** Rewrites `file` of `dir` with `edit` applied to its tensors. */
async function editTensors(
  dir: string,
  file: string,
  edit: (tensors: Map<string, { shape: number[]; data: Float32Array }>) => void,
): Promise<void> {
  const { tensors } = decodeSafetensors(await Deno.readFile(`${dir}/${file}`));
  const plain = new Map([...tensors].map(([name, t]) => [name, { shape: t.shape, data: t.data }]));
  edit(plain);
  await Deno.writeFile(`${dir}/${file}`, encodeSafetensors(plain));
}

const BAD_FOLDERS: [string, string, (dir: string) => Promise<void>, RegExp][] = [
  [
    "a missing shard",
    "tiny-llama",
    (dir) => Deno.remove(`${dir}/model-00002-of-00003.safetensors`),
    /shard model-00002-of-00003\.safetensors is missing/,
  ],
  [
    "a tensor of the wrong shape",
    "tiny-qwen2",
    (dir) =>
      editTensors(dir, "model.safetensors", (t) => {
        t.set("model.layers.1.mlp.up_proj.weight", { shape: [64, 128], data: new Float32Array(128 * 64) });
      }),
    /model\.safetensors: model\.layers\.1\.mlp\.up_proj\.weight has shape \[64,128\]; .* needs \[128,64\]/,
  ],
  [
    "a missing tensor",
    "tiny-gpt2",
    (dir) => editTensors(dir, "model.safetensors", (t) => t.delete("transformer.h.1.ln_2.bias")),
    /no weights file holds transformer\.h\.1\.ln_2\.bias/,
  ],
  [
    "an extra tensor",
    "tiny-qwen2",
    (dir) =>
      editTensors(dir, "model.safetensors", (t) => {
        t.set("model.layers.0.self_attn.o_proj.bias", { shape: [64], data: new Float32Array(64) });
      }),
    /model\.safetensors: unexpected tensor model\.layers\.0\.self_attn\.o_proj\.bias/,
  ],
  [
    "an unknown architecture",
    "tiny-llama",
    (dir) => editJson(`${dir}/config.json`, (c) => (c.architectures = ["MistralForCausalLM"])),
    /architecture "MistralForCausalLM" is not supported; supported: GPT2LMHeadModel, LlamaForCausalLM/,
  ],
  [
    "an unsupported rope type",
    "tiny-llama",
    (dir) =>
      editJson(`${dir}/config.json`, (c) => (c.rope_parameters = { rope_type: "llama3", rope_theta: 5e5, factor: 8 })),
    /rope_parameters has rope_type "llama3", which is not supported/,
  ],
  [
    "an older config's rope_scaling",
    "tiny-llama",
    (dir) =>
      editJson(`${dir}/config.json`, (c) => {
        delete c.rope_parameters;
        c.rope_theta = 10000;
        c.rope_scaling = { type: "linear", factor: 2 };
      }),
    /rope_scaling has rope_type "linear"/,
  ],
  [
    "a tensor the index puts in another shard",
    "tiny-llama",
    (dir) =>
      editJson(`${dir}/model.safetensors.index.json`, (c) => {
        (c.weight_map as Record<string, string>)["model.norm.weight"] = "model-00001-of-00003.safetensors";
      }),
    /model-00003-of-00003\.safetensors holds model\.norm\.weight, but .* puts it in model-00001/,
  ],
  ["no config.json", "tiny-gpt2", (dir) => Deno.remove(`${dir}/config.json`), /has no config\.json/],
];

for (const [what, name, edit, message] of BAD_FOLDERS) {
  Deno.test(`loadPretrained: ${what} is a clear error, and no tensor is left behind`, async () => {
    const dir = await brokenCopy(name, edit);
    const before = tf.memory().numTensors;
    await assertRejects(() => loadPretrained(dir), Error, message);
    assertEquals(tf.memory().numTensors, before);
    await Deno.remove(dir, { recursive: true });
  });
}

Deno.test("an older config's rope_theta with rope_scaling null is read", async () => {
  const dir = await brokenCopy("tiny-llama", (dir) =>
    editJson(`${dir}/config.json`, (c) => {
      delete c.rope_parameters;
      c.rope_theta = 10000;
      c.rope_scaling = null;
    }));
  const ref = await reference("tiny-llama");
  const { model, config } = await loadPretrained(dir);
  assertEquals(config.ropeTheta, 10000);
  assert.ok(relativeError(logitsOf(model, ref.input_ids), ref.logits) < 1e-4);
  model.dispose();
  await Deno.remove(dir, { recursive: true });
});

// PEFT adapters ----------------------------------------------------------------------------------------------

for (const name of ["tiny-llama", "tiny-qwen2"]) {
  Deno.test(`${name}: PEFT's adapter loads with loadAdapter and gives its adapter_logits`, async () => {
    const ref = await reference(name);
    const { model } = await loadPretrained(`${HF}/${name}`);
    await loadAdapter(model, `${HF}/${name}/peft-lora`);
    const config = JSON.parse(await Deno.readTextFile(`${HF}/${name}/peft-lora/adapter_config.json`));
    assertEquals(loraLayers(model).length, 2 * config.target_modules.length);
    const error = relativeError(logitsOf(model, ref.input_ids), ref.adapter_logits);
    assert.ok(error < 1e-4, `relative error ${error}`);
    assert.ok(relativeError(ref.logits, ref.adapter_logits) > 1e-3); // the adapter changes the logits
    model.dispose();
  });
}

Deno.test("tiny-gpt2: PEFT's c_attn adapter (Conv1D) gives its adapter_logits", async () => {
  // PEFT's lora_A [r, in] and lora_B [out, r] have the same layout on a Conv1D as on a Linear; fan_in_fan_out
  // only says how PEFT folds ΔW into the stored [in, out] weight. So the tensors read as they are.
  const ref = await reference("tiny-gpt2");
  const { model } = await loadPretrained(`${HF}/tiny-gpt2`);
  const dir = `${HF}/tiny-gpt2/peft-lora`;
  const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
  assertEquals(config.fan_in_fan_out, true);
  delete config.fan_in_fan_out;
  const safetensors = await Deno.readFile(`${dir}/adapter_model.safetensors`);
  adapterFromFiles(model, { safetensors, config: JSON.stringify(config) });
  const error = relativeError(logitsOf(model, ref.input_ids), ref.adapter_logits);
  assert.ok(error < 1e-4, `relative error ${error}`);
  model.dispose();
});

Deno.test("tiny-gpt2: loadAdapter reads PEFT's fan_in_fan_out adapter for the Conv1D layers as it is", async () => {
  const ref = await reference("tiny-gpt2");
  const { model } = await loadPretrained(`${HF}/tiny-gpt2`);
  try {
    await loadAdapter(model, `${HF}/tiny-gpt2/peft-lora`);
    const error = relativeError(logitsOf(model, ref.input_ids), ref.adapter_logits);
    assert.ok(error < 1e-4, `relative error ${error}`);
  } finally {
    model.dispose();
  }
});

for (const [name, targets] of [["tiny-qwen2", ["q_proj", "v_proj"]], ["tiny-gpt2", ["c_attn"]]] as const) {
  Deno.test(`${name}: an adapter written here has PEFT's keys and reloads bit-identically`, async () => {
    const ref = await reference(name);
    const { model } = await loadPretrained(`${HF}/${name}`);
    addLoRA(model, { rank: 4, alpha: 8, targetModules: [...targets], seed: 5 });
    randomize(model, "default", 11);
    const dir = `${SCRATCH}/adapter-${name}`;
    await saveAdapter(model, dir);
    const { tensors } = decodeSafetensors(await Deno.readFile(`${dir}/adapter_model.safetensors`));
    const prefix = name === "tiny-gpt2"
      ? "base_model.model.transformer.h.0.attn.c_attn"
      : "base_model.model.model.layers.0.self_attn.q_proj";
    assert.ok(tensors.has(`${prefix}.lora_A.weight`) && tensors.has(`${prefix}.lora_B.weight`), [...tensors.keys()][0]);
    const { model: served } = await loadPretrained(`${HF}/${name}`);
    try {
      await loadAdapter(served, dir);
      const [a, b] = [logitsOf(model, ref.input_ids), logitsOf(served, ref.input_ids)];
      assertBitIdentical(tf.tensor(a), tf.tensor(b), "logits");
      assert.ok(relativeError(a, ref.logits) > 1e-3); // the adapter does something
      for (const [[, mine], [, theirs]] of loraLayers(model).map((l, i) => [l, loraLayers(served)[i]])) {
        assertBitIdentical(mine.lora.A, theirs.lora.A, "A");
        assertBitIdentical(mine.lora.B, theirs.lora.B, "B");
      }
    } finally {
      model.dispose();
      served.dispose();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (const name of ["tiny-gpt2", "tiny-llama"]) {
  Deno.test(`${name}: gradient checkpointing gives the same LoRA gradients, and keeps nothing`, async () => {
    const { model } = await loadPretrained(`${HF}/${name}`);
    addLoRA(model, { rank: 4, alpha: 8, targetModules: "all-linear", seed: 2 });
    randomize(model, "default", 5);
    const ids = (await reference(name)).input_ids;
    const tokens = tf.tensor2d(ids.map((row) => row.slice(0, -1)), undefined, "int32");
    const targets = tf.tensor2d(ids.map((row) => row.slice(1)), undefined, "int32");
    const variables = trainableVariables(model);
    const gradients = (checkpointing: boolean) => {
      model.gradientCheckpointing = checkpointing;
      const { value, grads } = tf.variableGrads(
        () => sequenceCrossEntropy(model.apply(tokens), targets),
        variables,
      );
      const out = { loss: value.dataSync()[0], grads: variables.map((v) => grads[v.name].dataSync()) };
      tf.dispose([value, ...Object.values(grads)]);
      return out;
    };
    const plain = gradients(false);
    const before = tf.memory().numTensors;
    const checkpointed = gradients(true);
    assertEquals(tf.memory().numTensors, before);
    assertEquals(checkpointed.loss, plain.loss);
    plain.grads.forEach((g, i) => {
      const diff = maxAbsDiff(g, checkpointed.grads[i]);
      assert.ok(diff < 1e-6, `${variables[i].name}: ${diff}`);
    });
    assert.ok(plain.grads.some((g) => g.some((x) => x !== 0)));
    tf.dispose([tokens, targets]);
    model.dispose();
  });
}

// The new operations' gradients against tfjs's own differentiation of the same formulas ---------------------

Deno.test("hand-written gradients of rmsNorm, geluTanh, siluGate, applyRotary and repeatHeads", () => {
  const before = tf.memory().numTensors;
  tf.tidy(() => {
    const x = tf.randomNormal([2, 3, 8], 0, 1, "float32", 1);
    const u = tf.randomNormal([2, 3, 8], 0, 1, "float32", 2);
    const w = tf.randomNormal([8], 1, 0.1, "float32", 3) as tf.Tensor1D;
    const dy = tf.randomNormal([2, 3, 8], 0, 1, "float32", 4);
    const close = (a: tf.Tensor, b: tf.Tensor, what: string) => {
      const diff = maxAbsDiff(a, b);
      assert.ok(diff < 1e-4, `${what}: ${diff}`);
    };
    const grads = (f: (...t: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[]) =>
      tf.grads((...t: tf.Tensor[]) => tf.sum(tf.mul(f(...t), dy)))(inputs);

    const plainRms = (x: tf.Tensor, w: tf.Tensor) =>
      tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), 1e-5))), w);
    const [gx, gw] = grads((x, w) => rmsNorm(x, w as tf.Tensor1D, 1e-5), [x, w]);
    const [px, pw] = grads(plainRms, [x, w]);
    close(gx, px, "rmsNorm dx");
    close(gw, pw, "rmsNorm dweight");
    close(rmsNorm(x, w, 1e-5), plainRms(x, w), "rmsNorm value");

    const plainGelu = (x: tf.Tensor) =>
      tf.mul(
        tf.mul(x, 0.5),
        tf.add(1, tf.tanh(tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI)))),
      );
    close(grads(geluTanh, [x])[0], grads(plainGelu, [x])[0], "geluTanh");

    const plainSilu = (g: tf.Tensor, v: tf.Tensor) => tf.mul(tf.mul(g, tf.sigmoid(g)), v);
    const [sg, su] = grads(siluGate, [x, u]);
    const [pg, pu] = grads(plainSilu, [x, u]);
    close(sg, pg, "siluGate dgate");
    close(su, pu, "siluGate dup");

    const { cos, sin } = rotaryTables(3, 3, 4, 100);
    const [c, s] = [tf.tensor2d(cos, [3, 4]), tf.tensor2d(sin, [3, 4])];
    const plainRotary = (x: tf.Tensor) => {
      const h = tf.reshape(x, [2, 3, 2, 4]);
      const [a, b] = tf.split(h, 2, -1);
      const rotated = tf.concat([tf.neg(b), a], -1);
      return tf.reshape(
        tf.add(tf.mul(h, tf.reshape(c, [3, 1, 4])), tf.mul(rotated, tf.reshape(s, [3, 1, 4]))),
        x.shape,
      );
    };
    close(applyRotary(x, c, s, 2), plainRotary(x), "applyRotary value");
    close(grads((x) => applyRotary(x, c, s, 2), [x])[0], grads(plainRotary, [x])[0], "applyRotary");

    const kv = tf.randomNormal([2, 3, 4], 0, 1, "float32", 5);
    const dyKv = tf.randomNormal([2, 3, 8], 0, 1, "float32", 6);
    const [gkv] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(repeatHeads(t, 2, 2), dyKv)))([kv]);
    const plainRepeat = (t: tf.Tensor) => {
      const [h0, h1] = tf.split(t, 2, -1);
      return tf.concat([h0, h0, h1, h1], -1);
    };
    const [pkv] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(plainRepeat(t), dyKv)))([kv]);
    close(repeatHeads(kv, 2, 2), plainRepeat(kv), "repeatHeads value");
    close(gkv, pkv, "repeatHeads");
  });
  assertEquals(tf.memory().numTensors, before);
});
