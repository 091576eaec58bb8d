/**
 * One test per workaround in lib/tfjs_internals.ts: each fails when a TensorFlow.js upgrade changes what the
 * workaround relies on, so the upgrade is noticed here rather than as a slow, noisy or leaking library.
 */
import * as tf from "@tensorflow/tfjs";
import { Adam, initBackend } from "../lib/mod.ts";
import {
  CHECKED_TFJS_VERSION,
  hostMemory,
  releaseAbandonedTape,
  requiresGrad,
  silenceCpuBanner,
  tapeRecording,
  tfSeed,
  wasmHeap,
} from "../lib/tfjs_internals.ts";
import { assert, assertBitIdentical, assertEquals, maxAbsDiff } from "./assert.ts";

await initBackend("wasm");

Deno.test("the installed tfjs is the version the internals were checked on (re-check them all when it moves)", () => {
  assertEquals(tf.version.tfjs, CHECKED_TFJS_VERSION);
});

Deno.test("requiresGrad: trainable variables and what is computed from them, nothing else, only while recording", () => {
  const w = tf.variable(tf.ones([3, 2]));
  const frozen = tf.variable(tf.ones([3, 2]), false);
  const x = tf.ones([4, 3]);
  const seen: boolean[] = [];
  const { value, grads } = tf.variableGrads(() => {
    const h = tf.matMul(x, w);
    const f = tf.matMul(x, frozen);
    seen.push(requiresGrad(x), requiresGrad(h), requiresGrad(f), requiresGrad(tf.relu(h)), requiresGrad(tf.add(f, h)));
    return tf.sum(h) as tf.Scalar;
  }, [w]);
  assertEquals(seen, [false, true, false, true, true]);
  assertEquals([requiresGrad(w), requiresGrad(frozen)], [true, false]);
  assertEquals(requiresGrad(x), false, "outside a gradient nothing is recorded");
  tf.dispose([w, frozen, x, value, ...Object.values(grads)]);
});

Deno.test("tapeRecording: inside tf.grad, not outside it, not inside a custom gradient's forward pass", () => {
  const seen: boolean[] = [tapeRecording()], three = tf.scalar(3);
  const inner = tf.customGrad((x, save) => {
    (save as (t: tf.Tensor[]) => void)([x as tf.Tensor]);
    seen.push(tapeRecording());
    return {
      value: tf.square(x as tf.Tensor),
      gradFunc: (dy: tf.Tensor, [x]: tf.Tensor[]) => tf.mul(dy, tf.mul(x, 2)),
    };
  });
  const dx = tf.grad((x) => {
    seen.push(tapeRecording());
    return inner(x) as tf.Tensor;
  })(three);
  seen.push(tapeRecording());
  assertEquals(seen, [false, true, false, false]);
  assertEquals(dx.dataSync()[0], 6);
  tf.dispose([dx, three]);
});

Deno.test("releaseAbandonedTape frees what an error inside a gradient leaves on tfjs's tape", () => {
  const w = tf.variable(tf.ones([100]));
  const before = tf.memory().numTensors;
  const fail = () =>
    tf.variableGrads(() => {
      tf.exp(w);
      throw new Error("bad batch");
    });
  try {
    fail();
  } catch {
    // without the workaround the tape's saved tensors stay alive
  }
  const leaked = tf.memory().numTensors - before;
  releaseAbandonedTape();
  assertEquals(tf.memory().numTensors - before, 0, "released");
  assert.ok(leaked > 0, "tfjs still leaks here; if it no longer does, the workaround can go");
  w.dispose();
});

Deno.test("silenceCpuBanner: the cpu backend still greets through a firstUse flag, and is marked greeted", () => {
  const cpu = tf.findBackend("cpu") as unknown as { firstUse?: unknown };
  assert.ok(cpu !== null && "firstUse" in cpu, "the cpu backend has no firstUse flag any more");
  silenceCpuBanner();
  assertEquals(cpu.firstUse, false);
});

Deno.test("tfSeed: seed 0 repeats, while tfjs alone treats the number 0 as no seed", () => {
  const draw = (seed: number) => tf.randomNormal([8], 0, 1, "float32", seed);
  const [a, b] = [draw(tfSeed(0)), draw(tfSeed(0))];
  assertBitIdentical(a, b, "seed 0 through tfSeed");
  const [c, d] = [draw(0), draw(0)];
  assert.ok(maxAbsDiff(c, d) > 0, "tfjs now seeds with 0; tfSeed can go");
  const [e, f] = [draw(tfSeed(5)), draw(5)];
  assertBitIdentical(e, f, "any other seed gives tfjs's own numbers");
  tf.dispose([a, b, c, d, e, f]);
});

Deno.test("hostMemory: writable views of the wasm and cpu backends' float32 buffers; null on others", async () => {
  for (const backend of ["wasm", "cpu"]) {
    await tf.setBackend(backend);
    const t = tf.tensor1d([1, 2, 3]);
    const host = hostMemory();
    assert.ok(host !== null, `${backend}: no host memory`);
    const view = host.view(t);
    assertEquals(Array.from(view), [1, 2, 3]);
    view[1] = 7;
    assertEquals(Array.from(await t.data()), [1, 7, 3], `${backend}: writing the view changes the tensor`);
    t.dispose();
  }
  await tf.setBackend("wasm");
});

Deno.test("Adam falls back to tensor kernels where the internals are missing, with the same numbers", () => {
  // A wasm or cpu backend without the methods hostMemory relies on (as after an upgrade that renamed them).
  assertEquals(hostMemory({}, "wasm"), null);
  assertEquals(hostMemory({ data: {} }, "cpu"), null);
  assertEquals(hostMemory(tf.backend(), "webgpu"), null);
  // Adam takes the kernel path whenever it gets no host memory; `fused: false` sends it down that path here.
  const run = (fused: boolean) => {
    const w = tf.variable(tf.tensor2d([[1, -2], [3, 0.5]]));
    const target = tf.tensor2d([[0, 1], [2, 3]]);
    const optimizer = new Adam(0.1, { fused });
    for (let i = 0; i < 5; i++) optimizer.minimize(() => tf.sum(tf.square(tf.sub(w, target))) as tf.Scalar);
    const out = w.dataSync().slice();
    optimizer.dispose();
    tf.dispose([w, target]);
    return out;
  };
  const [fusedRun, kernelRun] = [run(true), run(false)];
  assert.ok(maxAbsDiff(kernelRun, fusedRun) < 1e-6, `kernels ${kernelRun} vs one loop ${fusedRun}`);
  assert.ok(maxAbsDiff(fusedRun, [1, -2, 3, 0.5]) > 0.1, "the steps moved the weights");
});

Deno.test("wasmHeap: tensors' places on the wasm heap, outputs made there, a fresh view after the heap grows", () => {
  const heap = wasmHeap(tf.backend());
  assert.ok(heap !== null, "the wasm backend no longer has HEAPU8, dataIdMap or makeOutput");
  const t = tf.tensor2d([[1, 2], [3, 4]]);
  const i = heap.index(t);
  assertEquals(Array.from(heap.floats().subarray(i, i + 4)), [1, 2, 3, 4]);
  const before = heap.floats();
  const info = heap.makeOutput([2, 2]);
  const big = tf.zeros([64, 1024, 1024]); // 256 MB: the heap grows, and its buffer is replaced
  const floats = heap.floats();
  assert.ok(floats.buffer !== before.buffer, "the heap did not grow; use a larger tensor");
  floats.set([5, 6, 7, 8], heap.index(info));
  const out = tf.engine().makeTensorFromTensorInfo(info as tf.TensorInfo);
  assertEquals(Array.from(out.dataSync()), [5, 6, 7, 8], "written through the new view");
  assertEquals(Array.from(floats.subarray(i, i + 4)), [1, 2, 3, 4], "old tensors are where they were");
  assertEquals(wasmHeap({}), null);
  assertEquals(wasmHeap(tf.findBackend("cpu")!), null);
  tf.dispose([t, big, out]);
});
