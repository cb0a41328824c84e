/**
 * Failures of a PostgreSQL connection that a retry can outlive: the server
 * restarting or recovering from a crash, a connection cut mid-query or
 * refused, no connection slot. The hub answers them UNAVAILABLE
 * (hub/errors.ts); the CLI names the database it could not reach.
 */
const RETRYABLE_SQLSTATES = new Set(["57P01", "57P02", "57P03", "53300"]);
const RETRYABLE_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN"]);
/** node-postgres reports a connection that died or never came with these messages and no code. */
const CUT_CONNECTION = /^Connection terminated|^timeout exceeded when trying to connect|^Client has encountered a connection error/;

export function storageUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  // SQLSTATE class 08: connection exceptions.
  if (RETRYABLE_SQLSTATES.has(code) || RETRYABLE_ERRNOS.has(code) || /^08[0-9A-Z]{3}$/.test(code)) return true;
  return code === "" && typeof e?.message === "string" && CUT_CONNECTION.test(e.message);
}

/** host:port/database of a PostgreSQL URL, without user or password, for messages. */
export function whereIs(url: string): string {
  try {
    const u = new URL(url);
    const socket = u.searchParams.get("host");
    return `${u.hostname || socket || "localhost"}${u.port ? `:${u.port}` : ""}${u.pathname}`;
  } catch {
    return "(unparsable URL)";
  }
}
