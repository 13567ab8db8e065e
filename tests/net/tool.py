#!/usr/bin/env python3
"""Helpers for the network tests (run inside throwaway namespaces only).

serve tcp|udp PORT NAME [ADDR]  answer every connection/datagram with "NAME <peer ip>"
                          (on ADDR, default every address of both families)
ask tcp|udp HOST PORT     print the answer (exit 1 on timeout or refusal); HOST may be IPv6
load tcp HOST PORT STOP   connect and read again and again until the file STOP exists;
                          print "ok=N failed=M"
dump                      a normalised view of links, addresses, routes and nf_tables,
                          free of ifindexes and random MACs, to compare states
"""
import json, os, socket, subprocess, sys


def peer_ip(peer):
    """An IPv4 peer of a dual-stack socket comes as ::ffff:a.b.c.d; print it as IPv4."""
    ip = peer[0]
    return ip[7:] if ip.startswith("::ffff:") else ip


def serve(proto, port, name, addr="::"):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, int(port)))
    if proto == "tcp":
        s.listen(16)
    print("ready", flush=True)
    while True:
        if proto == "tcp":
            conn, peer = s.accept()
            conn.sendall(f"{name} {peer_ip(peer)}\n".encode())
            conn.close()
        else:
            _, peer = s.recvfrom(512)
            s.sendto(f"{name} {peer_ip(peer)}\n".encode(), peer)


def ask(proto, host, port):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    s.settimeout(3)
    try:
        if proto == "tcp":
            s.connect((host, int(port)))
            data = s.recv(512)
        else:
            s.sendto(b"hi", (host, int(port)))
            data, _ = s.recvfrom(512)
    except OSError as e:
        print(f"ask {proto} {host}:{port}: {e}", file=sys.stderr)
        sys.exit(1)
    print(data.decode().strip())


def load(proto, host, port, stop_file):
    import time
    ok = failed = 0
    while not os.path.exists(stop_file):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.settimeout(2)
            data = s.recv(512)
            s.close()
            if data:
                ok += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        time.sleep(0.01)
    print(f"ok={ok} failed={failed}", flush=True)


def run_json(*args):
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def links(prefix=()):
    items = run_json(*prefix, "ip", "-j", "-d", "link")
    names = {l["ifindex"]: l["ifname"] for l in items}
    view = []
    for l in items:
        info = l.get("linkinfo", {})
        view.append({
            "name": l["ifname"],
            "kind": info.get("info_kind"),
            "master": l.get("master"),
            "up": "UP" in l.get("flags", []),
            "bridge_mac": l.get("address") if info.get("info_kind") == "bridge" else None,
        })
    return sorted(view, key=lambda v: v["name"])


def addrs(prefix=()):
    view = []
    for l in run_json(*prefix, "ip", "-j", "addr"):
        for a in l.get("addr_info", []):
            # Link-local IPv6 addresses are the kernel's, not outpost's.
            if a.get("family") == "inet" or a.get("scope") == "global":
                view.append(f'{l["ifname"]} {a["local"]}/{a["prefixlen"]}')
    return sorted(view)


def routes(prefix=()):
    v4 = run_json(*prefix, "ip", "-j", "route")
    v6 = [r for r in run_json(*prefix, "ip", "-j", "-6", "route") if r.get("dst") != "fe80::/64"]
    return sorted(
        f'{r.get("dst")} via {r.get("gateway")} dev {r.get("dev")}' for r in v4 + v6
    )


def dump():
    netns = sorted(n["name"] for n in run_json("ip", "-j", "netns"))
    view = {"links": links(), "addrs": addrs(), "routes": routes(), "netns": netns}
    for ns in netns:
        if ns.startswith("outpost-"):
            p = ("ip", "netns", "exec", ns)
            view[ns] = {"links": links(p), "addrs": addrs(p), "routes": routes(p)}
    view["nft"] = subprocess.run(["nft", "list", "ruleset"], check=True, capture_output=True, text=True).stdout
    print(json.dumps(view, indent=1, sort_keys=True))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"serve": serve, "ask": ask, "load": load, "dump": dump}[cmd](*args)
