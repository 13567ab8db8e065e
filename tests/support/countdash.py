#!/usr/bin/env python3
"""Stand-ins for the two programs of Nomad's countdash demo, for tests.

  countdash.py api        serves {"count": N, "hostname": ...} on 0.0.0.0:$PORT
  countdash.py dashboard  serves on 0.0.0.0:$PORT; each GET asks $COUNTING_SERVICE_URL (the
                          upstream listener of its Envoy) and answers "dashboard: <its answer>",
                          or 502 with the error.
"""
import http.server, itertools, json, os, socket, sys, urllib.request

role = sys.argv[1]
counter = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        status = 200
        if role == "api":
            body = json.dumps({"count": next(counter), "hostname": socket.gethostname()})
        else:
            try:
                url = os.environ["COUNTING_SERVICE_URL"]
                with urllib.request.urlopen(url, timeout=5) as reply:
                    body = "dashboard: " + reply.read().decode()
            except Exception as e:  # a test reads the reason in the reply
                status, body = 502, "dashboard: upstream failed: %s" % e
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
