/**
 * Hostile input, class by class: non-finite weights, regular expressions that would make a backtracking engine
 * hang or that are not expressions on their own, unbounded or coerced generation arguments, empty words, and
 * seeded random mutations of a good safetensors file. Each test asserts the message, that the model is
 * unchanged and that no tensor leaked.
 *
 * @module
 */
import {
  addLoRA,
  decodeSafetensors,
  encodeSafetensors,
  findTargets,
  generate,
  GPT,
  initBackend,
  matchesTarget,
  MultilayerPerceptron,
  splitWords,
  type TensorData,
  TokenLoader,
  weightsFromSafetensors,
  weightsToSafetensors,
  wordWindows,
} from "../lib/mod.ts";
import { GENERATE_LIMITS } from "../lib/gpt/generate.ts";
import { compileTargetPattern, MAX_PATTERN_LENGTH } from "../lib/peft/targets.ts";
import { transpose2d } from "../lib/weights.ts";
import { assert, assertEquals, assertNoLeak, assertRejects, assertThrows } from "./assert.ts";
import { assertUnchanged, snapshot } from "./fixtures.ts";
import {
  joinSafetensors,
  mutateSafetensors,
  type Mutation,
  referenceDecode,
  type ReferenceTensor,
  runFuzz,
} from "./fuzz.ts";
import { TinyModel } from "./tiny_model.ts";

await initBackend();

const CONFIG = { vocabSize: 30, blockSize: 16, nLayer: 1, nHead: 2, nEmbd: 16 };

/** `text` with the characters a regular expression treats specially escaped. */
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Milliseconds `fn` takes. */
function elapsed(fn: () => unknown): number {
  const started = performance.now();
  fn();
  return performance.now() - started;
}

// Non-finite weights -----------------------------------------------------------------------------------------

/** `tensors` with value `index` of `name` set to `value`. */
function poison(tensors: Map<string, TensorData>, name: string, index: number, value: number) {
  const data = tensors.get(name)!.data.slice();
  data[index] = value;
  return new Map(tensors).set(name, { shape: tensors.get(name)!.shape, data });
}

/** The same tensors stored as BF16 (each float32 cut to its top 16 bits). */
function asBF16(tensors: Map<string, TensorData>): Uint8Array {
  const header: Record<string, unknown> = {};
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, { shape, data }] of tensors) {
    const halves = Uint16Array.from(new Uint32Array(Float32Array.from(data).buffer), (bits) => bits >>> 16);
    header[name] = { dtype: "BF16", shape, data_offsets: [offset, offset + 2 * halves.length] };
    parts.push(new Uint8Array(halves.buffer));
    offset += 2 * halves.length;
  }
  const data = new Uint8Array(offset);
  parts.reduce((at, part) => (data.set(part, at), at + part.length), 0);
  return joinSafetensors(header, data);
}

Deno.test("hostile weights: a NaN or infinity in a GPT file (F32 or BF16) is refused, model unchanged", async () => {
  const model = new GPT(CONFIG, { seed: 1 });
  const before = snapshot(model);
  const donor = new GPT(CONFIG, { seed: 2 });
  const { tensors } = decodeSafetensors(await weightsToSafetensors(donor));
  donor.dispose();
  const name = [...tensors.keys()].find((n) => n.endsWith("attn.q_proj.weight"))!; // [16, 16] in the file
  await assertNoLeak(() => {
    for (const value of [NaN, Infinity, -Infinity]) {
      const file = poison(tensors, name, 3 * 16 + 7, value);
      for (const [dtype, bytes] of [["F32", encodeSafetensors(file)], ["BF16", asBF16(file)]] as const) {
        assertThrows(
          () => weightsFromSafetensors(model, bytes, "gpt.safetensors"),
          RangeError,
          new RegExp(
            `^safetensors \\(gpt\\.safetensors\\): tensor "${name.replaceAll(".", "\\.")}" holds ${value} at ` +
              `flat index 55 \\(index \\[3, 7\\] of shape \\[16, 16\\], ${dtype}\\)`,
          ),
        );
      }
    }
  });
  assertUnchanged(model, before);
  // Without the bad value the same file loads: the refusals were about the value alone.
  weightsFromSafetensors(model, asBF16(tensors), "gpt.safetensors");
  const after = snapshot(model);
  assert.notDeepEqual(after.get(name), before.get(name), "the finite file was loaded");
  model.dispose();
});

// Regular expressions ----------------------------------------------------------------------------------------

Deno.test("hostile patterns: catastrophic backtracking patterns return within 200 ms on long names", () => {
  const names = [
    "a".repeat(30) + "!",
    "a".repeat(5000) + "!",
    "a".repeat(20_000),
    `blocks.${"0.".repeat(2000)}attn.q_proj`,
  ];
  for (
    const pattern of ["(a+)+$", "(a|aa)+$", "(.*a){20}", "(a*)*b", "((a+)+)+x", "(.*)*\\.(.*)*\\.z", "(\\w+\\.?)+!"]
  ) {
    const compiled = compileTargetPattern(pattern, "test");
    for (const name of names) {
      let matched = false;
      const ms = elapsed(() => matched = compiled.fullMatch(name) || matchesTarget(name, pattern));
      assert.ok(ms < 200, `${pattern} on a ${name.length}-character name took ${ms.toFixed(1)} ms`);
      // The engine still answers correctly: (a+)+$ matches a run of a's and nothing with a "!" in it.
      if (pattern === "(a+)+$") assertEquals(matched, !name.includes("!") && /^a+$/.test(name));
    }
  }
  // (.*a){20} needs twenty a's: true on the long runs, false on the module name that has fewer.
  assert.ok(compileTargetPattern("(.*a){20}", "test").fullMatch("a".repeat(5000)));
  assert.ok(!compileTargetPattern("(.*a){20}", "test").fullMatch(`blocks.${"0.".repeat(2000)}attn.q_proj`));
});

Deno.test("hostile patterns: addLoRA with a catastrophic or malformed pattern fails fast, model unchanged", async () => {
  const model = new TinyModel();
  const before = snapshot(model);
  await assertNoLeak(() => {
    for (const pattern of ["(a+)+$", "(a|aa)+$", "(.*a){20}"]) {
      const ms = elapsed(() =>
        assertThrows(
          () => addLoRA(model, { targetModules: pattern, rank: 2, alpha: 4 }),
          RangeError,
          /selects no linear layer/,
        )
      );
      assert.ok(ms < 200, `${pattern}: ${ms.toFixed(1)} ms`);
    }
    // "q_proj)|(v_proj" is no expression alone; pasted into ^(?:…)$ it would close the group and match a prefix.
    assertThrows(
      () => addLoRA(model, { targetModules: "blocks.0.attn.q_proj)|(v_proj", rank: 2, alpha: 4 }),
      SyntaxError,
      /^addLoRA: targetModules: "blocks\.0\.attn\.q_proj\)\|\(v_proj" is not a valid regular expression \(unexpected \)/,
    );
    assertThrows(
      () => addLoRA(model, { targetModules: ".*q_proj", excludeModules: "a)", rank: 2, alpha: 4 }),
      SyntaxError,
      /^addLoRA: excludeModules: "a\)" is not a valid regular expression \(unexpected \)/,
    );
    assertThrows(
      () => findTargets(model, { targetModules: "^(?!.*lm_head).*" }),
      SyntaxError,
      /^addLoRA: targetModules: "\^\(\?!\.\*lm_head\)\.\*" uses a negative lookahead "\(\?!" at position 1, which the linear-time engine/,
    );
  });
  assertUnchanged(model, before);
  model.dispose();
});

Deno.test("hostile patterns: every unsupported construct is named with its position; where names the file", () => {
  const cases: [string, string][] = [
    ["model(?=\\.).*", 'a lookahead "(?=" at position 5'],
    ["(?!lm_head).*", 'a negative lookahead "(?!" at position 0'],
    ["(q)_proj\\1", 'a backreference "\\1" at position 8'],
    ["(?P<x>q)(?P=x)", 'a named backreference "(?P=" at position 8'],
    ["(?>q_proj)", 'an atomic group "(?>" at position 0'],
    ["q_pro+j", ""],
    ["q_proj*+", 'a possessive quantifier "*+" at position 6'],
    ["(a)?(?(1)b|c)", 'a conditional "(?(" at position 4'],
    ["q(?#note)_proj", 'a comment "(?#" at position 1'],
  ];
  for (const [pattern, construct] of cases) {
    const where = "loadAdapter: adapter_config.json target_modules";
    if (construct === "") {
      assert.ok(compileTargetPattern(pattern, where).fullMatch("q_proooj"));
      continue;
    }
    assert.throws(() => compileTargetPattern(pattern, where), (error: Error) => {
      assert.ok(error instanceof SyntaxError);
      assertEquals(
        error.message,
        `${where}: "${pattern}" uses ${construct}, which the linear-time engine that matches module names (RE2) ` +
          `does not support; write the pattern without it.`,
      );
      return true;
    });
  }
  // Inside a class, or escaped, the same characters are literal.
  assert.ok(compileTargetPattern("[(?=]+\\(\\?=", "test").fullMatch("?=(?="));
  // Python's \Z and {,n} are read as Python reads them.
  assert.ok(compileTargetPattern("lin0\\Z", "test").fullMatch("lin0"));
  assert.ok(compileTargetPattern("a{,2}b", "test").fullMatch("aab"));
  assert.ok(!compileTargetPattern("a{,2}b", "test").fullMatch("aaab"));
  // Lookbehind without captures is linear in RE2JS and accepted.
  assert.ok(compileTargetPattern(".*(?<!lm_head)", "test").fullMatch("blocks.0.attn.q_proj"));
  assert.ok(!compileTargetPattern(".*(?<!lm_head)", "test").fullMatch("lm_head"));
  assertThrows(() => compileTargetPattern("x".repeat(MAX_PATTERN_LENGTH + 1), "cfg"), RangeError, /20001 characters/);
  assertThrows(
    () => compileTargetPattern(5 as unknown as string, "cfg"),
    TypeError,
    /^cfg: a regular expression must be a string; got 5/,
  );
  assertThrows(() => matchesTarget(7 as unknown as string, ".*"), TypeError, /module name must be a string/);
});

const PYTHON = "/usr/bin/python3";
const hasPython = (() => {
  try {
    return Deno.statSync(PYTHON).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "hostile patterns: the patterns of PEFT's tests match as Python's re matches them",
  ignore: !hasPython,
  fn: async () => {
    // target_modules / exclude_modules strings from peft 0.20's tests/, and the lookahead-free form of the
    // ms-swift pattern of tests/test_integrations.py (whose original, with "(?=", Python is given instead).
    const peftFull = [
      ".*foo",
      ".*.(SelfAttention|EncDecAttention|DenseReluDense).*(q|v|wo)$",
      ".*encoder.*block.0.*(SelfAttention|EncDecAttention|DenseReluDense).(k|q|v|wo|wi)$",
      "lin0",
      "lin.*",
      ".*lin.*",
      "l1.*",
      "(l1|vera_A).*",
      "^embed_tokens",
      "^emb",
      ".*\\.embed_tokens",
      ".*\\.q_proj",
      ".*\\.[0-5]\\.self_attn\\.v_proj|.*\\.[4-7]\\.self_attn\\.k_proj",
      "0",
      "base_model.model.1",
      "embed_in_2",
      "foo",
      "transformer.h.2.self_attention.query_key_value",
      ".*embed_tokens$",
      ".*lm_head$",
      ".*(embed_tokens|lm_head)$",
      ".*\\.(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj)",
      "lin0\\Z",
      "a{,2}",
    ];
    const projections = "(q_proj|k_proj|v_proj|gate_proj|up_proj|down_proj)";
    const pythonFull = [...peftFull, `^(model(?=\\.).*\\.${projections})$`];
    const oursFull = [...peftFull, `^(model\\.(?:.*\\.)?${projections})$`];
    // rank_pattern / alpha_pattern keys from tests/test_tuners_utils.py, test_initialization.py and others.
    const keys = [
      "foo",
      "^foo",
      "^module.foo",
      "module.module.foo",
      "^module.module.foo",
      "module.foo",
      "lin0",
      "k_proj",
      "linear",
      "0.linear",
      "layers.1.self_attn.k_proj",
      ".*\\.gate_up_proj",
      "bla",
    ];
    const names = [
      "foo",
      "bar",
      "module.foo",
      "module.foobar",
      "module.module.foo",
      "module.module.barfoo",
      "lin0",
      "lin1",
      "lin10",
      "l1",
      "l1.weight",
      "vera_A",
      "emb",
      "embed_tokens",
      "model.embed_tokens",
      "embed_in_2",
      "model.layers.3.self_attn.v_proj",
      "model.layers.5.self_attn.k_proj",
      "model.layers.6.self_attn.v_proj",
      "model.layers.0.mlp.gate_proj",
      "model.q_proj",
      "modelx.q_proj",
      "model..q_proj",
      "model.layers.0.o_proj",
      "model.layers.0.mlp.experts.gate_up_proj",
      "lm_head",
      "model.lm_head",
      "0",
      "1",
      "base_model.model.1",
      "encoder.block.0.layer.0.SelfAttention.q",
      "encoder.block.0.layer.1.EncDecAttention.v",
      "decoder.block.0.layer.0.SelfAttention.q",
      "encoder.block.1.layer.0.SelfAttention.q",
      "encoder.block.0.layer.2.DenseReluDense.wi",
      "transformer.h.2.self_attention.query_key_value",
      "0.linear",
      "1.linear",
      "linear",
      "layers.1.self_attn.k_proj",
      "model.layers.1.self_attn.k_proj",
      "",
      "a",
      "aa",
      "aaa",
    ];
    const script = [
      "import json, re, sys",
      "d = json.load(sys.stdin)",
      "full = [[bool(re.fullmatch(p, n)) for n in d['names']] for p in d['full']]",
      "key = [[bool(re.match(rf'(.*\\.)?({k})$', n)) for n in d['names']] for k in d['keys']]",
      "print(json.dumps({'full': full, 'key': key}))",
    ].join("\n");
    const child = new Deno.Command(PYTHON, { args: ["-c", script], stdin: "piped", stdout: "piped" }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(JSON.stringify({ full: pythonFull, keys, names })));
    await writer.close();
    const output = await child.output();
    assertEquals(output.code, 0);
    const expected = JSON.parse(new TextDecoder().decode(output.stdout)) as { full: boolean[][]; key: boolean[][] };
    oursFull.forEach((pattern, p) => {
      const compiled = compileTargetPattern(pattern, "test");
      assertEquals(names.map((n) => compiled.fullMatch(n)), expected.full[p], `fullmatch ${pythonFull[p]}`);
    });
    keys.forEach((key, k) => {
      const compiled = compileTargetPattern(key, "test");
      assertEquals(names.map((n) => compiled.matchesKey(n)), expected.key[k], `rank_pattern key ${key}`);
    });
    assert.ok(expected.full.flat().filter(Boolean).length > 40, "the names exercise the patterns");
  },
});

// Generation arguments ---------------------------------------------------------------------------------------

Deno.test("hostile generation: counts have limits, ids are checked as given, model unchanged", async () => {
  const model = new GPT(CONFIG, { seed: 3 });
  model.training = true;
  const before = snapshot(model);
  const refuse = async (options: Record<string, unknown>, type: new (...args: never[]) => Error, message: RegExp) => {
    const started = performance.now();
    await assertRejects(() => generate(model, { prompt: [[1, 2]], maxNewTokens: 3, ...options }), type, message);
    assert.ok(performance.now() - started < 200, `${JSON.stringify(options)} took too long`);
  };
  await assertNoLeak(async () => {
    for (const bad of [1e9, 1e300, Infinity, -1, 2.5, NaN, "5"]) {
      await refuse(
        { maxNewTokens: bad },
        RangeError,
        new RegExp(
          `^generate: maxNewTokens must be an integer from 0 to at most 1000000; got ${
            escape(bad === "5" ? '"5"' : String(bad))
          }\\.$`,
        ),
      );
    }
    await refuse(
      { prompt: Array.from({ length: 20 }, () => [1]), maxNewTokens: GENERATE_LIMITS.maxNewTokens },
      RangeError,
      /^generate: 20 rows × \(1 prompt \+ 1000000 new tokens\) = 20000020 ids, more than the 10000000/,
    );
    await refuse(
      { minNewTokens: 4 },
      RangeError,
      /^generate: minNewTokens must be an integer from 0 to at most 3; got 4/,
    );
    await refuse({ minNewTokens: -1 }, RangeError, /minNewTokens must be an integer/);
    await refuse({ topK: 0 }, RangeError, /topK must be an integer from 1/);
    await refuse({ topK: 1e300 }, RangeError, /topK must be an integer from 1/);
    await refuse({ temperature: -1 }, RangeError, /temperature must be a finite number ≥ 0; got -1/);
    await refuse({ seed: NaN }, RangeError, /seed must be a finite number; got NaN/);
    // Prompt ids: the first bad one is named by row and position, before any conversion to int32.
    for (const bad of [2 ** 32 + 3, NaN, 2.5, -1, 30, "3", null]) {
      await refuse(
        { prompt: [[1, 2, 3], [4, 5, bad]] },
        RangeError,
        new RegExp(
          `^generate: token ${
            escape(bad === "3" ? '"3"' : String(bad))
          } at prompt\\[1\\]\\[2\\] is not a token id of this model; ` +
            `ids must be integers from 0 to 29 \\(its vocabSize is 30\\)\\.$`,
        ),
      );
    }
    await refuse({ prompt: [[1, 2], [3, NaN], [NaN, 1]] }, RangeError, /token NaN at prompt\[1\]\[1\]/);
    await refuse({ prompt: [[1, 2], [3]] }, RangeError, /row 0 has 2 ids, row 1 has 1/);
    await refuse({ prompt: [] }, RangeError, /at least one row/);
    await refuse({ prompt: "ab" }, RangeError, /array of rows of token ids/);
    await refuse({ suppressTokens: [0, 2 ** 32] }, RangeError, /token 4294967296 at suppressTokens\[1\]/);
    await refuse({ suppressTokens: 0 }, TypeError, /suppressTokens must be an array of token ids; got 0/);
    await refuse({ stopToken: 2.5 }, RangeError, /token 2\.5 at stopToken is not a token id/);
    await refuse({ stopToken: 30 }, RangeError, /token 30 at stopToken/);
    await refuse({ useCache: "no" }, TypeError, /useCache must be true or false/);
    await refuse({ adapterNames: ["__base__", "__base__"] }, RangeError, /got 2 adapter names for 1 rows/);
    await refuse({ adapterNames: "__base__" }, TypeError, /adapterNames must be an array of adapter names/);
    // A good call still works, and minNewTokens = maxNewTokens is allowed.
    const rows = await generate(model, { prompt: [[1, 2]], maxNewTokens: 3, minNewTokens: 3, stopToken: 1 });
    assertEquals(rows[0].length, 5);
  });
  assertEquals(model.training, true, "the training flag is restored");
  assertUnchanged(model, before);
  model.dispose();
});

// Empty words ------------------------------------------------------------------------------------------------

Deno.test("hostile words: an empty word is refused with its position by every loader", () => {
  assertThrows(() => wordWindows(["anna", "", "bob"], { blockSize: 16 }), RangeError, /^wordWindows: word 1 is empty/);
  assertThrows(
    () => splitWords(["anna", "bob", ""], { validationFraction: 0.5, seed: 1 }),
    RangeError,
    /^splitWords: word 2 is empty/,
  );
  const windows = wordWindows(["anna", "bob"], { blockSize: 16 });
  assertThrows(
    () => new TokenLoader({ ...windows, lengths: Uint8Array.from([0, 4]) }, { batchSize: 2 }),
    RangeError,
    /^TokenLoader: window 0 has length 0/,
  );
});

// Fuzzing ----------------------------------------------------------------------------------------------------

/** A good file with every dtype, a scalar, an empty tensor and metadata. */
function goodFile(): Uint8Array {
  const f32 = new Float32Array([0.5, -1.25, 3, 1e-3, -0, 65504]);
  const f16 = Uint16Array.from([0x3c00, 0xc000, 0x3555, 0x0001]);
  const bf16 = Uint16Array.from([0x3f80, 0xc040, 0x4049]);
  const scalar = new Float32Array([7]);
  const parts = [f32, f16, bf16, scalar].map((a) => new Uint8Array(a.buffer));
  const header = {
    __metadata__: { format: "pt" },
    "a.weight": { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] },
    "b.half": { dtype: "F16", shape: [4], data_offsets: [24, 32] },
    "c.brain": { dtype: "BF16", shape: [3, 1], data_offsets: [32, 38] },
    "d.scalar": { dtype: "F32", shape: [], data_offsets: [38, 42] },
    "e.empty": { dtype: "F32", shape: [0, 2], data_offsets: [42, 42] },
  };
  const data = new Uint8Array(42);
  parts.reduce((at, part) => (data.set(part, at), at + part.length), 0);
  return joinSafetensors(header, data);
}

Deno.test("fuzz: 400 seeded mutations of a safetensors file decode as the reference reads them, or throw", () => {
  const good = goodFile();
  const reference = referenceDecode(good);
  assert.ok(!(reference instanceof Error), "the good file is good");
  assertEquals(decodeSafetensors(good).tensors.size, 5);
  const started = performance.now();
  const check = ({ bytes }: Mutation): "accepted" | "refused" => {
    const expected = referenceDecode(bytes);
    let decoded: ReturnType<typeof decodeSafetensors>["tensors"];
    try {
      decoded = decodeSafetensors(bytes, { source: "fuzz.safetensors" }).tensors;
    } catch (error) {
      assert.ok(error instanceof Error, `threw ${String(error)}`);
      assert.match(error.message, /^safetensors \(fuzz\.safetensors\): /);
      assert.ok(expected instanceof Error, `refused a file the reference reads: ${error.message}`);
      return "refused";
    }
    if (expected instanceof Error) throw new Error(`accepted a file the reference refuses (${expected.message})`);
    assertEquals([...decoded.keys()], [...expected.keys()]);
    for (const [name, tensor] of decoded) {
      const want: ReferenceTensor = expected.get(name)!;
      assertEquals([tensor.dtype, tensor.shape], [want.dtype, want.shape], name);
      assertEquals(new Uint32Array(tensor.data.buffer), new Uint32Array(want.data.buffer), `${name}, bit for bit`);
    }
    return "accepted";
  };
  const summary = runFuzz(400, 19, (random) => mutateSafetensors(good, random), check, 200);
  console.log(`safetensors fuzz: ${JSON.stringify(summary)}`);
  assert.ok(summary.refused > 150 && summary.accepted > 20, `${summary.refused} refused, ${summary.accepted} accepted`);
  assert.ok(performance.now() - started < 10_000, "fast");
});

Deno.test("fuzz: 200 seeded mutations of a weights file load exactly or throw with the model unchanged", async () => {
  const donor = new MultilayerPerceptron(6, 4, 3, 2, { seed: 8 });
  const good = await weightsToSafetensors(donor);
  donor.dispose();
  const model = new MultilayerPerceptron(6, 4, 3, 2, { seed: 9 });
  const linear = new Set(["layers.0.weight", "layers.2.weight", "layers.4.weight"]);
  await assertNoLeak(() => {
    let before = snapshot(model);
    const summary = runFuzz(
      200,
      23,
      (random) => mutateSafetensors(good, random),
      ({ bytes }): "accepted" | "refused" => {
        const expected = referenceDecode(bytes);
        try {
          weightsFromSafetensors(model, bytes, "fuzz.safetensors");
        } catch (error) {
          assert.ok(error instanceof Error);
          assertUnchanged(model, before);
          return "refused";
        }
        if (expected instanceof Error) throw new Error(`loaded a file the reference refuses (${expected.message})`);
        for (const { name, variable } of model.namedParameters()) {
          const stored: ReferenceTensor = expected.get(name)!;
          const want: Float32Array = linear.has(name) ? transpose2d(stored.data, stored.shape).data : stored.data;
          assertEquals(variable.dataSync(), want, name);
        }
        before = snapshot(model);
        return "accepted";
      },
      200,
    );
    assert.ok(
      summary.refused > 100 && summary.accepted > 5,
      `${summary.refused} refused, ${summary.accepted} accepted`,
    );
  });
  model.dispose();
});
