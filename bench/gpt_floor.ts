/**
 * The floor under one full-finetuning step of the bench's GPT (2 layers, width 64, 4 heads, context 16, batch
 * 64 sequences: 1,024 positions) on one backend, as `floor.ts` measures it for the MLP: the matrix products of
 * the forward and backward pass alone, the transposes wasm needs before its fast products, attention's
 * per-head products alone (the fused attention kernels where they run in vector loops), and Adam's update of the
 * 104,960 parameters alone. No training step can be faster than their sum, whatever else is removed.
 *
 * Every product is timed with a weight operand that is new on every call, as in training: wasm packs the
 * second operand of a product (XNNPACK) and caches it per tensor, and in full finetuning every weight changes
 * every step.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/gpt_floor.ts [wasm|wasm+blas|cpu|webgpu]
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { Adam, GPT, initBackend, trainableVariables } from "../lib/mod.ts";
import { causalMask, channelMatMul } from "../lib/gpt/mod.ts";
import { fusedAttention, fusedAttentionGrad, fusedAttentionInUse, VECTOR_ATTENTION_MAX_VALUES } from "../lib/fused.ts";
import { GPT_BENCH_CONFIG } from "./gpt_bench.ts";
import { blasGemm } from "../lib/blas.ts";
import { timeCalls } from "./timing.ts";

const backend = await initBackend(Deno.args[0] ?? "wasm", { blas: Deno.args[0] === "wasm+blas" });
const N = 64 * GPT_BENCH_CONFIG.blockSize, C = GPT_BENCH_CONFIG.nEmbd, V = GPT_BENCH_CONFIG.vocabSize;
const LAYERS = GPT_BENCH_CONFIG.nLayer;

/** [rows of a, shared, columns of b, what it is, how many per step] */
const PRODUCTS: [number, number, number, string, number][] = [
  [N, C, C, "forward x·W, q/k/v/out_proj", 4 * LAYERS],
  [N, C, 4 * C, "forward x·W, fc1", LAYERS],
  [N, 4 * C, C, "forward x·W, fc2", LAYERS],
  [N, C, V, "forward x·W, lm_head", 1],
  [C, N, C, "dW = xᵀ·dy, q/k/v/out_proj", 4 * LAYERS],
  [C, N, 4 * C, "dW = xᵀ·dy, fc1", LAYERS],
  [4 * C, N, C, "dW = xᵀ·dy, fc2", LAYERS],
  [C, N, V, "dW = xᵀ·dy, lm_head", 1],
  [N, C, C, "dx = dy·Wᵀ, q/k/v/out_proj", 4 * LAYERS],
  [N, 4 * C, C, "dx = dy·Wᵀ, fc1", LAYERS],
  [N, C, 4 * C, "dx = dy·Wᵀ, fc2", LAYERS],
  [N, V, C, "dx = dy·Wᵀ, lm_head", 1],
  [V, N, C, "embedding gradient onehotᵀ·dy", 1],
];

const RUNS = 9, CALLS = 20;

/** Median over RUNS of the mean time (ms) of CALLS calls of `f`, after a warm-up. */
const time = (f: () => tf.Tensor | void) => timeCalls(f, { runs: RUNS, calls: CALLS, warmup: 5 });

/** Time of `f(fresh)` minus the upload of a fresh tensor of `values`, so only the work on it counts. */
async function withFresh(values: Float32Array, shape: number[], f: (t: tf.Tensor) => tf.Tensor): Promise<number> {
  const upload = await time(() => tf.tensor(values, shape));
  return await time(() => {
    const t = tf.tensor(values, shape);
    const y = f(t);
    t.dispose();
    return y;
  }) - upload;
}

const load = (() => {
  try {
    return Deno.loadavg()[0].toFixed(2);
  } catch {
    return "?";
  }
})();
console.log(`${backend}: one full-finetuning step of the GPT (${N} positions), medians of ${RUNS}×${CALLS} calls`);
console.log(`1-minute load average at the start: ${load}`);
console.log("| part | shape | per step | ms each | GFLOP/s | ms per step |");
console.log("|---|---|--:|--:|--:|--:|");
let total = 0;
const row = (part: string, shape: string, count: number, ms: number, flops: number) => {
  total += count * ms;
  const gflops = flops > 0 ? (flops / ms / 1e6).toFixed(1) : "";
  console.log(`| ${part} | ${shape} | ${count} | ${ms.toFixed(3)} | ${gflops} | ${(count * ms).toFixed(2)} |`);
};
for (const [m, k, n, name, count] of PRODUCTS) {
  const a = tf.randomNormal([m, k], 0, 1, "float32", 1);
  const values = Float32Array.from({ length: k * n }, (_, i) => Math.sin(i));
  row(name, `${m}×${k}·${k}×${n}`, count, await withFresh(values, [k, n], (w) => tf.matMul(a, w)), 2 * m * k * n);
  a.dispose();
}
// wasm multiplies a transposed operand ~15× slower, so the backward pass transposes explicitly: the input of
// every weight gradient (x, [N, in]) and every weight (W, [in, out]). With BLAS a transpose is a flag of the
// product and costs nothing, so there are none.
const blas = backend === "wasm+blas";
const transposes: [number, number, string, number][] = [
  [N, C, "xᵀ of q/k/v/out_proj, fc1, lm_head", 6 * LAYERS + 1],
  [N, 4 * C, "xᵀ of fc2", LAYERS],
  [C, C, "Wᵀ of q/k/v/out_proj", 4 * LAYERS],
  [C, 4 * C, "Wᵀ of fc1, fc2", 2 * LAYERS],
];
for (const [r, c, name, count] of blas ? [] : transposes) {
  const values = Float32Array.from({ length: r * c }, (_, i) => Math.cos(i));
  row(`transpose ${name}`, `${r}×${c}`, count, await withFresh(values, [r, c], (t) => tf.transpose(t)), 0);
}
// Attention's per-head products: 2 forward, 4 backward per layer, as the step runs them. In the fused attention's
// vector loops (lib/fused_kernels.ts: on wasm, and with BLAS for heads up to VECTOR_ATTENTION_MAX_VALUES), timed
// whole, forward and backward with the softmax, since the loops' products cannot be called alone; with BLAS for
// larger heads, one cblas_sgemm per head and sequence (softmax not counted); with LORA_FUSED=off, as the depthwise
// convolutions of the readable path (lib/gpt/ops.ts).
const T = GPT_BENCH_CONFIG.blockSize, heads = GPT_BENCH_CONFIG.nHead, D = C / heads, channels = 64 * heads;
const flops = 2 * channels * T * D * T;
if (fusedAttentionInUse(D) && (!blas || T * D <= VECTOR_ATTENTION_MAX_VALUES)) {
  const q = tf.randomNormal([64, T, C], 0, 1, "float32", 3), mask = causalMask(T), dy = tf.onesLike(q);
  const both = await time(() =>
    tf.tidy(() => {
      const { p } = fusedAttention(q, q, q, mask, heads, 1 / Math.sqrt(D));
      fusedAttentionGrad(dy, q, q, q, p, heads, 1 / Math.sqrt(D), true);
    })
  );
  row(`attention, vector loops, forward + backward (softmax included)`, `${channels}×${T}×${D}`, LAYERS, both, 0);
  tf.dispose([q, mask, dy]);
} else if (blas) {
  const gemm = blasGemm()!, qkv = Float32Array.from({ length: N * C }, (_, i) => Math.sin(i));
  const scores = new Float32Array(T * T);
  const perHead = await time(() => {
    for (let b = 0; b < 64; b++) {
      for (let h = 0; h < heads; h++) {
        gemm(
          false,
          true,
          T,
          T,
          D,
          1,
          qkv.subarray(b * T * C + h * D),
          C,
          qkv.subarray(b * T * C + h * D),
          C,
          0,
          scores,
          T,
        );
      }
    }
  });
  row(
    "attention per-head products (cblas_sgemm each)",
    `${channels}×(${T}×${D}·${D}×${T})`,
    6 * LAYERS,
    perHead,
    flops,
  );
} else {
  const left = tf.randomNormal([T, D, channels], 0, 1, "float32", 2);
  const rightValues = Float32Array.from({ length: D * channels * T }, (_, i) => Math.sin(i));
  const attention = await withFresh(rightValues, [D, channels, T], (b) => channelMatMul(left, b));
  row("attention per-head product (depthwise conv)", `${channels}×(${T}×${D}·${D}×${T})`, 6 * LAYERS, attention, flops);
  left.dispose();
}
// Adam's update of every parameter, alone.
const gpt = new GPT(GPT_BENCH_CONFIG, { seed: 1 });
const variables = trainableVariables(gpt);
const grads = variables.map((v) => ({ name: v.name, tensor: tf.randomNormal(v.shape, 0, 0.01) }));
const optimizer = new Adam(1e-4);
const parameters = variables.reduce((n, v) => n + v.size, 0);
row(
  `Adam update of ${parameters.toLocaleString("en-US")} parameters`,
  "",
  1,
  await time(() => optimizer.applyGradients(grads)),
  0,
);
console.log(`| **sum** | | | | | **${total.toFixed(2)}** |`);
console.log(
  `\nFloor of a full-finetuning step: ${total.toFixed(2)} ms, so at most ${(1000 * N / total).toFixed(0)} ` +
    `training tokens/s (${N} positions per step) before any other kernel (LayerNorm, GELU, bias, residual, loss, and softmax where attention is not timed whole).`,
);
