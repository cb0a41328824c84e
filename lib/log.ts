import { pino, type Logger } from "pino";

export type { Logger };

/** Structured logs to stderr, so stdout stays free for CLI output. */
export function makeLogger(name: string): Logger {
  return pino({ name, level: process.env.LOG_LEVEL ?? "info" }, pino.destination(2));
}

/** Milliseconds since `start` (a performance.now() reading), to 0.01 ms: the debug logs' timings. */
export const msSince = (start: number): number => Math.round((performance.now() - start) * 100) / 100;
