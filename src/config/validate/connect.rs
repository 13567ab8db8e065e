//! Consul Connect blocks: sidecars, native, gateways, proxies, upstreams, tproxy.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) fn check_connect(
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
        // A mode that is no mode at all is reported where it is written, once.
        Some(mode) if !["bridge", "host"].contains(&mode) => {}
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
    if let Some(kind) = gateway
        .proxy
        .as_ref()
        .and_then(|p| p.envoy_dns_discovery_type.as_ref())
    {
        c.one_of(
            sub(path!["proxy", "envoy_dns_discovery_type"]),
            "envoy_dns_discovery_type",
            kind,
            &["STRICT_DNS", "LOGICAL_DNS"],
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
    check_gateway_entries(c, &at, gateway);
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
pub(super) fn check_upstream_collisions(c: &mut Checker, gi: usize, group: &Group, net: &GroupNet) {
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
            let (admin, ready) = crate::config::naming::envoy_ports(si);
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

/// A sidecar on the built-in proxy (its own `sidecar_task.driver`, else the node's
/// `connect.sidecar_driver`) gets only what an L4 proxy can serve; the rest is Envoy's, and
/// each refusal says why and where.
pub(super) fn check_builtin_proxy(
    c: &mut Checker,
    gi: usize,
    si: usize,
    service: &Service,
    node_default: SidecarDriver,
) {
    let Some(connect) = &service.connect else {
        return;
    };
    let own = connect.own_driver();
    let at = |keys: &[&'static str]| {
        let mut p = path!["group", gi, "service", si, "connect"];
        p.extend(keys.iter().map(|k| Seg::Key(k)));
        p
    };
    if connect.gateway.is_some() {
        if own == Some(SidecarDriver::Builtin) {
            c.err(
                at(&["sidecar_task", "driver"]),
                "gateways run Envoy: the built-in proxy is a sidecar's L4 proxy, without a gateway's SNI routing and listeners",
            );
        }
        return;
    }
    let Some(sidecar) = &connect.sidecar_service else {
        return;
    };
    if connect.driver(node_default) != SidecarDriver::Builtin {
        return;
    }
    let why = if own.is_some() {
        "(sidecar_task.driver = \"builtin\")"
    } else {
        "(connect.sidecar_driver = \"builtin\")"
    };
    if !cfg!(feature = "proxy") {
        c.err(
            at(&["sidecar_task"]),
            format!(
                "this outpost was built without the built-in proxy (the `proxy` feature) {why}"
            ),
        );
    }
    if let Some(task) = &connect.sidecar_task
        && (task.command.is_some() || task.args.is_some())
    {
        c.err(
            at(&["sidecar_task"]),
            "command and args choose Envoy's binary and flags; the built-in proxy is this outpost itself",
        );
    }
    let Some(proxy) = &sidecar.proxy else {
        return;
    };
    let proxy_at = |key: &'static str| at(&["sidecar_service", "proxy", key]);
    if proxy.transparent_proxy.is_some() {
        c.err(
            proxy_at("transparent_proxy"),
            format!("transparent proxy needs Envoy: the built-in proxy has no listener for redirected outbound traffic {why}"),
        );
    }
    if proxy.expose.is_some() {
        c.err(
            proxy_at("expose"),
            format!(
                "expose paths need Envoy's HTTP listeners; the built-in proxy is L4 only {why}"
            ),
        );
    }
    if let Some(miniserde::json::Value::String(protocol)) = proxy.config.get("protocol")
        && protocol != "tcp"
    {
        c.err(
            path!["group", gi, "service", si, "connect", "sidecar_service", "proxy", "config", "protocol"],
            format!("protocol \"{protocol}\" is L7 (routing and L7 intentions only Envoy enforces); the built-in proxy is L4: use \"tcp\" or Envoy {why}"),
        );
    }
    for (ui, up) in proxy.upstreams.iter().enumerate() {
        let up_at = |key: &'static str| {
            path![
                "group",
                gi,
                "service",
                si,
                "connect",
                "sidecar_service",
                "proxy",
                "upstreams",
                ui,
                key
            ]
        };
        let unsupported = [
            (
                "destination_type",
                up.destination_type
                    .as_deref()
                    .filter(|t| *t != "service")
                    .is_some(),
                "prepared queries",
            ),
            (
                "destination_peer",
                up.destination_peer.is_some(),
                "cluster peers",
            ),
            (
                "local_bind_socket_path",
                up.local_bind_socket_path.is_some(),
                "unix socket upstreams",
            ),
            (
                "mesh_gateway",
                up.mesh_gateway.is_some(),
                "mesh gateway modes",
            ),
        ];
        for (key, present, what) in unsupported {
            if present {
                c.err(
                    up_at(key),
                    format!("upstream {}: {what} need Envoy; the built-in proxy reaches services in its own or another datacenter directly {why}", up.destination_name),
                );
            }
        }
    }
}
