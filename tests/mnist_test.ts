import { DataLoader, loadMnist, mnistFromIdx, parseIdx, seededRandom, subset } from "../lib/mod.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";

const fixtures = new URL("../data/fixtures/", import.meta.url);
const fixture = (name: string) => Deno.readFileSync(new URL(name, fixtures));

Deno.test("the real MNIST files: 60,000 + 10,000 images of 28×28, pixels in [0, 1], labels 0–9", async () => {
  const { train, test } = await loadMnist();
  assertEquals([train.count, train.rows, train.cols, test.count], [60_000, 28, 28, 10_000]);
  assertEquals(train.images.length, 60_000 * 784);
  let min = Infinity, max = -Infinity;
  for (const v of test.images) [min, max] = [Math.min(min, v), Math.max(max, v)];
  assertEquals([min, max], [0, 1]);
  const counts = new Array(10).fill(0);
  for (const label of train.labels) counts[label]++;
  // Every digit is present, none dominates: MNIST's classes hold between 9% and 11.3% of the images each.
  assert.ok(counts.every((c) => c > 5_400 && c < 6_800), `label counts ${counts}`);
  assertEquals(Array.from(test.labels.subarray(0, 5)), [7, 2, 1, 0, 4]); // the well-known first test digits
});

Deno.test("a hand-made MNIST folder loads, with pixels scaled by 1/255", async () => {
  const { train, test } = await loadMnist({ dir: new URL("mnist-tiny", fixtures).pathname });
  assertEquals([train.count, test.count], [3, 3]);
  assertEquals(Array.from(train.labels), [0, 1, 2]);
  assertEquals([train.images[10], train.images[11], train.images[784 + 11], train.images[784 + 10]], [1, 0, 1, 0]);
});

Deno.test("corrupt IDX files are clear errors", () => {
  assertThrows(
    () => parseIdx(fixture("truncated-images-idx3-ubyte"), 3, "truncated"),
    Error,
    /truncated: IDX header promises 3 × 28 × 28 = 2352 values but the file holds 1668/,
  );
  assertThrows(
    () => parseIdx(fixture("wrong-magic-labels-idx1-ubyte"), 1, "labels"),
    Error,
    /labels: wrong IDX magic number 0x89504e47; expected 0x00000801/,
  );
  assertThrows(
    () => parseIdx(new Uint8Array([0, 0, 8]), 1, "stub"),
    Error,
    /3 bytes is shorter than its 8-byte header/,
  );
  const images = fixture("mnist-tiny/train-images-idx3-ubyte");
  assertThrows(
    () => mnistFromIdx(images, fixture("bad-label-labels-idx1-ubyte"), "mixed"),
    Error,
    /label 12 at index 1; expected 0–9/,
  );
  assertThrows(
    () => mnistFromIdx(images, new Uint8Array([0, 0, 8, 1, 0, 0, 0, 2, 1, 1]), "short"),
    Error,
    /3 images but 2 labels/,
  );
  // An image file where a label file is expected fails on the magic number (3 dimensions, not 1).
  assertThrows(() => parseIdx(images, 1, "swapped"), Error, /0x00000803; expected 0x00000801/);
});

Deno.test("a missing data folder is an error that names the file", async () => {
  await assertRejects(
    () => loadMnist({ dir: "data/fixtures/no-such-folder" }),
    Deno.errors.NotFound,
    /no-such-folder\/train-images-idx3-ubyte does not exist; expected the four IDX files/,
  );
});

Deno.test("DataLoader: batches cover every example once per epoch, the last one smaller", () => {
  const { images, labels } = {
    images: Float32Array.from({ length: 10 * 784 }, (_, i) => Math.floor(i / 784)),
    labels: Uint8Array.from({ length: 10 }, (_, i) => i),
  };
  const split = { images, labels, count: 10, rows: 28, cols: 28 };
  const loader = new DataLoader(split, { batchSize: 4, shuffle: true, seed: 5 });
  assertEquals(loader.length, 3);
  const epochs = [0, 1].map(() => Array.from(loader));
  for (const batches of epochs) {
    assertEquals(batches.map((b) => b.size), [4, 4, 2]);
    const seen = batches.flatMap((b) => Array.from(b.labels)).sort((a, b) => a - b);
    assertEquals(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // each image travels with its own label
    for (const b of batches) for (let k = 0; k < b.size; k++) assertEquals(b.features[k * 784 + 100], b.labels[k]);
  }
  const order = (batches: { labels: Int32Array }[]) => batches.flatMap((b) => Array.from(b.labels)).join();
  assert.notEqual(order(epochs[0]), order(epochs[1]), "each epoch is shuffled anew");
  const again = new DataLoader(split, { batchSize: 4, shuffle: true, seed: 5 });
  assertEquals([order(Array.from(again)), order(Array.from(again))], epochs.map(order), "same seed, same orders");
  assertEquals(order(Array.from(new DataLoader(split, { batchSize: 4 }))), "0,1,2,3,4,5,6,7,8,9");
  assertThrows(() => new DataLoader(split, { batchSize: 0 }), RangeError, /batchSize must be a positive integer/);
});

Deno.test("seededRandom is repeatable and spread over [0, 1); subset copies a range", () => {
  const a = seededRandom(42), b = seededRandom(42);
  const xs = Array.from({ length: 1000 }, () => a());
  assertEquals(xs.slice(0, 3), [b(), b(), b()]);
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  const split = {
    images: new Float32Array(5 * 4),
    labels: Uint8Array.from([1, 2, 3, 4, 5]),
    count: 5,
    rows: 2,
    cols: 2,
  };
  const part = subset(split, 1, 3);
  assertEquals([part.count, Array.from(part.labels), part.images.length], [2, [2, 3], 8]);
  part.labels[0] = 9;
  assertEquals(split.labels[1], 2, "subset shares no memory");
});
