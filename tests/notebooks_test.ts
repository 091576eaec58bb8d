/**
 * The notebooks in `notebooks/`: their code type-checks, they are committed with clean outputs, their helper
 * modules work, they run top to bottom in the real Deno Jupyter kernel without losing output, and every figure
 * carries a PNG and is drawn when the notebook is opened untrusted (notebooks/support/frontend_check.ts).
 *
 *     deno test --allow-read --allow-run --allow-env tests/notebooks_test.ts
 *
 * The kernel run needs Debian's jupyter-client, python3-nbclient and python3-nbformat under /usr/bin/python3
 * and the Deno kernelspec (`deno jupyter --install`). Where they are missing that test is skipped with a
 * message — except when `CI` is set, where it fails instead. The same holds for the front-end check, which
 * needs Debian's jupyter-notebook and chromium.
 *
 * @module
 */
import assert from "node:assert/strict";
import { lineChart, PNG_SCALE, rasterize } from "../notebooks/support/plot.ts";
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

Deno.test("notebooks/support/source: extracts tested declarations and members from lib/", async () => {
  const source = await readLib("lora.ts");
  const lora = extractDeclaration(source, "LoRALayer");
  assert.match(lora.code, /^\/\*\*/);
  assert.match(lora.code, /export class LoRALayer extends Module \{/);
  assert.match(lora.code, /\n\}$/);
  assert.equal(source.split("\n")[lora.first - 1], "/**");
  const peft = await readLib("peft/layer.ts");
  const some = selectMembers(extractDeclaration(peft, "LinearWithAdapters"), ["apply", "merge"]);
  assert.match(some.code, /^export class LinearWithAdapters/);
  assert.ok(some.code.includes("\n  apply<"));
  assert.ok(some.code.includes("\n  merge("));
  assert.ok(some.code.includes("\n  // …\n"));
  assert.throws(() => extractDeclaration(source, "NoSuchThing"), /no exported declaration named NoSuchThing/);
});

Deno.test("notebooks/support: plots are bare SVG with a PNG, tables and progress lines are plain text too", async () => {
  const figure = lineChart({ series: [{ name: "a", points: [[1, 1], [2, 2]] }], x: "x", y: "y", title: "t" });
  assert.match(figure.svg, /^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.match(figure.svg, /<\/svg>$/);
  const bundle = await figure.mediaBundle();
  assert.deepEqual(Object.keys(bundle).sort(), ["image/png", "image/svg+xml", "text/html", "text/plain"]);
  assert.equal(bundle["image/svg+xml"], figure.svg);
  assert.equal(htmlImageSvg(bundle["text/html"]), figure.svg);
  assert.deepEqual(pngSize(bundle["image/png"]), { width: 640 * PNG_SCALE, height: 320 * PNG_SCALE });
  const t = table(["k", "v"], [["a", 1]]);
  assert.equal(t.text, "k  v\n-  -\na  1");
  assert.ok(
    !t.html.includes("style="),
    `a table's HTML must hold no inline style (untrusted Jupyter mangles it):\n${t.html}`,
  );
  const line = formatProgress({ epoch: 1, epochs: 10, batch: 938, batches: 938, loss: 0.5, seconds: 2 });
  assert.equal(line, "epoch  2/10 ████████████████████ batch 938/938  loss 0.5000  2.0 s");
});

Deno.test("notebooks/support/plot: the rasteriser draws text in the bundled font at the asked scale", async () => {
  const svg = (body: string, family = "sans-serif") =>
    `<svg xmlns="http://www.w3.org/2000/svg" width="120" height="30" font-family="${family}">${body}</svg>`;
  const blank = await rasterize(svg(""), 2);
  assert.deepEqual(pngSize(blank), { width: 240, height: 60 });
  assert.deepEqual(pngSize(await rasterize(svg(""), 3)), { width: 360, height: 90 });
  // resvg draws nothing for text whose font it cannot find: text that changes the PNG had a font. Any family,
  // generic or unknown, must resolve to the bundled one, and the result must not depend on the machine.
  const text = '<text x="4" y="20" font-size="14">loss 0.25 × 10³</text>';
  const drawn = await rasterize(svg(text), 2);
  assert.notDeepEqual(drawn, blank, "the text left the PNG blank: no font was found");
  for (const family of ["DejaVu Sans", "system-ui, sans-serif", "NoSuchFont"]) {
    assert.deepEqual(await rasterize(svg(text, family), 2), drawn, `font-family ${family}`);
  }
  await assert.rejects(rasterize(svg(""), 0), /scale must be a positive number, got 0/);
  await assert.rejects(rasterize("<svg", 2), /cannot rasterise the figure, resvg rejected its SVG/);
});

Deno.test("notebooks: every committed figure carries a PNG of its SVG at PNG_SCALE times its size", () => {
  let figures = 0;
  for (const name of notebookNames()) {
    readNotebook(name).cells.forEach((cell, i) => {
      (cell.outputs ?? []).forEach((output, j) => {
        const data = output.data ?? {};
        const plain = joined(data["text/plain"]);
        if (!("image/svg+xml" in data || "image/png" in data || plain.startsWith("[figure: "))) return;
        figures++;
        const where = `${name}, cell ${i + 1}, output ${j + 1} (${plain})`;
        assert.ok("image/svg+xml" in data, `${where}: a figure without image/svg+xml`);
        assert.ok(
          "image/png" in data,
          `${where}: a figure without image/png: re-run the notebook (deno task notebooks)`,
        );
        const svg = joined(data["image/svg+xml"]);
        const size = (attribute: string) => Number(new RegExp(`^<svg\\b[^>]*\\s${attribute}="([^"]+)"`).exec(svg)?.[1]);
        const expected = { width: size("width") * PNG_SCALE, height: size("height") * PNG_SCALE };
        assert.ok(expected.width > 0 && expected.height > 0, `${where}: no width and height on the <svg>`);
        assert.deepEqual(pngSize(joined(data["image/png"])), expected, `${where}: PNG size`);
        if ("text/html" in data) assert.equal(htmlImageSvg(joined(data["text/html"])), svg, `${where}: text/html`);
      });
    });
  }
  assert.ok(figures > 0, "no figure found in the committed notebooks");
});

/** A notebook's multi-line string (a string or a list of lines) as one string. */
function joined(value: unknown): string {
  return Array.isArray(value) ? value.join("") : String(value ?? "");
}

/** Width and height from a PNG's IHDR chunk; the PNG as base64 text (as notebooks store it) or as bytes. */
function pngSize(png: string | Uint8Array): { width: number; height: number } {
  const bytes = typeof png === "string" ? Uint8Array.from(atob(png.replace(/\s/g, "")), (c) => c.charCodeAt(0)) : png;
  assert.deepEqual([...bytes.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "not a PNG: wrong signature");
  assert.equal(new TextDecoder().decode(bytes.subarray(12, 16)), "IHDR", "not a PNG: the first chunk is not IHDR");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/** The SVG inside a figure's `text/html`, which must be one `<img>` with a base64 `data:image/svg+xml` source. */
function htmlImageSvg(html: string): string {
  const match = /^<img src="data:image\/svg\+xml;base64,([A-Za-z0-9+/=]+)"[^<>]*>$/.exec(html);
  assert.ok(match, `a figure's text/html should be one <img> of its SVG, got: ${html.slice(0, 120)}`);
  return new TextDecoder().decode(Uint8Array.from(atob(match[1]), (c) => c.charCodeAt(0)));
}

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

/** Whether Debian's Jupyter Notebook and Chromium are there for the front-end check; if not, why. */
function frontEndStatus(): { ok: boolean; why: string } {
  try {
    Deno.statSync("/usr/bin/chromium");
  } catch {
    return { ok: false, why: "/usr/bin/chromium is missing" };
  }
  const { code } = new Deno.Command(PYTHON, { args: ["-c", "import notebook, nbconvert"], stderr: "null" })
    .outputSync();
  return { ok: code === 0, why: `${PYTHON} cannot import notebook and nbconvert` };
}

const frontEnd = jupyter.ok ? frontEndStatus() : jupyter;
if (!frontEnd.ok && !inCi) {
  console.warn(
    `Skipping the front-end check: ${frontEnd.why}. Install the Debian packages jupyter-notebook ` +
      "jupyter-nbconvert chromium.",
  );
}

Deno.test({
  name: "notebooks: untrusted Jupyter Notebook 6 and nbconvert's HTML draw every committed figure",
  ignore: !frontEnd.ok && !inCi,
  fn: async () => {
    assert.ok(frontEnd.ok, `CI is set but the front-end check cannot run: ${frontEnd.why}`);
    const { code, text } = await run(Deno.execPath(), [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-run",
      "--allow-env",
      "--allow-net=127.0.0.1",
      "notebooks/support/frontend_check.ts",
    ]);
    assert.equal(code, 0, text);
  },
});
