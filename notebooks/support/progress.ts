/**
 * Live training progress in a notebook: one display that is updated in place (Jupyter's
 * `update_display_data`), not a new line per report. Outside the Jupyter kernel it prints a line per epoch.
 *
 * @example
 * ```ts
 * import { formatProgress } from "./progress.ts";
 * console.log(formatProgress({ epoch: 0, epochs: 10, batch: 469, batches: 938, loss: 0.25, seconds: 4.5 }));
 * // epoch  1/10 ██████████░░░░░░░░░░ batch 469/938  loss 0.2500  4.5 s
 * ```
 *
 * @module
 */
import type { EpochSummary, Progress } from "@lora-tutorial/lib";

/** One line: epoch, a bar for the epoch's batches, the latest loss and the time so far. */
export function formatProgress(p: Progress, width = 20): string {
  const filled = Math.round((p.batch / p.batches) * width);
  const bar = "█".repeat(filled) + "░".repeat(width - filled);
  const epochs = String(p.epochs);
  return `epoch ${String(p.epoch + 1).padStart(epochs.length)}/${epochs} ${bar} ` +
    `batch ${String(p.batch).padStart(String(p.batches).length)}/${p.batches}  ` +
    `loss ${p.loss.toFixed(4)}  ${p.seconds.toFixed(1)} s`;
}

function inKernel(): boolean {
  try {
    return typeof Deno.jupyter?.broadcast === "function";
  } catch {
    return false;
  }
}

/**
 * A live progress display for {@linkcode train}: pass its `onProgress` and `onEpochEnd` to `train`. The
 * display shows the current epoch's bar and, above it, one line per finished epoch (with whatever
 * `describe` adds, such as a test accuracy).
 */
export class LiveProgress {
  #id = `progress-${crypto.randomUUID()}`;
  #lines: string[] = [];
  #current = "starting…";
  #shown = false;
  #lastDraw = 0;

  /** `describe` turns an epoch's summary into the text after its mean loss (e.g. an accuracy). */
  constructor(private readonly describe?: (summary: EpochSummary) => string | Promise<string>) {}

  /** For `train`'s `onProgress`: redraws at most ten times a second. */
  onProgress = async (p: Progress): Promise<void> => {
    this.#current = formatProgress(p);
    if (p.batch === p.batches || performance.now() - this.#lastDraw > 100) await this.#draw();
  };

  /** For `train`'s `onEpochEnd`. */
  onEpochEnd = async (s: EpochSummary): Promise<void> => {
    const extra = this.describe ? `  ${await this.describe(s)}` : "";
    const line = `epoch ${s.epoch + 1}: mean loss ${s.meanLoss.toFixed(4)}${extra}  (${s.seconds.toFixed(1)} s)`;
    this.#lines.push(line);
    if (!inKernel()) console.log(line);
    await this.#draw();
  };

  async #draw(): Promise<void> {
    this.#lastDraw = performance.now();
    if (!inKernel()) return;
    const text = [...this.#lines, this.#current].join("\n");
    await Deno.jupyter.display({ "text/plain": text }, { raw: true, display_id: this.#id, update: this.#shown });
    this.#shown = true;
  }
}
