/**
 * The notebooks in `notebooks/`: their code type-checks, they are committed with clean outputs, their helper
 * modules work, and they run top to bottom in the real Deno Jupyter kernel without losing output.
 *
 *     deno test --allow-read --allow-run --allow-env tests/notebooks_test.ts
 *
 * The kernel run needs Debian's jupyter-client, python3-nbclient and python3-nbformat under /usr/bin/python3
 * and the Deno kernelspec (`deno jupyter --install`). Where they are missing that test is skipped with a
 * message — except when `CI` is set, where it fails instead.
 *
 * @module
 */
import assert from "node:assert/strict";
import { bestRankR, frobenius, subtract, svd, transpose } from "../notebooks/support/linalg.ts";
import { lineChart } from "../notebooks/support/plot.ts";
import { formatProgress } from "../notebooks/support/progress.ts";
import { extractDeclaration, readLib, selectMembers } from "../notebooks/support/source.ts";
import { table } from "../notebooks/support/table.ts";
import { notebookToModule } from "../notebooks/support/typecheck.ts";

const ROOT = new URL("../", import.meta.url);
const NOTEBOOKS = new URL("notebooks/", ROOT);
const PYTHON = "/usr/bin/python3";

interface Output {
  output_type: string;
  text?: string;
  data?: Record<string, unknown>;
  ename?: string;
}
interface Cell {
  cell_type: string;
  source: string | string[];
  outputs?: Output[];
  execution_count?: number | null;
}
interface Notebook {
  cells: Cell[];
  metadata: { kernelspec?: { name?: string } };
}

function notebookNames(): string[] {
  return [...Deno.readDirSync(NOTEBOOKS)].map((e) => e.name).filter((n) => /^\d\d_.*\.ipynb$/.test(n)).sort();
}

function readNotebook(name: string): Notebook {
  return JSON.parse(Deno.readTextFileSync(new URL(name, NOTEBOOKS)));
}

const source = (cell: Cell) => (Array.isArray(cell.source) ? cell.source.join("") : cell.source);

async function run(command: string, args: string[]): Promise<{ code: number; text: string }> {
  const { code, stdout, stderr } = await new Deno.Command(command, {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1" },
  }).output();
  return { code, text: new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr) };
}

Deno.test("notebooks: there are numbered notebooks, each for the Deno kernel", () => {
  const names = notebookNames();
  assert.ok(names.length >= 6, `expected at least 6 notebooks, found ${names.join(", ")}`);
  for (const name of names) assert.equal(readNotebook(name).metadata.kernelspec?.name, "deno", name);
});

Deno.test("notebooks: every cell ends with a newline, as deno fmt --check requires", () => {
  // On a clean cache `deno fmt --check` reports a notebook cell without a final newline as unformatted, while
  // `deno fmt` leaves it as it is and caches the file as formatted: locally the check then passes, in CI not.
  for (const name of notebookNames()) {
    readNotebook(name).cells.forEach((cell, i) => {
      const text = source(cell);
      assert.ok(
        text === "" || text.endsWith("\n"),
        `${name}, cell ${i + 1}: source does not end with a newline (deno task notebooks adds it; or add it by hand)`,
      );
    });
  }
});

Deno.test("notebooks: the code of every notebook type-checks", async () => {
  const { code, text } = await run(Deno.execPath(), [
    "run",
    "--allow-read",
    "--allow-write",
    "--allow-run",
    "--allow-env",
    "notebooks/support/typecheck.ts",
  ]);
  assert.equal(code, 0, text);
});

Deno.test("notebooks: committed with outputs that hold no error, ANSI code, machine path or tfjs banner", () => {
  const root = ROOT.pathname.replace(/\/$/, "");
  for (const name of notebookNames()) {
    readNotebook(name).cells.forEach((cell, i) => {
      if (cell.cell_type !== "code" || source(cell).trim() === "") return;
      const where = `${name}, cell ${i + 1}`;
      assert.equal(typeof cell.execution_count, "number", `${where} was not executed: run deno task notebooks`);
      for (const output of cell.outputs ?? []) {
        assert.notEqual(output.output_type, "error", `${where} holds an error output (${output.ename})`);
        const text = JSON.stringify(output);
        assert.ok(!text.includes("\\u001b"), `${where}: ANSI escape code in the output`);
        for (const path of [root, "file:///", "/root/", "/home/"]) {
          assert.ok(!text.includes(path), `${where}: absolute path ${path} in the output`);
        }
        assert.ok(!/Hi there|running TensorFlow\.js in Node\.js/.test(text), `${where}: tfjs banner in the output`);
      }
    });
  }
});

Deno.test("notebooks: the lib/ source they show is today's lib/ (re-run the notebooks after editing lib/)", async () => {
  const call = /showSource\("([^"]+)", "([^"]+)"(?:, \{ members: \[([^\]]*)\] \})?\)/;
  let checked = 0;
  for (const name of notebookNames()) {
    for (const cell of readNotebook(name).cells) {
      const match = cell.cell_type === "code" ? call.exec(source(cell)) : null;
      if (match === null) continue;
      const [, file, declaration, memberList] = match;
      let excerpt = extractDeclaration(await readLib(file), declaration);
      const members = memberList?.split(",").map((m) => JSON.parse(m.trim()) as string);
      if (members) excerpt = selectMembers(excerpt, members);
      const shown = cell.outputs?.map((o) => o.data?.["text/plain"]).find((t) => t !== undefined);
      const text = Array.isArray(shown) ? shown.join("") : String(shown);
      const part = members ? ` (members ${members.join(", ")})` : "";
      const expected =
        `\`lib/${file}\`, \`${declaration}\`${part}, lines ${excerpt.first}–${excerpt.last}:\n\n${excerpt.code}`;
      assert.equal(text, expected, `${name}: the output of showSource("${file}", "${declaration}") is stale`);
      checked++;
    }
  }
  assert.ok(checked >= 9, `only ${checked} showSource cells found`);
});

Deno.test("notebooks: cells become one module, with relative imports made absolute", () => {
  const { code, origins } = notebookToModule({
    cells: [
      { cell_type: "markdown", source: "# title" },
      { cell_type: "code", source: 'import { table } from "./support/table.ts";\nconst a = 1;\na' },
      { cell_type: "code", source: ["const b = a + 1;\n", "b"] },
    ],
  }, "00_x.ipynb");
  assert.match(code, /from "file:\/\/\/.*\/notebooks\/support\/table\.ts"/);
  assert.match(code, /\na\n;\n\/\/ cell 3\nconst b = a \+ 1;\nb\n;/);
  const line = code.split("\n").indexOf("const b = a + 1;");
  assert.deepEqual(origins[line], { notebook: "00_x.ipynb", cell: 3, line: 1 });
});

Deno.test("notebooks/support/linalg: SVD reconstructs, and truncation meets the Eckart–Young bound", () => {
  let state = 7;
  const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5;
  const a = Array.from({ length: 7 }, () => Array.from({ length: 5 }, random));
  for (const m of [a, transpose(a)]) {
    const d = svd(m);
    assert.deepEqual([...d.s].sort((x, y) => y - x), d.s);
    assert.ok(frobenius(subtract(m, bestRankR(m, 5, d))) < 1e-12);
    for (let r = 0; r <= 5; r++) {
      const tail = Math.sqrt(d.s.slice(r).reduce((s, x) => s + x * x, 0));
      assert.ok(Math.abs(frobenius(subtract(m, bestRankR(m, r, d))) - tail) < 1e-12, `rank ${r}`);
    }
  }
});

Deno.test("notebooks/support/source: extracts tested declarations and members from lib/", async () => {
  const layers = await readLib("layers.ts");
  const lora = extractDeclaration(layers, "LoRALayer");
  assert.match(lora.code, /^\/\*\*/);
  assert.match(lora.code, /export class LoRALayer implements Module \{/);
  assert.match(lora.code, /\n\}$/);
  assert.equal(layers.split("\n")[lora.first - 1], "/**");
  const some = selectMembers(extractDeclaration(layers, "LinearWithLoRA"), ["apply", "merge"]);
  assert.match(some.code, /^export class LinearWithLoRA/);
  assert.ok(some.code.includes("\n  apply("));
  assert.ok(some.code.includes("\n  // …\n"));
  assert.throws(() => extractDeclaration(layers, "NoSuchThing"), /no exported declaration named NoSuchThing/);
});

Deno.test("notebooks/support: plots are bare SVG, tables and progress lines are plain text too", () => {
  const figure = lineChart({ series: [{ name: "a", points: [[1, 1], [2, 2]] }], x: "x", y: "y", title: "t" });
  assert.match(figure.svg, /^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.match(figure.svg, /<\/svg>$/);
  const bundle = figure.mediaBundle();
  assert.equal(bundle["text/html"], figure.svg);
  assert.equal(bundle["image/svg+xml"], figure.svg);
  assert.equal(table(["k", "v"], [["a", 1]]).text, "k  v\n-  -\na  1");
  const line = formatProgress({ epoch: 1, epochs: 10, batch: 938, batches: 938, loss: 0.5, seconds: 2 });
  assert.equal(line, "epoch  2/10 ████████████████████ batch 938/938  loss 0.5000  2.0 s");
});

/** Whether the Jupyter packages and the Deno kernelspec are there; if not, why. */
function jupyterStatus(): { ok: boolean; why: string } {
  try {
    const { code, stderr } = new Deno.Command(PYTHON, {
      args: [
        "-c",
        "import nbclient, nbformat, jupyter_client.kernelspec as k; " +
        "assert 'deno' in k.find_kernel_specs(), 'no deno kernelspec: run deno jupyter --install'",
      ],
    }).outputSync();
    return { ok: code === 0, why: new TextDecoder().decode(stderr).trim().split("\n").at(-1) ?? "" };
  } catch (error) {
    return { ok: false, why: `${PYTHON} cannot run: ${error}` };
  }
}

const jupyter = jupyterStatus();
const inCi = (Deno.env.get("CI") ?? "") !== "";
if (!jupyter.ok && !inCi) {
  console.warn(
    `Skipping the notebook run in the Deno kernel: ${jupyter.why}. Install the Debian packages jupyter-client ` +
      "jupyter-core python3-nbclient python3-nbformat, then run deno jupyter --install.",
  );
}

Deno.test({
  name: "notebooks: run top to bottom in the Deno kernel, with as many outputs as committed",
  ignore: !jupyter.ok && !inCi,
  fn: async () => {
    assert.ok(jupyter.ok, `CI is set but the notebooks cannot run in Jupyter: ${jupyter.why}`);
    const { code, text } = await run(PYTHON, ["notebooks/support/run.py", "--scratch"]);
    assert.equal(code, 0, text);
    for (const name of notebookNames()) {
      const match = text.match(new RegExp(`ok notebooks/${name.replace(".", "\\.")}: \\d+ code cells, (\\d+) outputs`));
      assert.ok(match, `no result for ${name} in:\n${text}`);
      const committed = readNotebook(name).cells.reduce((n, c) => n + (c.outputs?.length ?? 0), 0);
      assert.equal(Number(match[1]), committed, `${name}: ${match[1]} outputs now, ${committed} committed`);
    }
  },
});
