/**
 * The assertions every test uses, in one place. The design named `jsr:@std/assert`, but JSR cannot be
 * reached from these machines (see README); Deno's built-in `node:assert/strict` provides the same checks,
 * and the few numeric helpers tests need are added here.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";

export { assert };
/** Deep equality (structural, strict). */
export const assertEquals: <T>(actual: unknown, expected: T, message?: string) => asserts actual is T =
  assert.deepEqual;

/** Asserts that `fn` throws an error of class `type` whose message matches `message`. */
export function assertThrows(fn: () => unknown, type: new (...args: never[]) => Error, message: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    assert.match(error.message, message);
    return true;
  });
}

/** Asserts that the promise rejects with an error of class `type` whose message matches `message`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  type: new (...args: never[]) => Error,
  message: RegExp,
): Promise<void> {
  await assert.rejects(fn, (error: unknown) => {
    assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    assert.match(error.message, message);
    return true;
  });
}

/** Largest absolute difference between two tensors or arrays of the same shape. */
export function maxAbsDiff(a: tf.Tensor | ArrayLike<number>, b: tf.Tensor | ArrayLike<number>): number {
  const x = a instanceof tf.Tensor ? a.dataSync() : a;
  const y = b instanceof tf.Tensor ? b.dataSync() : b;
  assert.equal(x.length, y.length, `length ${x.length} vs ${y.length}`);
  let most = 0;
  for (let i = 0; i < x.length; i++) most = Math.max(most, Math.abs(x[i] - y[i]));
  return most;
}

/** Asserts that two tensors agree element-wise within `tolerance` (absolute). */
export function assertClose(a: tf.Tensor, b: tf.Tensor, tolerance: number, what = "values"): void {
  assert.deepEqual(a.shape, b.shape, `${what}: shapes differ`);
  const diff = maxAbsDiff(a, b);
  assert.ok(diff <= tolerance, `${what}: max |difference| ${diff} exceeds ${tolerance}`);
}

/** Asserts that two tensors hold exactly the same float32 bits. */
export function assertBitIdentical(a: tf.Tensor, b: tf.Tensor, what = "values"): void {
  assert.deepEqual(a.shape, b.shape, `${what}: shapes differ`);
  const x = new Uint32Array(new Float32Array(a.dataSync()).buffer);
  const y = new Uint32Array(new Float32Array(b.dataSync()).buffer);
  const first = x.findIndex((bits, i) => bits !== y[i]);
  assert.equal(first, -1, `${what}: differ first at index ${first}`);
}

/** Runs `fn` and asserts it leaves no more tensors alive than before (variables it keeps excepted). */
export async function assertNoLeak(fn: () => unknown, allowed = 0): Promise<void> {
  const before = tf.memory().numTensors;
  await fn();
  const after = tf.memory().numTensors;
  assert.equal(after - before, allowed, `tensors alive: ${before} before, ${after} after`);
}
