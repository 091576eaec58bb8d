/**
 * The little linear algebra notebook 01 needs and TensorFlow.js lacks: a singular value decomposition of a
 * small matrix (one-sided Jacobi), the best rank-r approximation built from it, and a readable printout.
 * Plain `number[][]` in and out; meant for matrices of tens of rows, not for speed.
 *
 * @example
 * ```ts
 * import { bestRankR, svd } from "./linalg.ts";
 * const m = [[3, 0], [0, 1]];
 * console.log(svd(m).s); // [3, 1]
 * console.log(bestRankR(m, 1)); // [[3, 0], [0, 0]]
 * ```
 *
 * @module
 */

/** A = U · diag(s) · Vᵀ with orthonormal columns in U (m×k) and V (n×k), s descending, k = min(m, n). */
export interface Svd {
  u: number[][];
  s: number[];
  v: number[][];
}

/** Singular value decomposition by one-sided Jacobi rotations (Hestenes), accurate to float64 rounding. */
export function svd(a: number[][]): Svd {
  const m = a.length, n = a[0].length;
  if (m < n) {
    const t = svd(transpose(a));
    return { u: t.v, s: t.s, v: t.u };
  }
  const w = a.map((row) => row.slice()); // columns become U·diag(s)
  const v = identity(n);
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < m; i++) {
          alpha += w[i][p] * w[i][p];
          beta += w[i][q] * w[i][q];
          gamma += w[i][p] * w[i][q];
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t), s = c * t;
        for (const x of [w, v]) {
          for (const row of x) {
            const xp = row[p], xq = row[q];
            row[p] = c * xp - s * xq;
            row[q] = s * xp + c * xq;
          }
        }
      }
    }
    if (!rotated) break;
  }
  const norms = Array.from({ length: n }, (_, j) => Math.hypot(...w.map((row) => row[j])));
  const order = norms.map((_, j) => j).sort((i, j) => norms[j] - norms[i]);
  return {
    u: w.map((row) => order.map((j) => (norms[j] === 0 ? 0 : row[j] / norms[j]))),
    s: order.map((j) => norms[j]),
    v: v.map((row) => order.map((j) => row[j])),
  };
}

/** The closest matrix of rank at most `r` in the Frobenius norm (Eckart–Young): the top r singular triplets. */
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

/** √(Σ aᵢⱼ²). */
export function frobenius(a: number[][]): number {
  return Math.sqrt(a.flat().reduce((sum, x) => sum + x * x, 0));
}

/** Element-wise a − b. */
export function subtract(a: number[][], b: number[][]): number[][] {
  return a.map((row, i) => row.map((x, j) => x - b[i][j]));
}

/** Rows and columns swapped. */
export function transpose(a: number[][]): number[][] {
  return a[0].map((_, j) => a.map((row) => row[j]));
}

/** The n×n identity. */
export function identity(n: number): number[][] {
  return Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 1 : 0)));
}

/** A matrix as aligned text, `digits` decimals, one row per line. */
export function formatMatrix(a: number[][], digits = 2): string {
  const cells = a.map((row) => row.map((x) => (Object.is(x, -0) ? 0 : x).toFixed(digits)));
  const width = Math.max(...cells.flat().map((c) => c.length));
  return cells.map((row) => row.map((c) => c.padStart(width)).join(" ")).join("\n");
}
