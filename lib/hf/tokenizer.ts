/**
 * A checkpoint's tokenizer: `tokenizer.json` (and `tokenizer_config.json`) read by `@huggingface/tokenizers`,
 * the pure-JavaScript implementation of Hugging Face's tokenizers, so ids are transformers' own: byte-level
 * BPE for GPT-2, byte-fallback BPE with a leading `<s>` for Llama, and the rest of what `tokenizer.json` can
 * describe (normalisers, pre-tokenisers, added tokens, post-processors).
 *
 * @module
 */
import { Tokenizer } from "@huggingface/tokenizers";

/** Options for {@linkcode HFTokenizer.encode}. */
export interface EncodeOptions {
  /** Add the special tokens the post-processor adds (Llama's `<s>`); default `true`, as transformers does. */
  addSpecialTokens?: boolean;
}

/** Options for {@linkcode HFTokenizer.decode}. */
export interface DecodeOptions {
  /** Leave special tokens (`<s>`, `<|endoftext|>`, …) out of the text; default `false`, as transformers does. */
  skipSpecialTokens?: boolean;
}

/**
 * Text to token ids and back with a Hugging Face `tokenizer.json`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { HFTokenizer } from "./tokenizer.ts";
 * const tokenizer = await HFTokenizer.fromDir("data/fixtures/hf/tiny-gpt2");
 * const ids = tokenizer.encode("low rank adapters");
 * assert.equal(tokenizer.decode(ids), "low rank adapters");
 * assert.equal(tokenizer.eosTokenId, tokenizer.tokenToId("<|endoftext|>"));
 * ```
 */
export class HFTokenizer {
  private readonly tokenizer: Tokenizer;
  /** The id of the beginning-of-sequence token `tokenizer_config.json` names, or `null`. */
  readonly bosTokenId: number | null;
  /** The id of the end-of-sequence token `tokenizer_config.json` names, or `null`. */
  readonly eosTokenId: number | null;
  /** Number of ids, added tokens included (the largest id plus one). */
  readonly vocabSize: number;

  /** A tokenizer from the parsed `tokenizer.json` and `tokenizer_config.json`; `where` names them in errors. */
  constructor(tokenizerJson: unknown, tokenizerConfig: unknown = {}, where = "tokenizer.json") {
    if (typeof tokenizerJson !== "object" || tokenizerJson === null || !("model" in tokenizerJson)) {
      throw new SyntaxError(`${where} must hold a tokenizer (a JSON object with a "model").`);
    }
    const config = (typeof tokenizerConfig === "object" && tokenizerConfig !== null ? tokenizerConfig : {}) as Record<
      string,
      unknown
    >;
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, config);
    } catch (error) {
      throw new Error(`${where}: @huggingface/tokenizers cannot read it (${(error as Error).message}).`);
    }
    const id = (token: unknown) => {
      const text = typeof token === "string" ? token : (token as { content?: unknown } | null)?.content;
      return typeof text === "string" ? this.tokenizer.token_to_id(text) ?? null : null;
    };
    this.bosTokenId = id(config.bos_token);
    this.eosTokenId = id(config.eos_token);
    this.vocabSize = Math.max(...this.tokenizer.get_vocab(true).values()) + 1;
  }

  /** Reads `tokenizer.json` and (if present) `tokenizer_config.json` from the checkpoint folder `dir`. */
  static async fromDir(dir: string): Promise<HFTokenizer> {
    let json: unknown;
    try {
      json = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer.json`));
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        throw new Error(`${dir} has no tokenizer.json (only fast tokenizers' tokenizer.json is read here).`);
      }
      throw new SyntaxError(`${dir}/tokenizer.json is not valid JSON (${(error as Error).message}).`);
    }
    let config: unknown = {};
    try {
      config = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        throw new SyntaxError(`${dir}/tokenizer_config.json is not valid JSON (${(error as Error).message}).`);
      }
    }
    return new HFTokenizer(json, config, `${dir}/tokenizer.json`);
  }

  /** The ids of `text`, as transformers' `tokenizer(text)["input_ids"]`. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== "string") throw new TypeError(`HFTokenizer.encode: expected a string; got ${typeof text}.`);
    return this.tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /** The text of `ids`, as transformers' `tokenizer.decode(ids)`. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const bad = ids.find((id) => !(Number.isInteger(id) && id >= 0 && id < this.vocabSize));
    if (bad !== undefined) {
      throw new RangeError(`HFTokenizer.decode: ${bad} is not a token id; expected 0 to ${this.vocabSize - 1}.`);
    }
    return this.tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The id of the token spelled `token`, or `null`. */
  tokenToId(token: string): number | null {
    return this.tokenizer.token_to_id(token) ?? null;
  }

  /** The spelling of token `id`, or `null`. */
  idToToken(id: number): string | null {
    return this.tokenizer.id_to_token(id) ?? null;
  }
}
