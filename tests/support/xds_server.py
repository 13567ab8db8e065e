#!/usr/bin/env python3
"""The Consul double's xDS server: what a Consul agent's gRPC port serves to Envoy.

Started by tests/support/consul_double/ (`ConsulDouble::serve_xds`) beside the double's HTTP
API, it builds each proxy's configuration from the agent's state as Consul's proxycfg does,
reading it through the double's own HTTP API (the same agent, so the double stays one coherent
Consul): the proxy's registration (`/v1/agent/service/<proxy id>`), the datacenter
(`/v1/agent/self`), the CA's roots and the service's leaf (`/v1/agent/connect/ca/...`), the
upstreams' instances (`/v1/health/connect/<name>`), intentions (`service-intentions` config
entries) and ingress-gateway config entries. It rebuilds when the agent's `X-Consul-Index`
moves (every write bumps it), and at least every 2 s.

The protocol is Consul's (reference/consul-xds.md §1): `DeltaAggregatedResources` only (the
state-of-the-world method fails with UNKNOWN "not implemented"); `node.id` is the proxy's
service ID; the token comes from the `x-consul-token` metadata and is checked at stream start
when ACLs are on; CDS and LDS are wildcard, EDS by name; responses go CDS, EDS, LDS, RDS, at most
one un-ACKed response per type, LDS/RDS held while CDS/EDS are un-ACKed; versions are the SHA-256
of the resource; nonces a per-stream `%08x` counter; after a NACK nothing of that type is resent
until the configuration changes; a resent cluster makes its endpoints resend. An unknown proxy ID
keeps the stream open and sends nothing until it is registered.

Resources follow Consul's shapes (§2-§7): `public_listener:<addr>:<port>` with the network RBAC
filter `connect_authz` from intentions (default allow), then tcp_proxy to `local_app`, TLS
requiring a client certificate from the CA and presenting the service's leaf; one listener per
upstream on `<bind addr>:<port>` to the EDS cluster `<svc>.default.<dc>.internal.<td>` whose
endpoints are the upstream's sidecars, with TLS presenting the leaf, SNI = cluster name and the
peer's SPIFFE ID verified; the transparent proxy's `outbound_listener:127.0.0.1:<port>` with
the original_dst listener filter and a chain per upstream instance (its address and port), and
the `original-destination` default chain; `exposed_path_*` listeners; ingress-gateway tcp
listeners.

Health: the double runs no checks, so every instance is HEALTHY with weight 1 (Consul would
mark an instance with a critical check UNHEALTHY).

Usage: xds_server.py --consul http://127.0.0.1:PORT --port-file FILE [--log FILE]
"""
import argparse
import hashlib
import http.client
import json
import os
import queue
import re
import sys
import threading
import time
import urllib.parse
from concurrent import futures

import grpc
from google.protobuf import any_pb2, json_format

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
# Every message type a resource's `@type` names must be imported to be resolvable.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ORDER = [CDS, EDS, LDS, RDS]
MESSAGES = {
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
}
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
# Consul's oldest supported Envoy for this double (reference/consul-xds.md §1.3).
MIN_ENVOY = (1, 21, 0)
REBUILD_EVERY = 2.0

log_file = sys.stderr


def log(msg):
    print("xds: " + msg, file=log_file, flush=True)


class Agent:
    """The double's HTTP API, a connection per request (the streams ask from many threads)."""

    def __init__(self, base):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port

    def get(self, path, token=""):
        """(status, parsed JSON or text, X-Consul-Index)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            headers = {"X-Consul-Token": token} if token else {}
            conn.request("GET", path, headers=headers)
            reply = conn.getresponse()
            body = reply.read()
            index = reply.getheader("X-Consul-Index") or ""
        finally:
            conn.close()
        try:
            value = json.loads(body)
        except ValueError:
            value = body.decode(errors="replace")
        return reply.status, value, index


class Watch:
    """The agent's `X-Consul-Index`, polled every 100 ms: a stream rebuilds its snapshot when
    it moves."""

    def __init__(self, agent):
        self.agent = agent
        self.index = ""
        threading.Thread(target=self.poll, daemon=True).start()

    def poll(self):
        while True:
            try:
                _, _, self.index = self.agent.get("/v1/agent/services")
            except OSError:
                self.index = "down"
            time.sleep(0.1)


def to_any(type_url, value):
    message = json_format.ParseDict(value, MESSAGES[type_url]())
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def version_of(packed):
    return hashlib.sha256(packed.value).hexdigest()


def socket_address(address, port):
    return {"socketAddress": {"address": address, "portValue": int(port)}}


def tcp_proxy(cluster, stat_prefix):
    return {"name": "envoy.filters.network.tcp_proxy",
            "typedConfig": {"@type": TCP_PROXY, "cluster": cluster, "statPrefix": stat_prefix}}


def tls_certificates(leaf):
    return [{"certificateChain": {"inlineString": leaf["CertPEM"]},
             "privateKey": {"inlineString": leaf["PrivateKeyPEM"]}}]


def roots_pem(roots):
    return "".join(r["RootCert"].rstrip("\n") + "\n" for r in roots["Roots"])


def spiffe(td, dc, service):
    return "spiffe://%s/ns/default/dc/%s/svc/%s" % (td, dc, service)


class Snapshot:
    """Everything Envoy gets for one proxy: type URL -> {name: resource (JSON shape)}."""

    def __init__(self):
        self.resources = {t: {} for t in ORDER}

    def add(self, type_url, name, value):
        self.resources[type_url][name] = value


def rbac_rules(agent, td, destination):
    """Intentions for `destination` as Consul's network RBAC (§4), default allow: a deny-list
    of the deny intentions, one policy `consul-intentions-layer4`."""
    principals = []
    for name in (destination, "*"):
        status, entry, _ = agent.get("/v1/config/service-intentions/" + urllib.parse.quote(name))
        if status != 200:
            continue
        for source in entry.get("Sources") or []:
            if source.get("Action") != "deny":
                continue
            who = "[^/]+" if source.get("Name") == "*" else re.escape(source["Name"])
            regex = "^spiffe://%s/ns/default/dc/[^/]+/svc/%s$" % (re.escape(td), who)
            principals.append(
                {"authenticated": {"principalName": {"safeRegex": {"regex": regex}}}})
    rules = {"action": "DENY"}
    if principals:
        rules["policies"] = {"consul-intentions-layer4": {
            "permissions": [{"any": True}], "principals": principals}}
    return rules


def upstream_cluster(snap, agent, ctx, service, dc):
    """The EDS cluster for `service` and its endpoints (the service's sidecars)."""
    name = "%s.default.%s.internal.%s" % (service, dc, ctx["td"])
    snap.add(CDS, name, {
        "name": name, "altStatName": name, "type": "EDS",
        "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}},
        "connectTimeout": "5s", "circuitBreakers": {}, "outlierDetection": {},
        "commonLbConfig": {"healthyPanicThreshold": {}},
        "transportSocket": {"name": "tls", "typedConfig": {
            "@type": TLS + "UpstreamTlsContext",
            "commonTlsContext": {
                "tlsParams": {}, "tlsCertificates": tls_certificates(ctx["leaf"]),
                "validationContext": {
                    "trustedCa": {"inlineString": ctx["roots"]},
                    "matchTypedSubjectAltNames": [
                        {"sanType": "URI", "matcher": {"exact": spiffe(ctx["td"], dc, service)}}]}},
            "sni": name}}})
    status, instances, _ = agent.get("/v1/health/connect/" + urllib.parse.quote(service))
    endpoints = []
    for entry in instances if status == 200 else []:
        svc = entry["Service"]
        address = svc.get("Address") or entry["Node"]["Address"]
        endpoints.append({"endpoint": {"address": socket_address(address, svc["Port"])},
                          "healthStatus": "HEALTHY", "loadBalancingWeight": 1})
    snap.add(EDS, name, {"clusterName": name,
                         "endpoints": [{"lbEndpoints": endpoints}] if endpoints else [{}]})
    return name, [(e["endpoint"]["address"]["socketAddress"]["address"],
                   e["endpoint"]["address"]["socketAddress"]["portValue"]) for e in endpoints]


def sidecar(snap, agent, ctx, svc):
    proxy = svc.get("Proxy") or {}
    config = proxy.get("Config") or {}
    dest = proxy["DestinationServiceName"]
    td, dc = ctx["td"], ctx["dc"]
    bind = config.get("bind_address") or svc.get("Address") or "0.0.0.0"
    port = int(config.get("bind_port") or svc["Port"])
    local_address = proxy.get("LocalServiceAddress") or "127.0.0.1"
    snap.add(CDS, "local_app", {
        "name": "local_app", "type": "STATIC", "connectTimeout": "5s",
        "loadAssignment": {"clusterName": "local_app", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": socket_address(local_address,
                                                   proxy["LocalServicePort"])}}]}]}})
    public = "public_listener:%s:%d" % (bind, port)
    snap.add(LDS, public, {
        "name": public, "trafficDirection": "INBOUND", "address": socket_address(bind, port),
        "filterChains": [{
            "filters": [
                {"name": "envoy.filters.network.rbac", "typedConfig": {
                    "@type": RBAC, "rules": rbac_rules(agent, td, dest),
                    "statPrefix": "connect_authz"}},
                tcp_proxy("local_app", "public_listener")],
            "transportSocket": {"name": "tls", "typedConfig": {
                "@type": TLS + "DownstreamTlsContext",
                "commonTlsContext": {
                    "tlsParams": {}, "tlsCertificates": tls_certificates(ctx["leaf"]),
                    "validationContext": {"trustedCa": {"inlineString": ctx["roots"]}}},
                "requireClientCertificate": True}}}]})
    outbound_chains = []
    upstreams = list(proxy.get("Upstreams") or [])
    if proxy.get("Mode") == "transparent":
        upstreams += implicit_upstreams(agent, dest, upstreams)
    for up in upstreams:
        if up.get("DestinationType", "service") != "service":
            continue
        up_dc = up.get("Datacenter") or dc
        cluster, instances = upstream_cluster(snap, agent, ctx, up["DestinationName"], up_dc)
        stat = "upstream.%s.default.default.%s" % (up["DestinationName"], up_dc)
        if up.get("LocalBindPort"):
            address = up.get("LocalBindAddress") or "127.0.0.1"
            name = "%s:%s:%d" % (up["DestinationName"], address, up["LocalBindPort"])
            snap.add(LDS, name, {
                "name": name, "trafficDirection": "OUTBOUND",
                "address": socket_address(address, up["LocalBindPort"]),
                "filterChains": [{"filters": [tcp_proxy(cluster, stat)]}]})
        for address, instance_port in instances:
            outbound_chains.append({
                "filterChainMatch": {"destinationPort": instance_port,
                                     "prefixRanges": [{"addressPrefix": address, "prefixLen": 32}]},
                "filters": [tcp_proxy(cluster, stat)]})
    if proxy.get("Mode") == "transparent":
        outbound_port = (proxy.get("TransparentProxy") or {}).get("OutboundListenerPort") or 15001
        name = "outbound_listener:127.0.0.1:%d" % outbound_port
        outbound_chains.sort(key=lambda c: (c["filterChainMatch"]["prefixRanges"][0]["addressPrefix"],
                                            c["filterChainMatch"]["destinationPort"]))
        snap.add(LDS, name, {
            "name": name, "trafficDirection": "OUTBOUND",
            "address": socket_address("127.0.0.1", outbound_port),
            "filterChains": outbound_chains,
            "defaultFilterChain": {"filters": [
                tcp_proxy("original-destination", "upstream.original-destination")]},
            "listenerFilters": [{"name": "envoy.filters.listener.original_dst",
                                 "typedConfig": {"@type": ORIGINAL_DST}}]})
        snap.add(CDS, "original-destination", {
            "name": "original-destination", "type": "ORIGINAL_DST",
            "lbPolicy": "CLUSTER_PROVIDED", "connectTimeout": "5s"})
    for path in (proxy.get("Expose") or {}).get("Paths") or []:
        exposed(snap, proxy, path, bind, local_address)


def implicit_upstreams(agent, me, explicit):
    """A transparent proxy's upstreams beyond the explicit ones (Consul's intention
    upstreams: the services intentions let it reach). The double's intentions default to
    allow, and a deny is enforced by the destination's RBAC, so: every other service with a
    sidecar on the agent."""
    _, services, _ = agent.get("/v1/agent/services")
    named = {u.get("DestinationName") for u in explicit}
    found = []
    for svc in (services or {}).values():
        dest = (svc.get("Proxy") or {}).get("DestinationServiceName")
        if svc.get("Kind") == "connect-proxy" and dest and dest != me and dest not in named:
            named.add(dest)
            found.append({"DestinationName": dest})
    return found


def exposed(snap, proxy, path, bind, local_address):
    """Consul's listener for one `Expose.Paths` entry (§7): plain HTTP, exact path."""
    stripped = re.sub("[^A-Za-z0-9]", "", path["Path"])
    listener_port = int(path["ListenerPort"])
    name = "exposed_path_%s:%s:%d" % (stripped, bind, listener_port)
    local_port = int(path["LocalPathPort"])
    cluster = "local_app"
    if local_port != int(proxy.get("LocalServicePort") or 0):
        cluster = "exposed_cluster_%d" % local_port
        snap.add(CDS, cluster, {
            "name": cluster, "type": "STATIC", "connectTimeout": "5s",
            "loadAssignment": {"clusterName": cluster, "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": socket_address(local_address, local_port)}}]}]}})
    route = "exposed_path_filter_%s_%d" % (stripped, listener_port)
    hcm = {"@type": HCM, "statPrefix": route, "routeConfig": {
        "name": route, "virtualHosts": [{"name": route, "domains": ["*"], "routes": [
            {"match": {"path": path["Path"]}, "route": {"cluster": cluster}}]}]},
        "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {"@type": ROUTER}}],
        "tracing": {"randomSampling": {}}}
    if path.get("Protocol") in ("http2", "grpc"):
        hcm["http2ProtocolOptions"] = {}
    snap.add(LDS, name, {
        "name": name, "trafficDirection": "INBOUND",
        "address": socket_address(bind, listener_port),
        "filterChains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typedConfig": hcm}]}]})


def ingress_gateway(snap, agent, ctx, svc):
    """tcp listeners of the service's ingress-gateway config entry (§6); http listeners
    are not served by this double."""
    status, entry, _ = agent.get("/v1/config/ingress-gateway/" +
                                 urllib.parse.quote(svc["Service"]))
    if status != 200:
        return
    binds = ((svc.get("Proxy") or {}).get("Config") or {}).get("envoy_gateway_bind_addresses") or {}
    for listener in entry.get("Listeners") or []:
        if listener.get("Protocol", "tcp") != "tcp":
            continue
        port = int(listener["Port"])
        address = svc.get("Address") or "0.0.0.0"
        for bind in binds.values():
            if int(bind.get("Port") or 0) == port:
                address = bind.get("Address") or address
        for service in listener.get("Services") or []:
            cluster, _ = upstream_cluster(snap, agent, ctx, service["Name"], ctx["dc"])
            name = "%s:%s:%d" % (service["Name"], address, port)
            snap.add(LDS, name, {
                "name": name, "trafficDirection": "OUTBOUND",
                "address": socket_address(address, port),
                "filterChains": [{"filters": [tcp_proxy(
                    cluster, "upstream.%s.default.default.%s" % (service["Name"], ctx["dc"]))]}]})


def build(agent, proxy_id, token):
    """The snapshot for `proxy_id`, or None while it is not registered."""
    status, svc, _ = agent.get("/v1/agent/service/" + urllib.parse.quote(proxy_id), token)
    if status != 200:
        return None
    kind = svc.get("Kind") or ""
    _, me, _ = agent.get("/v1/agent/self")
    _, roots, _ = agent.get("/v1/agent/connect/ca/roots")
    identity = (svc.get("Proxy") or {}).get("DestinationServiceName") or svc["Service"]
    status, leaf, _ = agent.get("/v1/agent/connect/ca/leaf/" + urllib.parse.quote(identity), token)
    if status != 200:
        log("%s: leaf for %s: %s %s" % (proxy_id, identity, status, leaf))
        return None
    ctx = {"td": roots["TrustDomain"], "dc": me["Config"]["Datacenter"],
           "roots": roots_pem(roots), "leaf": leaf}
    snap = Snapshot()
    if kind == "connect-proxy":
        sidecar(snap, agent, ctx, svc)
    elif kind == "ingress-gateway":
        ingress_gateway(snap, agent, ctx, svc)
    # Terminating and mesh gateways get empty CDS and LDS (Consul may send those empty).
    return snap


class TypeState:
    def __init__(self):
        self.subscribed = False
        self.wildcard = False
        self.names = set()
        self.known = {}          # name -> version Envoy holds
        self.pending = None      # (nonce, {name: version or None for a removal})
        self.nacked = None       # the resources' versions that Envoy refused
        self.sent_once = False


class Stream:
    def __init__(self, server, context):
        self.server = server
        self.context = context
        self.types = {t: TypeState() for t in ORDER}
        self.nonce = 0
        self.requests = queue.Queue()
        self.node = None
        self.token = ""

    def read(self, request_iterator):
        try:
            for request in request_iterator:
                self.requests.put(request)
        except grpc.RpcError:
            pass
        self.requests.put(None)

    def handle(self, request):
        """Takes one request in; False ends the stream."""
        if not request.type_url:
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "type URL is required for ADS")
        if self.node is None:
            if not request.HasField("node"):
                self.context.abort(grpc.StatusCode.UNKNOWN, "cannot continue without a node")
            self.node = request.node
            self.check_envoy_version()
        state = self.types.get(request.type_url)
        if state is None:
            return  # a type Consul does not serve: no reply
        if request.response_nonce and state.pending and state.pending[0] == request.response_nonce:
            _, sent = state.pending
            state.pending = None
            if request.HasField("error_detail"):
                log("%s: NACK %s: %s" % (self.node.id, request.type_url.rsplit(".", 1)[-1],
                                         request.error_detail.message))
                state.nacked = sent
            else:
                for name, version in sent.items():
                    if version is None:
                        state.known.pop(name, None)
                    else:
                        state.known[name] = version
        if not state.subscribed:
            state.subscribed = True
            state.wildcard = not request.resource_names_subscribe
            for name, version in request.initial_resource_versions.items():
                state.known[name] = version
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.names.add(name)
                state.known.pop(name, None)  # a named subscribe always resends
        for name in request.resource_names_unsubscribe:
            state.names.discard(name)
            state.known.pop(name, None)

    def check_envoy_version(self):
        if self.node.user_agent_name != "envoy" or not self.node.HasField("user_agent_build_version"):
            return
        v = self.node.user_agent_build_version.version
        version = (v.major_number, v.minor_number, v.patch)
        if version < MIN_ENVOY:
            self.context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                               "Envoy %d.%d.%d is too old and is not supported by Consul" % version)

    def responses(self, packed):
        """The responses to send now, in Consul's order and gating; `packed`: type URL ->
        {name: Any} of the current snapshot."""
        out = []
        if packed is None:
            return out
        for type_url in ORDER:
            state = self.types[type_url]
            if not state.subscribed or state.pending:
                continue
            if type_url in (LDS, RDS) and (self.types[CDS].pending or self.types[EDS].pending):
                continue
            wanted = {n: a for n, a in packed[type_url].items()
                      if state.wildcard or n in state.names}
            upserts = {n: a for n, a in wanted.items() if state.known.get(n) != version_of(a)}
            removals = [n for n in state.known if n not in wanted]
            changes = {n: version_of(a) for n, a in upserts.items()}
            changes.update({n: None for n in removals})
            if state.nacked is not None and state.nacked == changes:
                continue  # the same config again would be refused again
            if not changes and state.sent_once:
                continue
            if not changes and not state.wildcard:
                continue
            state.nacked = None
            self.nonce += 1
            nonce = "%08x" % self.nonce
            response = discovery_pb2.DeltaDiscoveryResponse(
                type_url=type_url, nonce=nonce, removed_resources=removals)
            for name, resource in sorted(upserts.items()):
                response.resources.add(name=name, version=version_of(resource), resource=resource)
            state.pending = (nonce, changes)
            state.sent_once = True
            if type_url == CDS:
                for name in upserts:  # Envoy drops a cluster's endpoints when it changes
                    self.types[EDS].known.pop(name, None)
            out.append(response)
        return out

    def run(self, request_iterator):
        metadata = dict(self.context.invocation_metadata())
        self.token = metadata.get("x-consul-token", "")
        threading.Thread(target=self.read, args=(request_iterator,), daemon=True).start()
        first = self.requests.get()
        if first is None:
            return
        self.handle(first)
        self.server.authenticate(self.context, self.token)
        log("stream for %s opened" % self.node.id)
        index, packed, built_at = None, None, 0.0
        while True:
            try:
                request = self.requests.get(timeout=0.05)
            except queue.Empty:
                request = False
            if request is None:
                log("stream for %s closed" % self.node.id)
                return
            if request:
                self.handle(request)
            watch = self.server.watch
            if watch.index != index or time.monotonic() - built_at > REBUILD_EVERY:
                index = watch.index
                built_at = time.monotonic()
                try:
                    snapshot = build(self.server.agent, self.node.id, self.token)
                    packed = snapshot and {t: {n: to_any(t, v) for n, v in r.items()}
                                           for t, r in snapshot.resources.items()}
                except (OSError, KeyError, ValueError, TypeError, json_format.ParseError) as e:
                    log("%s: building the snapshot failed: %r" % (self.node.id, e))
                    packed = None
            for response in self.responses(packed):
                yield response


class Server(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, agent):
        self.agent = agent
        self.watch = Watch(agent)

    def authenticate(self, context, token):
        _, me, _ = self.agent.get("/v1/agent/self")
        if not me.get("DebugConfig", {}).get("ACLsEnabled"):
            return
        status, _, _ = self.agent.get("/v1/acl/token/self", token)
        if status != 200:
            log("refused a stream: unauthenticated: ACL not found")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated: ACL not found")

    def StreamAggregatedResources(self, request_iterator, context):
        context.abort(grpc.StatusCode.UNKNOWN, "not implemented")

    def DeltaAggregatedResources(self, request_iterator, context):
        yield from Stream(self, context).run(request_iterator)


def main():
    global log_file
    parser = argparse.ArgumentParser()
    parser.add_argument("--consul", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log")
    args = parser.parse_args()
    if args.log:
        log_file = open(args.log, "a")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Server(Agent(args.consul)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(args.port_file + ".tmp", args.port_file)
    log("serving on 127.0.0.1:%d" % port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
