/**
 * Where a latency run's probes spent their time, from one run's files:
 *
 *   npm run bench -- --only latency --agent-env LOG_LEVEL=debug
 *   node --import tsx bench/latency-legs.ts bench/results/<stamp>.json
 *
 * Splits each probe's A → hub leg at agent A's send (its "sending batch"
 * debug line, found by the probe's txid) and prints the three legs' p50 /
 * p90 / p99: commit → agent A sends, send → hub log transaction start,
 * hub → visible on B. Then the rhythm of the slow probes: folding their send
 * times over periods of 0.2–1.5 s, the period at which they bunch most. A
 * strong one points at something periodic on the machine (session 12: 0.54 s,
 * the kernel's DAMON sampling; see bench/lib/machine.ts).
 */
import fs from "node:fs";
import path from "node:path";
import { percentile } from "./lib/stats.ts";

type Leg = [sendMs: number, upMs: number, downMs: number, txid: string, sendEpochMs: number];

function sendTimes(logFile: string): Map<string, { at: number; readMs: number }> {
  const out = new Map<string, { at: number; readMs: number }>();
  for (const line of fs.readFileSync(logFile, "utf8").split("\n")) {
    if (!line.includes('"sending batch"')) continue;
    const o = JSON.parse(line) as { time: number; readMs?: number; txns: string[] };
    for (const t of o.txns) {
      const txid = t.split("#")[0];
      if (!out.has(txid)) out.set(txid, { at: o.time, readMs: o.readMs ?? NaN });
    }
  }
  return out;
}

/**
 * The period (s) in 0.2–1.5 at which `times` bunch most, and how much: the
 * fullest of 20 phase bins over the mean. A rhythm also bunches at its
 * multiples (a little more, as jitter spreads less per fold), so the shortest
 * period within 20 % of the best score is the one reported.
 */
function rhythm(times: number[]): { periodS: number; peakOverMean: number } {
  const scores: { periodS: number; peakOverMean: number }[] = [];
  for (let p = 0.2; p <= 1.5; p += 0.0025) {
    const bins = new Array(20).fill(0);
    for (const t of times) bins[Math.floor(((t % p) / p) * 20)]++;
    scores.push({ periodS: Math.round(p * 1000) / 1000, peakOverMean: Math.round((Math.max(...bins) / (times.length / 20)) * 100) / 100 });
  }
  const top = Math.max(...scores.map((s) => s.peakOverMean));
  return scores.find((s) => s.peakOverMean >= 0.8 * top) ?? { periodS: 0, peakOverMean: 0 };
}

function main() {
  const file = process.argv[2];
  if (!file) { console.error("usage: node --import tsx bench/latency-legs.ts bench/results/<stamp>.json"); process.exit(2); }
  const run = JSON.parse(fs.readFileSync(file, "utf8"));
  const lat = run.sections.find((s: { section: string }) => s.section === "latency");
  const legs: Leg[] | undefined = lat?.data?.legTimelineMs;
  if (!legs?.length) { console.error(`${file}: no latency leg timeline (bench from session 12 on, latency section)`); process.exit(2); }
  const agentLog = path.join(run.logDir, "lat_agent_a.log");
  const sends = fs.existsSync(agentLog) ? sendTimes(agentLog) : new Map();
  const q = (v: number[]) => { const s = [...v].sort((a, b) => a - b); return [0.5, 0.9, 0.99].map((p) => percentile(s, p).toFixed(1)).join(" / "); };
  const toSend: number[] = [];
  const sendToHub: number[] = [];
  const reads: number[] = [];
  for (const [, up, , txid, at] of legs) {
    const s = sends.get(txid);
    if (!s) continue;
    toSend.push(s.at - at);
    sendToHub.push(up - (s.at - at));
    if (Number.isFinite(s.readMs)) reads.push(s.readMs);
  }
  console.log(`${legs.length} probes; p50 / p90 / p99 ms:`);
  if (toSend.length) {
    console.log(`  A commit → agent A sends      ${q(toSend)}   (its read_batch: ${reads.length ? q(reads) : "n/a"})`);
    console.log(`  agent A sends → hub append    ${q(sendToHub)}`);
  } else {
    console.log(`  (no "sending batch" lines in ${agentLog}: run with --agent-env LOG_LEVEL=debug to split the first leg)`);
  }
  console.log(`  A commit → hub append start   ${q(legs.map((l) => l[1]))}`);
  console.log(`  hub append start → B          ${q(legs.map((l) => l[2]))}`);
  const total = legs.map((l) => l[1] + l[2]);
  const p90 = percentile([...total].sort((a, b) => a - b), 0.9);
  const slow = legs.filter((l) => l[1] + l[2] > p90).map((l) => l[0] / 1000);
  if (slow.length < 30) { console.log(`slowest tenth: ${slow.length} probes, too few to look for a rhythm`); return; }
  const r = rhythm(slow);
  console.log(`slowest tenth (> ${p90.toFixed(1)} ms, ${slow.length} probes) bunch most at a period of ${r.periodS} s: fullest phase bin ${r.peakOverMean}× the mean (runs without a rhythm gave 2–2.5×)`);
}

main();
