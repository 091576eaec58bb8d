import * as tf from "@tensorflow/tfjs";
import {
  initBackend,
  Linear,
  LinearWithLoRA,
  MultilayerPerceptron,
  namedModules,
  trainableVariables,
} from "../lib/mod.ts";
import { GPT } from "../lib/gpt/model.ts";
import {
  dequantizeBlockwise8,
  dequantizeInt8Rows,
  dequantizeNF4,
  DOUBLE_QUANT_BLOCK_SIZE,
  dynamicCode,
  NF4_CODE,
  nf4Scales,
  quantizeBlockwise8,
  quantizedBytes,
  QuantizedLinear,
  quantizeInt8Rows,
  quantizeModel,
  quantizeNF4,
} from "../lib/quant.ts";
import { assert, assertBitIdentical, assertEquals, assertNoLeak, assertThrows } from "./assert.ts";

await initBackend();

// Helpers ---------------------------------------------------------------------------------------------------

/** Standard normal samples from a seeded generator (Box–Muller over a small LCG), as float32. */
function normals(n: number, seed: number, std = 1): Float32Array {
  let state = seed >>> 0;
  const uniform = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return (state + 0.5) / 2 ** 32;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = std * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}

/** Φ, the standard normal CDF, from the Taylor series of erf (accurate to ~1e-15 for |z| < 3). */
function normalCdf(z: number): number {
  const x = z / Math.SQRT2;
  let [term, sum] = [x, x];
  for (let n = 1; n < 200 && Math.abs(term) > 1e-18; n++) {
    term *= -x * x / n;
    sum += term / (2 * n + 1);
  }
  return 0.5 * (1 + (2 / Math.sqrt(Math.PI)) * sum);
}

/** Φ⁻¹ by Newton's method on Φ, from z = 0 (fine for the quantiles in [0.5, 0.97] used here). */
function normalQuantile(p: number): number {
  let z = 0;
  for (let k = 0; k < 60; k++) {
    const step = (normalCdf(z) - p) / (Math.exp(-z * z / 2) / Math.sqrt(2 * Math.PI));
    z -= step;
    if (Math.abs(step) < 1e-15) break;
  }
  return z;
}

const linspace = (a: number, b: number, n: number) => Array.from({ length: n }, (_, i) => a + (b - a) * i / (n - 1));

/** The index of the code value nearest to `v`, the lower one on a tie: quantization by its definition. */
function nearest(v: number, code: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < code.length; i++) if (Math.abs(code[i] - v) < Math.abs(code[best] - v)) best = i;
  return best;
}

function unpack(packed: Uint8Array, n: number): number[] {
  return Array.from({ length: n }, (_, k) => k % 2 === 0 ? packed[k >> 1] >> 4 : packed[k >> 1] & 0x0f);
}

const maxHalfGap = (code: ArrayLike<number>) => {
  let most = 0;
  for (let i = 1; i < code.length; i++) most = Math.max(most, (code[i] - code[i - 1]) / 2);
  return most;
};

// The NF4 code ------------------------------------------------------------------------------------------------

Deno.test("NF4 code: 16 sorted float32 values, 7 negative, an exact zero at index 7, 8 positive, spanning [-1, 1]", () => {
  assertEquals(NF4_CODE.length, 16);
  for (const v of NF4_CODE) assertEquals(Math.fround(v), v, `${v} is not a float32 value`);
  for (let i = 1; i < 16; i++) assert.ok(NF4_CODE[i] > NF4_CODE[i - 1]);
  assertEquals(NF4_CODE.filter((v) => v < 0).length, 7);
  assertEquals(NF4_CODE.filter((v) => v > 0).length, 8);
  assertEquals([NF4_CODE[0], NF4_CODE[7], NF4_CODE[15]], [-1, 0, 1]);
  assert.ok(Object.isFrozen(NF4_CODE));
});

Deno.test("NF4 code equals the QLoRA paper's definition, quantiles of N(0, 1) in asymmetric halves, within 1e-6", () => {
  // QLoRA §3: 2^(k-1) quantiles for the negative half and 2^(k-1) + 1 for the positive half, the two zeros
  // merged into one, normalised into [-1, 1]. bitsandbytes' create_normal_map places them at probabilities
  // evenly spaced from δ = 0.9677083 down to 1/2 (1/2 itself being the zero), δ being ½((1 − 1/30) + (1 − 1/32))
  // to 7 decimals. Here everything is in float64; bitsandbytes spaced the probabilities in float32, which moves a
  // quantile by up to ~|dΦ⁻¹/dp|·2^-24 ≈ 1e-6 near δ, hence the tolerance.
  const delta = 0.9677083;
  assert.ok(Math.abs(delta - ((1 - 1 / 30) + (1 - 1 / 32)) / 2) < 5e-8);
  const positive = linspace(delta, 0.5, 9).slice(0, -1).map(normalQuantile); // 8 values
  const negative = linspace(delta, 0.5, 8).slice(0, -1).map((p) => -normalQuantile(p)); // 7 values
  const values = [...negative, 0, ...positive].sort((a, b) => a - b);
  const top = Math.max(...values);
  const definition = values.map((v) => v / top);
  const worst = Math.max(...definition.map((v, i) => Math.abs(v - NF4_CODE[i])));
  assert.ok(worst < 1e-6, `NF4 code differs from the definition by ${worst}`);
  assert.ok(Math.abs(normalQuantile(delta) - 1.8481308) < 1e-6); // the largest quantile, the code's scale
});

Deno.test("NF4 bucket edges agree with the decision tree in bitsandbytes' CUDA kernel (csrc/kernels.cu)", () => {
  // The thresholds of dQuantizeNF4 (bitsandbytes 0.50.2.dev0, commit 95f9af3), a second source for the same
  // code: value x in [-1, 1] goes above a threshold when x > t. Our nearest-value rule must agree on both sides.
  const thresholds = [
    -0.8480964004993439,
    -0.6106329262256622,
    -0.4599952697753906,
    -0.33967943489551544,
    -0.23460740596055984,
    -0.13791173323988914,
    -0.045525018125772476,
    0.03979014977812767,
    0.1202552504837513,
    0.2035212516784668,
    0.2920137718319893,
    0.3893125355243683,
    0.5016634166240692,
    0.6427869200706482,
    0.8614784181118011,
  ];
  thresholds.forEach((t, i) => {
    assert.ok(Math.abs(t - (NF4_CODE[i] + NF4_CODE[i + 1]) / 2) < 1e-7, `threshold ${i}`);
    const nudge = 1e-6 + 1e-5 * Math.abs(t);
    for (const [x, want] of [[t + nudge, i + 1], [t - nudge, i]] as const) {
      // One block whose absmax is 1, so the value is quantized as it stands.
      const q = quantizeNF4([x, 1], { blockSize: 32 });
      assertEquals(q.packed[0] >> 4, want, `${x} near threshold ${t}`);
    }
  });
});

// NF4 blockwise quantization --------------------------------------------------------------------------------

Deno.test("NF4 indices are the nearest code value of x / block absmax, two per byte, the first in the high nibble", () => {
  for (const [n, blockSize] of [[640, 64], [1000, 64], [999, 32], [7, 64], [200, 128]]) {
    const x = normals(n, n + blockSize, 0.05);
    x[3] = 0; // an exact zero stays exact
    const q = quantizeNF4(x, { blockSize });
    assertEquals(q.packed.length, Math.ceil(n / 2));
    assertEquals(q.absmax!.length, Math.ceil(n / blockSize));
    const indices = unpack(q.packed, n);
    for (let k = 0; k < n; k++) {
      const absmax = q.absmax![Math.floor(k / blockSize)];
      assertEquals(indices[k], nearest(x[k] / absmax, NF4_CODE), `value ${k} of ${n}`);
    }
    assertEquals(indices[3], 7);
    for (let b = 0; b < q.absmax!.length; b++) {
      const block = Array.from(x.subarray(b * blockSize, (b + 1) * blockSize), Math.abs);
      assertEquals(q.absmax![b], Math.max(...block));
    }
    if (n % 2 === 1) assertEquals(q.packed[q.packed.length - 1] & 0x0f, 7, "odd length: padded with the zero index");
  }
});

Deno.test("NF4 round trip: every value within half the widest code gap (0.1519) times its block's absmax", () => {
  const half = maxHalfGap(NF4_CODE);
  assert.ok(Math.abs(half - (NF4_CODE[1] - NF4_CODE[0]) / 2) < 1e-12); // the widest gap is the lowest one
  for (const [n, blockSize] of [[64 * 200, 64], [5000, 256], [333, 32]]) {
    const x = normals(n, 7 * n, 0.02);
    const q = quantizeNF4(x, { blockSize });
    const back = dequantizeNF4(q);
    const indices = unpack(q.packed, n);
    let worst = 0;
    for (let k = 0; k < n; k++) {
      const bound = half * q.absmax![Math.floor(k / blockSize)] * (1 + 2 ** -20);
      const error = Math.abs(back[k] - x[k]);
      assert.ok(error <= bound, `value ${k}: error ${error} > ${bound}`);
      worst = Math.max(worst, error / bound);
      // dequantization is code · absmax in float32
      assertEquals(back[k], Math.fround(NF4_CODE[indices[k]] * q.absmax![Math.floor(k / blockSize)]));
    }
    assert.ok(worst > 0.3, `the bound should be approached on ${n} normal values; worst ${worst}`);
  }
});

Deno.test("NF4: a block of zeros, and a length the block size does not divide (a shorter last block, as bitsandbytes)", () => {
  const x = new Float32Array(64 + 5);
  x.set([0.5, -0.25, 0.125, 0.3, -0.01], 64); // block 0 is all zeros; block 1 holds the 5 left over
  const q = quantizeNF4(x);
  assertEquals(Array.from(q.absmax!), [0, 0.5]);
  assertEquals(q.packed.length, 35);
  const back = dequantizeNF4(q);
  assert.ok(back.subarray(0, 64).every((v) => v === 0));
  assert.ok(back.subarray(64).every((v, i) => Math.abs(v - x[64 + i]) <= 0.152 * 0.5));
  assertEquals(back.length, 69);
});

// Double quantization -------------------------------------------------------------------------------------------

Deno.test("dynamic 8-bit code: 256 sorted values, symmetric but for 0 and 1, as create_dynamic_map builds it", () => {
  const code = dynamicCode();
  assertEquals(code.length, 256);
  for (let i = 1; i < 256; i++) assert.ok(code[i] > code[i - 1], `sorted at ${i}`);
  assertEquals(code[255], 1);
  const nonzero = Array.from(code).filter((v) => v !== 0 && v !== 1);
  assertEquals(nonzero.length, 254);
  for (const v of nonzero) assert.ok(code.includes(-v), `${v} has no negative twin`);
  // Exponents 10^-6 … 10^0, the i-th holding 2^i linearly spaced fractions in (0.1, 1): 1 + 2 + … + 64 per sign.
  const positive = nonzero.filter((v) => v > 0);
  for (let i = 0; i < 7; i++) {
    const inDecade = positive.filter((v) => v >= 0.1 * 10 ** (i - 6) * 0.999 && v < 10 ** (i - 6));
    assertEquals(inDecade.length, 2 ** i, `decade 10^${i - 6}`);
  }
  code[0] = 5; // a copy: changing it changes nothing
  assert.ok(dynamicCode()[0] < 0);
});

Deno.test("double quantization: offset = mean absmax, 8-bit codes in blocks of 256, scales within the code's error", () => {
  const blockSize = 64;
  const n = blockSize * 600; // 600 block scales: three second-level blocks, the last of 88
  const x = normals(n, 11, 0.02);
  const plain = quantizeNF4(x, { blockSize });
  const dq = quantizeNF4(x, { blockSize, doubleQuant: true });
  assertEquals(dq.absmax, null);
  assertEquals(Array.from(dq.packed), Array.from(plain.packed)); // the 4-bit indices do not change
  const state = dq.doubleQuant!;
  const absmax = plain.absmax!;
  const mean = absmax.reduce((s, a) => s + a, 0) / absmax.length;
  assert.ok(Math.abs(state.offset - mean) <= 2 ** -23 * mean);
  assertEquals(state.scales.codes.length, 600);
  assertEquals(state.scales.absmax.length, Math.ceil(600 / DOUBLE_QUANT_BLOCK_SIZE));
  assertEquals(state.scales.blockSize, 256);
  // Each centred scale is within the dynamic code's widest half-gap (or the distance from -1 to its lowest
  // value) times its second-level absmax.
  const code = dynamicCode();
  const codeError = Math.max(maxHalfGap(code), code[0] + 1);
  const scales = nf4Scales(dq);
  let worst = 0;
  for (let b = 0; b < 600; b++) {
    const bound = codeError * state.scales.absmax[Math.floor(b / 256)] + 2 ** -22 * absmax[b];
    const error = Math.abs(scales[b] - absmax[b]);
    assert.ok(error <= bound, `scale ${b}: ${error} > ${bound}`);
    worst = Math.max(worst, error / absmax[b]);
  }
  assert.ok(worst > 0 && worst < 0.01, `relative scale error ${worst}`);
  // And the weights: NF4's error with the double-quantized scale.
  const back = dequantizeNF4(dq);
  const indices = unpack(dq.packed, n);
  for (let k = 0; k < n; k++) assertEquals(back[k], Math.fround(NF4_CODE[indices[k]] * scales[Math.floor(k / 64)]));
});

Deno.test("8-bit blockwise quantization: nearest dynamic code value of x / absmax, shorter last block", () => {
  const x = normals(300, 3);
  const q = quantizeBlockwise8(x, 128);
  assertEquals(q.absmax.length, 3);
  const code = dynamicCode();
  for (let k = 0; k < 300; k++) assertEquals(q.codes[k], nearest(x[k] / q.absmax[Math.floor(k / 128)], code), `${k}`);
  const back = dequantizeBlockwise8(q);
  for (let k = 0; k < 300; k++) assert.ok(Math.abs(back[k] - x[k]) <= 0.0071 * q.absmax[Math.floor(k / 128)]);
});

// int8 per row -------------------------------------------------------------------------------------------------

Deno.test("int8 per row: round(x · 127 / row absmax), error at most row absmax / 254 on random normal weights", () => {
  const [rows, columns] = [37, 53];
  const x = normals(rows * columns, 5, 0.1);
  x.fill(0, 2 * columns, 3 * columns); // a row of zeros
  const q = quantizeInt8Rows(x, rows, columns);
  const back = dequantizeInt8Rows(q);
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    const absmax = Math.max(...Array.from(x.subarray(r * columns, (r + 1) * columns), Math.abs));
    assertEquals(q.scales[r], absmax);
    for (let k = r * columns; k < (r + 1) * columns; k++) {
      assert.ok(Math.abs(q.values[k]) <= 127);
      assert.ok(Math.abs(q.values[k] - x[k] * 127 / (absmax || 1)) <= 0.5 + 1e-5, `value ${k}`);
      const bound = absmax / 254 + 4 * 2 ** -24 * absmax;
      const error = Math.abs(back[k] - x[k]);
      assert.ok(error <= bound, `value ${k}: ${error} > ${bound}`);
      if (absmax > 0) worst = Math.max(worst, error / (absmax / 254));
    }
  }
  assert.ok(back.subarray(2 * columns, 3 * columns).every((v) => v === 0));
  assert.ok(worst > 0.9, `the bound should be nearly reached; worst ${worst}`);
});

// QuantizedLinear ------------------------------------------------------------------------------------------------

Deno.test("QuantizedLinear quantizes PyTorch's [out, in] weight flattened row-major, bitsandbytes' order", () => {
  const linear = new Linear(64, 5, { seed: 4 });
  const w = linear.weight.arraySync(); // [in, out]
  const rowMajor = Float32Array.from({ length: 320 }, (_, k) => w[k % 64][Math.floor(k / 64)]); // W_pt[o][i]
  const q4 = QuantizedLinear.fromLinear(linear, { bits: 4 });
  const expected = quantizeNF4(rowMajor);
  assert.ok(q4.quantized.bits === 4);
  assertEquals(Array.from(q4.quantized.nf4.packed), Array.from(expected.packed));
  // With 64 inputs, block o is output o's weights.
  for (let o = 0; o < 5; o++) assertEquals(q4.quantized.nf4.absmax![o], Math.max(...w.map((row) => Math.abs(row[o]))));
  const q8 = QuantizedLinear.fromLinear(linear, { bits: 8 });
  assert.ok(q8.quantized.bits === 8);
  assertEquals(Array.from(q8.quantized.int8.values), Array.from(quantizeInt8Rows(rowMajor, 5, 64).values));
  // dequantize() is [in, out] again, holding bitsandbytes' dequantized values.
  const q4dq = QuantizedLinear.fromLinear(linear, { bits: 4, doubleQuant: true, blockSize: 32 });
  assert.ok(q4dq.quantized.bits === 4);
  const flats = [
    dequantizeNF4(expected),
    dequantizeInt8Rows(quantizeInt8Rows(rowMajor, 5, 64)),
    dequantizeNF4(q4dq.quantized.nf4),
  ];
  [q4, q8, q4dq].forEach((layer, j) => {
    const dense = layer.dequantize();
    const d = dense.arraySync();
    for (let k = 0; k < 320; k++) assertEquals(d[k % 64][Math.floor(k / 64)], flats[j][k], `layer ${j} value ${k}`);
    tf.dispose([dense]);
  });
  [q4, q8, q4dq, linear].forEach((m) => m.dispose());
});

Deno.test("QuantizedLinear.apply equals matMul(x, dequantize()) + bias bit for bit, for 2- and 3-axis inputs", async () => {
  for (
    const spec of [{ bits: 4 as const }, { bits: 4 as const, doubleQuant: true, blockSize: 128 }, { bits: 8 as const }]
  ) {
    for (const bias of [true, false]) {
      const linear = new Linear(96, 40, { seed: 9, bias });
      const q = QuantizedLinear.fromLinear(linear, spec);
      await assertNoLeak(() =>
        tf.tidy(() => {
          for (const shape of [[7, 96], [2, 3, 96]]) {
            const x = tf.randomNormal(shape, 0, 1, "float32", 3);
            const w = q.dequantize();
            const flat = tf.matMul(tf.reshape(x, [-1, 96]), w);
            const expected = tf.reshape(bias ? tf.add(flat, linear.bias!) : flat, [...shape.slice(0, -1), 40]);
            assertBitIdentical(q.apply(x), expected, `${JSON.stringify(spec)} bias ${bias} [${shape}]`);
          }
        })
      );
      q.dispose();
      linear.dispose();
    }
  }
});

Deno.test("QuantizedLinear: the outputs stay close to the float32 layer's (NF4 and int8)", () => {
  const linear = new Linear(256, 64, { seed: 2 });
  const x = tf.randomNormal([32, 256], 0, 1, "float32", 8);
  const reference = linear.apply(x);
  const errors: number[] = [];
  for (const spec of [{ bits: 8 as const }, { bits: 4 as const }, { bits: 4 as const, doubleQuant: true }]) {
    const q = QuantizedLinear.fromLinear(linear, spec);
    errors.push(tf.tidy(() => {
      const diff = tf.sub(q.apply(x), reference);
      return tf.div(tf.norm(diff), tf.norm(reference)).dataSync()[0];
    }));
    q.dispose();
  }
  // Relative error of the output: int8 ≪ NF4 ≈ NF4 with double quantization, all small.
  assert.ok(errors[0] < 0.01 && errors[1] < 0.15 && errors[2] < 0.15, `errors ${errors}`);
  assert.ok(errors[0] < errors[1] / 5, `int8 ${errors[0]} should be far below NF4 ${errors[1]}`);
  assert.ok(Math.abs(errors[2] - errors[1]) < 0.1 * errors[1]);
  tf.dispose([x, reference]);
  linear.dispose();
});

Deno.test("QuantizedLinear is frozen: no variables, trainable = true and weight throw, gradients reach the input only", () => {
  const linear = new Linear(64, 8, { seed: 1 });
  const q = QuantizedLinear.fromLinear(linear, { bits: 4 });
  assertEquals(q.namedParameters(), []);
  assertEquals(q.trainable, false);
  q.trainable = false; // allowed: it is frozen already
  assertThrows(() => (q.trainable = true), TypeError, /QuantizedLinear is frozen: its 4-bit weight cannot be trained/);
  assertThrows(() => q.weight, TypeError, /keeps no float32 weight.*dequantize\(\)/);
  assertThrows(() => (q.weight = linear.weight), TypeError, /cannot be assigned.*fromLinear/);
  const x = tf.randomNormal([3, 64], 0, 1, "float32", 2);
  const gx = tf.grad((input: tf.Tensor) => tf.sum(q.apply(input)))(x);
  const w = q.dequantize();
  const expected = tf.tidy(() => tf.matMul(tf.ones([3, 8]), tf.transpose(w)));
  assert.ok(tf.tidy(() => tf.max(tf.abs(tf.sub(gx, expected))).dataSync()[0]) < 1e-5);
  tf.dispose([x, gx, w, expected]);
  q.dispose();
  linear.dispose();
});

Deno.test("re-quantizing a dequantized weight with the layer's spec gives the same 4-bit codes; toLinear is the same layer", async () => {
  const linear = new Linear(200, 24, { seed: 8 });
  await assertNoLeak(() => {
    for (
      const spec of [{ bits: 4 as const }, { bits: 4 as const, blockSize: 32, doubleQuant: true }, { bits: 8 as const }]
    ) {
      const q = QuantizedLinear.fromLinear(linear, spec);
      assertEquals(q.spec, spec.bits === 8 ? spec : { blockSize: 64, doubleQuant: false, ...spec });
      const dense = q.dequantize();
      const again = QuantizedLinear.fromWeight(dense, q.bias, q.spec);
      const [a, b] = [q.quantized, again.quantized];
      if (a.bits === 4 && b.bits === 4) {
        assertEquals(Array.from(b.nf4.packed), Array.from(a.nf4.packed));
        const [sa, sb] = [nf4Scales(a.nf4), nf4Scales(b.nf4)];
        // Without double quantization the scales come back exactly; with it, the scales' own 8-bit codes are
        // recomputed around a new mean, so a scale may move by the 8-bit code's step (under 1%).
        if (a.nf4.doubleQuant === null) assertEquals(Array.from(sb), Array.from(sa));
        else assert.ok(sa.every((v, i) => Math.abs(v - sb[i]) <= 0.01 * v), "double-quantized scales moved");
      } else if (a.bits === 8 && b.bits === 8) {
        assertEquals(Array.from(b.int8.values), Array.from(a.int8.values));
      } else assert.fail("bits changed");
      const float = q.toLinear();
      assertEquals(float.fanInFanOut, linear.fanInFanOut);
      const x = tf.randomNormal([5, 200], 0, 1, "float32", 4);
      const [y1, y2] = [q.apply(x), float.apply(x)];
      assertBitIdentical(y2, y1, `toLinear ${JSON.stringify(spec)}`);
      tf.dispose([dense, x, y1, y2]);
      [q, again, float].forEach((m) => m.dispose());
    }
  });
  assertThrows(
    () => QuantizedLinear.fromWeight(tf.zeros([4]) as unknown as tf.Tensor2D, null, { bits: 4 }),
    TypeError,
    /expected a float32 weight \[in, out\]; got float32 \[4\]/,
  );
  const w = tf.zeros([4, 3]) as tf.Tensor2D;
  const wrongBias = tf.zeros([4]) as tf.Tensor1D;
  assertThrows(
    () => QuantizedLinear.fromWeight(w, wrongBias, { bits: 8 }),
    RangeError,
    /bias must be \[3\] or null; got \[4\]/,
  );
  tf.dispose([w, wrongBias]);
  linear.dispose();
});

Deno.test("QuantizedLinear.bytes and quantizedBytes: the exact bytes held, for every representation", () => {
  for (const [n, m] of [[784, 128], [128, 256], [256, 10], [3, 5], [64, 300]]) {
    const linear = new Linear(n, m, { seed: 1 });
    for (const spec of [{ bits: 8 as const }, { bits: 4 as const }, { bits: 4 as const, doubleQuant: true }]) {
      const q = QuantizedLinear.fromLinear(linear, spec);
      const held = q.bytes();
      const predicted = quantizedBytes(n, m, spec);
      assertEquals(
        held,
        { ...predicted, bias: 4 * m, total: predicted.total + 4 * m },
        `${n}x${m} ${JSON.stringify(spec)}`,
      );
      // The parts by hand: ceil(n·m / 2) packed bytes, a scale per block or row, the double-quant state.
      const blocks = Math.ceil(n * m / 64);
      const want = spec.bits === 8
        ? n * m + 4 * m
        : Math.ceil(n * m / 2) + ("doubleQuant" in spec ? blocks + 4 * Math.ceil(blocks / 256) + 4 : 4 * blocks);
      assertEquals(predicted.total, want);
      q.dispose();
    }
    linear.dispose();
  }
  // The tutorial's first layer: 401,408 bytes in float32.
  assertEquals(quantizedBytes(784, 128, { bits: 4 }).total, 50176 + 4 * 1568);
  assertEquals(quantizedBytes(784, 128, { bits: 4, doubleQuant: true }).total, 50176 + 1568 + 4 * 7 + 4);
});

Deno.test("QuantizedLinear: odd sizes (15 weights, 9 inputs) pad as bitsandbytes does and still match dequantize", () => {
  const linear = new Linear(3, 5, { seed: 6 });
  const q = QuantizedLinear.fromLinear(linear, { bits: 4, blockSize: 32 });
  assert.ok(q.quantized.bits === 4);
  assertEquals(q.quantized.nf4.packed.length, 8);
  assertEquals(q.quantized.nf4.packed[7] & 0x0f, 7);
  const x = tf.ones([2, 3]);
  const y = q.apply(x);
  const w = q.dequantize();
  assertBitIdentical(y, tf.tidy(() => tf.add(tf.matMul(x, w), linear.bias!)));
  tf.dispose([x, y, w]);
  q.dispose();
  linear.dispose();
});

Deno.test("QuantizedLinear: clone shares the codes and copies the bias; dispose frees only the bias", async () => {
  const linear = new Linear(64, 4, { seed: 3 });
  await assertNoLeak(() => {
    const q = QuantizedLinear.fromLinear(linear, { bits: 4 });
    const copy = q.clone();
    assert.ok(copy instanceof QuantizedLinear);
    assert.ok(copy.bias !== q.bias);
    const x = tf.ones([1, 64]);
    const [a, b] = [q.apply(x), copy.apply(x)];
    assertBitIdentical(a, b);
    tf.dispose([x, a, b]);
    q.dispose();
    assertEquals(copy.bias!.isDisposed, false);
    copy.dispose();
  });
  linear.dispose();
});

Deno.test("clear errors: bits, block size, int8 options, non-finite weights, wrong shapes, input width", () => {
  const linear = new Linear(64, 4, { seed: 3 });
  const bad = (spec: unknown) => () => QuantizedLinear.fromLinear(linear, spec as { bits: 4 });
  assertThrows(bad({ bits: 3 }), RangeError, /bits must be 4 \(NF4\) or 8 \(int8 per row\); got 3/);
  assertThrows(bad({}), RangeError, /bits must be 4/);
  assertThrows(bad(null), TypeError, /expected options such as \{ bits: 4 \}/);
  assertThrows(bad({ bits: 4, blockSize: 48 }), RangeError, /blockSize must be one of 32, 64, .*4096.*; got 48/);
  assertThrows(bad({ bits: 8, blockSize: 64 }), RangeError, /apply to 4 bits only/);
  assertThrows(bad({ bits: 4, doubleQuant: "yes" }), TypeError, /doubleQuant must be true or false/);
  assertThrows(() => quantizeNF4([1, NaN]), RangeError, /value 1 is NaN; only finite weights/);
  assertThrows(() => quantizeNF4([]), RangeError, /nothing to quantize/);
  assertThrows(() => quantizeInt8Rows([1, 2, 3], 2, 2), RangeError, /product is the 3 values; got 2 × 2/);
  assertThrows(() => quantizeBlockwise8([1], 0), RangeError, /blockSize must be a positive integer; got 0/);
  assertThrows(
    () => QuantizedLinear.fromLinear(new LinearWithLoRA(linear, 1, 2) as unknown as Linear, { bits: 4 }),
    TypeError,
    /expected a Linear layer; got LinearWithLoRA/,
  );
  const q = QuantizedLinear.fromLinear(linear, { bits: 4 });
  assertThrows(() => new QuantizedLinear(63, 4, q.quantized), RangeError, /does not fit a 63→4 layer/);
  assertThrows(() => q.apply(tf.ones([2, 63])), RangeError, /expects input of shape \[batch, 64\]/);
  assertThrows(
    () => new QuantizedLinear(64, 4, q.quantized, tf.zeros([3])),
    RangeError,
    /bias must be a float32 tensor \[4\]/,
  );
  q.dispose();
  linear.dispose();
});

// quantizeModel -------------------------------------------------------------------------------------------------

Deno.test("quantizeModel replaces the MLP's linear layers in place, frees the float ones, keeps outputs close", async () => {
  const reference = new MultilayerPerceptron(784, 128, 256, 10, { seed: 5 });
  const model = reference.clone();
  const x = tf.randomNormal([16, 784], 0, 1, "float32", 1) as tf.Tensor2D;
  const before = tf.memory().numTensors;
  quantizeModel(model, { bits: 4, doubleQuant: true });
  // Six weight and bias variables freed, three biases kept as tensors.
  assertEquals(tf.memory().numTensors, before - 6 + 3);
  assertEquals(model.layers.map((l) => l.constructor.name), [
    "QuantizedLinear",
    "ReLU",
    "QuantizedLinear",
    "ReLU",
    "QuantizedLinear",
  ]);
  assertEquals(trainableVariables(model), []);
  const error = tf.tidy(() => {
    const [a, b] = [model.apply(x), reference.apply(x)];
    return tf.div(tf.norm(tf.sub(a, b)), tf.norm(b)).dataSync()[0];
  });
  assert.ok(error > 0 && error < 0.2, `relative logit error ${error}`);
  await assertNoLeak(() => tf.dispose(model.apply(x)));
  tf.dispose([x]);
  model.dispose();
  reference.dispose();
});

Deno.test("quantizeModel on the GPT: every Linear but lm_head by default; targetModules and excludeModules by name", () => {
  const config = { vocabSize: 30, blockSize: 16, nLayer: 2, nHead: 4, nEmbd: 64 };
  const kinds = (m: GPT) =>
    namedModules(m).filter(([, mod]) => mod instanceof QuantizedLinear || mod instanceof Linear).map((
      [name, mod],
    ) => `${name}:${mod instanceof QuantizedLinear ? mod.quantized.bits : 32}`);
  const gpt = quantizeModel(new GPT(config, { seed: 1 }), { bits: 8 });
  const all = kinds(gpt);
  assertEquals(all.length, 13);
  assertEquals(all.at(-1), "lm_head:32");
  assert.ok(all.slice(0, -1).every((k) => k.endsWith(":8")));
  const tokens = tf.tensor2d([[1, 2, 3, 4]], [1, 4], "int32");
  const logits = gpt.apply(tokens);
  assertEquals(logits.shape, [1, 4, 30]);
  tf.dispose([logits]);
  gpt.dispose();
  const some = quantizeModel(new GPT(config, { seed: 1 }), {
    bits: 4,
    targetModules: ["q_proj", "v_proj", "fc1"],
    excludeModules: ["blocks.1.mlp.fc1"],
  });
  assertEquals(
    kinds(some).filter((k) => k.endsWith(":4")),
    [
      "blocks.0.attn.q_proj:4",
      "blocks.0.attn.v_proj:4",
      "blocks.0.mlp.fc1:4",
      "blocks.1.attn.q_proj:4",
      "blocks.1.attn.v_proj:4",
    ],
  );
  tf.dispose([tokens]);
  some.dispose();
});

Deno.test("quantizeModel refuses bad options and layers with adapters, and then changes nothing", async () => {
  const model = new MultilayerPerceptron(8, 6, 6, 3, { seed: 2 });
  model.layers[2] = new LinearWithLoRA(model.layers[2] as Linear, 1, 2);
  const names = () => model.layers.map((l) => l.constructor.name).join();
  const was = names();
  await assertNoLeak(() => {
    assertThrows(
      () => quantizeModel(model, { bits: 4 }),
      TypeError,
      /"layers.2" is a LinearWithLoRA.*quantize the base/,
    );
    assertThrows(() => quantizeModel(model, { bits: 5 as 4 }), RangeError, /bits must be 4/);
    assertThrows(
      () => quantizeModel(model, { bits: 4, targetModules: ["nope"] }),
      RangeError,
      /quantizeModel: .*selects no/,
    );
    assertThrows(() => quantizeModel(model, { bits: 4, targetModules: ["1"] }), RangeError, /"layers.1", a ReLU/);
  });
  assertEquals(names(), was);
  quantizeModel(model, { bits: 4, targetModules: ["layers.0", "layers.4"] });
  assertEquals(names(), "QuantizedLinear,ReLU,LinearWithLoRA,ReLU,QuantizedLinear");
  // Quantized layers are no longer targets: quantizing again selects nothing new.
  assertThrows(() => quantizeModel(model, { bits: 8, targetModules: ["layers.0"] }), RangeError, /a QuantizedLinear/);
  model.dispose();
});
