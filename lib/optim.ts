/**
 * Adam, written for this library: the same update as `torch.optim.Adam` and `tf.train.adam`, in fewer and
 * cheaper operations.
 *
 * TensorFlow.js's own Adam runs about a dozen kernels per variable per step (each with its own output
 * allocation and scalar uploads). On a small model those fixed costs, not arithmetic, dominate a training
 * step. This one folds the bias corrections into two per-step numbers and, on the wasm and cpu backends,
 * updates every element in one pass of plain JavaScript over the backend's own memory.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { fusedInUse } from "./fused.ts";
import { simdLoops } from "./simd.ts";
import { type HostMemory, hostMemory, wasmHeap } from "./tfjs_internals.ts";

/** A tensor with a name, as tfjs optimizers exchange their state. */
type NamedTensor = { name: string; tensor: tf.Tensor };

/** Adam's hyperparameters besides the learning rate; the defaults are PyTorch's. */
export interface AdamOptions {
  /** Decay of the first moment (mean of gradients); default 0.9. */
  beta1?: number;
  /** Decay of the second moment (mean of squared gradients); default 0.999. */
  beta2?: number;
  /** Added to the root of the second moment to avoid dividing by zero; default 1e-8. */
  epsilon?: number;
  /**
   * Update each variable in one JavaScript loop over the backend's memory where the backend allows it (wasm,
   * cpu); default `true`. `false` always uses tensor kernels, as on webgpu; both give the same numbers.
   */
  fused?: boolean;
  /**
   * Parameter groups with learning rates of their own, PyTorch's `param_groups`: each variable listed in a
   * group is updated with that group's rate, every other variable with `learningRate`. LoRA+ uses it (see
   * `createLoraPlusOptimizer`).
   */
  groups?: readonly ParameterGroup[];
}

/** Variables that share a learning rate (see {@linkcode AdamOptions.groups}). */
export interface ParameterGroup {
  /** The variables of this group. */
  variables: readonly tf.Variable[];
  /** Their learning rate. */
  learningRate: number;
}

/** One variable's optimizer state: its first and second moments, shaped like it. */
interface Moments {
  variable: tf.Variable;
  m: tf.Tensor;
  v: tf.Tensor;
}

/**
 * Adam (Kingma & Ba, 2015) with PyTorch's defaults. A `tf.Optimizer`, so `minimize`, `applyGradients` and
 * `dispose` work as for `tf.train.adam`.
 *
 * The update for a parameter `p` with gradient `g` at step `t` is
 *
 *     m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
 *     p ← p − lr · m̂ / (√v̂ + ε)      with m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ)
 *
 * computed as `p ← p − αₜ · m / (√v + εₜ)` with `αₜ = lr·√(1 − β₂ᵗ) / (1 − β₁ᵗ)` and `εₜ = ε·√(1 − β₂ᵗ)`,
 * which is the same number, rearranged.
 *
 * The moments are tensors on the current backend (so `tf.memory()` counts them), created at a variable's
 * first update and freed by `dispose()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { Adam } from "./optim.ts";
 * const w = tf.variable(tf.tensor1d([1, -1]));
 * const optimizer = new Adam(0.1);
 * optimizer.minimize(() => tf.sum(tf.square(w)) as tf.Scalar);
 * const [a, b] = w.dataSync(); // Adam's first step moves every parameter by the learning rate
 * assert.ok(Math.abs(a - 0.9) < 1e-6);
 * assert.ok(Math.abs(b + 0.9) < 1e-6);
 * assert.equal(optimizer.stateBytes, 16); // two moments of two float32 numbers
 * optimizer.dispose();
 * w.dispose();
 * ```
 */
export class Adam extends tf.Optimizer {
  /** Step size. */
  readonly learningRate: number;
  /** First-moment decay. */
  readonly beta1: number;
  /** Second-moment decay. */
  readonly beta2: number;
  /** Denominator guard. */
  readonly epsilon: number;
  /** Whether the one-loop update is used where the backend allows it; see {@linkcode AdamOptions.fused}. */
  readonly fused: boolean;
  /** The learning rate of each variable in a parameter group, by variable name. */
  #rates = new Map<string, number>();
  #state = new Map<string, Moments>();
  #step = 0;

  /** The class name tfjs's serialization registry would know this optimizer by. */
  static className = "LoraAdam";

  /** An Adam optimizer with step size `learningRate`; the options default to PyTorch's. */
  constructor(learningRate: number, options: AdamOptions = {}) {
    super();
    const { beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8, fused = true, groups = [] } = options;
    if (!(learningRate > 0) || !Number.isFinite(learningRate)) {
      throw new RangeError(`Adam: learningRate must be a positive finite number; got ${learningRate}.`);
    }
    groups.forEach((group, g) => {
      if (!(group.learningRate > 0) || !Number.isFinite(group.learningRate)) {
        throw new RangeError(
          `Adam: group ${g} has learning rate ${group.learningRate}; expected a positive finite number.`,
        );
      }
      for (const variable of group.variables) {
        if (this.#rates.has(variable.name)) {
          throw new RangeError(`Adam: ${variable.name} is in more than one parameter group.`);
        }
        this.#rates.set(variable.name, group.learningRate);
      }
    });
    for (const [name, value] of [["beta1", beta1], ["beta2", beta2]] as const) {
      if (!(value >= 0 && value < 1)) throw new RangeError(`Adam: ${name} must be in [0, 1); got ${value}.`);
    }
    if (!(epsilon > 0) || !Number.isFinite(epsilon)) {
      throw new RangeError(`Adam: epsilon must be a positive finite number; got ${epsilon}.`);
    }
    this.learningRate = learningRate;
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.epsilon = epsilon;
    this.fused = fused;
  }

  /** Optimizer steps taken so far. */
  get step(): number {
    return this.#step;
  }

  /** Bytes of optimizer state: both moments of every variable updated so far (4 bytes per float32). */
  get stateBytes(): number {
    let bytes = 0;
    for (const { m, v } of this.#state.values()) bytes += 4 * (m.size + v.size);
    return bytes;
  }

  /**
   * Applies one Adam step. `variableGradients` maps each variable's `name` to its gradient, as
   * `tf.variableGrads(...).grads` returns it; a variable missing from the map is left alone this step.
   */
  applyGradients(variableGradients: tf.NamedTensorMap | NamedTensor[]): void {
    const grads: [string, tf.Tensor][] = Array.isArray(variableGradients)
      ? variableGradients.map((g) => [g.name, g.tensor])
      : Object.entries(variableGradients);
    const t = this.#step + 1;
    const c2 = Math.sqrt(1 - this.beta2 ** t);
    // Bias correction folded into one step size and one epsilon per step (computed here in float64), instead of
    // two extra divisions of every element.
    const correction = 1 - this.beta1 ** t;
    const eps = this.epsilon * c2;
    const host = this.fused ? hostMemory() : null;
    // Every gradient is checked before any variable changes, so a bad one leaves the step undone, not half done.
    const present = grads.filter(([, grad]) => grad != null);
    for (const [name, grad] of present) this.#check(name, grad);
    for (const [name, grad] of present) {
      const state = this.#moments(name);
      const alpha = (this.#rates.get(name) ?? this.learningRate) * c2 / correction;
      if (host !== null) this.#updateOnHost(host, state, grad, alpha, eps);
      else this.#updateWithKernels(state, grad, alpha, eps);
    }
    this.#step = t;
    this.incrementIterations();
  }

  /**
   * The moments as named tensors (`<variable>/m`, `<variable>/v`), after the step count; copies, which the
   * caller disposes.
   */
  override async getWeights(): Promise<NamedTensor[]> {
    const weights = [await this.saveIterations()];
    for (const [name, { m, v }] of this.#state) {
      // Copies of the values, not clone(): a clone would share the buffer this optimizer changes in place.
      for (const [suffix, t] of [["m", m], ["v", v]] as const) {
        // slice(): on cpu, data() hands back the backend's own array, which the next step changes in place.
        weights.push({ name: `${name}/${suffix}`, tensor: tf.tensor((await t.data()).slice(), t.shape) });
      }
    }
    return weights;
  }

  /** Restoring state is not supported: this optimizer is for training runs that start from zero moments. */
  override setWeights(_weightValues: NamedTensor[]): Promise<void> {
    return Promise.reject(new Error("Adam.setWeights is not supported; start a new Adam instead."));
  }

  /** The learning rate `variable` is updated with: its group's, or `learningRate`. */
  learningRateOf(variable: tf.Variable): number {
    return this.#rates.get(variable.name) ?? this.learningRate;
  }

  /** The hyperparameters, as tfjs serializes optimizers. */
  getConfig(): tf.serialization.ConfigDict {
    return { learningRate: this.learningRate, beta1: this.beta1, beta2: this.beta2, epsilon: this.epsilon };
  }

  /** Frees the moments. The optimizer can be used again afterwards; it then starts from zero moments. */
  override dispose(): void {
    for (const { m, v } of this.#state.values()) tf.dispose([m, v]);
    this.#state.clear();
    this.#step = 0;
  }

  #check(name: string, grad: tf.Tensor): void {
    const variable = this.#state.get(name)?.variable ?? tf.engine().registeredVariables[name];
    if (variable === undefined) throw new Error(`Adam: no variable is named "${name}".`);
    if (variable.dtype !== "float32") {
      throw new TypeError(`Adam: ${name} has dtype ${variable.dtype}; expected float32.`);
    }
    if (!tf.util.arraysEqual(grad.shape, variable.shape)) {
      throw new RangeError(`Adam: the gradient of ${name} has shape [${grad.shape}]; expected [${variable.shape}].`);
    }
  }

  #moments(name: string): Moments {
    let state = this.#state.get(name);
    if (state === undefined) {
      const variable = tf.engine().registeredVariables[name];
      state = { variable, m: tf.zerosLike(variable), v: tf.zerosLike(variable) };
      this.#state.set(name, state);
    }
    return state;
  }

  // The whole update in one loop over the backend's memory: one pass instead of ~12 kernels per variable, each
  // of which would allocate an output and walk every element again.
  #updateOnHost(host: HostMemory, state: Moments, grad: tf.Tensor, alpha: number, eps: number): void {
    const { variable } = state;
    // The new value gets a fresh buffer from the backend: other tensors may share the old one (clone() shares
    // buffers), and wasm caches each matMul weight, packed, by buffer, so it must never change in place.
    const value = host.empty(variable.shape);
    // Views are taken after that allocation, which may grow (and so move) the wasm heap.
    const { beta1, beta2 } = this, b1 = 1 - beta1, b2 = 1 - beta2;
    const loops = fusedInUse() ? simdLoops(tf.backend()) : null, heap = loops === null ? null : wasmHeap(tf.backend());
    if (loops !== null && heap !== null) {
      // With the fused kernels, the vector loop of simd.wat (float32 arithmetic, four values at a time).
      const at = (t: tf.Tensor) => 4 * heap.index(t);
      loops.adam(
        at(variable),
        at(grad),
        at(state.m),
        at(state.v),
        at(value),
        variable.size,
        beta1,
        b1,
        beta2,
        b2,
        alpha,
        eps,
      );
      variable.assign(value);
      value.dispose();
      return;
    }
    const next = host.view(value), p = host.view(variable), g = host.view(grad);
    const m = host.view(state.m), v = host.view(state.v);
    for (let i = 0; i < p.length; i++) {
      const gi = g[i];
      const mi = m[i] = beta1 * m[i] + b1 * gi; // the moments are private, so they do change in place
      const vi = v[i] = beta2 * v[i] + b2 * gi * gi;
      next[i] = p[i] - alpha * mi / (Math.sqrt(vi) + eps);
    }
    variable.assign(value);
    value.dispose();
  }

  // Backends whose memory JavaScript cannot reach (webgpu): the same update as tensor operations.
  #updateWithKernels(state: Moments, grad: tf.Tensor, alpha: number, eps: number): void {
    const { variable } = state;
    const [m, v, p] = tf.tidy(() => {
      const m = tf.add(tf.mul(state.m, this.beta1), tf.mul(grad, 1 - this.beta1));
      const v = tf.add(tf.mul(state.v, this.beta2), tf.mul(tf.square(grad), 1 - this.beta2));
      const p = tf.sub(variable, tf.mul(tf.div(m, tf.add(tf.sqrt(v), eps)), alpha));
      return [m, v, p];
    });
    tf.dispose([state.m, state.v]);
    state.m = m;
    state.v = v;
    variable.assign(p);
    p.dispose();
  }
}
