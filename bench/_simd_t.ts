import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/mod.ts";
import { simdLoops } from "../lib/simd.ts";
import { wasmHeap } from "../lib/tfjs_internals.ts";
await initBackend("wasm");
const loops = simdLoops(tf.backend())!;
const heap = wasmHeap(tf.backend())!;
const n = 262144;
const x = tf.randomNormal([n]), v = tf.zeros([n]), d = tf.zeros([n]);
const px = 4 * heap.index(x), pv = 4 * heap.index(v), pd = 4 * heap.index(d);
for (let r = 0; r < 6; r++) {
  let t0 = performance.now();
  for (let i = 0; i < 20; i++) loops.gelu(px, pv, pd, 1, n);
  const a = (performance.now() - t0) / 20;
  t0 = performance.now();
  for (let i = 0; i < 20; i++) loops.gelu(px, pv, pd, 0, n);
  const b = (performance.now() - t0) / 20;
  console.log(`gelu+derivative ${a.toFixed(3)} ms, value only ${b.toFixed(3)} ms`);
}
