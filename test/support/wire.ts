/** A bare SyncStream client for tests that speak the protocol directly. */
import * as grpc from "@grpc/grpc-js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { AgentMessageSchema, type HubMessage } from "../../gen/branchsync/v1/sync_pb.ts";
import { makeSyncClient, openSyncStream } from "../../lib/wire.ts";

export interface RawStream {
  send(m: MessageInitShape<typeof AgentMessageSchema>["payload"]): void;
  /** An already-encoded AgentMessage, bytes as given (for what protobuf-es would never write). */
  sendRaw(b: Buffer): void;
  next(timeoutMs?: number): Promise<HubMessage>;
  /** Resolves with the stream's final status. */
  status: Promise<{ code: number; details: string; metadata: grpc.Metadata }>;
  close(): void;
}

export function rawStream(port: number, token: string, tenantHint = "x"): RawStream {
  const client: grpc.Client = makeSyncClient(`127.0.0.1:${port}`);
  const call = openSyncStream(client, token, tenantHint);
  const inbox: HubMessage[] = [];
  const waiters: ((m: HubMessage) => void)[] = [];
  call.on("data", (m: HubMessage) => { const w = waiters.shift(); if (w) w(m); else inbox.push(m); });
  const status = new Promise<{ code: number; details: string; metadata: grpc.Metadata }>((resolve) => {
    call.on("status", (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details, metadata: s.metadata }));
    call.on("error", () => undefined);
  });
  status.finally(() => client.close());
  return {
    send: (payload) => call.write(create(AgentMessageSchema, { payload })),
    sendRaw: (b) => call.write(b),
    next(timeoutMs = 5000) {
      const m = inbox.shift();
      if (m) return Promise.resolve(m);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error("no message from hub")), timeoutMs);
        waiters.push((x) => { clearTimeout(t); resolve(x); });
      });
    },
    status,
    close: () => call.cancel(),
  };
}

export const ITEMS_SCHEMA = {
  name: "public.items",
  columns: [
    { name: "id", type: "bigint", nullable: false },
    { name: "sku", type: "text", nullable: true },
    { name: "qty", type: "integer", nullable: true },
    { name: "price", type: "numeric(12,2)", nullable: true },
    { name: "note", type: "text", nullable: true },
    { name: "updated_at", type: "timestamp with time zone", nullable: true },
  ],
  primaryKey: ["id"],
};
