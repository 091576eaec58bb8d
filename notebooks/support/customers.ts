/**
 * The three customers of notebooks 7 and 8: MNIST changed in one way each, and the recipe notebook 7 trains
 * their adapters with (notebook 8 retrains from it when notebook 7's files are missing, and gets the same
 * adapters, since every step is seeded).
 *
 * @example
 * ```ts
 * import { customerSplit } from "./customers.ts";
 * const digit = { images: new Float32Array(784).fill(0.25), labels: new Uint8Array([3]), count: 1, rows: 28, cols: 28 };
 * console.log(customerSplit(digit, "inverted").images[0], customerSplit(digit, "reversed").labels[0]); // 0.75 6
 * ```
 *
 * @module
 */
import type { MnistSplit } from "../../lib/mod.ts";

/** The customers, in the order notebooks 7 and 8 train and show them. */
export const CUSTOMERS = ["rotated", "inverted", "reversed"] as const;

/** One of {@linkcode CUSTOMERS}. */
export type Customer = (typeof CUSTOMERS)[number];

/**
 * A copy of `split` with each pixel taken from `pixel(image, row, col)` and each label passed through `label`.
 *
 * @example
 * ```ts
 * import { remap } from "./customers.ts";
 * const split = { images: new Float32Array(784), labels: new Uint8Array([1]), count: 1, rows: 28, cols: 28 };
 * console.log(remap(split, () => 1, (d) => d + 1).labels[0]); // 2
 * ```
 */
export function remap(
  split: MnistSplit,
  pixel: (image: Float32Array, row: number, col: number) => number,
  label: (digit: number) => number,
): MnistSplit {
  const size = split.rows * split.cols;
  const images = new Float32Array(split.images.length);
  for (let n = 0; n < split.count; n++) {
    const image = split.images.subarray(n * size, (n + 1) * size);
    for (let r = 0; r < split.rows; r++) {
      for (let c = 0; c < split.cols; c++) images[n * size + r * split.cols + c] = pixel(image, r, c);
    }
  }
  return { ...split, images, labels: split.labels.map(label) };
}

/**
 * MNIST as `customer` sees it:
 *
 * - `"rotated"`: every image turned 90° clockwise (the pixel at row r, column c comes from row 27 − c, column r);
 * - `"inverted"`: every pixel value p becomes 1 − p (white ink on black);
 * - `"reversed"`: the images unchanged, the labels numbered backwards (digit d is class 9 − d).
 *
 * @example
 * ```ts
 * import { customerSplit } from "./customers.ts";
 * const images = new Float32Array(784);
 * images[27] = 1; // top right corner
 * const turned = customerSplit({ images, labels: new Uint8Array([0]), count: 1, rows: 28, cols: 28 }, "rotated");
 * console.log(turned.images[27 * 28 + 27]); // 1: the top right corner turns to the bottom right
 * ```
 */
export function customerSplit(split: MnistSplit, customer: Customer): MnistSplit {
  const width = split.cols;
  switch (customer) {
    case "rotated":
      return remap(split, (image, r, c) => image[(split.rows - 1 - c) * width + r], (d) => d);
    case "inverted":
      return remap(split, (image, r, c) => 1 - image[r * width + c], (d) => d);
    case "reversed":
      return remap(split, (image, r, c) => image[r * width + c], (d) => 9 - d);
  }
}

/**
 * Image `index` of a 28 × 28 split as 14 lines of text, each character the mean brightness of a 2 × 2 block
 * (space, `.`, `:`, `*`, `#` from dark to bright).
 *
 * @example
 * ```ts
 * import { picture } from "./customers.ts";
 * const white = { images: new Float32Array(784).fill(1), labels: new Uint8Array([0]), count: 1, rows: 28, cols: 28 };
 * console.log(picture(white)[0]); // ##############
 * ```
 */
export function picture(split: MnistSplit, index = 0): string[] {
  const shades = " .:*#";
  const start = index * 784;
  return Array.from({ length: 14 }, (_, r) =>
    Array.from({ length: 14 }, (_, c) => {
      const block = [0, 1].flatMap((dr) => [0, 1].map((dc) => split.images[start + (2 * r + dr) * 28 + 2 * c + dc]));
      return shades[Math.min(4, Math.floor((block.reduce((a, b) => a + b) / 4) * 5))];
    }).join(""));
}

/** How notebook 7 trains one customer's adapter. */
export interface AdapterRecipe {
  /** The layers the adapter sits on. */
  targetModules: string[];
  /** Epochs over the customer's 60,000 training images. */
  epochs: number;
  /** Seed of A's random start (`addAdapter` adds 0, 1, 2 for the successive layers). */
  initSeed: number;
  /** Seed of the shuffling order. */
  dataSeed: number;
}

/** Rank, alpha (the tutorial's convention), learning rate and batch size of every customer adapter. */
export const ADAPTER_SETTINGS = { rank: 8, alpha: 4, learningRate: 0.005, batchSize: 64 } as const;

/** Notebook 7's recipe for each customer's adapter. */
export const ADAPTER_RECIPES: Record<Customer, AdapterRecipe> = {
  rotated: { targetModules: ["layers.0", "layers.2", "layers.4"], epochs: 4, initSeed: 123, dataSeed: 123 },
  inverted: { targetModules: ["layers.0", "layers.2", "layers.4"], epochs: 4, initSeed: 133, dataSeed: 124 },
  reversed: { targetModules: ["layers.4"], epochs: 2, initSeed: 143, dataSeed: 125 },
};
