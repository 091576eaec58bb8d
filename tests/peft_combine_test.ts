import * as tf from "@tensorflow/tfjs";
import {
  adapterFromFiles,
  adapterToFiles,
  addAdapter,
  addWeightedAdapter,
  applyMixedBatch,
  COMBINATION_TYPES,
  type CombinationType,
  deleteAdapter,
  disableAdapters,
  enableAdapters,
  initBackend,
  LinearWithAdapters,
  listAdapters,
  loadAdapter,
  type LoRALayer,
  loraLayers,
  mergeAdapter,
  mergeTaskTensors,
  type Module,
  MultilayerPerceptron,
  saveAdapter,
  setAdapter,
  svd,
  unmergeAdapter,
  type WeightedAdapterOptions,
} from "../lib/mod.ts";
import { assert, assertBitIdentical, assertClose, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";
import { assertUnchanged, input, randomize, small, snapshot } from "./fixtures.ts";

await initBackend();

/** float32's unit roundoff, 2⁻²⁴. */
const U32 = 2 ** -24;

/** A row-major float64 matrix. */
interface Matrix {
  rows: number;
  cols: number;
  data: Float64Array;
}

/** `scale · a·b` in float64, for row-major `a` (`[m, r]`) and `b` (`[r, n]`). */
function product(a: ArrayLike<number>, b: ArrayLike<number>, m: number, r: number, n: number, scale = 1) {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let k = 0; k < r; k++) for (let j = 0; j < n; j++) out[i * n + j] += scale * a[i * r + k] * b[k * n + j];
  }
  return out;
}

/** `scale · Aₓ·Bᵧ` of two adapters of one layer (default: one adapter's own update `s·A·B`), in float64. */
function update(x: LoRALayer, scale = x.scaling, y: LoRALayer = x): Matrix {
  const [m, r] = x.A.shape, n = y.outDim;
  return { rows: m, cols: n, data: product(x.A.dataSync(), y.B.dataSync(), m, r, n, scale) };
}

/** `|A|·|B|` of `lora` (float64): what bounds the rounding error of the float32 product `A·B`. */
function absProduct(lora: LoRALayer): Float64Array {
  const abs = (t: tf.Variable) => Float64Array.from(t.dataSync(), Math.abs);
  return product(abs(lora.A), abs(lora.B), lora.inDim, lora.rank, lora.outDim);
}

/** The weighted sum of updates `Σ wᵢ·sᵢ·Aᵢ·Bᵢ` in the layer `module`, over the sources that layer has. */
function weightedSum(model: Module, module: string, names: string[], weights: number[]): Matrix {
  const layer = loraLayers(model).find(([name]) => name === module)![1];
  const { inFeatures: m, outFeatures: n } = layer.linear;
  const data = new Float64Array(m * n);
  names.forEach((name, i) => {
    const lora = layer.adapters.get(name);
    if (lora !== undefined) update(lora, weights[i] * lora.scaling).data.forEach((v, j) => (data[j] += v));
  });
  return { rows: m, cols: n, data };
}

/** The update the layer `module` computes for adapter `name` (`deltaWeight`, float32) as float64. */
function computed(model: Module, module: string, name: string): Float64Array {
  const lora = loraLayers(model).find(([m]) => m === module)![1].adapters.get(name)!;
  const delta = lora.deltaWeight();
  const values = Float64Array.from(delta.dataSync());
  delta.dispose();
  return values;
}

const frobenius = (x: ArrayLike<number>) => Math.sqrt(Array.from(x).reduce((s, v) => s + v * v, 0));
const gap = (a: ArrayLike<number>, b: ArrayLike<number>) => frobenius(Array.from(a, (v, i) => v - b[i]));
const asRows = ({ rows, cols, data }: Matrix) =>
  Array.from({ length: rows }, (_, i) => Array.from(data.subarray(i * cols, (i + 1) * cols)));

/**
 * The small perceptron (20→16→12→5) with three adapters in three scaling conventions, B randomized:
 * "a" rank 2, tutorial alpha 3 (s = 3), on every layer; "b" rank 1, paper alpha 4 (s = 4), on every layer;
 * "c" rank 2, rslora alpha 2 (s = √2), on layers.4 only (as a customer who only relabels outputs).
 */
function threeAdapters(): MultilayerPerceptron {
  const model = small(3);
  addAdapter(model, "a", { rank: 2, alpha: 3, seed: 10 });
  addAdapter(model, "b", { rank: 1, alpha: 4, scaling: "paper", seed: 20 });
  addAdapter(model, "c", { rank: 2, alpha: 2, scaling: "rslora", seed: 30, targetModules: ["layers.4"] });
  randomize(model, "a", 1);
  randomize(model, "b", 11);
  randomize(model, "c", 21);
  return model;
}

const MODULES = ["layers.0", "layers.2", "layers.4"];

// cat, linear, svd ------------------------------------------------------------------------------------------

Deno.test("cat is exact: ΔW = Σ wᵢ·sᵢ·Aᵢ·Bᵢ within float32 rounding of the product, across conventions", () => {
  const model = threeAdapters();
  const names = ["a", "b", "c"], weights = [0.7, -1.5, 2];
  addWeightedAdapter(model, names, weights, "mix", { combinationType: "cat" });
  for (const module of MODULES) {
    const lora = loraLayers(model).find(([m]) => m === module)![1].adapters.get("mix")!;
    // New rank = 2 + 1 + 2 everywhere (layers without "c" are padded with zeros), scaling 1 in the
    // convention of the first source.
    assertEquals([lora.rank, lora.convention, lora.alpha, lora.scaling], [5, "tutorial", 1, 1]);
    // Bound: A' = fl(wᵢsᵢAᵢ) carries one rounding (≤ u relative), and the float32 product of rank R adds at most
    // γ_R = R·u/(1 − R·u) of |A'|·|B'| (Higham, Accuracy and Stability, §3.1); together ≤ (R + 2)·u·(|A'|·|B'|).
    const expected = weightedSum(model, module, names, weights).data;
    const got = computed(model, module, "mix");
    const bound = absProduct(lora).map((v) => (lora.rank + 2) * U32 * v);
    const worst = got.reduce((most, v, i) => Math.max(most, Math.abs(v - expected[i]) / (bound[i] || 1)), 0);
    assert.ok(worst <= 1, `${module}: error ${worst.toFixed(3)} × the bound`);
    assert.ok(frobenius(expected) > 0.1, `${module}: a sum worth testing`);
  }
  model.dispose();
});

Deno.test("cat beyond min(in, out): that layer holds the exact sum at rank min(in, out); files keep every rank", async () => {
  const model = small(4);
  addAdapter(model, "p", { rank: 3, alpha: 2, seed: 1 });
  addAdapter(model, "q", { rank: 4, alpha: 1, seed: 2 });
  randomize(model, "p", 5);
  randomize(model, "q", 15);
  addWeightedAdapter(model, ["p", "q"], [1, 1], "pq", { combinationType: "cat" });
  // 3 + 4 = 7 fits 20×16 and 16×12; the 12×5 layer allows rank 5, enough for any 12×5 matrix.
  assertEquals(loraLayers(model).map(([, layer]) => layer.adapters.get("pq")!.rank), [7, 7, 5]);
  for (const module of MODULES) {
    const expected = weightedSum(model, module, ["p", "q"], [1, 1]);
    const relative = gap(computed(model, module, "pq"), expected.data) / frobenius(expected.data);
    assert.ok(relative < 1e-6, `${module}: relative error ${relative}`);
  }
  // Layers of different ranks are written with PEFT's rank_pattern and alpha_pattern, and read back exactly.
  const files = await adapterToFiles(model, "pq");
  const config = JSON.parse(files.config);
  assertEquals([config.r, config.rank_pattern], [7, { "layers.4": 5 }]);
  const served = small(4);
  adapterFromFiles(served, files, "pq");
  for (const module of MODULES) {
    assertEquals(gap(computed(served, module, "pq"), computed(model, module, "pq")), 0, `${module} after reload`);
  }
  served.dispose();
  model.dispose();
});

Deno.test("linear: A = Σ sign(cᵢ)√|cᵢ|·Aᵢ, B = Σ √|cᵢ|·Bᵢ; with two sources that includes cross terms", () => {
  const model = small(5);
  addAdapter(model, "a", { rank: 2, alpha: 3, seed: 1 });
  addAdapter(model, "b", { rank: 2, alpha: 8, scaling: "paper", seed: 2 }); // s = 4
  randomize(model, "a", 7);
  randomize(model, "b", 17);
  const weights = [0.5, -2];
  addWeightedAdapter(model, ["a", "b"], weights, "lin", { combinationType: "linear" });
  for (const [module, layer] of loraLayers(model)) {
    const [a, b, lin] = ["a", "b", "lin"].map((n) => layer.adapters.get(n)!);
    const [ca, cb] = [weights[0] * a.scaling, weights[1] * b.scaling];
    const expectA = tf.tidy(() => tf.add(tf.mul(a.A, Math.sqrt(ca)), tf.mul(b.A, -Math.sqrt(-cb))));
    const expectB = tf.tidy(() => tf.add(tf.mul(a.B, Math.sqrt(ca)), tf.mul(b.B, Math.sqrt(-cb))));
    assertClose(lin.A, expectA, 1e-6, `${module} A`);
    assertClose(lin.B, expectB, 1e-6, `${module} B`);
    // A'B' = ca·AaBa + cb·AbBb + √|ca·cb|·(AaBb − AbBa) (cb < 0 puts the minus sign on Ab): the weighted sum
    // plus cross terms, which are not small.
    const sum = weightedSum(model, module, ["a", "b"], weights).data;
    const k = Math.sqrt(Math.abs(ca * cb));
    const [aAbB, bAaB] = [update(a, k, b).data, update(b, k, a).data];
    const cross = aAbB.map((v, i) => v - bAaB[i]);
    const got = computed(model, module, "lin");
    const withCross = sum.map((v, i) => v + cross[i]);
    assert.ok(gap(got, withCross) < 1e-5 * frobenius(withCross), `${module}: ΔW = sum + cross terms`);
    assert.ok(gap(got, sum) > 0.1 * frobenius(sum), `${module}: the cross terms make linear differ from the sum`);
    tf.dispose([expectA, expectB]);
  }
  model.dispose();
});

Deno.test("svd: exact at full rank (no squared scaling); truncation meets Eckart–Young; A has orthonormal columns", () => {
  const model = small(6);
  addAdapter(model, "a", { rank: 2, alpha: 3, seed: 1 }); // s = 3: PEFT would scale this one by 9
  addAdapter(model, "b", { rank: 2, alpha: 0.5, scaling: "rslora", seed: 2 });
  randomize(model, "a", 3);
  randomize(model, "b", 13);
  const names = ["a", "b"], weights = [1.2, -0.8];
  for (const svdRank of [4, 3, 2, 1]) {
    const name = `svd${svdRank}`;
    addWeightedAdapter(model, names, weights, name, { combinationType: "svd", svdRank });
    for (const module of MODULES) {
      const lora = loraLayers(model).find(([m]) => m === module)![1].adapters.get(name)!;
      assertEquals([lora.rank, lora.scaling], [svdRank, 1]);
      const target = weightedSum(model, module, names, weights);
      const got = computed(model, module, name);
      // Rounding: A' and B' rounded to float32 (one u each) and the float32 product (γ_R), ≤ (R + 2)·u·|A'||B'|.
      const rounding = frobenius(absProduct(lora).map((v) => (svdRank + 2) * U32 * v));
      const { s } = svd(asRows(target));
      const dropped = Math.sqrt(s.slice(svdRank).reduce((sum, x) => sum + x * x, 0));
      const error = gap(got, target.data);
      assert.ok(
        Math.abs(error - dropped) <= rounding + 1e-12 * frobenius(target.data),
        `${module} rank ${svdRank}: ‖ΔW' − ΣwΔW‖ = ${error}, Eckart–Young ${dropped}, rounding ≤ ${rounding}`,
      );
      if (svdRank === 4) assert.ok(dropped < 1e-12 * s[0], "rank 2 + 2: full rank reproduces the sum");
      else assert.ok(dropped > 1e-3 * s[0], "a truncation that drops something");
      // All singular values go to B: AᵀA = I.
      const gram = tf.tidy(() => tf.sub(tf.matMul(lora.A, lora.A, true, false), tf.eye(svdRank)));
      assert.ok(tf.max(tf.abs(gram)).dataSync()[0] < 1e-6, `${module}: AᵀA = I`);
      gram.dispose();
    }
  }
  model.dispose();
});

Deno.test("different target modules: the new adapter covers their union; absent sources are skipped", () => {
  const model = threeAdapters(); // "c" covers layers.4 only
  addWeightedAdapter(model, ["c"], [3], "c3", { combinationType: "linear" });
  assertEquals(loraLayers(model).map(([m, layer]) => `${m}:${layer.adapters.has("c3")}`), [
    "layers.0:false",
    "layers.2:false",
    "layers.4:true",
  ]);
  addWeightedAdapter(model, ["c", "a"], [1, 1], "ca", { combinationType: "linear" });
  assert.ok(loraLayers(model).every(([, layer]) => layer.adapters.has("ca")));
  // In layers.0 only "a" is present: linear with one source there is exactly w·ΔW.
  const expected = weightedSum(model, "layers.0", ["a"], [1]).data;
  assert.ok(gap(computed(model, "layers.0", "ca"), expected) < 1e-6 * frobenius(expected));
  model.dispose();
});

// TIES, DARE, magnitude pruning -------------------------------------------------------------------------------

Deno.test("TIES on a hand-made example: trim, elect sign, disjoint mean (ties and ties_svd, total and frequency)", () => {
  // Three task matrices of a 2→3 layer (ΔW is [in, out] = 2×3), density 0.5, so each keeps ⌊0.5·6⌋ = 3 entries:
  //   T1 = [[ 4, −1, 0.5], [−3,  2, 0.1]]  keeps 4, −3, 2       → [[ 4, 0, 0], [−3,  2, 0]]
  //   T2 = [[ 2,  3, −0.2], [ 1, −5, 0.3]]  keeps −5, 3, 2       → [[ 2, 3, 0], [ 0, −5, 0]]
  //   T3 = [[−7, 1.5, 2], [0.5, 0.2, −1]]  keeps −7, 2, 1.5     → [[−7, 1.5, 2], [ 0,  0, 0]]
  // "total" elects the sign of the sum of the trimmed values; the entries that share it are averaged:
  //   (0,0): 4 + 2 − 7 = −1 → −, only −7 agrees → −7     (0,1): 3 + 1.5 > 0 → +, (3 + 1.5)/2 = 2.25
  //   (0,2): 2 → +, 2                                     (1,0): −3 → −, −3
  //   (1,1): 2 − 5 = −3 → −, −5                           (1,2): 0 → + (a tie elects +), nothing agrees → 0
  // "frequency" elects by counting signs instead:
  //   (0,0): +, +, − → +, (4 + 2)/2 = 3                   (1,1): +, − → a tie → +, 2       (the rest as above)
  const tasks = [[4, -1, 0.5, -3, 2, 0.1], [2, 3, -0.2, 1, -5, 0.3], [-7, 1.5, 2, 0.5, 0.2, -1]];
  const byHand = { total: [-7, 2.25, 2, -3, -5, 0], frequency: [3, 2.25, 2, -3, 2, 0] };
  for (const method of ["total", "frequency"] as const) {
    const merged = mergeTaskTensors("ties", tasks.map((t) => Float64Array.from(t)), [1, 1, 1], {
      density: 0.5,
      majoritySignMethod: method,
    });
    assertEquals(Array.from(merged), byHand[method]);
  }
  // The same through addWeightedAdapter: A = I (2×2), B = Tᵢ, scaling 1, so ΔWᵢ = Tᵢ. ties_svd merges the ΔWᵢ
  // and keeps rank 2 = min(2, 3): exact. ties merges the A's (trimmed to their two 1s, all agree: I again) and the
  // B's (the example above), so it gives the same ΔW.
  const net = new MultilayerPerceptron(2, 3, 3, 2, { seed: 1 });
  tasks.forEach((t, i) => {
    addAdapter(net, `t${i}`, { rank: 2, alpha: 1, targetModules: ["layers.0"] });
    const lora = loraLayers(net)[0][1].adapters.get(`t${i}`)!;
    lora.A.assign(tf.tidy(() => tf.eye(2)));
    tf.tidy(() => lora.B.assign(tf.tensor2d(t, [2, 3])));
  });
  for (const method of ["total", "frequency"] as const) {
    for (const combinationType of ["ties", "ties_svd"] as const) {
      const name = `${combinationType}_${method}`;
      addWeightedAdapter(net, ["t0", "t1", "t2"], [1, 1, 1], name, {
        combinationType,
        density: 0.5,
        majoritySignMethod: method,
      });
      const got = computed(net, "layers.0", name);
      assert.ok(got.every((v, i) => Math.abs(v - byHand[method][i]) < 1e-6), `${name}: ${got}`);
    }
  }
  net.dispose();
});

Deno.test("DARE: a seed repeats exactly; kept entries are divided by the density, about density of them kept", () => {
  const model = small(8);
  addAdapter(model, "a", { rank: 4, alpha: 1, seed: 1 }); // s = 1 and w = 1: the weights √(w·s) are 1
  addAdapter(model, "b", { rank: 4, alpha: 2, seed: 2 });
  randomize(model, "a", 4);
  randomize(model, "b", 14);
  const density = 0.3;
  addWeightedAdapter(model, ["a"], [1], "d1", { combinationType: "dare_linear", density, seed: 42 });
  addWeightedAdapter(model, ["a"], [1], "d2", { combinationType: "dare_linear", density, seed: 42 });
  addWeightedAdapter(model, ["a"], [1], "d3", { combinationType: "dare_linear", density, seed: 43 });
  for (const combinationType of ["dare_ties", "dare_ties_svd", "dare_linear_svd"] as const) {
    addWeightedAdapter(model, ["a", "b"], [1, 0.5], `${combinationType}1`, { combinationType, density, seed: 7 });
    addWeightedAdapter(model, ["a", "b"], [1, 0.5], `${combinationType}2`, { combinationType, density, seed: 7 });
  }
  let kept = 0, total = 0;
  for (const [module, layer] of loraLayers(model)) {
    const [a, d1, d2, d3] = ["a", "d1", "d2", "d3"].map((n) => layer.adapters.get(n)!);
    assertBitIdentical(d2.A, d1.A, `${module}: same seed, same A`);
    assertBitIdentical(d2.B, d1.B, `${module}: same seed, same B`);
    assert.ok(!tf.util.arraysEqual(d1.A.dataSync(), d3.A.dataSync()), `${module}: another seed, another mask`);
    for (const combinationType of ["dare_ties", "dare_ties_svd", "dare_linear_svd"]) {
      const [x, y] = [1, 2].map((k) => layer.adapters.get(`${combinationType}${k}`)!);
      assertBitIdentical(x.A, y.A, `${module} ${combinationType} A`);
      assertBitIdentical(x.B, y.B, `${module} ${combinationType} B`);
    }
    for (const [source, pruned] of [[a.A, d1.A], [a.B, d1.B]]) {
      const [s, p] = [source.dataSync(), pruned.dataSync()];
      p.forEach((v, i) => {
        if (v === 0) return;
        kept++;
        // v = fl(s/density): within one float32 rounding of the exact quotient.
        assert.ok(Math.abs(v - s[i] / density) <= U32 * Math.abs(s[i] / density), `${module}: ${v} vs ${s[i]}`);
      });
      total += p.length;
      assert.ok(s.every((v) => v !== 0), "source entries are non-zero, so 0 means dropped");
    }
  }
  // 1,620 entries (A and B of three layers): the kept share has a standard deviation of √(0.3·0.7/1620) = 0.011.
  assert.ok(Math.abs(kept / total - density) < 0.05, `kept ${kept} of ${total}`);
  model.dispose();
});

Deno.test("magnitude_prune keeps the top ⌊density·n⌋ entries by magnitude (of A and B; of ΔW with _svd)", () => {
  const model = small(9);
  addAdapter(model, "a", { rank: 4, alpha: 1, seed: 1 });
  randomize(model, "a", 2);
  const density = 0.25;
  addWeightedAdapter(model, ["a"], [4], "mp", { combinationType: "magnitude_prune", density });
  // svdRank 5 = min(12, 5) is full rank in layers.4 (the most a rank can be there), so in that layer the _svd
  // result is the pruned ΔW itself.
  addWeightedAdapter(model, ["a"], [1], "mps", { combinationType: "magnitude_prune_svd", density, svdRank: 5 });
  for (const [module, layer] of loraLayers(model)) {
    const [a, mp] = [layer.adapters.get("a")!, layer.adapters.get("mp")!];
    for (const [source, pruned] of [[a.A, mp.A], [a.B, mp.B]]) {
      const [s, p] = [source.dataSync(), pruned.dataSync()];
      const keep = Math.floor(density * s.length);
      const keptIdx = [...p.keys()].filter((i) => p[i] !== 0);
      assertEquals(keptIdx.length, keep, `${module}: ⌊${density}·${s.length}⌋ kept`);
      const smallestKept = Math.min(...keptIdx.map((i) => Math.abs(s[i])));
      const largestDropped = Math.max(...[...s.keys()].filter((i) => p[i] === 0).map((i) => Math.abs(s[i])));
      assert.ok(smallestKept >= largestDropped, `${module}: kept the largest`);
      // Weight 4, scaling 1: both factors are multiplied by √4 = 2 (exact in float32).
      assert.ok(keptIdx.every((i) => p[i] === 2 * s[i]), `${module}: kept entries are 2·original`);
    }
    if (module !== "layers.4") continue;
    const delta = update(a).data;
    const keep = Math.floor(density * delta.length);
    const threshold = [...delta].map(Math.abs).sort((x, y) => y - x)[keep - 1];
    const got = computed(model, module, "mps");
    const tolerance = 1e-5 * Math.max(...delta.map(Math.abs));
    delta.forEach((v, i) => {
      const expected = Math.abs(v) >= threshold ? v : 0;
      assert.ok(Math.abs(got[i] - expected) < tolerance, `${module}[${i}]: ${got[i]} vs ${expected}`);
    });
  }
  model.dispose();
});

// An ordinary adapter -----------------------------------------------------------------------------------------

Deno.test("the combined adapter switches, merges, saves as PEFT files and serves in a mixed batch", async () => {
  const model = threeAdapters();
  addWeightedAdapter(model, ["a", "b", "c"], [1, 1, 1], "all", { combinationType: "cat" });
  addWeightedAdapter(model, ["a", "b"], [1, 0.5], "svd", { combinationType: "svd", svdRank: 2 });
  const x = input(6, 20);

  // Switch: the output is the base layers plus the new A·B (scaling 1), layer by layer.
  setAdapter(model, "all");
  const active = model.apply(x);
  const expected = tf.tidy(() =>
    model.layers.reduce((h: tf.Tensor, layer) => {
      if (!(layer instanceof LinearWithAdapters)) return layer.apply(h);
      const lora = layer.adapters.get("all")!;
      return tf.add(layer.linear.apply(h), tf.matMul(tf.matMul(h, lora.A), lora.B));
    }, x)
  );
  assertClose(active, expected, 1e-5, "active combined adapter");

  // Merge and unmerge.
  mergeAdapter(model, "all");
  const merged = model.apply(x);
  assertClose(merged, active, 1e-5, "merged");
  unmergeAdapter(model);

  // Save in PEFT's format and load into a fresh copy of the base: same factors, and PEFT's scaling is 1.
  const dir = await Deno.makeTempDir({ dir: "data" });
  try {
    await saveAdapter(model, dir, "all");
    const config = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    assertEquals([config.r, config.lora_alpha / config.r, config.use_rslora], [5, 1, false]);
    const fresh = small(3);
    await loadAdapter(fresh, dir, "all");
    for (const [module, layer] of loraLayers(fresh)) {
      const original = loraLayers(model).find(([m]) => m === module)![1].adapters.get("all")!;
      assertBitIdentical(layer.adapters.get("all")!.A, original.A, `${module} A`);
      assertBitIdentical(layer.adapters.get("all")!.B, original.B, `${module} B`);
    }
    const reloaded = fresh.apply(x);
    assertBitIdentical(reloaded, active, "reloaded model");
    tf.dispose(reloaded);
    fresh.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  // Mixed batch: each row equals the model run with that row's adapter active.
  const names = ["all", "a", "__base__", "svd", "all", "c"];
  const mixed = applyMixedBatch(model, x, names);
  for (const [row, name] of names.entries()) {
    if (name === "__base__") disableAdapters(model);
    else setAdapter(model, name);
    const one = x.slice([row, 0], [1, 20]);
    const [own, fromMixed] = [model.apply(one), mixed.slice([row, 0], [1, 5])];
    enableAdapters(model);
    assertClose(fromMixed, own, 1e-5, `row ${row} (${name})`);
    tf.dispose([one, own, fromMixed]);
  }
  tf.dispose([x, active, expected, merged, mixed]);
  model.dispose();
});

Deno.test("paper and rslora sources: the new adapter keeps that convention with scaling 1, in PEFT's file too", async () => {
  for (const scaling of ["paper", "rslora"] as const) {
    const model = small(2);
    addAdapter(model, "a", { rank: 3, alpha: 6, scaling, seed: 1 });
    addAdapter(model, "b", { rank: 2, alpha: 1, seed: 2 });
    randomize(model, "a", 5);
    randomize(model, "b", 6);
    addWeightedAdapter(model, ["a", "b"], [1, 1], "ab", { combinationType: "cat" });
    const lora = loraLayers(model)[0][1].adapters.get("ab")!;
    assertEquals([lora.convention, lora.rank, lora.scaling], [scaling, 5, 1]);
    const config = JSON.parse((await adapterToFiles(model, "ab")).config);
    // PEFT's scaling: lora_alpha / r, or lora_alpha / √r with use_rslora; PEFT's own combination would give √r here.
    const peftScaling = config.lora_alpha / (config.use_rslora ? Math.sqrt(config.r) : config.r);
    assertEquals([config.use_rslora, peftScaling], [scaling === "rslora", 1]);
    model.dispose();
  }
});

Deno.test("negative weights subtract a behaviour: −1·ΔW undoes ΔW, and [1, −1] is ΔWa − ΔWb", () => {
  const model = small(11);
  addAdapter(model, "a", { rank: 2, alpha: 3, seed: 1 });
  addAdapter(model, "b", { rank: 2, alpha: 0.5, seed: 2 });
  randomize(model, "a", 8);
  randomize(model, "b", 18);
  const methods: CombinationType[] = ["cat", "linear", "svd"];
  for (const combinationType of methods) {
    addWeightedAdapter(model, ["a"], [-1], `neg_${combinationType}`, { combinationType });
  }
  addWeightedAdapter(model, ["a", "b"], [1, -1], "diff_cat", { combinationType: "cat" });
  addWeightedAdapter(model, ["a", "b"], [1, -1], "diff_svd", { combinationType: "svd", svdRank: 4 });
  for (const module of MODULES) {
    const minusA = weightedSum(model, module, ["a"], [-1]).data;
    const diff = weightedSum(model, module, ["a", "b"], [1, -1]).data;
    for (const name of methods.map((m) => `neg_${m}`)) {
      assert.ok(gap(computed(model, module, name), minusA) < 1e-6 * frobenius(minusA), `${module} ${name}`);
    }
    for (const name of ["diff_cat", "diff_svd"]) {
      assert.ok(gap(computed(model, module, name), diff) < 1e-6 * frobenius(diff), `${module} ${name}`);
    }
  }
  // Merging "a" and then its negation restores the base weights (up to float32 rounding of add and subtract).
  const before = snapshot(model);
  mergeAdapter(model, "a");
  mergeAdapter(model, "neg_cat");
  const restored = snapshot(model);
  for (const [name, values] of before) {
    const now = restored.get(name)!;
    const worst = values.reduce((most, v, i) => Math.max(most, Math.abs(v - now[i])), 0);
    assert.ok(worst < 1e-6, `${name}: ${worst}`);
  }
  unmergeAdapter(model);
  model.dispose();
});

// Refusals and leaks ------------------------------------------------------------------------------------------

Deno.test("bad requests are refused with a clear error, the model unchanged and nothing leaked", async () => {
  const model = threeAdapters();
  addAdapter(model, "wide", { rank: 4, alpha: 1, seed: 3, targetModules: ["layers.0"] });
  const before = snapshot(model);
  const adapters = listAdapters(model);
  const refuse = (
    names: string[],
    weights: number[],
    name: string,
    options: WeightedAdapterOptions,
    type: new (...args: never[]) => Error,
    message: RegExp,
  ) => assertThrows(() => addWeightedAdapter(model, names, weights, name, options), type, message);
  await assertNoLeak(() => {
    refuse(["a", "nope"], [1, 1], "x", {}, Error, /no adapter "nope"; it has "a", "b", "wide", "c"/);
    refuse(["a", "b"], [1], "x", {}, RangeError, /got 1 weights for 2 adapters; expected one weight per adapter/);
    refuse(["a", "b"], [1, 2, 3], "x", {}, RangeError, /got 3 weights for 2 adapters/);
    refuse(["a"], [NaN], "x", {}, RangeError, /weights must be finite numbers; weight 0 is NaN/);
    refuse([], [], "x", {}, RangeError, /non-empty list of adapter names/);
    for (const combinationType of ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"] as const) {
      const density = combinationType === "linear" ? undefined : 0.5;
      refuse(
        ["a", "b"],
        [1, 1],
        "x",
        { combinationType, density },
        Error,
        new RegExp(`"${combinationType}" needs adapters of equal rank, but in layers.0 "a" has rank 2 and "b" rank 1`),
      );
    }
    for (const density of [0, -0.1, 1.5, NaN, undefined]) {
      refuse(["a"], [1], "x", { combinationType: "ties", density }, RangeError, /needs options.density.*in \(0, 1\]/);
      refuse(["a"], [1], "x", { combinationType: "dare_linear_svd", density }, RangeError, /in \(0, 1\]/);
    }
    refuse(
      ["a", "b"],
      [1, 1],
      "x",
      { combinationType: "svd", svdRank: 6 },
      RangeError,
      /svdRank is 6, more than layers.4 \(12×5\) can hold.*min\(in, out\) = 5/,
    );
    refuse(
      ["wide", "c"],
      [1, 1],
      "x",
      { combinationType: "svd", svdRank: 0 },
      RangeError,
      /svdRank must be a positive integer/,
    );
    refuse(["a"], [1], "b", { combinationType: "cat" }, Error, /already has an adapter named "b"/);
    refuse(["a"], [1], "a.b", {}, RangeError, /letters, digits/);
    refuse(
      ["a"],
      [1],
      "x",
      { combinationType: "mean" as CombinationType },
      RangeError,
      /unknown combinationType "mean"/,
    );
    refuse(["a"], [1], "x", { combinationType: "cat", density: 0.5 }, RangeError, /"cat" does not use options.density/);
    refuse(["a"], [1], "x", { combinationType: "linear", svdRank: 2 }, RangeError, /does not use options.svdRank/);
    refuse(
      ["a"],
      [1],
      "x",
      { combinationType: "ties", density: 0.5, seed: 1 },
      RangeError,
      /does not use options.seed/,
    );
    refuse(
      ["a"],
      [1],
      "x",
      { combinationType: "dare_linear", density: 0.5, majoritySignMethod: "total" },
      RangeError,
      /does not use options.majoritySignMethod/,
    );
    refuse(
      ["a"],
      [1],
      "x",
      { combinationType: "ties", density: 0.5, majoritySignMethod: "mean" as "total" },
      RangeError,
      /majoritySignMethod must be "total" or "frequency"/,
    );
    refuse(
      ["a"],
      [1],
      "x",
      { combinationType: "dare_ties", density: 0.5, seed: 0.5 },
      RangeError,
      /seed must be an integer/,
    );
  });
  assertUnchanged(model, before);
  assertEquals(listAdapters(model), adapters);
  model.dispose();
});

Deno.test("a default svdRank that a layer cannot hold is refused, naming the layer", () => {
  const model = small();
  addAdapter(model, "big", { rank: 8, alpha: 1, seed: 1, targetModules: ["layers.0"] });
  addAdapter(model, "last", { rank: 2, alpha: 1, seed: 2, targetModules: ["layers.4"] });
  assertThrows(
    () => addWeightedAdapter(model, ["big", "last"], [1, 1], "x"),
    RangeError,
    /the default svdRank \(the largest source rank, 8\) is 8, more than layers.4 \(12×5\) can hold/,
  );
  addWeightedAdapter(model, ["big", "last"], [1, 1], "x", { svdRank: 5 }); // "svd" is the default method
  assertEquals(loraLayers(model).map(([, layer]) => layer.adapters.get("x")?.rank), [5, 5]);
  model.dispose();
});

Deno.test("a DoRA adapter (one with a magnitude vector) among the sources is refused", async () => {
  const model = threeAdapters();
  addAdapter(model, "d", { rank: 2, alpha: 1, useDora: true, seed: 4, targetModules: ["layers.2"] });
  const before = snapshot(model);
  await assertNoLeak(() =>
    assertThrows(
      () => addWeightedAdapter(model, ["a", "d"], [1, 1], "x", { combinationType: "cat" }),
      Error,
      /"d" is a DoRA adapter \(in layers.2\), whose update is not a scaled product of two factors/,
    )
  );
  assertUnchanged(model, before);
  assertEquals(listAdapters(model), ["a", "b", "d", "c"]);
  model.dispose();
});

Deno.test("every method adds A and B per covered layer and nothing else; deleting it frees them", async () => {
  const model = threeAdapters();
  for (const combinationType of COMBINATION_TYPES) {
    const options: WeightedAdapterOptions = { combinationType };
    if (!["cat", "linear", "svd"].includes(combinationType)) options.density = 0.5;
    const names = ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"].includes(combinationType)
      ? ["a", "c"] // equal ranks (2) where both are present
      : ["a", "b", "c"];
    await assertNoLeak(() => addWeightedAdapter(model, names, names.map(() => 1), "new", options), 2 * 3);
    const trainable = loraLayers(model).some(([, layer]) => layer.adapters.get("new")!.A.trainable);
    assert.ok(!trainable, `${combinationType}: the new adapter starts frozen`);
    assert.ok(loraLayers(model).every(([, layer]) => layer.activeAdapter !== "new"), "and inactive");
    await assertNoLeak(() => deleteAdapter(model, "new"), -2 * 3);
  }
  model.dispose();
});
