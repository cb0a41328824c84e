/** Plain-text tables for the terminal. */
import type { SectionResult } from "./context.ts";

export function formatTable(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === "number" ? c.toLocaleString("en-US") : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => String(r[i] ?? "").length)));
  const line = (r: (string | number)[]) => "| " + r.map((c, i) => String(c ?? "").padEnd(widths[i])).join(" | ") + " |";
  return [line(cells[0]), "|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|", ...cells.slice(1).map(line)].join("\n");
}

export function formatSection(r: SectionResult): string {
  const out: string[] = [];
  for (const t of r.tables) {
    out.push(`\n## ${t.title}${r.ok ? "" : "  [FAILED]"}`, formatTable(t.header, t.rows));
    for (const n of t.notes) out.push(`  ${n}`);
  }
  if (r.tables.length === 0) out.push(`\n## ${r.section}  [FAILED: no figures]`);
  for (const e of r.errors) out.push(`  ERROR: ${e}`);
  out.push(`  reproduce: ${r.command}`);
  return out.join("\n");
}
