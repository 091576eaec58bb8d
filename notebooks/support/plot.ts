/**
 * Figures for the notebooks: Observable Plot rendered to SVG in Deno, with linkedom standing in for the
 * browser's `document`, and that SVG rasterised to PNG by resvg (WebAssembly) with the DejaVu Sans font from
 * npm. No browser, no server, no CDN, no system font: the figure goes straight into the notebook and its PNG
 * is the same on every machine.
 *
 * A {@linkcode Figure} is the last expression of a cell (or is passed to `Deno.jupyter.display`). Each front
 * end picks one form of it (see {@linkcode Figure.mediaBundle}):
 *
 * - `text/html`: an `<img>` whose source is the SVG. Jupyter Notebook and nbconvert's HTML export take this
 *   form first (JupyterLab and VS Code do too, by their default order); it draws the vector figure, and the
 *   sanitizer of an untrusted notebook keeps it (an inline `<svg>` it strips to its bare text).
 * - `image/svg+xml`: the SVG itself, for viewers that skip HTML. nbconvert's HTML export and untrusted
 *   notebooks do not draw it.
 * - `image/png`: the SVG rasterised at {@linkcode PNG_SCALE}× for sharp text, for viewers that draw neither.
 * - `text/plain`: one line naming the figure.
 *
 * @example
 * ```ts
 * import { lineChart, rasterize } from "./plot.ts";
 * const figure = lineChart({ series: [{ name: "loss", points: [[1, 2], [2, 1]] }], x: "step", y: "loss" });
 * console.log(figure.svg.startsWith("<svg"), figure.width, figure.height); // true 640 320
 * const png = await rasterize(figure.svg);
 * console.log(png.length > 0); // true
 * ```
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as Plot from "@observablehq/plot";
import { initWasm, Resvg } from "@resvg/resvg-wasm";
import { parseHTML } from "linkedom";
// Nothing in this JSON is used: importing it makes the font package part of the module graph, so Deno installs
// it; its TrueType files (FONT_FILES) are read from the package folder.
import "dejavu-fonts-ttf/package.json" with { type: "json" };

/** PNG pixels per SVG pixel: at 2, text stays sharp on high-density screens and when zoomed in. */
export const PNG_SCALE = 2;

/**
 * The typeface of every figure. The SVG asks for it first (browsers fall back to their sans-serif), and the
 * rasteriser has exactly this font built in, so the PNG does not depend on the fonts of the machine.
 */
export const FONT_FAMILY = "DejaVu Sans";

/** The font files handed to the rasteriser: regular text, and bold for titles. */
const FONT_FILES = ["dejavu-fonts-ttf/ttf/DejaVuSans.ttf", "dejavu-fonts-ttf/ttf/DejaVuSans-Bold.ttf"];

// linkedom's typings describe a browser `window`; only the `document` Plot draws into is needed here.
const { document } = parseHTML("<!DOCTYPE html><html><head></head><body></body></html>") as unknown as {
  document: Plot.PlotOptions["document"];
};

/** The little of the DOM that {@linkcode standalone} touches. */
interface SvgNode {
  tagName: string;
  outerHTML: string;
  getAttribute(name: string): string | null;
  setAttribute(name: string, value: string): void;
}

/** One named line of points `[x, y]`. */
export interface Series {
  /** Shown in the legend. */
  name: string;
  /** The points, in drawing order. */
  points: [number, number][];
}

/** What {@linkcode lineChart} draws. */
export interface LineChartOptions {
  /** One or more lines; each is labelled at its last point. */
  series: Series[];
  /** Label of the horizontal axis. */
  x: string;
  /** Label of the vertical axis. */
  y: string;
  /** A heading drawn above the chart, inside the SVG. */
  title?: string;
  /** Log scale on the horizontal axis. */
  xLog?: boolean;
  /** Log scale on the vertical axis. */
  yLog?: boolean;
  /** Fixed vertical range. */
  yDomain?: [number, number];
  /** Draw a dot on every point (for short series). */
  dots?: boolean;
  /** Width in pixels; default 640. */
  width?: number;
  /** Height in pixels; default 320. */
  height?: number;
}

/** What a Jupyter front end receives: media type → content (binary types base64-encoded). */
export type MediaBundle = Record<string, string>;

/** An SVG figure that Jupyter displays inline, with a PNG of it for viewers that cannot draw SVG. */
export class Figure {
  /** The complete `<svg>…</svg>` text. */
  readonly svg: string;
  /** A one-line description: the `alt` text of the image and the `text/plain` form. */
  readonly alt: string;
  /** Width of the SVG in CSS pixels, from its `width` attribute. */
  readonly width: number;
  /** Height of the SVG in CSS pixels, from its `height` attribute. */
  readonly height: number;
  #png?: Promise<Uint8Array>;

  constructor(svg: string, alt: string) {
    const root = /^<svg\b[^>]*>/.exec(svg)?.[0];
    if (root === undefined) throw new Error(`a Figure needs SVG text starting with <svg, got "${svg.slice(0, 40)}"`);
    const size = (name: string) => {
      const value = Number(new RegExp(`\\s${name}="([^"]*)"`).exec(root)?.[1]);
      if (!(value > 0)) throw new Error(`a Figure needs a positive ${name}="…" in pixels on its <svg>, got ${root}`);
      return value;
    };
    this.svg = svg;
    this.alt = alt;
    this.width = size("width");
    this.height = size("height");
  }

  /** The figure as PNG bytes, {@linkcode PNG_SCALE} times the SVG's size (rendered once, then kept). */
  png(): Promise<Uint8Array> {
    this.#png ??= rasterize(this.svg, PNG_SCALE);
    return this.#png;
  }

  /**
   * What the Deno kernel stores and shows: `text/html` (an `<img>` of the SVG), `image/svg+xml`, `image/png`
   * and `text/plain`.
   *
   * Why this set, as measured with Debian's Jupyter Notebook 6.4 and nbconvert 6.5: both take `text/html` before
   * any image. An untrusted notebook (every freshly cloned one) sanitizes that HTML, which strips an inline
   * `<svg>` down to its text but keeps an `<img>` with a `data:` source; it ignores `image/svg+xml` altogether.
   * nbconvert's HTML export prints `text/html` as it is, but would strip `image/svg+xml` the same way. The PNG
   * serves every viewer that renders no HTML.
   */
  async mediaBundle(): Promise<MediaBundle> {
    const png = await this.png();
    const source = `data:image/svg+xml;base64,${Buffer.from(this.svg, "utf8").toString("base64")}`;
    const alt = escapeAttribute(this.alt);
    return {
      "text/html": `<img src="${source}" width="${this.width}" height="${this.height}" alt="${alt}">`,
      "image/svg+xml": this.svg,
      "image/png": Buffer.from(png).toString("base64"),
      "text/plain": `[figure: ${this.alt}]`,
    };
  }

  /** The hook the Deno kernel calls and awaits (`Deno.jupyter.$display` is `Symbol.for("Jupyter.display")`). */
  [Symbol.for("Jupyter.display")](): Promise<MediaBundle> {
    return this.mediaBundle();
  }
}

/** `&`, `"`, `<` and `>` as entities, for text inside a double-quoted HTML attribute. */
function escapeAttribute(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll('"', "&quot;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

let fonts: Promise<Uint8Array[]> | undefined;

/** Starts resvg's WebAssembly module and reads the fonts, once; a failure is reported and retried next time. */
function loadRasterizer(): Promise<Uint8Array[]> {
  fonts ??= (async () => {
    await initWasm(await readPackageFile("@resvg/resvg-wasm/index_bg.wasm"));
    return await Promise.all(FONT_FILES.map(readPackageFile));
  })();
  fonts.catch(() => fonts = undefined);
  return fonts;
}

/** Reads a file of an npm package from the project's `node_modules` (deno.json sets `nodeModulesDir`). */
async function readPackageFile(specifier: string): Promise<Uint8Array> {
  const url = new URL(import.meta.resolve(specifier));
  if (url.protocol !== "file:") {
    throw new Error(
      `cannot read ${specifier}: it resolves to ${url.href}, not to a file; the figures need the packages in ` +
        'node_modules ("nodeModulesDir": "auto" in deno.json, then deno install)',
    );
  }
  return await Deno.readFile(url);
}

/**
 * Rasterises SVG text to PNG bytes with resvg, `scale` PNG pixels per SVG pixel, on a white background. Text
 * is set in {@linkcode FONT_FAMILY}, which is the only font the rasteriser knows: any family the SVG names,
 * `sans-serif` included, resolves to it. Needs read access to `node_modules`.
 *
 * @example
 * ```ts
 * import { rasterize } from "./plot.ts";
 * const png = await rasterize('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="3"></svg>', 2);
 * console.log(new DataView(png.buffer, png.byteOffset).getUint32(16)); // 8, the PNG's width
 * ```
 */
export async function rasterize(svg: string, scale: number = PNG_SCALE): Promise<Uint8Array> {
  if (!(scale > 0 && Number.isFinite(scale))) throw new RangeError(`scale must be a positive number, got ${scale}`);
  const fontBuffers = await loadRasterizer();
  let resvg;
  try {
    resvg = new Resvg(svg, {
      fitTo: { mode: "zoom", value: scale },
      background: "white",
      font: {
        fontBuffers,
        defaultFontFamily: FONT_FAMILY,
        sansSerifFamily: FONT_FAMILY,
        serifFamily: FONT_FAMILY,
        monospaceFamily: FONT_FAMILY,
      },
    });
  } catch (error) {
    throw new Error(`cannot rasterise the figure, resvg rejected its SVG: ${error}`);
  }
  try {
    const image = resvg.render();
    try {
      return image.asPng();
    } finally {
      image.free();
    }
  } finally {
    resvg.free();
  }
}

/**
 * Lines of `[x, y]` points, with axis labels, optional log scales and a legend when there is more than one
 * series.
 */
export function lineChart(options: LineChartOptions): Figure {
  const rows = options.series.flatMap((s) => s.points.map(([x, y]) => ({ series: s.name, x, y })));
  const names = options.series.map((s) => s.name);
  const labelled = options.series.length > 1 || names[0] !== "";
  const marks: Plot.Markish[] = [
    Plot.gridY({ strokeOpacity: 0.12 }),
    Plot.lineY(rows, { x: "x", y: "y", z: "series", stroke: "series", strokeWidth: 1.8 }),
  ];
  if (options.dots) marks.push(Plot.dot(rows, { x: "x", y: "y", fill: "series", r: 3 }));
  if (labelled) marks.push(...legend(names));
  if (options.title) marks.push(title(options.title));
  const svg = Plot.plot({
    document,
    width: options.width ?? 640,
    height: options.height ?? 320,
    marginLeft: 80,
    marginRight: labelled ? 44 + 7 * Math.max(...names.map((n) => n.length)) : 20,
    marginTop: options.title ? 50 : 24,
    marginBottom: 45,
    style: { fontSize: "12px", background: "white", overflow: "visible" },
    x: { label: options.x, type: options.xLog ? "log" : "linear", labelAnchor: "center", labelArrow: "none" },
    y: {
      label: options.y,
      labelAnchor: "center",
      type: options.yLog ? "log" : "linear",
      domain: options.yDomain,
      labelArrow: "none",
      tickFormat: options.yLog ? logTick : undefined,
    },
    color: { domain: names, range: PALETTE },
    marks,
  });
  return new Figure(standalone(svg as unknown as SvgNode), options.title ?? `${options.y} against ${options.x}`);
}

/** Tick labels for log axes: plain numbers with thousands separators, never "1e+6" or "200m". */
function logTick(value: number): string {
  if (value >= 1000) return value.toLocaleString("en-US");
  if (value < 0.001) return value.toExponential(0).replace("e-", "e−");
  return String(+value.toPrecision(6));
}

/** The mean of each point and the `window − 1` before it, to see the trend of a noisy series. */
export function movingAverage(points: [number, number][], window: number): [number, number][] {
  return points.map(([x], i) => {
    const slice = points.slice(Math.max(0, i - window + 1), i + 1);
    return [x, slice.reduce((sum, [, y]) => sum + y, 0) / slice.length];
  });
}

/** Colours that stay apart in print and for common colour blindness (Observable's "observable10"). */
const PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5"];

/**
 * A legend inside the SVG, to the right of the frame: a coloured dash and the name of each series. (Plot's own
 * legend is HTML, which would make the output a `<figure>` rather than a bare `<svg>`.)
 */
function legend(names: string[]): Plot.Markish[] {
  return names.flatMap((name, i) => [
    Plot.text([name], {
      frameAnchor: "top-right",
      dx: 10,
      dy: 6 + 18 * i,
      text: () => "━━",
      fill: () => name,
      textAnchor: "start",
    }),
    Plot.text([name], { frameAnchor: "top-right", dx: 34, dy: 6 + 18 * i, text: () => name, textAnchor: "start" }),
  ]);
}

/** A bold heading in the top-left corner of the frame's margin. */
function title(text: string): Plot.Markish {
  return Plot.text([text], {
    frameAnchor: "top-left",
    dy: -38,
    dx: -50,
    textAnchor: "start",
    fontWeight: "bold",
    fontSize: 14,
  });
}

/** What {@linkcode barChart} draws. */
export interface BarChartOptions {
  /** Category labels and values, in drawing order. */
  bars: { label: string; value: number }[];
  /** Label of the category axis. */
  x: string;
  /** Label of the value axis. */
  y: string;
  /** A heading above the chart. */
  title?: string;
  /** Log scale on the value axis. */
  yLog?: boolean;
  /** Width in pixels; default 640. */
  width?: number;
  /** Height in pixels; default 320. */
  height?: number;
}

/** Vertical bars, one per label, each with its value printed on top. */
export function barChart(options: BarChartOptions): Figure {
  const svg = Plot.plot({
    document,
    width: options.width ?? 640,
    height: options.height ?? 320,
    marginLeft: 70,
    marginTop: options.title ? 56 : 30,
    style: { fontSize: "12px", background: "white", overflow: "visible" },
    x: { label: options.x, domain: options.bars.map((b) => b.label), labelAnchor: "center" },
    y: {
      label: options.y,
      labelAnchor: "center",
      type: options.yLog ? "log" : "linear",
      labelArrow: "none",
      grid: true,
    },
    marginRight: 20,
    marks: [
      ...(options.title ? [title(options.title)] : []),
      Plot.barY(options.bars, { x: "label", y: "value", fill: "steelblue", ...(options.yLog ? { y1: 1 } : {}) }),
      Plot.text(options.bars, { x: "label", y: "value", text: (b) => b.value.toLocaleString("en-US"), dy: -8 }),
    ],
  });
  return new Figure(standalone(svg as unknown as SvgNode), options.title ?? `${options.y} by ${options.x}`);
}

/**
 * Plot returns a bare `<svg>` as long as no title, caption or legend option is used (those wrap it in an HTML
 * `<figure>`, which is not valid `image/svg+xml`); titles and labels are drawn as text marks instead. The SVG
 * namespace is declared so the text stands on its own, and the font is set to {@linkcode FONT_FAMILY}.
 */
function standalone(node: SvgNode): string {
  if (node.tagName.toLowerCase() !== "svg") throw new Error(`expected Plot to return an <svg>, got <${node.tagName}>`);
  if (!node.getAttribute("xmlns")) node.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  node.setAttribute("font-family", `${FONT_FAMILY}, sans-serif`);
  return node.outerHTML;
}
