/**
 * The one place where failures become gRPC status codes. Code that knows
 * what went wrong throws StatusError with a message the user can act on;
 * anything else is an internal error whose details stay in our logs (they
 * may name other tenants' objects) and the caller gets an id to quote.
 */
import { status as Status } from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import type { Logger } from "../lib/log.ts";

export { Status };

export class StatusError extends Error {
  constructor(readonly code: Status, message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}

export interface PublicError { code: Status; message: string; retryAfterMs?: number }

export function toPublicError(err: unknown, log: Logger): PublicError {
  if (err instanceof StatusError) return { code: err.code, message: err.message, retryAfterMs: err.retryAfterMs };
  const pgCode = (err as { code?: string } | null)?.code;
  if (pgCode === "57P01" || pgCode === "08006" || pgCode === "ECONNREFUSED" || pgCode === "53300") {
    const id = randomUUID();
    log.warn({ err, errorId: id }, "storage unavailable");
    return { code: Status.UNAVAILABLE, message: `hub storage unavailable, retry later (error id ${id})`, retryAfterMs: 1000 };
  }
  const id = randomUUID();
  log.error({ err, errorId: id }, "internal error");
  return { code: Status.INTERNAL, message: `internal error (error id ${id})` };
}
