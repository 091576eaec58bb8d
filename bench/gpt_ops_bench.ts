/**
 * Micro-benchmarks behind the choices in `lib/gpt/ops.ts`, each against the TensorFlow.js operation it replaces,
 * at the shapes of the bench's GPT (batch 64 × 16 positions, width 64, 4 heads): attention's per-head products,
 * the embedding lookup, sums over rows, and (where the fused kernels run) the cross-entropy's vector loops against
 * its JavaScript loop. `deno bench` reports the time per call and the ratio to the
 * baseline of each group. Every call gets fresh input tensors, as in training, where wasm cannot reuse the
 * packed copy of an operand it has seen before. On the backend `LORA_BACKEND` names (default wasm).
 *
 *     deno bench --allow-read --allow-env bench/gpt_ops_bench.ts
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/mod.ts";
import { channelMatMul, embeddingLookup, sumRows } from "../lib/gpt/mod.ts";
import { enableFused, fusedCrossEntropy, fusedInUse } from "../lib/fused.ts";

await initBackend();

const values = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i));

/** Runs `f` on fresh tensors of the given shapes and frees everything. */
function fresh(shapes: number[][], f: (...inputs: tf.Tensor[]) => tf.Tensor): () => void {
  const data = shapes.map((shape) => values(shape.reduce((a, b) => a * b, 1)));
  return () => {
    const inputs = shapes.map((shape, i) => tf.tensor(data[i], shape));
    tf.dispose([f(...inputs), ...inputs]);
  };
}

// q·kᵀ for 64 sequences × 4 heads of 16×16 matrices: a batched product, and the same sums as a depthwise
// convolution (channelMatMul). Layouts differ; each takes its operands as it needs them.
Deno.bench("tf.matMul, batched [256, 16, 16]·[256, 16, 16]", {
  group: "attention's per-head products",
  baseline: true,
}, fresh([[256, 16, 16], [256, 16, 16]], (a, b) => tf.matMul(a, b)));
Deno.bench(
  "channelMatMul (depthwise convolution)",
  { group: "attention's per-head products" },
  fresh([[16, 16, 256], [16, 256, 16]], (a, b) => channelMatMul(a, b)),
);

const ids = tf.tensor2d(Int32Array.from({ length: 1024 }, (_, i) => (i * 7) % 30), [64, 16], "int32");
Deno.bench(
  "tf.gather",
  { group: "embedding lookup, 1,024 ids in a 30×64 table", baseline: true },
  fresh([[30, 64]], (w) => tf.gather(w, ids)),
);
Deno.bench(
  "embeddingLookup (one-hot product)",
  { group: "embedding lookup, 1,024 ids in a 30×64 table" },
  fresh([[30, 64]], (w) => embeddingLookup(w as tf.Tensor2D, ids)),
);

for (const width of [64, 256]) {
  const group = `sum over 1,024 rows of ${width}`;
  Deno.bench("tf.sum(x, 0)", { group, baseline: true }, fresh([[1024, width]], (x) => tf.sum(x, 0)));
  Deno.bench("ones·x", { group }, fresh([[1024, width]], (x) => tf.matMul(tf.ones([1, 1024]), x)));
  Deno.bench("sumRows (average pool)", { group }, fresh([[1024, width]], (x) => sumRows(x as tf.Tensor2D)));
}

// The fused sequence cross-entropy with its gradient (lib/fused.ts, on wasm): its softmax rows in the vector loops
// of simd.wat against its JavaScript loop, at the GPT's shape and at a vocabulary of SmolLM2-135M's size.
if (fusedInUse()) {
  for (const [rows, vocab] of [[1024, 30], [256, 49152]]) {
    const group = `sequence cross-entropy and its gradient, ${rows} × ${vocab.toLocaleString("en-US")}`;
    const logits = tf.tensor(values(rows * vocab), [rows, vocab]);
    const targets = tf.tensor1d(Int32Array.from({ length: rows }, (_, i) => (i * 7) % vocab), "int32");
    const run = (simd: boolean) => () => {
      enableFused({ simd });
      const { loss, grad } = fusedCrossEntropy(logits, targets, true);
      tf.dispose([loss, grad!]);
      enableFused();
    };
    Deno.bench("JavaScript loop", { group, baseline: true }, run(false));
    Deno.bench("vector loops (softmax_rows)", { group }, run(true));
  }
}
