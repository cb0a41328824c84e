/**
 * Child processes of the bench: the real `branchsync hub|agent` CLI and the
 * bench's own worker scripts. Each runs as `bash -c 'ulimit -n N; exec node …'`
 * (so the fd limit is raised for it alone), logs to a file, and is stopped by
 * its own pid (SIGTERM, then SIGKILL after a timeout) at the end.
 */
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { onCleanup } from "./cleanup.ts";

export const REPO = path.resolve(new URL("../..", import.meta.url).pathname);
export const CLI = path.join(REPO, "bin/branchsync.mjs");

export interface ProcOptions {
  env?: Record<string, string>;
  /** Raised with `ulimit -n` before exec (the hub and stream clients need many fds). */
  nofile?: number;
  nodeArgs?: string[];
  logDir: string;
  /** Write a V8 CPU profile into this directory when the process exits. */
  cpuProfDir?: string;
}

export interface Proc {
  name: string;
  pid: number;
  child: ChildProcess;
  exited: Promise<number | null>;
  alive(): boolean;
  /** Resolves with the first stdout/stderr line (past or future) matching re. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  onLine(cb: (line: string) => void): void;
  /** Writes one line to the process's stdin. */
  send(line: string): void;
  stop(timeoutMs?: number): Promise<void>;
  rssKb(): number | null;
  /** user+system CPU seconds so far (from /proc/<pid>/stat). */
  cpuSeconds(): number | null;
  /** Page faults so far (see readFaults). */
  faults(): number | null;
  tail(): string;
}

const CLK_TCK = 100;

export function readRssKb(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : null;
  } catch { return null; }
}

/** The soft RLIMIT_NOFILE a process runs with (after our `ulimit -n`). */
export function readNofile(pid: number): number | null {
  try {
    const m = /Max open files\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/limits`, "utf8"));
    return m ? Number(m[1]) : null;
  } catch { return null; }
}

/** /proc/<pid>/stat's fields after the command name: f[0] is field 3 (state). */
function statFields(pid: number | string): string[] | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return s.slice(s.lastIndexOf(")") + 2).split(" ");
  } catch { return null; }
}

export function readCpuSeconds(pid: number | string): number | null {
  const f = statFields(pid);
  return f ? (Number(f[11]) + Number(f[12])) / CLK_TCK : null;
}

/**
 * Page faults so far (minor + major). On this VM kind a fault on a fresh
 * page costs ~12 µs (a C loop touching new pages; 0.24 µs per 4 KiB with a
 * transparent huge page), so faults are a CPU cost worth counting apart.
 */
export function readFaults(pid: number | string): number | null {
  const f = statFields(pid);
  return f ? Number(f[7]) + Number(f[9]) : null;
}

export function spawnNode(name: string, args: string[], o: ProcOptions): Proc {
  fs.mkdirSync(o.logDir, { recursive: true });
  const log = fs.createWriteStream(path.join(o.logDir, `${name}.log`), { flags: "a" });
  const nodeArgs = [...(o.nodeArgs ?? []), ...(process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(" ").filter(Boolean) : [])];
  if (o.cpuProfDir) {
    const dir = path.join(o.cpuProfDir, name);
    fs.mkdirSync(dir, { recursive: true });
    nodeArgs.push("--cpu-prof", `--cpu-prof-dir=${dir}`);
  }
  const nofile = o.nofile ?? 4096;
  const child = spawn("bash", ["-c", `ulimit -n ${nofile} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec node "$@"`, "bash", ...nodeArgs, ...args], {
    cwd: REPO, env: { ...process.env, ...o.env }, stdio: ["pipe", "pipe", "pipe"],
  });
  const recent: string[] = [];
  const listeners: ((l: string) => void)[] = [];
  for (const stream of [child.stdout!, child.stderr!]) {
    readline.createInterface({ input: stream }).on("line", (l) => {
      log.write(l + "\n");
      recent.push(l);
      if (recent.length > 400) recent.shift();
      for (const f of listeners) f(l);
    });
  }
  child.stdin!.on("error", () => undefined);
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code, sig) => {
    exitCode = code ?? (sig ? 128 : null);
    log.end();
    resolve(exitCode);
  }));
  const p: Proc = {
    name, pid: child.pid!, child, exited,
    alive: () => exitCode === undefined,
    onLine: (cb) => { listeners.push(cb); },
    waitForLine(re, timeoutMs) {
      for (const l of recent) { const m = re.exec(l); if (m) return Promise.resolve(m); }
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${name}: no line matching ${re} within ${timeoutMs} ms; last output:\n${p.tail()}`)), timeoutMs);
        const f = (l: string) => { const m = re.exec(l); if (m) { clearTimeout(t); listeners.splice(listeners.indexOf(f), 1); resolve(m); } };
        listeners.push(f);
        exited.then((code) => { clearTimeout(t); reject(new Error(`${name} exited (${code}) before printing ${re}; last output:\n${p.tail()}`)); });
      });
    },
    send(line) { if (p.alive()) child.stdin!.write(line + "\n"); },
    async stop(timeoutMs = 15_000) {
      if (!p.alive()) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => { if (p.alive()) child.kill("SIGKILL"); }, timeoutMs);
      await exited;
      clearTimeout(t);
    },
    rssKb: () => readRssKb(child.pid!),
    cpuSeconds: () => readCpuSeconds(child.pid!),
    faults: () => readFaults(child.pid!),
    tail: () => recent.slice(-30).join("\n"),
  };
  const unregister = onCleanup(`process ${name} (${child.pid})`, () => p.stop(5000));
  exited.then(() => { unregister().catch(() => undefined); });
  return p;
}

/** A TypeScript worker under bench/workers (run through tsx). */
export function spawnWorker(name: string, worker: string, args: string[], o: ProcOptions): Proc {
  return spawnNode(name, [path.join(REPO, "bench/workers", worker), ...args], { ...o, nodeArgs: ["--import", "tsx", ...(o.nodeArgs ?? [])] });
}
