import * as tf from "@tensorflow/tfjs";
import { adam, addLoRA, GPT, initBackend, languageModelStep, trainableVariables } from "../lib/mod.ts";
import { GPT_BENCH_CONFIG } from "./gpt_bench.ts";
await initBackend(Deno.args[0] ?? "wasm+blas");
let s = 3;
const ids = () => Int32Array.from({ length: 1024 }, () => 1 + ((s = (s * 1103515245 + 12345) % 2 ** 31) % 29));
const batch = { inputs: ids(), targets: ids(), size: 64, time: 16, tokens: 1024 };
const make = (lora: boolean) => {
  const base = new GPT(GPT_BENCH_CONFIG, { seed: 123 });
  const model = lora ? addLoRA(base, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 1 }) : base;
  const opt = adam(1e-3), vars = trainableVariables(model);
  return () => languageModelStep(model, opt, batch, vars).dispose();
};
const runs = { full: make(false), lora: make(true) };
for (const r of Object.values(runs)) for (let i = 0; i < 5; i++) r();
for (let round = 0; round < 4; round++) {
  const out: string[] = [];
  for (const [name, step] of Object.entries(runs)) {
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) step();
    out.push(`${name} ${((performance.now() - t0) / 20).toFixed(1)} ms`);
  }
  console.log(out.join(", "), tf.memory().numTensors);
}
