/**
 * Ports for test servers that must keep theirs across restarts (a crashed
 * PostgreSQL, a killed hub replica). Taken below the kernel's ephemeral
 * range (32768 and up here), so no outgoing connection can take one while
 * its server is down.
 */
import net from "node:net";

/** The first port from `from` that nothing listens on right now. */
export async function freePort(from: number): Promise<number> {
  for (let port = from; port < from + 200; port++) {
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer().once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free port from ${from}`);
}
