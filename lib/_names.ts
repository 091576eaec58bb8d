/**
 * Text for error messages, shared by the whole library; not part of the public API.
 *
 * @module
 */

/**
 * Names in quotes, joined by commas, or `none`, for error messages.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { listNames } from "./_names.ts";
 * assert.equal(listNames(["a", "b"]), '"a", "b"');
 * assert.equal(listNames([]), "none");
 * ```
 */
export function listNames(names: Iterable<string>): string {
  const list = [...names];
  return list.length === 0 ? "none" : list.map((n) => `"${n}"`).join(", ");
}
