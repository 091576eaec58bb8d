import { bestRankR, frobenius, subtract, svd, transpose } from "../lib/mod.ts";
import { assert, assertThrows } from "./assert.ts";

Deno.test("SVD reconstructs, and truncation meets the Eckart–Young bound", () => {
  let state = 7;
  const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5;
  const a = Array.from({ length: 7 }, () => Array.from({ length: 5 }, random));
  for (const m of [a, transpose(a)]) {
    const d = svd(m);
    assert.deepEqual([...d.s].sort((x, y) => y - x), d.s);
    assert.ok(frobenius(subtract(m, bestRankR(m, 5, d))) < 1e-12);
    for (let r = 0; r <= 5; r++) {
      const tail = Math.sqrt(d.s.slice(r).reduce((s, x) => s + x * x, 0));
      assert.ok(Math.abs(frobenius(subtract(m, bestRankR(m, r, d))) - tail) < 1e-12, `rank ${r}`);
    }
  }
});

Deno.test("SVD: orthonormal singular vectors, exact rank found, and a 784×128 matrix rebuilt (time printed)", () => {
  let state = 11;
  const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5;
  // A rank-3 matrix, 60×40: singular values beyond the third are zero to rounding.
  const left = Array.from({ length: 60 }, () => Array.from({ length: 3 }, random));
  const right = Array.from({ length: 3 }, () => Array.from({ length: 40 }, random));
  const m = left.map((row) => right[0].map((_, j) => row.reduce((s, x, k) => s + x * right[k][j], 0)));
  const { u, s, v } = svd(m);
  assert.ok(s[2] > 1e-3 && s[3] < 1e-12 * s[0], `s = ${s.slice(0, 5)}`);
  for (const [name, q] of [["U", u], ["V", v]] as const) {
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        const dot = q.reduce((sum, row) => sum + row[i] * row[j], 0);
        assert.ok(Math.abs(dot - (i === j ? 1 : 0)) < 1e-12, `${name}: column ${i}·${j} = ${dot}`);
      }
    }
  }
  const big = Array.from({ length: 784 }, () => Array.from({ length: 128 }, random));
  const start = performance.now();
  const d = svd(big);
  const seconds = (performance.now() - start) / 1000;
  assert.ok(frobenius(subtract(big, bestRankR(big, 128, d))) < 1e-9 * frobenius(big));
  console.log(`784×128 SVD: ${seconds.toFixed(2)} s`);
  assertThrows(() => svd([]), RangeError, /non-empty matrix/);
  assertThrows(() => svd([[1, 2], [3]]), RangeError, /rows of equal length/);
});
