import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addAdapter,
  addLoRA,
  applyMixedBatch,
  causalAttention,
  causalMask,
  countParameters,
  decodeSafetensors,
  disableAdapters,
  disposeCache,
  embeddingLookup,
  enableAdapters,
  evaluateLoss,
  gelu,
  generate,
  GPT,
  type GPTConfig,
  initBackend,
  languageModelStep,
  layerNorm,
  loadAdapter,
  loadWeights,
  loraLayers,
  mergeAdapter,
  namedParameters,
  sampleWords,
  saveAdapter,
  saveWeights,
  sequenceCrossEntropy,
  setAdapter,
  TokenLoader,
  train,
  trainableVariables,
  unmergeAdapter,
  wordWindows,
} from "../lib/mod.ts";
import { blasStatus } from "../lib/blas.ts";
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
import { randomize } from "./fixtures.ts";

await initBackend();

/** The bench's GPT: 2 layers, 4 heads, width 64, context 16, the character vocabulary. */
const CONFIG: GPTConfig = { vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 };
const gpt = (seed = 1, config = CONFIG) => new GPT(config, { seed });
/** Int32 tokens `[rows, time]` from a simple pattern over the ids 1…29. */
const tokens = (rows: number, time: number, offset = 0): tf.Tensor2D =>
  tf.tensor2d(Int32Array.from({ length: rows * time }, (_, i) => 1 + ((i * 7 + offset) % 29)), [rows, time], "int32");
const DATA = "data/test-gpt";

// The model -------------------------------------------------------------------------------------------------

Deno.test("GPT: parameter names and shapes follow the nanoGPT layout", () => {
  const model = gpt();
  const shapes = Object.fromEntries(namedParameters(model).map((p) => [p.name, p.variable.shape]));
  assertEquals(Object.keys(shapes).slice(0, 4), [
    "tok_emb.weight",
    "pos_emb.weight",
    "blocks.0.ln1.weight",
    "blocks.0.ln1.bias",
  ]);
  assertEquals(shapes["tok_emb.weight"], [30, 64]);
  assertEquals(shapes["pos_emb.weight"], [16, 64]);
  for (const name of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
    assertEquals(shapes[`blocks.1.attn.${name}.weight`], [64, 64]); // [in, out] here; [out, in] in files
    assertEquals(shapes[`blocks.1.attn.${name}.bias`], [64]);
  }
  assertEquals(shapes["blocks.0.mlp.fc1.weight"], [64, 256]);
  assertEquals(shapes["blocks.0.mlp.fc2.weight"], [256, 64]);
  assertEquals(Object.keys(shapes).slice(-3), ["ln_f.weight", "ln_f.bias", "lm_head.weight"]);
  assertEquals(shapes["lm_head.weight"], [64, 30]);
  assert.ok(!("lm_head.bias" in shapes), "lm_head has no bias");
  model.dispose();
});

Deno.test("GPT: logits have shape [batch, time, vocab] for any time up to blockSize", () => {
  const model = gpt();
  for (const time of [1, 7, 16]) {
    const x = tokens(3, time);
    const y = model.apply(x);
    assertEquals(y.shape, [3, time, 30]);
    tf.dispose([x, y]);
  }
  model.dispose();
});

Deno.test("GPT: changing a later token leaves every earlier position's logits bit-identical (causal mask)", () => {
  const model = gpt();
  const a = tokens(4, 16);
  const changed = a.arraySync();
  for (const row of changed) row[9] = row[9] === 5 ? 6 : 5;
  const b = tf.tensor2d(changed, [4, 16], "int32");
  const [ya, yb] = [model.apply(a), model.apply(b)];
  const early = (y: tf.Tensor) => tf.slice(y, [0, 0, 0], [4, 9, 30]);
  assertBitIdentical(early(ya), early(yb), "positions 0–8");
  assert.ok(maxAbsDiff(tf.slice(ya, [0, 9, 0], [4, 7, 30]), tf.slice(yb, [0, 9, 0], [4, 7, 30])) > 1e-4);
  tf.dispose([a, b, ya, yb]);
  model.dispose();
});

Deno.test("GPT: clear errors for bad tokens, a long context and a bad shape", () => {
  const model = gpt();
  const big = tf.tensor2d([[1, 2, 30]], [1, 3], "int32");
  const negative = tf.tensor2d([[1, -1]], [1, 2], "int32");
  // GPU backends do not read the ids back to check them (that would stall the GPU); wasm and cpu do.
  if (!["webgpu", "webgl"].includes(tf.getBackend())) {
    assertThrows(
      () => model.apply(big),
      RangeError,
      /token 30 at \[0, 2\] is outside the vocabulary; expected 0 to 29/,
    );
    assertThrows(() => model.apply(negative), RangeError, /token -1 at \[0, 1\] is outside the vocabulary/);
  }
  const long = tokens(1, 17);
  assertThrows(() => model.apply(long), RangeError, /17 tokens exceed the context of 16 \(blockSize\)/);
  const floats = tf.zeros([1, 3]);
  assertThrows(
    () => model.apply(floats),
    RangeError,
    /tokens must be int32 of shape \[batch, time\]; got float32 \[1,3\]/,
  );
  assertThrows(() => gpt(1, { ...CONFIG, nHead: 5 }), RangeError, /nEmbd 64 is not divisible by nHead 5/);
  assertThrows(() => gpt(1, { ...CONFIG, nLayer: 0 }), RangeError, /nLayer must be a positive integer; got 0/);
  assertThrows(() => new GPT(CONFIG, { seed: 1, dropout: 1 }), RangeError, /dropout must be in \[0, 1\); got 1/);
  const { cache } = model.applyCached(tokens(1, 10), null);
  const more = tokens(1, 7);
  assertThrows(() => model.applyCached(more, cache), RangeError, /7 tokens after the 10 cached positions exceed/);
  disposeCache(cache);
  tf.dispose([big, negative, long, floats, more]);
  model.dispose();
});

Deno.test("GPT: the same seed builds the same model; clone() copies it", () => {
  const [a, b] = [gpt(3), gpt(3)];
  const copy = a.clone();
  const x = tokens(2, 8);
  assertBitIdentical(a.apply(x), b.apply(x));
  assertBitIdentical(a.apply(x), copy.apply(x));
  tf.dispose(x);
  for (const m of [a, b, copy]) m.dispose();
});

Deno.test("GPT: dropout is active only while training; off, the model equals one without dropout", () => {
  const [plain, withDropout] = [gpt(4), new GPT(CONFIG, { seed: 4, dropout: 0.2 })];
  const x = tokens(2, 12);
  const [first, second] = [withDropout.apply(x), withDropout.apply(x)];
  assert.ok(maxAbsDiff(first, second) > 1e-3, "two training passes draw different masks");
  withDropout.training = false;
  assertBitIdentical(withDropout.apply(x), plain.apply(x));
  tf.dispose([x, first, second]);
  plain.dispose();
  withDropout.dispose();
});

// The operations' hand-written gradients -------------------------------------------------------------------

Deno.test("ops: hand-written gradients equal tfjs's own of the textbook formulas", () => {
  const v = (shape: number[], seed: number, mean = 0) => tf.variable(tf.randomNormal(shape, mean, 1, "float32", seed));
  const x = v([3, 5, 8], 1), w = v([8], 2, 1), b = v([8], 3), up = tf.randomNormal([3, 5, 8], 0, 1, "float32", 4);
  const check = (what: string, ours: () => tf.Tensor, reference: () => tf.Tensor, vars: tf.Variable[]) => {
    const loss = (f: () => tf.Tensor) => () => tf.sum(tf.mul(f(), up)) as tf.Scalar;
    const [g1, g2] = [tf.variableGrads(loss(ours), vars), tf.variableGrads(loss(reference), vars)];
    assertClose(ours(), reference(), 2e-6, `${what} value`);
    for (const t of vars) assertClose(g1.grads[t.name], g2.grads[t.name], 2e-6, `${what} gradient`);
  };
  check("layerNorm", () => layerNorm(x, w as tf.Tensor1D, b as tf.Tensor1D), () => {
    const m = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.div(tf.sub(x, m.mean), tf.sqrt(tf.add(m.variance, 1e-5))), w), b);
  }, [x, w, b]);
  check("gelu", () => gelu(x), () => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2)))), [x]);
  const [q, k, val] = [v([3, 5, 8], 5), v([3, 5, 8], 6), v([3, 5, 8], 7)];
  const mask = causalMask(5);
  check("causalAttention", () => causalAttention(q, k, val, 2, mask), () => {
    const heads = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [3, 5, 2, 4]), [0, 2, 1, 3]);
    const scores = tf.add(tf.mul(tf.matMul(heads(q), heads(k), false, true), 0.5), mask);
    return tf.reshape(tf.transpose(tf.matMul(tf.softmax(scores), heads(val)), [0, 2, 1, 3]), [3, 5, 8]);
  }, [q, k, val]);
  const table = v([7, 8], 8), ids = tf.tensor2d([[1, 2, 2, 6, 0], [0, 1, 3, 3, 3], [6, 6, 6, 5, 4]], [3, 5], "int32");
  check("embeddingLookup", () => embeddingLookup(table as tf.Tensor2D, ids), () => {
    const oneHot = tf.oneHot(tf.reshape(ids, [-1]), 7).toFloat();
    return tf.reshape(tf.matMul(oneHot, table), [3, 5, 8]);
  }, [table]);
  tf.dispose([x, w, b, up, q, k, val, mask, table, ids]);
});

Deno.test("ops: a frozen input gets no gradient work, and the others' gradients do not change", () => {
  const q = tf.variable(tf.randomNormal([2, 4, 8], 0, 1, "float32", 1));
  const k = tf.variable(tf.randomNormal([2, 4, 8], 0, 1, "float32", 2));
  const v = tf.variable(tf.randomNormal([2, 4, 8], 0, 1, "float32", 3));
  const mask = causalMask(4);
  const f = () => tf.sum(tf.square(causalAttention(q, k, v, 2, mask))) as tf.Scalar;
  const all = tf.variableGrads(f, [q, k, v]);
  k.trainable = false;
  const some = tf.variableGrads(f, [q, v]);
  assertEquals(Object.keys(some.grads).sort(), [q.name, v.name].sort());
  assertBitIdentical(some.grads[q.name], all.grads[q.name]);
  assertBitIdentical(some.grads[v.name], all.grads[v.name]);
  tf.dispose([q, k, v, mask, all.value, some.value, ...Object.values(all.grads), ...Object.values(some.grads)]);
});

// The loss -------------------------------------------------------------------------------------------------

Deno.test("sequenceCrossEntropy: padded positions count in neither the loss nor the gradient", () => {
  const logits = tf.variable(tf.randomNormal([2, 3, 5], 0, 2, "float32", 10));
  const targets = tf.tensor2d([[1, -1, 4], [0, 2, -1]], [2, 3], "int32");
  const { value, grads } = tf.variableGrads(() => sequenceCrossEntropy(logits as tf.Tensor as tf.Tensor3D, targets));
  // By hand: mean over the four kept positions of −log softmax(target).
  const z = logits.arraySync() as number[][][];
  const kept = [[0, 0, 1], [0, 2, 4], [1, 0, 0], [1, 1, 2]];
  const nll = kept.map(([r, t, c]) => Math.log(z[r][t].reduce((s, v) => s + Math.exp(v), 0)) - z[r][t][c]);
  assert.ok(Math.abs(value.dataSync()[0] - nll.reduce((a, c) => a + c) / 4) < 1e-5);
  const g = grads[logits.name].arraySync() as number[][][];
  assertEquals([...g[0][1], ...g[1][2]], new Array(10).fill(0), "padded positions get zero gradient");
  tf.dispose([logits, targets, value, grads[logits.name]]);
});

Deno.test("GPT loss: extra padding after the words changes neither the loss nor its gradient", () => {
  const model = gpt(2);
  const windows = wordWindows(["anna", "bob", "christopher"], { blockSize: 16 });
  const [tight] = new TokenLoader(windows, { batchSize: 3 }); // time 12: the longest word
  const padded = { ...tight, time: 16, inputs: new Int32Array(3 * 16), targets: new Int32Array(3 * 16).fill(-1) };
  for (let r = 0; r < 3; r++) {
    padded.inputs.set(tight.inputs.subarray(r * 12, r * 12 + 12), r * 16);
    padded.targets.set(tight.targets.subarray(r * 12, r * 12 + 12), r * 16);
  }
  const lossAndGrads = (b: typeof tight) => {
    const x = tf.tensor2d(b.inputs, [b.size, b.time], "int32"), y = tf.tensor2d(b.targets, [b.size, b.time], "int32");
    const out = tf.variableGrads(() => sequenceCrossEntropy(model.apply(x), y), trainableVariables(model));
    tf.dispose([x, y]);
    return out;
  };
  const [a, b] = [lossAndGrads(tight), lossAndGrads(padded)];
  assertClose(a.value, b.value, 1e-6, "loss");
  for (const name of Object.keys(a.grads)) assertClose(a.grads[name], b.grads[name], 1e-6, name);
  tf.dispose([a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads)]);
  model.dispose();
});

// Training -------------------------------------------------------------------------------------------------

Deno.test("train() with languageModelStep fits a few words, and a step leaks no tensor", async () => {
  const model = gpt(5, { ...CONFIG, nEmbd: 32 });
  const loader = new TokenLoader(wordWindows(["anna", "bella", "clara", "dora"], { blockSize: 16 }), { batchSize: 4 });
  const before = (await evaluateLoss(model, loader)).loss;
  const optimizer = adam(0.01);
  await train(model, optimizer, loader, { epochs: 60, step: languageModelStep });
  const after = (await evaluateLoss(model, loader)).loss;
  assert.ok(after < before / 3, `loss ${before} → ${after}`);
  const [batch] = loader;
  const variables = trainableVariables(model);
  await assertNoLeak(() => languageModelStep(model, optimizer, batch, variables).dispose());
  await assertNoLeak(() => evaluateLoss(model, loader));
  optimizer.dispose();
  model.dispose();
});

// LoRA on the GPT ------------------------------------------------------------------------------------------

Deno.test("LoRA on q_proj and v_proj: the chosen layers, only A and B trainable, PEFT's share", () => {
  const model = addLoRA(gpt(), { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 });
  assertEquals(loraLayers(model).map(([name]) => name), [
    "blocks.0.attn.q_proj",
    "blocks.0.attn.v_proj",
    "blocks.1.attn.q_proj",
    "blocks.1.attn.v_proj",
  ]);
  // Embeddings and LayerNorms are frozen too, as PEFT freezes every parameter outside the adapters.
  assert.ok(
    trainableVariables(model).every((v) => /lora/.test(namedParameters(model).find((p) => p.variable === v)!.name)),
  );
  assertEquals(countParameters(model).trainable, 4 * 2 * 64 * 8);
  model.dispose();
});

Deno.test("LoRA all-linear: every Linear but lm_head, which getOutputEmbeddings names", () => {
  const model = addLoRA(gpt(), { rank: 8, alpha: 16, targetModules: "all-linear", seed: 1 });
  const names = loraLayers(model).map(([name]) => name);
  assertEquals(names.length, 12);
  assert.ok(!names.includes("lm_head"));
  assert.ok(names.includes("blocks.1.mlp.fc2") && names.includes("blocks.0.attn.k_proj"));
  model.dispose();
});

Deno.test("LoRA GPT at initialisation equals the base bit for bit; merged equals unmerged within 1e-5", () => {
  const base = gpt();
  const model = addLoRA(base.clone(), { rank: 8, alpha: 16, targetModules: "all-linear", seed: 1 });
  const x = tokens(4, 16);
  const reference = base.apply(x);
  assertBitIdentical(model.apply(x), reference, "B = 0 at the start");
  randomize(model, "default", 11);
  const unmerged = model.apply(x);
  assert.ok(maxAbsDiff(unmerged, reference) > 1e-2, "a trained-looking adapter changes the logits");
  disableAdapters(model);
  assertBitIdentical(model.apply(x), reference, "adapters disabled: the base itself");
  enableAdapters(model);
  mergeAdapter(model);
  // x·(W + ΔW) and x·W + x·ΔW round differently in float32; logits of size ~1 agree to a few 1e-7.
  assertClose(model.apply(x), unmerged, 1e-5, "merged vs unmerged");
  unmergeAdapter(model);
  assertClose(model.apply(x), unmerged, 1e-5, "after unmerge");
  tf.dispose([x, reference, unmerged]);
  base.dispose();
  model.dispose();
});

Deno.test("weights and adapters round-trip through their files, into models started differently", async () => {
  await Deno.mkdir(DATA, { recursive: true });
  const base = gpt(1);
  await saveWeights(base, `${DATA}/base.safetensors`);
  const trained = addLoRA(base, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 2 });
  randomize(trained, "default", 21);
  await saveAdapter(trained, `${DATA}/adapter`);
  const { tensors } = decodeSafetensors(await Deno.readFile(`${DATA}/base.safetensors`));
  assertEquals(tensors.get("blocks.0.mlp.fc1.weight")!.shape, [256, 64], "Linear weights stored [out, in]");
  assertEquals(tensors.get("lm_head.weight")!.shape, [30, 64]);
  assertEquals(tensors.get("tok_emb.weight")!.shape, [30, 64]);
  const adapter = decodeSafetensors(await Deno.readFile(`${DATA}/adapter/adapter_model.safetensors`)).tensors;
  assertEquals(adapter.get("base_model.model.blocks.0.attn.q_proj.lora_A.weight")!.shape, [8, 64]);
  assertEquals(adapter.get("base_model.model.blocks.1.attn.v_proj.lora_B.weight")!.shape, [64, 8]);
  assertEquals(adapter.size, 8);

  const server = gpt(99);
  await loadWeights(server, `${DATA}/base.safetensors`);
  await loadAdapter(server, `${DATA}/adapter`);
  const x = tokens(3, 16);
  assertBitIdentical(server.apply(x), trained.apply(x), "base + adapter, loaded");
  tf.dispose(x);
  trained.dispose();
  server.dispose();
  await Deno.remove(DATA, { recursive: true });
});

Deno.test("named adapters: a mixed batch gives each row its own adapter's logits", () => {
  const model = addLoRA(gpt(), { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 });
  addAdapter(model, "male", { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 5 });
  randomize(model, "default", 31);
  randomize(model, "male", 41);
  const x = tokens(3, 10);
  const names = ["default", "male", "__base__"];
  const mixed = applyMixedBatch(model, x, names);
  for (const [row, name] of names.entries()) {
    if (name === "__base__") disableAdapters(model);
    else setAdapter(model, name);
    const own = model.apply(tf.slice(x, [row, 0], [1, 10]));
    // BLAS products (lib/blas.ts) may round a row differently in batches of other sizes; wasm's products do not.
    if (blasStatus().enabled) assertClose(tf.slice(mixed, [row, 0, 0], [1, 10, 30]), own, 1e-5, name);
    else assertBitIdentical(tf.slice(mixed, [row, 0, 0], [1, 10, 30]), own, name);
    enableAdapters(model);
  }
  tf.dispose([x, mixed]);
  model.dispose();
});

// Generation -----------------------------------------------------------------------------------------------

Deno.test("cache: prompt and incremental logits equal a full recomputation within 2e-6", () => {
  const model = gpt(7);
  const x = tokens(3, 16, 3);
  const full = model.apply(x);
  let { logits, cache } = model.applyCached(tf.slice(x, [0, 0], [3, 5]), null);
  // Shorter products than the full pass's, so a different float32 rounding: not bit for bit.
  assertClose(logits, tf.slice(full, [0, 0, 0], [3, 5, 30]), 2e-6, "prompt of 5");
  for (let t = 5; t < 16; t++) {
    logits.dispose();
    const next = model.applyCached(tf.slice(x, [0, t], [3, 1]), cache);
    disposeCache(cache);
    ({ logits, cache } = next);
    assertClose(logits, tf.slice(full, [0, t, 0], [3, 1, 30]), 2e-6, `position ${t}`);
  }
  assertEquals(cache.length, 16);
  disposeCache(cache);
  tf.dispose([x, full, logits]);
  model.dispose();
});

Deno.test("generate: seeded and repeatable, the same tokens with and without the cache, past blockSize", async () => {
  const model = gpt(8);
  const options = { prompt: [[1, 5], [1, 9]], maxNewTokens: 24, temperature: 0.8, topK: 10, seed: 3 };
  const [a, b] = [await generate(model, options), await generate(model, options)];
  assertEquals(a, b);
  assertEquals(a.map((row) => row.length), [26, 26], "24 new tokens: past the context of 16");
  assertEquals(await generate(model, { ...options, useCache: false }), a);
  assert.notDeepEqual(await generate(model, { ...options, seed: 4 }), a);
  const greedy = await generate(model, { prompt: [[1]], maxNewTokens: 5, temperature: 0 });
  const logits = model.apply(tf.tensor2d([greedy[0].slice(0, 5)], undefined, "int32"));
  assertEquals(greedy[0][5], tf.argMax(tf.slice(logits, [0, 4, 0], [1, 1, 30]), -1).dataSync()[0]);
  await assertNoLeak(() => generate(model, options));
  await assertRejects(() => generate(model, { prompt: [[1], [1, 2]], maxNewTokens: 1 }), RangeError, /same non-zero/);
  await assertRejects(() => generate(model, { prompt: [[31]], maxNewTokens: 1 }), RangeError, /token 31/);
  model.dispose();
});

Deno.test("generate: a mixed batch of adapters gives each row what its adapter alone gives", async () => {
  const model = addLoRA(gpt(9), { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 });
  addAdapter(model, "male", { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 5 });
  randomize(model, "default", 51);
  randomize(model, "male", 61);
  const greedy = { maxNewTokens: 12, temperature: 0 };
  const mixed = await generate(model, {
    ...greedy,
    prompt: [[1], [1], [1]],
    adapterNames: ["default", "male", "__base__"],
  });
  setAdapter(model, "male");
  assertEquals((await generate(model, { ...greedy, prompt: [[1]] }))[0], mixed[1]);
  setAdapter(model, "default");
  assertEquals((await generate(model, { ...greedy, prompt: [[1]] }))[0], mixed[0]);
  disableAdapters(model);
  assertEquals((await generate(model, { ...greedy, prompt: [[1]] }))[0], mixed[2]);
  enableAdapters(model);
  await assertRejects(
    () => generate(model, { ...greedy, prompt: [[1]], adapterNames: ["female"] }),
    Error,
    /unknown adapters "female"; the model has "default", "male"/,
  );
  await assertNoLeak(() => generate(model, { ...greedy, prompt: [[1], [1]], adapterNames: ["male", "default"] }));
  model.dispose();
});

Deno.test("sampleWords: words end at the boundary, hold at least one character, repeat with the seed", async () => {
  const model = gpt(10);
  const words = await sampleWords(model, { count: 6, seed: 2, maxLength: 10 });
  assertEquals(words.length, 6);
  assert.ok(words.every((w) => /^[a-z'-]{1,10}$/.test(w)), words.join(" "));
  assertEquals(await sampleWords(model, { count: 6, seed: 2, maxLength: 10 }), words);
  const prefixed = await sampleWords(model, { count: 3, seed: 2, prefix: "ma" });
  assert.ok(prefixed.every((w) => w.startsWith("ma")));
  model.dispose();
});

Deno.test("a GPT made and disposed leaves no tensor behind (its LayerNorms free their initial values)", async () => {
  await assertNoLeak(() =>
    new GPT({ vocabSize: 30, blockSize: 8, nLayer: 2, nHead: 2, nEmbd: 16 }, { seed: 1 }).dispose()
  );
});
