/**
 * Bridges log-head advances between hub replicas over Redis pub/sub.
 * Pub/sub is fire-and-forget; correctness never depends on it (see feed.ts).
 * Redis being down only costs latency, so errors are logged, not thrown.
 *
 * Messages published while a replica is disconnected are lost to it, so
 * when its subscriptions come back it polls the heads of its waiting
 * tenants once (the sessions would otherwise wait for the next timed poll).
 *
 * A replica that is alone (PUBLISH reached no subscriber but itself) stops
 * publishing head moves for a while: with one replica, a publish per
 * append is a Redis round trip, a socket write and its own echo for no
 * one. A replica whose subscriptions come up announces itself, and every
 * replica that hears it publishes again at once; without that, publishing
 * resumes after `aloneRecheckMs` anyway.
 */
import { Redis } from "ioredis";
import type { Logger } from "../../lib/log.ts";
import type { Feed } from "../stream/feed.ts";
import { metrics } from "../metrics.ts";

export interface BridgeOptions {
  /** Channel prefix; replicas of one deployment must share it. */
  prefix: string;
  /** How long a replica that found itself alone skips publishing before it checks again. */
  aloneRecheckMs: number;
}

const DEFAULTS: BridgeOptions = { prefix: "branchsync:", aloneRecheckMs: 1000 };

export interface Bridge {
  /** Resolves once the publish went out, or was skipped. */
  publish(tenantId: string, seq: bigint): Promise<void>;
  /** Resolves once this replica listens and has announced itself. */
  readonly ready: Promise<void>;
  info(): { published: number; skipped: number; alone: boolean };
  close(): Promise<void>;
}

export function startBridge(redisUrl: string, feed: Feed, log: Logger, options: Partial<BridgeOptions> = {}): Bridge {
  const { prefix, aloneRecheckMs } = { ...DEFAULTS, ...options };
  const headPrefix = `${prefix}head:`;
  const announceChannel = `${prefix}replica-up`;
  const opts = { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: (n: number) => Math.min(n * 200, 5000) };
  const pub = new Redis(redisUrl, opts);
  const sub = new Redis(redisUrl, { ...opts, enableOfflineQueue: true });
  let warned = false;
  let aloneUntil = 0;
  let subscribed = false;
  const counts = { published: 0, skipped: 0 };
  const onError = (err: Error) => {
    if (!warned) log.warn({ err: err.message }, "redis unavailable; replicas fall back to polling PostgreSQL");
    warned = true;
  };
  pub.on("error", onError);
  sub.on("error", onError);
  pub.on("ready", () => { if (warned) log.info("redis reachable again"); warned = false; });

  const announce = () => pub.publish(announceChannel, "up").then(() => undefined, onError);
  const listen = async () => {
    await sub.psubscribe(`${headPrefix}*`);
    await sub.subscribe(announceChannel);
    subscribed = true;
    // The publisher may still be connecting; announcing is worth a wait.
    if (pub.status !== "ready") await new Promise((r) => pub.once("ready", r));
    await announce();
  };
  const ready = listen().catch(onError);
  // After a reconnect ioredis subscribes again. Once that is done (a repeated
  // subscribe answers after the ones it queued), catch up on what was
  // published while we could not hear it, and say we are back, in case the
  // others went quiet meanwhile (alone).
  sub.on("ready", () => {
    if (!subscribed) return;
    sub.psubscribe(`${headPrefix}*`).then(() => { feed.pollNow(); return announce(); }, onError);
  });
  sub.on("message", (channel: string) => { if (channel === announceChannel) aloneUntil = 0; });
  sub.on("pmessage", (_p: string, channel: string, msg: string) => {
    if (!/^\d+$/.test(msg)) return;
    feed.advance(channel.slice(headPrefix.length), BigInt(msg));
  });
  return {
    ready,
    async publish(tenantId, seq) {
      if (pub.status !== "ready") return;
      if (Date.now() < aloneUntil) { counts.skipped++; return; }
      counts.published++;
      metrics.bridgePublishes.inc();
      try {
        const receivers = await pub.publish(headPrefix + tenantId, seq.toString());
        // Our own pattern subscription is one of the receivers.
        aloneUntil = receivers <= (sub.status === "ready" ? 1 : 0) ? Date.now() + aloneRecheckMs : 0;
      } catch (err) {
        onError(err as Error);
      }
    },
    info: () => ({ ...counts, alone: Date.now() < aloneUntil }),
    async close() {
      pub.disconnect();
      sub.disconnect();
    },
  };
}
