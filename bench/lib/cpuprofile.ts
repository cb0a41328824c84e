/** Summarizes V8 .cpuprofile files (node --cpu-prof): self time per function and per source file. */
import fs from "node:fs";
import path from "node:path";

interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Profile { nodes: Node[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number }

export interface ProfileSummary {
  process: string; totalMs: number; busyMs: number;
  topFunctions: { fn: string; ms: number; pct: number }[];
  /** Inclusive (self + callees) time of the project's own functions (hub/, agent/, lib/, bench/). */
  topProject: { fn: string; ms: number; pct: number }[];
  topFiles: { file: string; ms: number; pct: number }[];
}

function shortUrl(url: string, repo: string): string {
  if (!url) return "(native)";
  let u = url.replace(/^file:\/\//, "");
  if (u.startsWith(repo)) u = u.slice(repo.length + 1);
  return u.replace(/^node_modules\//, "nm/");
}

export function summarizeProfile(file: string, repo: string, name: string): ProfileSummary {
  const p = JSON.parse(fs.readFileSync(file, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0) / 1000);
  const fns = new Map<string, number>();
  const files = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (const [id, ms] of self) {
    const n = byId.get(id)!;
    total += ms;
    const f = n.callFrame.functionName || "(anonymous)";
    if (f === "(idle)") { idle += ms; continue; }
    const key = `${f} ${shortUrl(n.callFrame.url, repo)}${n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ""}`;
    fns.set(key, (fns.get(key) ?? 0) + ms);
    const fk = shortUrl(n.callFrame.url, repo);
    files.set(fk, (files.get(fk) ?? 0) + ms);
  }
  const busy = total - idle;
  // Inclusive time of project frames: walk each sample's stack once.
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const own = (url: string) => url.includes(repo) && !url.includes("node_modules") && /\/(hub|agent|lib|bench|cli)\//.test(url);
  const incl = new Map<string, number>();
  for (const [id, ms] of self) {
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const cf = byId.get(cur)!.callFrame;
      if (!own(cf.url)) continue;
      const key = `${cf.functionName || "(anonymous)"} ${shortUrl(cf.url, repo)}:${cf.lineNumber + 1}`;
      if (seen.has(key)) continue;
      seen.add(key);
      incl.set(key, (incl.get(key) ?? 0) + ms);
    }
  }
  const top = <K extends string>(m: Map<string, number>, k: K) => [...m].filter(([x]) => !x.startsWith("(idle)")).sort((a, b) => b[1] - a[1]).slice(0, 12)
    .map(([x, ms]) => ({ [k]: x, ms: Math.round(ms), pct: Math.round((ms / Math.max(busy, 1)) * 1000) / 10 }) as { [P in K]: string } & { ms: number; pct: number });
  return { process: name, totalMs: Math.round(total), busyMs: Math.round(busy), topFunctions: top(fns, "fn"), topProject: top(incl, "fn"), topFiles: top(files, "file") };
}

export function summarizeProfiles(dir: string, repo: string): { text: string; data: ProfileSummary[] } | null {
  if (!fs.existsSync(dir)) return null;
  const data: ProfileSummary[] = [];
  for (const proc of fs.readdirSync(dir).sort()) {
    const pdir = path.join(dir, proc);
    // CPU.<date>.<time>.<pid>.<tid>.<seq>.cpuprofile: tid 0 is the main thread (tsx adds a loader thread).
    for (const f of fs.readdirSync(pdir).filter((x) => /\.\d+\.0\.\d+\.cpuprofile$/.test(x))) {
      try { data.push(summarizeProfile(path.join(pdir, f), repo, proc)); } catch { /* a process killed before writing */ }
    }
  }
  const text = data.map((s) => [
    `### ${s.process}: ${s.busyMs} ms busy of ${s.totalMs} ms  (profiles: ${dir}/${s.process})`,
    ...s.topFunctions.map((f) => `  ${String(f.pct).padStart(5)}%  ${String(f.ms).padStart(7)} ms  ${f.fn}`),
    "  project functions, inclusive:",
    ...s.topProject.map((f) => `  ${String(f.pct).padStart(5)}%  ${String(f.ms).padStart(7)} ms  ${f.fn}`),
    "  by file (self):",
    ...s.topFiles.slice(0, 8).map((f) => `  ${String(f.pct).padStart(5)}%  ${String(f.ms).padStart(7)} ms  ${f.file}`),
  ].join("\n")).join("\n");
  return { text, data };
}
