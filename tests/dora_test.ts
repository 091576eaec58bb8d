import * as tf from "@tensorflow/tfjs";
import {
  adapterFromFiles,
  adapterToFiles,
  addAdapter,
  addLoRA,
  applyMixedBatch,
  countParameters,
  decodeSafetensors,
  disableAdapters,
  DoRALayer,
  type DoRAOptions,
  enableAdapters,
  encodeSafetensors,
  initBackend,
  Linear,
  LinearWithAdapters,
  LinearWithDoRA,
  LinearWithDoRAMerged,
  loraLayers,
  magnitudeDirectionChange,
  mergeAdapter,
  mergeAndUnload,
  namedParameters,
  type NormAxis,
  setAdapter,
  trainableVariables,
  unmergeAdapter,
} from "../lib/mod.ts";
import {
  assert,
  assertBitIdentical,
  assertClose,
  assertEquals,
  assertNoLeak,
  assertThrows,
  maxAbsDiff,
} from "./assert.ts";
import { assertUnchanged, input, mlp, small, snapshot } from "./fixtures.ts";
import { TinyModel } from "./tiny_model.ts";

await initBackend();

const AXES: NormAxis[] = ["output", "input"];
/** Unit roundoff of float32, round to nearest: every add, multiply or divide is exact to within 2^-24 relative. */
const U = 2 ** -24;

/** Gives every DoRA adapter `name` of `model` a random B and a magnitude 0.5–1.5 times its start, as after training. */
function perturb(layers: [string, LinearWithAdapters][], name: string, seed: number): void {
  for (const [, layer] of layers) {
    const lora = layer.adapters.get(name);
    if (!(lora instanceof DoRALayer)) continue;
    const std = 1 / Math.sqrt(layer.linear.inFeatures) / lora.scaling;
    tf.tidy(() => {
      lora.B.assign(tf.randomNormal(lora.B.shape, 0, std, "float32", seed++));
      lora.m.assign(tf.mul(lora.m, tf.randomUniform(lora.m.shape, 0.5, 1.5, "float32", seed++)));
    });
  }
}

/** The same for one DoRA layer. */
function perturbLayer(lora: DoRALayer, inFeatures: number, seed: number): void {
  const std = 1 / Math.sqrt(inFeatures) / lora.scaling;
  tf.tidy(() => {
    lora.B.assign(tf.randomNormal(lora.B.shape, 0, std, "float32", seed));
    lora.m.assign(tf.mul(lora.m, tf.randomUniform(lora.m.shape, 0.5, 1.5, "float32", seed + 1)));
  });
}

// At the start ---------------------------------------------------------------------------------------------

Deno.test("DoRA at initialisation: every output bit-identical to the base (m / ‖W + 0‖ is exactly 1)", () => {
  // m and the forward pass's norm come from the same function of the same values, so their quotient is 1
  // exactly; multiplying by 1 and adding s·x·A·0 = 0 are exact in IEEE arithmetic. Bound: 0.
  const x = input(7, 30);
  for (const normAxis of AXES) {
    for (const detachNorm of [true, false]) {
      for (const init of ["tutorial", "kaiming", "gaussian"] as const) {
        const options: DoRAOptions = { normAxis, detachNorm, init, seed: 3 };
        const linear = new Linear(30, 12, { seed: 2 });
        const base = linear.apply(x);
        const what = `${normAxis}, detach ${detachNorm}, ${init}`;
        for (
          const layer of [new LinearWithDoRA(linear, 4, 8, options), new LinearWithDoRAMerged(linear, 4, 8, options)]
        ) {
          const y = layer.apply(x);
          assertBitIdentical(y, base, `${layer.constructor.name}, ${what}`);
          y.dispose();
          layer.lora.dispose();
        }
        base.dispose();
        linear.dispose();
      }
    }
  }
  x.dispose();
});

Deno.test("addLoRA({ useDora }) leaves the perceptron and a nested model bit-identical at the start", () => {
  const x = input(5, 784);
  const model = mlp();
  const before = model.apply(x);
  const dora = addLoRA(model.clone(), { rank: 4, alpha: 8, useDora: true, seed: 1 });
  const after = dora.apply(x);
  assertBitIdentical(after, before, "perceptron");

  const tokens = tf.randomNormal([2, 3, 6], 0, 1, "float32", 4);
  const tiny = new TinyModel();
  const tinyBefore = tiny.apply(tokens);
  addLoRA(tiny, { rank: 2, alpha: 4, useDora: true, targetModules: "all-linear", seed: 2 });
  assertEquals(loraLayers(tiny).length, 10); // 2 blocks × (q, v, out, mlp.0, mlp.2); lm_head left alone
  const tinyAfter = tiny.apply(tokens);
  assertBitIdentical(tinyAfter, tinyBefore, "nested model");
  tf.dispose([x, before, after, tokens, tinyBefore, tinyAfter]);
  model.dispose();
  dora.dispose();
  tiny.dispose();
});

Deno.test("DoRA adds one magnitude per output unit: +394 parameters on the perceptron (128 + 256 + 10)", () => {
  const lora = addLoRA(mlp(), { rank: 4, alpha: 8 });
  const dora = addLoRA(mlp(), { rank: 4, alpha: 8, useDora: true });
  const input = addLoRA(mlp(), { rank: 4, alpha: 8, useDora: true, normAxis: "input" });
  assertEquals(countParameters(dora).trainable - countParameters(lora).trainable, 128 + 256 + 10);
  assertEquals(countParameters(input).trainable - countParameters(lora).trainable, 784 + 128 + 256);
  assertEquals(namedParameters(dora).map((p) => p.name).slice(0, 5), [
    "layers.0.linear.weight",
    "layers.0.linear.bias",
    "layers.0.lora.A",
    "layers.0.lora.B",
    "layers.0.lora.m",
  ]);
  assert.match(
    String(dora),
    /\(lora\): DoRALayer\(in_dim=784, out_dim=128, rank=4, alpha=8, scaling=8, magnitude=\[128\]/,
  );
  for (const model of [lora, dora, input]) model.dispose();
});

// The detached norm ----------------------------------------------------------------------------------------

/** The layer's loss Σ G ⊙ y in float64, for given m, A, B (row-major arrays) and a fixed norm (or null: recompute). */
function referenceLoss(
  p: { x: number[][]; w: number[][]; bias: number[]; g: number[][]; s: number; axis: NormAxis },
  m: number[],
  a: number[][],
  b: number[][],
  fixedNorm: number[] | null,
): number {
  const [rows, inDim, outDim, rank] = [p.x.length, p.w.length, p.w[0].length, b.length];
  const v = p.w.map((row, i) =>
    row.map((wij, j) => {
      let d = 0;
      for (let k = 0; k < rank; k++) d += a[i][k] * b[k][j];
      return wij + p.s * d;
    })
  );
  const norm = fixedNorm ??
    (p.axis === "output"
      ? v[0].map((_, j) => Math.sqrt(v.reduce((sum, row) => sum + row[j] * row[j], 0)))
      : v.map((row) => Math.sqrt(row.reduce((sum, vij) => sum + vij * vij, 0))));
  let loss = 0;
  for (let n = 0; n < rows; n++) {
    for (let j = 0; j < outDim; j++) {
      let y = p.bias[j];
      for (let i = 0; i < inDim; i++) {
        const unit = p.axis === "output" ? j : i;
        y += p.x[n][i] * v[i][j] * m[unit] / norm[unit];
      }
      loss += p.g[n][j] * y;
    }
  }
  return loss;
}

Deno.test("DoRA gradients of m, A, B match central differences: norm held fixed when detached, moving when not", () => {
  // The loss is linear in m and in A and in B separately when the norm is fixed, so a central difference is
  // exact up to float64 rounding (about 1e-16·|loss|/h ≈ 1e-11 here, h = 1e-5); without the detach (the
  // reference for detachNorm: false) its truncation error is of order h² ≈ 1e-10. What is left is tfjs's
  // float32 gradient:
  // each entry is a sum of at most in·rows = 15 products, whose rounding error is below 20·2^-24 ≈ 1.2e-6 of
  // the sum of the magnitudes of its terms; 1e-5 of the largest gradient entry (plus 1e-6) covers it. Without
  // the detach the gradient of A and B gains the projection term of the paper's eq. 6, far larger than that.
  for (const axis of AXES) {
    const linear = new Linear(5, 4, { seed: 7 });
    for (const detachNorm of [true, false]) {
      const dora = new DoRALayer(linear, 2, 1.5, { normAxis: axis, detachNorm, seed: 8 });
      perturbLayer(dora, 5, 9);
      const x = input(3, 5, 11);
      const g = tf.randomNormal([3, 4], 0, 1, "float32", 12) as tf.Tensor2D;
      const { grads } = tf.variableGrads(
        () => tf.sum(tf.mul(dora.applyWithBase(linear, x), g)) as tf.Scalar,
        [dora.m, dora.A, dora.B],
      );
      const { grads: mergedGrads } = tf.variableGrads(
        () => tf.sum(tf.mul(tf.add(tf.matMul(x, dora.adaptedWeight(linear.weight)), linear.bias!), g)) as tf.Scalar,
        [dora.m, dora.A, dora.B],
      );
      const p = {
        x: x.arraySync() as number[][],
        w: linear.weight.arraySync() as number[][],
        bias: linear.bias!.arraySync() as number[],
        g: g.arraySync() as number[][],
        s: dora.scaling,
        axis,
      };
      const m0 = dora.m.arraySync() as number[];
      const a0 = dora.A.arraySync() as number[][];
      const b0 = dora.B.arraySync() as number[][];
      const n0 = tf.tidy(() => dora.weightNorm(linear.weight).arraySync() as number[]);
      // Recompute the fixed norm in float64 from the same float32 values.
      const v0 = p.w.map((row, i) =>
        row.map((w, j) => w + p.s * a0[i].reduce((sum, aik, k) => sum + aik * b0[k][j], 0))
      );
      const norm64 = axis === "output"
        ? v0[0].map((_, j) => Math.sqrt(v0.reduce((sum, row) => sum + row[j] ** 2, 0)))
        : v0.map((row) => Math.sqrt(row.reduce((sum, vij) => sum + vij ** 2, 0)));
      assert.ok(maxAbsDiff(n0, norm64) < 1e-5, "float32 norm agrees with float64");
      const h = 1e-5;
      const fd = (fixed: number[] | null) => ({
        m: m0.map((_, k) => {
          const [up, down] = [m0.slice(), m0.slice()];
          up[k] += h;
          down[k] -= h;
          return (referenceLoss(p, up, a0, b0, fixed) - referenceLoss(p, down, a0, b0, fixed)) / (2 * h);
        }),
        A: a0.flatMap((row, i) =>
          row.map((_, k) => {
            const [up, down] = [a0.map((r) => r.slice()), a0.map((r) => r.slice())];
            up[i][k] += h;
            down[i][k] -= h;
            return (referenceLoss(p, m0, up, b0, fixed) - referenceLoss(p, m0, down, b0, fixed)) / (2 * h);
          })
        ),
        B: b0.flatMap((row, k) =>
          row.map((_, j) => {
            const [up, down] = [b0.map((r) => r.slice()), b0.map((r) => r.slice())];
            up[k][j] += h;
            down[k][j] -= h;
            return (referenceLoss(p, m0, a0, up, fixed) - referenceLoss(p, m0, a0, down, fixed)) / (2 * h);
          })
        ),
      });
      const expected = fd(detachNorm ? norm64 : null);
      let worst = 0;
      const other = fd(detachNorm ? null : norm64);
      for (const [which, variable] of [["m", dora.m], ["A", dora.A], ["B", dora.B]] as const) {
        const want = expected[which];
        const tolerance = 1e-5 * Math.max(...want.map(Math.abs)) + 1e-6;
        for (
          const [form, got] of [["unmerged", grads[variable.name]], ["merged", mergedGrads[variable.name]]] as const
        ) {
          const error = maxAbsDiff(got.dataSync(), want);
          worst = Math.max(worst, error / tolerance);
          assert.ok(
            error <= tolerance,
            `${axis}, detach ${detachNorm}, ${form}: ∂L/∂${which} off by ${error} > ${tolerance}`,
          );
        }
        if (which !== "m") {
          // The check could fail: the other treatment of the norm gives a clearly different gradient.
          assert.ok(maxAbsDiff(want, other[which]) > 100 * tolerance, `${axis}: detaching should matter for ${which}`);
        }
      }
      console.log(`${axis}, detach ${detachNorm}: worst gradient error / tolerance = ${worst.toFixed(3)}`);
      tf.dispose([x, g, ...Object.values(grads), ...Object.values(mergedGrads)]);
      dora.dispose();
    }
    linear.dispose();
  }
});

// Merged, unmerged, merge and unmerge ------------------------------------------------------------------------

Deno.test("LinearWithDoRA equals LinearWithDoRAMerged (x·W′ + b) within 1e-5 after training-sized changes", () => {
  for (const normAxis of AXES) {
    const layer = new LinearWithDoRA(new Linear(40, 24, { seed: 1 }), 4, 2, { normAxis, seed: 2 });
    perturbLayer(layer.lora, 40, 5);
    const merged = new LinearWithDoRAMerged(new Linear(40, 24, { seed: 1 }), 4, 2, { normAxis, seed: 2 });
    merged.lora.dispose();
    merged.lora = layer.lora.clone();
    const x = input(9, 40);
    const [a, b] = [layer.apply(x), merged.apply(x)];
    assertClose(a, b, 1e-5, `${normAxis}: unmerged against merged`);
    assert.ok(maxAbsDiff(a, layer.linear.apply(x)) > 0.05, "the adapter changes the output");
    tf.dispose([x, a, b]);
    layer.dispose();
    merged.dispose();
  }
});

Deno.test("DoRA merge/unmerge round trip: every element of W within 2^-22·(|W| + |ΔW|) of where it started", () => {
  // W_merged = f·(W + ΔW), then W_merged / f − ΔW: four float32 roundings (add, multiply, divide, subtract) of
  // at most 2^-24 relative each give |error| ≤ 3·2^-24·|W + ΔW| + 2^-24·|W| ≤ 2^-22·(|W| + |ΔW|).
  for (const normAxis of AXES) {
    const layer = new LinearWithAdapters(new Linear(784, 128, { seed: 1 }), 8, 16, {
      normAxis,
      useDora: true,
      seed: 3,
    });
    perturbLayer(layer.lora as DoRALayer, 784, 2);
    const x = input(6, 784);
    const unmerged = layer.apply(x);
    const w = layer.linear.weight.dataSync().slice();
    const delta = layer.lora.deltaWeight();
    const d = delta.dataSync();
    delta.dispose();
    layer.merge();
    const merged = layer.apply(x);
    assertClose(merged, unmerged, 1e-5, `${normAxis}: merged model`);
    layer.unmerge();
    const back = layer.linear.weight.dataSync();
    let worst = 0, moved = 0;
    for (let i = 0; i < w.length; i++) {
      const bound = 4 * U * (Math.abs(w[i]) + Math.abs(d[i])) * (1 + 2 ** -20);
      const error = Math.abs(back[i] - w[i]);
      assert.ok(error <= bound, `${normAxis}, element ${i}: |${back[i]} − ${w[i]}| = ${error} > ${bound}`);
      worst = Math.max(worst, error / bound);
      if (error > 0) moved++;
    }
    console.log(`${normAxis}: ${moved} of ${w.length} elements moved; worst error / bound = ${worst.toFixed(3)}`);
    const again = layer.apply(x);
    assertClose(again, unmerged, 1e-5, `${normAxis}: after unmerge`);
    tf.dispose([x, unmerged, merged, again]);
    layer.dispose();
  }
});

Deno.test("DoRA among named adapters: select, disable, merge two, unmerge, mergeAndUnload", async () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2, seed: 1 });
  addAdapter(model, "dora", { rank: 3, alpha: 1, useDora: true, seed: 2 });
  perturb(loraLayers(model), "dora", 3);
  for (const [, layer] of loraLayers(model)) {
    tf.tidy(() => layer.adapters.get("default")!.B.assign(tf.randomNormal(layer.lora.B.shape, 0, 0.1, "float32", 4)));
  }
  assertEquals(trainableVariables(model).length, 6); // default's A and B in three layers
  setAdapter(model, "dora");
  assertEquals(trainableVariables(model).length, 9); // dora's A, B and m
  assertEquals(namedParameters(model).filter((p) => p.variable.trainable).map((p) => p.name).slice(0, 3), [
    "layers.0.lora_dora.A",
    "layers.0.lora_dora.B",
    "layers.0.lora_dora.m",
  ]);
  const x = input(8, 20);
  const base = small().apply(x);
  const withDora = model.apply(x);
  assert.ok(maxAbsDiff(withDora, base) > 1e-3);
  disableAdapters(model);
  const disabled = model.apply(x);
  assertBitIdentical(disabled, base, "disabled");
  enableAdapters(model);
  // Both merged, DoRA after LoRA, as PEFT allows: DoRA's norm is then taken of W + ΔW_default + ΔW_dora.
  const before = snapshot(model);
  mergeAdapter(model, "default");
  mergeAdapter(model, "dora");
  const both = model.apply(x);
  unmergeAdapter(model);
  for (const [name, values] of snapshot(model)) assert.ok(maxAbsDiff(values, before.get(name)!) < 1e-6, name);
  const unmergedAgain = model.apply(x);
  assertClose(unmergedAgain, withDora, 1e-6, "after unmerging both");
  // mergeAndUnload stores W′ and leaves plain layers that compute the same.
  await assertNoLeak(() => mergeAndUnload(model), -(6 + 9));
  assert.ok(model.layers[0] instanceof Linear);
  const unloaded = model.apply(x);
  assertClose(unloaded, withDora, 1e-5, "merged and unloaded");
  assert.ok(maxAbsDiff(both, withDora) > 1e-3, "merging both differs from DoRA alone");
  tf.dispose([x, base, withDora, disabled, both, unmergedAgain, unloaded]);
  model.dispose();
});

Deno.test("a mixed batch with DoRA adapters equals each row run with its adapter active, within 1e-5", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2, seed: 1 });
  addAdapter(model, "out", { rank: 2, alpha: 3, useDora: true, seed: 2 });
  addAdapter(model, "in", { rank: 2, alpha: 3, useDora: true, normAxis: "input", seed: 3 });
  perturb(loraLayers(model), "out", 4);
  perturb(loraLayers(model), "in", 40);
  for (const [, layer] of loraLayers(model)) {
    tf.tidy(() => layer.lora.B.assign(tf.randomNormal(layer.lora.B.shape, 0, 0.1, "float32", 5)));
  }
  const names = ["out", "default", "in", "__base__", "out", "in"];
  const x = input(names.length, 20);
  const mixed = applyMixedBatch(model, x, names);
  for (const name of ["default", "out", "in"]) {
    setAdapter(model, name);
    const alone = model.apply(x);
    names.forEach((n, row) => {
      if (n !== name) return;
      const [a, b] = [mixed.slice([row, 0], [1, -1]), alone.slice([row, 0], [1, -1])];
      assertClose(a, b, 1e-5, `row ${row} (${name})`);
      tf.dispose([a, b]);
    });
    alone.dispose();
  }
  tf.dispose([x, mixed]);
  model.dispose();
});

Deno.test("adding a DoRA adapter while merged, or PiSSA as a second adapter, is refused with nothing changed", () => {
  const model = addLoRA(small(), { rank: 2, alpha: 2, seed: 1 });
  mergeAdapter(model);
  const layer = loraLayers(model)[0][1];
  assertThrows(
    () => layer.addAdapter("d", 2, 2, { useDora: true }),
    Error,
    /merged into its base weight, from which a DoRA adapter starts/,
  );
  unmergeAdapter(model);
  const before = snapshot(model);
  assertThrows(
    () => addAdapter(model, "p", { rank: 2, alpha: 2, init: "pissa" }),
    Error,
    /already has adapters \("default"\); PiSSA replaces its base weight/,
  );
  assertThrows(
    () => layer.addAdapter("p", 2, 2, { init: "pissa" }),
    Error,
    /so it can only be a layer's first adapter/,
  );
  assertUnchanged(model, before);
  model.dispose();
});

// Adapter files --------------------------------------------------------------------------------------------

Deno.test("DoRA adapter file: PEFT's keys and config; save → load gives bit-identical A, B, m and outputs", async () => {
  const base = mlp(3);
  const tuned = addLoRA(base.clone(), { rank: 4, alpha: 8, useDora: true, seed: 4 });
  perturb(loraLayers(tuned), "default", 9);
  const files = await adapterToFiles(tuned);
  const { tensors } = decodeSafetensors(files.safetensors);
  assertEquals(
    [...tensors].filter(([key]) => key.includes("layers.4")).map(([key, t]) => `${key} [${t.shape}]`),
    [
      "base_model.model.layers.4.lora_A.weight [4,256]",
      "base_model.model.layers.4.lora_B.weight [10,4]",
      "base_model.model.layers.4.lora_magnitude_vector [10]",
    ],
  );
  const config = JSON.parse(files.config);
  assertEquals([config.use_dora, config.init_lora_weights, config.r, config.lora_alpha], [true, true, 4, 32]);
  await assertNoLeak(() => adapterFromFiles(base, files), 3 * 3); // A, B and m in three layers
  for (const [module, layer] of loraLayers(base)) {
    const original = loraLayers(tuned).find(([name]) => name === module)![1].lora as DoRALayer;
    assert.ok(layer.lora instanceof DoRALayer);
    assertBitIdentical(layer.lora.m, original.m, `${module} m`);
    assertBitIdentical(layer.lora.A, original.A, `${module} A`);
    assertBitIdentical(layer.lora.B, original.B, `${module} B`);
  }
  const x = input(6, 784);
  const [a, b] = [tuned.apply(x), base.apply(x)];
  assertBitIdentical(b, a, "outputs");
  tf.dispose([x, a, b]);
  tuned.dispose();
  base.dispose();
});

Deno.test("a DoRA file in PEFT's layout without this library's metadata loads (magnitude with .weight too)", () => {
  // What PEFT writes for a 20-16-12-5 perceptron with r = 2, lora_alpha = 6 (scaling 3), use_dora, on layers.2.
  const [r, alpha] = [2, 6];
  const a = tf.randomNormal([r, 16], 0, 0.3, "float32", 1); // lora_A.weight [r, in]
  const b = tf.randomNormal([12, r], 0, 0.3, "float32", 2); // lora_B.weight [out, r]
  const m = tf.randomUniform([12], 0.5, 2, "float32", 3); // lora_magnitude_vector [out]
  for (const suffix of ["", ".weight"]) {
    const tensors = new Map([
      ["base_model.model.layers.2.lora_A.weight", { shape: [r, 16], data: a.dataSync() as Float32Array }],
      ["base_model.model.layers.2.lora_B.weight", { shape: [12, r], data: b.dataSync() as Float32Array }],
      [`base_model.model.layers.2.lora_magnitude_vector${suffix}`, { shape: [12], data: m.dataSync() as Float32Array }],
    ]);
    const config = {
      alpha_pattern: {},
      auto_mapping: null,
      base_model_name_or_path: null,
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      init_lora_weights: true,
      layers_to_transform: null,
      lora_alpha: alpha,
      lora_dropout: 0.0,
      peft_type: "LORA",
      r,
      rank_pattern: {},
      target_modules: ["layers.2"],
      task_type: null,
      use_dora: true,
      use_rslora: false,
    };
    const model = small();
    adapterFromFiles(model, {
      safetensors: encodeSafetensors(tensors, { format: "pt" }),
      config: JSON.stringify(config),
    });
    const layer = loraLayers(model)[0][1];
    assert.ok(layer.lora instanceof DoRALayer);
    assertEquals([layer.lora.scaling, layer.lora.convention, layer.lora.normAxis], [3, "paper", "output"]);
    // The expected layer, built by hand: PEFT's W′ = m·(W + s·BA)/‖W + s·BA‖ per output unit, in [in, out].
    const expected = tf.tidy(() => {
      const v = tf.add(layer.linear.weight, tf.mul(tf.matMul(tf.transpose(a), tf.transpose(b)), 3));
      return tf.mul(v, tf.div(m, tf.norm(v, "euclidean", 0)));
    });
    const got = layer.lora.adaptedWeight(layer.linear.weight);
    assertClose(got, expected, 1e-6, `W′ (magnitude key with "${suffix}")`);
    tf.dispose([expected, got]);
    model.dispose();
  }
  tf.dispose([a, b, m]);
});

Deno.test("bad DoRA files and adapters: clear errors, the model exactly as it was, nothing leaked", async () => {
  const tuned = addLoRA(small(), { rank: 2, alpha: 2, useDora: true, seed: 1 });
  const good = await adapterToFiles(tuned);
  const edit = (f: (t: Map<string, { shape: number[]; data: Float32Array }>) => void) => {
    const { tensors, metadata } = decodeSafetensors(good.safetensors);
    f(tensors);
    return { safetensors: encodeSafetensors(tensors, metadata), config: good.config };
  };
  const cases: [string, ReturnType<typeof edit>, new (...args: never[]) => Error, RegExp][] = [
    [
      "magnitude of the wrong shape",
      edit((t) =>
        t.set("base_model.model.layers.2.lora_magnitude_vector", { shape: [16], data: new Float32Array(16) })
      ),
      RangeError,
      /layers.2 has 12 output units, so its lora_magnitude_vector must have shape \[12\]; the file has \[16\]/,
    ],
    [
      "magnitude as a column",
      edit((t) =>
        t.set("base_model.model.layers.4.lora_magnitude_vector", { shape: [5, 1], data: new Float32Array(5) })
      ),
      RangeError,
      /must have shape \[5\]; the file has \[5,1\]/,
    ],
    [
      "missing magnitude",
      edit((t) => t.delete("base_model.model.layers.0.lora_magnitude_vector")),
      Error,
      /missing key "base_model.model.layers.0.lora_magnitude_vector": the config sets use_dora/,
    ],
    [
      "two magnitude keys",
      edit((t) =>
        t.set("base_model.model.layers.0.lora_magnitude_vector.weight", { shape: [16], data: new Float32Array(16) })
      ),
      Error,
      /layers.0 has two magnitude keys/,
    ],
    [
      "magnitude without use_dora",
      { ...good, config: good.config.replace('"use_dora": true', '"use_dora": false') },
      Error,
      /unexpected key "base_model\.model\.layers\.0\.lora_magnitude_vector" in a LoRA file/,
    ],
    [
      "an initialisation that changed the base weight",
      { ...good, config: good.config.replace('"init_lora_weights": true', '"init_lora_weights": "olora"') },
      Error,
      /init_lora_weights "olora"; this library reads true, false, "gaussian", "eva", "pissa"/,
    ],
  ];
  for (const [what, files, type, message] of cases) {
    const model = small();
    const before = snapshot(model);
    await assertNoLeak(() => assertThrows(() => adapterFromFiles(model, files), type, message));
    assertUnchanged(model, before);
    assert.ok(model.layers[0] instanceof Linear, what);
    model.dispose();
  }
  tuned.dispose();

  const input = addLoRA(small(), { rank: 2, alpha: 2, useDora: true, normAxis: "input" });
  await assert.rejects(() => adapterToFiles(input), /normAxis "input".*cannot be saved/);
  input.dispose();
  const mixed = addLoRA(small(), { rank: 2, alpha: 2, targetModules: ["layers.0"] });
  addAdapter(mixed, "x", { rank: 2, alpha: 2, targetModules: ["layers.0"] });
  addAdapter(mixed, "x", { rank: 2, alpha: 2, targetModules: ["layers.2"], useDora: true });
  await assert.rejects(
    () => adapterToFiles(mixed, "x"),
    /is LoRA in layers.0 but DoRA in layers.2; a PEFT file holds one kind/,
  );
  mixed.dispose();
});

// Leaks ------------------------------------------------------------------------------------------------------

Deno.test("DoRA forward, backward, merge and unmerge leave no tensors behind", async () => {
  const layer = new LinearWithAdapters(new Linear(12, 6, { seed: 1 }), 2, 2, { useDora: true });
  const merged = new LinearWithDoRAMerged(new Linear(12, 6, { seed: 1 }), 2, 2, {
    normAxis: "input",
    detachNorm: false,
  });
  const x = input(4, 12);
  await assertNoLeak(() => {
    tf.dispose(layer.apply(x));
    tf.dispose(merged.apply(x));
    const vars = [...trainableVariables(layer), ...trainableVariables(merged)];
    const { value, grads } = tf.variableGrads(
      () => tf.add(tf.sum(layer.apply(x)), tf.sum(merged.apply(x))) as tf.Scalar,
      vars,
    );
    tf.dispose([value, ...Object.values(grads)]);
    layer.merge();
    layer.unmerge();
    layer.clone().dispose();
  });
  tf.dispose(x);
  layer.dispose();
  merged.dispose();
});

// The paper's measure ----------------------------------------------------------------------------------------

Deno.test("magnitudeDirectionChange: ΔM and ΔD as the paper's eqs. 3–4, per output column", () => {
  const w0 = tf.tensor2d([[3, 0, 1], [4, 1, 0]]); // columns (3, 4), (0, 1), (1, 0): lengths 5, 1, 1
  const w = tf.tensor2d([[6, 0, 0], [8, -2, 1]]); // lengths 10, 2, 1; cosines 1, −1, 0
  const { deltaM, deltaD } = magnitudeDirectionChange(w0, w);
  assert.ok(Math.abs(deltaM - (5 + 1 + 0) / 3) < 1e-12);
  assert.ok(Math.abs(deltaD - (0 + 2 + 1) / 3) < 1e-12);
  assertThrows(
    () => magnitudeDirectionChange(w0, tf.zeros([3, 2]) as tf.Tensor2D),
    RangeError,
    /same \[in, out\] shape/,
  );
  tf.dispose([w0, w]);
});

Deno.test("DoRA refuses a unit with all-zero weights and a bad normAxis, leaking nothing", async () => {
  const linear = new Linear(4, 3, { seed: 1 });
  tf.tidy(() => linear.weight.assign(tf.tensor2d([[1, 0, 2], [1, 0, 2], [1, 0, 2], [1, 0, 2]])));
  await assertNoLeak(() =>
    assertThrows(
      () => new DoRALayer(linear, 1, 1),
      RangeError,
      /output unit\(s\) 1 of this 4→3 layer have all-zero weights/,
    )
  );
  await assertNoLeak(() =>
    assertThrows(() => new DoRALayer(linear, 1, 1, { normAxis: "rows" as NormAxis }), RangeError, /"output" or "input"/)
  );
  linear.dispose();
});
