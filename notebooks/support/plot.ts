/**
 * Figures for the notebooks: Observable Plot rendered to SVG in Deno, with linkedom standing in for the
 * browser's `document`. No browser, no server, no CDN: the SVG text goes straight into the notebook.
 *
 * A {@linkcode Figure} is the last expression of a cell (or is passed to `Deno.jupyter.display`). It offers the
 * SVG twice: inline inside `text/html` (what Jupyter, VS Code and nbconvert's HTML export render) and as
 * `image/svg+xml` (which nbconvert's HTML export drops, but other viewers prefer).
 *
 * @example
 * ```ts
 * import { lineChart } from "./plot.ts";
 * const figure = lineChart({ series: [{ name: "loss", points: [[1, 2], [2, 1]] }], x: "step", y: "loss" });
 * console.log(figure.svg.startsWith("<svg")); // true
 * ```
 *
 * @module
 */
import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";

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

/** An SVG figure that Jupyter displays inline. */
export class Figure {
  /** The complete `<svg>…</svg>` text. */
  readonly svg: string;
  /** A one-line description, shown where a viewer cannot draw SVG. */
  readonly alt: string;

  constructor(svg: string, alt: string) {
    this.svg = svg;
    this.alt = alt;
  }

  /** What the Deno kernel shows: the SVG inline in HTML and as an image, and a line of text. */
  mediaBundle(): Record<string, string> {
    return { "text/html": this.svg, "image/svg+xml": this.svg, "text/plain": `[figure: ${this.alt}]` };
  }

  /** The hook the Deno kernel calls (`Deno.jupyter.$display` is `Symbol.for("Jupyter.display")`). */
  [Symbol.for("Jupyter.display")](): Record<string, string> {
    return this.mediaBundle();
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
 * namespace is declared so the text stands on its own.
 */
function standalone(node: SvgNode): string {
  if (node.tagName.toLowerCase() !== "svg") throw new Error(`expected Plot to return an <svg>, got <${node.tagName}>`);
  if (!node.getAttribute("xmlns")) node.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  return node.outerHTML;
}
