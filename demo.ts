/**
 * The tutorial end to end: train the MLP on MNIST, then finetune it with LoRA (rank 4, alpha 8) on its
 * three linear layers with the base frozen, and check that the merged and unmerged forms agree.
 *
 *     deno task demo [--epochs 2] [--lora-epochs N] [--backend wasm|cpu|webgpu|tensorflow] [--seed 123]
 *                    [--limit N]   # only the first N training and N test images (a quick check)
 *
 * Progress goes to a terminal as one updating line; piped output gets one line per epoch.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import {
  adam,
  addLoRA,
  computeAccuracy,
  countParameters,
  DataLoader,
  initBackend,
  loadMnist,
  mergeAdapter,
  MultilayerPerceptron,
  type Progress,
  saveWeights,
  train,
  type TrainHistory,
} from "./lib/mod.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    epochs: { type: "string", default: "2" },
    "lora-epochs": { type: "string" },
    backend: { type: "string" },
    seed: { type: "string", default: "123" },
    limit: { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  console.log(
    "deno task demo [--epochs 2] [--lora-epochs N] [--backend wasm|cpu|webgpu|tensorflow] [--seed 123] [--limit N]",
  );
  Deno.exit(0);
}
const epochs = integerFlag("--epochs", args.epochs!, 1);
const loraEpochs = integerFlag("--lora-epochs", args["lora-epochs"] ?? args.epochs!, 1);
const seed = integerFlag("--seed", args.seed!, 0);
const limit = args.limit === undefined ? undefined : integerFlag("--limit", args.limit, 1);

// The tutorial's hyperparameters.
const [numFeatures, numHidden1, numHidden2, numClasses] = [784, 128, 256, 10];
const [learningRate, batchSize, rank, alpha] = [0.005, 64, 4, 8];

const backend = await initBackend(args.backend);
const { train: trainSet, test: testSet } = await loadMnist({ limit });
const trainLoader = new DataLoader(trainSet, { batchSize, shuffle: true, seed });
const testLoader = new DataLoader(testSet, { batchSize: 1000 });
console.log(
  `backend ${backend} | MNIST ${trainSet.count} train / ${testSet.count} test | batch ${batchSize}, Adam lr ${learningRate}`,
);

// 1. The base model, all parameters trainable.
const model = new MultilayerPerceptron(numFeatures, numHidden1, numHidden2, numClasses, { seed });
const baseCounts = countParameters(model);
const base = await fit("base", model, epochs);
const baseAccuracy = await computeAccuracy(model, testLoader);
console.log(`base test accuracy ${baseAccuracy.toFixed(2)}%`);
await Deno.mkdir("data", { recursive: true });
await saveWeights(model, "data/base-mlp.safetensors");

// 2. LoRA on a copy: wrap every Linear, freeze the base, train A and B only.
const lora = addLoRA(model.clone(), { rank, alpha, seed: seed + 1 });
const counts = countParameters(lora);
const loraRun = await fit("LoRA", lora, loraEpochs);
const loraAccuracy = await computeAccuracy(lora, testLoader);
console.log(`LoRA test accuracy ${loraAccuracy.toFixed(2)}%`);

// 3. Merged and unmerged must compute the same function: fold scaling·A·B into W and compare logits.
const images = tf.tensor2d(testSet.images, [testSet.count, numFeatures]);
const unmergedLogits = lora.apply(images);
const merged = lora.clone();
mergeAdapter(merged);
const mergedLogits = merged.apply(images);
const gap = tf.max(tf.abs(tf.sub(mergedLogits, unmergedLogits)));
const mergeGap = (await gap.data())[0];
tf.dispose([images, unmergedLogits, mergedLogits, gap]);

const perEpoch = (h: TrainHistory) => (h.seconds / h.epochs.length).toFixed(1);
const rate = (h: TrainHistory) => (h.steps / h.seconds).toFixed(0);
console.log(`
| model | epochs | trainable / total parameters | test accuracy | s / epoch | steps / s |
|---|---|---|---|---|---|
| base MLP | ${epochs} | ${fmt(baseCounts.trainable)} / ${fmt(baseCounts.total)} | ${baseAccuracy.toFixed(2)}% | ${
  perEpoch(base)
} | ${rate(base)} |
| + LoRA r=${rank}, alpha=${alpha} | ${loraEpochs} | ${fmt(counts.trainable)} / ${fmt(counts.total)} (${
  (100 * counts.trainable / counts.total).toFixed(2)
}%) | ${loraAccuracy.toFixed(2)}% | ${perEpoch(loraRun)} | ${rate(loraRun)} |

merged vs unmerged logits on ${testSet.count} test images: max |difference| ${mergeGap.toExponential(2)}
base weights saved to data/base-mlp.safetensors`);

model.dispose();
lora.dispose();
merged.dispose();
if (!(mergeGap <= 1e-4)) {
  console.error("merged and unmerged LoRA disagree by more than 1e-4");
  Deno.exit(1);
}

async function fit(label: string, net: MultilayerPerceptron, n: number): Promise<TrainHistory> {
  const optimizer = adam(learningRate);
  const interactive = Deno.stdout.isTerminal();
  const encoder = new TextEncoder();
  const history = await train(net, optimizer, trainLoader, {
    epochs: n,
    logEvery: 25,
    onProgress: (p: Progress) => {
      if (!interactive) return;
      const line = `${label} epoch ${p.epoch + 1}/${p.epochs} | batch ${p.batch}/${p.batches} | loss ${
        p.loss.toFixed(4)
      } | ${p.seconds.toFixed(1)} s`;
      Deno.stdout.writeSync(encoder.encode(`\r${line.padEnd(79)}`));
    },
    onEpochEnd: (e) => {
      if (interactive) Deno.stdout.writeSync(encoder.encode("\r" + " ".repeat(79) + "\r"));
      console.log(`${label} epoch ${e.epoch + 1}/${n}: mean loss ${e.meanLoss.toFixed(4)}, ${e.seconds.toFixed(1)} s`);
    },
  });
  optimizer.dispose();
  return history;
}

function integerFlag(flag: string, text: string, least: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < least) {
    console.error(`${flag} expects an integer of at least ${least}; got "${text}".`);
    Deno.exit(2);
  }
  return n;
}

function fmt(n: number): string {
  return n.toLocaleString("en-US");
}
