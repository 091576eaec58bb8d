/**
 * Opening a checkpoint folder as transformers' `save_pretrained` writes it: `config.json`, the weights in
 * `model.safetensors` (or shards listed by `model.safetensors.index.json`), and the tokenizer.
 *
 * Files are read with `Deno.readFile` (permission `--allow-read`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Linear } from "../layers.ts";
import { namedModules } from "../module.ts";
import { decodeSafetensors, type StoredTensor } from "../safetensors.ts";
import { transpose2d } from "../weights.ts";
import { parseConfig, type PretrainedConfig } from "./config.ts";
import { buildModel, type PretrainedCausalLM } from "./models.ts";
import { HFTokenizer } from "./tokenizer.ts";

/** The weights file of an unsharded checkpoint. */
export const WEIGHTS_FILE = "model.safetensors";
/** The index of a sharded checkpoint: `{"weight_map": {tensor name: shard file}}`. */
export const WEIGHTS_INDEX_FILE = "model.safetensors.index.json";

/** What {@linkcode loadPretrained} returns. */
export interface Pretrained {
  /** The model, its weights loaded (and frozen only once LoRA is added). */
  model: PretrainedCausalLM;
  /** The folder's tokenizer. */
  tokenizer: HFTokenizer;
  /** The model's settings, from `config.json`. */
  config: PretrainedConfig;
}

/** A tensor read from a checkpoint, with the file it came from. */
export interface CheckpointTensor extends StoredTensor {
  /** The file name inside the folder. */
  file: string;
}

/**
 * Tensors a checkpoint may hold that are not parameters of these models, and that transformers also skips:
 * GPT-2's causal-mask buffers (older files keep `h.N.attn.bias` and `h.N.attn.masked_bias`) and older Llama
 * files' `rotary_emb.inv_freq`.
 */
const IGNORED = [/(^|\.)h\.\d+\.attn\.(masked_)?bias$/, /(^|\.)rotary_emb\.inv_freq$/];

/**
 * Opens the checkpoint folder `dir`: reads `config.json` (see `parseConfig`), builds the model it names, loads
 * its weights, and reads `tokenizer.json` with `tokenizer_config.json`. `config.nameOrPath` is `dir` unless
 * `config.json` records `_name_or_path` (as PEFT records the folder a local model came from). A tied output layer
 * (`tie_word_embeddings`) shares the embedding's variable, so the model has it once.
 *
 * Weights come from `model.safetensors`, or from the shards that `model.safetensors.index.json` maps each
 * tensor to; F32, F16 and BF16 are read (as float32). PyTorch's `[out, in]` linear weights are transposed to
 * this library's `[in, out]`; GPT-2's `Conv1D` weights are already `[in, out]`. GPT-2 files written without
 * the `transformer.` prefix (as the original `gpt2` checkpoint is) are read too.
 *
 * Everything is checked before a weight is set, and any problem throws an error naming it (and the file):
 * a missing `config.json` or shard, an unsupported architecture or setting, a tensor the model needs that no
 * file has, a tensor the model does not have, a shape that differs, a shard that holds a tensor the index
 * puts elsewhere. Nothing is left allocated when it throws.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadPretrained } from "./load.ts";
 * const { model, tokenizer, config } = await loadPretrained("data/fixtures/hf/tiny-llama");
 * assert.equal(config.architecture, "LlamaForCausalLM");
 * assert.deepEqual(tokenizer.encode("the quick").slice(0, 1), [1]); // <s> first
 * model.dispose();
 * ```
 */
export async function loadPretrained(dir: string): Promise<Pretrained> {
  const parsed = parseConfig(await readJson(dir, "config.json"), `${dir}/config.json`);
  const config = { ...parsed, nameOrPath: parsed.nameOrPath ?? dir };
  const tensors = await readCheckpoint(dir);
  const tokenizer = await HFTokenizer.fromDir(dir);
  const model = buildModel(config);
  try {
    loadWeights(model, tensors, dir);
  } catch (error) {
    model.dispose();
    throw error;
  }
  return { model, tokenizer, config };
}

/**
 * Every tensor of the checkpoint in `dir`, by name, with the file it is in: `model.safetensors`, or the
 * shards of `model.safetensors.index.json`. Throws, naming the file, when neither exists (or only PyTorch's
 * pickled `pytorch_model.bin`), when a shard is missing or malformed, when one tensor is in two files, or
 * when a shard's tensors disagree with the index.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readCheckpoint } from "./load.ts";
 * const tensors = await readCheckpoint("data/fixtures/hf/tiny-llama");
 * const embedding = tensors.get("model.embed_tokens.weight")!;
 * assert.equal(embedding.dtype, "BF16");
 * assert.equal(embedding.file, "model-00001-of-00003.safetensors");
 * ```
 */
export async function readCheckpoint(dir: string): Promise<Map<string, CheckpointTensor>> {
  let files: string[];
  let index: Record<string, string> | null = null;
  if (await exists(`${dir}/${WEIGHTS_FILE}`)) {
    files = [WEIGHTS_FILE];
  } else if (await exists(`${dir}/${WEIGHTS_INDEX_FILE}`)) {
    const json = await readJson(dir, WEIGHTS_INDEX_FILE) as { weight_map?: unknown };
    const map = json?.weight_map;
    if (typeof map !== "object" || map === null || !Object.values(map).every((f) => typeof f === "string")) {
      throw new SyntaxError(`${dir}/${WEIGHTS_INDEX_FILE} has no weight_map of tensor names to file names.`);
    }
    index = map as Record<string, string>;
    files = [...new Set(Object.values(index))];
    for (const file of files) {
      if (file.includes("/") || file.includes("\\") || file.startsWith(".")) {
        throw new Error(`${dir}/${WEIGHTS_INDEX_FILE} names the shard "${file}", which is not a file of the folder.`);
      }
      if (!(await exists(`${dir}/${file}`))) {
        const example = Object.entries(index).find(([, f]) => f === file)![0];
        throw new Error(
          `${dir}: the shard ${file} is missing; ${WEIGHTS_INDEX_FILE} puts ${example} (and maybe more) in it.`,
        );
      }
    }
  } else if (await exists(`${dir}/pytorch_model.bin`)) {
    throw new Error(
      `${dir} holds pytorch_model.bin (PyTorch's pickle format), which is not read here; save the model with ` +
        "safe_serialization=True (model.safetensors) first.",
    );
  } else {
    throw new Error(`${dir} holds neither ${WEIGHTS_FILE} nor ${WEIGHTS_INDEX_FILE}.`);
  }
  const tensors = new Map<string, CheckpointTensor>();
  for (const file of files) {
    let decoded;
    try {
      decoded = decodeSafetensors(await Deno.readFile(`${dir}/${file}`));
    } catch (error) {
      throw new Error(`${dir}/${file}: ${(error as Error).message}`);
    }
    for (const [name, tensor] of decoded.tensors) {
      const before = tensors.get(name);
      if (before !== undefined) throw new Error(`${dir}: tensor ${name} is in both ${before.file} and ${file}.`);
      if (index !== null && index[name] !== file) {
        const listed = index[name] === undefined ? "does not list it" : `puts it in ${index[name]}`;
        throw new Error(`${dir}/${file} holds ${name}, but ${WEIGHTS_INDEX_FILE} ${listed}.`);
      }
      tensors.set(name, { ...tensor, file });
    }
  }
  if (index !== null) {
    for (const [name, file] of Object.entries(index)) {
      if (!tensors.has(name)) throw new Error(`${dir}/${file} lacks ${name}, which ${WEIGHTS_INDEX_FILE} puts there.`);
    }
  }
  return tensors;
}

/**
 * Sets every parameter of `model` from `tensors` (as {@linkcode readCheckpoint} returns them), after checking
 * that the names and shapes match exactly: every parameter has its tensor, every tensor is a parameter (or
 * one of the buffers transformers skips, or `lm_head.weight` of a tied model, which is the embedding), and
 * each shape is the parameter's (transposed for PyTorch's `[out, in]` linear weights). `where` names the
 * checkpoint in errors. Throws before changing anything.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * import { loadWeights, readCheckpoint } from "./load.ts";
 * import { buildModel } from "./models.ts";
 * const config = parseConfig(JSON.parse(await Deno.readTextFile("data/fixtures/hf/tiny-qwen2/config.json")));
 * const model = buildModel(config);
 * const tensors = await readCheckpoint("data/fixtures/hf/tiny-qwen2");
 * tensors.delete("model.norm.weight");
 * assert.throws(() => loadWeights(model, tensors, "tiny-qwen2"), /model\.norm\.weight/);
 * model.dispose();
 * ```
 */
export function loadWeights(model: PretrainedCausalLM, tensors: Map<string, CheckpointTensor>, where: string): void {
  const params = model.namedParameters();
  const transposed = new Set<string>();
  for (const [name, module] of namedModules(model)) {
    if (module instanceof Linear && !module.fanInFanOut) transposed.add(name === "" ? "weight" : `${name}.weight`);
  }
  const names = new Set(params.map((p) => p.name));
  const lookup = renaming(model, tensors);
  const plan: { variable: tf.Variable; tensor: CheckpointTensor; transpose: boolean }[] = [];
  for (const { name, variable } of params) {
    const tensor = lookup.get(name);
    if (tensor === undefined) {
      throw new Error(`${where}: no weights file holds ${name} (shape [${variable.shape}]), which the model needs.`);
    }
    const transpose = transposed.has(name);
    const want = transpose ? [...variable.shape].reverse() : variable.shape;
    if (!tf.util.arraysEqual(tensor.shape, want)) {
      throw new RangeError(
        `${where}/${tensor.file}: ${name} has shape [${tensor.shape}]; the model (config.json) needs [${want}].`,
      );
    }
    plan.push({ variable, tensor, transpose });
  }
  for (const [name, tensor] of lookup) {
    if (names.has(name)) continue;
    if (IGNORED.some((pattern) => pattern.test(name))) continue;
    if (name === "lm_head.weight" && model.config.tieWordEmbeddings) {
      const want = [model.config.vocabSize, model.config.hiddenSize];
      if (tf.util.arraysEqual(tensor.shape, want)) continue; // the tied table, as transformers ties it
    }
    throw new Error(
      `${where}/${tensor.file}: unexpected tensor ${name} [${tensor.shape}]; the ${model.config.architecture} ` +
        "that config.json describes has no such parameter.",
    );
  }
  for (const { variable, tensor, transpose } of plan) {
    const { data, shape } = transpose ? transpose2d(tensor.data, tensor.shape) : tensor;
    tf.tidy(() => variable.assign(tf.tensor(data, shape, "float32")));
  }
}

/** The tensors under the model's parameter names: GPT-2 files without the `transformer.` prefix are renamed. */
function renaming(model: PretrainedCausalLM, tensors: Map<string, CheckpointTensor>): Map<string, CheckpointTensor> {
  if (model.config.architecture !== "GPT2LMHeadModel") return tensors;
  const names = [...tensors.keys()].filter((name) => name !== "lm_head.weight");
  if (names.length === 0 || names.some((name) => name.startsWith("transformer."))) return tensors;
  return new Map([...tensors].map(([name, t]) => [name === "lm_head.weight" ? name : `transformer.${name}`, t]));
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** The parsed JSON file `dir/name`, with errors that name the file. */
export async function readJson(dir: string, name: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/${name}`);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new Error(`${dir} has no ${name}.`);
    throw error;
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`${dir}/${name} is not valid JSON (${(error as Error).message}).`);
  }
}
