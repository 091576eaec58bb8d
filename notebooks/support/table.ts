/**
 * Tables for notebook output: shown as HTML where the viewer renders it (Jupyter, VS Code, nbconvert) and as
 * aligned plain text elsewhere.
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

  [Symbol.for("Jupyter.display")](): Record<string, string> {
    const escape = (s: string | number) =>
      String(s).replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
    const cell = (tag: string, s: string | number, i: number) =>
      `<${tag} style="text-align:${i === 0 ? "left" : "right"}">${escape(s)}</${tag}>`;
    const html = `<table>\n<thead><tr>${this.header.map((h, i) => cell("th", h, i)).join("")}</tr></thead>\n<tbody>\n` +
      this.rows.map((row) => `<tr>${row.map((c, i) => cell("td", c, i)).join("")}</tr>`).join("\n") +
      "\n</tbody>\n</table>";
    return { "text/html": html, "text/plain": this.text };
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
