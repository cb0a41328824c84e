/**
 * Serves SyncStream with grpc-js (the data plane; see DESIGN for why) and
 * grpc.health.v1 on the same port. Authenticates each stream from its
 * bearer token before any message is handled.
 */
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import type { AgentMessage, HubMessage } from "../../gen/branchsync/v1/sync_pb.ts";
import { syncServiceDefinition, MAX_MESSAGE_BYTES } from "../../lib/wire.ts";
import { Status, StatusError, toPublicError, type PublicError } from "../errors.ts";
import type { TokenService } from "../auth/tokens.ts";
import { startSession, type Session, type SessionDeps } from "./session.ts";
import { metrics } from "../metrics.ts";

type Call = grpc.ServerDuplexStream<AgentMessage, HubMessage>;

function bearer(call: Call): string {
  const v = call.metadata.get("authorization")[0];
  const m = typeof v === "string" ? /^Bearer\s+(\S+)$/i.exec(v) : null;
  if (!m) throw new StatusError(Status.UNAUTHENTICATED, "missing `authorization: Bearer <token>` metadata; get a token from AuthService.IssueToken");
  return m[1];
}

function endWithError(call: Call, err: PublicError) {
  const md = new grpc.Metadata();
  // gRPC's standard retry pushback hint.
  if (err.retryAfterMs !== undefined) md.set("grpc-retry-pushback-ms", String(err.retryAfterMs));
  call.emit("error", { code: err.code, details: err.message, metadata: md });
}

function transport(call: Call) {
  return {
    send(m: HubMessage | Buffer): Promise<void> {
      if (call.cancelled || call.destroyed) return Promise.resolve();
      // Buffers pass through lib/wire.ts's serializer untouched.
      if (call.write(m as HubMessage)) return Promise.resolve();
      return new Promise<void>((resolve) => {
        const done = () => { call.off("drain", done); call.off("close", done); resolve(); };
        call.on("drain", done);
        call.on("close", done);
      });
    },
    close(err?: PublicError) {
      if (call.cancelled || call.destroyed) return;
      if (err) endWithError(call, err);
      else call.end();
    },
  };
}

export interface StreamServer {
  server: grpc.Server;
  health: HealthImplementation;
  sessions: Set<Session>;
}

export function makeStreamServer(deps: SessionDeps, tokens: TokenService): StreamServer {
  const sessions = new Set<Session>();
  const server = new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    // Node's default is 2^32-1; Envoy multiplexes many agents per connection.
    "grpc.max_concurrent_streams": 20_000,
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 10_000,
  });
  const health = new HealthImplementation({ "": "SERVING", "branchsync.v1.SyncService": "SERVING" });
  health.addToServer(server);
  server.addService(syncServiceDefinition, {
    SyncStream: (call: Call) => {
      const pending: AgentMessage[] = [];
      let session: Session | null = null;
      let ended = false;
      call.on("data", (m: AgentMessage) => (session ? session.onMessage(m) : pending.push(m)));
      call.on("end", () => { ended = true; session?.onEnd(); });
      call.on("error", () => { ended = true; session?.onEnd(); });
      call.on("cancelled", () => { ended = true; session?.onEnd(); });
      (async () => {
        const identity = await tokens.verify(bearer(call));
        const io = transport(call);
        const s = startSession(identity, deps, io);
        session = s;
        sessions.add(s);
        call.on("close", () => sessions.delete(s));
        for (const m of pending.splice(0)) s.onMessage(m);
        if (ended) s.onEnd();
      })().catch((err) => {
        if (err instanceof StatusError && err.code === Status.UNAUTHENTICATED) metrics.authFailures.inc();
        endWithError(call, toPublicError(err, deps.log));
      });
    },
  });
  return { server, health, sessions };
}
