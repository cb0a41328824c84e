/**
 * Agent-less SyncStream clients for the streams, ingest and stall sections: plain
 * grpc-js on lib/wire.ts (openSyncStream + protobuf-es), no database.
 */
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { AgentMessageSchema, type HubMessage } from "../../gen/branchsync/v1/sync_pb.ts";
import { openSyncStream, MAX_MESSAGE_BYTES, type AgentCall } from "../../lib/wire.ts";

/**
 * Like lib/wire.ts makeSyncClient, plus a private subchannel pool: grpc-js
 * otherwise shares one HTTP/2 connection between all clients of a process
 * that have the same target and options.
 */
export function makeClient(address: string): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.use_local_subchannel_pool": 1,
  });
}

/** A tracked table as Hello declares it (types as format_type prints them). */
export interface TableInit { name: string; columns: { name: string; type: string; nullable: boolean }[]; primaryKey: string[] }

/** public.items exactly as the agent declares it (format_type spellings). */
export const ITEMS: TableInit = {
  name: "public.items",
  columns: [
    { name: "id", type: "bigint", nullable: false }, { name: "sku", type: "text", nullable: true },
    { name: "qty", type: "integer", nullable: true }, { name: "price", type: "numeric(12,2)", nullable: true },
    { name: "note", type: "text", nullable: true }, { name: "updated_at", type: "timestamp with time zone", nullable: true },
  ],
  primaryKey: ["id"],
};

export const helloMsg = (tables: TableInit[], version: string) =>
  create(AgentMessageSchema, { payload: { case: "hello", value: { agentVersion: version, tables, resumeCursor: 0n } } });

export const pingMsg = (nonce: bigint) =>
  create(AgentMessageSchema, { payload: { case: "ping", value: { nonce, sentAtUs: BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) } } });

export const pongMsg = (nonce: bigint, sentAtUs: bigint) => create(AgentMessageSchema, { payload: { case: "pong", value: { nonce, sentAtUs } } });

export interface OpenStream {
  call: AgentCall;
  welcome: Promise<void>;
  ended: Promise<grpc.ServiceError | null>;
}

/** Opens a stream, sends Hello, answers hub pings; `onMessage` sees everything else. */
export function openStream(client: grpc.Client, token: string, tenantId: string, tables: TableInit[], onMessage: (m: HubMessage) => void): OpenStream {
  const call = openSyncStream(client, token, tenantId);
  let welcomed: () => void = () => undefined;
  let failed: (e: Error) => void = () => undefined;
  const welcome = new Promise<void>((resolve, reject) => { welcomed = resolve; failed = reject; });
  welcome.catch(() => undefined);
  const ended = new Promise<grpc.ServiceError | null>((resolve) => {
    call.on("error", (e: grpc.ServiceError) => { failed(e); resolve(e); });
    call.on("end", () => { failed(new Error("stream ended before Welcome")); resolve(null); });
  });
  call.on("data", (m: HubMessage) => {
    const p = m.payload;
    if (p.case === "welcome") welcomed();
    else if (p.case === "ping") call.write(pongMsg(p.value.nonce, p.value.sentAtUs));
    else onMessage(m);
  });
  call.write(helloMsg(tables, "branchsync-bench/0.1.0"));
  return { call, welcome, ended };
}
