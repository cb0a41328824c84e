/**
 * One TCP port for the control plane that speaks both HTTP/1.1 (curl,
 * browsers, Connect JSON, gRPC-Web) and cleartext HTTP/2 (gRPC): the first
 * bytes of a connection tell which, by HTTP/2's fixed connection preface.
 */
import net from "node:net";
import http from "node:http";
import http2 from "node:http2";

type Handler = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export function listenDual(handler: Handler, port: number, host: string): Promise<net.Server> {
  const h1 = http.createServer(handler as http.RequestListener);
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: 256 } }, handler as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  const sockets = new Set<net.Socket>();
  const tcp = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.once("readable", () => {
      const head: Buffer | null = socket.read(Math.min(PREFACE.length, socket.readableLength)) ?? socket.read();
      if (!head) { socket.destroy(); return; }
      socket.unshift(head);
      const isH2 = head.length >= 3 && PREFACE.subarray(0, head.length).equals(head.subarray(0, Math.min(head.length, PREFACE.length)));
      (isH2 ? h2 : h1).emit("connection", socket);
    });
    socket.on("error", () => socket.destroy());
  });
  const origClose = tcp.close.bind(tcp);
  tcp.close = ((cb?: (err?: Error) => void) => {
    // Control-plane clients (HTTP/2 especially) keep idle connections open;
    // shutdown must not wait for them. Requests in flight are short unary calls.
    h1.closeAllConnections();
    h2.close();
    for (const s of sockets) s.destroy();
    return origClose(cb);
  }) as typeof tcp.close;
  return new Promise((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(port, host, () => resolve(tcp));
  });
}
