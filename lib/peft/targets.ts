/**
 * Which layers an adapter goes on: PEFT's `target_modules`, matched against the dotted module names that
 * `namedModules` gives.
 *
 * @module
 */
import { isBaseLayer, Linear } from "../layers.ts";
import { type Module, namedModules } from "../module.ts";
import { isTutorialLayer, LinearWithAdapters, listNames } from "./layer.ts";
import { compileTargetPattern } from "./patterns.ts";

export { compileTargetPattern, MAX_PATTERN_LENGTH, type TargetPattern } from "./patterns.ts";

/**
 * Which modules to adapt, as PEFT's `target_modules` reads it:
 *
 * - a list of names: a module matches when its full name equals one of them or ends with `.` and one of
 *   them, so `"q_proj"` matches `blocks.0.attn.q_proj` and `"layers.0"` matches `layers.0`;
 * - one string: a regular expression that must match the whole name (Python's `re.fullmatch`), such as
 *   `"blocks\\.\\d+\\.attn\\.(q|v)_proj"`, in the syntax {@linkcode compileTargetPattern} accepts (RE2's:
 *   matched in time linear in the name, with no lookahead and no backreferences);
 * - `"all-linear"`: every linear layer except the model's output layer (see {@linkcode findTargets}).
 */
export type TargetModules = string | readonly string[];

/**
 * Whether the module called `name` is selected by `target`, by PEFT's rules (see {@linkcode TargetModules};
 * `"all-linear"` is resolved by {@linkcode findTargets}, not here).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { matchesTarget } from "./targets.ts";
 * assert.equal(matchesTarget("blocks.0.attn.q_proj", ["q_proj", "v_proj"]), true);
 * assert.equal(matchesTarget("blocks.0.attn.q_proj", ["proj"]), false); // a suffix must start after a dot
 * assert.equal(matchesTarget("blocks.1.attn.v_proj", "blocks\\.\\d+\\.attn\\.[qv]_proj"), true);
 * ```
 */
export function matchesTarget(name: string, target: TargetModules): boolean {
  if (typeof name !== "string") {
    throw new TypeError(`matchesTarget: a module name must be a string; got ${typeof name}.`);
  }
  if (typeof target === "string") return compileTargetPattern(target, "matchesTarget").fullMatch(name);
  return target.some((t) => name === t || name.endsWith(`.${t}`));
}

/** What {@linkcode findTargets} selects by. */
export interface TargetOptions {
  /** The modules to adapt; default: every `Linear` of the model, the tutorial's choice. */
  targetModules?: TargetModules;
  /** Modules to leave alone even where `targetModules` selects them (PEFT's `exclude_modules`), same rules. */
  excludeModules?: TargetModules;
}

/**
 * The names of the linear layers that `options` selects in `model`, in the model's order. A layer that
 * already carries LoRA counts as the linear layer it wraps; the layers inside it are never targets.
 *
 * `"all-linear"` follows PEFT (`_maybe_include_all_linear_layers` in `tuners_utils.py`): every linear layer,
 * minus the output layer when the model names one through a `getOutputEmbeddings()` method, as a
 * Transformers model does (the GPT here returns its `lm_head`). A model without that method, such as the
 * perceptron, keeps every linear layer, as PEFT does for a plain PyTorch module.
 *
 * Throws, naming what was wrong and what the model has, when a selected module is not linear, when a
 * regular expression does not parse, or when nothing is selected (PEFT's "Target modules … not found").
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { findTargets } from "./targets.ts";
 * import { MultilayerPerceptron } from "../mlp.ts";
 * const model = new MultilayerPerceptron(4, 3, 3, 2);
 * assert.deepEqual(findTargets(model, {}), ["layers.0", "layers.2", "layers.4"]);
 * assert.deepEqual(findTargets(model, { targetModules: ["4"] }), ["layers.4"]);
 * assert.deepEqual(findTargets(model, { targetModules: "layers\\.[02]" }), ["layers.0", "layers.2"]);
 * model.dispose();
 * ```
 */
export function findTargets(model: Module, options: TargetOptions, caller = "addLoRA"): string[] {
  const modules = adaptableModules(model);
  const linear = modules.filter(([, m]) => isLinear(m)).map(([name]) => name);
  const { targetModules, excludeModules } = options;
  checkTarget(targetModules, "targetModules", caller);
  checkTarget(excludeModules, "excludeModules", caller);
  let selected: string[];
  if (targetModules === undefined) {
    selected = linear;
  } else if (typeof targetModules === "string" && targetModules.toLowerCase() === "all-linear") {
    const output = outputLayer(model);
    selected = linear.filter((name) => name !== output);
  } else {
    selected = [];
    for (const [name, module] of modules) {
      if (name === "" || !matchesTarget(name, targetModules)) continue;
      if (!isLinear(module)) {
        throw new RangeError(
          `${caller}: targetModules ${describe(targetModules)} selects "${name}", a ${module.constructor.name}; ` +
            `LoRA adapts linear layers: ${listNames(linear)}.`,
        );
      }
      selected.push(name);
    }
  }
  if (excludeModules !== undefined) selected = selected.filter((name) => !matchesTarget(name, excludeModules));
  if (selected.length === 0) {
    throw new RangeError(
      `${caller}: targetModules ${describe(targetModules ?? "(every Linear)")} selects no linear layer` +
        `${excludeModules === undefined ? "" : ` once excludeModules is applied`}; the model's linear layers ` +
        `are ${listNames(linear)}.`,
    );
  }
  return selected;
}

/** Every module of `model` by name, without the modules inside LoRA wrappers (their `linear`, `lora`, …). */
function adaptableModules(model: Module): [string, Module][] {
  const wrappers: string[] = [];
  const out: [string, Module][] = [];
  for (const [name, module] of namedModules(model)) {
    if (wrappers.some((w) => name.startsWith(`${w}.`))) continue;
    if (isWrapper(module) && name !== "") wrappers.push(name);
    out.push([name, module]);
  }
  return out;
}

function isWrapper(module: Module): boolean {
  return module instanceof LinearWithAdapters || isTutorialLayer(module);
}

/** A module an adapter can go on: a `Linear` (or a quantized one), or a layer that already adds LoRA to one. */
function isLinear(module: Module): boolean {
  return module instanceof Linear || isBaseLayer(module) || isWrapper(module);
}

/** The name of the module `model.getOutputEmbeddings()` returns, if the model has that method. */
function outputLayer(model: Module): string | undefined {
  const getter = (model as { getOutputEmbeddings?: () => Module | null }).getOutputEmbeddings;
  if (typeof getter !== "function") return undefined;
  const head = getter.call(model);
  return namedModules(model).find(([, m]) => m === head)?.[0];
}

function checkTarget(target: unknown, what: string, caller: string): void {
  if (target === undefined) return;
  if (typeof target === "string") {
    if (target.toLowerCase() !== "all-linear") compileTargetPattern(target, `${caller}: ${what}`);
    return;
  }
  if (!Array.isArray(target) || !target.every((t) => typeof t === "string" && t !== "")) {
    throw new TypeError(
      `${caller}: ${what} must be a list of module names, a regular expression or "all-linear"; ` +
        `got ${JSON.stringify(target)}.`,
    );
  }
}

function describe(target: TargetModules): string {
  return typeof target === "string" ? `"${target}"` : JSON.stringify(target);
}
