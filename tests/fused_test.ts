/**
 * The fused kernels of lib/fused.ts against the readable formulas of lib/gpt/ops.ts: the same values and the same
 * gradients to float32 rounding, for every input that may or may not need a gradient; edge cases (ignored targets,
 * masked positions, values past the GELU table); the vector loops and the JavaScript loops each; no leaked tensor;
 * the sharing `Identity`; fewer kernels per step. The LoRA layer's one-node path needs BLAS and is skipped without it
 * (CI runs it, see blas_test.ts).
 */
import * as tf from "@tensorflow/tfjs";
import { adam, addLoRA, GPT, initBackend, languageModelStep, trainableVariables } from "../lib/mod.ts";
import { linear, loraLinear, softmaxCrossEntropy } from "../lib/ops.ts";
import { causalAttention, causalMask, gelu, layerNorm, sequenceCrossEntropy } from "../lib/gpt/mod.ts";
import {
  disableFused,
  enableFused,
  fusedInUse,
  fusedProductsInUse,
  VECTOR_ATTENTION_MAX_VALUES,
} from "../lib/fused.ts";
import { simdLoops } from "../lib/simd.ts";
import { assert, assertEquals, assertNoLeak, maxAbsDiff } from "./assert.ts";

await initBackend("wasm", { quiet: true });
const blas = fusedProductsInUse();

const normal = (shape: number[], seed: number, std = 1, mean = 0) => tf.randomNormal(shape, mean, std, "float32", seed);

/** `f` with the fused kernels (their vector loops or, with `simd` false, their JavaScript loops), then with the
 * readable formulas; fused again afterwards. */
function bothWays<T>(f: () => T, simd = true): { fused: T; readable: T } {
  enableFused({ simd });
  assert.ok(fusedInUse());
  const fused = f();
  disableFused();
  try {
    return { fused, readable: f() };
  } finally {
    enableFused();
  }
}

/** Largest |a − b| relative to the largest |b| (so where b is all zeros, a must be zeros too). */
function relative(a: tf.Tensor, b: tf.Tensor): number {
  const scale = Math.max(1e-30, ...Array.from(b.dataSync(), Math.abs));
  return maxAbsDiff(a, b) / scale;
}

/** Value and gradients of `sum(op(inputs) · r)` with respect to the inputs that are variables. */
function valueAndGrads(op: (inputs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[], trainable: boolean[]) {
  return tf.tidy(() => {
    const value = op(inputs);
    const r = normal(value.shape, 99);
    const variables = inputs.map((t, i) => (trainable[i] ? tf.variable(t) : t));
    const { grads } = tf.variableGrads(
      () => tf.sum(tf.mul(op(variables), r)) as tf.Scalar,
      variables.filter((_, i) => trainable[i]) as tf.Variable[],
    );
    const list = Object.values(grads);
    variables.forEach((v, i) => trainable[i] && v.dispose());
    return [value, ...list];
  });
}

function compare(what: string, fused: tf.Tensor[], readable: tf.Tensor[], tolerance: number): void {
  assertEquals(fused.length, readable.length, `${what}: as many results`);
  fused.forEach((t, i) => {
    assertEquals(t.shape, readable[i].shape, `${what}: shape of result ${i}`);
    const error = relative(t, readable[i]);
    assert.ok(error < tolerance, `${what}: result ${i} differs by ${error} (relative), over ${tolerance}`);
  });
  tf.dispose([...fused, ...readable]);
}

Deno.test("the vector loops of simd.wat load on this runtime's wasm backend", () => {
  assert.notEqual(simdLoops(tf.backend()), null, "WebAssembly SIMD is available in Deno");
});

for (const simd of [true, false]) {
  const loops = simd ? "vector loops" : "JavaScript loops";

  Deno.test(`layer normalisation (${loops}): values and the gradients of x, weight and bias match`, async () => {
    // widths 16 (vector loops) and 6 (not a multiple of four: JavaScript loops either way)
    for (const width of [16, 6]) {
      const x = normal([3, 5, width], 1, 3, 2), weight = normal([width], 2, 1, 1), bias = normal([width], 3);
      for (const trainable of [[true, true, true], [true, false, false], [false, true, true]]) {
        await assertNoLeak(() => {
          const { fused, readable } = bothWays(() =>
            valueAndGrads(
              ([x, w, b]) => layerNorm(x, w as tf.Tensor1D, b as tf.Tensor1D),
              [x, weight, bias],
              trainable,
            ), simd);
          compare(`layerNorm, width ${width}, trainable ${trainable}`, fused, readable, 2e-6);
        });
      }
      tf.dispose([x, weight, bias]);
    }
  });

  Deno.test(`GELU (${loops}): values and gradient match the exact formula, small and large inputs`, async () => {
    const values = [-50, -7, -6, -5.99, -3.3, -1, -0.25, 0, 1e-3, 0.5, 2, 5.999, 6, 6.01, 40];
    // 4,111 values: not a multiple of four, so the vector loop's last, overlapping group is checked too
    for (const x of [tf.concat([tf.tensor1d(values), normal([4096], 5, 3)]), tf.tensor1d([0.5, -2, 3])]) {
      await assertNoLeak(() => {
        const { fused, readable } = bothWays(() => valueAndGrads(([x]) => gelu(x), [x], [true]), simd);
        // Both are float32 approximations (the formulas go through wasm's erf): each value within 1e-6 of the
        // formulas' plus a few units of float32's last place.
        fused.forEach((t, i) => {
          const a = Array.from(t.dataSync()), b = readable[i].dataSync();
          const worst = a.reduce((w, v, j) => Math.max(w, Math.abs(v - b[j]) / (1 + Math.abs(b[j]))), 0);
          assert.ok(worst < 1e-6, `gelu of ${x.size} values, result ${i}: off by ${worst}`);
        });
        tf.dispose([...fused, ...readable]);
      });
      x.dispose();
    }
    enableFused({ simd });
    const nan = tf.tidy(() => gelu(tf.tensor1d([NaN, 1, 2, 3])).dataSync()[0]);
    enableFused();
    assert.ok(Number.isNaN(nan), "GELU of NaN is NaN");
  });
}

for (const simd of [true, false]) {
  Deno.test(`cross-entropy (${simd ? "vector loops" : "JavaScript"}): loss and gradient match, with ignored and out-of-vocabulary targets`, async () => {
    // vocabularies of 7 (a last group of four overlapping the one before), 8 and 3 (too few for the vector loops)
    for (const vocab of [7, 8, 3]) {
      const logits = normal([3, 4, vocab], 6, 4);
      const targets = tf.tensor2d([[1, vocab - 1, -1, 0], [2, 2, vocab, 2], [-1, -1, 1, 0]], [3, 4], "int32");
      const none = tf.fill([3, 4], -1, "int32") as tf.Tensor2D;
      await assertNoLeak(() => {
        for (const [name, t] of [["mixed", targets], ["all ignored", none]] as const) {
          const { fused, readable } = bothWays(
            () => valueAndGrads(([z]) => sequenceCrossEntropy(z as tf.Tensor3D, t), [logits], [true]),
            simd,
          );
          if (name === "all ignored") {
            assertEquals(fused[0].dataSync()[0], 0, "no counted position: loss 0");
            assert.ok(fused[1].dataSync().every((g) => g === 0), "and no gradient");
          }
          compare(`cross-entropy over ${vocab}, ${name}`, fused, readable, 2e-6);
        }
      });
      tf.dispose([logits, targets, none]);
    }
  });
}

// [batch, time, width, heads]: heads of 4 values (vector loops, time padded to 8); one position (a single row);
// heads of 16 over an odd time (the loops' two-row, sixteen-column blocks and their odd last row); of 20 (a block
// and four more columns); of 64 over 3 positions (four blocks a row); of 5 (BLAS, or the formulas without it);
// heads past VECTOR_ATTENTION_MAX_VALUES (BLAS where it is available, else the loops)
const ATTENTION_SHAPES = [
  [3, 6, 12, 3],
  [2, 1, 8, 2],
  [1, 3, 64, 1],
  [2, 7, 32, 2],
  [2, 9, 40, 2],
  [2, 5, 15, 3],
  [1, VECTOR_ATTENTION_MAX_VALUES / 4 + 6, 8, 2],
];

for (const simd of [true, false]) {
  Deno.test(`attention (${simd ? "vector loops where they fit" : "BLAS only"}): output and q, k, v gradients match`, async () => {
    for (const [batch, time, width, heads] of ATTENTION_SHAPES) {
      const q = normal([batch, time, width], 7, 2), k = normal([batch, time, width], 8, 2);
      const v = normal([batch, time, width], 9);
      for (const trainable of [[true, true, true], [false, false, true], [true, false, false]]) {
        await assertNoLeak(() => {
          const { fused, readable } = bothWays(
            () => valueAndGrads(([q, k, v]) => causalAttention(q, k, v, heads, causalMask(time)), [q, k, v], trainable),
            simd,
          );
          compare(
            `attention [${batch}, ${time}, ${width}] × ${heads} heads, trainable ${trainable}`,
            fused,
            readable,
            1e-5,
          );
        });
      }
      tf.dispose([q, k, v]);
    }
  });
}

Deno.test("tf.grad with respect to plain tensors reaches through every fused op, as through the formulas", async () => {
  // No input is a variable, so the ops see constants; tfjs's gradient must still find its way through their nodes.
  const x = normal([2, 5, 8], 21, 2), w = normal([8], 22), b = normal([8], 23);
  const targets = tf.tensor2d([[1, 7, -1, 0, 3], [2, 2, 5, 4, 6]], [2, 5], "int32") as tf.Tensor2D;
  const mask = causalMask(5);
  const loss = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => {
    const h = gelu(layerNorm(x, w as tf.Tensor1D, b as tf.Tensor1D));
    return sequenceCrossEntropy(causalAttention(h, h, h, 2, mask) as tf.Tensor3D, targets);
  };
  await assertNoLeak(() => {
    const { fused, readable } = bothWays(() => tf.tidy(() => tf.grads(loss)([x, w, b])));
    assert.ok(fused.every((g) => g.dataSync().some((v) => v !== 0)), "gradients that are not all zeros");
    compare("tf.grads of a block's ops", fused, readable, 1e-5);
  });
  tf.dispose([x, w, b, targets, mask]);
});

Deno.test("the fused Identity shares its input's buffer: a clone costs no copy and outlives the original", async () => {
  const x = tf.tensor1d([1, 2, 3]);
  const buffers = () => tf.backend().numDataIds();
  const before = buffers();
  const copy = tf.clone(x);
  assert.equal(copy.dataId, x.dataId, "the same buffer");
  assert.equal(buffers(), before, "no new buffer on the wasm heap");
  x.dispose();
  assertEquals(Array.from(await copy.data()), [1, 2, 3]);
  copy.dispose();
  disableFused();
  const y = tf.tensor1d([4]), copied = tf.clone(y);
  assert.notEqual(copied.dataId, y.dataId, "wasm's own Identity copies");
  tf.dispose([y, copied]);
  enableFused();
});

Deno.test("three GPT steps take the same path fused as with the formulas, in fewer kernels, leaking nothing", async () => {
  const config = { vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 32 };
  let seed = 11;
  const ids = () =>
    Int32Array.from({ length: 8 * 16 }, () => 1 + ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % 29));
  const batch = { inputs: ids(), targets: ids(), size: 8, time: 16, tokens: 8 * 16 };
  for (const lora of [false, true]) {
    const run = async () => {
      const base = new GPT(config, { seed: 3 });
      const model = lora ? addLoRA(base, { rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj"], seed: 4 }) : base;
      const optimizer = adam(1e-3), variables = trainableVariables(model);
      const losses: number[] = [];
      for (let i = 0; i < 3; i++) {
        const loss = languageModelStep(model, optimizer, batch, variables);
        losses.push(loss.dataSync()[0]);
        loss.dispose();
      }
      const kernels = (await tf.profile(() => languageModelStep(model, optimizer, batch, variables).dispose()))
        .kernels.length;
      const weights = variables.map((v) => v.clone());
      optimizer.dispose();
      model.dispose();
      return { losses, kernels, weights };
    };
    enableFused();
    const fused = await run();
    disableFused();
    const readable = await run();
    enableFused();
    assert.ok(maxAbsDiff(fused.losses, readable.losses) < 1e-5, `losses ${fused.losses} vs ${readable.losses}`);
    fused.weights.forEach((w, i) => assert.ok(maxAbsDiff(w, readable.weights[i]) < 1e-4, `parameter ${i}`));
    assert.ok(
      // Measured: 0.38 of the kernels with BLAS (attention and LoRA fused too), 0.70 on wasm alone.
      fused.kernels < (blas ? 0.5 : 0.8) * readable.kernels,
      `${lora ? "LoRA" : "full"}: ${fused.kernels} kernels fused vs ${readable.kernels} with the formulas`,
    );
    tf.dispose([...fused.weights, ...readable.weights]);
    await assertNoLeak(async () => {
      const again = await run();
      tf.dispose(again.weights);
    });
  }
});

Deno.test("LORA_FUSED=off and { fused: false } turn the fused kernels off; a bad LORA_FUSED is refused", async () => {
  await initBackend("wasm", { quiet: true, fused: false });
  assert.equal(fusedInUse(), false);
  Deno.env.set("LORA_FUSED", "off");
  try {
    await initBackend("wasm", { quiet: true });
    assert.equal(fusedInUse(), false);
    Deno.env.set("LORA_FUSED", "sometimes");
    await assert.rejects(() => initBackend("wasm", { quiet: true }), /LORA_FUSED must be off or on; got "sometimes"/);
  } finally {
    Deno.env.delete("LORA_FUSED");
  }
  await initBackend("wasm", { quiet: true });
  assert.equal(fusedInUse(), true);
});

Deno.test("softmax cross-entropy against distributions (the perceptron's loss): loss and gradient match", async () => {
  const logits = normal([6, 10], 12, 5);
  const labels = tf.oneHot(tf.tensor1d([0, 3, 9, 9, 2, 5], "int32"), 10).toFloat() as tf.Tensor2D;
  const smoothed = tf.tidy(() => tf.add(tf.mul(labels, 0.9), 0.01)) as tf.Tensor2D;
  await assertNoLeak(() => {
    for (const [name, t] of [["one-hot", labels], ["smoothed", smoothed]] as const) {
      const { fused, readable } = bothWays(() =>
        valueAndGrads(([z]) => softmaxCrossEntropy(z as tf.Tensor2D, t), [logits], [true])
      );
      compare(`softmax cross-entropy, ${name}`, fused, readable, 2e-6);
    }
  });
  tf.dispose([logits, labels, smoothed]);
});

Deno.test("a Linear layer: one node fused, the same values and gradients as the product and tf.add", async () => {
  const x = normal([2, 5, 12], 13), weight = normal([12, 7], 14), bias = normal([7], 15);
  for (const trainable of [[true, true, true], [false, true, true], [true, false, false]]) {
    await assertNoLeak(() => {
      const { fused, readable } = bothWays(() =>
        valueAndGrads(([x, w, b]) => linear(x, w as tf.Tensor2D, b as tf.Tensor1D), [x, weight, bias], trainable)
      );
      compare(`linear, trainable ${trainable}`, fused, readable, 1e-6);
    });
  }
  tf.dispose([x, weight, bias]);
});

Deno.test({
  name: "a Linear layer with LoRA as one node: values and every gradient match linear(x) + lora(x)",
  ignore: !blas,
  fn: async () => {
    const x = normal([2, 5, 12], 16), weight = normal([12, 7], 17), bias = normal([7], 18);
    const a = normal([12, 3], 19), b = normal([3, 7], 20);
    const readable = ([x, w, a, b, bias]: tf.Tensor[]) =>
      tf.add(
        linear(x, w as tf.Tensor2D, bias as tf.Tensor1D),
        tf.mul(tf.matMul(tf.matMul(tf.reshape(x, [-1, 12]), a), b).reshape([2, 5, 7]), 0.75),
      );
    const fused = ([x, w, a, b, bias]: tf.Tensor[]) =>
      loraLinear(x, w as tf.Tensor2D, bias as tf.Tensor1D, a as tf.Tensor2D, b as tf.Tensor2D, 0.75);
    // [x, W, A, B, b]: LoRA on a frozen base inside a network; the first layer (x is data); everything trainable
    const cases = [[true, false, true, true, false], [false, false, true, true, false], [true, true, true, true, true]];
    for (const trainable of cases) {
      await assertNoLeak(() => {
        const inputs = [x, weight, a, b, bias];
        compare(
          `loraLinear, trainable ${trainable}`,
          valueAndGrads(fused, inputs, trainable),
          valueAndGrads(readable, inputs, trainable),
          1e-5,
        );
      });
    }
    tf.dispose([x, weight, bias, a, b]);
  },
});

Deno.test("Adam's step in the vector loop matches its JavaScript loop, to float32 rounding, moments included", async () => {
  const run = async (fused: boolean) => {
    if (fused) enableFused();
    else disableFused();
    // 1,003 values: not a multiple of four, so the loop's one-at-a-time tail runs too
    const w = tf.variable(normal([1003], 21)), optimizer = adam(0.01);
    for (let step = 0; step < 5; step++) {
      const g = normal([1003], 30 + step, 1 + step);
      optimizer.applyGradients({ [w.name]: g });
      g.dispose();
    }
    const weights = await optimizer.getWeights();
    const result = [w.clone(), ...weights.slice(1).map((n) => n.tensor)];
    weights[0].tensor.dispose();
    optimizer.dispose();
    w.dispose();
    return result;
  };
  const vector = await run(true), loop = await run(false);
  enableFused();
  compare("Adam: weights, m, v", vector, loop, 1e-6);
});
