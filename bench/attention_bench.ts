/**
 * The fused attention (forward and backward, queries, keys and values all needing gradients) in the vector loops of
 * `lib/simd.wat` against the same kernel with BLAS products, per head shape, on one thread: what
 * `VECTOR_ATTENTION_MAX_VALUES` in `lib/fused_kernels.ts` is chosen from.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/attention_bench.ts
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/mod.ts";
import { enableFused, fusedAttention, fusedAttentionGrad } from "../lib/fused.ts";
import { causalMask } from "../lib/gpt/mod.ts";
import { simdLoops } from "../lib/simd.ts";
import { wasmHeap } from "../lib/tfjs_internals.ts";

await initBackend("wasm+blas");
const loops = simdLoops(tf.backend())!, heap = wasmHeap(tf.backend())!;
const at = (t: tf.Tensor) => 4 * heap.index(t);

/** Both passes in the vector loops, called directly (the kernel would choose BLAS for the larger heads). */
function vector(q: tf.Tensor, mask: tf.Tensor, heads: number): void {
  const [batch, time, width] = q.shape;
  tf.tidy(() => {
    // outputs as the kernels allocate theirs: unwritten
    const empty = (shape: number[]) => tf.engine().makeTensorFromTensorInfo(heap.makeOutput(shape) as tf.TensorInfo);
    const out = empty(q.shape),
      p = empty([batch, heads, time, time]),
      scratch = empty([(width / heads + 2 * time) * Math.ceil(time / 4) * 4]);
    const [dq, dk, dv] = [empty(q.shape), empty(q.shape), empty(q.shape)];
    loops.attention(at(q), at(q), at(q), at(mask), at(out), at(p), at(scratch), batch, time, width, heads, 0.25);
    loops.attention_grad(
      at(q),
      at(q),
      at(q),
      at(q),
      at(p),
      at(dq),
      at(dk),
      at(dv),
      at(scratch),
      batch,
      time,
      width,
      heads,
      0.25,
      1,
    );
  });
}

/** Both passes through the kernels with BLAS products. */
function blas(q: tf.Tensor, mask: tf.Tensor, heads: number): void {
  tf.tidy(() => {
    const { p } = fusedAttention(q, q, q, mask, heads, 0.25);
    fusedAttentionGrad(q, q, q, q, p, heads, 0.25, true);
  });
}

// [sequences, time, heads, size]: the bench's GPT is 64 × 16, 4 × 16; SmolLM2-135M's heads are 64 values
const SHAPES = [
  [128, 8, 4, 16],
  [64, 16, 4, 16],
  [32, 32, 4, 16],
  [16, 64, 4, 16],
  [64, 16, 4, 32],
  [32, 32, 4, 32],
  [64, 16, 9, 64],
  [16, 64, 9, 64],
  [4, 128, 9, 64],
];

enableFused({ simd: false });
console.log("| sequences × time, heads × size | vector loops (ms) | BLAS (ms) | ratio |\n|---|--:|--:|--:|");
for (const [batch, time, heads, size] of SHAPES) {
  const q = tf.randomNormal([batch, time, heads * size]), mask = causalMask(time);
  const ms: number[] = [];
  for (const run of [vector, blas]) {
    for (let i = 0; i < 3; i++) run(q, mask, heads);
    const start = performance.now();
    for (let i = 0; i < 10; i++) run(q, mask, heads);
    ms.push((performance.now() - start) / 10);
  }
  console.log(
    `| ${batch} × ${time}, ${heads} × ${size} | ${ms[0].toFixed(2)} | ${ms[1].toFixed(2)} | ${
      (ms[0] / ms[1]).toFixed(2)
    } |`,
  );
  tf.dispose([q, mask]);
}
enableFused();
