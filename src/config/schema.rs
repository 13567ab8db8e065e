//! The TOML schema of `outpost.toml`. Block and key names follow Nomad's job specification
//! (the examples show each block); defaults are Nomad's where Nomad has one
//! (reference/nomad-connect.md §1.2, §1.9, §10). Every struct denies unknown keys.
//!
//! Reading it from TOML is `load`; rules that relate values to each other are in
//! `validate`.

use super::duration::Dur;
use miniserde::json::Object;
use std::collections::BTreeMap;

pub type Env = BTreeMap<String, String>;

#[derive(Debug, Default)]
pub struct Config {
    pub agent: Agent,
    pub consul: Consul,
    pub network: Network,
    pub envoy: Envoy,
    /// Node-wide Connect defaults (`[connect]`).
    pub connect: ConnectDefaults,
    pub groups: Vec<Group>,
}

/// `[connect]`: what every Connect sidecar gets unless its `sidecar_task` says otherwise.
#[derive(Debug, Default)]
pub struct ConnectDefaults {
    /// `sidecar_driver`: the default of each `connect.sidecar_task.driver`.
    pub sidecar_driver: SidecarDriver,
}

/// Which proxy a Connect sidecar runs, and how (`connect.sidecar_task.driver`,
/// `connect.sidecar_driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SidecarDriver {
    /// Envoy, under the exec driver (its own view of the files, as Nomad's isolated drivers).
    #[default]
    Exec,
    /// Envoy, with the host's paths.
    RawExec,
    /// outpost's own L4 proxy (`outpost proxy`), under the exec driver.
    Builtin,
}

serialize_as_str!(SidecarDriver);

impl SidecarDriver {
    pub const CHOICES: [(&'static str, SidecarDriver); 3] = [
        ("exec", SidecarDriver::Exec),
        ("raw_exec", SidecarDriver::RawExec),
        ("builtin", SidecarDriver::Builtin),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SidecarDriver::Exec => "exec",
            SidecarDriver::RawExec => "raw_exec",
            SidecarDriver::Builtin => "builtin",
        }
    }

    /// The task driver the sidecar runs under.
    pub fn task_driver(self) -> &'static str {
        match self {
            SidecarDriver::RawExec => "raw_exec",
            SidecarDriver::Exec | SidecarDriver::Builtin => "exec",
        }
    }
}

#[derive(Debug)]
pub struct Agent {
    /// Defaults to the host name.
    pub node_name: Option<String>,
    pub data_dir: String,
    pub run_dir: String,
    pub log_level: String,
    /// The cgroup under which every task gets its own (Nomad's client `cgroup_parent`);
    /// default: `naming::default_cgroup_parent` of `run_dir`.
    pub cgroup_parent: Option<String>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            node_name: None,
            data_dir: "/var/lib/outpost".into(),
            run_dir: "/run/outpost".into(),
            log_level: "info".into(),
            cgroup_parent: None,
        }
    }
}

#[derive(Debug)]
pub struct Consul {
    /// `http://host:port`, `https://host:port` or `unix:///path`.
    pub address: String,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub tls_server_name: Option<String>,
    /// HTTP basic auth `user:pass` (Nomad's `consul.auth`, Consul's `CONSUL_HTTP_AUTH`).
    pub auth: Option<String>,
    /// Verify the agent's certificate (Nomad's `consul.verify_ssl`, default true; Consul's
    /// `CONSUL_HTTP_SSL_VERIFY=false` turns it off).
    pub verify_ssl: bool,
    /// Where Envoy's xDS stream goes; default: Consul's gRPC port from `/v1/agent/self`.
    pub grpc_address: Option<String>,
    pub grpc_ca_file: Option<String>,
    /// Consul's DNS as `ipv4:port`, reachable from the groups' namespaces; transparent
    /// proxies redirect DNS queries to it (Nomad's `consul.dns.addr`/`consul.dns.port`).
    pub dns_address: Option<String>,
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
            auth: None,
            verify_ssl: true,
            grpc_address: None,
            dns_address: None,
            grpc_ca_file: None,
            datacenter: None,
            namespace: None,
            sync_interval: Dur::secs(30),
            acl: Acl::default(),
            preflight: Preflight::default(),
        }
    }
}

/// Which token a service registers with (`consul.acl.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclMode {
    /// The configured token, for everything.
    AgentToken,
    /// A token per service from an auth-method login with a JWT (Nomad's workload identity).
    Login,
    /// A token per service with a service identity, made with the configured token.
    ServiceIdentity,
}

impl AclMode {
    pub const CHOICES: [(&'static str, AclMode); 3] = [
        ("agent-token", AclMode::AgentToken),
        ("login", AclMode::Login),
        ("service-identity", AclMode::ServiceIdentity),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AclMode::AgentToken => "agent-token",
            AclMode::Login => "login",
            AclMode::ServiceIdentity => "service-identity",
        }
    }
}

/// How Envoy's bootstrap is made (`envoy.bootstrap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapMode {
    /// Rendered in-process, as `consul connect envoy -bootstrap` would print it.
    Native,
    /// By running `consul connect envoy -bootstrap`, as Nomad does.
    ConsulCli,
}

impl BootstrapMode {
    pub const CHOICES: [(&'static str, BootstrapMode); 2] = [
        ("native", BootstrapMode::Native),
        ("consul-cli", BootstrapMode::ConsulCli),
    ];
}

#[derive(Debug)]
pub struct Acl {
    pub mode: AclMode,
    /// For `login`: the auth method (Nomad's default name).
    pub auth_method: String,
    /// For `login`: file holding the JWT presented to the auth method.
    pub jwt_file: Option<String>,
}

impl Default for Acl {
    fn default() -> Self {
        Acl {
            mode: AclMode::AgentToken,
            auth_method: "nomad-workloads".into(),
            jwt_file: None,
        }
    }
}

/// Nomad's `consul.token_preflight_check.*` and `consul.service_preflight_check.*` node meta.
#[derive(Debug)]
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

#[derive(Debug)]
pub struct Network {
    pub bridge: String,
    pub subnet: String,
    /// A second, IPv6 range for a dual-stack bridge (Nomad's `bridge_network_subnet_ipv6`).
    pub subnet_ipv6: Option<String>,
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
            subnet_ipv6: None,
            dynamic_ports: "20000-32000".into(),
            firewall: "nftables".into(),
            advertise_address: None,
        }
    }
}

#[derive(Debug)]
pub struct Envoy {
    pub binary: String,
    pub bootstrap: BootstrapMode,
    /// For `consul-cli`: the `consul` binary.
    pub consul_binary: String,
    pub log_level: String,
    pub concurrency: u16,
}

impl Default for Envoy {
    fn default() -> Self {
        Envoy {
            binary: "/usr/bin/envoy".into(),
            bootstrap: BootstrapMode::Native,
            consul_binary: "/usr/bin/consul".into(),
            log_level: "info".into(),
            concurrency: 1,
        }
    }
}

#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub network: Option<GroupNetwork>,
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
    /// Default for the group's tasks, including injected proxies.
    pub restart: Option<Restart>,
    /// Wait between deregistering the group's services and stopping its tasks.
    pub shutdown_delay: Dur,
    /// When a task fails for good (restart mode `fail`), the whole group stops and starts
    /// again after this back-off, as Nomad's scheduler would reschedule it.
    pub reschedule: Reschedule,
    pub meta: Env,
}

#[derive(Debug)]
pub struct GroupNetwork {
    /// `bridge` or `host` (Nomad's default is `host`).
    pub mode: String,
    pub ports: Vec<Port>,
    pub dns: Option<Dns>,
}

#[derive(Debug)]
pub struct Port {
    pub label: String,
    /// Host port; absent means a dynamic port from `network.dynamic_ports`.
    pub static_port: Option<u16>,
    /// Port inside the namespace; absent means the same as the host port.
    pub to: Option<u16>,
}

#[derive(Debug, Default)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    /// A port label of the group network, or a port number.
    pub port: Option<PortRef>,
    pub tags: Vec<String>,
    pub meta: Env,
    /// For Connect native services: the task that speaks Connect.
    pub task: Option<String>,
    pub checks: Vec<Check>,
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

#[derive(Debug)]
pub struct Check {
    pub name: Option<String>,
    /// `http`, `grpc`, `tcp`, `script` or `ttl`.
    pub check_type: String,
    pub port: Option<PortRef>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub method: Option<String>,
    pub header: BTreeMap<String, Vec<String>>,
    pub body: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    /// For `ttl` checks.
    pub ttl: Option<Dur>,
    /// Route the check through the sidecar (Nomad's `expose = true`).
    pub expose: bool,
    /// For `script` checks.
    pub command: Option<String>,
    pub args: Vec<String>,
    pub task: Option<String>,
    pub initial_status: Option<String>,
    pub tls_skip_verify: bool,
    pub tls_server_name: Option<String>,
    pub grpc_service: Option<String>,
    pub grpc_use_tls: bool,
    pub success_before_passing: u32,
    pub failures_before_critical: u32,
    pub failures_before_warning: u32,
}

#[derive(Debug, Default)]
pub struct Connect {
    pub native: bool,
    pub sidecar_service: Option<SidecarService>,
    pub sidecar_task: Option<SidecarTask>,
    pub gateway: Option<Gateway>,
}

impl Connect {
    /// The sidecar's own `sidecar_task.driver`, if it names one.
    pub fn own_driver(&self) -> Option<SidecarDriver> {
        self.sidecar_task.as_ref().and_then(|t| t.driver)
    }

    /// The driver the sidecar gets: its own, else the node's `connect.sidecar_driver`.
    pub fn driver(&self, node_default: SidecarDriver) -> SidecarDriver {
        self.own_driver().unwrap_or(node_default)
    }
}

#[derive(Debug, Default)]
pub struct SidecarService {
    /// Port label for the sidecar's public listener; default `connect-proxy-<service>`.
    pub port: Option<String>,
    pub tags: Vec<String>,
    pub meta: Env,
    pub disable_default_tcp_check: bool,
    pub proxy: Option<Proxy>,
}

#[derive(Debug, Default)]
pub struct Proxy {
    pub local_service_address: Option<String>,
    pub local_service_port: Option<u16>,
    /// Free-form `Proxy.Config` passed to Consul (and read by the bootstrap renderer).
    pub config: Object,
    pub upstreams: Vec<Upstream>,
    pub expose: Option<Expose>,
    pub transparent_proxy: Option<TransparentProxy>,
}

#[derive(Debug)]
pub struct Upstream {
    pub destination_name: String,
    pub destination_namespace: Option<String>,
    pub destination_partition: Option<String>,
    pub destination_peer: Option<String>,
    pub destination_type: Option<String>,
    pub local_bind_port: Option<u16>,
    pub local_bind_address: Option<String>,
    pub local_bind_socket_path: Option<String>,
    pub local_bind_socket_mode: Option<String>,
    pub datacenter: Option<String>,
    pub config: Object,
    pub mesh_gateway: Option<MeshGatewayMode>,
}

#[derive(Debug, Default)]
pub struct MeshGatewayMode {
    /// `local`, `remote` or `none`.
    pub mode: String,
}

#[derive(Debug, Default)]
pub struct Expose {
    pub paths: Vec<ExposePath>,
}

#[derive(Debug)]
pub struct ExposePath {
    pub path: String,
    pub protocol: String,
    pub local_path_port: u16,
    /// A port label of the group network.
    pub listener_port: String,
}

#[derive(Debug, Default)]
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
#[derive(Debug, Default)]
pub struct SidecarTask {
    pub name: Option<String>,
    /// Replaces `connect.sidecar_driver`.
    pub driver: Option<SidecarDriver>,
    /// Replaces `envoy.binary`.
    pub command: Option<String>,
    /// Replaces Nomad's default Envoy arguments.
    pub args: Option<Vec<String>>,
    pub env: Env,
    pub user: Option<String>,
    /// Capabilities beyond the user's default, and ones taken away (Nomad's exec driver
    /// `cap_add`/`cap_drop`; `caps.rs`).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub kill_timeout: Option<Dur>,
    pub kill_signal: Option<String>,
    pub shutdown_delay: Option<Dur>,
    pub logs: Option<Logs>,
    /// Replaces `Resources::PROXY`.
    pub resources: Option<Resources>,
}

#[derive(Debug, Default)]
pub struct Gateway {
    pub proxy: Option<GatewayProxy>,
    pub ingress: Option<Ingress>,
    pub terminating: Option<Terminating>,
    pub mesh: Option<Mesh>,
}

#[derive(Debug, Default)]
pub struct GatewayProxy {
    pub connect_timeout: Option<Dur>,
    pub envoy_gateway_bind_tagged_addresses: bool,
    pub envoy_gateway_bind_addresses: BTreeMap<String, BindAddress>,
    pub envoy_gateway_no_default_bind: bool,
    /// `STRICT_DNS` or `LOGICAL_DNS`.
    pub envoy_dns_discovery_type: Option<String>,
    pub config: Object,
}

#[derive(Debug)]
pub struct BindAddress {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Default)]
pub struct Ingress {
    pub tls: Option<IngressTls>,
    pub listeners: Vec<IngressListener>,
}

#[derive(Debug, Default)]
pub struct IngressTls {
    pub enabled: bool,
    pub tls_min_version: Option<String>,
    pub tls_max_version: Option<String>,
    pub cipher_suites: Vec<String>,
    pub sds: Option<Sds>,
}

/// Certificates from an SDS server Envoy knows (Consul's `SDS` of ingress TLS).
#[derive(Debug, Default)]
pub struct Sds {
    pub cluster_name: String,
    pub cert_resource: String,
}

/// Header changes on an ingress service's requests or responses.
#[derive(Debug, Default)]
pub struct HeaderChanges {
    pub add: Env,
    pub set: Env,
    pub remove: Vec<String>,
}

#[derive(Debug)]
pub struct IngressListener {
    pub port: u16,
    pub protocol: String,
    pub services: Vec<IngressService>,
}

#[derive(Debug)]
pub struct IngressService {
    pub name: String,
    pub hosts: Vec<String>,
    /// The service's own certificate (SDS), overriding the gateway's.
    pub tls_sds: Option<Sds>,
    pub request_headers: Option<HeaderChanges>,
    pub response_headers: Option<HeaderChanges>,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_concurrent_requests: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Terminating {
    pub services: Vec<LinkedService>,
}

#[derive(Debug)]
pub struct LinkedService {
    pub name: String,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub sni: Option<String>,
    /// Keep the caller's Host header (Consul's `DisableAutoHostRewrite`).
    pub disable_auto_host_rewrite: bool,
}

#[derive(Debug, Default)]
pub struct Mesh {}

#[derive(Debug)]
pub struct Task {
    pub name: String,
    /// `exec` or `raw_exec`: both fork/exec a host binary inside the group's namespace.
    pub driver: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: Env,
    /// The user the task runs as; `nobody` when not given (Nomad's exec driver default).
    pub user: Option<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub lifecycle: Option<Lifecycle>,
    /// Overrides the group's restart policy.
    pub restart: Option<Restart>,
    pub logs: Option<Logs>,
    pub shutdown_delay: Dur,
    pub kill_timeout: Dur,
    /// Nomad's default for exec tasks is SIGINT.
    pub kill_signal: String,
    pub resources: Resources,
}

/// Nomad's `resources` block: `cpu` in MHz (a weight), `memory` and `memory_max` in MB
/// (applied as `cgroup` describes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu: u32,
    pub memory: u32,
    pub memory_max: Option<u32>,
}

impl Resources {
    /// Nomad's task defaults.
    pub const TASK: Resources = Resources {
        cpu: 100,
        memory: 300,
        memory_max: None,
    };
    /// What Nomad gives injected sidecar and gateway tasks.
    pub const PROXY: Resources = Resources {
        cpu: 250,
        memory: 128,
        memory_max: None,
    };
}

#[derive(Debug)]
pub struct Lifecycle {
    /// `prestart`, `poststart` or `poststop`.
    pub hook: String,
    pub sidecar: bool,
}

/// Nomad's restart block; the defaults are those of a service job.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Nomad's reschedule block, as far as one node can follow it: exponential back-off,
/// unlimited; the defaults are those of a service job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reschedule {
    pub delay: Dur,
    pub max_delay: Dur,
}

impl Default for Reschedule {
    fn default() -> Self {
        Reschedule {
            delay: Dur::secs(30),
            max_delay: Dur::secs(60 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
