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
}

/// The Connect CA (reference/consul-api.md §5, consul-xds.md §3): an EC P-256 root whose URI
/// SAN is the trust domain, and per-service leaves (CN = service, one URI SAN = its SPIFFE ID,
/// server and client auth), made on first request and kept, as the agent caches them.
struct Ca {
    cluster_id: String,
    root_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    leaves: BTreeMap<String, (String, String)>,
}

impl Ca {
    fn new() -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
        // A UUID-shaped cluster ID, different per double.
        let seed = format!(
            "{:032x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                ^ (u128::from(std::process::id()) << 64)
        );
        let cluster_id = format!(
            "{}-{}-{}-{}-{}",
            &seed[0..8],
            &seed[8..12],
            &seed[12..16],
            &seed[16..20],
            &seed[20..32]
        );
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("pri-{} Consul CA 1", &seed[0..7]),
        );
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{cluster_id}.consul")
                .try_into()
                .expect("a SPIFFE URI"),
        )];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("the CA");
        Ca {
            root_pem: issuer.pem(),
            cluster_id,
            issuer,
            leaves: BTreeMap::new(),
        }
    }

    fn trust_domain(&self) -> String {
        format!("{}.consul", self.cluster_id)
    }

    /// The service's SPIFFE ID (reference/consul-api.md §5.2).
    fn service_uri(&self, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            self.trust_domain()
        )
    }

    fn leaf(&mut self, service: &str) -> (String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
        let uri = self.service_uri(service);
        if let Some(leaf) = self.leaves.get(service) {
            return leaf.clone();
        }
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, service.to_string());
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("a SPIFFE URI"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        let leaf = (cert.pem(), key.serialize_pem());
        self.leaves.insert(service.to_string(), leaf.clone());
        leaf
    }
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
        let (status, body, _) = put_config(&mut self.lock(), entry);
        (status, body)
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
            let (status, body, extra) = self.handle(&request);
            let index = {
                let mut s = self.lock();
                if status == 200 && request.method != "GET" {
                    s.index += 1;
                }
                s.index
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
                (200, "true".into(), Vec::new())
            }
            (_, None) => method_not_allowed(&r.method, "GET"),
            (_, Some(_)) => method_not_allowed(&r.method, "GET, DELETE"),
        };
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
            Some(svc) => ok_json(Value::Object(svc.clone())),
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

fn ca_roots(ca: &Ca) -> Reply {
    let mut root = Object::new();
    let id = "5e:32:1f:0a:9b:7c:44:21:d3:88:01:6f:aa:42:10:9c:de:7b:35:01";
    let fields = [
        ("ID", Value::String(id.into())),
        ("Name", Value::String("Consul CA Primary Cert".into())),
        ("SerialNumber", Value::Number(Number::U64(7))),
        ("SigningKeyID", Value::String(id.into())),
        ("ExternalTrustDomain", Value::String(ca.cluster_id.clone())),
        ("RootCert", Value::String(ca.root_pem.clone())),
        ("IntermediateCerts", Value::Array(Array::new())),
        ("Active", Value::Bool(true)),
        ("PrivateKeyType", Value::String("ec".into())),
        ("PrivateKeyBits", Value::Number(Number::U64(256))),
    ];
    for (k, v) in fields {
        root.insert(k.into(), v);
    }
    let mut roots = Object::new();
    roots.insert("ActiveRootID".into(), Value::String(id.into()));
    roots.insert("TrustDomain".into(), Value::String(ca.trust_domain()));
    roots.insert(
        "Roots".into(),
        Value::Array(std::iter::once(Value::Object(root)).collect()),
    );
    ok_json(Value::Object(roots))
}

fn ca_leaf(ca: &mut Ca, service: &str) -> Reply {
    let (cert, key) = ca.leaf(service);
    let mut leaf = Object::new();
    let fields = [
        ("SerialNumber", Value::String("0a:1b".into())),
        ("CertPEM", Value::String(cert)),
        ("PrivateKeyPEM", Value::String(key)),
        ("Service", Value::String(service.into())),
        ("ServiceURI", Value::String(ca.service_uri(service))),
    ];
    for (k, v) in fields {
        leaf.insert(k.into(), v);
    }
    ok_json(Value::Object(leaf))
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

/// `filter` of the agent and catalog listings: the two bexpr forms `consul connect envoy`
/// sends (Kind == `x`, ID == "x"); anything else is refused rather than half-evaluated.
fn filter_matches(filter: &str, svc: &Object) -> Result<bool, Reply> {
    let parse = |field: &str| -> Option<String> {
        let rest = filter
            .trim()
            .strip_prefix(field)?
            .trim_start()
            .strip_prefix("==")?
            .trim();
        let quoted = rest
            .strip_prefix('`')
            .and_then(|r| r.strip_suffix('`'))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
        Some(quoted.to_string())
    };
    let field_is = |key: &str, want: &str| match svc.get(key) {
        Some(Value::String(v)) => v == want,
        _ => want.is_empty(),
    };
    if let Some(kind) = parse("Kind") {
        return Ok(field_is("Kind", &kind));
    }
    if let Some(id) = parse("ID") {
        return Ok(field_is("ID", &id));
    }
    Err(text(
        400,
        &format!("Failed to create boolexpr evaluator: unsupported filter {filter:?}"),
    ))
}

fn filtered_services(s: &State, r: &Request) -> Result<Vec<Object>, Reply> {
    let mut out = Vec::new();
    for svc in s.services.values() {
        let keep = match r.query_value("filter") {
            Some(f) => filter_matches(&f, svc)?,
            None => true,
        };
        if keep {
            out.push(svc.clone());
        }
    }
    Ok(out)
}

/// A token is usable when ACLs are off, or it is known, visible and not negatively cached.
fn token_state(s: &mut State, token: Option<&str>) -> Result<(), ()> {
    if !s.acl_enabled {
        return Ok(());
    }
    let Some(secret) = token else { return Err(()) };
    if s.negative_cache
        .get(secret)
        .is_some_and(|until| Instant::now() < *until)
    {
        return Err(());
    }
    match s.tokens.get(secret) {
        Some(t) if Instant::now() >= t.visible_at => Ok(()),
        _ => Err(()),
    }
}

fn authorize_write(s: &mut State, r: &Request) -> Result<(), Reply> {
    if !s.acl_enabled {
        return Ok(());
    }
    match r.token.as_deref() {
        None => Err(text(
            403,
            "Permission denied: anonymous token lacks permission 'service:write'. The anonymous token is used implicitly when a request does not specify a token.",
        )),
        Some(t) => token_state(s, Some(t)).map_err(|()| text(403, "ACL not found")),
    }
}

fn token_self(s: &mut State, r: &Request, negative_cached: &mut bool) -> Reply {
    if !s.acl_enabled {
        return text(401, "ACL support disabled");
    }
    let Some(secret) = r.token.clone() else {
        return text(403, "ACL not found");
    };
    match token_state(s, Some(&secret)) {
        Ok(()) => ok_json(
            json::from_str(r#"{"AccessorID":"a1b2c3d4-0000-4000-8000-000000000001","Description":"outpost test token","Policies":[],"Local":false}"#)
                .unwrap_or(Value::Null),
        ),
        Err(()) => {
            // Only a non-stale read of a token the agent cannot resolve is cached.
            if !r.has_query("stale") && !s.negative_cache.contains_key(&secret) {
                s.negative_cache.insert(secret, Instant::now() + NEGATIVE_CACHE_TTL);
                *negative_cached = true;
            }
            text(403, "ACL not found")
        }
    }
}

fn mint(s: &mut State, login: bool, description: &str, identities: Value) -> Reply {
    s.next_accessor += 1;
    let accessor = format!("00000000-0000-4000-8000-{:012x}", s.next_accessor);
    let secret = format!("11111111-2222-4333-8444-{:012x}", s.next_accessor * 7919);
    let visible_at = Instant::now() + s.minted_lag;
    s.tokens.insert(secret.clone(), Token { visible_at });
    s.minted.insert(accessor.clone(), (secret.clone(), login));
    let mut token = Object::new();
    token.insert("AccessorID".into(), Value::String(accessor));
    token.insert("SecretID".into(), Value::String(secret));
    token.insert("Description".into(), Value::String(description.into()));
    token.insert("ServiceIdentities".into(), identities);
    token.insert("Local".into(), Value::Bool(true));
    ok_json(Value::Object(token))
}

/// `POST /v1/acl/login` (§4.1). Errors for an unknown method or an untrusted JWT are the
/// double's wording: the reference gives none.
fn login(s: &mut State, body: &str) -> Reply {
    if !s.acl_enabled {
        return text(401, "ACL support disabled");
    }
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return bad("expected a JSON object");
    };
    if let Err(reply) = check_keys(&req, &["AuthMethod", "BearerToken", "Meta"], "login") {
        return reply;
    }
    let (Ok(Some(method)), Ok(Some(jwt))) =
        (get_str(&req, "AuthMethod"), get_str(&req, "BearerToken"))
    else {
        return bad("AuthMethod and BearerToken are required");
    };
    let Some(known) = s.auth_method.clone().filter(|m| m.name == method) else {
        return text(
            403,
            &format!("Permission denied: auth method \"{method}\" not found"),
        );
    };
    if known.jwt != jwt {
        return text(
            403,
            "Permission denied: failed to validate the bearer token",
        );
    }
    let service = match string_map(&req, "Meta") {
        Ok(meta) => match meta.get("requested_by") {
            Some(Value::String(by)) => by.trim_start_matches("outpost_service_").to_string(),
            _ => String::new(),
        },
        Err(reply) => return reply,
    };
    let mut identity = Object::new();
    identity.insert("ServiceName".into(), Value::String(service));
    mint(
        s,
        true,
        "token created via login",
        Value::Array(vec![Value::Object(identity)].into_iter().collect()),
    )
}

fn logout(s: &mut State, r: &Request) -> Reply {
    if !s.acl_enabled {
        return text(401, "ACL support disabled");
    }
    let Some(secret) = r.token.clone() else {
        return text(403, "ACL not found");
    };
    // The token is resolved first: an unknown one is "ACL not found".
    if token_state(s, Some(&secret)).is_err() {
        return text(403, "ACL not found");
    }
    let accessor = s
        .minted
        .iter()
        .find(|(_, (sec, login))| *sec == secret && *login)
        .map(|(a, _)| a.clone());
    match accessor {
        Some(a) => {
            s.minted.remove(&a);
            s.tokens.remove(&secret);
            (200, "true".into(), Vec::new())
        }
        None => text(
            403,
            "Permission denied: only tokens created by login can be destroyed by logout",
        ),
    }
}

fn create_token(s: &mut State, body: &str) -> Reply {
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return text(400, "Token decoding failed: expected a JSON object");
    };
    let allowed = [
        "Description",
        "ServiceIdentities",
        "Local",
        "Policies",
        "Roles",
        "ExpirationTTL",
    ];
    if let Some(k) = req.keys().find(|k| !allowed.contains(&k.as_str())) {
        return text(
            400,
            &format!("Token decoding failed: unknown field \"{k}\""),
        );
    }
    let Some(Value::Array(ids)) = req.get("ServiceIdentities") else {
        return text(
            400,
            "Token decoding failed: ServiceIdentities required by this double",
        );
    };
    let description = match req.get("Description") {
        Some(Value::String(d)) => d.clone(),
        _ => String::new(),
    };
    mint(s, false, &description, Value::Array(ids.clone()))
}

const SERVICE_KEYS: &[&str] = &[
    "Kind",
    "ID",
    "Name",
    "Tags",
    "Meta",
    "Port",
    "Address",
    "SocketPath",
    "TaggedAddresses",
    "EnableTagOverride",
    "Weights",
    "Check",
    "Checks",
    "Proxy",
    "Connect",
    "Namespace",
    "Partition",
    "Locality",
];
const SIDECAR_KEYS: &[&str] = &[
    "ID", "Name", "Kind", "Tags", "Meta", "Port", "Address", "Proxy", "Checks", "Check", "Token",
];
const PROXY_KEYS: &[&str] = &[
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "TransparentProxy",
    "Config",
    "Upstreams",
    "MeshGateway",
    "Expose",
    "AccessLogs",
    "EnvoyExtensions",
];
const UPSTREAM_KEYS: &[&str] = &[
    "DestinationType",
    "DestinationNamespace",
    "DestinationPartition",
    "DestinationPeer",
    "DestinationName",
    "Datacenter",
    "LocalBindAddress",
    "LocalBindPort",
    "LocalBindSocketPath",
    "LocalBindSocketMode",
    "Config",
    "MeshGateway",
    "CentrallyConfigured",
];
const CHECK_KEYS: &[&str] = &[
    "CheckID",
    "Name",
    "ScriptArgs",
    "Interval",
    "Timeout",
    "TTL",
    "HTTP",
    "Header",
    "Method",
    "Body",
    "TCP",
    "UDP",
    "Status",
    "Notes",
    "TLSServerName",
    "TLSSkipVerify",
    "GRPC",
    "GRPCUseTLS",
    "AliasNode",
    "AliasService",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "DeregisterCriticalServiceAfter",
];
const KINDS: &[&str] = &[
    "",
    "connect-proxy",
    "mesh-gateway",
    "terminating-gateway",
    "ingress-gateway",
    "api-gateway",
];

const CONFIG_KINDS: &[&str] = &[
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
];

/// `PUT /v1/config`: the two gateway kinds outpost writes are validated field by field as
/// Consul decodes them (unknown keys are errors); other kinds are stored as given.
fn put_config(s: &mut State, body: &str) -> Reply {
    let Ok(Value::Object(mut entry)) = json::from_str::<Value>(body) else {
        return text(400, "Request decoding failed: expected a JSON object");
    };
    let kind = match entry.get("Kind") {
        Some(Value::String(k)) => k.clone(),
        _ => return text(400, "Request decoding failed: Payload is missing Kind"),
    };
    if !CONFIG_KINDS.contains(&kind.as_str()) {
        return text(
            400,
            &format!("Request decoding failed: invalid config entry kind: {kind}"),
        );
    }
    let name = match entry.get("Name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => return text(400, &format!("Name is required for {kind} config entries")),
    };
    let valid = match kind.as_str() {
        "ingress-gateway" => validate_ingress_entry(&entry),
        "terminating-gateway" => validate_terminating_entry(&entry),
        "service-intentions" => validate_intentions_entry(&entry),
        _ => Ok(()),
    };
    if let Err(reply) = valid {
        return reply;
    }
    s.config_index += 1;
    let key = (kind, name);
    let create = s
        .config_entries
        .get(&key)
        .and_then(|e| e.get("CreateIndex").cloned())
        .unwrap_or(Value::Number(Number::U64(s.config_index)));
    entry.insert("CreateIndex".into(), create);
    entry.insert(
        "ModifyIndex".into(),
        Value::Number(Number::U64(s.config_index)),
    );
    s.config_entries.insert(key, entry);
    (200, "true".into(), Vec::new())
}

fn decode_keys(obj: &Object, allowed: &[&str]) -> Result<(), Reply> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(text(
            400,
            &format!(
                "Request decoding failed: 1 error(s) decoding:\n\n* invalid config key \"{k}\""
            ),
        )),
        None => Ok(()),
    }
}

fn validate_ingress_entry(entry: &Object) -> Result<(), Reply> {
    decode_keys(
        entry,
        &[
            "Kind",
            "Name",
            "Namespace",
            "Partition",
            "TLS",
            "Listeners",
            "Defaults",
            "Meta",
        ],
    )?;
    if let Some(tls) = get_obj(entry, "TLS")? {
        decode_keys(
            tls,
            &[
                "Enabled",
                "TLSMinVersion",
                "TLSMaxVersion",
                "CipherSuites",
                "SDS",
            ],
        )?;
    }
    for listener in get_array(entry, "Listeners")?.into_iter().flatten() {
        let Value::Object(l) = listener else {
            return Err(bad("Listeners: expected objects"));
        };
        decode_keys(l, &["Port", "Protocol", "Services", "TLS"])?;
        let port = get_port(l, "Port")?;
        let protocol = get_str(l, "Protocol")?.unwrap_or("tcp");
        if !["tcp", "http", "http2", "grpc"].contains(&protocol) {
            return Err(text(
                400,
                &format!(
                    "protocol must be 'tcp', 'http', 'http2', or 'grpc'. '{protocol}' is an unsupported protocol"
                ),
            ));
        }
        let services = get_array(l, "Services")?.map_or(0, |a| a.len());
        if protocol == "tcp" && services > 1 {
            return Err(text(
                400,
                &format!(
                    "Listener on port {port} protocol tcp: multiple services per listener are only supported for protocol = 'http' (1 error)"
                ),
            ));
        }
        for svc in get_array(l, "Services")?.into_iter().flatten() {
            let Value::Object(svc) = svc else {
                return Err(bad("Services: expected objects"));
            };
            decode_keys(
                svc,
                &[
                    "Name",
                    "Hosts",
                    "Namespace",
                    "Partition",
                    "RequestHeaders",
                    "ResponseHeaders",
                    "TLS",
                    "MaxConnections",
                    "MaxPendingRequests",
                    "MaxConcurrentRequests",
                    "PassiveHealthCheck",
                ],
            )?;
            if get_str(svc, "Name")?.is_none_or(str::is_empty) {
                return Err(text(
                    400,
                    &format!("Service name cannot be blank (listener on port {port})"),
                ));
            }
            string_list(svc, "Hosts")?;
        }
    }
    string_map(entry, "Meta")?;
    Ok(())
}

/// L4 intentions only (the double's xDS serves network RBAC): each source has a name and an
/// action `allow` or `deny`.
fn validate_intentions_entry(entry: &Object) -> Result<(), Reply> {
    decode_keys(
        entry,
        &["Kind", "Name", "Namespace", "Partition", "Sources", "Meta"],
    )?;
    for (i, source) in get_array(entry, "Sources")?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Value::Object(source) = source else {
            return Err(bad("Sources: expected objects"));
        };
        decode_keys(
            source,
            &[
                "Name",
                "Namespace",
                "Partition",
                "Peer",
                "Action",
                "Description",
            ],
        )?;
        if get_str(source, "Name")?.unwrap_or("").is_empty() {
            return Err(text(400, &format!("Sources[{i}].Name is required")));
        }
        if !matches!(get_str(source, "Action")?, Some("allow" | "deny")) {
            return Err(text(
                400,
                &format!("Sources[{i}].Action must be set to 'allow' or 'deny'"),
            ));
        }
    }
    Ok(())
}

fn validate_terminating_entry(entry: &Object) -> Result<(), Reply> {
    decode_keys(
        entry,
        &["Kind", "Name", "Namespace", "Partition", "Services", "Meta"],
    )?;
    for svc in get_array(entry, "Services")?.into_iter().flatten() {
        let Value::Object(svc) = svc else {
            return Err(bad("Services: expected objects"));
        };
        decode_keys(
            svc,
            &[
                "Name",
                "Namespace",
                "Partition",
                "CAFile",
                "CertFile",
                "KeyFile",
                "SNI",
                "DisableAutoHostRewrite",
            ],
        )?;
        let name = get_str(svc, "Name")?.unwrap_or("");
        if name.is_empty() {
            return Err(text(400, "Service name cannot be blank."));
        }
        if get_str(svc, "CertFile")?.is_some() != get_str(svc, "KeyFile")?.is_some() {
            return Err(text(
                400,
                &format!(
                    "Service \"{name}\": must have a CertFile, CAFile, and KeyFile specified for TLS origination"
                ),
            ));
        }
    }
    string_map(entry, "Meta")?;
    Ok(())
}

fn bad(reason: &str) -> Reply {
    text(400, &format!("Request decode failed: {reason}"))
}

fn check_keys(obj: &Object, allowed: &[&str], what: &str) -> Result<(), Reply> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(&format!("{what}: unknown field \"{k}\""))),
        None => Ok(()),
    }
}

fn get_str<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a str>, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(v)) => Ok(Some(v)),
        Some(_) => Err(bad(&format!("{key}: expected a string"))),
    }
}

fn get_port(obj: &Object, key: &str) -> Result<u64, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(Number::U64(n))) if *n <= 65535 => Ok(*n),
        Some(_) => Err(bad(&format!("{key}: expected a port number"))),
    }
}

fn get_obj<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a Object>, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(bad(&format!("{key}: expected an object"))),
    }
}

fn get_array<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a Array>, Reply> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(bad(&format!("{key}: expected an array"))),
    }
}

fn string_list(obj: &Object, key: &str) -> Result<Array, Reply> {
    let mut out = Array::new();
    for item in get_array(obj, key)?.into_iter().flatten() {
        match item {
            Value::String(_) => out.push(item.clone()),
            _ => return Err(bad(&format!("{key}: expected strings"))),
        }
    }
    Ok(out)
}

fn string_map(obj: &Object, key: &str) -> Result<Object, Reply> {
    let mut out = Object::new();
    for (k, v) in get_obj(obj, key)?.into_iter().flatten() {
        match v {
            Value::String(_) => {
                out.insert(k.clone(), v.clone());
            }
            _ => return Err(bad(&format!("{key}.{k}: expected a string"))),
        }
    }
    Ok(out)
}

fn validate_proxy(proxy: &Object) -> Result<(), Reply> {
    check_keys(proxy, PROXY_KEYS, "Proxy")?;
    get_port(proxy, "LocalServicePort")?;
    for key in [
        "DestinationServiceName",
        "DestinationServiceID",
        "LocalServiceAddress",
        "Mode",
    ] {
        get_str(proxy, key)?;
    }
    if let Some(mode) = get_str(proxy, "Mode")?
        && !["", "direct", "transparent"].contains(&mode)
    {
        return Err(bad(&format!("Proxy.Mode: invalid mode \"{mode}\"")));
    }
    get_obj(proxy, "Config")?;
    for up in get_array(proxy, "Upstreams")?.into_iter().flatten() {
        let Value::Object(up) = up else {
            return Err(bad("Proxy.Upstreams: expected objects"));
        };
        check_keys(up, UPSTREAM_KEYS, "Upstream")?;
        if get_str(up, "DestinationName")?.is_none_or(str::is_empty) {
            return Err(text(
                400,
                "Invalid Proxy configuration: upstream destination name is required",
            ));
        }
        get_port(up, "LocalBindPort")?;
    }
    Ok(())
}

fn validate_checks(obj: &Object) -> Result<Vec<Object>, Reply> {
    let mut checks = Vec::new();
    for c in get_array(obj, "Checks")?.into_iter().flatten() {
        let Value::Object(c) = c else {
            return Err(bad("Checks: expected objects"));
        };
        check_keys(c, CHECK_KEYS, "Check")?;
        let kinds = [
            "HTTP",
            "TCP",
            "GRPC",
            "TTL",
            "AliasService",
            "ScriptArgs",
            "UDP",
        ];
        if !kinds.iter().any(|k| c.contains_key(*k)) {
            return Err(text(400, "Invalid check: TTL must be > 0 for TTL checks"));
        }
        if (c.contains_key("HTTP") || c.contains_key("TCP") || c.contains_key("GRPC"))
            && !c.contains_key("Interval")
        {
            return Err(text(
                400,
                "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks",
            ));
        }
        checks.push(c.clone());
    }
    Ok(checks)
}

fn register(s: &mut State, body: &str) -> Reply {
    let Ok(Value::Object(reg)) = json::from_str::<Value>(body) else {
        return bad("expected a JSON object");
    };
    if let Err(reply) = check_keys(&reg, SERVICE_KEYS, "service") {
        return reply;
    }
    match build_services(&reg) {
        Ok(list) => {
            for (service, checks) in list {
                let id = match service.get("ID") {
                    Some(Value::String(id)) => id.clone(),
                    _ => continue,
                };
                let name = match service.get("Service") {
                    Some(Value::String(n)) => n.clone(),
                    _ => String::new(),
                };
                // replace-existing-checks: the service's checks are exactly these now.
                s.checks.retain(
                    |_, c| !matches!(c.get("ServiceID"), Some(Value::String(sid)) if *sid == id),
                );
                for (i, check) in checks.iter().enumerate() {
                    let check_id = match check.get("CheckID") {
                        Some(Value::String(c)) => c.clone(),
                        _ if checks.len() == 1 => format!("service:{id}"),
                        _ => format!("service:{id}:{}", i + 1),
                    };
                    let mut hc = Object::new();
                    hc.insert("Node".into(), Value::String("edge-01".into()));
                    hc.insert("CheckID".into(), Value::String(check_id.clone()));
                    hc.insert(
                        "Name".into(),
                        check
                            .get("Name")
                            .cloned()
                            .unwrap_or(Value::String(String::new())),
                    );
                    hc.insert(
                        "Status".into(),
                        check
                            .get("Status")
                            .cloned()
                            .unwrap_or(Value::String("critical".into())),
                    );
                    hc.insert("ServiceID".into(), Value::String(id.clone()));
                    hc.insert("ServiceName".into(), Value::String(name.clone()));
                    // What the agent will probe, as /v1/agent/checks shows it.
                    let definition: Object = ["HTTP", "TCP", "GRPC", "Interval", "Timeout"]
                        .iter()
                        .filter_map(|k| Some((k.to_string(), check.get(*k)?.clone())))
                        .collect();
                    hc.insert("Definition".into(), Value::Object(definition));
                    s.checks.insert(check_id, hc);
                }
                s.services.insert(id, service);
            }
            (200, String::new(), Vec::new())
        }
        Err(reply) => reply,
    }
}

/// The parent (and its sidecar, expanded as the agent does) as AgentService objects.
fn build_services(reg: &Object) -> Result<Vec<(Object, Vec<Object>)>, Reply> {
    let Some(name) = get_str(reg, "Name")?.filter(|n| !n.is_empty()) else {
        return Err(text(400, "Missing service name"));
    };
    let kind = get_str(reg, "Kind")?.unwrap_or("");
    if !KINDS.contains(&kind) {
        return Err(text(400, &format!("Invalid service kind: \"{kind}\"")));
    }
    let id = get_str(reg, "ID")?.unwrap_or(name).to_string();
    let port = get_port(reg, "Port")?;
    let address = get_str(reg, "Address")?.unwrap_or("").to_string();
    let tags = string_list(reg, "Tags")?;
    let meta = string_map(reg, "Meta")?;
    let checks = validate_checks(reg)?;
    if let Some(proxy) = get_obj(reg, "Proxy")? {
        validate_proxy(proxy)?;
        if kind == "connect-proxy" && get_str(proxy, "DestinationServiceName")?.is_none() {
            return Err(text(
                400,
                "Invalid Proxy configuration: DestinationServiceName must be set",
            ));
        }
    }
    let mut parent = agent_service(kind, &id, name, &tags, &meta, port, &address);
    match get_obj(reg, "Proxy")? {
        Some(proxy) => {
            parent.insert("Proxy".into(), Value::Object(proxy.clone()));
        }
        // The agent gives every proxy and gateway a Proxy block, empty or not.
        None if !kind.is_empty() => {
            parent.insert("Proxy".into(), Value::Object(Object::new()));
        }
        None => {}
    }
    let mut out = Vec::new();
    let connect = get_obj(reg, "Connect")?;
    if let Some(connect) = connect {
        check_keys(connect, &["Native", "SidecarService"], "Connect")?;
        if let Some(Value::Bool(true)) = connect.get("Native") {
            let mut c = Object::new();
            c.insert("Native".into(), Value::Bool(true));
            parent.insert("Connect".into(), Value::Object(c));
        }
        if let Some(sidecar) = get_obj(connect, "SidecarService")? {
            out.push(expand_sidecar(
                sidecar, &id, name, &tags, &meta, port, &address,
            )?);
        }
    }
    out.insert(0, (parent, checks));
    Ok(out)
}

fn agent_service(
    kind: &str,
    id: &str,
    name: &str,
    tags: &Array,
    meta: &Object,
    port: u64,
    address: &str,
) -> Object {
    let mut svc = Object::new();
    if !kind.is_empty() {
        svc.insert("Kind".into(), Value::String(kind.into()));
    }
    svc.insert("ID".into(), Value::String(id.into()));
    svc.insert("Service".into(), Value::String(name.into()));
    svc.insert("Tags".into(), Value::Array(tags.clone()));
    svc.insert("Meta".into(), Value::Object(meta.clone()));
    svc.insert("Port".into(), Value::Number(Number::U64(port)));
    svc.insert("Address".into(), Value::String(address.into()));
    let mut weights = Object::new();
    weights.insert("Passing".into(), Value::Number(Number::U64(1)));
    weights.insert("Warning".into(), Value::Number(Number::U64(1)));
    svc.insert("Weights".into(), Value::Object(weights));
    svc.insert("EnableTagOverride".into(), Value::Bool(false));
    svc.insert("Datacenter".into(), Value::String("dc1".into()));
    svc
}

/// The agent's sidecar defaults (agent/sidecar_service.go, §3.1).
fn expand_sidecar(
    sidecar: &Object,
    parent_id: &str,
    parent_name: &str,
    parent_tags: &Array,
    parent_meta: &Object,
    parent_port: u64,
    parent_address: &str,
) -> Result<(Object, Vec<Object>), Reply> {
    check_keys(sidecar, SIDECAR_KEYS, "SidecarService")?;
    let id = format!("{parent_id}-sidecar-proxy");
    let name = get_str(sidecar, "Name")?
        .map(str::to_string)
        .unwrap_or(format!("{parent_name}-sidecar-proxy"));
    let mut tags = string_list(sidecar, "Tags")?;
    if tags.is_empty() {
        tags = parent_tags.clone();
    }
    let mut meta = string_map(sidecar, "Meta")?;
    if meta.is_empty() {
        meta = parent_meta.clone();
    }
    let port = get_port(sidecar, "Port")?;
    if port == 0 {
        return Err(text(
            400,
            "no port provided for sidecar_service and none left in the configured range [21000, 21255]",
        ));
    }
    let address = get_str(sidecar, "Address")?
        .unwrap_or(parent_address)
        .to_string();
    let mut proxy = match get_obj(sidecar, "Proxy")? {
        Some(p) => {
            validate_proxy(p)?;
            p.clone()
        }
        None => Object::new(),
    };
    proxy.insert(
        "DestinationServiceName".into(),
        Value::String(parent_name.into()),
    );
    proxy.insert(
        "DestinationServiceID".into(),
        Value::String(parent_id.into()),
    );
    // Unset, empty and zero are the same to Go: the agent fills in the defaults.
    if get_str(&proxy, "LocalServiceAddress")?.is_none_or(str::is_empty) {
        proxy.insert(
            "LocalServiceAddress".into(),
            Value::String("127.0.0.1".into()),
        );
    }
    if get_port(&proxy, "LocalServicePort")? == 0 {
        proxy.insert(
            "LocalServicePort".into(),
            Value::Number(Number::U64(parent_port)),
        );
    }
    proxy
        .entry("MeshGateway".into())
        .or_insert_with(|| Value::Object(Object::new()));
    proxy
        .entry("Expose".into())
        .or_insert_with(|| Value::Object(Object::new()));
    let mut svc = agent_service("connect-proxy", &id, &name, &tags, &meta, port, &address);
    svc.insert("Proxy".into(), Value::Object(proxy));
    let mut checks = validate_checks(sidecar)?;
    if checks.is_empty() {
        let mut tcp = Object::new();
        tcp.insert(
            "Name".into(),
            Value::String("Connect Sidecar Listening".into()),
        );
        tcp.insert("TCP".into(), Value::String(format!("{address}:{port}")));
        tcp.insert("Interval".into(), Value::String("10s".into()));
        let mut alias = Object::new();
        alias.insert(
            "Name".into(),
            Value::String(format!("Connect Sidecar Aliasing {parent_id}")),
        );
        alias.insert("AliasService".into(), Value::String(parent_id.into()));
        checks = vec![tcp, alias];
    }
    Ok((svc, checks))
}

fn deregister(s: &mut State, id: &str) -> Reply {
    if s.services.remove(id).is_none() {
        return text(
            404,
            &format!(
                "Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."
            ),
        );
    }
    // The agent removes a locally registered sidecar with its parent.
    let sidecar = format!("{id}-sidecar-proxy");
    s.services.remove(&sidecar);
    s.checks.retain(|_, c| {
        let sid = match c.get("ServiceID") {
            Some(Value::String(v)) => v.as_str(),
            _ => "",
        };
        sid != id && sid != sidecar
    });
    (200, String::new(), Vec::new())
}
