/**
 * Tables for notebook output: shown as HTML where the viewer renders it (Jupyter, VS Code, nbconvert) and as
 * aligned plain text elsewhere.
 *
 * The HTML carries no `style` attribute: the sanitizer that Jupyter applies to an untrusted notebook (every
 * freshly cloned one) drops the CSS of inline styles and leaves `style="undefined:undefined"` on every cell.
 * Alignment is given with the `align` attribute, which that sanitizer keeps; Jupyter's own table CSS, which
 * right-aligns every cell, takes precedence over it where it applies.
 *
 * @example
 * ```ts
 * import { table } from "./table.ts";
 * const t = table(["rank", "values"], [[1, "2,000"], [2, "4,000"]]);
 * console.log(t.text);
 * ```
 *
 * @module
 */

/** A table that the Deno kernel displays; `text` is its plain-text form. */
export class Table {
  constructor(readonly header: string[], readonly rows: (string | number)[][], readonly text: string) {}

  /** The table as HTML: the first column aligned left, the others right, with no inline style. */
  get html(): string {
    const escape = (s: string | number) =>
      String(s).replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
    const cell = (tag: string, s: string | number, i: number) =>
      `<${tag} align="${i === 0 ? "left" : "right"}">${escape(s)}</${tag}>`;
    return `<table>\n<thead><tr>${this.header.map((h, i) => cell("th", h, i)).join("")}</tr></thead>\n<tbody>\n` +
      this.rows.map((row) => `<tr>${row.map((c, i) => cell("td", c, i)).join("")}</tr>`).join("\n") +
      "\n</tbody>\n</table>";
  }

  /** The hook the Deno kernel calls: `text/html` and `text/plain`. */
  [Symbol.for("Jupyter.display")](): Record<string, string> {
    return { "text/html": this.html, "text/plain": this.text };
  }
}

/** A table with a header row; the first column is left-aligned, the others right-aligned. */
export function table(header: string[], rows: (string | number)[][]): Table {
  const all = [header, ...rows].map((row) => row.map(String));
  const widths = header.map((_, i) => Math.max(...all.map((row) => (row[i] ?? "").length)));
  const line = (row: string[]) =>
    row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ").trimEnd();
  const text = [line(all[0]), widths.map((w) => "-".repeat(w)).join("  "), ...all.slice(1).map(line)].join("\n");
  return new Table(header, rows, text);
}
