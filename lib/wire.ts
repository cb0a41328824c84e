/**
 * The SyncStream wire for grpc-js, with protobuf-es doing the encoding. Both
 * the hub's server and the agent's client use these definitions.
 */
import * as grpc from "@grpc/grpc-js";
import { decodeChangesEnvelope, decodeAckEnvelope, decodeBatchAckEnvelope } from "./protowire.ts";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  AgentMessageSchema, HubMessageSchema, type AgentMessage, type HubMessage,
} from "../gen/branchsync/v1/sync_pb.ts";

export const SYNC_STREAM_PATH = "/branchsync.v1.SyncService/SyncStream";

/** Hard cap on one message either way; the hub advertises it in Welcome. */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export const encodeAgent = (m: AgentMessage) => Buffer.from(toBinary(AgentMessageSchema, m));
/**
 * Change batches and acks (nearly all traffic) take the hand-written
 * decoders (lib/protowire.ts), which also keep each transaction's raw bytes;
 * anything else goes through protobuf-es. Both yield the same shape (the
 * fast one without $typeName).
 */
export function decodeAgent(b: Buffer): AgentMessage {
  const batch = decodeChangesEnvelope(b);
  if (batch) return { payload: { case: "changes", value: batch } } as unknown as AgentMessage;
  const ack = decodeAckEnvelope(b);
  if (ack) return { payload: { case: "ack", value: ack } } as unknown as AgentMessage;
  return fromBinary(AgentMessageSchema, b);
}
export const encodeHub = (m: HubMessage) => Buffer.from(toBinary(HubMessageSchema, m));
export function decodeHub(b: Buffer): HubMessage {
  const batch = decodeChangesEnvelope(b);
  if (batch) return { payload: { case: "changes", value: batch } } as unknown as HubMessage;
  const ack = decodeBatchAckEnvelope(b);
  if (ack) return { payload: { case: "batchAck", value: ack } } as unknown as HubMessage;
  return fromBinary(HubMessageSchema, b);
}

export const syncServiceDefinition: grpc.ServiceDefinition = {
  SyncStream: {
    path: SYNC_STREAM_PATH,
    requestStream: true,
    responseStream: true,
    // Agents hand over pre-encoded change batches (lib/protowire.ts).
    requestSerialize: (m: AgentMessage | Buffer) => (Buffer.isBuffer(m) ? m : encodeAgent(m)),
    requestDeserialize: decodeAgent,
    // The hub may hand over an already-encoded message (see hub/stream/encode.ts).
    responseSerialize: (m: HubMessage | Buffer) => (Buffer.isBuffer(m) ? m : encodeHub(m)),
    responseDeserialize: decodeHub,
  },
};

export type AgentCall = grpc.ClientDuplexStream<AgentMessage | Buffer, HubMessage>;

export function openSyncStream(client: grpc.Client, token: string, tenantId: string): AgentCall {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  // Only a routing hint for Envoy's ring hash; the hub trusts the token.
  md.set("x-branchsync-tenant", tenantId);
  return client.makeBidiStreamRequest(SYNC_STREAM_PATH, (m: AgentMessage | Buffer) => (Buffer.isBuffer(m) ? m : encodeAgent(m)), decodeHub, md);
}

export function makeSyncClient(address: string, creds = grpc.credentials.createInsecure()): grpc.Client {
  return new grpc.Client(address, creds, {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
  });
}
