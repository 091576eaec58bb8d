/**
 * The benchmark's figure: training steps/s against LoRA rank, one line per backend, with full finetuning as a
 * dashed line for comparison. Rendered to SVG in Deno by Observable Plot, with linkedom as its `document`.
 *
 *     deno run --allow-read --allow-write=bench bench/plot.ts   # redraws bench/steps-vs-rank.svg from results.json
 *
 * @module
 */
import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";
import type { BackendReport } from "./bench.ts";

/** One point of the figure. */
interface Point {
  backend: string;
  rank: number;
  median: number;
  min: number;
  max: number;
}

/**
 * Draws steps/s against rank for each report as a standalone SVG document.
 *
 * @example
 * ```ts ignore
 * import { renderStepsVsRank } from "./plot.ts";
 * const reports = JSON.parse(await Deno.readTextFile("bench/results.json"));
 * await Deno.writeTextFile("bench/steps-vs-rank.svg", renderStepsVsRank(reports));
 * ```
 */
export function renderStepsVsRank(reports: BackendReport[]): string {
  if (reports.length === 0) throw new RangeError("renderStepsVsRank: no reports to draw.");
  const points: Point[] = reports.flatMap((r) =>
    Object.entries(r.trainStepsPerSecondSpread.lora).map(([rank, s]) => ({
      backend: r.backend,
      rank: Number(rank),
      median: s.median,
      min: s.min,
      max: s.max,
    }))
  );
  const full = reports.map((r) => ({ backend: r.backend, median: r.trainStepsPerSecondSpread.full.median }));
  const ranks = [...new Set(points.map((p) => p.rank))].sort((a, b) => a - b);
  const { document } = parseHTML("<!DOCTYPE html><html><body></body></html>") as unknown as { document: never };
  const m = reports[0].machine;
  const svg = Plot.plot({
    document, // linkedom's, standing in for a browser's
    width: 720,
    height: 420,
    marginRight: 110,
    marginLeft: 50,
    style: { fontFamily: "sans-serif", fontSize: "12px", background: "white" },
    x: { type: "point", domain: ranks, label: "LoRA rank", padding: 0.3 },
    y: { type: "log", grid: true, label: "training steps/s at batch 64 (log scale)" },
    color: { domain: reports.map((r) => r.backend), scheme: "category10" },
    caption: `${m.cpu}, ${m.cores} cores, ${m.date.slice(0, 10)}. Dashed: full finetuning. Bars: min–max.`,
    marks: [
      Plot.ruleY(full, { y: "median", stroke: "backend", strokeDasharray: "6 4" }),
      Plot.text(full, {
        y: "median",
        x: ranks[0],
        text: (d: { backend: string }) => `${d.backend}, full finetuning`,
        fill: "backend",
        textAnchor: "start",
        dx: -30,
        dy: -7,
      }),
      Plot.ruleX(points, { x: "rank", y1: "min", y2: "max", stroke: "backend" }),
      Plot.line(points, { x: "rank", y: "median", stroke: "backend", marker: "circle" }),
      Plot.text(points.filter((p) => p.rank === ranks.at(-1)), {
        x: "rank",
        y: "median",
        text: (d: Point) => `${d.backend}, LoRA`,
        fill: "backend",
        textAnchor: "start",
        dx: 10,
      }),
    ],
  }) as unknown as SvgNode;
  // A figure with a caption comes back as <figure>; a standalone file needs the bare <svg> plus the caption.
  const root = svg.tagName.toLowerCase() === "svg" ? svg : svg.querySelector("svg")!;
  root.setAttribute("xmlns", "http://www.w3.org/2000/svg");
  const caption = svg.querySelector("figcaption")?.textContent;
  let out = root.outerHTML;
  if (caption) {
    const height = Number(root.getAttribute("height"));
    out = out
      .replace(/height="(\d+)"/, `height="${height + 24}"`)
      .replace(
        /viewBox="([-\d.]+) ([-\d.]+) ([\d.]+) ([\d.]+)"/,
        (_: string, x: string, y: string, w: string, h: string) => `viewBox="${x} ${y} ${w} ${Number(h) + 24}"`,
      )
      .replace(
        /<\/svg>$/,
        `<text x="10" y="${height + 16}" text-anchor="start" font-family="sans-serif" font-size="12">${
          escapeXml(caption)
        }</text></svg>`,
      );
  }
  return out;
}

/** The few DOM members used here, as linkedom provides them. */
interface SvgNode {
  tagName: string;
  outerHTML: string;
  textContent: string | null;
  querySelector(selector: string): SvgNode | null;
  getAttribute(name: string): string | null;
  setAttribute(name: string, value: string): void;
}

function escapeXml(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

if (import.meta.main) {
  const dir = new URL(".", import.meta.url);
  const reports = JSON.parse(await Deno.readTextFile(new URL("results.json", dir))) as BackendReport[];
  await Deno.writeTextFile(new URL("steps-vs-rank.svg", dir), renderStepsVsRank(reports) + "\n");
}
