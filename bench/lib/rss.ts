/**
 * Resident memory of bench processes sampled on a timer, so a section can
 * give each phase its start, peak and end: a single reading at the end of a
 * phase would miss memory the process held for a while and then released.
 */
import type { Proc } from "./procs.ts";

export interface RssSpan { startKb: number; peakKb: number; endKb: number }

export interface RssSampler {
  /** Samples now; a span opened at the returned index starts with this sample. */
  mark(): number;
  /** Samples now, and each process's start / peak / end over the samples from `from` to now. */
  span(from: number): Record<string, RssSpan>;
  /** Every sample: ms since the sampler started, then kB per process in `names` order (0 once a process is gone). */
  series(): { names: string[]; everyMs: number; samples: number[][] };
  stop(): void;
}

export function sampleRss(procs: Record<string, Proc>, everyMs: number): RssSampler {
  const names = Object.keys(procs);
  const t0 = performance.now();
  const samples: number[][] = [];
  const take = () => { samples.push([Math.round(performance.now() - t0), ...names.map((n) => procs[n].rssKb() ?? 0)]); return samples.length - 1; };
  take();
  const timer = setInterval(take, everyMs);
  return {
    mark: take,
    span(from) {
      const to = take();
      const out: Record<string, RssSpan> = {};
      names.forEach((n, i) => {
        let peak = 0;
        for (let k = from; k <= to; k++) peak = Math.max(peak, samples[k][i + 1]);
        out[n] = { startKb: samples[from][i + 1], peakKb: peak, endKb: samples[to][i + 1] };
      });
      return out;
    },
    series: () => ({ names, everyMs, samples }),
    stop: () => clearInterval(timer),
  };
}
