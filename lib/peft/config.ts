/**
 * PEFT's `adapter_config.json` for a LoRA adapter: what this library writes, what it reads, and how PEFT's
 * numbers (`r`, `lora_alpha`, `use_rslora`, `rank_pattern`, `alpha_pattern`) map to this library's rank,
 * alpha and scaling convention, layer by layer.
 *
 * @module
 */
import { type LoRAInit, type LoRALayer, loraScaling, type ScalingConvention } from "../lora.ts";
import { compileTargetPattern } from "./patterns.ts";
import type { TargetModules } from "./targets.ts";

/** File names inside an adapter folder, as PEFT names them. */
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
/** The config's file name inside an adapter folder. */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
/** The key of a DoRA magnitude after the module name, as PEFT writes it (`save_and_load.py`). */
export const MAGNITUDE = "lora_magnitude_vector";

/** Keys under which this library records its own scaling convention and alpha in the safetensors metadata. */
const CONVENTION_KEY = "lora_scaling_convention";
const ALPHA_KEY = "lora_alpha_as_given";

/**
 * The `init_lora_weights` strings a file may carry: those after which PEFT's loader only overwrites A and B
 * (`"eva"` fills A from data, but leaves the base alone), and PiSSA, whose residual is recomputed on load.
 */
const READABLE_INITS = ["gaussian", "eva", "pissa"];

/**
 * The fields of PEFT's `LoraConfig` that this library writes and reads. PEFT's scaling is
 * `lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`; `rank_pattern` and `alpha_pattern` override
 * `r` and `lora_alpha` for the modules whose name they match (a key matches a module when the module's name
 * is the key, as a regular expression, or ends with `.` and the key: PEFT's `get_pattern_key`).
 */
export interface LoraConfig {
  /** Always `"LORA"`. */
  peft_type: "LORA";
  /** The rank, where `rank_pattern` says nothing else. */
  r: number;
  /** PEFT's alpha: the tutorial's `alpha·r`, or the paper's and rsLoRA's `alpha` as is. */
  lora_alpha: number;
  /** Module names the adapter applies to, such as `layers.0`, or one regular expression (see `TargetModules`). */
  target_modules: TargetModules;
  /** Whether scaling is `lora_alpha / sqrt(r)`. */
  use_rslora: boolean;
  /** Ranks of the modules whose rank is not `r`. */
  rank_pattern?: Record<string, number>;
  /** PEFT alphas of the modules whose alpha is not `lora_alpha`. */
  alpha_pattern?: Record<string, number>;
  /** Other PEFT fields, written with PEFT's defaults. */
  [field: string]: unknown;
}

/** One layer's adapter as a config describes it, in this library's terms. */
export interface LayerSettings {
  /** The rank. */
  rank: number;
  /** This library's alpha. */
  alpha: number;
  /** How alpha and rank give the scaling. */
  convention: ScalingConvention;
}

/**
 * The config and safetensors metadata for an adapter whose layers are `loras` (module name and its
 * `LoRALayer`). The layers must share convention and start (`init`), as PEFT's config has one of each;
 * `options.useDora` writes `use_dora` (the DoRA kind passes it) and `options.fanInFanOut` PEFT's
 * `fan_in_fan_out` (layers whose checkpoint stores `[in, out]`, as GPT-2's `Conv1D`); ranks and alphas may differ by layer, and are then written as PEFT's `rank_pattern` and
 * `alpha_pattern`, keyed by module name. The metadata records this library's convention and alpha(s), so
 * that reading restores them exactly.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { LoRALayer } from "../lora.ts";
 * import { writeConfig } from "./config.ts";
 * const [a, b] = [new LoRALayer(6, 4, 2, 8), new LoRALayer(4, 3, 3, 8)];
 * const { config } = writeConfig([["layers.0", a], ["layers.2", b]], "default");
 * assert.equal(config.r, 2);
 * assert.equal(config.lora_alpha, 16);
 * assert.deepEqual(config.rank_pattern, { "layers.2": 3 });
 * assert.deepEqual(config.alpha_pattern, { "layers.2": 24 }); // PEFT's lora_alpha / r is 8 in both layers
 * a.dispose();
 * b.dispose();
 * ```
 */
export function writeConfig(
  loras: readonly (readonly [string, LoRALayer])[],
  adapterName: string,
  options: { useDora?: boolean; fanInFanOut?: boolean } = {},
): { config: LoraConfig; metadata: Record<string, string> } {
  const [firstModule, first] = loras[0];
  const kind = (lora: LoRALayer) =>
    `convention ${lora.convention}` +
    (peftInit(lora.init) === true ? "" : `, init_lora_weights ${JSON.stringify(peftInit(lora.init))}`);
  for (const [module, lora] of loras) {
    if (kind(lora) !== kind(first)) {
      throw new Error(
        `adapterToFiles: adapter "${adapterName}" has ${kind(lora)} in ${module} but ${kind(first)} in ` +
          `${firstModule}; PEFT's config holds one of each.`,
      );
    }
  }
  const convention = first.convention;
  const peftAlpha = (lora: LoRALayer) => convention === "tutorial" ? lora.alpha * lora.rank : lora.alpha;
  const rankPattern: Record<string, number> = {}, alphaPattern: Record<string, number> = {};
  for (const [module, lora] of loras) {
    if (lora.rank !== first.rank) rankPattern[module] = lora.rank;
    if (peftAlpha(lora) !== peftAlpha(first)) alphaPattern[module] = peftAlpha(lora);
  }
  const config: LoraConfig = {
    peft_type: "LORA",
    task_type: null,
    base_model_name_or_path: null,
    r: first.rank,
    lora_alpha: peftAlpha(first),
    use_rslora: convention === "rslora",
    target_modules: loras.map(([module]) => module),
    lora_dropout: 0,
    bias: "none",
    fan_in_fan_out: options.fanInFanOut ?? false,
    init_lora_weights: peftInit(first.init),
    inference_mode: true,
    modules_to_save: null,
    // PEFT writes these always; its loader reads missing ones as empty or false, so files that do not need
    // them leave them out (and stay what they were before patterns and DoRA existed here).
    ...(Object.keys(rankPattern).length > 0 ? { rank_pattern: rankPattern } : {}),
    ...(Object.keys(alphaPattern).length > 0 ? { alpha_pattern: alphaPattern } : {}),
    ...(options.useDora ? { use_dora: true } : {}),
  };
  const alphas = new Set(loras.map(([, lora]) => lora.alpha));
  const alpha = alphas.size === 1
    ? String(first.alpha)
    : JSON.stringify(Object.fromEntries(loras.map(([module, lora]) => [module, lora.alpha])));
  return { config, metadata: { format: "pt", [CONVENTION_KEY]: convention, [ALPHA_KEY]: alpha } };
}

/**
 * Parses and checks the text of an `adapter_config.json`: a PEFT LoRA config this library can load. Throws,
 * naming the field, for anything else: another `peft_type`, a rank that is not a positive integer, an alpha
 * that is not finite, targets that are neither names nor a regular expression, patterns with bad values,
 * flags that are not booleans, or a start (`init_lora_weights`) such as `"olora"` or `"loftq"` that changes the base
 * weight in a way the file does not record.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readConfig } from "./config.ts";
 * const config = readConfig('{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}');
 * assert.equal(config.use_rslora, false);
 * ```
 */
export function readConfig(text: string): LoraConfig {
  const c = parseConfig(text);
  if (c.peft_type !== "LORA") {
    const found = c.peft_type === undefined ? "no peft_type" : `peft_type ${JSON.stringify(c.peft_type)}`;
    throw new Error(`loadAdapter: ${ADAPTER_CONFIG_FILE} has ${found}; expected "LORA".`);
  }
  return checkLoraConfig(c);
}

/**
 * The text of an `adapter_config.json` as an object, or an error saying it is not JSON or not an object.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseConfig } from "./config.ts";
 * assert.equal(parseConfig('{"peft_type": "VERA"}').peft_type, "VERA");
 * assert.throws(() => parseConfig("[1]"), /must hold a JSON object/);
 * ```
 */
export function parseConfig(text: string): Record<string, unknown> {
  const where = `loadAdapter: ${ADAPTER_CONFIG_FILE}`;
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (error) {
    throw new SyntaxError(`${where} is not valid JSON (${(error as Error).message}).`);
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw new SyntaxError(`${where} must hold a JSON object.`);
  }
  return config as Record<string, unknown>;
}

/**
 * Checks the fields of a LoRA or DoRA config (see {@linkcode readConfig}) and returns it with PEFT's defaults
 * filled in.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkLoraConfig } from "./config.ts";
 * const config = checkLoraConfig({ peft_type: "LORA", r: 4, lora_alpha: 8, target_modules: ["layers.0"] });
 * assert.equal(config.use_rslora, false);
 * assert.throws(() => checkLoraConfig({ peft_type: "LORA", r: 0, lora_alpha: 8, target_modules: [] }), /r = 0/);
 * ```
 */
export function checkLoraConfig(c: Record<string, unknown>): LoraConfig {
  const where = `loadAdapter: ${ADAPTER_CONFIG_FILE}`;
  if (!isRank(c.r)) throw new RangeError(`${where} has r = ${JSON.stringify(c.r)}; expected a positive integer.`);
  if (!isAlpha(c.lora_alpha)) {
    throw new RangeError(`${where} has lora_alpha = ${JSON.stringify(c.lora_alpha)}; expected a finite number.`);
  }
  for (
    const [field, valid, what] of [
      ["rank_pattern", isRank, "positive integers"],
      ["alpha_pattern", isAlpha, "finite numbers"],
    ] as const
  ) {
    const pattern = c[field];
    if (pattern === undefined || pattern === null) continue;
    if (typeof pattern !== "object" || Array.isArray(pattern) || !Object.values(pattern).every(valid)) {
      throw new RangeError(
        `${where} has ${field} ${JSON.stringify(pattern)}; expected module names mapped to ${what}.`,
      );
    }
    for (const key of Object.keys(pattern)) compileTargetPattern(key, `${where} ${field}`);
  }
  const targets = c.target_modules;
  if (!(typeof targets === "string" || (Array.isArray(targets) && targets.every((t) => typeof t === "string")))) {
    throw new Error(
      `${where} has target_modules ${JSON.stringify(targets)}; expected a list of names or a regular expression.`,
    );
  }
  if (typeof targets === "string" && targets.toLowerCase() !== "all-linear") {
    compileTargetPattern(targets, `${where} target_modules`);
  }
  for (const flag of ["use_rslora", "use_dora", "fan_in_fan_out"]) {
    if (c[flag] !== undefined && c[flag] !== null && typeof c[flag] !== "boolean") {
      throw new Error(`${where} has ${flag} ${JSON.stringify(c[flag])}; expected true or false.`);
    }
  }
  const init = c.init_lora_weights;
  if (
    !(init === undefined || typeof init === "boolean" || (typeof init === "string" && READABLE_INITS.includes(init)))
  ) {
    const readable = READABLE_INITS.map((i) => `"${i}"`).join(", ");
    throw new Error(
      `${where} has init_lora_weights ${JSON.stringify(init)}; this library reads true, false, ${readable} ` +
        "(the starts that leave the base weight as it is, and PiSSA).",
    );
  }
  return {
    ...c,
    use_rslora: c.use_rslora === true,
    fan_in_fan_out: c.fan_in_fan_out === true,
    rank_pattern: (c.rank_pattern ?? {}) as Record<string, number>,
    alpha_pattern: (c.alpha_pattern ?? {}) as Record<string, number>,
  } as unknown as LoraConfig;
}

/**
 * Rank, alpha and convention of the adapter on `module`, from the config (its patterns included) and the
 * safetensors metadata. Without this library's metadata (a file PEFT wrote) the convention is PEFT's:
 * `"paper"` (`lora_alpha / r`), or `"rslora"` with `use_rslora`. With it, this library's convention and alpha
 * are restored exactly, after checking that they give PEFT's scaling.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layerSettings, readConfig } from "./config.ts";
 * const config = readConfig(
 *   '{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], ' +
 *     '"rank_pattern": {"v_proj": 4}}',
 * );
 * assert.deepEqual(layerSettings(config, {}, "blocks.0.attn.v_proj"), { rank: 4, alpha: 16, convention: "paper" });
 * ```
 */
export function layerSettings(config: LoraConfig, metadata: Record<string, string>, module: string): LayerSettings {
  const rank = layerRank(config, module);
  const peftAlpha = patternValue(config.alpha_pattern, module) ?? config.lora_alpha;
  const peftConvention: ScalingConvention = config.use_rslora ? "rslora" : "paper";
  const peftScaling = config.use_rslora ? peftAlpha / Math.sqrt(rank) : peftAlpha / rank;
  if (!Number.isFinite(Math.fround(peftScaling))) {
    const entry = alphaEntry(config, module);
    throw new RangeError(
      `loadAdapter: ${module}'s scaling, ${entry} ${peftAlpha} / ${config.use_rslora ? "√" : ""}r ${rank}, is ` +
        `${peftScaling}, which float32 cannot hold.`,
    );
  }
  const recorded = metadata[CONVENTION_KEY];
  if (recorded === undefined) return { rank, alpha: peftAlpha, convention: peftConvention };
  const given = metadata[ALPHA_KEY] ?? "";
  const alpha = Number(given.startsWith("{") ? parseAlphas(given)[module] : given);
  const convention = recorded as ScalingConvention;
  const fits = (convention === "tutorial" && !config.use_rslora) || convention === peftConvention;
  if (!fits || !Number.isFinite(alpha)) {
    throw new Error(
      `loadAdapter: the safetensors metadata records convention "${recorded}", alpha ${given} for ${module}, ` +
        `which the config (use_rslora: ${config.use_rslora}) does not allow.`,
    );
  }
  const ours = loraScaling(alpha, rank, convention);
  if (Math.abs(ours - peftScaling) > 1e-6 * Math.max(1, Math.abs(peftScaling))) {
    throw new Error(
      `loadAdapter: the config's scaling for ${module} (lora_alpha ${peftAlpha}, r ${rank}) is ${peftScaling}, ` +
        `but the metadata's alpha ${alpha} (${convention}) gives ${ours}.`,
    );
  }
  return { rank, alpha, convention };
}

/**
 * The rank of the adapter on `module`: its `rank_pattern` entry, or the config's `r`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layerRank, readConfig } from "./config.ts";
 * const config = readConfig('{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "all-linear", ' +
 *   '"rank_pattern": {"mlp\\\\.fc\\\\d": 4}}');
 * assert.equal(layerRank(config, "blocks.0.mlp.fc1"), 4);
 * assert.equal(layerRank(config, "blocks.0.attn.q_proj"), 8);
 * ```
 */
export function layerRank(config: LoraConfig, module: string): number {
  return patternValue(config.rank_pattern, module) ?? config.r;
}

/**
 * PEFT's `init_lora_weights` for a start of this library: its own names, `true` for the other random ones.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { peftInit } from "./config.ts";
 * assert.equal(peftInit("kaiming"), true);
 * assert.equal(peftInit("pissa"), "pissa");
 * ```
 */
export function peftInit(init: LoRAInit): boolean | string {
  return init === "gaussian" || init === "pissa" ? init : true;
}

/** The value of the first pattern key that matches `module` (PEFT's `get_pattern_key`), if any. */
function patternValue(pattern: Record<string, number> | undefined, module: string): number | undefined {
  const key = patternKey(pattern, module);
  return key === undefined ? undefined : pattern![key];
}

function patternKey(pattern: Record<string, number> | undefined, module: string): string | undefined {
  return Object.keys(pattern ?? {}).find((key) =>
    compileTargetPattern(key, "loadAdapter: adapter_config.json pattern").matchesKey(module)
  );
}

/**
 * The config entry that sets `module`'s alpha: `alpha_pattern["<key>"]` when a key matches it, else
 * `lora_alpha`; for error messages.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { alphaEntry, readConfig } from "./config.ts";
 * const config = readConfig('{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["a", "b"], ' +
 *   '"alpha_pattern": {"b": 0}}');
 * assert.equal(alphaEntry(config, "x.b"), 'alpha_pattern["b"]');
 * assert.equal(alphaEntry(config, "x.a"), "lora_alpha");
 * ```
 */
export function alphaEntry(config: LoraConfig, module: string): string {
  const key = patternKey(config.alpha_pattern, module);
  return key === undefined ? "lora_alpha" : `alpha_pattern[${JSON.stringify(key)}]`;
}

function parseAlphas(text: string): Record<string, number> {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}

function isRank(value: unknown): boolean {
  return Number.isInteger(value) && (value as number) > 0;
}

function isAlpha(value: unknown): boolean {
  return typeof value === "number" && Number.isFinite(value);
}
