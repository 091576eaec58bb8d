/**
 * Opens the notebooks the way a reader of a fresh clone sees them and counts the figures that are really drawn,
 * in two real front ends, both in headless Chromium:
 *
 * - Debian's Jupyter Notebook 6 (`jupyter-notebook`), each notebook opened UNTRUSTED, as every freshly cloned
 *   notebook is: its outputs then go through Jupyter's HTML sanitizer, and `image/svg+xml` is ignored;
 * - the same, on a copy whose figures lack their `text/html` form, as a viewer that renders no HTML sees them:
 *   every figure must then be drawn from its PNG;
 * - the HTML file that `jupyter nbconvert --to html` writes.
 *
 *     deno task frontend-check [--screenshots DIR] [NOTEBOOK ...]
 *
 * With no NOTEBOOK, checks every `notebooks/[0-9][0-9]_*.ipynb` (about 35 s for seven notebooks on two
 * cores). A figure counts as drawn when its output holds an `<img>` that the browser decoded, or an inline `<svg>`
 * with shapes in it. Each notebook must show as many drawn figures as it has figure outputs (outputs with
 * `image/svg+xml` or `image/png`) in each view, the Jupyter page must report the notebook as not trusted, and no
 * table cell may carry a style the sanitizer mangled (`undefined:undefined`). Exits non-zero otherwise.
 * `--screenshots DIR` saves the first figure as each view draws it, to look at.
 *
 * The notebooks are copied to a temporary folder first, and signatures are kept in memory, so the originals are
 * never trusted, signed or saved by the server. Needs Debian's `jupyter-notebook`, `jupyter-nbconvert` and
 * `chromium` (`apt-get install jupyter-notebook jupyter-nbconvert chromium`); Jupyter runs under
 * `/usr/bin/python3`. Nothing leaves the machine: the server listens on 127.0.0.1 and Chromium runs with its
 * background networking off.
 *
 * @module
 */

const NOTEBOOKS = new URL("../", import.meta.url);
const PYTHON = "/usr/bin/python3";
const CHROMIUM = "/usr/bin/chromium";
/** Longest wait for a page, a server or a browser before the check gives up. */
const TIMEOUT_MS = 60_000;

interface Counts {
  /** Output areas on the page. */
  outputs: number;
  /** Output areas with a drawn figure. */
  figures: number;
  /** How the drawn figures were drawn: `<img>` of a PNG, `<img>` of an SVG, other `<img>`, inline `<svg>`. */
  forms: Record<string, number>;
  /** Tables in the outputs. */
  tables: number;
  /** Elements in the outputs whose style attribute the sanitizer left as `undefined:…`. */
  mangled: number;
  /** `Jupyter.notebook.trusted` on the Notebook page; null elsewhere. */
  trusted: boolean | null;
}

/** Counts what the page shows; runs in the browser, as the source of a function of the output selector. */
const COUNT_IN_PAGE = `async (selector) => {
  const areas = [...document.querySelectorAll(selector)];
  const counts = { outputs: areas.length, figures: 0, forms: {}, tables: 0, mangled: 0,
    trusted: window.Jupyter?.notebook ? window.Jupyter.notebook.trusted : null };
  for (const area of areas) {
    const images = [...area.querySelectorAll("img")];
    await Promise.all(images.map((img) => img.decode().catch(() => {})));
    const image = images.find((img) => img.complete && img.naturalWidth > 0);
    const svg = [...area.querySelectorAll("svg")].find((s) => s.querySelector("path, line, rect, circle, polyline"));
    const form = image
      ? (image.src.startsWith("data:image/png") ? "img/png"
        : image.src.startsWith("data:image/svg+xml") ? "img/svg" : "img/other")
      : svg ? "inline svg" : null;
    if (form) {
      counts.figures++;
      counts.forms[form] = (counts.forms[form] ?? 0) + 1;
    }
    counts.tables += area.querySelectorAll("table").length;
    counts.mangled += [...area.querySelectorAll("[style]")]
      .filter((e) => e.getAttribute("style").includes("undefined")).length;
  }
  return counts;
}`;

/**
 * "ready" once Jupyter Notebook has loaded the notebook, the text of its "Error loading notebook" dialog if that
 * failed, else null. (Other dialogs, such as a kernel chooser where no Deno kernel is registered, do not count.)
 */
const NOTEBOOK_STATE = `window.Jupyter?.notebook?._fully_loaded ? "ready"
  : [...document.querySelectorAll(".modal")].map((m) => m.innerText.trim())
    .filter((text) => text.includes("Error loading notebook")).join(" ") || null`;

/** Output areas: one per output in Jupyter Notebook 6, and in nbconvert's HTML (lab template). */
const OUTPUTS = { notebook: "#notebook-container .output_area", nbconvert: ".jp-OutputArea-child" };

/** Figure outputs in a notebook file: outputs that carry an image form. */
function committedFigures(path: string): number {
  const notebook = JSON.parse(Deno.readTextFileSync(path)) as { cells: { outputs?: { data?: object }[] }[] };
  return notebook.cells.flatMap((c) => c.outputs ?? [])
    .filter((o) => o.data !== undefined && ("image/svg+xml" in o.data || "image/png" in o.data)).length;
}

/** The name of the copy made by {@linkcode withoutFigureHtml}. */
function withoutHtmlName(name: string): string {
  return name.replace(/\.ipynb$/, ".without-html.ipynb");
}

/**
 * The notebook with the `text/html` form removed from its figure outputs: what a viewer that renders no HTML
 * gets. Untrusted Jupyter Notebook then falls through `image/svg+xml`, which it ignores, to `image/png`.
 */
function withoutFigureHtml(path: string): string {
  const notebook = JSON.parse(Deno.readTextFileSync(path));
  for (const cell of notebook.cells) {
    for (const output of cell.outputs ?? []) {
      if (output.data?.["image/png"] !== undefined) delete output.data["text/html"];
    }
  }
  return JSON.stringify(notebook);
}

/** A minimal Chrome DevTools Protocol client over Chromium's browser WebSocket. */
class DevTools {
  #socket: WebSocket;
  #next = 1;
  #pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();

  private constructor(socket: WebSocket) {
    this.#socket = socket;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      const waiting = this.#pending.get(message.id);
      if (!waiting) return;
      this.#pending.delete(message.id);
      if (message.error) waiting.reject(new Error(`DevTools: ${message.error.message}`));
      else waiting.resolve(message.result);
    };
    socket.onclose = () => {
      for (const waiting of this.#pending.values()) waiting.reject(new Error("Chromium closed its DevTools socket"));
      this.#pending.clear();
    };
  }

  static connect(url: string): Promise<DevTools> {
    const socket = new WebSocket(url);
    return new Promise((resolve, reject) => {
      socket.onopen = () => resolve(new DevTools(socket));
      socket.onerror = () => reject(new Error(`cannot connect to Chromium's DevTools at ${url}`));
    });
  }

  // deno-lint-ignore no-explicit-any
  send(method: string, params: object = {}, sessionId?: string): Promise<any> {
    const id = this.#next++;
    this.#socket.send(JSON.stringify({ id, method, params, sessionId }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`DevTools: no answer to ${method} in ${TIMEOUT_MS / 1000} s`));
      }, TIMEOUT_MS);
      const settle = <T>(f: (value: T) => void) => (value: T) => {
        clearTimeout(timer);
        f(value);
      };
      this.#pending.set(id, { resolve: settle(resolve), reject: settle(reject) });
    });
  }

  close(): void {
    this.#socket.close();
  }
}

/** Polls `test` every 100 ms until it returns something other than undefined, or fails after TIMEOUT_MS. */
async function waitFor<T>(what: string, test: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (Date.now() < deadline) {
    const value = await test().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${TIMEOUT_MS / 1000} s waiting for ${what}`);
}

/** One browser tab, driven through DevTools. */
class Tab {
  constructor(readonly devtools: DevTools, readonly session: string) {}

  // deno-lint-ignore no-explicit-any
  async evaluate(expression: string): Promise<any> {
    const { result, exceptionDetails } = await this.devtools.send(
      "Runtime.evaluate",
      { expression, awaitPromise: true, returnByValue: true },
      this.session,
    );
    if (exceptionDetails) throw new Error(`in the page: ${exceptionDetails.exception?.description ?? expression}`);
    return result.value;
  }

  /**
   * Loads `url` and waits until `state`, a page expression, gives a string: "ready", or why the page failed.
   */
  async open(url: string, state: string): Promise<void> {
    await this.devtools.send("Page.navigate", { url }, this.session);
    const result = await waitFor(`${url} to load`, async () => (await this.evaluate(state)) ?? undefined);
    if (result !== "ready") throw new Error(`${url} failed to load: ${result}`);
  }

  count(selector: string): Promise<Counts> {
    return this.evaluate(`(${COUNT_IN_PAGE})(${JSON.stringify(selector)})`);
  }

  /** Saves a PNG of the first output area (matching `selector`) that holds a drawn figure; false if none. */
  async screenshot(selector: string, path: string): Promise<boolean> {
    const box = await this.evaluate(`(() => {
      const area = [...document.querySelectorAll(${JSON.stringify(selector)})].find((a) =>
        [...a.querySelectorAll("img")].some((i) => i.naturalWidth > 0) || a.querySelector("svg path"));
      if (!area) return null;
      area.scrollIntoView({ block: "center" });
      const rects = [area, ...area.querySelectorAll("img, svg")].map((e) => e.getBoundingClientRect());
      const top = Math.min(...rects.map((r) => r.top)) - 8, bottom = Math.max(...rects.map((r) => r.bottom)) + 8;
      const left = Math.min(...rects.map((r) => r.left)), right = Math.max(...rects.map((r) => r.right));
      return { x: left + scrollX, y: top + scrollY, width: right - left, height: bottom - top };
    })()`);
    if (!box) return false;
    const { data } = await this.devtools.send(
      "Page.captureScreenshot",
      { format: "png", clip: { ...box, scale: 1 } },
      this.session,
    );
    await Deno.writeFile(path, Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
    return true;
  }
}

/** Ends every session (and with it its kernel) of the Jupyter server at `base`. */
async function endSessions(base: string): Promise<void> {
  const sessions = await (await fetch(`${base}/api/sessions`)).json() as { id: string }[];
  for (const { id } of sessions) {
    const response = await fetch(`${base}/api/sessions/${id}`, { method: "DELETE" });
    await response.body?.cancel();
    if (!response.ok) throw new Error(`cannot end Jupyter session ${id}: HTTP ${response.status}`);
  }
}

/** A free TCP port on 127.0.0.1. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

function parseArgs(args: string[]): { screenshots?: string; notebooks: string[] } {
  let screenshots: string | undefined;
  const notebooks: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--screenshots") {
      screenshots = args[++i];
      if (!screenshots) throw new Error("--screenshots needs a folder");
    } else if (args[i].startsWith("-")) {
      throw new Error(`unknown option ${args[i]}; expected [--screenshots DIR] [NOTEBOOK ...]`);
    } else {
      notebooks.push(args[i]);
    }
  }
  if (notebooks.length === 0) {
    const dir = NOTEBOOKS.pathname;
    notebooks.push(
      ...[...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => /^\d\d_.*\.ipynb$/.test(n)).sort()
        .map((n) => dir + n),
    );
  }
  for (const path of notebooks) {
    if (!path.endsWith(".ipynb")) throw new Error(`${path}: expected a .ipynb file`);
    Deno.statSync(path); // a missing file fails here, with its name
  }
  return { screenshots, notebooks };
}

function requireTools(): void {
  for (const [path, pkg] of [[PYTHON, "python3"], [CHROMIUM, "chromium"]]) {
    try {
      Deno.statSync(path);
    } catch {
      throw new Error(`${path} is missing: apt-get install ${pkg} jupyter-notebook jupyter-nbconvert`);
    }
  }
  const probe = new Deno.Command(PYTHON, { args: ["-c", "import notebook, nbconvert"], stderr: "null" }).outputSync();
  if (probe.code !== 0) {
    throw new Error(
      `${PYTHON} cannot import notebook and nbconvert: apt-get install jupyter-notebook jupyter-nbconvert`,
    );
  }
}

async function main(): Promise<number> {
  const started = performance.now();
  const seconds = () => ((performance.now() - started) / 1000).toFixed(1);
  const { screenshots, notebooks } = parseArgs(Deno.args);
  requireTools();

  const work = await Deno.makeTempDir({ prefix: "frontend-check-" });
  const dirs = { nb: `${work}/nb`, html: `${work}/html`, jupyter: `${work}/jupyter`, chrome: `${work}/chrome` };
  for (const dir of [...Object.values(dirs), ...["config", "runtime", "data"].map((d) => `${dirs.jupyter}/${d}`)]) {
    await Deno.mkdir(dir);
  }
  const names = notebooks.map((path) => path.split("/").at(-1)!);
  notebooks.forEach((path, i) => {
    Deno.copyFileSync(path, `${dirs.nb}/${names[i]}`);
    Deno.writeTextFileSync(`${dirs.nb}/${withoutHtmlName(names[i])}`, withoutFigureHtml(path));
  });
  // Jupyter's own settings (a user's config, the trust database) stay out of the way: an empty config folder,
  // and signatures kept in memory, so every notebook opens untrusted.
  const env = {
    JUPYTER_CONFIG_DIR: `${dirs.jupyter}/config`,
    JUPYTER_RUNTIME_DIR: `${dirs.jupyter}/runtime`,
    NO_COLOR: "1",
  };

  let server: Deno.ChildProcess | undefined;
  let browser: Deno.ChildProcess | undefined;
  let devtools: DevTools | undefined;
  try {
    // nbconvert's HTML export of all the notebooks, in one run.
    const convert = await new Deno.Command(PYTHON, {
      args: ["-m", "nbconvert", "--to", "html", "--output-dir", dirs.html, ...names.map((n) => `${dirs.nb}/${n}`)],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (convert.code !== 0) throw new Error(`nbconvert failed:\n${new TextDecoder().decode(convert.stderr)}`);
    console.log(`nbconvert wrote ${names.length} HTML files (${seconds()} s)`);

    const port = freePort();
    const log = await Deno.open(`${work}/notebook.log`, { write: true, create: true });
    server = new Deno.Command(PYTHON, {
      args: [
        "-m",
        "notebook",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        `--port=${port}`,
        "--port-retries=0",
        `--notebook-dir=${dirs.nb}`,
        "--NotebookApp.token=",
        "--NotebookApp.password=",
        "--NotebookApp.disable_check_xsrf=True", // lets the check end each notebook's kernel over the REST API
        "--NotebookNotary.db_file=:memory:",
        `--NotebookNotary.data_dir=${dirs.jupyter}/data`,
      ],
      env,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    server.stderr.pipeTo(log.writable);
    const base = `http://127.0.0.1:${port}`;
    await waitFor("Jupyter Notebook to start", async () => (await fetch(`${base}/api/status`)).ok || undefined);
    console.log(`Jupyter Notebook is serving the copies on 127.0.0.1:${port} (${seconds()} s)`);

    browser = new Deno.Command(CHROMIUM, {
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${dirs.chrome}`,
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "--window-size=1280,1000",
        "about:blank",
      ],
      env: { TMPDIR: `${dirs.chrome}` }, // its scratch folders go where the check removes them
      stdout: "null",
      stderr: "null",
    }).spawn();
    const endpoint = await waitFor("Chromium's DevTools port", async () => {
      const [port, path] = (await Deno.readTextFile(`${dirs.chrome}/DevToolsActivePort`)).trim().split("\n");
      return port && path ? `ws://127.0.0.1:${port}${path}` : undefined;
    });
    devtools = await DevTools.connect(endpoint);
    const { targetId } = await devtools.send("Target.createTarget", { url: "about:blank" });
    const { sessionId } = await devtools.send("Target.attachToTarget", { targetId, flatten: true });
    await devtools.send("Page.enable", {}, sessionId);
    const tab = new Tab(devtools, sessionId);
    console.log(`Chromium is up (${seconds()} s)\n`);

    if (screenshots) await Deno.mkdir(screenshots, { recursive: true });
    const views = [
      { title: "Jupyter Notebook 6, untrusted", shot: "notebook6" },
      { title: "the same without the figures' text/html", shot: "notebook6-png" },
      { title: "nbconvert HTML", shot: "nbconvert" },
    ];
    let failures = 0;
    let shot = false; // screenshots of the first figure only
    const totals = { committed: 0, drawn: views.map(() => 0) };
    for (const [i, name] of names.entries()) {
      const committed = committedFigures(notebooks[i]);
      const stem = name.replace(/\.ipynb$/, "");
      const shoot = screenshots !== undefined && committed > 0 && !shot;
      const counts: Counts[] = [];
      for (const [v, view] of views.entries()) {
        if (view.shot === "nbconvert") {
          await tab.open(`file://${dirs.html}/${stem}.html`, 'document.readyState === "complete" ? "ready" : null');
        } else {
          const file = view.shot === "notebook6" ? name : withoutHtmlName(name);
          await tab.open(`${base}/notebooks/${encodeURIComponent(file)}`, NOTEBOOK_STATE);
        }
        const selector = view.shot === "nbconvert" ? OUTPUTS.nbconvert : OUTPUTS.notebook;
        counts.push(await tab.count(selector));
        if (view.shot !== "nbconvert") await endSessions(base); // opening a notebook started a kernel; none is needed
        totals.drawn[v] += counts[v].figures;
        if (shoot) shot = await tab.screenshot(selector, `${screenshots}/${stem}-${view.shot}.png`);
      }

      const problems: string[] = [];
      if (counts[0].trusted !== false) problems.push(`Jupyter Notebook reports trusted = ${counts[0].trusted}`);
      for (const [v, view] of views.entries()) {
        if (counts[v].figures !== committed) {
          problems.push(`${view.title}: drew ${counts[v].figures} of ${committed} figures`);
        }
        if (counts[v].mangled > 0) problems.push(`${view.title}: ${counts[v].mangled} elements with a mangled style`);
      }
      if ((counts[1].forms["img/png"] ?? 0) !== committed) {
        problems.push(`${views[1].title}: drew ${counts[1].forms["img/png"] ?? 0} PNGs, expected ${committed}`);
      }
      const forms = (c: Counts) => Object.entries(c.forms).map(([form, n]) => `${n} ${form}`).join(", ") || "none";
      console.log(
        `${problems.length ? "FAIL" : "ok"} ${name}: figures drawn/committed: ` +
          views.map((view, v) => `${view.title} ${counts[v].figures}/${committed} (${forms(counts[v])})`).join("; ") +
          `; tables: ${counts[0].tables} (cells with a mangled style: ${counts[0].mangled})`,
      );
      for (const problem of problems) console.log(`  ${problem}`);
      failures += problems.length ? 1 : 0;
      totals.committed += committed;
    }
    console.log(
      `\nfigures drawn / committed: ` +
        views.map((view, v) => `${view.title} ${totals.drawn[v]}/${totals.committed}`).join("; ") +
        `\n${names.length - failures} of ${names.length} notebooks ok, in ${seconds()} s`,
    );
    if (screenshots) console.log(`screenshots in ${screenshots}`);
    return failures === 0 ? 0 : 1;
  } catch (error) {
    const log = await Deno.readTextFile(`${work}/notebook.log`).catch(() => "");
    if (log) console.error(`Jupyter Notebook's log, last lines:\n${log.split("\n").slice(-20).join("\n")}`);
    throw error;
  } finally {
    // Closing through DevTools lets Chromium end its own helper processes; a signal would orphan them.
    await devtools?.send("Browser.close").catch(() => {});
    devtools?.close();
    for (const child of [browser, server]) {
      if (!child) continue;
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await child.status;
    }
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) Deno.exit(await main());
