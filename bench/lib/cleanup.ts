/**
 * Everything the bench creates (processes, databases, clusters) registers
 * its undo here. Undo runs in reverse order at the end, on failure and on
 * SIGINT/SIGTERM, so a run never leaves bsbench_ databases or processes behind.
 */
type Action = { name: string; fn: () => Promise<void> | void };

const actions: Action[] = [];
let running: Promise<void> | null = null;

/** Registers an undo; the returned function runs it now (once) and unregisters it. */
export function onCleanup(name: string, fn: () => Promise<void> | void): () => Promise<void> {
  const a: Action = { name, fn };
  actions.push(a);
  return async () => {
    const i = actions.indexOf(a);
    if (i < 0) return;
    actions.splice(i, 1);
    await a.fn();
  };
}

export function runCleanup(): Promise<void> {
  running ??= (async () => {
    while (actions.length > 0) {
      const a = actions.pop()!;
      try {
        await a.fn();
      } catch (e) {
        console.error(`cleanup "${a.name}" failed: ${(e as Error).message}`);
      }
    }
    running = null;
  })();
  return running;
}

export function installSignalHandlers(): void {
  let hits = 0;
  const handler = (sig: string) => {
    hits++;
    if (hits > 1) process.exit(130);
    console.error(`\n${sig}: cleaning up…`);
    runCleanup().finally(() => process.exit(130));
  };
  process.on("SIGINT", () => handler("SIGINT"));
  process.on("SIGTERM", () => handler("SIGTERM"));
}
