/**
 * Shows the tested source of `lib/` inside a notebook, so that a notebook teaching an implementation shows
 * the very code the tests run, never a copy that can drift from it.
 *
 * @example
 * ```ts
 * import { extractDeclaration } from "./source.ts";
 * const text = "/** Doc. *\/\nexport function f(): number {\n  return 1;\n}\n";
 * console.log(extractDeclaration(text, "f").code.split("\n").length); // 4
 * ```
 *
 * @module
 */

/** A declaration cut out of a source file, with its JSDoc, and where it was. */
export interface Excerpt {
  /** The lines, JSDoc included. */
  code: string;
  /** First line, 1-based. */
  first: number;
  /** Last line, 1-based. */
  last: number;
}

/**
 * Finds `export class|function|interface|type|const NAME` at the start of a line and returns it with the JSDoc
 * block right above it, down to the first line that is exactly `}` (or the declaration's own line when it
 * ends there). Throws when the name is not found, so a renamed declaration fails the notebook run.
 */
export function extractDeclaration(text: string, name: string): Excerpt {
  const lines = text.split("\n");
  const pattern = new RegExp(`^export (?:async )?(?:abstract )?(?:class|function|interface|type|const|let) ${name}\\b`);
  const start = lines.findIndex((line) => pattern.test(line));
  if (start < 0) throw new Error(`no exported declaration named ${name}`);
  let first = start;
  if (lines[start - 1]?.trim() === "*/") {
    while (first > 0 && !lines[first - 1].trimStart().startsWith("/**")) first--;
    first--;
  }
  let last = start;
  if (!/[;}]\s*$/.test(lines[start]) || /\{\s*$/.test(lines[start])) {
    while (last < lines.length - 1 && lines[last] !== "}") last++;
  }
  return { code: lines.slice(first, last + 1).join("\n"), first: first + 1, last: last + 1 };
}

/**
 * Keeps only some members of a class excerpt: the class line (without the class's JSDoc), the named members (with their JSDoc) and the
 * closing brace, with `// …` where lines were left out. A member is a line indented by two spaces that starts
 * with the name (after `get `, `set `, `async `, `override `, `static `, `private `, `readonly `). Throws when a
 * member is not found.
 */
export function selectMembers(excerpt: Excerpt, members: string[]): Excerpt {
  const lines = excerpt.code.split("\n");
  const classLine = lines.findIndex((line) => /^export (?:abstract )?class /.test(line));
  if (classLine < 0) throw new Error("selectMembers needs a class");
  const keep = new Set<number>([classLine, lines.length - 1]);
  for (const member of members) {
    const pattern = new RegExp(`^  (?:(?:get|set|async|override|static|private|readonly|public) )*${member}\\b`);
    const start = lines.findIndex((line) => pattern.test(line));
    if (start < 0) throw new Error(`no member named ${member}`);
    let first = start;
    if (lines[start - 1]?.trim() === "*/") {
      while (first > 0 && !lines[first - 1].trimStart().startsWith("/**")) first--;
      first--;
    }
    let last = start;
    if (/[{(,]\s*$/.test(lines[start])) { while (last < lines.length - 1 && lines[last] !== "  }") last++; }
    for (let i = first; i <= last; i++) keep.add(i);
  }
  const out: string[] = [];
  let skipped = false;
  lines.forEach((line, i) => {
    if (keep.has(i)) {
      if (skipped && out.length > 0) out.push("  // …");
      out.push(line);
      skipped = false;
    } else skipped = true;
  });
  return { code: out.join("\n"), first: excerpt.first + classLine, last: excerpt.last };
}

/** The text of `lib/<file>`, read next to this folder's parent. */
export async function readLib(file: string): Promise<string> {
  return await Deno.readTextFile(new URL(`../../lib/${file}`, import.meta.url));
}

/**
 * The declaration `name` of `lib/<file>` as a Markdown code block headed by its location, for display:
 * make it the last expression of a cell. With `members`, only those members of a class are shown.
 */
export async function showSource(
  file: string,
  name: string,
  options: { members?: string[] } = {},
): Promise<{ [key: symbol]: () => object }> {
  let excerpt = extractDeclaration(await readLib(file), name);
  const part = options.members ? ` (members ${options.members.join(", ")})` : "";
  if (options.members) excerpt = selectMembers(excerpt, options.members);
  const heading = `\`lib/${file}\`, \`${name}\`${part}, lines ${excerpt.first}–${excerpt.last}:`;
  // The JSDoc examples hold ``` fences of their own: the outer fence must be longer than any run inside.
  const longest = Math.max(0, ...(excerpt.code.match(/`+/g) ?? []).map((run) => run.length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  return {
    [Symbol.for("Jupyter.display")]: () => ({
      "text/markdown": `${heading}\n\n${fence}ts\n${excerpt.code}\n${fence}`,
      "text/plain": `${heading}\n\n${excerpt.code}`,
    }),
  };
}
