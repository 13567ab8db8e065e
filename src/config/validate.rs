//! Rules that relate config values to each other or to what later stages need: names that
//! become files and interfaces, ports, Nomad's Connect rules (reference/nomad-connect.md §1.6,
//! §1.7; the wording follows Nomad's where it has one). Every rule is checked and every
//! failure reported, each at the value it is about.

use super::locate::{Seg, Target};
use super::schema::*;
use super::{Ipv4Net, ValidConfig};
use crate::path;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

pub struct Problem {
    pub path: Vec<Seg>,
    pub target: Target,
    pub message: String,
}

/// Longest Linux interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// The parent directory name shared by a group's tasks (Nomad's alloc dir layout).
const ALLOC_DIR_NAME: &str = "alloc";
pub const PROXY_PREFIX: &str = "connect-proxy";
const KILL_SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGWINCH",
];

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn err(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            target: Target::Value,
            message: message.into(),
        });
    }

    fn err_at_key(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            target: Target::Key,
            message: message.into(),
        });
    }

    fn one_of(&mut self, path: Vec<Seg>, what: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            self.err(
                path,
                format!("{what} must be one of {}; got \"{value}\"", list.join(", ")),
            );
        }
    }

    fn absolute(&mut self, path: Vec<Seg>, what: &str, value: &str) {
        if !value.starts_with('/') {
            self.err(path, format!("{what} \"{value}\" must be an absolute path"));
        } else if value.split('/').any(|part| part == "..") {
            self.err(path, format!("{what} \"{value}\" must not contain \"..\""));
        }
    }

    fn absolute_opt(&mut self, path: Vec<Seg>, what: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.absolute(path, what, v);
        }
    }

    fn env_names(&mut self, base: Vec<Seg>, env: &Env) {
        for name in env.keys() {
            if !is_env_name(name) {
                let mut p = base.clone();
                p.push(Seg::Name(name.clone()));
                self.err_at_key(
                    p,
                    format!(
                        "invalid environment variable name \"{name}\": use letters, digits and '_', not starting with a digit"
                    ),
                );
            }
        }
    }

    fn no_datetimes(&mut self, path: Vec<Seg>, what: &str, table: &toml::Table) {
        if table.values().any(holds_datetime) {
            self.err(
                path,
                format!("{what} cannot hold a date or time: it is passed to Consul as JSON"),
            );
        }
    }
}

pub fn validate(config: Config) -> Result<ValidConfig, Vec<Problem>> {
    let mut c = Checker::default();
    check_agent(&mut c, &config.agent);
    check_consul(&mut c, &config.consul);
    let (subnet, dynamic_ports, advertise_address) = check_network(&mut c, &config.network);
    check_envoy(&mut c, &config.envoy);
    check_group_names(&mut c, &config.groups);
    for (gi, group) in config.groups.iter().enumerate() {
        check_group(&mut c, gi, group);
    }
    if let Some(range) = dynamic_ports {
        check_static_ports(&mut c, &config.groups, range);
    }
    match (c.problems.is_empty(), subnet, dynamic_ports) {
        (true, Some(subnet), Some(dynamic_ports)) => Ok(ValidConfig {
            config,
            subnet,
            dynamic_ports,
            advertise_address,
        }),
        _ => Err(c.problems),
    }
}

fn check_agent(c: &mut Checker, agent: &Agent) {
    if let Some(name) = &agent.node_name {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.');
        if !ok {
            c.err(
                path!["agent", "node_name"],
                format!("node_name \"{name}\" must be 1-63 letters, digits, '-' or '.', starting with a letter or digit"),
            );
        }
    }
    c.absolute(path!["agent", "data_dir"], "data_dir", &agent.data_dir);
    c.absolute(path!["agent", "run_dir"], "run_dir", &agent.run_dir);
    c.one_of(
        path!["agent", "log_level"],
        "log_level",
        &agent.log_level,
        &["trace", "debug", "info", "warn", "error"],
    );
}

fn check_consul(c: &mut Checker, consul: &Consul) {
    check_consul_address(c, &consul.address);
    if consul.token.is_some() && consul.token_file.is_some() {
        c.err(
            path!["consul", "token_file"],
            "set either consul.token or consul.token_file, not both",
        );
    }
    if consul.token.as_deref() == Some("") {
        c.err(
            path!["consul", "token"],
            "consul.token is empty; remove it to use no token",
        );
    }
    for (key, value) in [
        ("token_file", &consul.token_file),
        ("ca_file", &consul.ca_file),
        ("cert_file", &consul.cert_file),
        ("key_file", &consul.key_file),
        ("grpc_ca_file", &consul.grpc_ca_file),
    ] {
        c.absolute_opt(path!["consul", key], key, value);
    }
    match (&consul.cert_file, &consul.key_file) {
        (Some(_), None) => c.err(
            path!["consul", "cert_file"],
            "consul.cert_file needs consul.key_file",
        ),
        (None, Some(_)) => c.err(
            path!["consul", "key_file"],
            "consul.key_file needs consul.cert_file",
        ),
        _ => {}
    }
    if let Some(grpc) = &consul.grpc_address {
        let ok = match grpc.split_once("://") {
            Some(("unix", path)) => path.starts_with('/'),
            Some(("http" | "https", host)) => host_port(host).is_some(),
            Some(_) => false,
            None => host_port(grpc).is_some(),
        };
        if !ok {
            c.err(
                path!["consul", "grpc_address"],
                format!(
                    "grpc_address \"{grpc}\" must be host:port, http(s)://host:port or unix:///path"
                ),
            );
        }
    }
    if consul.sync_interval.0.as_secs() < 1 {
        c.err(
            path!["consul", "sync_interval"],
            "sync_interval must be at least 1s",
        );
    }
    c.one_of(
        path!["consul", "acl", "mode"],
        "consul.acl.mode",
        &consul.acl.mode,
        &["agent-token", "login", "service-identity"],
    );
    if consul.acl.mode == "login" && consul.acl.jwt_file.is_none() {
        c.err(
            path!["consul", "acl", "mode"],
            "consul.acl.mode = \"login\" needs consul.acl.jwt_file",
        );
    }
    c.absolute_opt(
        path!["consul", "acl", "jwt_file"],
        "jwt_file",
        &consul.acl.jwt_file,
    );
    let p = &consul.preflight;
    for (key, value) in [
        ("token_timeout", p.token_timeout),
        ("token_base", p.token_base),
        ("service_timeout", p.service_timeout),
        ("service_base", p.service_base),
    ] {
        if value.is_zero() {
            c.err(
                path!["consul", "preflight", key],
                format!("preflight {key} must be greater than 0"),
            );
        }
    }
}

fn check_consul_address(c: &mut Checker, address: &str) {
    let ok = match address.split_once("://") {
        Some(("http" | "https", rest)) => host_port(rest.trim_end_matches('/')).is_some(),
        Some(("unix", path)) => path.starts_with('/'),
        _ => false,
    };
    if !ok {
        c.err(
            path!["consul", "address"],
            format!("consul.address \"{address}\" must be http://host:port, https://host:port or unix:///path"),
        );
    }
}

/// `host:port` with a non-empty host and a valid port (IPv6 in brackets).
fn host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host_ok = !host.is_empty() && !host.contains('/') && !host.contains(char::is_whitespace);
    host_ok.then_some((host, port))
}

type NetworkFacts = (Option<Ipv4Net>, Option<(u16, u16)>, Option<Ipv4Addr>);

fn check_network(c: &mut Checker, net: &Network) -> NetworkFacts {
    let bridge = &net.bridge;
    if bridge.is_empty() || bridge.len() > MAX_IFNAME {
        c.err(
            path!["network", "bridge"],
            format!("bridge name \"{bridge}\" must be 1-{MAX_IFNAME} characters (the Linux interface name limit)"),
        );
    } else if !is_ifname(bridge) {
        c.err(
            path!["network", "bridge"],
            format!("bridge name \"{bridge}\" may only hold letters, digits, '-', '_' and '.'"),
        );
    }
    let subnet = match Ipv4Net::parse(&net.subnet) {
        Err(e) => {
            c.err(path!["network", "subnet"], format!("subnet {e}"));
            None
        }
        Ok(s) if s.network() != s.addr => {
            c.err(
                path!["network", "subnet"],
                format!(
                    "subnet {s} has host bits set; did you mean {}/{}?",
                    s.network(),
                    s.prefix
                ),
            );
            None
        }
        Ok(s) if !(8..=30).contains(&s.prefix) => {
            c.err(
                path!["network", "subnet"],
                format!("subnet {s} must have a prefix length between /8 and /30"),
            );
            None
        }
        Ok(s) => Some(s),
    };
    let dynamic = parse_port_range(&net.dynamic_ports);
    if dynamic.is_none() {
        c.err(
            path!["network", "dynamic_ports"],
            format!(
                "dynamic_ports \"{}\" must be \"LOW-HIGH\" with 1 <= LOW <= HIGH <= 65535",
                net.dynamic_ports
            ),
        );
    }
    c.one_of(
        path!["network", "firewall"],
        "firewall",
        &net.firewall,
        &["nftables", "none"],
    );
    let advertise =
        net.advertise_address
            .as_ref()
            .and_then(|text| match text.parse::<Ipv4Addr>() {
                Ok(ip) if !ip.is_unspecified() => Some(ip),
                _ => {
                    c.err(
                        path!["network", "advertise_address"],
                        format!("advertise_address \"{text}\" must be a unicast IPv4 address"),
                    );
                    None
                }
            });
    (subnet, dynamic, advertise)
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-')?;
    let low: u16 = low.trim().parse().ok()?;
    let high: u16 = high.trim().parse().ok()?;
    (low >= 1 && low <= high).then_some((low, high))
}

fn check_envoy(c: &mut Checker, envoy: &Envoy) {
    c.absolute(path!["envoy", "binary"], "envoy.binary", &envoy.binary);
    c.absolute(
        path!["envoy", "consul_binary"],
        "envoy.consul_binary",
        &envoy.consul_binary,
    );
    c.one_of(
        path!["envoy", "bootstrap"],
        "envoy.bootstrap",
        &envoy.bootstrap,
        &["native", "consul-cli"],
    );
    c.one_of(
        path!["envoy", "log_level"],
        "envoy.log_level",
        &envoy.log_level,
        &[
            "trace", "debug", "info", "warning", "warn", "error", "critical", "off",
        ],
    );
    if envoy.concurrency == 0 {
        c.err(
            path!["envoy", "concurrency"],
            "envoy.concurrency must be at least 1",
        );
    }
}

fn check_group_names(c: &mut Checker, groups: &[Group]) {
    let mut seen = BTreeSet::new();
    for (gi, group) in groups.iter().enumerate() {
        if !is_group_name(&group.name) {
            c.err(
                path!["group", gi, "name"],
                format!("group name \"{}\" must be 1-63 lowercase letters, digits or '-', starting with a letter or digit", group.name),
            );
        } else if !seen.insert(group.name.as_str()) {
            c.err(
                path!["group", gi, "name"],
                format!("duplicate group name \"{}\"", group.name),
            );
        }
    }
}

/// What a group's checks need to know about its network.
struct GroupNet<'g> {
    mode: Option<&'g str>,
    /// label -> (static host port, in-namespace port)
    ports: BTreeMap<&'g str, &'g Port>,
}

impl GroupNet<'_> {
    fn is_bridge(&self) -> bool {
        self.mode == Some("bridge")
    }
    /// The port a service listens on inside the namespace, for a label or a number.
    fn local_port(&self, port: &PortRef) -> Option<u16> {
        match self.ports.get(port.0.as_str()) {
            Some(p) => p.to.or(p.static_port),
            None => port.as_number(),
        }
    }
}

fn check_group(c: &mut Checker, gi: usize, group: &Group) {
    let net = check_group_network(c, gi, group);
    let connect_count = group
        .services
        .iter()
        .filter(|s| s.connect.is_some())
        .count();
    let mut names = BTreeSet::new();
    for (si, service) in group.services.iter().enumerate() {
        if !names.insert(service.name.as_str()) {
            c.err(
                path!["group", gi, "service", si, "name"],
                format!(
                    "duplicate service name \"{}\" in group \"{}\"",
                    service.name, group.name
                ),
            );
        }
        check_service(c, gi, si, group, &net, service, connect_count);
    }
    check_upstream_collisions(c, gi, group, &net);
    check_tasks(c, gi, group);
    if let Some(restart) = &group.restart {
        check_restart(c, path!["group", gi, "restart"], restart);
    }
    let has_gateway = group
        .services
        .iter()
        .any(|s| s.connect.as_ref().is_some_and(|k| k.gateway.is_some()));
    if group.tasks.is_empty() && !has_gateway {
        c.err(
            path!["group", gi, "name"],
            format!("group \"{}\" has no tasks", group.name),
        );
    }
}

fn check_group_network<'g>(c: &mut Checker, gi: usize, group: &'g Group) -> GroupNet<'g> {
    let mut net = GroupNet {
        mode: None,
        ports: BTreeMap::new(),
    };
    let Some(network) = &group.network else {
        return net;
    };
    net.mode = Some(network.mode.as_str());
    if network.mode.starts_with("cni/") {
        c.err(
            path!["group", gi, "network", "mode"],
            "network mode \"cni/*\" is not supported: outpost sets up bridge networking itself; use \"bridge\"",
        );
    } else {
        c.one_of(
            path!["group", gi, "network", "mode"],
            "network mode",
            &network.mode,
            &["bridge", "host"],
        );
    }
    for (pi, port) in network.ports.iter().enumerate() {
        let at = |key| path!["group", gi, "network", "port", pi, key];
        if !is_port_label(&port.label) {
            c.err(
                at("label"),
                format!(
                    "port label \"{}\" must be 1-63 letters, digits, '_' or '-'",
                    port.label
                ),
            );
        } else if net.ports.insert(&port.label, port).is_some() {
            c.err(
                at("label"),
                format!(
                    "duplicate port label \"{}\" in group \"{}\"",
                    port.label, group.name
                ),
            );
        }
        if port.static_port == Some(0) {
            c.err(at("static"), "static port must be between 1 and 65535");
        }
        if port.to == Some(0) {
            c.err(at("to"), "to must be between 1 and 65535");
        }
        if port.to.is_some() && network.mode == "host" {
            c.err(
                at("to"),
                format!("port \"{}\": `to` maps a port into the group's namespace and needs network mode \"bridge\"", port.label),
            );
        }
    }
    net
}

fn check_service(
    c: &mut Checker,
    gi: usize,
    si: usize,
    group: &Group,
    net: &GroupNet,
    service: &Service,
    connect_count: usize,
) {
    let at = |key| path!["group", gi, "service", si, key];
    if !is_service_name(&service.name) {
        c.err(
            at("name"),
            format!("service name \"{}\" must be 1-63 letters, digits or '-', starting and ending with a letter or digit", service.name),
        );
    }
    if let Some(port) = &service.port
        && !net.ports.contains_key(port.0.as_str())
        && port.as_number().is_none()
    {
        c.err(
            at("port"),
            format!(
                "service \"{}\" port \"{}\" is neither a port number nor a port label of group \"{}\"{}",
                service.name,
                port.0,
                group.name,
                label_list(net)
            ),
        );
    }
    let sidecar = service
        .connect
        .as_ref()
        .and_then(|k| k.sidecar_service.as_ref());
    for (ci, check) in service.checks.iter().enumerate() {
        check_check(c, gi, si, ci, group, net, service, check, sidecar.is_some());
    }
    if let Some(connect) = &service.connect {
        check_connect(c, gi, si, group, net, service, connect, connect_count);
    }
}

fn label_list(net: &GroupNet) -> String {
    if net.ports.is_empty() {
        " (it has no ports)".into()
    } else {
        let labels: Vec<&str> = net.ports.keys().copied().collect();
        format!(" (labels: {})", labels.join(", "))
    }
}

#[allow(clippy::too_many_arguments)]
fn check_check(
    c: &mut Checker,
    gi: usize,
    si: usize,
    ci: usize,
    group: &Group,
    net: &GroupNet,
    service: &Service,
    check: &Check,
    has_sidecar: bool,
) {
    let at = |key| path!["group", gi, "service", si, "check", ci, key];
    let name = check
        .name
        .clone()
        .unwrap_or_else(|| format!("service: \"{}\" check", service.name));
    let label = match &check.name {
        Some(n) => format!("check \"{n}\""),
        None => format!("check of service \"{}\"", service.name),
    };
    let kind = check.check_type.as_str();
    c.one_of(
        at("type"),
        "check type",
        kind,
        &["http", "grpc", "tcp", "script", "ttl"],
    );
    if kind == "tcp" && has_sidecar {
        c.err(
            at("type"),
            format!("Check {name} invalid: tcp checks are not valid for Connect enabled services"),
        );
    }
    if kind == "http" {
        match &check.path {
            None => c.err(at("type"), format!("http {label} needs a path")),
            Some(p) if !p.starts_with('/') => c.err(
                at("path"),
                format!("check path \"{p}\" must start with '/'"),
            ),
            _ => {}
        }
    }
    if kind == "ttl" {
        if check.ttl.is_none() {
            c.err(at("type"), format!("ttl {label} needs a ttl"));
        }
    } else if matches!(kind, "http" | "grpc" | "tcp" | "script") {
        match check.interval {
            None => c.err(at("type"), format!("{label} needs an interval")),
            Some(i) if i.0.as_secs() < 1 => c.err(
                at("interval"),
                format!("{label} interval ({i}) cannot be lower than 1s"),
            ),
            _ => {}
        }
        if check.timeout.is_none() {
            c.err(at("type"), format!("{label} needs a timeout"));
        }
    }
    if kind == "script" {
        match &check.command {
            None => c.err(at("type"), format!("script {label} needs a command")),
            Some(cmd) => c.absolute(at("command"), "check command", cmd),
        }
        match &check.task {
            None => c.err(
                at("type"),
                format!("script {label} needs task: the task whose namespace runs it"),
            ),
            Some(t) if !group.tasks.iter().any(|task| &task.name == t) => c.err(
                at("task"),
                format!(
                    "check task \"{t}\" is not a task of group \"{}\"",
                    group.name
                ),
            ),
            _ => {}
        }
    }
    if let Some(status) = &check.initial_status {
        c.one_of(
            at("initial_status"),
            "initial_status",
            status,
            &["passing", "warning", "critical"],
        );
    }
    if let Some(port) = &check.port
        && !net.ports.contains_key(port.0.as_str())
        && port.as_number().is_none()
    {
        c.err(
            at("port"),
            format!(
                "check port \"{}\" is neither a port number nor a port label of group \"{}\"",
                port.0, group.name
            ),
        );
    }
    if check.expose {
        let id = format!("{}->{}->{}", group.name, service.name, name);
        if !matches!(kind, "http" | "grpc") {
            c.err(
                at("expose"),
                format!("exposed service check {id} must be of type http or grpc"),
            );
        } else if !has_sidecar {
            c.err(
                at("expose"),
                format!("exposed service check {id} requires use of sidecar_proxy"),
            );
        } else if service
            .port
            .as_ref()
            .and_then(|p| net.local_port(p))
            .is_none()
        {
            c.err(
                at("expose"),
                format!("unable to determine local service port for service check {id}"),
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_connect(
    c: &mut Checker,
    gi: usize,
    si: usize,
    group: &Group,
    net: &GroupNet,
    service: &Service,
    connect: &Connect,
    connect_count: usize,
) {
    let at = |keys: &[&'static str]| {
        let mut p = path!["group", gi, "service", si, "connect"];
        p.extend(keys.iter().map(|k| Seg::Key(k)));
        p
    };
    let kinds = [
        connect.native,
        connect.sidecar_service.is_some(),
        connect.gateway.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        c.err(
            at(&[]),
            "Consul Connect must be exclusively native, make use of a sidecar, or represent a Gateway",
        );
    }
    if connect.sidecar_task.is_some()
        && connect.sidecar_service.is_none()
        && connect.gateway.is_none()
    {
        c.err(
            at(&["sidecar_task"]),
            "sidecar_task needs sidecar_service or gateway in the same connect block",
        );
    }
    if connect.native {
        check_native(c, gi, si, group, service);
    }
    if let Some(sidecar) = &connect.sidecar_service {
        check_network_for(c, gi, si, group, net, "sidecar", &["bridge"]);
        if service.name.chars().any(|ch| ch.is_ascii_uppercase()) {
            c.err(
                path!["group", gi, "service", si, "name"],
                format!(
                    "Consul Connect service name \"{}\" in group \"{}\" must not contain uppercase characters",
                    service.name, group.name
                ),
            );
        }
        let local_port = sidecar.proxy.as_ref().and_then(|p| p.local_service_port);
        if service.port.is_none() && local_port.is_none() {
            c.err(
                path!["group", gi, "service", si, "name"],
                format!(
                    "service \"{}\" has a connect sidecar but no port: set service.port or proxy.local_service_port",
                    service.name
                ),
            );
        }
        if let Some(label) = &sidecar.port
            && !is_port_label(label)
        {
            c.err(
                at(&["sidecar_service", "port"]),
                format!("port label \"{label}\" must be 1-63 letters, digits, '_' or '-'"),
            );
        }
        if let Some(proxy) = &sidecar.proxy {
            check_proxy(c, gi, si, group, net, proxy, connect_count);
        }
    }
    if let Some(task) = &connect.sidecar_task {
        check_sidecar_task(c, at(&["sidecar_task"]), task);
    }
    if let Some(gateway) = &connect.gateway {
        check_network_for(c, gi, si, group, net, "gateway", &["bridge", "host"]);
        check_gateway(c, at(&["gateway"]), service, gateway);
    }
}

fn check_network_for(
    c: &mut Checker,
    gi: usize,
    si: usize,
    group: &Group,
    net: &GroupNet,
    what: &str,
    modes: &[&str],
) {
    let at = path!["group", gi, "service", si, "connect"];
    match net.mode {
        None => c.err(
            at,
            format!(
                "connect {what}: must have exactly one network for Consul Connect: group \"{}\" has 0 networks",
                group.name
            ),
        ),
        Some(mode) if !modes.contains(&mode) => {
            let list: Vec<String> = modes.iter().map(|m| format!("\"{m}\"")).collect();
            c.err(
                at,
                format!(
                    "connect {what}: invalid network mode for Consul Connect: group \"{}\" uses network mode \"{mode}\"; must be {}",
                    group.name,
                    list.join(" or ")
                ),
            )
        }
        _ => {}
    }
}

fn check_native(c: &mut Checker, gi: usize, si: usize, group: &Group, service: &Service) {
    let id = format!("{}->{}", group.name, service.name);
    match &service.task {
        None if group.tasks.len() != 1 => c.err(
            path!["group", gi, "service", si, "connect", "native"],
            format!("task for Consul Connect Native service {id} is ambiguous and must be set"),
        ),
        Some(t) if !group.tasks.iter().any(|task| &task.name == t) => c.err(
            path!["group", gi, "service", si, "task"],
            format!("task {t} named by Consul Connect Native service {id} does not exist"),
        ),
        _ => {}
    }
}

fn check_proxy(
    c: &mut Checker,
    gi: usize,
    si: usize,
    group: &Group,
    net: &GroupNet,
    proxy: &Proxy,
    connect_count: usize,
) {
    let at = |keys: Vec<Seg>| {
        let mut p = path![
            "group",
            gi,
            "service",
            si,
            "connect",
            "sidecar_service",
            "proxy"
        ];
        p.extend(keys);
        p
    };
    if let Some(addr) = &proxy.local_service_address
        && addr.parse::<IpAddr>().is_err()
    {
        c.err(
            at(path!["local_service_address"]),
            format!("local_service_address \"{addr}\" is not an IP address"),
        );
    }
    if proxy.local_service_port == Some(0) {
        c.err(
            at(path!["local_service_port"]),
            "local_service_port must be between 1 and 65535",
        );
    }
    c.no_datetimes(at(path!["config"]), "proxy.config", &proxy.config);
    for (ui, up) in proxy.upstreams.iter().enumerate() {
        let up_at = |key| at(path!["upstreams", ui, key]);
        if up.local_bind_socket_path.is_none() && up.local_bind_port.unwrap_or(0) == 0 {
            c.err(
                up_at("destination_name"),
                format!(
                    "upstream \"{}\" needs local_bind_port or local_bind_socket_path",
                    up.destination_name
                ),
            );
        }
        if let Some(addr) = &up.local_bind_address
            && addr.parse::<IpAddr>().is_err()
        {
            c.err(
                up_at("local_bind_address"),
                format!("local_bind_address \"{addr}\" is not an IP address"),
            );
        }
        if let Some(mode) = up.mesh_gateway.as_ref().map(|m| m.mode.as_str()) {
            c.one_of(
                at(path!["upstreams", ui, "mesh_gateway", "mode"]),
                "mesh_gateway.mode",
                mode,
                &["local", "remote", "none"],
            );
        }
        c.no_datetimes(up_at("config"), "upstream config", &up.config);
    }
    if let Some(expose) = &proxy.expose {
        for (ei, ep) in expose.paths.iter().enumerate() {
            let ep_at = |key| at(path!["expose", "path", ei, key]);
            if !ep.path.starts_with('/') {
                c.err(
                    ep_at("path"),
                    format!("expose path \"{}\" must start with '/'", ep.path),
                );
            }
            c.one_of(
                ep_at("protocol"),
                "expose protocol",
                &ep.protocol,
                &["http", "http2"],
            );
            if !net.ports.contains_key(ep.listener_port.as_str()) {
                c.err(
                    ep_at("listener_port"),
                    format!(
                        "No port of label \"{}\" defined in group \"{}\"",
                        ep.listener_port, group.name
                    ),
                );
            }
        }
    }
    if let Some(tp) = &proxy.transparent_proxy {
        check_transparent_proxy(
            c,
            at(path!["transparent_proxy"]),
            group,
            net,
            tp,
            connect_count,
        );
    }
}

fn check_transparent_proxy(
    c: &mut Checker,
    at: Vec<Seg>,
    group: &Group,
    net: &GroupNet,
    tp: &TransparentProxy,
    connect_count: usize,
) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    let has_dns = group
        .network
        .as_ref()
        .and_then(|n| n.dns.as_ref())
        .is_some_and(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty());
    if has_dns && !tp.no_dns {
        c.err(
            at.clone(),
            "Consul Connect transparent proxy cannot be used with network.dns unless no_dns=true",
        );
    }
    if connect_count > 1 {
        c.err(
            at.clone(),
            "Consul Connect transparent proxy requires there is only one connect block",
        );
    }
    for port in &tp.exclude_inbound_ports {
        let is_static_label = net
            .ports
            .get(port.as_str())
            .is_some_and(|p| p.static_port.is_some());
        if port.parse::<u16>().is_err() && !is_static_label {
            c.err(
                sub("exclude_inbound_ports"),
                format!("Consul Connect transparent proxy port \"{port}\" must be numeric or one of network.port labels"),
            );
        }
    }
    for cidr in &tp.exclude_outbound_cidrs {
        if !is_cidr(cidr) {
            c.err(
                sub("exclude_outbound_cidrs"),
                format!("exclude_outbound_cidrs entry \"{cidr}\" is not a CIDR prefix"),
            );
        }
    }
    if let Some(uid) = &tp.uid
        && uid.parse::<u16>().is_err()
    {
        c.err(
            sub("uid"),
            format!("transparent proxy uid \"{uid}\" must be a number 0-65535"),
        );
    }
    for uid in &tp.exclude_uids {
        if uid.parse::<u16>().is_err() {
            c.err(
                sub("exclude_uids"),
                format!("exclude_uids entry \"{uid}\" must be a number 0-65535"),
            );
        }
    }
    if tp.outbound_port == Some(0) {
        c.err(
            sub("outbound_port"),
            "outbound_port must be between 1 and 65535",
        );
    }
}

fn is_cidr(text: &str) -> bool {
    let Some((addr, prefix)) = text.split_once('/') else {
        return false;
    };
    match (addr.parse::<IpAddr>(), prefix.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}

fn check_gateway(c: &mut Checker, at: Vec<Seg>, service: &Service, gateway: &Gateway) {
    let sub = |keys: Vec<Seg>| {
        let mut p = at.clone();
        p.extend(keys);
        p
    };
    let kinds = [
        gateway.ingress.is_some(),
        gateway.terminating.is_some(),
        gateway.mesh.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        c.err(
            at.clone(),
            "gateway must have exactly one of ingress, terminating or mesh",
        );
    }
    if gateway.mesh.is_some() && service.port.is_none() {
        c.err(
            at.clone(),
            "service.port must be set for mesh gateway service",
        );
    }
    if let Some(proxy) = &gateway.proxy {
        if let Some(kind) = &proxy.envoy_dns_discovery_type {
            c.one_of(
                sub(path!["proxy", "envoy_dns_discovery_type"]),
                "envoy_dns_discovery_type",
                kind,
                &["STRICT_DNS", "LOGICAL_DNS"],
            );
        }
        c.no_datetimes(
            sub(path!["proxy", "config"]),
            "gateway proxy config",
            &proxy.config,
        );
    }
    if let Some(ingress) = &gateway.ingress {
        if ingress.listeners.is_empty() {
            c.err(
                sub(path!["ingress"]),
                "ingress gateway needs at least one listener",
            );
        }
        for (li, listener) in ingress.listeners.iter().enumerate() {
            c.one_of(
                sub(path!["ingress", "listener", li, "protocol"]),
                "listener protocol",
                &listener.protocol,
                &["tcp", "http", "http2", "grpc"],
            );
            if listener.services.is_empty() {
                c.err(
                    sub(path!["ingress", "listener", li, "port"]),
                    format!(
                        "ingress listener on port {} needs at least one service",
                        listener.port
                    ),
                );
            }
        }
    }
    if let Some(term) = &gateway.terminating {
        for (ti, linked) in term.services.iter().enumerate() {
            for (key, value) in [
                ("ca_file", &linked.ca_file),
                ("cert_file", &linked.cert_file),
                ("key_file", &linked.key_file),
            ] {
                c.absolute_opt(sub(path!["terminating", "service", ti, key]), key, value);
            }
            if linked.cert_file.is_some() != linked.key_file.is_some() {
                c.err(
                    sub(path!["terminating", "service", ti, "name"]),
                    format!("terminating gateway service \"{}\" needs both cert_file and key_file, or neither", linked.name),
                );
            }
        }
    }
}

/// Two upstreams in one group may not listen on the same address (Nomad's rule), nor on a
/// port something else in the group's namespace already listens on.
fn check_upstream_collisions(c: &mut Checker, gi: usize, group: &Group, net: &GroupNet) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut netns_ports: BTreeMap<u16, String> = BTreeMap::new();
    if net.is_bridge() {
        for port in net.ports.values() {
            if let Some(local) = port.to.or(port.static_port) {
                netns_ports.insert(
                    local,
                    format!("the in-namespace port of port \"{}\"", port.label),
                );
            }
        }
    }
    for (si, service) in group.services.iter().enumerate() {
        let Some(proxy) = service
            .connect
            .as_ref()
            .and_then(|k| k.sidecar_service.as_ref())
            .and_then(|s| s.proxy.as_ref())
        else {
            continue;
        };
        if net.is_bridge() {
            let (admin, ready) = crate::plan::envoy_ports(si);
            netns_ports.insert(
                admin,
                format!("Envoy's admin port for service \"{}\"", service.name),
            );
            netns_ports.insert(
                ready,
                format!("Envoy's ready port for service \"{}\"", service.name),
            );
        }
        for (ui, up) in proxy.upstreams.iter().enumerate() {
            let at = path![
                "group",
                gi,
                "service",
                si,
                "connect",
                "sidecar_service",
                "proxy",
                "upstreams",
                ui,
                "local_bind_port"
            ];
            let key = match (&up.local_bind_socket_path, up.local_bind_port) {
                (Some(sock), _) => sock.clone(),
                (None, Some(port)) => {
                    format!("{}:{port}", up.local_bind_address.as_deref().unwrap_or(""))
                }
                (None, None) => continue,
            };
            if let Some(first) = seen.insert(key.clone(), &service.name) {
                c.err(
                    at.clone(),
                    format!(
                        "Consul Connect services \"{first}\" and \"{}\" in group \"{}\" using same address for upstreams ({key})",
                        service.name, group.name
                    ),
                );
            }
            if let (Some(port), None) = (up.local_bind_port, &up.local_bind_socket_path)
                && let Some(owner) = netns_ports.get(&port)
            {
                c.err(
                    at,
                    format!("upstream \"{}\" local_bind_port {port} is also {owner}; both would listen in group \"{}\"'s namespace", up.destination_name, group.name),
                );
            }
        }
    }
}

fn check_tasks(c: &mut Checker, gi: usize, group: &Group) {
    let mut names = BTreeSet::new();
    let reserved: BTreeMap<String, &str> = group
        .services
        .iter()
        .filter(|s| {
            s.connect
                .as_ref()
                .is_some_and(|k| k.sidecar_service.is_some())
        })
        .map(|s| (format!("{PROXY_PREFIX}-{}", s.name), s.name.as_str()))
        .collect();
    for (ti, task) in group.tasks.iter().enumerate() {
        let at = |key| path!["group", gi, "task", ti, key];
        if !is_task_name(&task.name) {
            c.err(
                at("name"),
                format!("task name \"{}\" must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit", task.name),
            );
        } else if task.name == ALLOC_DIR_NAME {
            c.err(
                at("name"),
                "task name \"alloc\" is reserved: it is the group's shared directory",
            );
        } else if let Some(service) = reserved.get(&task.name) {
            c.err(
                at("name"),
                format!(
                    "task name \"{}\" is reserved for the sidecar of service \"{service}\"",
                    task.name
                ),
            );
        } else if !names.insert(task.name.as_str()) {
            c.err(
                at("name"),
                format!(
                    "duplicate task name \"{}\" in group \"{}\"",
                    task.name, group.name
                ),
            );
        }
        c.one_of(at("driver"), "driver", &task.driver, &["exec", "raw_exec"]);
        check_command(c, at("command"), &task.command);
        c.env_names(at("env"), &task.env);
        if let Some(user) = &task.user {
            check_user(c, at("user"), user);
        }
        if let Some(lc) = &task.lifecycle {
            c.one_of(
                path!["group", gi, "task", ti, "lifecycle", "hook"],
                "lifecycle hook",
                &lc.hook,
                &["prestart", "poststart", "poststop"],
            );
            if lc.hook == "poststop" && lc.sidecar {
                c.err(
                    path!["group", gi, "task", ti, "lifecycle", "sidecar"],
                    "a poststop task cannot be a sidecar",
                );
            }
        }
        if let Some(restart) = &task.restart {
            check_restart(c, at("restart"), restart);
        }
        if let Some(logs) = &task.logs {
            check_logs(c, at("logs"), logs);
        }
        check_signal(c, at("kill_signal"), &task.kill_signal);
    }
}

fn check_sidecar_task(c: &mut Checker, at: Vec<Seg>, task: &SidecarTask) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    if let Some(name) = &task.name
        && (!is_task_name(name) || name == ALLOC_DIR_NAME)
    {
        c.err(
            sub("name"),
            format!("task name \"{name}\" must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit, and not \"alloc\""),
        );
    }
    if let Some(cmd) = &task.command {
        check_command(c, sub("command"), cmd);
    }
    c.env_names(sub("env"), &task.env);
    if let Some(user) = &task.user {
        check_user(c, sub("user"), user);
    }
    if let Some(signal) = &task.kill_signal {
        check_signal(c, sub("kill_signal"), signal);
    }
    if let Some(logs) = &task.logs {
        check_logs(c, sub("logs"), logs);
    }
}

/// Commands are exec'd without a PATH search, so they must be absolute, or start in one of
/// the task's own directories.
fn check_command(c: &mut Checker, at: Vec<Seg>, command: &str) {
    const DIR_VARS: &[&str] = &[
        "${NOMAD_TASK_DIR}/",
        "${NOMAD_ALLOC_DIR}/",
        "${NOMAD_SECRETS_DIR}/",
    ];
    if DIR_VARS.iter().any(|v| command.starts_with(v)) {
        return;
    }
    if !command.starts_with('/') {
        c.err(
            at,
            format!("command \"{command}\" must be an absolute path (tasks do not search PATH), or start with ${{NOMAD_TASK_DIR}}/"),
        );
    }
}

fn check_user(c: &mut Checker, at: Vec<Seg>, user: &str) {
    let numeric = !user.is_empty() && user.chars().all(|ch| ch.is_ascii_digit());
    let named = user.len() <= 32
        && user.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
        && user
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-');
    if !numeric && !named {
        c.err(
            at,
            format!("user \"{user}\" is neither a user name nor a numeric uid"),
        );
    }
}

fn check_signal(c: &mut Checker, at: Vec<Seg>, signal: &str) {
    if !KILL_SIGNALS.contains(&signal) {
        c.err(
            at,
            format!(
                "kill_signal \"{signal}\" must be one of {}",
                KILL_SIGNALS.join(", ")
            ),
        );
    }
}

fn check_restart(c: &mut Checker, at: Vec<Seg>, restart: &Restart) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    c.one_of(
        sub("mode"),
        "restart mode",
        &restart.mode,
        &["fail", "delay"],
    );
    let needed = restart.delay.0.saturating_mul(restart.attempts);
    if needed > restart.interval.0 {
        c.err(
            sub("interval"),
            format!(
                "Nomad can't restart the TaskGroup {} times in an interval of {} with a delay of {}",
                restart.attempts, restart.interval, restart.delay
            ),
        );
    }
}

fn check_logs(c: &mut Checker, at: Vec<Seg>, logs: &Logs) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    if logs.max_files == 0 {
        c.err(sub("max_files"), "logs max_files must be at least 1");
    }
    if logs.max_file_size == 0 {
        c.err(
            sub("max_file_size"),
            "logs max_file_size must be at least 1 (MB)",
        );
    }
}

/// Static host ports are node-wide: two groups cannot both take one, and the dynamic range
/// is kept for allocation.
fn check_static_ports(c: &mut Checker, groups: &[Group], (low, high): (u16, u16)) {
    let mut owners: BTreeMap<u16, (&str, &str)> = BTreeMap::new();
    for (gi, group) in groups.iter().enumerate() {
        let Some(network) = &group.network else {
            continue;
        };
        for (pi, port) in network.ports.iter().enumerate() {
            let Some(host) = port.static_port.filter(|p| *p > 0) else {
                continue;
            };
            let at = path!["group", gi, "network", "port", pi, "static"];
            if (low..=high).contains(&host) {
                c.err(
                    at.clone(),
                    format!("static port {host} is inside network.dynamic_ports {low}-{high}, which is kept for dynamic ports"),
                );
            }
            if let Some((owner_group, owner_label)) =
                owners.insert(host, (&group.name, &port.label))
            {
                c.err(
                    at,
                    format!("static port {host} is already used by group \"{owner_group}\" port \"{owner_label}\""),
                );
            }
        }
    }
}

fn holds_datetime(value: &toml::Value) -> bool {
    match value {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(items) => items.iter().any(holds_datetime),
        toml::Value::Table(t) => t.values().any(holds_datetime),
        _ => false,
    }
}

pub fn is_group_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn is_task_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_port_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_ifname(name: &str) -> bool {
    name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
