import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/backend.ts";
import { MultilayerPerceptron } from "../lib/model.ts";
import { loadWeights, saveWeights, weightsFromSafetensors, weightsToSafetensors } from "../lib/adapters.ts";
import { decodeSafetensors } from "../lib/safetensors.ts";

await initBackend();

/** Values of every parameter, by name. */
function snapshot(model: MultilayerPerceptron): Map<string, Float32Array> {
  return new Map(model.namedParameters().map(({ name, variable }) => [name, variable.dataSync() as Float32Array]));
}

function assertSameParameters(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  assert.deepEqual([...a.keys()], [...b.keys()]);
  for (const [name, values] of a) assert.deepEqual(b.get(name), values, name);
}

Deno.test("weights: save → load gives bit-identical parameters and outputs", async () => {
  const before = tf.memory().numTensors;
  const trained = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
  const fresh = new MultilayerPerceptron(784, 128, 256, 10, { seed: 2 });
  const bytes = await weightsToSafetensors(trained);
  weightsFromSafetensors(fresh, bytes);
  assertSameParameters(snapshot(trained), snapshot(fresh));
  const x = tf.randomUniform([5, 784], 0, 1, "float32", 3) as tf.Tensor2D;
  const [a, b] = [trained.apply(x), fresh.apply(x)];
  assert.deepEqual(a.dataSync(), b.dataSync());
  tf.dispose([x, a, b]);
  trained.dispose();
  fresh.dispose();
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("weights: file holds PyTorch's layout and size 4 bytes per parameter plus header", async () => {
  const model = new MultilayerPerceptron(784, 128, 256, 10, { seed: 1 });
  const bytes = await weightsToSafetensors(model);
  const { tensors, metadata } = decodeSafetensors(bytes);
  assert.deepEqual(metadata, { format: "pt" });
  assert.deepEqual([...tensors.keys()].sort(), model.namedParameters().map((p) => p.name).sort());
  assert.deepEqual(tensors.get("layers.0.weight")!.shape, [128, 784]);
  assert.deepEqual(tensors.get("layers.0.bias")!.shape, [128]);
  // [out, in] in the file is the transpose of the library's [in, out].
  const w = model.layers[0].namedParameters()[0].variable.dataSync();
  assert.equal(tensors.get("layers.0.weight")!.data[1 * 784 + 5], w[5 * 128 + 1]);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(bytes.length, 8 + headerLength + 4 * 136074);
  model.dispose();
});

Deno.test("weights: a mismatched file is refused and leaves the model unchanged", async () => {
  const before = tf.memory().numTensors;
  const small = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
  const other = new MultilayerPerceptron(4, 5, 3, 2, { seed: 2 });
  const target = new MultilayerPerceptron(4, 3, 3, 2, { seed: 3 });
  const original = snapshot(target);
  assert.throws(() => weightsFromSafetensors(target, new Uint8Array(3)), /8-byte length/);
  await assert.rejects(
    async () => weightsFromSafetensors(target, await weightsToSafetensors(other)),
    /"layers.0.weight" has shape \[5,4\] in the file; the model expects \[3,4\]/,
  );
  const wrapped = new MultilayerPerceptron(4, 3, 3, 2, { seed: 4 });
  wrapped.layers.pop()!.dispose();
  await assert.rejects(
    async () => weightsFromSafetensors(wrapped, await weightsToSafetensors(small)),
    /unexpected "layers.4.bias", "layers.4.weight"/,
  );
  await assert.rejects(
    async () => weightsFromSafetensors(small, await weightsToSafetensors(wrapped)),
    /missing "layers.4.weight", "layers.4.bias"/,
  );
  assertSameParameters(original, snapshot(target));
  for (const m of [small, other, target, wrapped]) m.dispose();
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("weights: saveWeights and loadWeights round-trip through a file under data/", async () => {
  const dir = "data/tmp-adapters-test-weights";
  await Deno.mkdir(dir, { recursive: true });
  try {
    const trained = new MultilayerPerceptron(4, 3, 3, 2, { seed: 1 });
    const fresh = new MultilayerPerceptron(4, 3, 3, 2, { seed: 2 });
    await saveWeights(trained, `${dir}/base.safetensors`);
    await loadWeights(fresh, `${dir}/base.safetensors`);
    assertSameParameters(snapshot(trained), snapshot(fresh));
    trained.dispose();
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
