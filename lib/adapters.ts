/**
 * Weights and adapters as files.
 *
 * - {@linkcode saveWeights} / {@linkcode loadWeights}: every parameter of a model in one safetensors file,
 *   named as {@linkcode namedParameters} names them, so a trained base model can be reused.
 *
 * Files are written with `Deno.writeFile` and read with `Deno.readFile` (permissions `--allow-write` and
 * `--allow-read`); the `…ToSafetensors` / `…FromSafetensors` functions do the same work on bytes.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Linear, LinearWithLoRA, type Module } from "./layers.ts";
import { decodeSafetensors, encodeSafetensors, type TensorData } from "./safetensors.ts";

/**
 * Every parameter of `model` as the bytes of a safetensors file, under its {@linkcode namedParameters} name.
 *
 * A `Linear` weight is stored as PyTorch stores it, `[out, in]` (this library keeps `[in, out]`); everything
 * else keeps its shape. The file is then the `state_dict` of the tutorial's PyTorch model with the same
 * layers: `model.load_state_dict(safetensors.torch.load_file(path))` reads it.
 *
 * @example
 * ```ts
 * import { MultilayerPerceptron } from "./model.ts";
 * import { weightsToSafetensors } from "./adapters.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
 * const bytes = await weightsToSafetensors(model);
 * console.log(bytes.length); // 4 × 136074 parameters + header
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
 * model's parameters, with matching shapes; otherwise an error names what is missing, unexpected or
 * misshapen, and the model is left as it was. Trainable flags are kept.
 *
 * @example
 * ```ts
 * import { MultilayerPerceptron } from "./model.ts";
 * import { weightsFromSafetensors, weightsToSafetensors } from "./adapters.ts";
 * const trained = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
 * const fresh = new MultilayerPerceptron(4, 3, 3, 2, { seed: 2 });
 * weightsFromSafetensors(fresh, await weightsToSafetensors(trained));
 * console.log(fresh.layers[0].namedParameters()[0].variable.arraySync()); // trained's first weight
 * trained.dispose();
 * fresh.dispose();
 * ```
 */
export function weightsFromSafetensors(model: Module, bytes: Uint8Array): void {
  refuseMerged(model, "loadWeights");
  const { tensors } = decodeSafetensors(bytes);
  const parameters = model.namedParameters();
  const transposed = linearWeightNames(model);
  const expected = new Set(parameters.map((p) => p.name));
  checkKeys("loadWeights", [...tensors.keys()], expected);
  // Check every shape before assigning anything, so a bad file leaves the model unchanged.
  const values = parameters.map(({ name, variable }) => {
    const stored = tensors.get(name)!;
    const shape = transposed.has(name) ? [...variable.shape].reverse() : variable.shape;
    if (!sameShape(stored.shape, shape)) {
      throw new RangeError(
        `loadWeights: "${name}" has shape [${stored.shape}] in the file; the model expects [${shape}].`,
      );
    }
    return transposed.has(name) ? transpose2d(stored.data, stored.shape).data : stored.data;
  });
  parameters.forEach(({ variable }, i) => {
    const value = tf.tensor(values[i], variable.shape, "float32");
    variable.assign(value);
    value.dispose();
  });
}

/**
 * Writes every parameter of `model` to a safetensors file at `path` (see {@linkcode weightsToSafetensors}).
 * Needs `--allow-write` for `path`.
 *
 * @example
 * ```ts ignore
 * import { MultilayerPerceptron, saveWeights } from "./mod.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
 * await saveWeights(model, "data/base.safetensors");
 * ```
 */
export async function saveWeights(model: Module, path: string | URL): Promise<void> {
  await Deno.writeFile(path, await weightsToSafetensors(model));
}

/**
 * Reads a safetensors file written by {@linkcode saveWeights} into `model`'s parameters (see
 * {@linkcode weightsFromSafetensors}). Needs `--allow-read` for `path`.
 *
 * @example
 * ```ts ignore
 * import { loadWeights, MultilayerPerceptron } from "./mod.ts";
 * const model = new MultilayerPerceptron(784, 128, 256, 10);
 * await loadWeights(model, "data/base.safetensors");
 * ```
 */
export async function loadWeights(model: Module, path: string | URL): Promise<void> {
  weightsFromSafetensors(model, await Deno.readFile(path));
}

/** Names (as `namedParameters` gives them) of every `Linear` weight in `module`, at any depth. */
function linearWeightNames(module: Module, prefix = ""): Set<string> {
  if (module instanceof Linear) return new Set([prefix + "weight"]);
  return new Set(module.children().flatMap(([key, child]) => [...linearWeightNames(child, `${prefix}${key}.`)]));
}

function refuseMerged(module: Module, caller: string): void {
  if (module instanceof LinearWithLoRA && module.merged) {
    throw new Error(`${caller}: a LoRA layer is merged into its base weight; call unmerge() first.`);
  }
  for (const [, child] of module.children()) refuseMerged(child, caller);
}

function checkKeys(caller: string, found: string[], expected: Set<string>): void {
  const missing = [...expected].filter((name) => !found.includes(name));
  const unexpected = found.filter((name) => !expected.has(name));
  if (missing.length > 0 || unexpected.length > 0) {
    const parts = [];
    if (missing.length > 0) parts.push(`missing ${missing.map((n) => `"${n}"`).join(", ")}`);
    if (unexpected.length > 0) parts.push(`unexpected ${unexpected.map((n) => `"${n}"`).join(", ")}`);
    throw new RangeError(`${caller}: the file's tensors do not match the model: ${parts.join("; ")}.`);
  }
}

function transpose2d(data: ArrayLike<number>, shape: readonly number[]): TensorData {
  const [rows, cols] = shape;
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j];
  return { shape: [cols, rows], data: out };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
