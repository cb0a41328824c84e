/**
 * Many branch agents in one process (fan-out section): each entry of the
 * JSON file in argv[2] is the env of one `branchsync agent`, parsed with the
 * CLI's own spec and defaults, and started with startAgent from agent/main.ts.
 * Prints "ready N" once all are started; SIGTERM stops them all.
 */
import fs from "node:fs";
import { pino } from "pino";
import { parseConfig } from "../../lib/config.ts";
import { agentSpec } from "../../agent/config.ts";
import { startAgent, type Agent } from "../../agent/main.ts";

const envs = JSON.parse(fs.readFileSync(process.argv[2], "utf8")) as Record<string, string>[];
const log = pino({ name: "agent", level: process.env.LOG_LEVEL ?? "warn" }, pino.destination(2));
const agents: Agent[] = [];
const CONCURRENCY = 8;

let next = 0;
await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
  while (next < envs.length) {
    const cfg = parseConfig(agentSpec, new Map(), { ...process.env, ...envs[next++] });
    agents.push(await startAgent(cfg, log));
  }
}));
console.log(`ready ${agents.length}`);

let stopping = false;
process.on("SIGTERM", () => {
  if (stopping) return;
  stopping = true;
  Promise.allSettled(agents.map((a) => a.stop())).then(() => process.exit(0));
});
setInterval(() => {
  const down = agents.filter((a) => !a.status().connected).length;
  if (down > 0) console.log(`disconnected ${down}`);
}, 5000).unref();
