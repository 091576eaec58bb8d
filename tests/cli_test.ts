import * as tf from "@tensorflow/tfjs";
import { initBackend, loadAdapter, loraLayers } from "../lib/mod.ts";
import { HFTokenizer, loadPretrained } from "../lib/hf/mod.ts";
import { finetune, type FinetuneOptions, parseFinetuneArgs } from "../cli/finetune.ts";
import { generateText, parseGenerateArgs } from "../cli/generate.ts";
import { makeBatch, readExamples } from "../cli/data.ts";
import { assert, assertEquals, assertRejects, maxAbsDiff } from "./assert.ts";
import { FIXTURES } from "./fixtures.ts";

await initBackend();

const HF = `${FIXTURES}/hf`;
const SCRATCH = "data/cli-test";
await Deno.mkdir(SCRATCH, { recursive: true });

const RECORDS = [
  { prompt: "anna and", completion: " olivia" },
  { text: "the quick brown fox" },
  { prompt: "low rank", completion: " adapters learn small updates" },
];
const JSONL = Array.from({ length: 6 }, () => RECORDS.map((r) => JSON.stringify(r))).flat().join("\n") + "\n";

function options(overrides: Partial<FinetuneOptions>): FinetuneOptions {
  return {
    model: `${HF}/tiny-llama`,
    data: `${SCRATCH}/train.jsonl`,
    out: `${SCRATCH}/adapter`,
    targets: null,
    rank: 4,
    alpha: 8,
    dora: false,
    steps: 12,
    lr: 5e-3,
    batchSize: 4,
    seqLen: null,
    valFraction: 0.2,
    evalEvery: 6,
    logEvery: 3,
    seed: 0,
    baseModel: null,
    ...overrides,
  };
}

/** Logits of the fixture's reference inputs. */
async function logits(name: string, adapter: string | null): Promise<Float32Array> {
  const { model } = await loadPretrained(`${HF}/${name}`);
  if (adapter !== null) await loadAdapter(model, adapter);
  const ids = JSON.parse(await Deno.readTextFile(`${HF}/${name}/reference.json`)).input_ids;
  const out = tf.tidy(() => model.apply(tf.tensor2d(ids, undefined, "int32")).dataSync() as Float32Array);
  model.dispose();
  return out;
}

// Arguments and data -----------------------------------------------------------------------------------------

Deno.test("finetune's arguments: defaults, and clear errors for what is missing or malformed", () => {
  const parsed = parseFinetuneArgs(["--model", "m", "--data", "d.jsonl", "--out", "o", "--targets", "all-linear"])!;
  assertEquals([parsed.targets, parsed.rank, parsed.alpha, parsed.steps, parsed.dora], [
    "all-linear",
    8,
    16,
    100,
    false,
  ]);
  assertEquals(parseFinetuneArgs(["--help"]), null);
  const bad: [string[], RegExp][] = [
    [["--data", "d", "--out", "o"], /--model is required/],
    [["--model", "m", "--data", "d", "--out", "o", "--rank", "0"], /--rank must be an integer ≥ 1; got "0"/],
    [["--model", "m", "--data", "d", "--out", "o", "--alpha=-2"], /--alpha must be a number > 0/],
    [["--model", "m", "--data", "d", "--out", "o", "--alpha", "-2"], /'--alpha' argument is ambiguous/],
    [["--model", "m", "--data", "d", "--out", "o", "--steps", "1.5"], /--steps must be an integer/],
    [["--model", "m", "--data", "d", "--out", "o", "--lr"], /--lr/],
    [["--model", "m", "--data", "d", "--out", "o", "--targets", "q_proj,,v_proj"], /empty name/],
    [["--model", "m", "--data", "d", "--out", "o", "--ranks", "8"], /unknown option --ranks/],
    [["--model", "m", "--data", "d", "--out", "o", "extra"], /unexpected argument "extra"/],
  ];
  for (const [args, message] of bad) assert.throws(() => parseFinetuneArgs(args), message, args.join(" "));
  assert.throws(() => parseGenerateArgs(["--model", "m", "--prompt", "x", "--temperature", "hot"]), /--temperature/);
});

Deno.test("JSONL data: the loss counts only the completion (and the end token); bad records name their line", async () => {
  const tokenizer = await HFTokenizer.fromDir(`${HF}/tiny-llama`);
  const [pair, text] = readExamples(JSONL, "train.jsonl", tokenizer, 64);
  const prompt = tokenizer.encode("anna and");
  const completion = tokenizer.encode(" olivia", { addSpecialTokens: false });
  assertEquals(pair.ids, [...prompt, ...completion, tokenizer.eosTokenId]);
  assertEquals(pair.counted, pair.ids.map((_, t) => t >= prompt.length));
  assertEquals(text.counted.slice(1).every(Boolean), true);
  const batch = makeBatch([pair, text], 0);
  assertEquals(batch.tokens, completion.length + 1 + text.ids.length - 1);
  assertEquals([...batch.targets.slice(0, prompt.length - 1)], new Array(prompt.length - 1).fill(-1));
  const bad: [string, RegExp][] = [
    ['{"text": "a"}\n{"text": oops}\n', /train\.jsonl line 2 is not valid JSON/],
    ['{"prompt": "a"}\n', /line 1: expected \{"text": string\} or \{"prompt": string, "completion": string\}/],
    ['{"text": "a", "prompt": "b", "completion": "c"}\n', /line 1: expected/],
    ["\n\n", /holds no training example/],
    [`{"prompt": "${"a ".repeat(100)}", "completion": "b"}`, /leaves no room for the completion/],
  ];
  for (const [data, message] of bad) assert.throws(() => readExamples(data, "train.jsonl", tokenizer, 16), message);
  // A text file is cut into windows that overlap by one token, so every token after the first is a target once.
  const windows = readExamples("low rank adapters learn small updates ".repeat(8), "notes.txt", tokenizer, 16);
  const all = tokenizer.encode("low rank adapters learn small updates ".repeat(8));
  assertEquals(windows.reduce((n, w) => n + w.ids.length - 1, 0), all.length - 1);
});

// End to end -----------------------------------------------------------------------------------------------

Deno.test("finetune on tiny-llama (JSONL, q_proj and v_proj): the loss falls and the adapter reloads", async () => {
  await Deno.writeTextFile(`${SCRATCH}/train.jsonl`, JSONL);
  const before = tf.memory().numTensors;
  const lines: string[] = [];
  const summary = await finetune(options({ targets: ["q_proj", "v_proj"] }), (line) => lines.push(line));
  assertEquals(tf.memory().numTensors, before);
  assertEquals(summary.targets, [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
  ]);
  assertEquals(summary.examples, { train: 14, validation: 4 });
  assert.ok(lines.some((l) => /^step 3\/12 \| loss \d+\.\d{4} \| \d+ tokens\/s \| \d+:\d\d left$/.test(l)), lines[1]);
  assertEquals(summary.validation.map((v) => v.step), [6, 12]);
  assert.ok(summary.validation[1].loss < summary.validation[0].loss, JSON.stringify(summary.validation));
  const first = summary.losses.slice(0, 3).reduce((a, b) => a + b) / 3;
  const last = summary.losses.slice(-3).reduce((a, b) => a + b) / 3;
  assert.ok(last < first, `loss ${first} → ${last}`);
  const config = JSON.parse(await Deno.readTextFile(`${SCRATCH}/adapter/adapter_config.json`));
  assertEquals([config.r, config.lora_alpha, config.task_type], [4, 8, "CAUSAL_LM"]);
  assertEquals(config.base_model_name_or_path, `${HF}/tiny-llama`);
  const [base, tuned] = [await logits("tiny-llama", null), await logits("tiny-llama", `${SCRATCH}/adapter`)];
  assert.ok(maxAbsDiff(base, tuned) > 1e-4, "the adapter changes the model");
});

Deno.test("finetune on tiny-gpt2 (text, c_attn by default) with DoRA writes a loadable adapter", async () => {
  await Deno.writeTextFile(`${SCRATCH}/train.txt`, "the quick brown fox jumps over the lazy dog. ".repeat(30));
  const summary = await finetune(
    options({ model: `${HF}/tiny-gpt2`, data: `${SCRATCH}/train.txt`, out: `${SCRATCH}/dora`, dora: true, steps: 4 }),
    () => {},
  );
  assertEquals(summary.targets, ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]);
  const config = JSON.parse(await Deno.readTextFile(`${SCRATCH}/dora/adapter_config.json`));
  assertEquals(config.use_dora, true);
  const { model } = await loadPretrained(`${HF}/tiny-gpt2`);
  await loadAdapter(model, `${SCRATCH}/dora`);
  assertEquals(loraLayers(model).length, 2);
  model.dispose();
});

Deno.test("bad data and folders are clear errors, with nothing left allocated", async () => {
  await Deno.writeTextFile(`${SCRATCH}/bad.jsonl`, '{"text": "fine"}\n{"completion": "no prompt"}\n');
  const before = tf.memory().numTensors;
  await assertRejects(() => finetune(options({ data: `${SCRATCH}/bad.jsonl` }), () => {}), TypeError, /line 2/);
  await assertRejects(() => finetune(options({ data: `${SCRATCH}/none.txt` }), () => {}), Error, /cannot read --data/);
  await assertRejects(() => finetune(options({ seqLen: 65 }), () => {}), Error, /--seq-len 65 exceeds .* 64/);
  await assertRejects(() => finetune(options({ model: `${SCRATCH}` }), () => {}), Error, /has no config\.json/);
  await Deno.writeTextFile(`${SCRATCH}/train.jsonl`, JSONL);
  await assertRejects(
    () => finetune(options({ targets: ["q_prj"] }), () => {}),
    RangeError,
    /selects no linear layer/,
  );
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("deno task finetune and deno task generate run as commands", async () => {
  await Deno.writeTextFile(`${SCRATCH}/train.jsonl`, JSONL);
  const run = async (...args: string[]) => {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
      .output();
    return { code, out: new TextDecoder().decode(stdout), err: new TextDecoder().decode(stderr) };
  };
  const model = `${HF}/tiny-qwen2`, out = `${SCRATCH}/qwen-adapter`;
  const trained = await run(
    "task",
    "finetune",
    ...["--model", model, "--data", `${SCRATCH}/train.jsonl`, "--targets", "q_proj,v_proj", "--rank", "8"],
    ...["--alpha", "16", "--steps", "3", "--out", out, "--log-every", "1", "--lr", "1e-3"],
  );
  assertEquals(trained.code, 0, trained.err);
  assert.match(trained.out, /step 3\/3 \| loss/);
  assert.match(trained.out, /validation loss/);
  const text = await run(
    "task",
    "generate",
    "--model",
    model,
    "--adapter",
    out,
    "--prompt",
    "anna and",
    "--temperature",
    "0",
  );
  assertEquals(text.code, 0, text.err);
  assert.ok(text.out.startsWith("anna and"), text.out);
  const bad = await run(
    "task",
    "finetune",
    "--model",
    model,
    "--data",
    `${SCRATCH}/train.jsonl`,
    "--out",
    out,
    "--rank",
    "x",
  );
  assertEquals(bad.code, 2);
  assert.match(bad.err, /finetune: --rank must be an integer ≥ 1; got "x"\./);
  const greedy = await generateText({
    model,
    adapter: null,
    prompt: "anna and",
    maxNewTokens: 3,
    temperature: 0,
    topK: 50,
    seed: 0,
  });
  assert.ok(greedy.startsWith("anna and"));
  await Deno.remove(SCRATCH, { recursive: true });
});
