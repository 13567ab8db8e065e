#!/usr/bin/env python3
"""A task's view of the network, for the transparent proxy test.

  tproxy_probe.py serve PORT    answers each TCP connection with "app peer=<peer ip>"
  tproxy_probe.py tcp HOST PORT prints what a TCP connection to HOST:PORT answers
  tproxy_probe.py udp HOST PORT sends one UDP datagram, prints the answer
  tproxy_probe.py http HOST PORT sends GET / (HTTP/1.0), prints the answer's body
"""
import socket, socketserver, sys

mode = sys.argv[1]
if mode == "serve":
    class Peer(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(("app peer=%s\n" % self.client_address[0]).encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[2])), Peer).serve_forever()
host, port = sys.argv[2], int(sys.argv[3])


def answer(request=b""):
    """What a TCP connection to host:port answers (after `request`) until it closes."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk


if mode == "http":
    print(answer(b"GET / HTTP/1.0\r\n\r\n").partition("\r\n\r\n")[2].strip())
elif mode == "tcp":
    print(answer().strip())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"query", (host, port))
    print(s.recv(4096).decode().strip())
