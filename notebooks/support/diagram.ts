/**
 * The picture of a LoRA layer that the tutorial describes in words: the input x goes through the frozen
 * weight W and, in parallel, through A and B (scaled), and the two results are added. Drawn as SVG by code, like
 * the other figures, so it carries the shapes of the layer the notebook is talking about.
 *
 * @example
 * ```ts
 * import { loraDiagram } from "./diagram.ts";
 * const figure = loraDiagram({ inDim: 784, outDim: 128, rank: 4 });
 * console.log(figure.svg.includes("[784, 4]"), figure.width, figure.height); // true 640 300
 * ```
 *
 * @module
 */
import { Figure, FONT_FAMILY } from "./plot.ts";

/** What {@linkcode loraDiagram} labels; every field is optional and defaults to a symbol. */
export interface LoraDiagramOptions {
  /** Input width; default the symbol `in`. */
  inDim?: number | string;
  /** Output width; default `out`. */
  outDim?: number | string;
  /** Rank; default `r`. */
  rank?: number | string;
  /** The scale, as text: default `s`. */
  scale?: string;
  /** A heading above the drawing. */
  title?: string;
}

const WIDTH = 640;
const HEIGHT = 300;
const FROZEN = "#d0d0d0";
const TRAINABLE = "#c9d6f4";
const LINE = "#333";

/** `&`, `<`, `>` and `"` as entities, for text inside SVG. */
function escape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

function text(x: number, y: number, body: string, options: { size?: number; bold?: boolean; anchor?: string } = {}) {
  const weight = options.bold ? ' font-weight="bold"' : "";
  return `<text x="${x}" y="${y}" font-size="${options.size ?? 12}" text-anchor="${
    options.anchor ?? "middle"
  }"${weight}>${escape(body)}</text>`;
}

function arrow(points: [number, number][]): string {
  const d = points.map(([x, y], i) => `${i === 0 ? "M" : "L"}${x},${y}`).join(" ");
  return `<path d="${d}" fill="none" stroke="${LINE}" stroke-width="1.5" marker-end="url(#head)"/>`;
}

/**
 * A LoRA layer as a diagram: `x → W (frozen) → +` on top, `x → A → B → × scale → +` below, each matrix with
 * its shape, and the formula `h = x·W + b + s·x·A·B` underneath. Returns a {@linkcode Figure}, so it can be the
 * last expression of a notebook cell.
 */
export function loraDiagram(options: LoraDiagramOptions = {}): Figure {
  const inDim = String(options.inDim ?? "in");
  const outDim = String(options.outDim ?? "out");
  const rank = String(options.rank ?? "r");
  const scale = options.scale ?? "s";
  const top = options.title ? 28 : 0;
  const parts: string[] = [];
  if (options.title) parts.push(text(12, 20, options.title, { size: 14, bold: true, anchor: "start" }));

  // Input.
  parts.push(`<rect x="14" y="${top + 105}" width="84" height="44" rx="6" fill="white" stroke="${LINE}"/>`);
  parts.push(text(56, top + 125, "x", { size: 15, bold: true }));
  parts.push(text(56, top + 141, `[batch, ${inDim}]`, { size: 10 }));

  // Frozen path: W.
  parts.push(arrow([[98, top + 120], [130, top + 120], [130, top + 52], [196, top + 52]]));
  parts.push(`<rect x="200" y="${top + 18}" width="210" height="68" rx="4" fill="${FROZEN}" stroke="${LINE}"/>`);
  parts.push(text(305, top + 44, "W  (and bias b)", { size: 14, bold: true }));
  parts.push(text(305, top + 62, `[${inDim}, ${outDim}], pretrained`, { size: 11 }));
  parts.push(text(305, top + 78, "frozen: no gradient, no optimizer state", { size: 10 }));

  // Low-rank path: A narrows the input to the rank, B widens it to the output.
  const yA = top + 160;
  parts.push(arrow([[98, top + 134], [130, top + 134], [130, yA + 40], [196, yA + 40]]));
  parts.push(
    `<polygon points="200,${yA} 290,${yA + 26} 290,${yA + 54} 200,${yA + 80}" fill="${TRAINABLE}" stroke="${LINE}"/>`,
  );
  parts.push(text(234, yA + 37, "A", { size: 14, bold: true }));
  parts.push(text(245, yA + 96, `[${inDim}, ${rank}], random`, { size: 10 }));
  parts.push(arrow([[290, yA + 40], [316, yA + 40]]));
  parts.push(
    `<polygon points="320,${yA + 26} 410,${yA} 410,${yA + 80} 320,${yA + 54}" fill="${TRAINABLE}" stroke="${LINE}"/>`,
  );
  parts.push(text(372, yA + 37, "B", { size: 14, bold: true }));
  parts.push(text(365, yA + 96, `[${rank}, ${outDim}], zeros`, { size: 10 }));
  parts.push(text(305, yA - 8, "trainable: gradients and optimizer state", { size: 10 }));
  parts.push(arrow([[410, yA + 40], [448, yA + 40]]));
  parts.push(`<rect x="452" y="${yA + 26}" width="52" height="28" rx="4" fill="white" stroke="${LINE}"/>`);
  parts.push(text(478, yA + 45, `× ${scale}`, { size: 12 }));

  // The sum and the output.
  const ySum = top + 127;
  parts.push(arrow([[410, top + 52], [540, top + 52], [540, ySum - 18]]));
  parts.push(arrow([[504, yA + 40], [540, yA + 40], [540, ySum + 18]]));
  parts.push(`<circle cx="540" cy="${ySum}" r="14" fill="white" stroke="${LINE}" stroke-width="1.5"/>`);
  parts.push(text(540, ySum + 5, "+", { size: 16, bold: true }));
  parts.push(arrow([[554, ySum], [574, ySum]]));
  parts.push(text(600, ySum - 4, "h", { size: 15, bold: true }));
  parts.push(text(600, ySum + 12, `[batch, ${outDim}]`, { size: 10 }));

  parts.push(text(WIDTH / 2, top + HEIGHT - 12, `h = x·W + b + ${scale} · x·A·B`, { size: 13 }));

  const height = HEIGHT + top;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" ` +
    `viewBox="0 0 ${WIDTH} ${height}" font-family="${FONT_FAMILY}, sans-serif">` +
    `<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" ` +
    `orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="${LINE}"/></marker></defs>` +
    `<rect width="${WIDTH}" height="${height}" fill="white"/>${parts.join("")}</svg>`;
  const alt = options.title ??
    `LoRA layer: x [batch, ${inDim}] through frozen W [${inDim}, ${outDim}] plus ${scale} · x·A·B with ` +
      `A [${inDim}, ${rank}] and B [${rank}, ${outDim}]`;
  return new Figure(svg, alt);
}
