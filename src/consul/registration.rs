//! The body of `PUT /v1/agent/service/register` for a group service, as Nomad builds it
//! (reference/nomad-connect.md §6.2–6.4), with outpost's IDs and `external-source`.
//! Pure: derived from the config and the plan. Empty fields are left out, as Nomad's
//! client does (`omitempty`).

use super::agent::string_items;
use crate::config::{Check, Service, Upstream};
use miniserde::json::{Array, Number, Object, Value};

/// What a service's body needs from the plan.
pub struct ServiceInputs<'a> {
    pub service: &'a Service,
    pub id: &'a str,
    /// Registered port: a label's host port, or the number as written.
    pub port: Option<u16>,
    /// The service's port inside the group's namespace (where exposed checks land).
    pub local_port: Option<u16>,
    /// True when `port` names a label (then the address is the advertise address; a
    /// literal number leaves the address to Consul, as Nomad does).
    pub port_is_label: bool,
    pub advertise: &'a str,
    /// Host port of a port label of the group, for checks.
    pub host_port_of: &'a dyn Fn(&str) -> Option<u16>,
    pub sidecar: Option<SidecarInputs>,
    /// `envoy_stats_tags` Nomad adds (`nomad.alloc_id=…`, `nomad.group=…`, …).
    pub stats_tags: Vec<String>,
}

pub struct SidecarInputs {
    pub host_port: u16,
    pub netns_port: u16,
}

/// An object builder that leaves out empty values.
pub(crate) struct Obj(Object);

impl Obj {
    pub(crate) fn new() -> Obj {
        Obj(Object::new())
    }
    pub(crate) fn set(mut self, key: &str, value: Value) -> Obj {
        let empty = match &value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Bool(b) => !b,
            Value::Number(Number::U64(0)) | Value::Number(Number::I64(0)) => true,
            Value::Number(_) => false,
        };
        if !empty {
            self.0.insert(key.to_string(), value);
        }
        self
    }
    pub(crate) fn str(self, key: &str, value: &str) -> Obj {
        self.set(key, Value::String(value.to_string()))
    }
    pub(crate) fn opt_str(self, key: &str, value: &Option<String>) -> Obj {
        match value {
            Some(v) => self.str(key, v),
            None => self,
        }
    }
    pub(crate) fn num(self, key: &str, value: u64) -> Obj {
        self.set(key, Value::Number(Number::U64(value)))
    }
    pub(crate) fn build(self) -> Value {
        Value::Object(self.0)
    }
}

pub(crate) fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.clone())).collect())
}

pub(crate) fn string_map(map: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The registration body for one service.
pub fn service_body(input: &ServiceInputs) -> Value {
    let s = input.service;
    let mut meta = s.meta.clone();
    meta.insert("external-source".into(), "outpost".into());
    let address = if input.port_is_label {
        input.advertise
    } else {
        ""
    };
    let checks: Array = s
        .checks
        .iter()
        .enumerate()
        .map(|(ci, c)| check_body(input, ci, c))
        .collect();
    let mut body = Obj::new()
        .str("ID", input.id)
        .str("Name", &s.name)
        .set("Tags", strings(&s.tags))
        .str("Address", address)
        .num("Port", u64::from(input.port.unwrap_or(0)))
        .set("Meta", string_map(&meta))
        .set("Checks", Value::Array(checks));
    let connect = s.connect.as_ref();
    if connect.is_some_and(|c| c.native) {
        body = body.set(
            "Connect",
            Obj::new().set("Native", Value::Bool(true)).build(),
        );
    }
    if let (Some(sidecar), Some(side)) = (
        connect.and_then(|c| c.sidecar_service.as_ref()),
        &input.sidecar,
    ) {
        let proxy = sidecar.proxy.as_ref();
        let mut config = proxy.map(|p| p.config.clone()).unwrap_or_default();
        config
            .entry("bind_address".into())
            .or_insert_with(|| Value::String("0.0.0.0".into()));
        config.insert(
            "bind_port".into(),
            Value::Number(Number::U64(u64::from(side.netns_port))),
        );
        let tags = stats_tags(&config, &input.stats_tags);
        config.insert("envoy_stats_tags".into(), tags);
        let upstreams: Array = proxy
            .map(|p| p.upstreams.iter().map(upstream_body).collect())
            .unwrap_or_default();
        let expose_paths: Array = expose_paths(input)
            .into_iter()
            .map(|(path, protocol, local, label)| {
                Obj::new()
                    .num(
                        "ListenerPort",
                        u64::from((input.host_port_of)(&label).unwrap_or(0)),
                    )
                    .str("Path", &path)
                    .num("LocalPathPort", u64::from(local))
                    .str("Protocol", &protocol)
                    .build()
            })
            .collect();
        let tproxy = proxy.and_then(|p| p.transparent_proxy.as_ref());
        let proxy_body = Obj::new()
            .str("Mode", if tproxy.is_some() { "transparent" } else { "" })
            .set(
                "TransparentProxy",
                match tproxy {
                    Some(t) => Obj::new()
                        .num(
                            "OutboundListenerPort",
                            u64::from(t.outbound_port.unwrap_or(15001)),
                        )
                        .build(),
                    None => Value::Null,
                },
            )
            .opt_str(
                "LocalServiceAddress",
                &proxy.and_then(|p| p.local_service_address.clone()),
            )
            .num(
                "LocalServicePort",
                u64::from(local_service_port(
                    input,
                    proxy.and_then(|p| p.local_service_port),
                )),
            )
            .set("Config", Value::Object(config))
            .set("Upstreams", Value::Array(upstreams))
            .set(
                "Expose",
                Obj::new().set("Paths", Value::Array(expose_paths)).build(),
            )
            .build();
        let mut sidecar_checks = Array::new();
        sidecar_checks.push(
            Obj::new()
                .str("Name", &format!("Connect Sidecar Aliasing {}", input.id))
                .str("AliasService", input.id)
                .build(),
        );
        if !sidecar.disable_default_tcp_check {
            sidecar_checks.push(
                Obj::new()
                    .str("Name", "Connect Sidecar Listening")
                    .str("TCP", &format!("{}:{}", input.advertise, side.host_port))
                    .str("Interval", "10s")
                    .build(),
            );
        }
        let sidecar_body = Obj::new()
            .set("Tags", strings(&sidecar.tags))
            .num("Port", u64::from(side.host_port))
            .str("Address", input.advertise)
            .set("Meta", string_map(&sidecar.meta))
            .set("Proxy", proxy_body)
            .set("Checks", Value::Array(sidecar_checks))
            .build();
        body = body.set(
            "Connect",
            Obj::new().set("SidecarService", sidecar_body).build(),
        );
    }
    body.build()
}

/// The sidecar's expose paths as (path, protocol, local path port, listener port label): the
/// written ones, then one per check with `expose = true` (Nomad's mutator, §1.6), routed to
/// the service's port inside the namespace. Duplicates are skipped.
/// The port the sidecar dials the app on: the proxy's `local_service_port`, else the
/// service's port inside the namespace when it differs from the registered one (a label
/// with `to`, e.g. `static = 8080, to = 80`: the app listens on 80 there). Nomad leaves it
/// to Consul's default, the registered port, where nothing listens (Nomad #9824). 0 (left
/// out) means Consul's default.
fn local_service_port(input: &ServiceInputs, configured: Option<u16>) -> u16 {
    match (configured, input.port, input.local_port) {
        (Some(port), _, _) => port,
        (None, Some(registered), Some(local)) if input.port_is_label && local != registered => {
            local
        }
        _ => 0,
    }
}

pub fn expose_paths(input: &ServiceInputs) -> Vec<(String, String, u16, String)> {
    let s = input.service;
    let written = s
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_ref())
        .and_then(|sc| sc.proxy.as_ref())
        .and_then(|p| p.expose.as_ref());
    let mut paths: Vec<(String, String, u16, String)> = written
        .map(|e| {
            e.paths
                .iter()
                .map(|ep| {
                    let label = ep.listener_port.clone();
                    (
                        ep.path.clone(),
                        ep.protocol.clone(),
                        ep.local_path_port,
                        label,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (ci, check) in s.checks.iter().enumerate().filter(|(_, c)| c.expose) {
        let path = (
            check.path.clone().unwrap_or_else(|| "/".into()),
            check.protocol.clone().unwrap_or_else(|| "http".into()),
            input.local_port.unwrap_or(0),
            exposed_check_label(s, ci, check),
        );
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// The port label an exposed check is probed on: its own, or Nomad's generated one.
fn exposed_check_label(service: &Service, ci: usize, check: &Check) -> String {
    match &check.port {
        Some(port) => port.0.clone(),
        None => crate::config::naming::expose_check_label(service, ci),
    }
}

/// The user's `envoy_stats_tags`, plus each of Nomad's four tags whose prefix is missing;
/// sorted when the user gave none (Nomad's rule).
fn stats_tags(config: &Object, ours: &[String]) -> Value {
    let user: Vec<String> = string_items(config.get("envoy_stats_tags"));
    let mut tags = user.clone();
    for tag in ours {
        let prefix = tag.split('=').next().unwrap_or(tag);
        if !user.iter().any(|u| u.starts_with(&format!("{prefix}="))) {
            tags.push(tag.clone());
        }
    }
    if user.is_empty() {
        tags.sort();
    }
    strings(&tags)
}

fn upstream_body(up: &Upstream) -> Value {
    Obj::new()
        .str("DestinationName", &up.destination_name)
        .opt_str("DestinationNamespace", &up.destination_namespace)
        .opt_str("DestinationPartition", &up.destination_partition)
        .opt_str("DestinationPeer", &up.destination_peer)
        .opt_str("DestinationType", &up.destination_type)
        .opt_str("Datacenter", &up.datacenter)
        .opt_str("LocalBindAddress", &up.local_bind_address)
        .num("LocalBindPort", u64::from(up.local_bind_port.unwrap_or(0)))
        .opt_str("LocalBindSocketPath", &up.local_bind_socket_path)
        .opt_str("LocalBindSocketMode", &up.local_bind_socket_mode)
        .set("Config", Value::Object(up.config.clone()))
        .set(
            "MeshGateway",
            match &up.mesh_gateway {
                Some(m) => Obj::new().str("Mode", &m.mode).build(),
                None => Value::Null,
            },
        )
        .build()
}

/// Nomad's default check name.
pub fn check_name(service: &Service, check: &Check) -> String {
    check
        .name
        .clone()
        .unwrap_or_else(|| format!("service: \"{}\" check", service.name))
}

/// `_outpost-check-<hash>`: stable for the same service and check definition.
pub fn check_id(service_id: &str, service: &Service, check: &Check) -> String {
    let key = format!(
        "{service_id}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
        check_name(service, check),
        check.check_type,
        check.path,
        check.port,
        check.interval,
        check.timeout,
        check.command
    );
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("_outpost-check-{hash:016x}")
}

fn check_body(input: &ServiceInputs, ci: usize, check: &Check) -> Value {
    // An exposed check probes the sidecar's expose listener, published on the host.
    let port = match &check.port {
        _ if check.expose => (input.host_port_of)(&exposed_check_label(input.service, ci, check)),
        Some(p) => (input.host_port_of)(&p.0).or_else(|| p.as_number()),
        None => input.port,
    }
    .unwrap_or(0);
    let target = format!("{}:{port}", input.advertise);
    let mut body = Obj::new()
        .str("CheckID", &check_id(input.id, input.service, check))
        .str("Name", &check_name(input.service, check))
        .opt_str("Status", &check.initial_status)
        .num(
            "SuccessBeforePassing",
            u64::from(check.success_before_passing),
        )
        .num(
            "FailuresBeforeWarning",
            u64::from(check.failures_before_warning),
        )
        .num(
            "FailuresBeforeCritical",
            u64::from(check.failures_before_critical),
        );
    let interval = check.interval.map(|d| d.to_string()).unwrap_or_default();
    let timeout = check.timeout.map(|d| d.to_string()).unwrap_or_default();
    body = match check.check_type.as_str() {
        "http" => {
            let scheme = if check.protocol.as_deref() == Some("https") {
                "https"
            } else {
                "http"
            };
            let header = Value::Object(
                check
                    .header
                    .iter()
                    .map(|(k, v)| (k.clone(), strings(v)))
                    .collect(),
            );
            body.str(
                "HTTP",
                &format!(
                    "{scheme}://{target}{}",
                    check.path.as_deref().unwrap_or("/")
                ),
            )
            .opt_str("Method", &check.method)
            .opt_str("Body", &check.body)
            .set("Header", header)
            .opt_str("TLSServerName", &check.tls_server_name)
            .set("TLSSkipVerify", Value::Bool(check.tls_skip_verify))
            .str("Interval", &interval)
            .str("Timeout", &timeout)
        }
        "tcp" => body
            .str("TCP", &target)
            .str("Interval", &interval)
            .str("Timeout", &timeout),
        "grpc" => {
            let grpc = match &check.grpc_service {
                Some(svc) => format!("{target}/{svc}"),
                None => target,
            };
            body.str("GRPC", &grpc)
                .set("GRPCUseTLS", Value::Bool(check.grpc_use_tls))
                .str("Interval", &interval)
                .str("Timeout", &timeout)
        }
        // Script checks run in the task's namespace; Consul sees a TTL check that outpost
        // updates, with Nomad's TTL of interval + 31s.
        "script" => {
            let ttl = check
                .interval
                .map(|i| crate::config::Dur(i.0 + std::time::Duration::from_secs(31)));
            body.str("TTL", &ttl.map(|d| d.to_string()).unwrap_or_default())
        }
        _ => body.str("TTL", &check.ttl.map(|d| d.to_string()).unwrap_or_default()),
    };
    body.build()
}
