/**
 * Type-checks the code of every notebook, which `deno check` cannot read from `.ipynb` itself.
 *
 *     deno run --allow-read --allow-write --allow-run --allow-env notebooks/support/typecheck.ts [NOTEBOOK ...]
 *
 * Each notebook's code cells are joined, in order, into one temporary TypeScript module (top-level `await`
 * is fine; `Deno.jupyter` is typed by Deno itself), relative imports are pointed back at `notebooks/`, and
 * all modules are checked in one `deno check` against the repository's `deno.json`. Errors are reported by
 * notebook, cell and line. Because the cells become one module, a notebook must not declare the same
 * top-level name in two cells (the kernel would allow it; a reader would be confused by it anyway).
 *
 * @module
 */

const NOTEBOOKS = new URL("../", import.meta.url);
const REPO = new URL("../", NOTEBOOKS);

/** Where a line of the generated module came from. */
interface Origin {
  notebook: string;
  cell: number;
  line: number;
}

/** A notebook's code cells as one module, and the origin of each of its lines. */
export function notebookToModule(
  notebook: { cells: { cell_type: string; source: string | string[] }[] },
  name: string,
): { code: string; origins: (Origin | null)[] } {
  const lines: string[] = [`// Generated from notebooks/${name} by notebooks/support/typecheck.ts.`];
  const origins: (Origin | null)[] = [null];
  notebook.cells.forEach((cell, index) => {
    if (cell.cell_type !== "code") return;
    const source = Array.isArray(cell.source) ? cell.source.join("") : cell.source;
    lines.push(`// cell ${index + 1}`);
    origins.push(null);
    source.split("\n").forEach((text, i) => {
      lines.push(pointImports(text));
      origins.push({ notebook: name, cell: index + 1, line: i + 1 });
    });
    lines.push(";"); // a cell ending in a bare expression must not run into the next cell
    origins.push(null);
  });
  lines.push("export {};");
  origins.push(null);
  return { code: lines.join("\n") + "\n", origins };
}

/** `"./support/x.ts"` → an absolute `file:` URL, so the module type-checks from a temporary folder. */
function pointImports(line: string): string {
  return line.replace(/(from\s+|import\s*\(\s*|import\s+)(["'])(\.{1,2}\/[^"']+)\2/g, (_, lead, quote, spec) => {
    return `${lead}${quote}${new URL(spec, NOTEBOOKS).href}${quote}`;
  });
}

async function main(args: string[]): Promise<number> {
  const names = args.length > 0 ? args.map((a) => a.replace(/^.*\//, "")) : [];
  if (names.length === 0) {
    for await (const entry of Deno.readDir(NOTEBOOKS)) {
      if (/^\d\d_.*\.ipynb$/.test(entry.name)) names.push(entry.name);
    }
    names.sort();
  }
  const dir = await Deno.makeTempDir({ prefix: "notebook-check-" });
  try {
    const origins = new Map<string, (Origin | null)[]>();
    const files: string[] = [];
    for (const name of names) {
      const notebook = JSON.parse(await Deno.readTextFile(new URL(name, NOTEBOOKS)));
      const module = notebookToModule(notebook, name);
      const file = `${dir}/${name.replace(/\.ipynb$/, ".ts")}`;
      await Deno.writeTextFile(file, module.code);
      origins.set(`file://${file}`, module.origins);
      files.push(file);
    }
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--quiet", "--config", new URL("deno.json", REPO).pathname, ...files],
      env: { NO_COLOR: "1" },
      cwd: REPO.pathname,
    }).output();
    const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    // Map "at file:///tmp/…/01_x.ts:LINE:COL" back to the notebook cell.
    const report = text.replace(/file:\/\/\S+?\.ts:(\d+):(\d+)/g, (match, line, col) => {
      const url = match.slice(0, match.length - `:${line}:${col}`.length);
      const origin = origins.get(url)?.[Number(line) - 1];
      return origin ? `notebooks/${origin.notebook}, cell ${origin.cell}, line ${origin.line}:${col}` : match;
    });
    if (code !== 0) {
      console.error(report.replaceAll(dir + "/", "").replace(/\n*Stack backtrace:[\s\S]*$/, "").trim());
      console.error(`type check FAILED for ${names.length} notebook(s)`);
      return 1;
    }
    console.log(`type check ok: ${names.join(", ")}`);
    return 0;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
