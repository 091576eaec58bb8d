/**
 * What quantizing the frozen base costs and saves: bytes of the base (float32, int8 per row, NF4, NF4 with
 * double quantization), the reconstruction error of the quantized weights, and the forward time of a quantized
 * layer against the float32 one, for the tutorial's perceptron (784-128-256-10) and the tiny GPT, both at their
 * random initialisation (the perceptron's is PyTorch's uniform one, the GPT's GPT-2's normal one). The layers
 * quantized are the ones `quantizeModel` picks by default: every linear layer but the GPT's `lm_head`. Last, a
 * whole LoRA training step (rank 4 on the perceptron's three layers, Adam, batch 64) on each base: QLoRA's
 * time cost, since a quantized layer dequantizes its weight on every forward pass. And what it costs in quality on
 * the GPT: a base pretrained briefly on English words, then LoRA (rank 8 on `q_proj`, `v_proj`) trained on female
 * first names on top of each base, with its validation loss on held-out names.
 *
 *     deno run --allow-read --allow-env --allow-sys=loadavg bench/quant_bench.ts
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  Adam,
  addLoRA,
  evaluateLoss,
  getModule,
  initBackend,
  languageModelStep,
  Linear,
  loadNames,
  loadWords,
  type Module,
  MultilayerPerceptron,
  splitWords,
  TokenLoader,
  trainableVariables,
  trainStep,
  wordWindows,
} from "../lib/mod.ts";
import { GPT } from "../lib/gpt/model.ts";
import { findTargets } from "../lib/peft/targets.ts";
import { QuantizedLinear, quantizeModel, type QuantizeSpec } from "../lib/quant.ts";
import { timeCalls } from "./timing.ts";

const backend = await initBackend();

const SPECS: [string, QuantizeSpec | null][] = [
  ["float32", null],
  ["int8 (per row)", { bits: 8 }],
  ["NF4 (blocks of 64)", { bits: 4 }],
  ["NF4 + double quant", { bits: 4, doubleQuant: true }],
];

const models: [string, () => Module][] = [
  ["MLP 784-128-256-10", () => new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 })],
  [
    "GPT (2 layers, width 64)",
    () => new GPT({ vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 }, { seed: 1 }),
  ],
];

const pad = (s: string | number, n: number) => String(s).padStart(n);
const kib = (bytes: number) => `${(bytes / 1024).toFixed(1)} KiB`;

console.log(`backend ${backend}, load average ${Deno.loadavg().map((v) => v.toFixed(2)).join(" ")}\n`);
console.log(
  `${"model".padEnd(26)}${"base as".padEnd(20)}${pad("quantized weights", 20)}${pad("whole model", 14)}` +
    `${pad("vs float32", 12)}${pad("max |W−Ŵ|", 12)}${pad("‖W−Ŵ‖/‖W‖", 12)}`,
);
for (const [label, build] of models) {
  const model = build();
  const targets = findTargets(model, { targetModules: "all-linear" }, "quant_bench");
  const allBytes = 4 * model.namedParameters().reduce((n, p) => n + p.variable.size, 0);
  const targetWeights = targets.map((name) => getModule(model, name) as Linear);
  const floatBytes = targetWeights.reduce((n, l) => n + 4 * l.weight.size, 0);
  const rest = allBytes - floatBytes; // biases, embeddings, LayerNorms and lm_head stay float32
  let reference = 0;
  for (const [name, spec] of SPECS) {
    let weightBytes = 0, maxError = 0, errorSq = 0, normSq = 0;
    for (const linear of targetWeights) {
      if (spec === null) {
        weightBytes += 4 * linear.weight.size;
        continue;
      }
      const q = QuantizedLinear.fromLinear(linear, spec);
      const b = q.bytes();
      weightBytes += b.total - b.bias;
      const [w, dq] = [linear.weight.dataSync(), q.dequantize()];
      const d = dq.dataSync();
      for (let k = 0; k < w.length; k++) {
        const e = Math.abs(w[k] - d[k]);
        maxError = Math.max(maxError, e);
        errorSq += e * e;
        normSq += w[k] * w[k];
      }
      dq.dispose();
      q.dispose();
    }
    const total = weightBytes + rest;
    if (spec === null) reference = total;
    const relative = spec === null ? "—" : Math.sqrt(errorSq / normSq).toFixed(4);
    console.log(
      `${label.padEnd(26)}${name.padEnd(20)}${pad(`${weightBytes} B`, 20)}${pad(kib(total), 14)}` +
        `${pad(`${(total / reference).toFixed(3)}×`, 12)}${pad(spec === null ? "—" : maxError.toExponential(2), 12)}` +
        `${pad(relative, 12)}`,
    );
  }
  model.dispose();
}

console.log(`\nforward time at batch 64 (median of 5 runs × 20 calls, ms per call)`);
console.log(`${"layer".padEnd(22)}${"base as".padEnd(20)}${pad("ms", 9)}${pad("vs float32", 12)}`);
for (const [inFeatures, outFeatures] of [[784, 128], [64, 256]]) {
  const linear = new Linear(inFeatures, outFeatures, { seed: 4 });
  const x = tf.randomNormal([64, inFeatures], 0, 1, "float32", 2);
  let reference = 0;
  for (const [name, spec] of SPECS) {
    const layer = spec === null ? linear : QuantizedLinear.fromLinear(linear, spec);
    const ms = await timeCalls(() => layer.apply(x), { runs: 5, calls: 20, warmup: 5 });
    if (spec === null) reference = ms;
    console.log(
      `${`${inFeatures}→${outFeatures}`.padEnd(22)}${name.padEnd(20)}${pad(ms.toFixed(3), 9)}` +
        `${pad(`${(ms / reference).toFixed(2)}×`, 12)}`,
    );
    if (layer !== linear) layer.dispose();
  }
  x.dispose();
  linear.dispose();
}

console.log(`\nLoRA training step on the MLP, rank 4 on all three layers, Adam, batch 64`);
console.log(`(median of 7 runs × 20 steps after 20 warm-up steps, ms per step)`);
console.log(`${"base as".padEnd(20)}${pad("ms", 9)}${pad("vs float32", 12)}`);
const batch = {
  features: tf.tidy(() => tf.randomUniform([64 * 784], 0, 1, "float32", 5).dataSync() as Float32Array),
  labels: Int32Array.from({ length: 64 }, (_, i) => (7 * i) % 10),
  size: 64,
};
let stepReference = 0;
for (const [name, spec] of SPECS) {
  const mlp = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
  const model = addLoRA(spec === null ? mlp : quantizeModel(mlp, spec), { rank: 4, alpha: 4, seed: 1 });
  const optimizer = new Adam(0.005);
  const variables = trainableVariables(model);
  const ms = await timeCalls(() => trainStep(model, optimizer, batch, variables), { runs: 7, calls: 20, warmup: 20 });
  if (spec === null) stepReference = ms;
  console.log(`${name.padEnd(20)}${pad(ms.toFixed(3), 9)}${pad(`${(ms / stepReference).toFixed(2)}×`, 12)}`);
  optimizer.dispose();
  model.dispose();
}

// LoRA on the GPT over each base: validation loss -----------------------------------------------------------------

/** `steps` optimizer steps of `model` on `loader`'s batches (cycling through epochs as needed). */
function trainSteps(model: Module, optimizer: Adam, loader: TokenLoader, steps: number): void {
  const variables = trainableVariables(model);
  for (let done = 0; done < steps;) {
    for (const tokens of loader) {
      if (done++ === steps) break;
      languageModelStep(model, optimizer, tokens, variables).dispose();
    }
  }
}

const gptConfig = { vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 };
const words = splitWords((await loadWords()).slice(0, 20000), { validationFraction: 0.05, seed: 1 });
const names = splitWords(await loadNames("female"), { validationFraction: 0.1, seed: 2 });
const loaderOf = (list: string[], shuffle: boolean) =>
  new TokenLoader(wordWindows(list, { blockSize: 16 }), { batchSize: 64, shuffle, seed: 3 });
const pretrainSteps = 300, finetuneSteps = 150;
const gptBase = new GPT(gptConfig, { seed: 1 });
const pretrainOptimizer = new Adam(0.003);
const pretrainStart = performance.now();
trainSteps(gptBase, pretrainOptimizer, loaderOf(words.train, true), pretrainSteps);
pretrainOptimizer.dispose();
const baseNames = (await evaluateLoss(gptBase, loaderOf(names.validation, false))).loss;
console.log(
  `\nLoRA on the GPT (rank 8, alpha 16, q_proj and v_proj) over each base: a base pretrained for ${pretrainSteps} ` +
    `steps on words (${((performance.now() - pretrainStart) / 1000).toFixed(0)} s), then ${finetuneSteps} LoRA steps ` +
    `on female names, batch 64, Adam 0.003; validation loss on ${names.validation.length} held-out names, nats per ` +
    `character (the float32 base before LoRA: ${baseNames.toFixed(4)})`,
);
console.log(`${"base as".padEnd(20)}${pad("base alone", 12)}${pad("with LoRA", 12)}${pad("vs float32", 12)}`);
let lossReference = 0;
for (const [name, spec] of SPECS) {
  const model = spec === null ? gptBase.clone() : quantizeModel(gptBase.clone(), spec);
  const alone = (await evaluateLoss(model, loaderOf(names.validation, false))).loss;
  addLoRA(model, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 4 });
  const optimizer = new Adam(0.003);
  trainSteps(model, optimizer, loaderOf(names.train, true), finetuneSteps);
  const loss = (await evaluateLoss(model, loaderOf(names.validation, false))).loss;
  if (spec === null) lossReference = loss;
  console.log(
    `${name.padEnd(20)}${pad(alone.toFixed(4), 12)}${pad(loss.toFixed(4), 12)}${
      pad(`${loss - lossReference >= 0 ? "+" : ""}${(loss - lossReference).toFixed(4)}`, 12)
    }`,
  );
  optimizer.dispose();
  model.dispose();
}
gptBase.dispose();
