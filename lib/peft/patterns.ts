/**
 * The regular expressions of `target_modules`, `rank_pattern` and `alpha_pattern`, matched in linear time by
 * RE2 (`npm:re2js`). Kept apart from `targets.ts`, which needs the adapter layers, so that the config reader
 * can use it without importing them.
 *
 * @module
 */
import { RE2JS } from "re2js";

/**
 * The longest regular expression {@linkcode compileTargetPattern} accepts, in characters: 20,000, room for an
 * alternation of several hundred full module names (which compiles in about 0.1 s here) while keeping the
 * compiled program, and so the time to match one name, bounded.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compileTargetPattern, MAX_PATTERN_LENGTH } from "./patterns.ts";
 * assert.throws(() => compileTargetPattern("a".repeat(MAX_PATTERN_LENGTH + 1), "test"), /longer than 20000/);
 * ```
 */
export const MAX_PATTERN_LENGTH = 20_000;

/** A regular expression over module names, compiled by {@linkcode compileTargetPattern}. */
export interface TargetPattern {
  /** The pattern as given. */
  readonly source: string;
  /** Whether the pattern matches all of `name`: Python's `re.fullmatch(source, name)`, as `target_modules` uses. */
  fullMatch(name: string): boolean;
  /**
   * Whether the pattern matches the end of `name` at a dot boundary, PEFT's rule for the keys of `rank_pattern`
   * and `alpha_pattern` (`get_pattern_key` in `peft/utils/other.py`): `re.match(rf"(.*\.)?({source})$", name)`.
   * So `"q_proj"` selects `blocks.0.attn.q_proj`, and `"^blocks.0.attn.q_proj"` that module only.
   */
  matchesKey(name: string): boolean;
}

const PATTERN_CACHE = new Map<string, TargetPattern>();

/**
 * Compiles `pattern`, a regular expression over module names from a caller or a file, with a linear-time
 * engine, [RE2JS](https://github.com/le0pard/re2js) (a JavaScript port of Google's RE2), so that no pattern
 * can make matching hang: time grows with the name's length times the pattern's size, never exponentially, and
 * patterns such as `(a+)+$` or `(a|aa)+$` that take a backtracking engine (JavaScript's `RegExp`, Python's
 * `re`) years on a long name take milliseconds. `where` opens every error message: the caller and, for a
 * pattern read from a file, the file and field (`"loadAdapter: adapter_config.json target_modules"`).
 *
 * The pattern is first checked on its own, so text that is not a regular expression by itself, such as `a)`
 * (which would close a group if pasted into `^(?:…)$`), is refused. The syntax is RE2's
 * (<https://github.com/google/re2/wiki/Syntax>), which agrees with Python's `re`, the syntax PEFT's patterns are
 * written in, for everything module names need: literals and `\.`, `.`, classes `[…]` and `[^…]`, `\d`, `\w`,
 * `\s`, alternation, groups `(…)`, `(?:…)`, `(?P<name>…)`, the quantifiers `* + ? {m} {m,n}` and their lazy
 * forms, anchors `^ $ \A \b`, and inline flags such as `(?i)`. Python's `\Z` is read as RE2's `\z`, and
 * Python's `{,n}` as `{0,n}`. Lookbehind `(?<=…)` / `(?<!…)` is accepted without capturing groups inside
 * (RE2JS's linear-time lookbehind). Where the engines differ:
 *
 * - refused, with an error naming the construct and its position: lookahead `(?=…)` and `(?!…)`, backreferences
 *   `\1` and `(?P=name)`, atomic groups `(?>…)`, possessive quantifiers `*+ ++ ?+`, conditionals `(?(1)…)` and
 *   comments `(?#…)`: RE2 leaves them out to keep every match linear in time;
 * - `\d`, `\w`, `\s` and `\b` are ASCII-only here (Python's are Unicode-aware), repeat counts stop at 1000,
 *   and `$` matches only at the very end (Python's also before a final newline, which module names never have);
 * - a pattern of more than {@linkcode MAX_PATTERN_LENGTH} characters is refused.
 *
 * The `target_modules`, `exclude_modules`, `rank_pattern` and `alpha_pattern` patterns of PEFT's test suite
 * (`tests/` of peft 0.20.1.dev0, as read) compile and match as Python matches them (the project's tests compare
 * the two on the same names), except one: `^(model(?=\.).*\.(q_proj|…))$` in
 * `tests/test_integrations.py` (the shape ms-swift writes), refused for its lookahead. Written without it,
 * `^(model\.(?:.*\.)?(q_proj|…))$` selects the same modules.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compileTargetPattern } from "./patterns.ts";
 * const pattern = compileTargetPattern(".*\\.(q|v)_proj", "addLoRA: targetModules");
 * assert.ok(pattern.fullMatch("blocks.0.attn.q_proj"));
 * assert.ok(!pattern.fullMatch("blocks.0.attn.k_proj"));
 * assert.ok(compileTargetPattern("q_proj", "rank_pattern").matchesKey("blocks.0.attn.q_proj"));
 * const started = performance.now();
 * assert.ok(!compileTargetPattern("(a+)+$", "test").fullMatch("a".repeat(10_000) + "!")); // no hang
 * assert.ok(performance.now() - started < 1000);
 * assert.throws(() => compileTargetPattern("q_proj)", "config.json target_modules"), /unexpected \)/);
 * assert.throws(() => compileTargetPattern("^(?!.*lm_head).*", "test"), /negative lookahead "\(\?!" at position 1/);
 * ```
 */
export function compileTargetPattern(pattern: string, where: string): TargetPattern {
  if (typeof pattern !== "string") {
    throw new TypeError(
      `${where}: a regular expression must be a string; got ${JSON.stringify(pattern) ?? typeof pattern}.`,
    );
  }
  const cached = PATTERN_CACHE.get(pattern);
  if (cached !== undefined) return cached;
  if (pattern.length > MAX_PATTERN_LENGTH) {
    throw new RangeError(
      `${where}: the regular expression "${pattern.slice(0, 40)}…" has ${pattern.length} characters, longer than ` +
        `${MAX_PATTERN_LENGTH}.`,
    );
  }
  const translated = toRE2Syntax(pattern, where);
  const full = compileRE2(translated, pattern, where); // the pattern on its own: a stray ")" fails here
  let suffix: RE2JS | undefined;
  const compiled: TargetPattern = {
    source: pattern,
    fullMatch: (name) => full.testExact(name),
    matchesKey: (name) => (suffix ??= compileRE2(`(?:.*\\.)?(?:${translated})`, pattern, where)).testExact(name),
  };
  if (PATTERN_CACHE.size >= 256) PATTERN_CACHE.clear();
  PATTERN_CACHE.set(pattern, compiled);
  return compiled;
}

function compileRE2(re2: string, pattern: string, where: string): RE2JS {
  try {
    return RE2JS.compile(re2, RE2JS.LOOKBEHINDS);
  } catch (error) {
    const detail = (error as Error).message.replace(/^error parsing regexp: /, "");
    throw new SyntaxError(
      `${where}: "${pattern}" is not a valid regular expression (${detail}); expected RE2 syntax, which ` +
        `agrees with Python's re for module-name patterns.`,
    );
  }
}

/**
 * `pattern` with Python's `\Z` and `{,n}` spelled as RE2 spells them; throws, naming it and its position, on a
 * construct that no linear-time engine runs. Escapes and character classes are skipped over as Python reads them.
 */
function toRE2Syntax(pattern: string, where: string): string {
  const refuse = (construct: string, text: string, at: number): never => {
    throw new SyntaxError(
      `${where}: "${pattern}" uses ${construct} "${text}" at position ${at}, which the linear-time engine that ` +
        `matches module names (RE2) does not support; write the pattern without it.`,
    );
  };
  let out = "";
  let inClass = false;
  let classStart = 0; // where a class's members start: a "]" there is a member, not the end
  let afterQuantifier = false;
  for (let i = 0; i < pattern.length;) {
    const c = pattern[i];
    if (c === "\\") {
      const next = pattern[i + 1] ?? "";
      if (!inClass && /[1-9]/.test(next) && !/^[0-7]{3}$/.test(pattern.slice(i + 1, i + 4))) {
        refuse("a backreference", `\\${next}`, i);
      }
      out += !inClass && next === "Z" ? "\\z" : c + next;
      i += 1 + next.length;
      afterQuantifier = false;
      continue;
    }
    if (inClass) {
      if (c === "]" && i > classStart) inClass = false;
      out += c;
      i++;
      continue;
    }
    if (c === "[") {
      inClass = true;
      classStart = pattern[i + 1] === "^" ? i + 2 : i + 1;
      out += pattern.slice(i, classStart);
      i = classStart;
      afterQuantifier = false;
      continue;
    }
    if (c === "(" && pattern[i + 1] === "?") {
      const kind = pattern[i + 2];
      if (kind === "=") refuse("a lookahead", "(?=", i);
      if (kind === "!") refuse("a negative lookahead", "(?!", i);
      if (kind === ">") refuse("an atomic group", "(?>", i);
      if (kind === "(") refuse("a conditional", "(?(", i);
      if (kind === "#") refuse("a comment", "(?#", i);
      if (kind === "P" && pattern[i + 3] === "=") refuse("a named backreference", "(?P=", i);
      out += "(?";
      i += 2;
      afterQuantifier = false;
      continue;
    }
    if (c === "{") {
      const repeat = /^\{(\d*)(,?)(\d*)\}/.exec(pattern.slice(i));
      if (repeat !== null && (repeat[1] !== "" || (repeat[2] === "," && repeat[3] !== ""))) {
        if (afterQuantifier) refuse("a repeated quantifier", repeat[0], i);
        out += repeat[1] === "" ? `{0,${repeat[3]}}` : repeat[0];
        i += repeat[0].length;
        afterQuantifier = true;
        continue;
      }
    }
    if (c === "+" && afterQuantifier) refuse("a possessive quantifier", pattern.slice(i - 1, i + 1), i - 1);
    // A "?" right after a quantifier makes it lazy, which RE2 supports; it ends the quantifier.
    afterQuantifier = (c === "*" || c === "+" || c === "?") && !afterQuantifier;
    out += c;
    i++;
  }
  return out;
}
