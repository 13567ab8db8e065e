//! The TOML schema of `outpost.toml`. Block and key names follow Nomad's job specification
//! (DESIGN.md "Config shape"); defaults are Nomad's where Nomad has one
//! (reference/nomad-connect.md §1.2, §1.9, §10). Every struct denies unknown keys.
//!
//! Only what the type system can say lives here (types, ranges, duration syntax, required
//! keys); rules that relate values to each other are in `validate`.

use super::duration::Dur;
use serde::Deserialize;
use std::collections::BTreeMap;

pub type Env = BTreeMap<String, String>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: Agent,
    pub consul: Consul,
    pub network: Network,
    pub envoy: Envoy,
    #[serde(rename = "group")]
    pub groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agent {
    /// Defaults to the host name.
    pub node_name: Option<String>,
    pub data_dir: String,
    pub run_dir: String,
    pub log_level: String,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            node_name: None,
            data_dir: "/var/lib/outpost".into(),
            run_dir: "/run/outpost".into(),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Consul {
    /// `http://host:port`, `https://host:port` or `unix:///path`.
    pub address: String,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub tls_server_name: Option<String>,
    /// Where Envoy's xDS stream goes; default: Consul's gRPC port from `/v1/agent/self`.
    pub grpc_address: Option<String>,
    pub grpc_ca_file: Option<String>,
    pub datacenter: Option<String>,
    /// Consul Enterprise namespace for registrations (empty on CE).
    pub namespace: Option<String>,
    /// Anti-entropy period against the agent's service list (Nomad: 30s).
    pub sync_interval: Dur,
    pub acl: Acl,
    pub preflight: Preflight,
}

impl Default for Consul {
    fn default() -> Self {
        Consul {
            address: "http://127.0.0.1:8500".into(),
            token: None,
            token_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            tls_server_name: None,
            grpc_address: None,
            grpc_ca_file: None,
            datacenter: None,
            namespace: None,
            sync_interval: Dur::secs(30),
            acl: Acl::default(),
            preflight: Preflight::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acl {
    /// `agent-token`, `login` or `service-identity`.
    pub mode: String,
    /// For `login`: the auth method (Nomad's default name).
    pub auth_method: String,
    /// For `login`: file holding the JWT presented to the auth method.
    pub jwt_file: Option<String>,
}

impl Default for Acl {
    fn default() -> Self {
        Acl {
            mode: "agent-token".into(),
            auth_method: "nomad-workloads".into(),
            jwt_file: None,
        }
    }
}

/// Nomad's `consul.token_preflight_check.*` and `consul.service_preflight_check.*` node meta.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preflight {
    pub token_timeout: Dur,
    pub token_base: Dur,
    pub service_timeout: Dur,
    pub service_base: Dur,
}

impl Default for Preflight {
    fn default() -> Self {
        Preflight {
            token_timeout: Dur::secs(10),
            token_base: Dur::millis(500),
            service_timeout: Dur::secs(60),
            service_base: Dur::secs(1),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub bridge: String,
    pub subnet: String,
    /// `"low-high"`, inclusive.
    pub dynamic_ports: String,
    /// `nftables` or `none`.
    pub firewall: String,
    /// Default: the address of the interface that holds the default route.
    pub advertise_address: Option<String>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: "outpost".into(),
            subnet: "172.26.64.0/20".into(),
            dynamic_ports: "20000-32000".into(),
            firewall: "nftables".into(),
            advertise_address: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Envoy {
    pub binary: String,
    /// `native` or `consul-cli`.
    pub bootstrap: String,
    /// For `consul-cli`: the `consul` binary.
    pub consul_binary: String,
    pub log_level: String,
    pub concurrency: u16,
}

impl Default for Envoy {
    fn default() -> Self {
        Envoy {
            binary: "/usr/bin/envoy".into(),
            bootstrap: "native".into(),
            consul_binary: "/usr/bin/consul".into(),
            log_level: "info".into(),
            concurrency: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub network: Option<GroupNetwork>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "task")]
    pub tasks: Vec<Task>,
    /// Default for the group's tasks, including injected proxies.
    #[serde(default)]
    pub restart: Option<Restart>,
    /// Wait between deregistering the group's services and stopping its tasks.
    #[serde(default)]
    pub shutdown_delay: Dur,
    #[serde(default)]
    pub meta: Env,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupNetwork {
    /// `bridge` or `host` (Nomad's default is `host`).
    #[serde(default = "default_network_mode")]
    pub mode: String,
    #[serde(default, rename = "port")]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub dns: Option<Dns>,
}

fn default_network_mode() -> String {
    "host".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub label: String,
    /// Host port; absent means a dynamic port from `network.dynamic_ports`.
    #[serde(default, rename = "static")]
    pub static_port: Option<u16>,
    /// Port inside the namespace; absent means the same as the host port.
    #[serde(default)]
    pub to: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// A port label of the group network, or a port number.
    #[serde(default)]
    pub port: Option<PortRef>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: Env,
    /// For Connect native services: the task that speaks Connect.
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub connect: Option<Connect>,
}

/// A service or check port: a label, or a number written either as `9001` or `"9001"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRef(pub String);

impl PortRef {
    pub fn as_number(&self) -> Option<u16> {
        self.0.parse().ok()
    }
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port label or a port number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRef, E> {
                Ok(PortRef(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRef, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p > 0)
                    .map(|p| PortRef(p.to_string()))
                    .ok_or_else(|| E::custom(format!("port {v} is out of range 1-65535")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    #[serde(default)]
    pub name: Option<String>,
    /// `http`, `grpc`, `tcp`, `script` or `ttl`.
    #[serde(rename = "type")]
    pub check_type: String,
    #[serde(default)]
    pub port: Option<PortRef>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// For `ttl` checks.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// Route the check through the sidecar (Nomad's `expose = true`).
    #[serde(default)]
    pub expose: bool,
    /// For `script` checks.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub initial_status: Option<String>,
    #[serde(default)]
    pub tls_skip_verify: bool,
    #[serde(default)]
    pub tls_server_name: Option<String>,
    #[serde(default)]
    pub grpc_service: Option<String>,
    #[serde(default)]
    pub grpc_use_tls: bool,
    #[serde(default)]
    pub success_before_passing: u32,
    #[serde(default)]
    pub failures_before_critical: u32,
    #[serde(default)]
    pub failures_before_warning: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connect {
    pub native: bool,
    pub sidecar_service: Option<SidecarService>,
    pub sidecar_task: Option<SidecarTask>,
    pub gateway: Option<Gateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarService {
    /// Port label for the sidecar's public listener; default `connect-proxy-<service>`.
    pub port: Option<String>,
    pub tags: Vec<String>,
    pub meta: Env,
    pub disable_default_tcp_check: bool,
    pub proxy: Option<Proxy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    pub local_service_address: Option<String>,
    pub local_service_port: Option<u16>,
    /// Free-form `Proxy.Config` passed to Consul (and read by the bootstrap renderer).
    pub config: toml::Table,
    pub upstreams: Vec<Upstream>,
    pub expose: Option<Expose>,
    pub transparent_proxy: Option<TransparentProxy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub destination_name: String,
    #[serde(default)]
    pub destination_namespace: Option<String>,
    #[serde(default)]
    pub destination_partition: Option<String>,
    #[serde(default)]
    pub destination_peer: Option<String>,
    #[serde(default)]
    pub destination_type: Option<String>,
    #[serde(default)]
    pub local_bind_port: Option<u16>,
    #[serde(default)]
    pub local_bind_address: Option<String>,
    #[serde(default)]
    pub local_bind_socket_path: Option<String>,
    #[serde(default)]
    pub local_bind_socket_mode: Option<String>,
    #[serde(default)]
    pub datacenter: Option<String>,
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub mesh_gateway: Option<MeshGatewayMode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshGatewayMode {
    /// `local`, `remote` or `none`.
    pub mode: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expose {
    #[serde(rename = "path")]
    pub paths: Vec<ExposePath>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposePath {
    pub path: String,
    #[serde(default = "default_expose_protocol")]
    pub protocol: String,
    pub local_path_port: u16,
    /// A port label of the group network.
    pub listener_port: String,
}

fn default_expose_protocol() -> String {
    "http".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransparentProxy {
    /// Envoy's user ID; Nomad's default is 101 (the envoy image's user).
    pub uid: Option<String>,
    /// Nomad's default is 15001.
    pub outbound_port: Option<u16>,
    pub exclude_inbound_ports: Vec<String>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
    pub exclude_uids: Vec<String>,
    pub no_dns: bool,
}

/// Overrides for the injected proxy or gateway task. Only keys written here change the
/// injected defaults (unlike Nomad, a `sidecar_task` block does not reset the 5s
/// shutdown_delay or the 2 x 2 MB logs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarTask {
    pub name: Option<String>,
    /// Replaces `envoy.binary`.
    pub command: Option<String>,
    /// Replaces Nomad's default Envoy arguments.
    pub args: Option<Vec<String>>,
    pub env: Env,
    pub user: Option<String>,
    pub kill_timeout: Option<Dur>,
    pub kill_signal: Option<String>,
    pub shutdown_delay: Option<Dur>,
    pub logs: Option<Logs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    pub proxy: Option<GatewayProxy>,
    pub ingress: Option<Ingress>,
    pub terminating: Option<Terminating>,
    pub mesh: Option<Mesh>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayProxy {
    pub connect_timeout: Option<Dur>,
    pub envoy_gateway_bind_tagged_addresses: bool,
    pub envoy_gateway_bind_addresses: BTreeMap<String, BindAddress>,
    pub envoy_gateway_no_default_bind: bool,
    /// `STRICT_DNS` or `LOGICAL_DNS`.
    pub envoy_dns_discovery_type: Option<String>,
    pub config: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindAddress {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ingress {
    pub tls: Option<IngressTls>,
    #[serde(rename = "listener")]
    pub listeners: Vec<IngressListener>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressTls {
    pub enabled: bool,
    pub tls_min_version: Option<String>,
    pub tls_max_version: Option<String>,
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressListener {
    pub port: u16,
    #[serde(default = "default_listener_protocol")]
    pub protocol: String,
    #[serde(default, rename = "service")]
    pub services: Vec<IngressService>,
}

fn default_listener_protocol() -> String {
    "tcp".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressService {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Terminating {
    #[serde(rename = "service")]
    pub services: Vec<LinkedService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkedService {
    pub name: String,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    /// `exec` or `raw_exec`: both fork/exec a host binary inside the group's namespace.
    #[serde(default = "default_driver")]
    pub driver: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Env,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
    /// Overrides the group's restart policy.
    #[serde(default)]
    pub restart: Option<Restart>,
    #[serde(default)]
    pub logs: Option<Logs>,
    #[serde(default)]
    pub shutdown_delay: Dur,
    #[serde(default = "default_kill_timeout")]
    pub kill_timeout: Dur,
    /// Nomad's default for exec tasks is SIGINT.
    #[serde(default = "default_kill_signal")]
    pub kill_signal: String,
}

fn default_driver() -> String {
    "exec".into()
}
fn default_kill_timeout() -> Dur {
    Dur::secs(5)
}
fn default_kill_signal() -> String {
    "SIGINT".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// `prestart`, `poststart` or `poststop`.
    pub hook: String,
    #[serde(default)]
    pub sidecar: bool,
}

/// Nomad's restart block; the defaults are those of a service job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    pub attempts: u32,
    pub interval: Dur,
    pub delay: Dur,
    /// `fail` or `delay`.
    pub mode: String,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            attempts: 2,
            interval: Dur::secs(30 * 60),
            delay: Dur::secs(15),
            mode: "fail".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logs {
    pub max_files: u32,
    /// Megabytes, as in Nomad.
    pub max_file_size: u32,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            max_files: 10,
            max_file_size: 10,
        }
    }
}

impl Logs {
    /// What Nomad gives injected sidecar and gateway tasks.
    pub const PROXY: Logs = Logs {
        max_files: 2,
        max_file_size: 2,
    };
}
