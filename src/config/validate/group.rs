//! Groups, their network ports, services and checks.

use super::*;

pub(super) fn check_group_names(c: &mut Checker, groups: &[Group]) {
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
pub(super) struct GroupNet<'g> {
    pub(super) mode: Option<&'g str>,
    /// label -> (static host port, in-namespace port)
    pub(super) ports: BTreeMap<&'g str, &'g Port>,
}

impl GroupNet<'_> {
    pub(super) fn is_bridge(&self) -> bool {
        self.mode == Some("bridge")
    }
    /// The port a service listens on inside the namespace, for a label or a number.
    pub(super) fn local_port(&self, port: &PortRef) -> Option<u16> {
        match self.ports.get(port.0.as_str()) {
            Some(p) => p.to.or(p.static_port),
            None => port.as_number(),
        }
    }
}

pub(super) fn check_group(c: &mut Checker, gi: usize, group: &Group) {
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
    let reschedule = &group.reschedule;
    if reschedule.delay.0.is_zero() {
        c.err(
            path!["group", gi, "reschedule", "delay"],
            "reschedule delay must be greater than 0 (a failed group would restart at once, forever)",
        );
    }
    if reschedule.max_delay < reschedule.delay {
        c.err(
            path!["group", gi, "reschedule", "max_delay"],
            format!(
                "reschedule max_delay {} is shorter than its delay {}",
                reschedule.max_delay, reschedule.delay
            ),
        );
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
