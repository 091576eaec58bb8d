/**
 * The floor under a full-finetuning step on one backend: the eight matrix products of the MLP's forward and
 * backward pass at batch 64, alone, and Adam's update of its 136,074 parameters, alone. No training step can be
 * faster than their sum, whatever else is removed.
 *
 * Each product is timed twice: with a weight operand the backend has seen before, and with a new one every
 * call. The difference matters on wasm, which packs the second operand of a product (XNNPACK) and caches the
 * packed copy per tensor: in full finetuning every weight changes every step, and the backward pass multiplies
 * by freshly transposed tensors, so every product pays for packing.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/floor.ts [wasm|wasm+blas|cpu|webgpu]
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Adam, initBackend } from "../lib/mod.ts";
import { timeCalls } from "./timing.ts";

const backend = await initBackend(Deno.args[0] ?? "wasm", { blas: Deno.args[0] === "wasm+blas" });

/** [rows of a, shared, columns of b, what it is] for one step of the 784-128-256-10 MLP at batch 64. */
const PRODUCTS: [number, number, number, string][] = [
  [64, 784, 128, "forward x·W1"],
  [64, 128, 256, "forward h1·W2"],
  [64, 256, 10, "forward h2·W3"],
  [784, 64, 128, "dW1 = xᵀ·dy1"],
  [128, 64, 256, "dW2 = h1ᵀ·dy2"],
  [256, 64, 10, "dW3 = h2ᵀ·dy3"],
  [64, 10, 256, "dh2 = dy3·W3ᵀ"],
  [64, 256, 128, "dh1 = dy2·W2ᵀ"],
];

const RUNS = 9, CALLS = 50;

/** Median over RUNS of the mean time (ms) of CALLS calls of `f`, after a warm-up. */
const time = (f: () => tf.Tensor | void) => timeCalls(f, { runs: RUNS, calls: CALLS, warmup: 10 });

console.log(`${backend}: one full-finetuning step's matrix products at batch 64, medians of ${RUNS}×${CALLS} calls`);
console.log("| product | shape | known weight ms | GFLOP/s | new weight ms | GFLOP/s |");
console.log("|---|---|--:|--:|--:|--:|");
let known = 0, fresh = 0;
for (const [m, k, n, name] of PRODUCTS) {
  const a = tf.randomNormal([m, k], 0, 1, "float32", 1) as tf.Tensor2D;
  const values = Float32Array.from({ length: k * n }, (_, i) => Math.sin(i));
  const b = tf.tensor2d(values, [k, n]);
  const cached = await time(() => tf.matMul(a, b));
  // A new weight tensor per call; the upload itself is timed separately and subtracted.
  const upload = await time(() => tf.tensor2d(values, [k, n]));
  const withNew = await time(() => {
    const w = tf.tensor2d(values, [k, n]);
    const y = tf.matMul(a, w);
    w.dispose();
    return y;
  }) - upload;
  known += cached;
  fresh += withNew;
  const gflops = (ms: number) => (2 * m * k * n / ms / 1e6).toFixed(1);
  console.log(
    `| ${name} | ${m}×${k}·${k}×${n} | ${cached.toFixed(3)} | ${gflops(cached)} | ${withNew.toFixed(3)} | ` +
      `${gflops(withNew)} |`,
  );
  tf.dispose([a, b]);
}
console.log(`| **sum** | | ${known.toFixed(3)} | | ${fresh.toFixed(3)} | |`);

// Adam's update of every parameter of the MLP, alone.
const shapes = [[784, 128], [128], [128, 256], [256], [256, 10], [10]];
const variables = shapes.map((s) => tf.variable(tf.randomNormal(s, 0, 0.05)));
const grads = variables.map((v) => ({ name: v.name, tensor: tf.randomNormal(v.shape, 0, 0.01) }));
const ours = new Adam(1e-4);
const theirs = tf.train.adam(1e-4, 0.9, 0.999, 1e-8);
const adamMs = await time(() => ours.applyGradients(grads));
const tfAdamMs = await time(() => theirs.applyGradients(grads));
console.log(`\nAdam update of 136,074 parameters: ${adamMs.toFixed(3)} ms (tf.train.adam: ${tfAdamMs.toFixed(3)} ms)`);
console.log(
  `Floor of a full-finetuning step: ${(fresh + adamMs).toFixed(3)} ms of products with new weights plus Adam, ` +
    `so at most ${(1000 / (fresh + adamMs)).toFixed(0)} steps/s (${
      (1000 / fresh).toFixed(0)
    } from the products alone).`,
);
