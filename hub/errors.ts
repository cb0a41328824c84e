/**
 * The one place where failures become gRPC status codes. Code that knows
 * what went wrong throws StatusError with a message the user can act on;
 * anything else is an internal error whose details stay in our logs (they
 * may name other tenants' objects) and the caller gets an id to quote.
 */
import { status as Status } from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import type { Logger } from "../lib/log.ts";
import { storageUnavailable } from "../lib/pgerrors.ts";

export { Status };

export class StatusError extends Error {
  constructor(readonly code: Status, message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}

export interface PublicError { code: Status; message: string; retryAfterMs?: number }

/**
 * A cut connection to the hub's database leaves a write's outcome unknown;
 * the client resends, and the log's dedup makes that safe, so UNAVAILABLE
 * (the code clients retry on), not INTERNAL (which tells them it is our bug).
 */
export function toPublicError(err: unknown, log: Logger): PublicError {
  if (err instanceof StatusError) return { code: err.code, message: err.message, retryAfterMs: err.retryAfterMs };
  if (storageUnavailable(err)) {
    const id = randomUUID();
    log.warn({ err, errorId: id }, "storage unavailable");
    return { code: Status.UNAVAILABLE, message: `hub storage unavailable, retry later (error id ${id})`, retryAfterMs: 1000 };
  }
  const id = randomUUID();
  log.error({ err, errorId: id }, "internal error");
  return { code: Status.INTERNAL, message: `internal error (error id ${id})` };
}
