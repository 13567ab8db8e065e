//! A Consul agent double for tests: the HTTP endpoints outpost uses, with the payload
//! shapes, status codes and plain-text error bodies of reference/consul-api.md (§3, §4, §7).
//!
//! It checks what it receives strictly: a body must be a JSON object of known keys with the
//! right types, `Name` is required, `Kind` must be a known kind. A sidecar is expanded the
//! way the agent does it (§3.1). Deliberately stricter than Consul: unknown keys are
//! rejected, so a typo in outpost's bodies cannot pass unnoticed.
//!
//! Faults: ACL replication lag for new tokens (403 `ACL not found` until visible; a
//! non-stale read of a token that is not yet visible caches the negative answer for 30 s, as
//! real agents do), 5xx bursts, latency, and a restart that forgets every registration.
//! Every request is logged for assertions; token values are never recorded.

#![allow(dead_code)]

use miniserde::json::{self, Array, Number, Object, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod acl;
mod ca;
mod checks;
mod config_entries;
mod connect;
mod registration;
use acl::*;
use ca::*;
use checks::*;
use config_entries::*;
use connect::*;
use registration::*;

const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(30);

/// One logged request. `token` is `Some("<redacted>")`-style: whether one was sent, never
/// its value.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub sent_token: bool,
    pub status: u16,
    /// Set when this request put a token into the negative cache.
    pub negative_cached: bool,
}

struct Token {
    visible_at: Instant,
}

/// An auth method the double accepts logins for: its name and the one JWT it trusts.
#[derive(Clone)]
struct AuthMethod {
    name: String,
    jwt: String,
}

#[derive(Default)]
struct State {
    auth_method: Option<AuthMethod>,
    /// Lag applied to tokens the double mints (login, token create).
    minted_lag: Duration,
    /// accessor -> secret of tokens minted here, and whether login made them.
    minted: BTreeMap<String, (String, bool)>,
    next_accessor: u64,
    services: BTreeMap<String, Object>,
    checks: BTreeMap<String, Object>,
    acl_enabled: bool,
    tokens: BTreeMap<String, Token>,
    negative_cache: BTreeMap<String, Instant>,
    fail_next: usize,
    latency: Duration,
    log: Vec<Logged>,
    restarts: usize,
    agent_self: AgentSelf,
    /// Config entries by (kind, name); they live on the servers, so an agent restart keeps
    /// them.
    config_entries: BTreeMap<(String, String), Object>,
    config_index: u64,
    /// The agent's `X-Consul-Index`: moved by every successful write and by a restart, so
    /// a watcher (the xDS server) knows when to look again.
    index: u64,
    /// The Connect CA, made on first use (`/v1/agent/connect/ca/...`).
    ca: Option<Ca>,
    /// Down: every connection is closed without an answer, held blocking queries too (an
    /// agent that died or restarts).
    down: bool,
}

/// What `/v1/agent/self` reports about addresses and gRPC.
#[derive(Clone)]
pub struct AgentSelf {
    /// `Config.BindAddr`; an IPv6 address makes `consul connect envoy` use `::1` defaults.
    pub bind_addr: String,
    /// `xDS.Ports` (Plaintext, TLS); `None` leaves the xDS section out (gRPC disabled).
    pub xds_ports: Option<(i64, i64)>,
    /// `DebugConfig.GRPCPort`.
    pub debug_grpc_port: i64,
}

impl Default for AgentSelf {
    fn default() -> Self {
        AgentSelf {
            bind_addr: "127.0.0.1".into(),
            xds_ports: Some((8502, -1)),
            debug_grpc_port: 8502,
        }
    }
}

/// The double's xDS server process; stopped when dropped.
pub struct XdsServer {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
pub struct ConsulDouble {
    state: Arc<Mutex<State>>,
    pub address: String,
    tls: bool,
}

impl ConsulDouble {
    /// Starts a double on 127.0.0.1 with a random port. ACLs off.
    pub fn start() -> ConsulDouble {
        Self::start_with(None)
    }

    /// Serves HTTPS with `tls` (Consul's `verify_incoming`: a client certificate is
    /// required when the config says so).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> ConsulDouble {
        Self::start_with(Some(tls))
    }

    /// Serves plain HTTP on a unix socket at `path` (Consul's `addresses.http = "unix://…"`).
    pub fn start_unix(path: &std::path::Path) -> ConsulDouble {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the unix socket");
        let double = ConsulDouble {
            state: Arc::new(Mutex::new(State::default())),
            address: format!("unix://{}", path.display()),
            tls: false,
        };
        let served = double.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let d = served.clone();
                std::thread::spawn(move || d.serve(stream));
            }
        });
        double
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> ConsulDouble {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the double");
        let address = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let double = ConsulDouble {
            state: Arc::new(Mutex::new(State::default())),
            address,
            tls: tls.is_some(),
        };
        let served = double.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Go's net package sets TCP_NODELAY on every connection; so does Consul.
                let _ = stream.set_nodelay(true);
                let d = served.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => d.serve(stream),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        d.serve(rustls::StreamOwned::new(conn, stream))
                    }
                });
            }
        });
        double
    }

    /// Serves xDS on the agent's gRPC port as Consul does (tests/support/xds_server.py, run
    /// by `python`, which has grpcio and xds-protos), and reports that port in
    /// `/v1/agent/self` (`xDS.Ports.Plaintext`, `DebugConfig.GRPCPort`). The server's log
    /// goes to `log`.
    pub fn serve_xds(&self, python: &std::path::Path, log: &std::path::Path) -> XdsServer {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/xds_server.py");
        let port_file = log.with_extension("port");
        let _ = std::fs::remove_file(&port_file);
        let child = std::process::Command::new(python)
            .arg(script)
            .args(["--consul", &self.url(), "--port-file"])
            .arg(&port_file)
            .arg("--log")
            .arg(log)
            .spawn()
            .expect("start the xDS server");
        let mut server = XdsServer { child, port: 0 };
        let start = Instant::now();
        while server.port == 0 {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                server.port = port;
            } else if start.elapsed() > Duration::from_secs(30)
                || server.child.try_wait().ok().flatten().is_some()
            {
                panic!(
                    "the xDS server did not start:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut s = self.lock();
        s.agent_self.xds_ports = Some((i64::from(server.port), -1));
        s.agent_self.debug_grpc_port = i64::from(server.port);
        drop(s);
        server
    }

    pub fn url(&self) -> String {
        if self.address.starts_with("unix://") {
            return self.address.clone();
        }
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enable_acls(&self) {
        self.lock().acl_enabled = true;
    }

    /// A token that servers know; the local agent sees it only after `lag`.
    pub fn add_token(&self, secret: &str, lag: Duration) {
        self.lock().tokens.insert(
            secret.to_string(),
            Token {
                visible_at: Instant::now() + lag,
            },
        );
    }

    /// An auth method for `POST /v1/acl/login`, trusting exactly `jwt`.
    pub fn add_auth_method(&self, name: &str, jwt: &str) {
        self.lock().auth_method = Some(AuthMethod {
            name: name.into(),
            jwt: jwt.into(),
        });
    }

    /// Replication lag for tokens minted by login or token create.
    pub fn set_minted_lag(&self, lag: Duration) {
        self.lock().minted_lag = lag;
    }

    /// Secrets of tokens minted here and still alive.
    pub fn live_minted(&self) -> usize {
        self.lock().minted.len()
    }

    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// An agent restart: registrations, checks and the negative cache are gone.
    pub fn set_agent_self(&self, agent_self: AgentSelf) {
        self.lock().agent_self = agent_self;
    }

    /// Writes `proxy-defaults/global` (as `PUT /v1/config` would).
    pub fn set_proxy_defaults(&self, entry: Object) {
        let key = ("proxy-defaults".to_string(), "global".to_string());
        self.lock().config_entries.insert(key, entry);
    }

    /// Writes a config entry as `PUT /v1/config` would (validated the same way).
    pub fn put_config_entry(&self, entry: &str) -> (u16, String) {
        let mut s = self.lock();
        let (status, body, _) = put_config(&mut s, entry);
        // As a write through the API moves the agent's index.
        s.index += u64::from(status == 200);
        (status, body)
    }

    /// Deletes a config entry as `DELETE /v1/config/<kind>/<name>` would; whether it was
    /// there.
    pub fn delete_config_entry(&self, kind: &str, name: &str) -> bool {
        let mut s = self.lock();
        let removed = s
            .config_entries
            .remove(&(kind.to_string(), name.to_string()))
            .is_some();
        s.config_index += 1;
        s.index += 1;
        removed
    }

    pub fn config_entry(&self, kind: &str, name: &str) -> Option<Object> {
        let key = (kind.to_string(), name.to_string());
        self.lock().config_entries.get(&key).cloned()
    }

    /// (kind, name) of every config entry.
    pub fn config_entry_names(&self) -> Vec<(String, String)> {
        self.lock().config_entries.keys().cloned().collect()
    }

    pub fn restart(&self) {
        let mut s = self.lock();
        s.services.clear();
        s.checks.clear();
        s.negative_cache.clear();
        s.restarts += 1;
        s.index += 1;
    }

    /// Issues `service` a new leaf, as the agent does before the old one expires; the
    /// leaf's watchers are answered at once. Its serial.
    pub fn rotate_leaf(&self, service: &str) -> String {
        let mut s = self.lock();
        s.ca.get_or_insert_with(Ca::new).rotate(service).0.serial
    }

    /// Rotates the CA's root: a new active root is listed beside the old one, and leaves
    /// rotated from now on are signed by it. Watchers of the roots are answered at once.
    pub fn rotate_ca_root(&self) {
        self.lock().ca.get_or_insert_with(Ca::new).rotate_root();
    }

    /// Takes the agent down (connections closed unanswered) or brings it back, keeping
    /// its state.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Gives `service` a new leaf whose SPIFFE ID names `identity` instead (a fault).
    pub fn rotate_leaf_as(&self, service: &str, identity: &str) -> String {
        let mut s = self.lock();
        s.ca.get_or_insert_with(Ca::new)
            .rotate_as(service, identity)
            .0
            .serial
    }

    /// The serial of the leaf the agent now gives `service`.
    pub fn leaf_serial(&self, service: &str) -> String {
        let mut s = self.lock();
        s.ca.get_or_insert_with(Ca::new).leaf(service).0.serial
    }

    /// A leaf for `service` from this CA that is not the agent's: `expired` one, or a
    /// current one (for a test peer). Certificate and key PEM.
    pub fn issue_leaf(&self, service: &str, expired: bool) -> (String, String) {
        let mut s = self.lock();
        let validity = expired.then_some(Validity {
            from: Duration::from_secs(48 * 3600),
            until: Duration::from_secs(3600),
            expired: true,
        });
        let leaf = s.ca.get_or_insert_with(Ca::new).issue(service, validity);
        (leaf.cert, leaf.key)
    }

    /// The CA's root certificate (PEM) and trust domain.
    pub fn ca_root(&self) -> (String, String) {
        let mut s = self.lock();
        let ca = s.ca.get_or_insert_with(Ca::new);
        (ca.root_pem(), ca.trust_domain())
    }

    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    pub fn service_ids(&self) -> Vec<String> {
        self.lock().services.keys().cloned().collect()
    }

    pub fn service(&self, id: &str) -> Option<Object> {
        self.lock().services.get(id).cloned()
    }

    fn serve(&self, stream: impl Read + Write) {
        let mut reader = BufReader::new(stream);
        loop {
            let Some(request) = read_request(&mut reader) else {
                return;
            };
            let latency = self.lock().latency;
            if !latency.is_zero() {
                std::thread::sleep(latency);
            }
            if !self.block(&request) || self.lock().down {
                return;
            }
            let (status, body, extra) = self.handle(&request);
            let index = {
                let mut s = self.lock();
                if status == 200 && request.method != "GET" {
                    s.index += 1;
                }
                index_of(&s, &request.path)
            };
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Internal Server Error",
            };
            let content_type = if status == 200 {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            let mut head = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Consul-Index: {index}\r\nX-Consul-KnownLeader: true\r\nX-Consul-LastContact: 0\r\n",
                body.len()
            );
            for (k, v) in extra {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            head.push_str(&body);
            let writer = reader.get_mut();
            if writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.flush())
                .is_err()
            {
                return;
            }
            if request.close {
                return;
            }
        }
    }

    /// A blocking query (`?index=N` or `?hash=H`, with `wait`): held until what it reads
    /// changes or the wait is over, as the agent does (reference/consul-api.md §4.2).
    /// False when the double went down meanwhile.
    fn block(&self, r: &Request) -> bool {
        if r.method != "GET" {
            return true;
        }
        let seen_index = r.query_value("index");
        let seen_hash = r.query_value("hash");
        if seen_index.is_none() && seen_hash.is_none() {
            return true;
        }
        let wait = r
            .query_value("wait")
            .and_then(|w| w.trim_end_matches('s').parse::<u64>().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let unchanged = {
                let s = self.lock();
                if s.down {
                    return false;
                }
                match (&seen_index, &seen_hash) {
                    (Some(seen), _) => index_of(&s, &r.path).to_string() == *seen,
                    (None, Some(seen)) => {
                        let id = r.path.strip_prefix("/v1/agent/service/").unwrap_or("");
                        s.services.get(id).is_some_and(|svc| {
                            content_hash(&json::to_string(&Value::Object(svc.clone()))) == *seen
                        })
                    }
                    _ => false,
                }
            };
            if !unchanged {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn handle(&self, r: &Request) -> (u16, String, Vec<(String, String)>) {
        let mut negative_cached = false;
        let (status, body, extra) = {
            let mut s = self.lock();
            if s.fail_next > 0 {
                s.fail_next -= 1;
                (
                    500,
                    "rpc error making call: No cluster leader".to_string(),
                    Vec::new(),
                )
            } else {
                route(&mut s, r, &mut negative_cached)
            }
        };
        self.lock().log.push(Logged {
            method: r.method.clone(),
            path: r.path.clone(),
            query: r.query.clone(),
            sent_token: r.token.is_some(),
            status,
            negative_cached,
        });
        (status, body, extra)
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    token: Option<String>,
    body: String,
    /// HTTP/1.0 without keep-alive, or `Connection: close`: Go's server closes after the
    /// answer.
    close: bool,
}

impl Request {
    fn has_query(&self, key: &str) -> bool {
        self.query
            .split('&')
            .any(|kv| kv == key || kv.starts_with(&format!("{key}=")))
    }

    /// A query parameter's value, percent-decoded.
    fn query_value(&self, key: &str) -> Option<String> {
        let raw = self
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))?;
        let bytes = raw.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).ok()
    }
}

fn read_request(reader: &mut BufReader<impl Read>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut close = parts.next() == Some("HTTP/1.0");
    let mut content_length = 0;
    let mut token = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse().ok()?,
            "x-consul-token" => token = Some(value.trim().to_string()),
            "connection" => close = value.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        token,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}

type Reply = (u16, String, Vec<(String, String)>);

/// The `X-Consul-Index` of what `path` reads: intentions move with config entries, a
/// leaf with its own issue, the roots never (one CA); the rest with every write.
fn index_of(s: &State, path: &str) -> u64 {
    if path == "/v1/connect/intentions/match" {
        return s.config_index + 1;
    }
    if path == "/v1/agent/connect/ca/roots" {
        return s.ca.as_ref().map_or(1, Ca::roots_index);
    }
    if let Some(service) = path.strip_prefix("/v1/agent/connect/ca/leaf/") {
        return s.ca.as_ref().map_or(0, |ca| ca.leaf_index(service)).max(1);
    }
    s.index
}

/// The agent's content hash of an answer (FNV-1a here; the agent's is its own).
fn content_hash(body: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn text(status: u16, body: &str) -> Reply {
    (status, body.to_string(), Vec::new())
}

fn ok_json(value: Value) -> Reply {
    (200, json::to_string(&value), Vec::new())
}

fn method_not_allowed(method: &str, allow: &str) -> Reply {
    (
        405,
        format!("method {method} not allowed"),
        vec![("Allow".into(), allow.into())],
    )
}

fn route(s: &mut State, r: &Request, negative_cached: &mut bool) -> Reply {
    let path = r.path.as_str();
    let expect = |m: &str| r.method == m;
    if path == "/v1/agent/self" {
        return if expect("GET") {
            ok_json(agent_self(&s.agent_self, s.acl_enabled))
        } else {
            method_not_allowed(&r.method, "GET")
        };
    }
    if path == "/v1/agent/service/register" {
        if !expect("PUT") {
            return method_not_allowed(&r.method, "PUT");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return register(s, &r.body);
    }
    if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
        if !expect("PUT") {
            return method_not_allowed(&r.method, "PUT");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return deregister(s, id);
    }
    if path == "/v1/agent/services" {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        return match filtered_services(s, r) {
            Ok(list) => ok_json(Value::Object(
                list.into_iter()
                    .map(|svc| {
                        let id = match svc.get("ID") {
                            Some(Value::String(id)) => id.clone(),
                            _ => String::new(),
                        };
                        (id, Value::Object(svc))
                    })
                    .collect(),
            )),
            Err(reply) => reply,
        };
    }
    if let Some(node) = path.strip_prefix("/v1/catalog/node-services/") {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        if node != "edge-01" {
            return ok_json(
                json::from_str(r#"{"Node":null,"Services":[]}"#).unwrap_or(Value::Null),
            );
        }
        return match filtered_services(s, r) {
            Ok(list) => {
                let mut answer = Object::new();
                let mut n = Object::new();
                n.insert("Node".into(), Value::String("edge-01".into()));
                n.insert("Datacenter".into(), Value::String("dc1".into()));
                answer.insert("Node".into(), Value::Object(n));
                // Catalog entries carry no Datacenter of their own; the node has it.
                let services = list
                    .into_iter()
                    .map(|mut svc| {
                        svc.remove("Datacenter");
                        Value::Object(svc)
                    })
                    .collect();
                answer.insert("Services".into(), Value::Array(services));
                ok_json(Value::Object(answer))
            }
            Err(reply) => reply,
        };
    }
    if path == "/v1/config" {
        if !expect("PUT") {
            return method_not_allowed(&r.method, "PUT");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return put_config(s, &r.body);
    }
    if let Some(rest) = path.strip_prefix("/v1/config/") {
        let (kind, name) = match rest.split_once('/') {
            Some((kind, name)) => (kind, Some(name)),
            None => (rest, None),
        };
        if !CONFIG_KINDS.contains(&kind) {
            return text(400, &format!("invalid config entry kind: {kind}"));
        }
        return match (r.method.as_str(), name) {
            ("GET", None) => {
                let list: Array = s
                    .config_entries
                    .iter()
                    .filter(|((k, _), _)| k == kind)
                    .map(|(_, e)| Value::Object(e.clone()))
                    .collect();
                ok_json(Value::Array(list))
            }
            ("GET", Some(name)) => {
                match s.config_entries.get(&(kind.to_string(), name.to_string())) {
                    Some(entry) => ok_json(Value::Object(entry.clone())),
                    None => text(
                        404,
                        &format!("Config entry not found for \"{kind}\" / \"{name}\""),
                    ),
                }
            }
            ("DELETE", Some(name)) => {
                if let Err(reply) = authorize_write(s, r) {
                    return reply;
                }
                s.config_entries
                    .remove(&(kind.to_string(), name.to_string()));
                s.config_index += 1;
                (200, "true".into(), Vec::new())
            }
            (_, None) => method_not_allowed(&r.method, "GET"),
            (_, Some(_)) => method_not_allowed(&r.method, "GET, DELETE"),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/agent/check/update/") {
        if !expect("PUT") {
            return method_not_allowed(&r.method, "PUT");
        }
        return update_ttl_check(s, id, &r.body);
    }
    if path == "/v1/agent/checks" {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        return ok_json(Value::Object(
            s.checks
                .iter()
                .map(|(k, v)| (k.clone(), Value::Object(v.clone())))
                .collect(),
        ));
    }
    if let Some(name) = path.strip_prefix("/v1/health/connect/") {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        return ok_json(Value::Array(connect_instances(s, name)));
    }
    if path == "/v1/agent/connect/authorize" {
        if !expect("POST") {
            return method_not_allowed(&r.method, "POST");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return authorize(s, &r.body);
    }
    if path == "/v1/connect/intentions/match" {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return intentions_match(s, r);
    }
    if path == "/v1/agent/connect/ca/roots" {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        return ca_roots(s.ca.get_or_insert_with(Ca::new));
    }
    if let Some(service) = path.strip_prefix("/v1/agent/connect/ca/leaf/") {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return ca_leaf(s.ca.get_or_insert_with(Ca::new), service);
    }
    if let Some(id) = path.strip_prefix("/v1/agent/service/") {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        return match s.services.get(id) {
            Some(svc) => {
                let (status, body, mut extra) = ok_json(Value::Object(svc.clone()));
                extra.push(("X-Consul-ContentHash".into(), content_hash(&body)));
                (status, body, extra)
            }
            None => text(404, &format!("unknown service ID: {id}")),
        };
    }
    if path == "/v1/acl/login" {
        if !expect("POST") {
            return method_not_allowed(&r.method, "POST");
        }
        return login(s, &r.body);
    }
    if path == "/v1/acl/logout" {
        if !expect("POST") {
            return method_not_allowed(&r.method, "POST");
        }
        return logout(s, r);
    }
    if path == "/v1/acl/token" {
        if !expect("PUT") {
            return method_not_allowed(&r.method, "PUT");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return create_token(s, &r.body);
    }
    if let Some(accessor) = path.strip_prefix("/v1/acl/token/")
        && accessor != "self"
    {
        if !expect("DELETE") {
            return method_not_allowed(&r.method, "DELETE");
        }
        if let Err(reply) = authorize_write(s, r) {
            return reply;
        }
        return match s.minted.remove(accessor) {
            Some((secret, _)) => {
                s.tokens.remove(&secret);
                (200, "true".into(), Vec::new())
            }
            None => text(404, "Cannot find token to delete"),
        };
    }
    if path == "/v1/acl/token/self" {
        if !expect("GET") {
            return method_not_allowed(&r.method, "GET");
        }
        return token_self(s, r, negative_cached);
    }
    text(404, "Invalid URL path: not a recognized HTTP API endpoint")
}

/// `/v1/health/connect/<name>`: the sidecar proxies of `name` (and its Connect-native
/// instances) as `{Node, Service, Checks}` entries. Every check is reported as it stands;
/// `?passing` is not applied, since the double runs no checks.
fn connect_instances(s: &State, name: &str) -> Array {
    let mut node = Object::new();
    node.insert("Node".into(), Value::String("edge-01".into()));
    node.insert("Address".into(), Value::String("127.0.0.1".into()));
    node.insert("Datacenter".into(), Value::String("dc1".into()));
    s.services
        .values()
        .filter(|svc| {
            let proxied = get_obj(svc, "Proxy")
                .ok()
                .flatten()
                .and_then(|p| get_str(p, "DestinationServiceName").ok().flatten());
            let native = matches!(
                get_obj(svc, "Connect")
                    .ok()
                    .flatten()
                    .and_then(|c| c.get("Native")),
                Some(Value::Bool(true))
            );
            let kind = get_str(svc, "Kind").ok().flatten().unwrap_or("");
            (kind == "connect-proxy" && proxied == Some(name))
                || (native && get_str(svc, "Service").ok().flatten() == Some(name))
        })
        .map(|svc| {
            let id = get_str(svc, "ID").ok().flatten().unwrap_or("");
            let checks: Array = s
                .checks
                .values()
                .filter(|c| matches!(c.get("ServiceID"), Some(Value::String(sid)) if sid == id))
                .map(|c| Value::Object(c.clone()))
                .collect();
            let mut entry = Object::new();
            entry.insert("Node".into(), Value::Object(node.clone()));
            entry.insert("Service".into(), Value::Object(svc.clone()));
            entry.insert("Checks".into(), Value::Array(checks));
            Value::Object(entry)
        })
        .collect()
}

fn agent_self(a: &AgentSelf, acls: bool) -> Value {
    let xds = match a.xds_ports {
        Some((plain, tls)) => format!(
            r#","xDS":{{"SupportedProxies":{{"envoy":["1.33.2","1.32.5","1.31.8","1.30.10"]}},"Port":{},"Ports":{{"Plaintext":{plain},"TLS":{tls}}}}}"#,
            if tls > 0 { tls } else { plain }
        ),
        None => String::new(),
    };
    let parsed: Result<Value, _> = json::from_str(&format!(
        r#"{{"Config":{{"Datacenter":"dc1","PrimaryDatacenter":"dc1","NodeName":"edge-01","NodeID":"6a3c4e1d-8f7b-4c2a-9e5d-1b2c3d4e5f60","BindAddr":"{bind}","Server":false,"Version":"1.22.0"}},
            "DebugConfig":{{"GRPCPort":{grpc},"GRPCTLSPort":-1,"Datacenter":"dc1","NodeName":"edge-01","ACLsEnabled":{acls}}},
            "Member":{{"Name":"edge-01","Addr":"127.0.0.1","Port":8301,"Status":1}},
            "Meta":{{}}{xds}}}"#,
        bind = a.bind_addr,
        grpc = a.debug_grpc_port,
    ));
    parsed.unwrap_or(Value::Null)
}
