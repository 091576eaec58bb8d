import * as tf from "@tensorflow/tfjs";
import { BACKEND_NAMES, blasStatus, initBackend } from "../lib/mod.ts";
import { assert, assertEquals, assertRejects } from "./assert.ts";

Deno.test("the default backend is wasm (with BLAS products when they can be used), and LORA_BACKEND chooses another", async () => {
  const saved = Deno.env.get("LORA_BACKEND");
  try {
    Deno.env.delete("LORA_BACKEND");
    const started = await initBackend(undefined, { quiet: true });
    assertEquals(started, blasStatus().enabled ? "wasm+blas" : "wasm");
    assert.ok(blasStatus().enabled || blasStatus().reason !== null, "without BLAS there is a reason");
    assertEquals(tf.getBackend(), "wasm");
    assertEquals(await initBackend("wasm", { blas: false }), "wasm", "plain wasm on request");
    assertEquals(blasStatus().enabled, false);
    Deno.env.set("LORA_BACKEND", "cpu");
    assertEquals(await initBackend(), "cpu");
    assertEquals(tf.getBackend(), "cpu");
    assertEquals(await initBackend("wasm", { quiet: true }), started, "an explicit name wins over the variable");
  } finally {
    if (saved === undefined) Deno.env.delete("LORA_BACKEND");
    else Deno.env.set("LORA_BACKEND", saved);
    await initBackend("wasm", { quiet: true });
  }
});

Deno.test("an unknown backend name is an error listing the valid ones", async () => {
  await assertRejects(
    () => initBackend("cuda"),
    Error,
    /Unknown backend "cuda": expected one of wasm, cpu, webgpu, tensorflow \(or wasm\+blas\)/,
  );
  assertEquals([...BACKEND_NAMES], ["wasm", "cpu", "webgpu", "tensorflow"]);
});

Deno.test("the CUDA backend, when its native binding is missing, says what it needs", async () => {
  // tfjs-node-gpu is not installed here (its install script downloads libtensorflow, which these machines
  // cannot reach), so this exercises the failure path that users without CUDA will see.
  await assertRejects(() => initBackend("tensorflow"), Error, /CUDA 11\.2 and cuDNN 8\.1.*LORA_BACKEND=webgpu/s);
  assertEquals(tf.getBackend(), "wasm");
});

Deno.test("no console banner on backend start", async () => {
  const messages: string[] = [];
  const { warn, log } = console;
  console.warn = (...args: unknown[]) => messages.push(args.join(" "));
  console.log = console.warn;
  try {
    await initBackend("cpu");
    tf.tensor([1, 2, 3]).dispose();
    await initBackend("wasm");
  } finally {
    Object.assign(console, { warn, log });
  }
  assert.ok(!messages.some((m) => /running TensorFlow\.js in Node\.js/.test(m)), messages.join("\n"));
});

Deno.test("webgpu (software Vulkan here) computes what cpu computes: outputs and LoRA gradients", async () => {
  const { Linear, LinearWithLoRA, crossEntropy } = await import("../lib/mod.ts");
  // initBackend gives Mesa a private XDG_RUNTIME_DIR in the system's temporary folder; the tests may write only
  // under data/, so they provide one there (without it Mesa prints a warning and works all the same).
  if (Deno.env.get("XDG_RUNTIME_DIR") === undefined) {
    await Deno.mkdir("data/xdg-runtime", { recursive: true, mode: 0o700 });
    await Deno.chmod("data/xdg-runtime", 0o700);
    Deno.env.set("XDG_RUNTIME_DIR", `${Deno.cwd()}/data/xdg-runtime`);
  }
  const run = async (backend: "webgpu" | "cpu") => {
    await initBackend(backend);
    const layer = new LinearWithLoRA(new Linear(20, 5, { seed: 1 }), 2, 4, { seed: 2 });
    layer.lora.B.assign(tf.fill([2, 5], 0.1));
    const x = tf.tensor2d(Float32Array.from({ length: 60 }, (_, i) => Math.sin(i)), [3, 20]);
    const targets = tf.oneHot(tf.tensor1d([0, 3, 4], "int32"), 5).toFloat() as tf.Tensor2D;
    const y = layer.apply(x);
    const { grads } = tf.variableGrads(() => crossEntropy(layer.apply(x), targets), [layer.lora.A, layer.lora.B]);
    const values = [
      ...await y.data(),
      ...await grads[layer.lora.A.name].data(),
      ...await grads[layer.lora.B.name].data(),
    ];
    tf.dispose([x, y, targets, grads]);
    layer.dispose();
    return values;
  };
  try {
    const gpu = await run("webgpu");
    const cpu = await run("cpu");
    // Measured agreement on lavapipe: 2.4e-7 at most; real GPUs may fuse multiply-adds differently.
    console.log(`webgpu vs cpu: largest difference ${Math.max(...gpu.map((v, i) => Math.abs(v - cpu[i])))}`);
    gpu.forEach((v, i) => assert.ok(Math.abs(v - cpu[i]) < 2e-4, `element ${i}: ${v} vs ${cpu[i]}`));
  } finally {
    await initBackend("wasm");
  }
});
