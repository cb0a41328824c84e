/** JSON-lines conversation with a bench worker process (commands on stdin, events on stdout). */
import type { Proc } from "./procs.ts";

export interface WorkerIO {
  proc: Proc;
  /** Sends a command and resolves with the next event named `ev`. */
  request<T = Record<string, unknown>>(cmd: Record<string, unknown>, ev: string, timeoutMs: number): Promise<T>;
  next<T = Record<string, unknown>>(ev: string, timeoutMs: number): Promise<T>;
}

export function workerIO(proc: Proc): WorkerIO {
  const queue: Record<string, unknown>[] = [];
  const waiters: { ev: string; resolve: (o: Record<string, unknown>) => void }[] = [];
  proc.onLine((l) => {
    if (!l.startsWith("{")) return;
    let o: Record<string, unknown>;
    try { o = JSON.parse(l); } catch { return; }
    const i = waiters.findIndex((w) => w.ev === o.ev);
    if (i >= 0) waiters.splice(i, 1)[0].resolve(o);
    else queue.push(o);
  });
  const next = <T>(ev: string, timeoutMs: number) => {
    const qi = queue.findIndex((o) => o.ev === ev);
    if (qi >= 0) return Promise.resolve(queue.splice(qi, 1)[0] as T);
    return new Promise<T>((resolve, reject) => {
      const w = { ev, resolve: (o: Record<string, unknown>) => { clearTimeout(t); resolve(o as T); } };
      const t = setTimeout(() => { waiters.splice(waiters.indexOf(w), 1); reject(new Error(`${proc.name}: no "${ev}" within ${timeoutMs} ms; last output:\n${proc.tail()}`)); }, timeoutMs);
      waiters.push(w);
      proc.exited.then((code) => { clearTimeout(t); reject(new Error(`${proc.name} exited (${code}) while waiting for "${ev}"; last output:\n${proc.tail()}`)); });
    });
  };
  return {
    proc, next,
    request(cmd, ev, timeoutMs) {
      const p = next<never>(ev, timeoutMs);
      proc.send(JSON.stringify(cmd));
      return p;
    },
  };
}
