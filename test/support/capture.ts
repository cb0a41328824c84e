/** Capture installed on a test database's public.items, as an agent would at start. */
import type pg from "pg";
import { introspect } from "../../agent/capture/introspect.ts";
import { installCapture } from "../../agent/capture/install.ts";

/** Installs capture on public.items (tenant "t", branch "b"); returns the cursor installCapture reports. */
export async function captureItems(pool: pg.Pool): Promise<bigint> {
  const c = await pool.connect();
  try { return await installCapture(c, [await introspect(c, "public.items")], "t", "b"); } finally { c.release(); }
}
