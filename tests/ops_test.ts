import * as tf from "@tensorflow/tfjs";
import { blasStatus, crossEntropy, initBackend, matMul, softmaxCrossEntropy } from "../lib/mod.ts";
import { disableBlas, enableBlas } from "../lib/blas.ts";
import { assert, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";

await initBackend(undefined, { quiet: true });
const blas = blasStatus().enabled;

/** Logits spread over ±scale, and one-hot targets, for a batch of 16 and 10 classes. */
function data(scale: number) {
  const logits = tf.variable(tf.randomUniform([16, 10], -scale, scale, "float32", 5)) as tf.Variable<tf.Rank.R2>;
  const labels = tf.tensor1d(Array.from({ length: 16 }, (_, i) => (i * 7) % 10), "int32");
  const targets = tf.oneHot(labels, 10).toFloat() as tf.Tensor2D;
  labels.dispose();
  return { logits, targets };
}

// float32 sums of ten exponentials: ~1e-6 relative error, so 1e-5 absolute on losses of order 1–10.
for (const scale of [1, 30]) {
  Deno.test(`softmaxCrossEntropy's value and hand-written gradient equal tfjs's for logits within ±${scale}`, () => {
    const { logits, targets } = data(scale);
    const reference = tf.variableGrads(
      () => tf.losses.softmaxCrossEntropy(targets, logits) as tf.Scalar,
      [logits],
    );
    const ours = tf.variableGrads(() => softmaxCrossEntropy(logits, targets), [logits]);
    assertClose(ours.value, reference.value, 1e-5 * scale, "loss");
    assertClose(ours.grads[logits.name], reference.grads[logits.name], 1e-6, "gradient");
    // The gradient of a mean over 16 rows: each row's entries sum to zero, and are (p − onehot)/16.
    const rowSums = tf.sum(ours.grads[logits.name], 1);
    assert.ok(tf.max(tf.abs(rowSums)).dataSync()[0] < 1e-7);
    tf.dispose([reference.value, ours.value, rowSums, logits, targets]);
    tf.dispose(Object.values(reference.grads));
    tf.dispose(Object.values(ours.grads));
  });
}

Deno.test("softmaxCrossEntropy stays finite where exp would overflow", () => {
  // exp(1000) is Infinity in float32; shifted by the row maximum the loss is exactly 1000 - 0 = 1000 for the
  // wrong label and ≈ 0 for the right one.
  const logits = tf.tensor2d([[1000, 0], [1000, 0]]);
  const targets = tf.tensor2d([[0, 1], [1, 0]]);
  const lossTensor = softmaxCrossEntropy(logits, targets);
  const loss = lossTensor.dataSync()[0];
  assert.ok(Math.abs(loss - 500) < 1e-3, `mean of 1000 and 0 should be 500; got ${loss}`);
  tf.dispose([logits, targets, lossTensor]);
});

Deno.test("crossEntropy is softmaxCrossEntropy, and a training step's worth of it leaks nothing", async () => {
  const { logits, targets } = data(3);
  await assertNoLeak(() => {
    const { value, grads } = tf.variableGrads(() => crossEntropy(logits, targets), [logits]);
    const direct = softmaxCrossEntropy(logits, targets);
    assert.equal(value.dataSync()[0], direct.dataSync()[0]);
    tf.dispose([value, direct, ...Object.values(grads)]);
  });
  tf.dispose([logits, targets]);
});

Deno.test("softmaxCrossEntropy rejects mismatched shapes, naming both", () => {
  const logits = tf.zeros([4, 10]) as tf.Tensor2D;
  const targets = tf.zeros([4, 9]) as tf.Tensor2D;
  assertThrows(() => softmaxCrossEntropy(logits, targets), RangeError, /\[batch, classes\]; got \[4,10\] and \[4,9\]/);
  tf.dispose([logits, targets]);
});

Deno.test("matMul's hand-written gradients equal tfjs's own, for every combination of trainable operands", () => {
  const a = tf.variable(tf.randomNormal([5, 7], 0, 1, "float32", 13)) as tf.Variable<tf.Rank.R2>;
  const b = tf.variable(tf.randomNormal([7, 3], 0, 1, "float32", 14)) as tf.Variable<tf.Rank.R2>;
  const loss = (f: () => tf.Tensor) => () => tf.sum(tf.square(f())) as tf.Scalar;
  const reference = tf.variableGrads(loss(() => tf.matMul(a, b)), [a, b]);
  for (const [trainA, trainB] of [[true, true], [true, false], [false, true]]) {
    a.trainable = trainA;
    b.trainable = trainB;
    const vars = [trainA ? a : null, trainB ? b : null].filter((v) => v !== null);
    const ours = tf.variableGrads(loss(() => matMul(a, b)), vars);
    for (const v of vars) assertClose(ours.grads[v.name], reference.grads[v.name], 1e-4, `d/d${v.name}`);
    tf.dispose(ours);
  }
  tf.dispose(reference);
  tf.dispose([a, b]);
});

Deno.test("matMul skips the gradients of raw input and of frozen weights: fewer products in the backward pass", async () => {
  const x = tf.randomNormal([8, 6], 0, 1, "float32", 15) as tf.Tensor2D;
  const w = tf.variable(tf.randomNormal([6, 4], 0, 1, "float32", 16)) as tf.Variable<tf.Rank.R2>;
  const v = tf.variable(tf.randomNormal([4, 3], 0, 1, "float32", 17)) as tf.Variable<tf.Rank.R2>;
  /** Matrix products run by one forward and backward pass of `f` with respect to the trainable variables. */
  const products = async (f: () => tf.Tensor) => {
    const vars = [w, v].filter((t) => t.trainable);
    const info = await tf.profile(() => {
      const { value, grads } = tf.variableGrads(() => tf.sum(f()) as tf.Scalar, vars);
      tf.dispose([value, ...Object.values(grads)]);
    });
    return info.kernels.filter((k) => k.name === "BatchMatMul").length;
  };
  // Forward: x·w, then ·v. Backward: dv, the gradient into x·w, and dw, but no dx: tfjs prunes its own
  // products' gradients that way, and a custom gradient would compute all of its operands' unless told.
  assertEquals(await products(() => tf.matMul(tf.matMul(x, w), v)), 5);
  assertEquals(await products(() => matMul(matMul(x, w), v)), 5);
  // With w frozen, only dv is left to compute.
  w.trainable = false;
  assertEquals(await products(() => matMul(matMul(x, w), v)), 3);
  tf.dispose([x, w, v]);
});

Deno.test("matMul acts on the last axis and names both shapes when they do not fit", () => {
  const x = tf.randomNormal([2, 3, 4], 0, 1, "float32", 18);
  const w = tf.randomNormal([4, 5], 0, 1, "float32", 19) as tf.Tensor2D;
  const y = matMul(x, w);
  assertEquals(y.shape, [2, 3, 5]);
  const expected = tf.reshape(tf.matMul(tf.reshape(x, [6, 4]), w), [2, 3, 5]);
  assertClose(y, expected, 1e-6, "rank-3 product");
  assertThrows(() => matMul(x, tf.zeros([5, 5]) as tf.Tensor2D), RangeError, /got \[2,3,4\] and \[5,5\]/);
  tf.dispose([x, w, y, expected]);
});

Deno.test("matMul's backward pass: explicit transposes on plain wasm, transpose flags with BLAS, the same gradients", async () => {
  const x = tf.randomNormal([8, 6], 0, 1, "float32", 20) as tf.Tensor2D;
  const w = tf.variable(tf.randomNormal([6, 4], 0, 1, "float32", 21)) as tf.Variable<tf.Rank.R2>;
  const v = tf.variable(tf.randomNormal([4, 3], 0, 1, "float32", 22)) as tf.Variable<tf.Rank.R2>;
  const run = async () => {
    let grads: tf.NamedTensorMap = {};
    const info = await tf.profile(() => {
      const result = tf.variableGrads(() => tf.sum(tf.square(matMul(matMul(x, w), v))) as tf.Scalar, [w, v]);
      result.value.dispose();
      grads = result.grads;
    });
    return { grads, transposes: info.kernels.filter((k) => k.name === "Transpose").length };
  };
  const wasActive = blas;
  try {
    disableBlas("comparing the two backward passes");
    const plain = await run();
    // dv = hᵀ·dy, dh = dy·vᵀ, dw = xᵀ·dh: three explicit transposes before plain products
    assertEquals(plain.transposes, 3);
    if (!blas) {
      console.log(`the BLAS half skipped: ${blasStatus().reason}`);
      tf.dispose(Object.values(plain.grads));
      return;
    }
    enableBlas();
    const flagged = await run();
    assertEquals(flagged.transposes, 0, "with BLAS the transposes are flags of the products");
    for (const name of [w.name, v.name]) assertClose(flagged.grads[name], plain.grads[name], 1e-4, name);
    tf.dispose([...Object.values(plain.grads), ...Object.values(flagged.grads)]);
  } finally {
    if (wasActive) enableBlas();
    tf.dispose([x, w, v]);
  }
});
