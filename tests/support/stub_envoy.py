#!/usr/bin/env python3
"""A stand-in for Envoy, started by outpost exactly as Envoy would be (-c BOOTSTRAP ...).

- Records its argv, environment, network namespace and cwd in
  $STUB_ENVOY_RECORDS/<node id>.json (one line per start appended to <node id>.starts).
- Crashes on demand: exits 1 at once while $STUB_ENVOY_RECORDS/crash-<node id> exists.
- Answers GET /ready on the admin address the bootstrap names as Envoy does: 426 to
  HTTP/1.0, 503 INITIALIZING until its listeners are up, then 200 LIVE (chunked).
- Gets its configuration the way Envoy does, through the xDS cluster of the bootstrap
  (`local_agent`, a unix socket that outpost's relay forwards to Consul's gRPC port). The
  Consul double serves its HTTP API on that port, so where Envoy would speak xDS this stub
  asks `GET /v1/agent/service/<proxy id>` and `GET /v1/health/connect/<name>` (what
  `consul connect proxy` asks), with the bootstrap's token.
- Relays TCP like `consul connect proxy` without TLS: the public listener
  (Proxy.Config bind_address:bind_port, else the service's Address:Port) to
  LocalServiceAddress:LocalServicePort, and each upstream's LocalBindAddress:LocalBindPort to
  an instance of the destination found in the catalog at connection time.
- In transparent mode (Proxy.Mode "transparent") listens on the outbound listener
  (TransparentProxy.OutboundListenerPort, 15001) like Envoy's passthrough: each connection
  redirected there is dialled on to its original destination (SO_ORIGINAL_DST), directly,
  and the answer is prefixed with "via-envoy ".
- Serves each `Expose.Paths` entry as Envoy's expose listener does: HTTP/1.1 on
  0.0.0.0:ListenerPort (HTTP/1.0 gets 426), where only that exact path is forwarded to
  127.0.0.1:LocalPathPort and every other path gets 404.
Exits 1 at once if the bootstrap is missing or not JSON, or the registration cannot be read.
"""
import http.client, http.server, json, os, socket, sys, threading, time

class Server(http.server.ThreadingHTTPServer):
    # HTTPServer.server_bind asks DNS for the address's name (getfqdn); in a namespace whose
    # route leads nowhere that waits 5 s for the resolver. Envoy asks nobody.
    def server_bind(self):
        import socketserver
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


argv = sys.argv
config = json.load(open(argv[argv.index("-c") + 1]))
node = config["node"]["id"]
records = os.environ.get("STUB_ENVOY_RECORDS") or "/tmp"
with open(os.path.join(records, node + ".json"), "w") as out:
    json.dump({"argv": argv, "env": dict(os.environ), "netns": os.readlink("/proc/self/ns/net"),
               "uid": os.getuid(),
               "cwd": os.getcwd()}, out)
with open(os.path.join(records, node + ".starts"), "a") as out:
    out.write("%f\n" % time.time())
if os.path.exists(os.path.join(records, "crash-" + node)):
    sys.exit(1)


def xds_socket():
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "local_agent":
            lb = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]
            return lb["endpoint"]["address"]["pipe"]["path"]
    raise SystemExit("no local_agent cluster")


def xds_token():
    for m in config["dynamic_resources"]["ads_config"]["grpc_services"]["initial_metadata"]:
        if m["key"] == "x-consul-token":
            return m["value"]
    return ""


class UnixHTTP(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(xds_socket())


def consul_get(path):
    conn = UnixHTTP("consul")
    conn.request("GET", path, headers={"X-Consul-Token": xds_token()})
    reply = conn.getresponse()
    body = reply.read()
    if reply.status != 200:
        raise OSError("GET %s: %d %s" % (path, reply.status, body))
    return json.loads(body)


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(bind, target):
    """Accepts on bind (host, port) and relays each connection to target() (host, port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(bind)
    listener.listen(64)

    def accept():
        while True:
            client, _ = listener.accept()
            try:
                upstream = socket.create_connection(target(), timeout=2)
                upstream.settimeout(None)
            except OSError as e:
                print("stub envoy: %s → %s" % (bind, e), file=sys.stderr, flush=True)
                client.close()
                continue
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def instance_of(name):
    def pick():
        entries = consul_get("/v1/health/connect/" + name)
        if not entries:
            raise OSError("no instance of %s" % name)
        svc = entries[0]["Service"]
        return (svc.get("Address") or entries[0]["Node"]["Address"], svc["Port"])
    return pick



# Envoy's admin, as outpost meets it: HTTP/1.0 gets 426 (Envoy's connection manager refuses
# it), /ready answers 503 with the state name until the listeners are up, then 200 "LIVE";
# bodies are chunked, as Envoy's admin sends them.
state = "INITIALIZING"


class Admin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.request_version == "HTTP/1.0":
            self.answer(426, "Upgrade Required", chunked=False)
        elif self.path == "/ready":
            self.answer(200 if state == "LIVE" else 503, state + "\n")
        else:
            self.answer(404, "invalid path\n")

    def answer(self, status, body, chunked=True):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def log_message(self, *args):
        pass


admin = config["admin"]["address"]["socket_address"]
admin_server = Server((admin["address"], admin["port_value"]), Admin)
threading.Thread(target=admin_server.serve_forever, daemon=True).start()

registration = consul_get("/v1/agent/service/" + node)
proxy = registration.get("Proxy") or {}
cfg = proxy.get("Config") or {}
if registration.get("Kind") == "connect-proxy":
    public = (cfg.get("bind_address") or registration.get("Address") or "0.0.0.0",
              int(cfg.get("bind_port") or registration["Port"]))
    local = (proxy.get("LocalServiceAddress") or "127.0.0.1", proxy["LocalServicePort"])
    serve(public, lambda: local)


def serve_outbound(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)

    def accept():
        while True:
            client, _ = listener.accept()
            raw = client.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
            dst = (socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big"))
            try:
                upstream = socket.create_connection(dst, timeout=2)
                upstream.settimeout(None)
            except OSError as e:
                client.sendall(("via-envoy failed %s: %s\n" % (dst, e)).encode())
                client.close()
                continue
            client.sendall(b"via-envoy ")
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


if proxy.get("Mode") == "transparent":
    serve_outbound((proxy.get("TransparentProxy") or {}).get("OutboundListenerPort") or 15001)
for up in proxy.get("Upstreams") or []:
    serve((up.get("LocalBindAddress") or "127.0.0.1", up["LocalBindPort"]),
          instance_of(up["DestinationName"]))


def serve_exposed(expose):
    path, local = expose["Path"], expose["LocalPathPort"]

    class Exposed(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.close_connection = True
            if self.request_version == "HTTP/1.0":
                # Envoy's HTTP connection manager refuses HTTP/1.0.
                self.send_response(426)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != path:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            conn = http.client.HTTPConnection("127.0.0.1", local, timeout=5)
            conn.request("GET", path)
            reply = conn.getresponse()
            body = reply.read()
            self.send_response(reply.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = Server(("0.0.0.0", expose["ListenerPort"]), Exposed)
    threading.Thread(target=server.serve_forever, daemon=True).start()


for expose in (proxy.get("Expose") or {}).get("Paths") or []:
    serve_exposed(expose)


state = "LIVE"
with open(os.path.join(records, node + ".ready"), "a") as out:
    out.write("%f\n" % time.time())
threading.Event().wait()
