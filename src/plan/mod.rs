//! The plan: everything outpost will create, derived as a pure function of the validated
//! config, the node state (leases, dynamic ports) and a few host facts. No root, no network,
//! no clock. `outpost plan` prints it; `apply` and `run` make the host match it.

pub mod env;
mod leases;
pub mod render;

use crate::config::locate::Seg;
use crate::config::naming::{
    GatewayKind, IfName, NETNS_DIR, alloc_id, envoy_ports, expose_check_label, gateway_kind,
    group_interface, has_sidecar, host_veth_name, netns_name, service_id, service_port,
    sidecar_label,
};
use crate::config::validate::{PROXY_PREFIX, Problem};
use crate::config::{Dur, Group, Logs, Resources, Restart, Service, SidecarDriver, ValidConfig};
use crate::error::Error;
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

mod ports;
mod services;
mod tasks;
mod types;
use ports::plan_ports;
use tasks::TaskSpec;
pub use tasks::{ENVOY_UID, TASK_USER};
pub use types::*;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
                address_ipv6: g
                    .netns
                    .as_ref()
                    .and_then(|ns| ns.address_ipv6.as_deref()?.split('/').next())
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
pub fn build(valid: &ValidConfig, state: &NodeState, host: &HostFacts) -> Result<Plan, Error> {
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
) -> Result<(Plan, Vec<Problem>), Error> {
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
    let leases_ipv6 = match valid.subnet_ipv6 {
        Some(subnet) => leases::lease_addresses_ipv6(subnet, &bridge_groups, state)?,
        None => Default::default(),
    };
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
        let lease = leases.get(&group.name).map(|&v4| Lease {
            v4,
            v6: leases_ipv6.get(&group.name).copied(),
        });
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
    let bridge = IfName::new(&cfg.network.bridge).ok_or_else(|| {
        Error::config(format!(
            "bridge name {:?} is not an interface name",
            cfg.network.bridge
        ))
    })?;
    let shared_rules = crate::net::firewall::describe_shared(&crate::net::firewall::NatSpec {
        bridge: bridge.clone(),
        subnet: valid.subnet,
        subnet_ipv6: valid.subnet_ipv6,
        mappings: Vec::new(),
    });
    let plan = Plan {
        node_name: node_name.clone(),
        advertise_address: advertise.to_string(),
        advertise_address_source: advertise_source,
        data_dir: cfg.agent.data_dir.clone(),
        run_dir: cfg.agent.run_dir.clone(),
        cgroup_parent: tasks::cgroup_parent(&cfg.agent),
        bridge: BridgePlan {
            name: bridge,
            address: format!("{}/{}", valid.subnet.gateway(), valid.subnet.prefix),
            subnet: valid.subnet,
            address_ipv6: valid
                .subnet_ipv6
                .map(|s| format!("{}/{}", s.gateway(), s.prefix)),
            subnet_ipv6: valid.subnet_ipv6,
            firewall,
            firewall_rules: if ours { shared_rules } else { Vec::new() },
        },
        dynamic_ports: format!("{low}-{high}"),
        groups,
    };
    Ok((plan, problems))
}

/// What a Connect native task (or a built-in proxy) needs to reach Consul, as Nomad's
/// connect native hook sets it:
/// the group's relayed HTTP socket, its workload token and the agent's TLS files, both in
/// its secrets (written by the agent before it starts; never in the plan).
fn native_env(
    consul: &crate::config::Consul,
    services: &[ServicePlan],
    alloc_dir: &str,
    tasks: &mut [TaskPlan],
) {
    use crate::allocdir::{CONSUL_HTTP_SOCKET, NATIVE_TLS_FILES, NATIVE_TOKEN};
    for name in services.iter().filter_map(ServicePlan::consul_client_task) {
        let Some(task) = tasks.iter_mut().find(|t| t.name == name) else {
            continue;
        };
        let secrets = format!("{}/secrets", task.dir);
        let mut set = |k: &str, v: String| {
            task.env.insert(k.to_string(), v);
        };
        set(
            "CONSUL_HTTP_ADDR",
            format!("unix://{alloc_dir}/{CONSUL_HTTP_SOCKET}"),
        );
        set(
            "CONSUL_HTTP_TOKEN_FILE",
            format!("{secrets}/{NATIVE_TOKEN}"),
        );
        let tls = consul.address.starts_with("https://");
        set("CONSUL_HTTP_SSL", tls.to_string());
        if let Some(name) = &consul.tls_server_name {
            set("CONSUL_TLS_SERVER_NAME", name.clone());
        }
        let configured = [&consul.ca_file, &consul.cert_file, &consul.key_file];
        for ((var, file), source) in NATIVE_TLS_FILES.iter().zip(configured) {
            if source.is_some() {
                set(var, format!("{secrets}/{file}"));
            }
        }
    }
}

/// The group's resolv.conf: with transparent proxy and Consul's DNS (not `no_dns`), Consul's
/// DNS address is the only server, as Nomad sets it (queries to its port 53 are redirected to
/// Consul's DNS port); else the `dns` block's servers, searches and options.
fn resolv_conf(group: &Group, tproxy: Option<&TproxyPlan>) -> Option<String> {
    if let Some(dns) = tproxy.and_then(|t| t.dns.as_deref()) {
        let ip = dns.rsplit_once(':').map_or(dns, |(ip, _)| ip);
        return Some(format!("nameserver {ip}\n"));
    }
    let dns = group.network.as_ref()?.dns.as_ref()?;
    let mut text = String::new();
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(text)
}

/// A script check's timeout if it had none (validate requires one).
const SCRIPT_CHECK_TIMEOUT: Dur = Dur::secs(5);

/// The group's `script` checks, each with its task's environment applied to its command
/// (validation makes sure the task exists).
fn script_checks(
    group: &Group,
    services: &[ServicePlan],
    tasks: &[TaskPlan],
) -> Vec<ScriptCheckPlan> {
    let mut out = Vec::new();
    for (service, planned) in group.services.iter().zip(services) {
        for check in service.checks.iter().filter(|c| c.check_type == "script") {
            let (Some(command), Some(interval)) = (&check.command, check.interval) else {
                continue;
            };
            let Some(task) = tasks.iter().find(|t| Some(&t.name) == check.task.as_ref()) else {
                continue;
            };
            let vars: EnvMap = task.env.clone().into_iter().collect();
            let mut unresolved = Vec::new();
            let argv = std::iter::once(command)
                .chain(&check.args)
                .map(|a| env::interpolate(a, &vars, &mut unresolved))
                .collect();
            use crate::consul::registration as reg;
            out.push(ScriptCheckPlan {
                check_id: reg::check_id(&planned.id, service, check),
                name: reg::check_name(service, check),
                service_id: planned.id.clone(),
                task: task.name.clone(),
                argv,
                interval,
                timeout: check.timeout.unwrap_or(SCRIPT_CHECK_TIMEOUT),
            });
        }
    }
    out
}

fn is_bridge(group: &Group) -> bool {
    group.network.as_ref().is_some_and(|n| n.mode == "bridge")
}

/// A bridge group's addresses: IPv4 always, IPv6 on a dual-stack bridge.
#[derive(Clone, Copy)]
struct Lease {
    v4: Ipv4Addr,
    v6: Option<std::net::Ipv6Addr>,
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
        lease: Option<Lease>,
        problems: &mut Vec<Problem>,
    ) -> GroupPlan {
        let cfg = &self.valid.config;
        let alloc_dir = format!("{}/alloc/{}", cfg.agent.run_dir, group.name);
        let alloc_id = alloc_id(self.node_name, &group.name);
        let subnet_ipv6 = self.valid.subnet_ipv6;
        let netns = lease.map(|lease| NetnsPlan {
            name: netns_name(&group.name),
            path: format!("{NETNS_DIR}/{}", netns_name(&group.name)),
            host_veth: host_veth_name(&group.name),
            interface: group_interface(),
            address: format!("{}/{}", lease.v4, self.valid.subnet.prefix),
            gateway: self.valid.subnet.gateway().to_string(),
            address_ipv6: lease
                .v6
                .zip(subnet_ipv6)
                .map(|(ip, s)| format!("{ip}/{}", s.prefix)),
            gateway_ipv6: subnet_ipv6.map(|s| s.gateway().to_string()),
        });
        let lease = lease.map(|l| l.v4);
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
                resources: task.resources,
                config_path: path!["group", gi, "task", ti],
            };
            tasks.push(self.task(spec, &group.name, &alloc_dir, &group_env, problems));
        }
        for (si, (service, planned)) in group.services.iter().zip(&services).enumerate() {
            if let Some(proxy) = &planned.proxy {
                let spec = self.proxy_task(gi, si, service, proxy, &restart);
                tasks.push(self.task(spec, &group.name, &alloc_dir, &group_env, problems));
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

        native_env(&self.valid.config.consul, &services, &alloc_dir, &mut tasks);
        let script_checks = script_checks(group, &services, &tasks);
        let resolv_conf = resolv_conf(group, tproxy.as_ref());
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
            script_checks,
            resolv_conf,
        }
    }
}
