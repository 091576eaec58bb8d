/**
 * Two measures of a weight update from its singular value decomposition (`svd` in the library): how much of it
 * the top few directions hold, and how well the top directions of two updates line up (the LoRA paper's
 * subspace similarity, its section 7).
 *
 * @example
 * ```ts
 * import { energyShare, subspaceSimilarity } from "./subspace.ts";
 * console.log(energyShare([3, 1], 1)); // 0.9: 9 of 9 + 1
 * const e = [[1, 0], [0, 1], [0, 0]]; // the first two axes of 3-d space, as columns
 * console.log(subspaceSimilarity(e, e, 2, 1)); // 1: the first axis lies in the plane of both
 * ```
 *
 * @module
 */

/**
 * The share of a matrix's squared Frobenius norm that its `r` largest singular values hold:
 * `(σ₁² + … + σᵣ²) / (σ₁² + … + σₙ²)`, with `singularValues` sorted largest first (as `svd` returns them). By
 * Eckart–Young, `1 − energyShare(s, r)` is the squared relative error of the best rank-`r` approximation.
 *
 * @example
 * ```ts
 * import { energyShare } from "./subspace.ts";
 * console.log(energyShare([2, 1, 1], 2)); // 5 / 6
 * ```
 */
export function energyShare(singularValues: number[], r: number): number {
  const squares = singularValues.map((s) => s * s);
  const total = squares.reduce((a, b) => a + b, 0);
  if (total === 0) throw new RangeError("energyShare: the matrix is zero, so no share of it can be measured.");
  return squares.slice(0, r).reduce((a, b) => a + b, 0) / total;
}

/**
 * The smallest rank whose best approximation holds at least `share` (0 to 1) of the matrix's squared norm.
 *
 * @example
 * ```ts
 * import { rankForEnergy } from "./subspace.ts";
 * console.log(rankForEnergy([2, 1, 1], 0.8)); // 2
 * ```
 */
export function rankForEnergy(singularValues: number[], share: number): number {
  for (let r = 1; r <= singularValues.length; r++) if (energyShare(singularValues, r) >= share - 1e-12) return r;
  return singularValues.length;
}

/**
 * The LoRA paper's normalised subspace similarity φ(i, j) = ‖U₁ᵢᵀ·U₂ⱼ‖²_F / min(i, j), where U₁ᵢ are the first
 * `i` columns of `u1` and U₂ⱼ the first `j` columns of `u2` (orthonormal columns, such as the singular vectors
 * `svd` returns, largest first; rows are coordinates). It is 1 when the smaller subspace lies inside the larger,
 * 0 when they are orthogonal; two random subspaces of an m-dimensional space give about max(i, j) / m.
 *
 * @example
 * ```ts
 * import { subspaceSimilarity } from "./subspace.ts";
 * const axes = [[1, 0], [0, 1], [0, 0]];
 * const tilted = [[Math.SQRT1_2, 0], [0, 1], [Math.SQRT1_2, 0]];
 * console.log(subspaceSimilarity(axes, tilted, 1, 1).toFixed(2)); // 0.50: 45° apart
 * ```
 */
export function subspaceSimilarity(u1: number[][], u2: number[][], i: number, j: number): number {
  if (u1.length !== u2.length) {
    throw new RangeError(`subspaceSimilarity: the bases live in spaces of ${u1.length} and ${u2.length} dimensions.`);
  }
  const columns = (u: number[][]) => u[0]?.length ?? 0;
  if (!(Number.isInteger(i) && Number.isInteger(j) && i >= 1 && j >= 1 && i <= columns(u1) && j <= columns(u2))) {
    throw new RangeError(
      `subspaceSimilarity: i and j must be 1 to the number of columns (${columns(u1)} and ${columns(u2)}); ` +
        `got ${i} and ${j}.`,
    );
  }
  let sum = 0;
  for (let a = 0; a < i; a++) {
    for (let b = 0; b < j; b++) {
      let dot = 0;
      for (let k = 0; k < u1.length; k++) dot += u1[k][a] * u2[k][b];
      sum += dot * dot;
    }
  }
  return sum / Math.min(i, j);
}
