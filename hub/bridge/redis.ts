/**
 * Bridges log-head advances between hub replicas over Redis pub/sub.
 * Pub/sub is fire-and-forget; correctness never depends on it (see feed.ts).
 * Redis being down only costs latency, so errors are logged, not thrown.
 */
import { Redis } from "ioredis";
import type { Logger } from "../../lib/log.ts";
import type { Feed } from "../stream/feed.ts";

const PREFIX = "branchsync:head:";

export interface Bridge {
  publish(tenantId: string, seq: bigint): void;
  close(): Promise<void>;
}

export function startBridge(redisUrl: string, feed: Feed, log: Logger): Bridge {
  const opts = { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: (n: number) => Math.min(n * 200, 5000) };
  const pub = new Redis(redisUrl, opts);
  const sub = new Redis(redisUrl, { ...opts, enableOfflineQueue: true });
  let warned = false;
  const onError = (err: Error) => {
    if (!warned) log.warn({ err: err.message }, "redis unavailable; replicas fall back to polling PostgreSQL");
    warned = true;
  };
  pub.on("error", onError);
  sub.on("error", onError);
  pub.on("ready", () => { if (warned) log.info("redis reachable again"); warned = false; });
  sub.psubscribe(`${PREFIX}*`).catch(onError);
  sub.on("pmessage", (_p: string, channel: string, msg: string) => {
    if (!/^\d+$/.test(msg)) return;
    feed.advance(channel.slice(PREFIX.length), BigInt(msg));
  });
  return {
    publish(tenantId, seq) {
      if (pub.status !== "ready") return;
      pub.publish(PREFIX + tenantId, seq.toString()).catch(onError);
    },
    async close() {
      pub.disconnect();
      sub.disconnect();
    },
  };
}
