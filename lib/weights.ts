/**
 * A model's weights as one safetensors file: every parameter under its `namedParameters` name, so a trained
 * base model can be saved and reused, here or in PyTorch.
 *
 * Files are written with `Deno.writeFile` and read with `Deno.readFile` (permissions `--allow-write` and
 * `--allow-read`); {@linkcode weightsToSafetensors} and {@linkcode weightsFromSafetensors} do the same work
 * on bytes.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Linear } from "./layers.ts";
import { type Module, namedModules } from "./module.ts";
import { listNames } from "./_names.ts";
import { decodeSafetensors, encodeSafetensors, type TensorData } from "./safetensors.ts";

/**
 * Every parameter of `model` as the bytes of a safetensors file, under its `namedParameters` name.
 *
 * A `Linear` weight is stored as PyTorch stores it, `[out, in]` (this library keeps `[in, out]`); everything
 * else keeps its shape. The file is then the `state_dict` of the tutorial's PyTorch model with the same
 * layers: `model.load_state_dict(safetensors.torch.load_file(path))` reads it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { weightsToSafetensors } from "./weights.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
 * const bytes = await weightsToSafetensors(model);
 * const headerBytes = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
 * assert.equal(bytes.length, 8 + headerBytes + 4 * 136074); // size, header, 136074 float32 parameters
 * model.dispose();
 * ```
 */
export async function weightsToSafetensors(model: Module): Promise<Uint8Array> {
  refuseMerged(model, "saveWeights");
  const transposed = linearWeightNames(model);
  const tensors = new Map<string, TensorData>();
  for (const { name, variable } of model.namedParameters()) {
    const data = await variable.data() as Float32Array;
    tensors.set(
      name,
      transposed.has(name) ? transpose2d(data, variable.shape) : { shape: [...variable.shape], data },
    );
  }
  return encodeSafetensors(tensors, { format: "pt" });
}

/**
 * Sets every parameter of `model` from the bytes of a safetensors file written by
 * {@linkcode weightsToSafetensors} (or by PyTorch for the same model). The file must hold exactly the
 * model's parameters, with matching shapes and finite values; otherwise an error names what is missing,
 * unexpected or misshapen, or the tensor and index of the first NaN or infinity (the check of
 * `decodeSafetensors`), with `source` (the file's name, say) when given, and the model is left as it was.
 * Trainable flags are kept.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * import { weightsFromSafetensors, weightsToSafetensors } from "./weights.ts";
 * const trained = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * const fresh = new MultilayerPerceptron(4, 3, 3, 2, { seed: 2 });
 * weightsFromSafetensors(fresh, await weightsToSafetensors(trained));
 * assert.deepEqual(fresh.namedParameters()[0].variable.arraySync(), trained.namedParameters()[0].variable.arraySync());
 * trained.dispose();
 * fresh.dispose();
 * ```
 */
export function weightsFromSafetensors(model: Module, bytes: Uint8Array, source?: string): void {
  refuseMerged(model, "loadWeights");
  const { tensors } = decodeSafetensors(bytes, { source });
  const parameters = model.namedParameters();
  const transposed = linearWeightNames(model);
  const expected = new Set(parameters.map((p) => p.name));
  const missing = [...expected].filter((name) => !tensors.has(name));
  const unexpected = [...tensors.keys()].filter((name) => !expected.has(name));
  if (missing.length > 0 || unexpected.length > 0) {
    const parts = [];
    if (missing.length > 0) parts.push(`missing ${listNames(missing)}`);
    if (unexpected.length > 0) parts.push(`unexpected ${listNames(unexpected)}`);
    throw new RangeError(`loadWeights: the file's tensors do not match the model: ${parts.join("; ")}.`);
  }
  // Check every shape before assigning anything, so a bad file leaves the model unchanged.
  const values = parameters.map(({ name, variable }) => {
    const stored = tensors.get(name)!;
    const shape = transposed.has(name) ? [...variable.shape].reverse() : variable.shape;
    if (!tf.util.arraysEqual(stored.shape, shape)) {
      throw new RangeError(
        `loadWeights: "${name}" has shape [${stored.shape}] in the file; the model expects [${shape}].`,
      );
    }
    return transposed.has(name) ? transpose2d(stored.data, stored.shape) : stored;
  });
  parameters.forEach(({ variable }, i) => assignFrom(variable, values[i]));
}

/**
 * Writes every parameter of `model` to a safetensors file at `path` (see {@linkcode weightsToSafetensors}).
 * Needs `--allow-write` for `path`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { saveWeights } from "./weights.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * await saveWeights(model, "data/example-base.safetensors");
 * assert.equal((await Deno.stat("data/example-base.safetensors")).size, 544808);
 * await Deno.remove("data/example-base.safetensors");
 * model.dispose();
 * ```
 */
export async function saveWeights(model: Module, path: string | URL): Promise<void> {
  await Deno.writeFile(path, await weightsToSafetensors(model));
}

/**
 * Reads a safetensors file written by {@linkcode saveWeights} into `model`'s parameters (see
 * {@linkcode weightsFromSafetensors}); errors name `path`. Needs `--allow-read` for `path`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadWeights, saveWeights } from "./weights.ts";
 * import { MultilayerPerceptron } from "./mlp.ts";
 * const trained = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * await saveWeights(trained, "data/example-weights.safetensors");
 * const model = new MultilayerPerceptron(4, 3, 3, 2, { seed: 2 });
 * await loadWeights(model, "data/example-weights.safetensors");
 * await Deno.remove("data/example-weights.safetensors");
 * assert.deepEqual(model.namedParameters()[0].variable.arraySync(), trained.namedParameters()[0].variable.arraySync());
 * trained.dispose();
 * model.dispose();
 * ```
 */
export async function loadWeights(model: Module, path: string | URL): Promise<void> {
  weightsFromSafetensors(model, await Deno.readFile(path), String(path));
}

/** Names (as `namedParameters` gives them) of every `Linear` weight in `model`, at any depth. */
function linearWeightNames(model: Module): Set<string> {
  return new Set(
    namedModules(model).filter(([, m]) => m instanceof Linear).map(([name]) =>
      name === "" ? "weight" : `${name}.weight`
    ),
  );
}

/**
 * A row-major `[rows, cols]` matrix transposed to `[cols, rows]`: between this library's `[in, out]` weights
 * and PyTorch's `[out, in]`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { transpose2d } from "./weights.ts";
 * const { shape, data } = transpose2d([1, 2, 3, 4, 5, 6], [2, 3]);
 * assert.deepEqual(shape, [3, 2]);
 * assert.deepEqual(data, new Float32Array([1, 4, 2, 5, 3, 6]));
 * ```
 */
export function transpose2d(data: ArrayLike<number>, shape: readonly number[]): TensorData {
  const [rows, cols] = shape;
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j];
  return { shape: [cols, rows], data: out };
}

/**
 * Sets `variable` to the values in `tensor` (same shape), creating and freeing the temporary tensor.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { assignFrom } from "./weights.ts";
 * const v = tf.variable(tf.zeros([2]));
 * assignFrom(v, { shape: [2], data: new Float32Array([1, 2]) });
 * assert.deepEqual(v.arraySync(), [1, 2]);
 * ```
 */
export function assignFrom(variable: tf.Variable, { shape, data }: TensorData): void {
  const value = tf.tensor(data, shape, "float32");
  variable.assign(value);
  value.dispose();
}

/** Throws for `caller` while an adapter is folded into a base weight (a layer whose `merged` is true). */
function refuseMerged(model: Module, caller: string): void {
  const merged = namedModules(model).find(([, m]) => (m as { merged?: unknown }).merged === true);
  if (merged !== undefined) {
    throw new Error(`${caller}: ${merged[0]} has an adapter merged into its base weight; call unmerge() first.`);
  }
}
