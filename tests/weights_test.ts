import * as tf from "@tensorflow/tfjs";
import {
  addLoRA,
  countParameters,
  decodeSafetensors,
  encodeSafetensors,
  initBackend,
  type Linear,
  loadWeights,
  mergeAdapter,
  MultilayerPerceptron,
  namedParameters,
  saveWeights,
  weightsFromSafetensors,
  weightsToSafetensors,
} from "../lib/mod.ts";
import { assertBitIdentical, assertEquals, assertNoLeak, assertRejects, assertThrows } from "./assert.ts";

import { assertUnchanged, input, mlp, small, snapshot } from "./fixtures.ts";

await initBackend();

// Weights files -------------------------------------------------------------------------------------------

Deno.test("weights: save → load gives bit-identical parameters and outputs", async () => {
  await assertNoLeak(async () => {
    const trained = mlp(1);
    const fresh = mlp(2);
    weightsFromSafetensors(fresh, await weightsToSafetensors(trained));
    assertUnchanged(fresh, snapshot(trained));
    const x = input(5, 784);
    const [a, b] = [trained.apply(x), fresh.apply(x)];
    assertBitIdentical(a, b, "outputs");
    tf.dispose([x, a, b]);
    trained.dispose();
    fresh.dispose();
  });
});

Deno.test("weights: PyTorch's layout, and 4 bytes per parameter plus the header", async () => {
  const model = mlp(1);
  const bytes = await weightsToSafetensors(model);
  const { tensors, metadata } = decodeSafetensors(bytes);
  assertEquals(metadata, { format: "pt" });
  assertEquals([...tensors.keys()].sort(), namedParameters(model).map((p) => p.name).sort());
  assertEquals(tensors.get("layers.0.weight")!.shape, [128, 784]);
  assertEquals(tensors.get("layers.0.bias")!.shape, [128]);
  // [out, in] in the file is the transpose of the library's [in, out].
  const w = (model.layers[0] as Linear).weight.dataSync();
  assertEquals(tensors.get("layers.0.weight")!.data[1 * 784 + 5], w[5 * 128 + 1]);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals(bytes.length, 8 + headerLength + 4 * countParameters(model).total);
  console.log(`base model: ${countParameters(model).total} parameters, file ${bytes.length} bytes`);
  model.dispose();
});

Deno.test("weights: a LoRA model's file keeps A and B as they are and refuses a merged model", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2 });
  const { tensors } = decodeSafetensors(await weightsToSafetensors(model));
  assertEquals(tensors.get("layers.0.linear.weight")!.shape, [16, 20]);
  assertEquals(tensors.get("layers.0.lora.A")!.shape, [20, 2]);
  mergeAdapter(model);
  await assertRejects(() => weightsToSafetensors(model), Error, /merged into its base weight/);
  model.dispose();
});

Deno.test("weights: a mismatched file is refused and leaves the model unchanged", async () => {
  const target = new MultilayerPerceptron(4, 3, 3, 2, { seed: 3 });
  const before = snapshot(target);
  const other = new MultilayerPerceptron(4, 5, 3, 2, { seed: 2 });
  const short = new MultilayerPerceptron(4, 3, 3, 2, { seed: 4 });
  short.layers.pop()!.dispose();
  await assertNoLeak(async () => {
    assertThrows(() => weightsFromSafetensors(target, new Uint8Array(3)), RangeError, /8-byte length/);
    const otherBytes = await weightsToSafetensors(other);
    assertThrows(
      () => weightsFromSafetensors(target, otherBytes),
      RangeError,
      /"layers.0.weight" has shape \[5,4\] in the file; the model expects \[3,4\]/,
    );
    const shortBytes = await weightsToSafetensors(short);
    assertThrows(
      () => weightsFromSafetensors(target, shortBytes),
      RangeError,
      /missing "layers.4.weight", "layers.4.bias"/,
    );
    const targetBytes = await weightsToSafetensors(target);
    assertThrows(
      () => weightsFromSafetensors(short, targetBytes),
      RangeError,
      /unexpected "layers.4.bias", "layers.4.weight"/,
    );
  });
  assertUnchanged(target, before);
  for (const m of [other, target, short]) m.dispose();
});

Deno.test("weights: saveWeights and loadWeights round-trip through a file under data/", async () => {
  const dir = await Deno.makeTempDir({ dir: "data", prefix: "tmp-adapters-test-" });
  try {
    const trained = small(1);
    const fresh = small(2);
    await saveWeights(trained, `${dir}/base.safetensors`);
    await loadWeights(fresh, `${dir}/base.safetensors`);
    assertUnchanged(fresh, snapshot(trained));
    trained.dispose();
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("weights: a NaN or infinity in the file is refused, naming the file, tensor and index; model unchanged", async () => {
  const dir = await Deno.makeTempDir({ dir: "data", prefix: "tmp-weights-test-" });
  const model = small(3);
  const before = snapshot(model);
  try {
    await assertNoLeak(async () => {
      const source = small(4);
      // layers.2.weight is [in 16, out 12] here and [12, 16] in the file; value (row 1, column 5) of the file.
      const { tensors, metadata } = decodeSafetensors(await weightsToSafetensors(source));
      source.dispose();
      for (const bad of [NaN, Infinity, -Infinity]) {
        const data = tensors.get("layers.2.weight")!.data.slice();
        data[16 + 5] = bad;
        const poisoned = new Map(tensors);
        poisoned.set("layers.2.weight", { ...tensors.get("layers.2.weight")!, data });
        const bytes = encodeSafetensors(poisoned, metadata);
        assertThrows(
          () => weightsFromSafetensors(model, bytes, "poisoned.safetensors"),
          RangeError,
          new RegExp(
            `^safetensors \\(poisoned\\.safetensors\\): tensor "layers\\.2\\.weight" holds ${bad} at flat index 21 ` +
              `\\(index \\[1, 5\\] of shape \\[12, 16\\], F32\\)`,
          ),
        );
        await Deno.writeFile(`${dir}/bad.safetensors`, bytes);
        await assertRejects(
          () => loadWeights(model, `${dir}/bad.safetensors`),
          RangeError,
          new RegExp(`\\(${dir}/bad\\.safetensors\\): tensor "layers\\.2\\.weight" holds ${bad}`),
        );
      }
    });
    assertUnchanged(model, before);
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
