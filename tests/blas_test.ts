/**
 * The BLAS products of lib/blas.ts against wasm's own kernels: the same values to float32 rounding for every
 * form of product, the same training steps, no leaked tensor, and proof that BLAS really ran. Without FFI
 * permission or a library these tests are skipped with the reason, except in CI (the `CI` variable set) when a
 * library is installed: there they must run.
 */
import * as tf from "@tensorflow/tfjs";
import {
  adam,
  addLoRA,
  GPT,
  initBackend,
  languageModelStep,
  MultilayerPerceptron,
  trainableVariables,
  trainStep,
} from "../lib/mod.ts";
import {
  blasProductCount,
  blasStatus,
  blasSumCount,
  DEFAULT_BLAS_LIBRARIES,
  disableBlas,
  enableBlas,
  referenceKernel,
} from "../lib/blas.ts";
import { assert, assertClose, assertEquals, assertNoLeak, assertThrows, maxAbsDiff } from "./assert.ts";

await initBackend("wasm", { quiet: true });
const status = enableBlas();
const installed = [Deno.env.get("LORA_BLAS_LIBRARY") ?? "", ...DEFAULT_BLAS_LIBRARIES].some((path) => {
  try {
    return path.startsWith("/") && Deno.statSync(path).isFile;
  } catch {
    return false;
  }
});
const ignore = !status.enabled;
if (ignore) console.log(`BLAS tests skipped: ${status.reason}`);

Deno.test({
  name: "in CI, with a BLAS library installed, the BLAS tests run",
  ignore: Deno.env.get("CI") === undefined || !installed,
  fn: () => assert.ok(status.enabled, `a BLAS library is installed but cannot be used: ${status.reason}`),
});

/** Values of N(0, 1) from a fixed seed, of `shape`. */
const normal = (shape: number[], seed: number) => tf.randomNormal(shape, 0, 1, "float32", seed);

/** `f` with BLAS, then with wasm's own kernels; BLAS is on again afterwards. */
function bothWays<T>(f: () => T): { blas: T; wasm: T } {
  enableBlas();
  const blas = f();
  disableBlas("compared with wasm's kernels");
  try {
    return { blas, wasm: f() };
  } finally {
    enableBlas();
  }
}

/** [a shape, b shape, transposeA, transposeB]: plain, transposed, batched, broadcast batches. */
const PRODUCTS: [number[], number[], boolean, boolean][] = [
  [[5, 7], [7, 3], false, false],
  [[7, 5], [7, 3], true, false],
  [[5, 7], [3, 7], false, true],
  [[7, 5], [3, 7], true, true],
  [[64, 784], [784, 128], false, false],
  [[64, 784], [64, 128], true, false],
  [[4, 5, 7], [4, 7, 3], false, false],
  [[4, 7, 5], [4, 3, 7], true, true],
  [[2, 3, 5, 7], [2, 3, 7, 6], false, false],
  [[4, 5, 7], [7, 3], false, false], // b shared by the batch: one product of [20, 7]·[7, 3]
  [[4, 7, 5], [7, 3], true, false], // b shared, a transposed: one product per batch entry
  [[5, 7], [4, 7, 3], false, false], // a shared by the batch
  [[1, 5, 7], [2, 4, 7, 3], false, false],
];

for (const [shapeA, shapeB, transposeA, transposeB] of PRODUCTS) {
  Deno.test({
    name: `a ${shapeA}${transposeA ? "ᵀ" : ""} · ${shapeB}${transposeB ? "ᵀ" : ""} product equals wasm's`,
    ignore,
    fn: async () => {
      const a = normal(shapeA, 1), b = normal(shapeB, 2);
      await assertNoLeak(() => {
        const before = blasProductCount();
        const ours = tf.matMul(a, b, transposeA, transposeB);
        assertEquals(blasProductCount() - before, 1, "BLAS computed the product");
        const theirs = referenceKernel("BatchMatMul", { a, b }, { transposeA, transposeB });
        assertEquals(ours.shape, theirs.shape);
        // float32 sums of up to 784 products of N(0, 1) values: rounding differences of order 1e-5.
        assertClose(ours, theirs, 1e-4 * Math.sqrt(transposeA ? shapeA.at(-2)! : shapeA.at(-1)!), "product");
        tf.dispose([ours, theirs]);
      });
      tf.dispose([a, b]);
    },
  });
}

Deno.test({
  name: "batch axes that broadcast both ways pair up as NumPy pairs them (wasm's own kernel gets them wrong)",
  ignore,
  fn: async () => {
    const a = normal([2, 1, 5, 7], 3), b = normal([1, 3, 7, 4], 4);
    await assertNoLeak(() => {
      const before = blasProductCount();
      const ours = tf.matMul(a, b);
      assertEquals([blasProductCount() - before, ours.shape], [1, [2, 3, 5, 4]]);
      for (let i = 0; i < 2; i++) {
        for (let j = 0; j < 3; j++) {
          tf.tidy(() => {
            const one = tf.matMul(tf.slice(a, [i, 0, 0, 0], [1, 1, 5, 7]), tf.slice(b, [0, j, 0, 0], [1, 1, 7, 4]));
            assertClose(tf.slice(ours, [i, j, 0, 0], [1, 1, 5, 4]), one, 1e-5, `entry [${i}, ${j}]`);
          });
        }
      }
      tf.dispose(ours);
    });
    tf.dispose([a, b]);
  },
});

Deno.test({
  name: "empty products, and products over an empty inner axis (all zeros)",
  ignore,
  fn: async () => {
    await assertNoLeak(() =>
      tf.tidy(() => {
        assertEquals(tf.matMul(tf.zeros([0, 3]), tf.zeros([3, 4])).shape, [0, 4]);
        const noInner = tf.matMul(tf.fill([3, 0], 1), tf.fill([0, 4], 1));
        assertEquals(Array.from(noInner.dataSync()), new Array(12).fill(0));
      })
    );
  },
});

Deno.test({
  name: "a product whose output makes the wasm heap grow reads and writes the new heap",
  ignore,
  fn: () => {
    const a = normal([2048, 64], 5), b = normal([64, 2048], 6);
    const ours = tf.matMul(a, b); // 16 MB of output, allocated before the heap is read
    const theirs = referenceKernel("BatchMatMul", { a, b }, { transposeA: false, transposeB: false });
    assertClose(ours, theirs, 1e-4 * 8, "large product");
    tf.dispose([a, b, ours, theirs]);
  },
});

/** [shape, axis, keepDims, whether BLAS takes it]: sums over leading axes go to BLAS, all others to wasm. */
const SUMS: [number[], number | number[] | undefined, boolean, boolean][] = [
  [[1024, 256], 0, false, true],
  [[64, 16, 30], [0, 1], false, true],
  [[64, 16, 30], [1, 0], true, true],
  [[4, 5, 6], -3, false, true],
  [[7, 3], 1, false, false],
  [[7, 3], undefined, false, false],
  [[4, 5, 6], [0, 2], false, false],
];

for (const [shape, axis, keepDims, blasTakes] of SUMS) {
  Deno.test({
    name: `tf.sum of [${shape}] over ${JSON.stringify(axis ?? "every axis")}${
      keepDims ? ", dims kept," : ""
    } equals wasm's`,
    ignore,
    fn: async () => {
      const x = normal(shape, 11);
      await assertNoLeak(() => {
        const before = blasSumCount();
        const ours = tf.sum(x, axis, keepDims);
        assertEquals(blasSumCount() - before, blasTakes ? 1 : 0, "which kernel took it");
        const theirs = referenceKernel("Sum", { x }, { axis: axis ?? null, keepDims });
        assertEquals(ours.shape, theirs.shape);
        assertClose(ours, theirs, 1e-4 * Math.sqrt(x.size / ours.size), "sum");
        tf.dispose([ours, theirs]);
      });
      x.dispose();
    },
  });
}

/** The readable form of each fused activation, as separate tfjs ops. */
const ACTIVATIONS: Record<string, (x: tf.Tensor, slopes: tf.Tensor) => tf.Tensor> = {
  linear: (x) => x,
  relu: (x) => tf.relu(x),
  relu6: (x) => tf.relu6(x),
  elu: (x) => tf.elu(x),
  leakyrelu: (x) => tf.leakyRelu(x, 0.3),
  sigmoid: (x) => tf.sigmoid(x),
  prelu: (x, slopes) => tf.prelu(x, slopes),
};

for (const activation of Object.keys(ACTIVATIONS)) {
  Deno.test({
    name: `tf.fused.matMul with a bias and ${activation} equals the product, the bias and ${activation} one by one`,
    ignore,
    fn: async () => {
      const a = normal([6, 9], 7), b = normal([9, 5], 8), bias = normal([5], 9), slopes = normal([5], 10);
      await assertNoLeak(() => {
        // wasm's own fused kernel is wrong for transposed operands; with BLAS they are right.
        for (const [transposeA, transposeB] of [[false, false], [true, false], [false, true], [true, true]]) {
          const x = transposeA ? tf.transpose(a) : a, w = transposeB ? tf.transpose(b) : b;
          const before = blasProductCount();
          const fused = tf.fused.matMul({
            a: x as tf.Tensor2D,
            b: w as tf.Tensor2D,
            transposeA,
            transposeB,
            bias,
            activation: activation as tf.fused.Activation,
            preluActivationWeights: activation === "prelu" ? slopes : undefined,
            leakyreluAlpha: 0.3,
          });
          assertEquals(blasProductCount() - before, 1, "BLAS ran the fused product");
          disableBlas("compared with the readable form");
          const readable = tf.tidy(() => ACTIVATIONS[activation](tf.add(tf.matMul(a, b), bias), slopes));
          enableBlas();
          assertClose(fused, readable, 1e-5, `${activation}, transposes ${transposeA}/${transposeB}`);
          tf.dispose([fused, readable, ...(transposeA ? [x] : []), ...(transposeB ? [w] : [])]);
        }
      });
      tf.dispose([a, b, bias, slopes]);
    },
  });
}

/** Losses and final weights of `steps` training steps of `make()`'s model. */
function train(
  make: () => { step: () => tf.Scalar; weights: () => tf.Variable[]; dispose: () => void },
  steps: number,
) {
  const run = make();
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) {
    const loss = run.step();
    losses.push(loss.dataSync()[0]);
    loss.dispose();
  }
  const weights = run.weights().map((w) => w.dataSync().slice());
  run.dispose();
  return { losses, weights };
}

const mnistLike = {
  features: Float32Array.from({ length: 64 * 784 }, (_, i) => ((i * 7919) % 255) / 255),
  labels: Int32Array.from({ length: 64 }, (_, i) => (i * 3) % 10),
  size: 64,
};

function mlp(lora: boolean) {
  return () => {
    const base = new MultilayerPerceptron(784, 128, 256, 10, { seed: 123 });
    const model = lora ? addLoRA(base, { rank: 4, alpha: 8, seed: 1 }) : base;
    const optimizer = adam(0.005);
    const variables = trainableVariables(model);
    return {
      step: () => trainStep(model, optimizer, mnistLike, variables),
      weights: () => variables,
      dispose: () => {
        optimizer.dispose();
        model.dispose();
      },
    };
  };
}

/** The first trainable parameter's values before any step. */
function initial(lora: boolean): ArrayLike<number> {
  const run = mlp(lora)();
  const values = run.weights()[0].dataSync().slice();
  run.dispose();
  return values;
}

for (const lora of [false, true]) {
  Deno.test({
    name: `five MLP training steps (${lora ? "LoRA r=4" : "full"}) take the same steps with BLAS as on wasm`,
    ignore,
    fn: async () => {
      await assertNoLeak(() => {
        const { blas, wasm } = bothWays(() => train(mlp(lora), 5));
        assert.ok(maxAbsDiff(blas.losses, wasm.losses) < 1e-5, `losses ${blas.losses} vs ${wasm.losses}`);
        assert.ok(maxAbsDiff(blas.weights[0], wasm.weights[0]) < maxAbsDiff(blas.weights[0], initial(lora)), "moved");
        // Adam moves each weight by about the learning rate (5e-3) per step; 1e-4 is rounding, not a different step.
        blas.weights.forEach((w, i) => assert.ok(maxAbsDiff(w, wasm.weights[i]) < 1e-4, `parameter ${i}`));
      });
    },
  });
}

Deno.test({
  name: "three GPT training steps (full and LoRA r=8 on q, v) take the same steps with BLAS as on wasm",
  ignore,
  fn: async () => {
    const config = { vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 };
    let seed = 7;
    const ids = () =>
      Int32Array.from({ length: 8 * 16 }, () => 1 + ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % 29));
    const batch = { inputs: ids(), targets: ids(), size: 8, time: 16, tokens: 8 * 16 };
    // Whatever a GPT constructor leaves behind (nothing since LayerNorm frees its initial values) is measured and
    // allowed; the steps must add none.
    const before = tf.memory().numTensors;
    new GPT(config, { seed: 3 }).dispose();
    const constructorLeak = tf.memory().numTensors - before;
    for (const lora of [false, true]) {
      await assertNoLeak(() => {
        const make = () => {
          const base = new GPT(config, { seed: 3 });
          const model = lora
            ? addLoRA(base, { rank: 8, alpha: 16, targetModules: ["q_proj", "v_proj"], seed: 4 })
            : base;
          const optimizer = adam(1e-3);
          const variables = trainableVariables(model);
          return {
            step: () => languageModelStep(model, optimizer, batch, variables),
            weights: () => variables,
            dispose: () => {
              optimizer.dispose();
              model.dispose();
            },
          };
        };
        const { blas, wasm } = bothWays(() => train(make, 3));
        assert.ok(maxAbsDiff(blas.losses, wasm.losses) < 1e-5, `losses ${blas.losses} vs ${wasm.losses}`);
        // Adam moves a weight by up to the learning rate (1e-3) per step, and by less than that where the gradient
        // is small, where rounding matters most; 1e-4 is a tenth of one step (measured: 2e-5 at most).
        blas.weights.forEach((w, i) => assert.ok(maxAbsDiff(w, wasm.weights[i]) < 1e-4, `parameter ${i}`));
      }, 2 * constructorLeak);
    }
  },
});

Deno.test({
  name: "every product and bias gradient of a training step runs in BLAS, and the backward pass transposes nothing",
  ignore,
  fn: async () => {
    const run = mlp(false)();
    run.step().dispose();
    const before = blasProductCount(), sumsBefore = blasSumCount();
    const profile = await tf.profile(() => run.step().dispose());
    assertEquals(blasSumCount() - sumsBefore, 3, "the three biases' gradients, sums over the batch");
    // The forward products carry their layer's bias (_FusedMatMul) when the fused kernels are in use.
    const products = profile.kernels.filter((k) => k.name === "BatchMatMul" || k.name === "_FusedMatMul").length;
    assertEquals(products, 8, "three forward products, three weight gradients, the input gradients of two layers");
    assertEquals(blasProductCount() - before, products);
    assertEquals(profile.kernels.filter((k) => k.name === "Transpose").length, 0, "transposes go to BLAS as flags");
    run.dispose();
  },
});

Deno.test({
  name: "LORA_BLAS=off and { blas: false } give plain wasm; the default and wasm+blas give BLAS",
  ignore,
  fn: async () => {
    const saved = Deno.env.get("LORA_BLAS");
    const count = () => {
      const before = blasProductCount();
      tf.tidy(() => tf.matMul(tf.ones([2, 2]), tf.ones([2, 2])));
      return blasProductCount() - before;
    };
    try {
      Deno.env.set("LORA_BLAS", "off");
      assertEquals(await initBackend(undefined, { quiet: true }), "wasm");
      assertEquals([blasStatus().enabled, blasStatus().reason, count()], [
        false,
        "BLAS switched off: LORA_BLAS=off",
        0,
      ]);
      Deno.env.delete("LORA_BLAS");
      assertEquals(await initBackend(), "wasm+blas");
      assertEquals(count(), 1);
      assertEquals(await initBackend("wasm", { blas: false, quiet: true }), "wasm");
      assertEquals(count(), 0);
      assertEquals(await initBackend("wasm+blas"), "wasm+blas");
      assertEquals([tf.getBackend(), count()], ["wasm", 1]);
      Deno.env.set("LORA_BLAS", "sometimes");
      await initBackend().then(
        () => assert.fail("an unknown LORA_BLAS value was accepted"),
        (error) => assert.match(String(error), /LORA_BLAS must be off, on or auto; got "sometimes"/),
      );
    } finally {
      if (saved === undefined) Deno.env.delete("LORA_BLAS");
      else Deno.env.set("LORA_BLAS", saved);
      await initBackend("wasm");
    }
  },
});

Deno.test({
  name: "the BLAS thread count can be set, and a bad one is refused",
  ignore: ignore || blasStatus().threads === null,
  fn: () => {
    try {
      assertEquals(enableBlas({ threads: 2 }).threads, 2);
      assertEquals(enableBlas({ threads: 1 }).threads, 1);
      assertThrows(() => enableBlas({ threads: 0 }), RangeError, /threads must be a positive integer; got 0/);
      assertEquals(blasStatus().threads, 1, "unchanged by the refused call");
    } finally {
      enableBlas();
    }
  },
});

/** Runs `code` in a new Deno process with `flags` and `env`; returns its standard output and error. */
async function child(code: string, flags: string[], env: Record<string, string> = {}) {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--allow-read", "--allow-env", ...flags, "-"],
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = process.stdin.getWriter();
  await writer.write(new TextEncoder().encode(code));
  await writer.close();
  const out = await process.output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes).trim();
  return { stdout: decode(out.stdout), stderr: decode(out.stderr), success: out.success };
}

const START = `import { initBackend } from "./lib/mod.ts"; console.log(await initBackend());`;

Deno.test("without FFI permission initBackend starts plain wasm and says why in one line", async () => {
  const out = await child(START, [], { LORA_BLAS: "auto" });
  assert.ok(out.success, out.stderr);
  assertEquals(out.stdout, "wasm");
  assertEquals(out.stderr, "wasm without BLAS: no FFI permission (run Deno with --allow-ffi to use BLAS)");
});

Deno.test("a BLAS library that cannot be loaded leaves plain wasm, naming the library", async () => {
  const out = await child(START, ["--allow-ffi"], {
    LORA_BLAS: "auto",
    LORA_BLAS_LIBRARY: "/nonexistent/libcblas.so",
  });
  assert.ok(out.success, out.stderr);
  assertEquals(out.stdout, "wasm");
  assert.match(out.stderr, /^wasm without BLAS: the BLAS library could not be loaded \(\/nonexistent\/libcblas\.so: /);
  const required = await child(START, ["--allow-ffi"], { LORA_BLAS: "on", LORA_BLAS_LIBRARY: "/nonexistent/x.so" });
  assert.ok(!required.success, "LORA_BLAS=on must fail without a library");
  assert.match(required.stderr, /wasm\+blas was asked for, but BLAS cannot be used: the BLAS library could not/);
});
