import {
  CharTokenizer,
  cmudictDir,
  firstNamesDir,
  loadNames,
  loadWords,
  splitWords,
  TokenLoader,
  wordWindows,
} from "../lib/mod.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";

const tokenizer = new CharTokenizer();
const TMP = "data/test-words";

Deno.test("CharTokenizer: 30 ids, words framed by boundaries, decode inverts encode", () => {
  assertEquals(tokenizer.vocabSize, 30);
  assertEquals([tokenizer.pad, tokenizer.boundary], [0, 1]);
  assertEquals(new Set(tokenizer.symbols).size, 30, "every id has its own symbol");
  for (const word of ["a", "zoe", "o'neil", "anne-marie", "abcdefghijklmnopqrstuvwxyz'-"]) {
    const ids = tokenizer.encodeWord(word);
    assertEquals([ids[0], ids.at(-1)], [1, 1]);
    assert.ok(ids.slice(1, -1).every((id) => id >= 2 && id < 30));
    assertEquals(tokenizer.decode(ids), `.${word}.`);
  }
});

Deno.test("CharTokenizer: a character outside the vocabulary is an error naming it and where", () => {
  assertThrows(
    () => tokenizer.encode("café", "names.txt:12"),
    RangeError,
    /character "é" \(U\+00E9\) at position 3 of "café" \(names\.txt:12\) is not in the vocabulary; expected a–z/,
  );
  assertThrows(() => tokenizer.encodeWord("Ann"), RangeError, /character "A" \(U\+0041\) at position 0 of "Ann"/);
  assertThrows(() => tokenizer.encode("a b"), RangeError, /character " " \(U\+0020\) at position 1/);
  assertThrows(() => tokenizer.decode([1, 30]), RangeError, /id 30 is outside 0–29/);
});

Deno.test("loadWords: CMUdict's words, lowercase, without variant markers, letters ' and - only", async () => {
  const words = await loadWords();
  assert.ok(words.length > 120_000, `${words.length} words`);
  assertEquals(new Set(words).size, words.length, "distinct");
  assertEquals([...words].sort(), words, "sorted");
  assert.ok(words.every((w) => /^[a-z'-]+$/.test(w)), "only letters, apostrophes and hyphens");
  for (const word of ["tomato", "o'clock", "a", "x-ray"]) assert.ok(words.includes(word), word);
  // The file lists variants such as "TOMATO(1)"; they become the word itself, once.
  const raw = JSON.parse(await Deno.readTextFile(`${cmudictDir()}/dict.json`));
  assert.ok("TOMATO(1)" in raw);
  assertEquals(words.filter((w) => w === "tomato").length, 1);
});

Deno.test("loadNames: both lists, lowercase, distinct, every name tokenizable", async () => {
  for (const which of ["female", "male"] as const) {
    const names = await loadNames(which);
    const lines = (await Deno.readTextFile(`${firstNamesDir(which)}/names.txt`)).split("\n").filter((l) => l.trim());
    assertEquals(names.length, new Set(lines.map((l) => l.trim().toLowerCase())).size, which);
    assert.ok(names.every((n) => n === n.toLowerCase() && tokenizer.encode(n).length === n.length));
  }
  assert.ok((await loadNames("female")).includes("anne-marie"));
});

Deno.test("loaders: another folder, a missing file, and a bad character named with file and line", async () => {
  await Deno.mkdir(TMP, { recursive: true });
  await Deno.writeTextFile(
    `${TMP}/dict.json`,
    JSON.stringify({ "A": "AH0", "A(1)": "EY1", "AB.C": "X", "O'KAY": "Y" }),
  );
  assertEquals(await loadWords({ dir: TMP }), ["a", "o'kay"]);
  await Deno.writeTextFile(`${TMP}/names.txt`, "Anna\nBob\nZoë\n");
  await assertRejects(() => loadNames("female", { dir: TMP }), RangeError, /"ë".*"zoë" \(.*names\.txt:3\)/);
  await assertRejects(
    () => loadWords({ dir: `${TMP}/nowhere` }),
    Deno.errors.NotFound,
    /nowhere\/dict\.json does not exist/,
  );
  assertThrows(() => firstNamesDir("other" as "male"), RangeError, /expected "female" or "male"/);
  await Deno.remove(TMP, { recursive: true });
});

Deno.test("splitWords: fixed by the seed, disjoint, covering every word", () => {
  const words = Array.from({ length: 1000 }, (_, i) => `w${i}`);
  const a = splitWords(words, { validationFraction: 0.1, seed: 7 });
  assertEquals(splitWords(words, { validationFraction: 0.1, seed: 7 }), a);
  assertEquals(a.validation.length, 100);
  assertEquals([...a.train, ...a.validation].sort(), [...words].sort());
  assert.notDeepEqual(splitWords(words, { validationFraction: 0.1, seed: 8 }).validation, a.validation);
  assertThrows(() => splitWords(words, { validationFraction: 1, seed: 1 }), RangeError, /between 0 and 1/);
});

Deno.test("wordWindows: every character and word end counted once, long words in sliding windows", () => {
  const words = ["a", "ann", "abcdefghijklmnop", "pneumonoultramicroscopicsilicovolcanoconiosis".slice(0, 34)];
  for (const blockSize of [4, 5, 16]) {
    const w = wordWindows(words, { blockSize });
    // The counted targets, window after window, must be each word's characters and its end, in order.
    const counted: number[] = [];
    for (let k = 0; k < w.count; k++) {
      for (let p = 0; p < blockSize; p++) {
        const t = w.targets[k * blockSize + p];
        if (t < 0) continue;
        counted.push(t);
        assert.ok(p < w.lengths[k], "a counted target lies inside its window");
        // A window that does not start a word (its first input is not the boundary) counts only targets that
        // see more than half a block before them.
        if (w.inputs[k * blockSize] !== tokenizer.boundary) assert.ok(p + 1 > blockSize - Math.ceil(blockSize / 2));
      }
      for (let p = w.lengths[k]; p < blockSize; p++) {
        assertEquals([w.inputs[k * blockSize + p], w.targets[k * blockSize + p]], [tokenizer.pad, -1], "padding");
      }
    }
    assertEquals(counted, words.flatMap((word) => tokenizer.encodeWord(word).slice(1)), `blockSize ${blockSize}`);
    assertEquals(w.tokens, words.reduce((n, word) => n + word.length + 1, 0));
  }
  assertEquals(wordWindows(["abcdefghijklmno"], { blockSize: 16 }).count, 1, "15 letters and the end fit in 16");
  assertEquals(wordWindows(["abcdefghijklmnop"], { blockSize: 16 }).count, 2, "16 letters do not");
  assertThrows(() => wordWindows(["a"], { blockSize: 1 }), RangeError, /blockSize must be an integer from 2 to 255/);
  assertThrows(() => wordWindows(["ab1"], { blockSize: 8 }), RangeError, /character "1"/);
});

Deno.test("TokenLoader: each window once per epoch, seeded order, padding only after each window", () => {
  const words = Array.from({ length: 300 }, (_, i) => "abcdefghijklmnopqrstuvwxyzabc".slice(0, 1 + (i * 7) % 29));
  const windows = wordWindows(words, { blockSize: 16 });
  for (const groupByLength of [false, true]) {
    const loader = new TokenLoader(windows, { batchSize: 32, shuffle: true, seed: 3, groupByLength });
    const epoch = [...loader];
    assertEquals(epoch.length, loader.length);
    assertEquals(epoch.reduce((n, b) => n + b.size, 0), windows.count);
    assertEquals(epoch.reduce((n, b) => n + b.tokens, 0), windows.tokens, "every counted target once");
    for (const b of epoch) {
      assert.ok(b.time <= 16 && b.inputs.length === b.size * b.time);
      for (let i = 0; i < b.targets.length; i++) {
        if (b.targets[i] < 0) continue;
        assert.ok(b.inputs[i] !== tokenizer.pad, "a counted target never follows padding");
      }
    }
    const again = new TokenLoader(windows, { batchSize: 32, shuffle: true, seed: 3, groupByLength });
    assertEquals([...again].map((b) => Array.from(b.inputs)), epoch.map((b) => Array.from(b.inputs)), "seeded");
    const second = [...loader];
    assert.notDeepEqual(second.map((b) => Array.from(b.inputs)), epoch.map((b) => Array.from(b.inputs)), "new order");
  }
  const slots = (groupByLength: boolean) =>
    [...new TokenLoader(windows, { batchSize: 32, shuffle: true, seed: 3, groupByLength })].reduce(
      (n, b) => n + b.size * b.time,
      0,
    );
  assert.ok(slots(true) < slots(false), `grouping by length pads less: ${slots(true)} vs ${slots(false)}`);
  assertThrows(() => new TokenLoader(windows, { batchSize: 0 }), RangeError, /batchSize must be a positive integer/);
});

Deno.test("empty words and records are refused with their position, in every loader", async () => {
  assertThrows(() => tokenizer.encodeWord(""), RangeError, /^CharTokenizer: an empty word; a word needs at least one/);
  assertThrows(() => tokenizer.encode(5 as unknown as string), TypeError, /expected text; got number/);
  assertThrows(
    () => wordWindows(["ann", "bob", ""], { blockSize: 8 }),
    RangeError,
    /^wordWindows: word 2 is empty; every word needs at least one character\.$/,
  );
  assertThrows(
    () => wordWindows(["ann", 7 as unknown as string], { blockSize: 8 }),
    TypeError,
    /^wordWindows: word 1 is number; expected a string/,
  );
  assertThrows(() => wordWindows(["ann", "zoë"], { blockSize: 8 }), RangeError, /"ë".*\(wordWindows: word 1\)/);
  assertThrows(
    () => splitWords(["a", "b", "", "d"], { validationFraction: 0.5, seed: 1 }),
    RangeError,
    /^splitWords: word 2 is empty/,
  );
  assertThrows(() => splitWords(["a", "b"], { validationFraction: 0.5, seed: NaN }), RangeError, /seed must be/);

  await Deno.mkdir(TMP, { recursive: true });
  try {
    for (const [key, position] of [["", 1], ["   ", 1], ["(1)", 1]] as const) {
      await Deno.writeTextFile(`${TMP}/dict.json`, JSON.stringify({ "A": "AH0", [key]: "X", "B": "B" }));
      await assertRejects(
        () => loadWords({ dir: TMP }),
        RangeError,
        new RegExp(
          `^loadWords: entry ${position} of .*dict\\.json \\(key ${
            JSON.stringify(key).replace(/[()]/g, "\\$&")
          }\\) is an empty word`,
        ),
      );
    }
    await Deno.writeTextFile(`${TMP}/dict.json`, "[1, 2]");
    await assertRejects(() => loadWords({ dir: TMP }), SyntaxError, /must hold a JSON object of words/);
    await Deno.writeTextFile(`${TMP}/names.txt`, "Anna\n\nBob\n");
    await assertRejects(
      () => loadNames("male", { dir: TMP }),
      RangeError,
      /^loadNames: line 2 of .*names\.txt is empty/,
    );
    await Deno.writeTextFile(`${TMP}/names.txt`, "Anna\nBob\n  \n");
    await assertRejects(() => loadNames("male", { dir: TMP }), RangeError, /line 3 of .*names\.txt is empty/);
    await Deno.writeTextFile(`${TMP}/names.txt`, "Anna\r\nBob\r\n");
    assertEquals(await loadNames("male", { dir: TMP }), ["anna", "bob"], "the newline ending the file is not a record");
  } finally {
    await Deno.remove(TMP, { recursive: true });
  }

  const windows = wordWindows(["ann", "bob", "eve"], { blockSize: 8 });
  const emptied = { ...windows, lengths: Uint8Array.from([3, 0, 3]) };
  assertThrows(
    () => new TokenLoader(emptied, { batchSize: 2 }),
    RangeError,
    /^TokenLoader: window 1 has length 0; every window uses 1 to 8 positions\.$/,
  );
  assertThrows(
    () => new TokenLoader({ ...windows, count: 4 }, { batchSize: 2 }),
    RangeError,
    /4 windows of 8 positions need Int32Array inputs and targets of 32 ids/,
  );
  assertEquals(new TokenLoader(windows, { batchSize: 2 }).length, 2, "good windows still load");
});
