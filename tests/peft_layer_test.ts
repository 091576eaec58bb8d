import * as tf from "@tensorflow/tfjs";
import { addLoRA, initBackend, Linear, LinearWithAdapters, mergeAdapter, unmergeAdapter } from "../lib/mod.ts";
import { assert, assertClose, assertEquals, assertNoLeak, assertThrows, maxAbsDiff } from "./assert.ts";

import { input, mlp, randomize, snapshot } from "./fixtures.ts";

await initBackend();

// Merge and unmerge ----------------------------------------------------------------------------------------

Deno.test("merge/unmerge round trip: every element of W within 2^-24·(|W| + |W+ΔW|) of where it started", () => {
  const layer = new LinearWithAdapters(new Linear(784, 128, { seed: 1 }), 8, 16, { seed: 3 });
  tf.tidy(() => layer.lora.B.assign(tf.randomNormal([8, 128], 0, 0.05, "float32", 2)));
  const w = layer.linear.weight.dataSync().slice();
  const delta = layer.lora.deltaWeight();
  const d = delta.dataSync();
  delta.dispose();
  layer.merge();
  layer.unmerge();
  const back = layer.linear.weight.dataSync();
  // One rounding in W + ΔW, one in (W + ΔW) − ΔW: each at most half an ulp, i.e. 2^-24 of the magnitude.
  let worst = 0, changed = 0;
  for (let i = 0; i < w.length; i++) {
    const bound = 2 ** -24 * (Math.abs(w[i]) + Math.abs(w[i] + d[i])) * (1 + 2 ** -20);
    const error = Math.abs(back[i] - w[i]);
    assert.ok(error <= bound, `element ${i}: |${back[i]} − ${w[i]}| = ${error} > ${bound}`);
    worst = Math.max(worst, error / bound);
    if (error > 0) changed++;
  }
  console.log(`round trip: ${changed} of ${w.length} elements moved; worst error / bound = ${worst.toFixed(3)}`);
  assert.ok(Math.max(...d.map(Math.abs)) > 0.1, "ΔW should be large enough to matter");
  layer.dispose();
});

Deno.test("merging twice, unmerging an unmerged layer, and merging a missing adapter are errors", () => {
  const layer = new LinearWithAdapters(new Linear(6, 4, { seed: 1 }), 2, 2);
  assertThrows(() => layer.unmerge(), Error, /not merged; nothing to unmerge/);
  layer.merge();
  assertThrows(() => layer.merge(), Error, /adapter "default" of this layer is already merged/);
  assertThrows(() => layer.merge("other"), Error, /no adapter named "other"; this layer has "default"/);
  layer.unmerge();
  assertThrows(() => layer.unmerge(), Error, /not merged/);
  layer.dispose();
});

Deno.test("merging two named adapters adds both; unmerge takes both out", async () => {
  await assertNoLeak(() => {
    const layer = new LinearWithAdapters(new Linear(12, 6, { seed: 1 }), 2, 2);
    const other = layer.addAdapter("other", 3, 1.5, { seed: 4 });
    tf.tidy(() => {
      layer.lora.B.assign(tf.randomNormal([2, 6], 0, 0.3, "float32", 2));
      other.B.assign(tf.randomNormal([3, 6], 0, 0.3, "float32", 3));
    });
    const x = input(4, 12);
    const expected = tf.tidy(() => tf.add(tf.add(layer.linear.apply(x), layer.lora.apply(x)), other.apply(x)));
    const w = layer.linear.weight.dataSync().slice();
    layer.merge();
    layer.merge("other");
    assertEquals(layer.mergedAdapters, ["default", "other"]);
    const merged = layer.apply(x);
    assertClose(merged, expected, 1e-5, "W + ΔW_default + ΔW_other");
    layer.unmerge();
    assertEquals(layer.mergedAdapters, []);
    assert.ok(maxAbsDiff(layer.linear.weight.dataSync(), w) < 1e-6);
    tf.dispose([x, expected, merged]);
    layer.dispose();
  });
});

Deno.test("mergeAdapter / unmergeAdapter on a whole model: merged output equals the unmerged one within 1e-5", () => {
  const model = addLoRA(mlp(), { rank: 4, alpha: 8, seed: 1 });
  randomize(model, "default", 10);
  const x = input(16, 784);
  const before = snapshot(model);
  const unmerged = model.apply(x);
  mergeAdapter(model);
  assertThrows(() => mergeAdapter(model), Error, /adapter "default" of layers.0 is already merged/);
  const merged = model.apply(x);
  assertClose(merged, unmerged, 1e-5, "merged model");
  unmergeAdapter(model);
  assertThrows(() => unmergeAdapter(model), Error, /no adapter is merged/);
  for (const [name, values] of snapshot(model)) assert.ok(maxAbsDiff(values, before.get(name)!) < 1e-6, name);
  tf.dispose([x, unmerged, merged]);
  model.dispose();
});

Deno.test("clone copies every adapter and its state into new variables", () => {
  const layer = new LinearWithAdapters(new Linear(6, 4, { seed: 1 }), 2, 2);
  layer.addAdapter("b", 1, 3);
  layer.setAdapter("b");
  const copy = layer.clone();
  assert.ok(copy instanceof LinearWithAdapters);
  assertEquals([...copy.adapters.keys()], ["default", "b"]);
  assertEquals(copy.activeAdapter, "b");
  assert.notEqual(copy.adapters.get("b")!.A, layer.adapters.get("b")!.A);
  assertEquals(copy.adapters.get("b")!.A.dataSync(), layer.adapters.get("b")!.A.dataSync());
  assertEquals(copy.adapters.get("default")!.A.trainable, false);
  layer.dispose();
  assertEquals(copy.lora.A.isDisposed, false);
  copy.dispose();
});
