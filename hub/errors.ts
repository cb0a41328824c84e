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

/**
 * Failures of the hub's PostgreSQL that a retry can outlive: the server
 * restarting or recovering from a crash, a connection cut mid-query, no
 * connection slot. A cut connection leaves a write's outcome unknown; the
 * client resends, and the log's dedup makes that safe, so UNAVAILABLE (the
 * code clients retry on), not INTERNAL (which tells them it is our bug).
 */
const RETRYABLE_SQLSTATES = new Set(["57P01", "57P02", "57P03", "53300"]);
const RETRYABLE_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN"]);
/** node-postgres reports a connection that died or never came with these messages and no code. */
const CUT_CONNECTION = /^Connection terminated|^timeout exceeded when trying to connect|^Client has encountered a connection error/;

export function storageUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  // SQLSTATE class 08: connection exceptions.
  if (RETRYABLE_SQLSTATES.has(code) || RETRYABLE_ERRNOS.has(code) || /^08[0-9A-Z]{3}$/.test(code)) return true;
  return code === "" && typeof e?.message === "string" && CUT_CONNECTION.test(e.message);
}

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
