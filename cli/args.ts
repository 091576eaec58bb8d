/**
 * Command-line parsing shared by the `finetune` and `generate` commands: `--name value` options read with
 * `node:util`'s `parseArgs`, and numbers checked with errors that name the option.
 *
 * @module
 */
import { parseArgs } from "node:util";

/** An option's kind, for {@linkcode parseOptions}. */
export type OptionKind = "string" | "boolean";

/**
 * Parses `args` against `spec` (option name → kind): unknown options, missing values and stray positional
 * arguments are errors that name them and point at `--help`. `command` names the program in messages.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseOptions } from "./args.ts";
 * assert.deepEqual(parseOptions("x", ["--rank", "8", "--dora"], { rank: "string", dora: "boolean" }), {
 *   rank: "8",
 *   dora: true,
 * });
 * assert.throws(() => parseOptions("x", ["--rnak", "8"], { rank: "string" }), /unknown option --rnak/);
 * ```
 */
export function parseOptions(
  command: string,
  args: string[],
  spec: Record<string, OptionKind>,
): Record<string, string | boolean | undefined> {
  for (const arg of args) {
    if (!arg.startsWith("--")) continue;
    const name = arg.slice(2).split("=")[0];
    if (!(name in spec)) {
      throw new UsageError(
        `${command}: unknown option --${name}; known: ${Object.keys(spec).map((k) => `--${k}`).join(", ")}.`,
      );
    }
  }
  try {
    const { values, positionals } = parseArgs({
      args,
      options: Object.fromEntries(Object.entries(spec).map(([name, type]) => [name, { type }])),
      strict: true,
      allowPositionals: true,
    });
    if (positionals.length > 0) {
      throw new UsageError(`${command}: unexpected argument "${positionals[0]}"; options are written --name value.`);
    }
    return { ...values } as Record<string, string | boolean | undefined>;
  } catch (error) {
    if (error instanceof UsageError) throw error;
    throw new UsageError(`${command}: ${(error as Error).message.replace(/\.$/, "")}. See --help.`);
  }
}

/** An error in the command line, shown with the usage hint instead of a stack trace. */
export class UsageError extends Error {
  /** The message, which names the option at fault. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * `value` (the text after `--name`) as a number, or `fallback` when absent; `integer` asks for a whole number
 * and `min`/`max` bound it (`exclusiveMin` for `> min`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { numberOption } from "./args.ts";
 * assert.equal(numberOption("x", "rank", "8", 4, { integer: true, min: 1 }), 8);
 * assert.equal(numberOption("x", "rank", undefined, 4, { integer: true, min: 1 }), 4);
 * assert.throws(() => numberOption("x", "rank", "eight", 4, { integer: true, min: 1 }), /--rank must be/);
 * ```
 */
export function numberOption(
  command: string,
  name: string,
  value: string | boolean | undefined,
  fallback: number,
  bounds: { integer?: boolean; min?: number; exclusiveMin?: boolean; max?: number } = {},
): number {
  if (value === undefined) return fallback;
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : NaN;
  const { integer = false, min, exclusiveMin = false, max } = bounds;
  const ok = Number.isFinite(n) && (!integer || Number.isInteger(n)) &&
    (min === undefined || (exclusiveMin ? n > min : n >= min)) && (max === undefined || n <= max);
  if (!ok) {
    const kind = integer ? "an integer" : "a number";
    const range = [
      min === undefined ? "" : `${exclusiveMin ? ">" : "≥"} ${min}`,
      max === undefined ? "" : `≤ ${max}`,
    ].filter(Boolean).join(" and ");
    throw new UsageError(`${command}: --${name} must be ${kind}${range ? ` ${range}` : ""}; got "${value}".`);
  }
  return n;
}

/** The text of a required string option, or a {@linkcode UsageError} naming it. */
export function requiredOption(command: string, name: string, value: string | boolean | undefined): string {
  if (typeof value !== "string" || value === "") throw new UsageError(`${command}: --${name} is required.`);
  return value;
}

/**
 * Runs `main` as a command: a {@linkcode UsageError} or any other error is printed as one line on stderr
 * and the process exits with status 1 (2 for usage errors).
 *
 * @example
 * ```ts
 * import { runCommand } from "./args.ts";
 * await runCommand(() => Promise.resolve()); // succeeds: nothing printed, no exit
 * ```
 */
export async function runCommand(main: () => Promise<unknown>): Promise<void> {
  try {
    await main();
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    Deno.exit(error instanceof UsageError ? 2 : 1);
  }
}
