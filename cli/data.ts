/**
 * Training data for `deno task finetune`: a plain text file, or JSONL records of `{"text": …}` or
 * `{"prompt": …, "completion": …}`, turned into token examples and then into padded batches whose loss counts
 * only what should be learned (the completion, for prompt–completion records).
 *
 * @module
 */
import type { TokenBatch } from "../lib/words.ts";

/** One training example: token ids and, for each position, whether predicting it counts in the loss. */
export interface Example {
  /** Token ids, at most `maxLength + 1` of them. */
  ids: number[];
  /** `counted[t]` says whether token `t` is a target (false for prompt tokens); `counted[0]` is unused. */
  counted: boolean[];
}

/** What {@linkcode readExamples} needs of a tokenizer. */
export interface TextEncoder {
  /** Ids of `text`; with `addSpecialTokens` (default true) the tokenizer's leading `<s>`, if it has one. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /** The end-of-sequence id appended to each record, if any. */
  readonly eosTokenId: number | null;
}

/**
 * The examples in `text`, the contents of the file `file` (named in errors), for windows of `maxLength`
 * positions:
 *
 * - a `.jsonl` file holds one JSON object per non-empty line: `{"text": "..."}` is learned whole;
 *   `{"prompt": "...", "completion": "..."}` counts only the completion's tokens (and the end-of-sequence token
 *   after it) in the loss. Each record becomes one example, cut to `maxLength + 1` tokens;
 * - any other file is plain text, tokenized as one document and cut into windows of `maxLength + 1` tokens
 *   that overlap by one (each token after the first is a target exactly once).
 *
 * Throws, naming the file and line, for invalid JSON, a record with neither form, non-string fields, an empty
 * `text` or `completion`, a prompt that leaves no room for its completion, or a file without any example.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readExamples } from "./data.ts";
 * const chars = { encode: (s: string) => [...s].map((c) => c.charCodeAt(0)), eosTokenId: 0 };
 * const [example] = readExamples('{"prompt": "ab", "completion": "c"}\n', "x.jsonl", chars, 16);
 * assert.deepEqual(example.ids, [97, 98, 99, 0]);
 * assert.deepEqual(example.counted, [false, false, true, true]); // c and the end are learned
 * assert.throws(() => readExamples('{"prompt": 1}', "x.jsonl", chars, 16), /x\.jsonl line 1/);
 * assert.throws(() => readExamples('\n{"text": " "}', "x.jsonl", chars, 16), /x\.jsonl line 2: the text is empty/);
 * ```
 */
export function readExamples(text: string, file: string, tokenizer: TextEncoder, maxLength: number): Example[] {
  const examples = file.toLowerCase().endsWith(".jsonl")
    ? jsonlExamples(text, file, tokenizer, maxLength)
    : textExamples(text, tokenizer, maxLength);
  if (examples.length === 0) {
    throw new Error(`${file} holds no training example (it is empty, or too short for one target).`);
  }
  return examples;
}

function textExamples(text: string, tokenizer: TextEncoder, maxLength: number): Example[] {
  const ids = tokenizer.encode(text);
  const examples: Example[] = [];
  for (let start = 0; start + 1 < ids.length; start += maxLength) {
    const window = ids.slice(start, start + maxLength + 1);
    examples.push({ ids: window, counted: window.map((_, t) => t > 0) });
  }
  return examples;
}

function jsonlExamples(text: string, file: string, tokenizer: TextEncoder, maxLength: number): Example[] {
  const examples: Example[] = [];
  const eos = tokenizer.eosTokenId === null ? [] : [tokenizer.eosTokenId];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const where = `${file} line ${i + 1}`;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (error) {
      throw new SyntaxError(`${where} is not valid JSON (${(error as Error).message}).`);
    }
    const r = (typeof record === "object" && record !== null && !Array.isArray(record) ? record : {}) as Record<
      string,
      unknown
    >;
    let ids: number[], promptLength: number;
    for (const field of ["text", "completion"]) {
      if (typeof r[field] === "string" && (r[field] as string).trim() === "") {
        throw new RangeError(`${where}: the ${field} is empty; every record needs something to learn.`);
      }
    }
    if (typeof r.text === "string" && r.prompt === undefined && r.completion === undefined) {
      ids = [...tokenizer.encode(r.text), ...eos];
      promptLength = 1;
    } else if (typeof r.prompt === "string" && typeof r.completion === "string" && r.text === undefined) {
      const prompt = tokenizer.encode(r.prompt);
      ids = [...prompt, ...tokenizer.encode(r.completion, { addSpecialTokens: false }), ...eos];
      promptLength = prompt.length;
      if (promptLength >= maxLength + 1) {
        throw new RangeError(
          `${where}: the prompt is ${promptLength} tokens, which leaves no room for the completion in ` +
            `${maxLength + 1} (--seq-len ${maxLength}).`,
        );
      }
    } else {
      throw new TypeError(
        `${where}: expected {"text": string} or {"prompt": string, "completion": string}; got ` +
          `${line.length > 80 ? line.slice(0, 77) + "..." : line}.`,
      );
    }
    ids = ids.slice(0, maxLength + 1);
    if (ids.length < 2) return; // nothing to predict
    examples.push({ ids, counted: ids.map((_, t) => t >= Math.max(1, promptLength)) });
  });
  return examples;
}

/**
 * One batch of `examples`: inputs are each example's ids but the last, targets its ids but the first (−1 where
 * not counted, and in the padding after a shorter example), padded to the longest example of the batch with
 * `pad`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { makeBatch } from "./data.ts";
 * const batch = makeBatch([{ ids: [5, 6, 7], counted: [false, false, true] }, { ids: [8, 9], counted: [false, true] }], 0);
 * assert.deepEqual([...batch.inputs], [5, 6, 8, 0]);
 * assert.deepEqual([...batch.targets], [-1, 7, 9, -1]);
 * assert.equal(batch.tokens, 2);
 * ```
 */
export function makeBatch(examples: readonly Example[], pad: number): TokenBatch {
  const time = Math.max(...examples.map((e) => e.ids.length - 1));
  const size = examples.length;
  const inputs = new Int32Array(size * time).fill(pad);
  const targets = new Int32Array(size * time).fill(-1);
  let tokens = 0;
  examples.forEach((example, row) => {
    for (let t = 0; t + 1 < example.ids.length; t++) {
      inputs[row * time + t] = example.ids[t];
      if (example.counted[t + 1]) {
        targets[row * time + t] = example.ids[t + 1];
        tokens++;
      }
    }
  });
  return { inputs, targets, size, time, tokens };
}
