#!/usr/bin/env python3
"""A stand-in for Envoy: records its argv, environment and network namespace in
$STUB_ENVOY_RECORDS/<node id>.json, then answers GET /ready with 200 on the admin address
its bootstrap (-c FILE) names. Exits 1 at once if the bootstrap is missing or not JSON."""
import http.server, json, os, sys

argv = sys.argv
config = json.load(open(argv[argv.index("-c") + 1]))
admin = config["admin"]["address"]["socket_address"]
node = config["node"]["id"]
records = os.environ.get("STUB_ENVOY_RECORDS") or "/tmp"
with open(os.path.join(records, node + ".json"), "w") as out:
    json.dump({"argv": argv, "env": dict(os.environ), "netns": os.readlink("/proc/self/ns/net"),
               "cwd": os.getcwd()}, out)


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(b"LIVE\n")

    def log_message(self, *args):
        pass


http.server.HTTPServer((admin["address"], admin["port_value"]), Ready).serve_forever()
