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
 * import { listNames } from "./_names.ts";
 * console.log(listNames(["a", "b"]), listNames([])); // "a", "b" none
 * ```
 */
export function listNames(names: Iterable<string>): string {
  const list = [...names];
  return list.length === 0 ? "none" : list.map((n) => `"${n}"`).join(", ");
}
