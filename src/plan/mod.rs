//! The plan: everything outpost will create, derived as a pure function of the validated
//! config, the node state (leases, dynamic ports) and a few host facts. No root, no network,
//! no clock. `outpost plan` prints it; `apply` and `run` make the host match it.

pub mod env;
mod leases;
pub mod render;

use crate::config::locate::Seg;
use crate::config::naming::{
    GatewayKind, NETNS_DIR, alloc_id, envoy_ports, expose_check_label, gateway_kind, has_sidecar,
    host_veth_name, netns_name, service_id, service_port, sidecar_label,
};
use crate::config::validate::{PROXY_PREFIX, Problem};
use crate::config::{Dur, Group, Logs, Restart, Service, ValidConfig};
pub use crate::net::spec::{
    BridgePlan, Firewall, GroupNet, HostFacts, NetnsPlan, PortPlan, TproxyPlan,
};
use crate::path;
use crate::state::{self, NodeState};
use env::EnvMap;
use leases::PortRequest;
use miniserde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub node_name: String,
    pub advertise_address: String,
    pub advertise_address_source: String,
    pub data_dir: String,
    pub run_dir: String,
    pub bridge: BridgePlan,
    pub dynamic_ports: String,
    pub groups: Vec<GroupPlan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReschedulePlan {
    pub delay: Dur,
    pub max_delay: Dur,
}

#[derive(Debug, Serialize)]
pub struct GroupPlan {
    pub name: String,
    pub alloc_id: String,
    pub mode: String,
    pub netns: Option<NetnsPlan>,
    /// Routes inside the namespace.
    pub routes: Vec<String>,
    /// The port-mapping rules this group adds (nft syntax), if the firewall is ours.
    pub firewall_rules: Vec<String>,
    pub alloc_dir: String,
    pub shutdown_delay: Dur,
    /// The back-off before the group starts again after a task failed for good.
    pub reschedule: ReschedulePlan,
    pub ports: Vec<PortPlan>,
    pub services: Vec<ServicePlan>,
    pub tasks: Vec<TaskPlan>,
    /// Transparent proxy redirection inside the namespace, if a sidecar asks for it.
    pub tproxy: Option<TproxyPlan>,
}

#[derive(Debug, Serialize)]
pub struct ServicePlan {
    pub name: String,
    pub id: String,
    /// `sidecar`, `native`, `gateway` or `none`.
    pub connect: String,
    /// The port registered in Consul: the host port of a label, or the number as written.
    pub port: Option<u16>,
    /// The service's Envoy: its sidecar proxy, or the gateway itself.
    pub proxy: Option<ProxyPlan>,
    /// The body of `PUT /v1/agent/service/register` (null for none).
    pub registration: miniserde::json::Value,
    /// The ingress-gateway or terminating-gateway config entry outpost writes with
    /// `PUT /v1/config` (null for other services).
    pub config_entry: miniserde::json::Value,
}

#[derive(Debug, Serialize)]
pub struct ProxyPlan {
    /// The proxy ID Envoy bootstraps as: the sidecar's, or the gateway service's own.
    pub id: String,
    pub name: String,
    /// The gateway's kind (`-gateway`); none for a sidecar.
    pub gateway: Option<GatewayKind>,
    /// The sidecar's public port, or the gateway's service port (its WAN port for mesh).
    pub port_label: String,
    pub host_port: u16,
    pub netns_port: u16,
    pub envoy_admin: String,
    pub envoy_ready: String,
    pub task: String,
}

#[derive(Debug, Serialize)]
pub struct TaskPlan {
    pub name: String,
    /// Nomad's task kind, e.g. `connect-proxy:count-api`, for injected tasks.
    pub kind: Option<String>,
    pub injected: bool,
    pub lifecycle: Lifecycle,
    pub driver: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Always set once planned: the config's, else `TASK_USER` or `ENVOY_UID`.
    pub user: Option<String>,
    /// The capabilities the task keeps (`caps::for_task`).
    pub capabilities: Vec<String>,
    pub dir: String,
    pub kill_signal: KillSignal,
    pub kill_timeout: Dur,
    pub shutdown_delay: Dur,
    pub logs: LogsPlan,
    pub restart: RestartPlan,
}

/// When a task runs in its group's life (Nomad's `lifecycle` block). Shown and serialized
/// as Nomad writes it: `main`, `prestart`, `prestart sidecar`, `poststart`, …
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Runs to completion (exit 0) before the main tasks start.
    Prestart,
    /// Starts first and runs beside the group (Envoy).
    PrestartSidecar,
    Main,
    /// Starts with the main tasks and may exit.
    Poststart,
    /// Starts with the main tasks and runs beside them.
    PoststartSidecar,
    /// Runs to completion once the main tasks have stopped.
    Poststop,
}

impl Lifecycle {
    fn from_hook(hook: &str, sidecar: bool) -> Lifecycle {
        match (hook, sidecar) {
            ("prestart", true) => Lifecycle::PrestartSidecar,
            ("prestart", false) => Lifecycle::Prestart,
            ("poststart", true) => Lifecycle::PoststartSidecar,
            ("poststart", false) => Lifecycle::Poststart,
            ("poststop", _) => Lifecycle::Poststop,
            // validate refuses any other hook.
            _ => Lifecycle::Main,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Prestart => "prestart",
            Lifecycle::PrestartSidecar => "prestart sidecar",
            Lifecycle::Main => "main",
            Lifecycle::Poststart => "poststart",
            Lifecycle::PoststartSidecar => "poststart sidecar",
            Lifecycle::Poststop => "poststop",
        }
    }

    /// Runs as long as the group does, restarted even after exit 0.
    pub fn is_sidecar(self) -> bool {
        matches!(
            self,
            Lifecycle::PrestartSidecar | Lifecycle::PoststartSidecar
        )
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Lifecycle {
    fn begin(&self) -> miniserde::ser::Fragment<'_> {
        miniserde::ser::Fragment::Str(std::borrow::Cow::Borrowed(self.as_str()))
    }
}

#[derive(Debug, Serialize)]
pub struct LogsPlan {
    pub max_files: u32,
    pub max_file_size_mb: u32,
}

#[derive(Debug, Serialize)]
pub struct RestartPlan {
    pub attempts: u32,
    pub interval: Dur,
    pub delay: Dur,
    pub mode: RestartMode,
}

/// What the restart policy does once `attempts` are used within `interval` (Nomad's
/// `restart.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartMode {
    /// The task fails, and with it the group (rescheduled).
    Fail,
    /// The task waits for the interval to end, then starts again.
    Delay,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Fail => "fail",
            RestartMode::Delay => "delay",
        }
    }
}

impl Serialize for RestartMode {
    fn begin(&self) -> miniserde::ser::Fragment<'_> {
        miniserde::ser::Fragment::Str(std::borrow::Cow::Borrowed(self.as_str()))
    }
}

/// The signal that asks a task to stop (validated against `KILL_SIGNALS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillSignal(pub nix::sys::signal::Signal);

impl std::fmt::Display for KillSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl Serialize for KillSignal {
    fn begin(&self) -> miniserde::ser::Fragment<'_> {
        miniserde::ser::Fragment::Str(std::borrow::Cow::Borrowed(self.0.as_str()))
    }
}

impl GroupPlan {
    /// What the network makes for this group.
    pub fn net(&self) -> GroupNet<'_> {
        GroupNet {
            name: &self.name,
            netns: self.netns.as_ref(),
            ports: &self.ports,
            tproxy: self.tproxy.as_ref(),
        }
    }
}

impl Plan {
    /// Every group as the network sees it.
    pub fn net_groups(&self) -> Vec<GroupNet<'_>> {
        self.groups.iter().map(GroupPlan::net).collect()
    }

    /// The same node-level plan with no groups (what remains once everything is removed).
    pub fn without_groups(&self) -> Plan {
        Plan {
            node_name: self.node_name.clone(),
            advertise_address: self.advertise_address.clone(),
            advertise_address_source: self.advertise_address_source.clone(),
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            bridge: self.bridge.clone(),
            dynamic_ports: self.dynamic_ports.clone(),
            groups: Vec::new(),
        }
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Port labels Nomad injects for a service's proxy or gateway (§1.4), and for its checks
/// exposed through the sidecar (§1.6).
fn injected_labels(service: &Service) -> Vec<String> {
    match gateway_kind(service) {
        _ if has_sidecar(service) => {
            let mut labels = vec![sidecar_label(service)];
            for (ci, check) in service.checks.iter().enumerate() {
                if check.expose && check.port.is_none() {
                    labels.push(expose_check_label(service, ci));
                }
            }
            labels
        }
        Some(GatewayKind::Terminating) => service_port(service).into_iter().collect(),
        Some(GatewayKind::Mesh) => vec![format!("connect-mesh-{}-lan", service.name)],
        Some(GatewayKind::Ingress) | None => Vec::new(),
    }
}

/// The state a plan implies: each group's lease and dynamic ports.
pub fn node_state(plan: &Plan) -> NodeState {
    let groups = plan
        .groups
        .iter()
        .map(|g| {
            let state = state::GroupState {
                address: g
                    .netns
                    .as_ref()
                    .and_then(|ns| ns.address.split('/').next())
                    .map(str::to_string),
                ports: g
                    .ports
                    .iter()
                    .filter(|p| p.dynamic)
                    .map(|p| (p.label.clone(), p.host_port))
                    .collect(),
            };
            (g.name.clone(), state)
        })
        .collect();
    NodeState {
        version: state::VERSION,
        groups,
    }
}

/// Builds the plan. Errors are resource exhaustion (no free address or port).
pub fn build(valid: &ValidConfig, state: &NodeState, host: &HostFacts) -> Result<Plan, String> {
    build_checked(valid, state, host).map(|(plan, _)| plan)
}

/// `${…}` references in task env, args and commands that name no variable, as config
/// problems. Variable names do not depend on state or host, so placeholders suffice.
pub fn unresolved_references(valid: &ValidConfig) -> Vec<Problem> {
    match build_checked(
        valid,
        &<NodeState as Default>::default(),
        &HostFacts::placeholder(),
    ) {
        Ok((_, problems)) => problems,
        Err(_) => Vec::new(),
    }
}

fn build_checked(
    valid: &ValidConfig,
    state: &NodeState,
    host: &HostFacts,
) -> Result<(Plan, Vec<Problem>), String> {
    let cfg = &valid.config;
    let node_name = cfg
        .agent
        .node_name
        .clone()
        .unwrap_or_else(|| host.hostname.clone());
    let (advertise, advertise_source) = match valid.advertise_address {
        Some(ip) => (ip, "network.advertise_address".to_string()),
        None => (host.default_address, host.default_address_source.clone()),
    };
    let bridge_groups: Vec<&str> = cfg
        .groups
        .iter()
        .filter(|g| is_bridge(g))
        .map(|g| g.name.as_str())
        .collect();
    let leases = leases::lease_addresses(valid.subnet, &bridge_groups, state)?;
    let mut ports = plan_ports(valid, state, host)?;
    let ctx = Context {
        valid,
        node_name: &node_name,
        advertise: advertise.to_string(),
    };
    let mut problems = Vec::new();
    let mut groups = Vec::new();
    for (gi, group) in cfg.groups.iter().enumerate() {
        let group_ports = ports.remove(&group.name).unwrap_or_default();
        let lease = leases.get(&group.name).copied();
        groups.push(ctx.group(gi, group, group_ports, lease, &mut problems));
    }
    let (low, high) = valid.dynamic_ports;
    let firewall = Firewall::from_config(&cfg.network.firewall);
    let ours = firewall == Firewall::Nftables;
    if ours {
        for group in &mut groups {
            group.firewall_rules = crate::net::group_mappings(&group.net())
                .iter()
                .flat_map(crate::net::firewall::describe_mapping)
                .collect();
        }
    }
    let shared_rules = crate::net::firewall::describe_shared(&crate::net::firewall::NatSpec {
        bridge: cfg.network.bridge.clone(),
        subnet: valid.subnet,
        mappings: Vec::new(),
    });
    let plan = Plan {
        node_name: node_name.clone(),
        advertise_address: advertise.to_string(),
        advertise_address_source: advertise_source,
        data_dir: cfg.agent.data_dir.clone(),
        run_dir: cfg.agent.run_dir.clone(),
        bridge: BridgePlan {
            name: cfg.network.bridge.clone(),
            address: format!("{}/{}", valid.subnet.gateway(), valid.subnet.prefix),
            subnet: valid.subnet,
            firewall,
            firewall_rules: if ours { shared_rules } else { Vec::new() },
        },
        dynamic_ports: format!("{low}-{high}"),
        groups,
    };
    Ok((plan, problems))
}

fn is_bridge(group: &Group) -> bool {
    group.network.as_ref().is_some_and(|n| n.mode == "bridge")
}

/// Every group's ports (written and injected), with dynamic host ports allocated.
fn plan_ports(
    valid: &ValidConfig,
    state: &NodeState,
    host: &HostFacts,
) -> Result<BTreeMap<String, Vec<PortPlan>>, String> {
    let cfg = &valid.config;
    let mut by_group: BTreeMap<String, Vec<PortPlan>> = BTreeMap::new();
    let mut requests = Vec::new();
    let mut request_slots = Vec::new();
    let mut used_static = BTreeSet::new();
    for group in &cfg.groups {
        let mut list = Vec::new();
        let written = group.network.iter().flat_map(|n| n.ports.iter());
        for port in written {
            if let Some(host) = port.static_port {
                used_static.insert(host);
            }
            list.push(PortPlan {
                label: port.label.clone(),
                host_port: port.static_port.unwrap_or(0),
                netns_port: port.to.or(port.static_port).unwrap_or(0),
                dynamic: port.static_port.is_none(),
                injected: false,
            });
        }
        for label in group.services.iter().flat_map(injected_labels) {
            if !list.iter().any(|p| p.label == label) {
                list.push(PortPlan {
                    label,
                    host_port: 0,
                    netns_port: 0,
                    dynamic: true,
                    injected: true,
                });
            }
        }
        let avoid = netns_listeners(group, &list);
        for (pi, port) in list.iter().enumerate() {
            if port.dynamic {
                requests.push(PortRequest {
                    group: group.name.clone(),
                    label: port.label.clone(),
                    // Only a port whose namespace side follows the host side can clash
                    // inside; a mapped host port must not be one a host service uses.
                    avoid: match (is_bridge(group), port.netns_port) {
                        (true, 0) => avoid.union(&host.listening_ports).copied().collect(),
                        (true, _) => host.listening_ports.clone(),
                        (false, _) => BTreeSet::new(),
                    },
                });
                request_slots.push((group.name.clone(), pi));
            }
        }
        by_group.insert(group.name.clone(), list);
    }
    let allocated = leases::allocate_ports(valid.dynamic_ports, &used_static, &requests, state)?;
    for ((group, pi), host) in request_slots.into_iter().zip(allocated) {
        if let Some(port) = by_group.get_mut(&group).and_then(|l| l.get_mut(pi)) {
            port.host_port = host;
            if port.netns_port == 0 {
                port.netns_port = host;
            }
        }
    }
    Ok(by_group)
}

/// Ports already listened on inside a bridge group's namespace: mapped ports, upstream
/// listeners and Envoy's admin and ready listeners.
fn netns_listeners(group: &Group, ports: &[PortPlan]) -> BTreeSet<u16> {
    let mut set: BTreeSet<u16> = ports
        .iter()
        .map(|p| p.netns_port)
        .filter(|p| *p > 0)
        .collect();
    for (si, service) in group.services.iter().enumerate() {
        if !has_sidecar(service) && gateway_kind(service).is_none() {
            continue;
        }
        let (admin, ready) = envoy_ports(si);
        set.extend([admin, ready]);
        let upstreams = service
            .connect
            .as_ref()
            .and_then(|c| c.sidecar_service.as_ref())
            .and_then(|s| s.proxy.as_ref())
            .map(|p| p.upstreams.as_slice())
            .unwrap_or_default();
        set.extend(upstreams.iter().filter_map(|u| u.local_bind_port));
    }
    set
}

struct Context<'a> {
    valid: &'a ValidConfig,
    node_name: &'a str,
    advertise: String,
}

impl Context<'_> {
    fn group(
        &self,
        gi: usize,
        group: &Group,
        ports: Vec<PortPlan>,
        lease: Option<Ipv4Addr>,
        problems: &mut Vec<Problem>,
    ) -> GroupPlan {
        let cfg = &self.valid.config;
        let alloc_dir = format!("{}/alloc/{}", cfg.agent.run_dir, group.name);
        let alloc_id = alloc_id(self.node_name, &group.name);
        let netns = lease.map(|ip| NetnsPlan {
            name: netns_name(&group.name),
            path: format!("{NETNS_DIR}/{}", netns_name(&group.name)),
            host_veth: host_veth_name(&group.name),
            interface: "eth0".into(),
            address: format!("{ip}/{}", self.valid.subnet.prefix),
            gateway: self.valid.subnet.gateway().to_string(),
        });
        let services: Vec<ServicePlan> = group
            .services
            .iter()
            .enumerate()
            .map(|(si, s)| self.service(group, si, s, &ports, &alloc_id))
            .collect();
        let group_env = self.group_env(group, &alloc_id, &alloc_dir, &ports, lease);
        let restart = group.restart.clone().unwrap_or_default();
        let mut tasks = Vec::new();
        for (ti, task) in group.tasks.iter().enumerate() {
            let lifecycle = task.lifecycle.as_ref().map_or(Lifecycle::Main, |l| {
                Lifecycle::from_hook(&l.hook, l.sidecar)
            });
            let spec = TaskSpec {
                name: task.name.clone(),
                kind: None,
                lifecycle,
                driver: task.driver.clone(),
                command: task.command.clone(),
                args: task.args.clone(),
                user_env: &task.env,
                extra_env: EnvMap::new(),
                user: task.user.clone(),
                cap_add: task.cap_add.clone(),
                cap_drop: task.cap_drop.clone(),
                kill_signal: task.kill_signal.clone(),
                kill_timeout: task.kill_timeout,
                shutdown_delay: task.shutdown_delay,
                logs: task.logs.unwrap_or_default(),
                restart: task.restart.clone().unwrap_or_else(|| restart.clone()),
                config_path: path!["group", gi, "task", ti],
            };
            tasks.push(self.task(spec, &alloc_dir, &group_env, problems));
        }
        for (si, (service, planned)) in group.services.iter().zip(&services).enumerate() {
            if let Some(proxy) = &planned.proxy {
                let spec = self.proxy_task(gi, si, service, proxy, &restart);
                tasks.push(self.task(spec, &alloc_dir, &group_env, problems));
            }
        }
        let tproxy = self.tproxy(group, &services, &ports);
        if let Some(t) = &tproxy {
            // Envoy runs as the proxy uid, so its own connections are not redirected.
            let proxy_task = services
                .iter()
                .find_map(|s| s.proxy.as_ref().map(|p| &p.task));
            for task in tasks
                .iter_mut()
                .filter(|task| Some(&task.name) == proxy_task)
            {
                // Unless its sidecar_task names a user (the default is also non-root).
                if task.user.as_deref() == Some(ENVOY_UID) {
                    task.user = Some(t.proxy_uid.clone());
                }
            }
        }

        let routes = match &netns {
            Some(ns) => vec![format!("default via {} dev {}", ns.gateway, ns.interface)],
            None => Vec::new(),
        };
        GroupPlan {
            name: group.name.clone(),
            alloc_id,
            mode: group
                .network
                .as_ref()
                .map_or("host".into(), |n| n.mode.clone()),
            netns,
            routes,
            firewall_rules: Vec::new(),
            alloc_dir,
            shutdown_delay: group.shutdown_delay,
            reschedule: ReschedulePlan {
                delay: group.reschedule.delay,
                max_delay: group.reschedule.max_delay,
            },
            ports,
            services,
            tasks,
            tproxy,
        }
    }

    /// The transparent proxy of a bridge group: the first sidecar with `transparent_proxy`
    /// (validation allows one connect block with it).
    fn tproxy(
        &self,
        group: &Group,
        services: &[ServicePlan],
        ports: &[PortPlan],
    ) -> Option<TproxyPlan> {
        if !is_bridge(group) {
            return None;
        }
        let (si, tp) = group.services.iter().enumerate().find_map(|(si, s)| {
            let proxy = s
                .connect
                .as_ref()?
                .sidecar_service
                .as_ref()?
                .proxy
                .as_ref()?;
            Some((si, proxy.transparent_proxy.as_ref()?))
        })?;
        let netns_port_of = |label: &str| {
            ports
                .iter()
                .find(|p| p.label == label)
                .map(|p| p.netns_port)
        };
        let mut inbound = BTreeSet::new();
        for port in ports.iter().filter(|p| !p.dynamic) {
            inbound.insert(port.netns_port.to_string());
        }
        for port in &tp.exclude_inbound_ports {
            match netns_port_of(port) {
                Some(p) => inbound.insert(p.to_string()),
                None => inbound.insert(port.clone()),
            };
        }
        for port in expose_listener_ports(&services[si].registration) {
            inbound.insert(port.to_string());
        }
        let mut plan = TproxyPlan {
            proxy_uid: tp.uid.clone().unwrap_or_else(|| "101".into()),
            inbound_port: services[si].proxy.as_ref().map_or(0, |p| p.netns_port),
            outbound_port: tp.outbound_port.unwrap_or(15001),
            exclude_inbound_ports: inbound.into_iter().collect(),
            exclude_outbound_ports: tp.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: tp.exclude_outbound_cidrs.clone(),
            exclude_uids: tp.exclude_uids.clone(),
            dns: match tp.no_dns {
                true => None,
                false => self.valid.config.consul.dns_address.clone(),
            },
            rules: Vec::new(),
        };
        plan.rules = crate::net::tproxy::describe(&plan);
        Some(plan)
    }

    fn service(
        &self,
        group: &Group,
        si: usize,
        service: &Service,
        ports: &[PortPlan],
        alloc_id: &str,
    ) -> ServicePlan {
        let id = service_id(&group.name, service);
        let port = service_port(service).and_then(|p| {
            ports
                .iter()
                .find(|planned| planned.label == p)
                .map(|planned| planned.host_port)
                .or_else(|| p.parse().ok())
        });
        let connect = match &service.connect {
            None => "none",
            Some(c) if c.sidecar_service.is_some() => "sidecar",
            Some(c) if c.gateway.is_some() => "gateway",
            Some(_) => "native",
        };
        let gateway = gateway_kind(service);
        let proxy = (has_sidecar(service) || gateway.is_some()).then(|| {
            let (label, proxy_id, name, prefix) = match gateway {
                None => (
                    sidecar_label(service),
                    format!("{id}-sidecar-proxy"),
                    format!("{}-sidecar-proxy", service.name),
                    PROXY_PREFIX.to_string(),
                ),
                Some(kind) => (
                    service_port(service).unwrap_or_default(),
                    id.clone(),
                    service.name.clone(),
                    format!("connect-{kind}"),
                ),
            };
            let planned = ports.iter().find(|p| p.label == label);
            let (admin, ready) = envoy_ports(si);
            let task = service
                .connect
                .as_ref()
                .and_then(|c| c.sidecar_task.as_ref())
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| format!("{prefix}-{}", service.name));
            ProxyPlan {
                id: proxy_id,
                name,
                gateway,
                port_label: label,
                host_port: planned.map_or(0, |p| p.host_port),
                netns_port: planned.map_or(0, |p| p.netns_port),
                envoy_admin: format!("127.0.0.2:{admin}"),
                envoy_ready: format!("127.0.0.1:{ready}"),
                task,
            }
        });
        let host_port_of =
            |label: &str| ports.iter().find(|p| p.label == label).map(|p| p.host_port);
        let netns_port_of = |label: &str| {
            ports
                .iter()
                .find(|p| p.label == label)
                .map(|p| p.netns_port)
        };
        use crate::consul::registration as reg;
        let inputs = reg::ServiceInputs {
            service,
            id: &id,
            port,
            local_port: service_port(service)
                .and_then(|p| netns_port_of(&p).or_else(|| p.parse().ok())),
            port_is_label: service_port(service)
                .is_some_and(|p| ports.iter().any(|planned| planned.label == p)),
            advertise: &self.advertise,
            host_port_of: &host_port_of,
            sidecar: proxy
                .as_ref()
                .filter(|p| p.gateway.is_none())
                .map(|s| reg::SidecarInputs {
                    host_port: s.host_port,
                    netns_port: s.netns_port,
                }),
            stats_tags: vec![
                format!("nomad.alloc_id={alloc_id}"),
                format!("nomad.group={}", group.name),
                format!("nomad.job={}", self.node_name),
                "nomad.namespace=default".to_string(),
            ],
        };
        let (registration, config_entry) =
            match service.connect.as_ref().and_then(|c| c.gateway.as_ref()) {
                Some(gw) => {
                    let bridge = is_bridge(group);
                    (
                        crate::consul::gateway::service_body(&inputs, gw, bridge, &netns_port_of),
                        crate::consul::gateway::config_entry(service, gw, self.node_name),
                    )
                }
                None => (reg::service_body(&inputs), miniserde::json::Value::Null),
            };
        ServicePlan {
            name: service.name.clone(),
            id,
            connect: connect.into(),
            port,
            proxy,
            registration,
            config_entry,
        }
    }

    /// Variables every task of the group gets (§8.1–8.3).
    fn group_env(
        &self,
        group: &Group,
        alloc_id: &str,
        alloc_dir: &str,
        ports: &[PortPlan],
        lease: Option<Ipv4Addr>,
    ) -> EnvMap {
        let cfg = &self.valid.config;
        let mut env = EnvMap::new();
        let job = self.node_name;
        let mut set = |k: &str, v: &str| env.insert(k.to_string(), v.to_string());
        set("NOMAD_ALLOC_DIR", &format!("{alloc_dir}/alloc"));
        set("NOMAD_ALLOC_ID", alloc_id);
        set("NOMAD_SHORT_ALLOC_ID", &alloc_id[..8]);
        set("NOMAD_ALLOC_NAME", &format!("{job}.{}[0]", group.name));
        set("NOMAD_ALLOC_INDEX", "0");
        set("NOMAD_GROUP_NAME", &group.name);
        set("NOMAD_JOB_ID", job);
        set("NOMAD_JOB_NAME", job);
        set("NOMAD_NAMESPACE", "default");
        set("NOMAD_REGION", "global");
        set(
            "NOMAD_DC",
            cfg.consul.datacenter.as_deref().unwrap_or("dc1"),
        );
        set("PATH", DEFAULT_PATH);
        for (key, value) in &group.meta {
            env.insert(format!("NOMAD_META_{key}"), value.clone());
            env.insert(format!("NOMAD_META_{}", key.to_uppercase()), value.clone());
        }
        let alloc_ip = lease.map(|ip| ip.to_string());
        for port in ports {
            env::add_port(
                &mut env,
                &env::PortVars {
                    label: &port.label,
                    host_ip: &self.advertise,
                    host_port: port.host_port,
                    netns_port: port.netns_port,
                    alloc_ip: alloc_ip.as_deref(),
                },
            );
        }
        let upstreams = group
            .services
            .iter()
            .filter_map(|s| s.connect.as_ref()?.sidecar_service.as_ref()?.proxy.as_ref())
            .flat_map(|p| p.upstreams.iter());
        for up in upstreams {
            if let Some(port) = up.local_bind_port {
                env::add_upstream(&mut env, &up.destination_name, port);
            }
        }
        env::clean_prefixed_keys(env)
    }

    fn proxy_task<'s>(
        &self,
        gi: usize,
        si: usize,
        service: &'s Service,
        proxy: &ProxyPlan,
        restart: &Restart,
    ) -> TaskSpec<'s> {
        let envoy = &self.valid.config.envoy;
        let overrides = service
            .connect
            .as_ref()
            .and_then(|c| c.sidecar_task.as_ref());
        let default_args = vec![
            "-c".to_string(),
            "${NOMAD_SECRETS_DIR}/envoy_bootstrap.json".into(),
            "-l".into(),
            envoy.log_level.clone(),
            "--concurrency".into(),
            envoy.concurrency.to_string(),
            "--disable-hot-restart".into(),
        ];
        let cleaned = env::clean(&service.name);
        let mut extra_env = EnvMap::new();
        extra_env.insert(
            format!("NOMAD_ENVOY_ADMIN_ADDR_{cleaned}"),
            proxy.envoy_admin.clone(),
        );
        extra_env.insert(
            format!("NOMAD_ENVOY_READY_ADDR_{cleaned}"),
            proxy.envoy_ready.clone(),
        );
        static NO_ENV: EnvMap = EnvMap::new();
        // A gateway is the group's main task; a sidecar starts before the group's tasks
        // and runs beside them (§1.2, §1.3).
        let (kind, lifecycle) = match &proxy.gateway {
            Some(gw) => (format!("connect-{gw}:{}", service.name), Lifecycle::Main),
            None => (
                format!("{PROXY_PREFIX}:{}", service.name),
                Lifecycle::PrestartSidecar,
            ),
        };
        TaskSpec {
            name: proxy.task.clone(),
            kind: Some(kind),
            lifecycle,
            driver: "exec".into(),
            command: overrides
                .and_then(|t| t.command.clone())
                .unwrap_or_else(|| envoy.binary.clone()),
            args: overrides
                .and_then(|t| t.args.clone())
                .unwrap_or(default_args),
            user_env: overrides.map_or(&NO_ENV, |t| &t.env),
            extra_env,
            user: overrides.and_then(|t| t.user.clone()),
            cap_add: overrides.map_or_else(Vec::new, |t| t.cap_add.clone()),
            cap_drop: overrides.map_or_else(Vec::new, |t| t.cap_drop.clone()),
            // Envoy drains on SIGTERM; Nomad's docker driver sends the same by default.
            kill_signal: overrides
                .and_then(|t| t.kill_signal.clone())
                .unwrap_or_else(|| "SIGTERM".into()),
            kill_timeout: overrides
                .and_then(|t| t.kill_timeout)
                .unwrap_or(Dur::secs(5)),
            shutdown_delay: overrides
                .and_then(|t| t.shutdown_delay)
                .unwrap_or(Dur::secs(5)),
            logs: overrides.and_then(|t| t.logs).unwrap_or(Logs::PROXY),
            restart: restart.clone(),
            config_path: path!["group", gi, "service", si, "connect", "sidecar_task"],
        }
    }

    fn task(
        &self,
        spec: TaskSpec,
        alloc_dir: &str,
        group_env: &EnvMap,
        problems: &mut Vec<Problem>,
    ) -> TaskPlan {
        let dir = format!("{alloc_dir}/{}", spec.name);
        let (user, capabilities) = user_and_capabilities(&spec);
        let kill_signal = match spec.kill_signal.parse() {
            Ok(signal) => KillSignal(signal),
            Err(_) => {
                // validate refuses these; the plan says so rather than guess one.
                let mut at = spec.config_path.clone();
                at.push(Seg::Key("kill_signal"));
                problems.push(Problem {
                    path: at,
                    target: crate::config::locate::Target::Value,
                    message: format!("kill_signal \"{}\" is not a signal", spec.kill_signal),
                });
                KillSignal(nix::sys::signal::Signal::SIGTERM)
            }
        };
        let mut vars = group_env.clone();
        vars.insert("NOMAD_TASK_NAME".into(), spec.name.clone());
        vars.insert("NOMAD_TASK_DIR".into(), format!("{dir}/local"));
        vars.insert("NOMAD_SECRETS_DIR".into(), format!("{dir}/secrets"));
        vars.extend(spec.extra_env);
        let node = [
            ("node.unique.name", self.node_name.to_string()),
            (
                "node.datacenter",
                vars.get("NOMAD_DC").cloned().unwrap_or_default(),
            ),
            ("node.region", "global".to_string()),
        ];
        let mut lookup = vars.clone();
        lookup.extend(node.into_iter().map(|(k, v)| (k.to_string(), v)));

        let mut report = |at: Vec<Seg>, names: Vec<String>| {
            for name in names {
                problems.push(Problem {
                    path: at.clone(),
                    target: crate::config::locate::Target::Value,
                    message: format!(
                        "${{{name}}} is not a variable task \"{}\" has (write $${{ for a literal ${{)",
                        spec.name
                    ),
                });
            }
        };
        let sub = |key: Seg| {
            let mut p = spec.config_path.clone();
            p.push(key);
            p
        };
        let mut missing = Vec::new();
        let command = env::interpolate(&spec.command, &lookup, &mut missing);
        report(sub(Seg::Key("command")), std::mem::take(&mut missing));
        let mut argv = vec![command];
        for (i, arg) in spec.args.iter().enumerate() {
            argv.push(env::interpolate(arg, &lookup, &mut missing));
            let mut at = sub(Seg::Key("args"));
            at.push(Seg::Index(i));
            report(at, std::mem::take(&mut missing));
        }
        for (key, value) in spec.user_env {
            let resolved = env::interpolate(value, &lookup, &mut missing);
            let mut at = sub(Seg::Key("env"));
            at.push(Seg::Name(key.clone()));
            report(at, std::mem::take(&mut missing));
            vars.insert(key.clone(), resolved);
        }
        TaskPlan {
            name: spec.name,
            kind: spec.kind.clone(),
            injected: spec.kind.is_some(),
            lifecycle: spec.lifecycle,
            driver: spec.driver,
            argv,
            env: vars,
            user: Some(user),
            capabilities,
            dir,
            kill_signal,
            kill_timeout: spec.kill_timeout,
            shutdown_delay: spec.shutdown_delay,
            logs: LogsPlan {
                max_files: spec.logs.max_files,
                max_file_size_mb: spec.logs.max_file_size,
            },
            restart: RestartPlan {
                attempts: spec.restart.attempts,
                interval: spec.restart.interval,
                delay: spec.restart.delay,
                mode: match spec.restart.mode.as_str() {
                    "delay" => RestartMode::Delay,
                    _ => RestartMode::Fail,
                },
            },
        }
    }
}

/// `Connect.SidecarService.Proxy.Expose.Paths[].ListenerPort` of a registration body.
fn expose_listener_ports(body: &miniserde::json::Value) -> Vec<u64> {
    use miniserde::json::{Number, Value};
    let mut at = body;
    for key in ["Connect", "SidecarService", "Proxy", "Expose", "Paths"] {
        match at {
            Value::Object(o) => match o.get(key) {
                Some(v) => at = v,
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        }
    }
    let Value::Array(paths) = at else {
        return Vec::new();
    };
    paths
        .iter()
        .filter_map(|p| match p {
            Value::Object(o) => match o.get("ListenerPort") {
                Some(Value::Number(Number::U64(n))) => Some(*n),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A task before interpolation: written by the user or injected.
/// Who a task runs as when the config does not say (DESIGN.md, trust model): Nomad's exec
/// driver's `nobody` for the group's own tasks; Envoy gets a user of its own, Nomad's
/// transparent-proxy default uid (the envoy image's user), so the group's tasks cannot read
/// its bootstrap or its memory. Then the capabilities that user keeps (`caps`).
fn user_and_capabilities(spec: &TaskSpec) -> (String, Vec<String>) {
    let default = if spec.kind.is_some() {
        ENVOY_UID
    } else {
        TASK_USER
    };
    let user = spec.user.clone().unwrap_or_else(|| default.to_string());
    let root = user == "root" || user == "0";
    let caps = crate::caps::for_task(root, &spec.cap_add, &spec.cap_drop)
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    (user, caps)
}

/// The user of tasks that name none.
pub const TASK_USER: &str = "nobody";
/// Envoy's uid when its task names none (Nomad's `transparent_proxy.uid` default).
pub const ENVOY_UID: &str = "101";

struct TaskSpec<'a> {
    name: String,
    kind: Option<String>,
    lifecycle: Lifecycle,
    driver: String,
    command: String,
    args: Vec<String>,
    user_env: &'a EnvMap,
    extra_env: EnvMap,
    user: Option<String>,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    kill_signal: String,
    kill_timeout: Dur,
    shutdown_delay: Dur,
    logs: Logs,
    restart: Restart,
    config_path: Vec<Seg>,
}
