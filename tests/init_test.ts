import * as tf from "@tensorflow/tfjs";
import {
  adapterFromFiles,
  adapterToFiles,
  addLoRA,
  bestRankR,
  createLoRALayer,
  DoRALayer,
  initBackend,
  Linear,
  LinearWithAdapters,
  LinearWithLoRA,
  type LoRAInit,
  LoRALayer,
  loraLayers,
  pissaInit,
  toMatrix,
} from "../lib/mod.ts";
import { tfSeed } from "../lib/tfjs_internals.ts";
import { assert, assertBitIdentical, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";
import { assertUnchanged, input, mlp, small, snapshot } from "./fixtures.ts";

await initBackend();

/** Unit roundoff of float32 (round to nearest). */
const U = 2 ** -24;
/** The classic bound on the rounding error of a sum of n products: γ_n = n·u / (1 − n·u). */
const gamma = (n: number) => n * U / (1 - n * U);

function stats(values: ArrayLike<number>): { mean: number; std: number; maxAbs: number } {
  const a = Array.from(values);
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  return { mean, std, maxAbs: Math.max(...a.map(Math.abs)) };
}

// Random starts ------------------------------------------------------------------------------------------------

Deno.test("the tutorial's start stays the default: the same A, bit for bit, as N(0, 1/rank) with the seed", () => {
  for (const seed of [0, 7, 123]) {
    const implicit = new LoRALayer(50, 30, 4, 8, { seed });
    const explicit = new LoRALayer(50, 30, 4, 8, { seed, init: "tutorial" });
    const expected = tf.randomNormal([50, 4], 0, 1 / Math.sqrt(4), "float32", tfSeed(seed));
    assertBitIdentical(implicit.A, expected, `seed ${seed}, no init given`);
    assertBitIdentical(explicit.A, expected, `seed ${seed}, init "tutorial"`);
    assertEquals(implicit.init, "tutorial");
    tf.dispose(expected);
    implicit.dispose();
    explicit.dispose();
  }
});

Deno.test("PEFT's starts: kaiming A uniform in ±1/sqrt(in), gaussian A with std 1/rank; B zero in both", () => {
  // 784·16 = 12,544 draws: the sample standard deviation is within 1/sqrt(2n) ≈ 0.6% of the true one (one
  // standard error), so 3% is five standard errors.
  const [inDim, rank] = [784, 16];
  const kaiming = new LoRALayer(inDim, 128, rank, 8, { init: "kaiming", seed: 3 });
  const gaussian = new LoRALayer(inDim, 128, rank, 8, { init: "gaussian", seed: 3 });
  const bound = 1 / Math.sqrt(inDim);
  const k = stats(kaiming.A.dataSync());
  assert.ok(k.maxAbs <= bound, `kaiming: max |A| ${k.maxAbs} > ${bound}`);
  assert.ok(k.maxAbs > 0.99 * bound, "kaiming fills the interval");
  assert.ok(Math.abs(k.std / (bound / Math.sqrt(3)) - 1) < 0.03, `kaiming std ${k.std}`);
  const g = stats(gaussian.A.dataSync());
  assert.ok(Math.abs(g.std / (1 / rank) - 1) < 0.03, `gaussian std ${g.std}, expected 1/${rank}`);
  assert.ok(Math.abs(g.mean) < 4 * (1 / rank) / Math.sqrt(inDim * rank), `gaussian mean ${g.mean}`);
  for (const lora of [kaiming, gaussian]) assertEquals(Array.from(new Set(lora.B.dataSync())), [0]);
  assertEquals([kaiming.init, gaussian.init], ["kaiming", "gaussian"]);
  kaiming.dispose();
  gaussian.dispose();
});

Deno.test("addLoRA passes init to every layer: kaiming bounds follow each layer's input width", () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8, init: "kaiming", seed: 1 });
  for (const [name, layer] of loraLayers(model)) {
    const { maxAbs } = stats(layer.lora.A.dataSync());
    assert.ok(maxAbs <= 1 / Math.sqrt(layer.linear.inFeatures), name);
    assert.ok(maxAbs > 0.9 / Math.sqrt(layer.linear.inFeatures), name);
    assertEquals(layer.lora.init, "kaiming");
  }
  model.dispose();
});

Deno.test("bad starts are clear errors: PiSSA without a base layer, an unknown name, a zero scaling", async () => {
  await assertNoLeak(() => {
    assertThrows(
      () => new LoRALayer(6, 4, 2, 2, { init: "pissa" }),
      RangeError,
      /needs? .*base weight|createLoRALayer/,
    );
    assertThrows(
      () => new LoRALayer(6, 4, 2, 2, { init: "olora" as LoRAInit }),
      RangeError,
      /Unknown LoRA init "olora"/,
    );
  });
  const linear = new Linear(6, 4, { seed: 1 });
  const before = linear.weight.dataSync().slice();
  await assertNoLeak(() =>
    assertThrows(() => createLoRALayer(linear, 2, 0, { init: "pissa" }), RangeError, /got scaling 0/)
  );
  assertEquals(linear.weight.dataSync(), before);
  linear.dispose();
});

// PiSSA ----------------------------------------------------------------------------------------------------------

/**
 * A bound on |y_PiSSA − y_base| for each output: with `W_res = fl(W − D)`, `D = fl(s·A·B)`, the two outputs differ
 * by the rounding of the subtraction (u·|W_res|), of D against s·A·B (γ_{r+1}·|s|·|A|·|B|), and of the three
 * products and four additions that compute them: γ_{in+r+2} times the sums of absolute terms of each, and
 * u per addition on the result. Every term doubled for safety.
 */
function pissaBound(x: tf.Tensor2D, w: tf.Tensor2D, res: tf.Tensor2D, lora: LoRALayer, y: tf.Tensor, bias: tf.Tensor) {
  return tf.tidy(() => {
    const g = gamma(lora.inDim + lora.rank + 2);
    const ax = tf.abs(x);
    const viaW = tf.matMul(ax, tf.add(tf.abs(w), tf.abs(res)));
    const viaAB = tf.mul(tf.matMul(tf.matMul(ax, tf.abs(lora.A)), tf.abs(lora.B)), Math.abs(lora.scaling));
    const sums = tf.add(tf.mul(viaW, g + U), tf.mul(viaAB, 2 * g));
    return tf.mul(tf.add(sums, tf.mul(tf.add(tf.abs(y), tf.abs(bias)), 4 * U)), 2);
  });
}

Deno.test("PiSSA leaves outputs unchanged at the start, within the rounding bound; residual + s·A·B = W", () => {
  // Shapes wide and tall, ranks up to min(in, out), the three scaling conventions, and a negative alpha.
  const cases: [number, number, number, number, "tutorial" | "paper" | "rslora"][] = [
    [40, 24, 4, 8, "tutorial"],
    [24, 40, 24, 2, "paper"],
    [784, 128, 8, 16, "rslora"],
    [30, 10, 3, -2, "tutorial"],
  ];
  for (const [inDim, outDim, rank, alpha, scaling] of cases) {
    const what = `${inDim}→${outDim}, rank ${rank}, alpha ${alpha} (${scaling})`;
    const linear = new Linear(inDim, outDim, { seed: 5 });
    const w = tf.clone(linear.weight) as tf.Tensor2D;
    const x = input(9, inDim);
    const y = linear.apply(x);
    const layer = new LinearWithLoRA(linear, rank, alpha, { init: "pissa", scaling });
    assertEquals(layer.lora.init, "pissa");
    const yp = layer.apply(x);
    const bound = pissaBound(x, w, linear.weight, layer.lora, y, linear.bias!);
    const [err, lim] = [tf.abs(tf.sub(yp, y)).dataSync(), bound.dataSync()];
    let worst = 0;
    err.forEach((e, i) => {
      assert.ok(e <= lim[i], `${what}: output ${i} moved by ${e} > ${lim[i]}`);
      worst = Math.max(worst, e / lim[i]);
    });
    // The residual plus the update gives W back within one rounding of each of − and +: 2^-23·(|W| + |s·A·B|).
    const delta = layer.lora.deltaWeight();
    const back = tf.add(linear.weight, delta);
    const [wv, dv, bv] = [w.dataSync(), delta.dataSync(), back.dataSync()];
    let worstW = 0;
    wv.forEach((wi, i) => {
      const limit = 2 * U * (Math.abs(wi) + Math.abs(dv[i])) * (1 + 2 ** -20);
      assert.ok(Math.abs(bv[i] - wi) <= limit, `${what}: W element ${i}`);
      worstW = Math.max(worstW, Math.abs(bv[i] - wi) / limit);
    });
    // And s·A·B is W's best rank-r part (Eckart–Young), to float32 precision.
    const best = bestRankR(toMatrix(w), rank).flat();
    const scale = Math.max(...wv.map(Math.abs));
    const offBest = Math.max(...best.map((b, i) => Math.abs(b - dv[i])));
    assert.ok(offBest < 1e-5 * scale, `${what}: s·A·B is ${offBest} from the best rank-${rank} approximation`);
    console.log(`${what}: worst output error / bound ${worst.toFixed(4)}, W error / bound ${worstW.toFixed(3)}`);
    tf.dispose([w, x, y, yp, bound, delta, back]);
    layer.dispose();
  }
});

Deno.test("PiSSA with a rank above min(in, out): a clear error, every weight of the model as it was, no leak", async () => {
  const model = mlp();
  const before = snapshot(model);
  // layers.0 (784×128) and layers.2 (128×256) are decomposed before layers.4 (256×10) refuses rank 16.
  await assertNoLeak(() =>
    assertThrows(
      () => addLoRA(model, { rank: 16, alpha: 8, init: "pissa" }),
      RangeError,
      /rank must be an integer from 1 to min\(in, out\) = 10 for a 256×10 layer; got 16/,
    )
  );
  assertUnchanged(model, before);
  assert.ok(model.layers[0] instanceof Linear);
  model.dispose();
});

Deno.test("DoRA on PiSSA: the magnitude starts at ‖residual + s·A·B‖, so the factor m / norm is exactly 1", () => {
  const x = input(5, 20);
  const [a, b] = [small(2), small(2)];
  addLoRA(a, { rank: 3, alpha: 2, init: "pissa" });
  addLoRA(b, { rank: 3, alpha: 2, init: "pissa", useDora: true });
  for (const [name, layer] of loraLayers(b)) {
    const dora = layer.lora;
    assert.ok(dora instanceof DoRALayer, name);
    const factor = dora.factor(layer.linear.weight);
    assertEquals(Array.from(new Set(factor.dataSync())), [1], name);
    factor.dispose();
  }
  // DoRA adds the bias after the update, LoRA before it: the same three terms summed in another order, so
  // the outputs agree to a few float32 roundings of values of order 1.
  const [ya, yb] = [a.apply(x), b.apply(x)];
  assertClose(yb, ya, 1e-6, "DoRA + PiSSA against LoRA + PiSSA");
  tf.dispose([x, ya, yb]);
  a.dispose();
  b.dispose();
});

Deno.test('a PiSSA adapter file records init_lora_weights "pissa"; loading redoes the residual on the base', async () => {
  for (const useDora of [false, true]) {
    const base = mlp(4);
    const tuned = addLoRA(base.clone(), { rank: 4, alpha: 8, init: "pissa", useDora });
    // Training moves A and B away from their start.
    for (const [, layer] of loraLayers(tuned)) {
      tf.tidy(() =>
        layer.lora.B.assign(tf.mul(layer.lora.B, tf.randomUniform(layer.lora.B.shape, 0.5, 1.5, "float32", 3)))
      );
    }
    const files = await adapterToFiles(tuned);
    assertEquals(JSON.parse(files.config).init_lora_weights, "pissa");
    adapterFromFiles(base, files);
    const x = input(6, 784);
    const [a, b] = [tuned.apply(x), base.apply(x)];
    assertBitIdentical(b, a, `loaded on the original base (DoRA: ${useDora})`);
    // A model that already has adapters cannot take it: its base weight would change under them.
    const busy = addLoRA(mlp(4), { rank: 2, alpha: 2 });
    const before = snapshot(busy);
    assertThrows(
      () => adapterFromFiles(busy, files, "pissa"),
      Error,
      /layers\.0 already has adapters.*PiSSA replaces its base weight/,
    );
    assertUnchanged(busy, before);
    tf.dispose([x, a, b]);
    for (const model of [base, tuned, busy]) model.dispose();
  }
});

Deno.test("pissaInit on its own: the factors, the changed weight, and a mismatched layer refused", () => {
  const linear = new Linear(12, 8, { seed: 1 });
  const lora = new LoRALayer(12, 8, 2, 3, { scaling: "paper" });
  pissaInit(linear, lora);
  // A = U_r·sqrt(σ/s), so Aᵀ·A = diag(σ_r)/s: orthogonal columns.
  const ata = tf.tidy(() => tf.matMul(tf.transpose(lora.A), lora.A).arraySync() as number[][]);
  assert.ok(Math.abs(ata[0][1]) < 1e-5 * Math.abs(ata[0][0]), "columns of A are orthogonal");
  assert.ok(ata[0][0] >= ata[1][1], "the largest singular value first");
  assertThrows(
    () => pissaInit(linear, new LoRALayer(8, 12, 2, 3)),
    RangeError,
    /a 8→12 LoRA update cannot start from a 12→8/,
  );
  const wrapped = new LinearWithAdapters(new Linear(12, 8, { seed: 1 }), 2, 3, { init: "pissa", scaling: "paper" });
  assertBitIdentical(wrapped.linear.weight, linear.weight, "the PEFT layer starts the same way");
  linear.dispose();
  lora.dispose();
  wrapped.dispose();
});
