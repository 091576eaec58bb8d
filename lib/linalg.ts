/**
 * The linear algebra TensorFlow.js lacks: a singular value decomposition, the best rank-r approximation
 * built from it (Eckart–Young), and small helpers on plain `number[][]` matrices. Used by PiSSA's
 * initialisation, by combining adapters with `svd`, and by the notebooks.
 *
 * The SVD is one-sided Jacobi (Hestenes): accurate to float64 rounding, and fast enough for the layers here
 * (a 784×128 matrix takes well under a second); it is not meant for matrices of thousands of columns.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";

/** `A = U · diag(s) · Vᵀ` with orthonormal columns in `u` (m×k) and `v` (n×k), `s` descending, k = min(m, n). */
export interface Svd {
  /** Left singular vectors as columns: `u[i][k]`. */
  u: number[][];
  /** Singular values, largest first. */
  s: number[];
  /** Right singular vectors as columns: `v[j][k]`. */
  v: number[][];
}

/**
 * The singular value decomposition of `a` (m×n, as rows), by one-sided Jacobi rotations.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { svd } from "./linalg.ts";
 * assert.deepEqual(svd([[3, 0], [0, 1]]).s, [3, 1]);
 * ```
 */
export function svd(a: number[][]): Svd {
  const m = a.length, n = a[0]?.length ?? 0;
  if (m === 0 || n === 0 || a.some((row) => row.length !== n)) {
    throw new RangeError(`svd: expected a non-empty matrix with rows of equal length; got ${m} rows.`);
  }
  if (m < n) {
    const t = svd(transpose(a));
    return { u: t.v, s: t.s, v: t.u };
  }
  // Columns of A, rotated in place until they are orthogonal: they become U·diag(s). V collects the rotations.
  const w = Array.from({ length: n }, (_, j) => Float64Array.from(a, (row) => row[j]));
  const v = Array.from({ length: n }, (_, j) => Float64Array.from({ length: n }, (_, i) => (i === j ? 1 : 0)));
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const [wp, wq] = [w[p], w[q]];
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < m; i++) {
          alpha += wp[i] * wp[i];
          beta += wq[i] * wq[i];
          gamma += wp[i] * wq[i];
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t), s = c * t;
        for (const [xp, xq] of [[wp, wq], [v[p], v[q]]]) {
          for (let i = 0; i < xp.length; i++) {
            const a = xp[i], b = xq[i];
            xp[i] = c * a - s * b;
            xq[i] = s * a + c * b;
          }
        }
      }
    }
    if (!rotated) break;
  }
  const norms = w.map((column) => Math.sqrt(column.reduce((sum, x) => sum + x * x, 0)));
  const order = norms.map((_, j) => j).sort((i, j) => norms[j] - norms[i]);
  return {
    u: Array.from({ length: m }, (_, i) => order.map((j) => (norms[j] === 0 ? 0 : w[j][i] / norms[j]))),
    s: order.map((j) => norms[j]),
    v: Array.from({ length: n }, (_, i) => order.map((j) => v[j][i])),
  };
}

/**
 * The closest matrix of rank at most `r` in the Frobenius and spectral norms (Eckart–Young): the top `r`
 * singular triplets. Its Frobenius error is `√(σ²ᵣ₊₁ + σ²ᵣ₊₂ + …)`, its spectral error `σᵣ₊₁`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bestRankR } from "./linalg.ts";
 * assert.deepEqual(bestRankR([[3, 0], [0, 1]], 1), [[3, 0], [0, 0]]);
 * ```
 */
export function bestRankR(a: number[][], r: number, decomposition: Svd = svd(a)): number[][] {
  const { u, s, v } = decomposition;
  return a.map((_, i) =>
    a[0].map((_, j) => {
      let sum = 0;
      for (let k = 0; k < Math.min(r, s.length); k++) sum += u[i][k] * s[k] * v[j][k];
      return sum;
    })
  );
}

/**
 * `√(Σ aᵢⱼ²)`, the Frobenius norm.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { frobenius } from "./linalg.ts";
 * assert.equal(frobenius([[3, 4]]), 5);
 * ```
 */
export function frobenius(a: number[][]): number {
  return Math.sqrt(a.flat().reduce((sum, x) => sum + x * x, 0));
}

/**
 * Element-wise `a − b`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { subtract } from "./linalg.ts";
 * assert.deepEqual(subtract([[3, 4]], [[1, 1]]), [[2, 3]]);
 * ```
 */
export function subtract(a: number[][], b: number[][]): number[][] {
  return a.map((row, i) => row.map((x, j) => x - b[i][j]));
}

/**
 * Rows and columns swapped.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { transpose } from "./linalg.ts";
 * assert.deepEqual(transpose([[1, 2, 3]]), [[1], [2], [3]]);
 * ```
 */
export function transpose(a: number[][]): number[][] {
  return a[0].map((_, j) => a.map((row) => row[j]));
}

/**
 * A 2-D tensor's values as rows of plain numbers (read synchronously: cpu and wasm backends).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { toMatrix } from "./linalg.ts";
 * assert.deepEqual(toMatrix(tf.tensor2d([[1, 2], [3, 4]])), [[1, 2], [3, 4]]);
 * ```
 */
export function toMatrix(t: tf.Tensor): number[][] {
  if (t.rank !== 2) throw new RangeError(`toMatrix: expected a 2-D tensor; got shape [${t.shape}].`);
  return t.arraySync() as number[][];
}

/**
 * A matrix as aligned text, `digits` decimals, one row per line.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatMatrix } from "./linalg.ts";
 * const text = formatMatrix([[1, -0.5], [10, 2]], 1);
 * assert.equal(text, " 1.0 -0.5\n10.0  2.0"); // right-aligned columns, one decimal
 * ```
 */
export function formatMatrix(a: number[][], digits = 2): string {
  const cells = a.map((row) => row.map((x) => (Object.is(x, -0) ? 0 : x).toFixed(digits)));
  const width = Math.max(...cells.flat().map((c) => c.length));
  return cells.map((row) => row.map((c) => c.padStart(width)).join(" ")).join("\n");
}
