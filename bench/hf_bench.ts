/**
 * Real shapes without real weights: models built with the published configurations of
 * `HuggingFaceTB/SmolLM2-135M` (a `LlamaForCausalLM`) and `gpt2` (124M), randomly initialised, then measured:
 * build time, forward tokens/s at batch 1 and 8, LoRA training tokens/s at sequence length 256, peak memory
 * (TensorFlow.js's bytes during a training step, and the process's resident size), and the adapter's file size.
 *
 * ```sh
 * deno run --allow-read --allow-env --allow-sys=loadavg bench/hf_bench.ts [--model smollm2|gpt2|both] [--steps N]
 *   [--forward-tokens N] [--checkpointing]
 * ```
 *
 * The configurations are typed in from the two models' `config.json` on the Hugging Face hub; nothing is
 * downloaded. Random weights compute as fast as trained ones, so the speeds hold for the real checkpoints.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { initBackend } from "../lib/backend.ts";
import { countParameters, trainableVariables } from "../lib/module.ts";
import { addLoRA } from "../lib/peft/model.ts";
import { adapterToFiles } from "../lib/peft/files.ts";
import { adam } from "../lib/train.ts";
import { languageModelStep } from "../lib/gpt/train.ts";
import { buildModel, parseConfig } from "../lib/hf/mod.ts";

/** `HuggingFaceTB/SmolLM2-135M`'s `config.json` (the fields that shape the model). */
const SMOLLM2_135M_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  attention_bias: false,
  hidden_act: "silu",
  hidden_size: 576,
  intermediate_size: 1536,
  max_position_embeddings: 8192,
  num_attention_heads: 9,
  num_hidden_layers: 30,
  num_key_value_heads: 3,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 100000,
  tie_word_embeddings: true,
  vocab_size: 49152,
  bos_token_id: 0,
  eos_token_id: 0,
};

/** `gpt2`'s `config.json` (the fields that shape the model). */
const GPT2_CONFIG = {
  architectures: ["GPT2LMHeadModel"],
  model_type: "gpt2",
  activation_function: "gelu_new",
  layer_norm_epsilon: 1e-5,
  n_ctx: 1024,
  n_embd: 768,
  n_head: 12,
  n_layer: 12,
  n_positions: 1024,
  vocab_size: 50257,
  bos_token_id: 50256,
  eos_token_id: 50256,
};

const MODELS = {
  smollm2: { name: "SmolLM2-135M", config: SMOLLM2_135M_CONFIG, targets: ["q_proj", "v_proj"] },
  gpt2: { name: "gpt2 (124M)", config: GPT2_CONFIG, targets: ["c_attn"] },
};

function option(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
let peakRss = 0;
function rss(): number {
  const now = Deno.memoryUsage().rss;
  peakRss = Math.max(peakRss, now);
  return now;
}

function tokens(batch: number, time: number, vocab: number, seed: number): tf.Tensor2D {
  const ids = new Int32Array(batch * time);
  let s = seed;
  for (let i = 0; i < ids.length; i++) ids[i] = (s = (s * 1103515245 + 12345) % 2 ** 31) % vocab;
  return tf.tensor2d(ids, [batch, time], "int32");
}

async function timeForward(model: ReturnType<typeof buildModel>, batch: number, time: number, reps: number) {
  const x = tokens(batch, time, model.config.vocabSize, 7);
  const run = async () => {
    const logits = model.apply(x);
    await logits.data();
    logits.dispose();
  };
  const start = performance.now();
  for (let i = 0; i < Math.max(1, reps); i++) await run();
  const seconds = (performance.now() - start) / 1000 / Math.max(1, reps);
  x.dispose();
  rss();
  return { seconds, tokensPerSecond: batch * time / seconds };
}

async function bench(
  key: keyof typeof MODELS,
  steps: number,
  forwardTime: number,
  trainTime: number,
  checkpointing: boolean,
) {
  const { name, config: json, targets } = MODELS[key];
  const config = parseConfig(json, name);
  let start = performance.now();
  const model = buildModel(config, { seed: 1 });
  const buildSeconds = (performance.now() - start) / 1000;
  const { total } = countParameters(model);
  console.log(
    `${name}: ${(total / 1e6).toFixed(1)}M parameters, built in ${buildSeconds.toFixed(2)} s; ` +
      `weights ${mib(tf.memory().numBytes)}, RSS ${mib(rss())}`,
  );
  try {
    addLoRA(model, { rank: 8, alpha: 16, targetModules: targets, scaling: "paper", seed: 1 });
    model.gradientCheckpointing = checkpointing;
    const variables = trainableVariables(model);
    const trainable = variables.reduce((n, v) => n + v.size, 0);
    const optimizer = adam(1e-4);
    const ids = tokens(1, trainTime + 1, config.vocabSize, 11).dataSync();
    const batch = {
      inputs: Int32Array.from(ids.slice(0, trainTime)),
      targets: Int32Array.from(ids.slice(1)),
      size: 1,
      time: trainTime,
      tokens: trainTime,
    };
    const step = async () => {
      const loss = languageModelStep(model, optimizer, batch, variables);
      const value = (await loss.data())[0];
      loss.dispose();
      return value;
    };
    // The first step (warm-up) runs under tf.profile, which records the bytes alive after every kernel (tfjs counts
    // a buffer once per tensor that holds it, so the clones a backward pass keeps count again: an upper bound).
    const profile = await tf.profile(step);
    rss();
    start = performance.now();
    for (let i = 0; i < steps; i++) await step();
    const seconds = (performance.now() - start) / 1000 / steps;
    rss();
    const { safetensors } = await adapterToFiles(model);
    console.log(
      `  LoRA r=8 on ${targets.join(", ")} (${trainable} trainable)${
        checkpointing ? ", gradient checkpointing" : ""
      }, ` +
        `batch 1 × ${trainTime} tokens: ` +
        `${seconds.toFixed(2)} s/step, ${(trainTime / seconds).toFixed(0)} tokens/s`,
    );
    console.log(
      `  peak tf.memory during a training step ${mib(profile.peakBytes)}; RSS ${mib(rss())}; ` +
        `adapter_model.safetensors ${(safetensors.length / 1024).toFixed(0)} KiB`,
    );
    // Forward passes with the adapter in place (its cost is small next to the base layers').
    await timeForward(model, 1, 8, 0); // warm-up of the forward kernels at another size
    for (const batch of [1, 8]) {
      const { seconds, tokensPerSecond } = await timeForward(model, batch, forwardTime, 1);
      console.log(
        `  forward, batch ${batch} × ${forwardTime} tokens: ${seconds.toFixed(2)} s, ` +
          `${tokensPerSecond.toFixed(0)} tokens/s; RSS ${mib(rss())}`,
      );
    }
    console.log(`  peak RSS ${mib(peakRss)}`);
    optimizer.dispose();
    return { name, total, buildSeconds, trainSeconds: seconds, peakBytes: profile.peakBytes };
  } finally {
    model.dispose();
  }
}

if (import.meta.main) {
  const backend = await initBackend();
  const which = option("model", "both");
  const steps = Number(option("steps", "2"));
  const forwardTime = Number(option("forward-tokens", "64"));
  const keys = which === "both" ? ["smollm2", "gpt2"] as const : [which as keyof typeof MODELS];
  for (const key of keys) {
    if (!(key in MODELS)) throw new Error(`hf_bench: --model must be smollm2, gpt2 or both; got "${key}".`);
  }
  const load = Deno.loadavg().map((l) => l.toFixed(2)).join(" ");
  console.log(`backend ${backend}, load average ${load}, ${steps} timed training steps after one warm-up`);
  const checkpointing = Deno.args.includes("--checkpointing");
  for (const key of keys) await bench(key, steps, forwardTime, 256, checkpointing);
}
