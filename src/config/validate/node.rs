//! Node-wide settings: agent, consul, network, envoy, and static ports across groups.

use super::*;

pub(super) fn check_agent(c: &mut Checker, agent: &Agent) {
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
    if let Some(parent) = &agent.cgroup_parent {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.len() <= 255
                && p.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-.@:".contains(ch))
        };
        if !parent.trim_start_matches('/').split('/').all(part_ok) {
            c.err(
                path!["agent", "cgroup_parent"],
                format!("cgroup_parent \"{parent}\" must be a cgroup path such as \"outpost.slice\": names of letters, digits, '_', '-', '.', '@' or ':' joined by '/'"),
            );
        }
    }
}

pub(super) fn check_consul(c: &mut Checker, consul: &Consul) {
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
    if let Some(dns) = &consul.dns_address
        && dns.parse::<std::net::SocketAddrV4>().is_err()
    {
        c.err(
            path!["consul", "dns_address"],
            format!("dns_address \"{dns}\" must be an IPv4 address and port, e.g. 192.0.2.10:8600"),
        );
    }
    if consul.sync_interval.0.as_secs() < 1 {
        c.err(
            path!["consul", "sync_interval"],
            "sync_interval must be at least 1s",
        );
    }
    if consul.acl.mode == AclMode::Login && consul.acl.jwt_file.is_none() {
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

/// What `check_network` parsed, each `None` when its value was wrong (and reported).
pub(super) struct NetworkFacts {
    pub subnet: Option<Ipv4Net>,
    /// `Some(None)` when no IPv6 subnet is set; `None` when the one set is wrong.
    pub subnet_ipv6: Option<Option<Ipv6Net>>,
    pub dynamic_ports: Option<(u16, u16)>,
    pub advertise_address: Option<Ipv4Addr>,
}

pub(super) fn check_network(c: &mut Checker, net: &Network) -> NetworkFacts {
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
    let subnet_ipv6 = match &net.subnet_ipv6 {
        None => Some(None),
        Some(text) => check_subnet_ipv6(c, text).map(Some),
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
    NetworkFacts {
        subnet,
        subnet_ipv6,
        dynamic_ports: dynamic,
        advertise_address: advertise,
    }
}

/// `network.subnet_ipv6`: a unicast prefix (unique local `fd00::/8` or global) of /48 to
/// /126, without host bits.
fn check_subnet_ipv6(c: &mut Checker, text: &str) -> Option<Ipv6Net> {
    let at = path!["network", "subnet_ipv6"];
    let s = match Ipv6Net::parse(text) {
        Ok(s) => s,
        Err(e) => {
            c.err(at, format!("subnet_ipv6 {e}"));
            return None;
        }
    };
    let first = s.addr.segments()[0];
    let problem = if s.network() != s.addr {
        Some(format!(
            "subnet_ipv6 {s} has host bits set; did you mean {}/{}?",
            s.network(),
            s.prefix
        ))
    } else if !(48..=126).contains(&s.prefix) {
        Some(format!(
            "subnet_ipv6 {s} must have a prefix length between /48 and /126, e.g. fd00:a110:c8::/120"
        ))
    } else if s.addr.is_unspecified()
        || s.addr.is_loopback()
        || first & 0xffc0 == 0xfe80
        || first & 0xff00 == 0xff00
        || s.addr.to_ipv4_mapped().is_some()
    {
        Some(format!(
            "subnet_ipv6 {s} must be a unicast prefix (unique local fd00::/8 or global), not link-local, multicast, loopback or IPv4-mapped; e.g. fd00:a110:c8::/120"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => {
            c.err(at, message);
            None
        }
        None => Some(s),
    }
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-')?;
    let low: u16 = low.trim().parse().ok()?;
    let high: u16 = high.trim().parse().ok()?;
    (low >= 1 && low <= high).then_some((low, high))
}

pub(super) fn check_envoy(c: &mut Checker, envoy: &Envoy) {
    c.absolute(path!["envoy", "binary"], "envoy.binary", &envoy.binary);
    c.absolute(
        path!["envoy", "consul_binary"],
        "envoy.consul_binary",
        &envoy.consul_binary,
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

/// The host ports Consul's agent answers on, by what it serves there: the HTTP API of
/// `address`, gRPC (`grpc_address`, else Consul's default 8502) and DNS (`dns_address`, else
/// 8600). A group mapping one of them would capture the host's own traffic to Consul (its
/// token included) through the DNAT rule.
pub(super) fn consul_ports(consul: &Consul) -> Vec<(u16, &'static str)> {
    let port_of = |text: &str| {
        let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
        host_port(rest.trim_end_matches('/')).map(|(_, port)| port)
    };
    let mut ports = Vec::new();
    if !consul.address.starts_with("unix://") {
        ports.extend(port_of(&consul.address).map(|p| (p, "Consul's HTTP API (consul.address)")));
    }
    match &consul.grpc_address {
        Some(grpc) if grpc.starts_with("unix://") => {}
        Some(grpc) => {
            ports.extend(port_of(grpc).map(|p| (p, "Consul's gRPC (consul.grpc_address)")))
        }
        None => ports.push((8502, "Consul's gRPC (its default port)")),
    }
    match &consul.dns_address {
        Some(dns) => ports.extend(port_of(dns).map(|p| (p, "Consul's DNS (consul.dns_address)"))),
        None => ports.push((8600, "Consul's DNS (its default port)")),
    }
    ports
}

/// Static host ports are node-wide: two groups cannot both take one, the dynamic range is
/// kept for allocation, and a bridge group may not map a port Consul answers on.
pub(super) fn check_static_ports(
    c: &mut Checker,
    groups: &[Group],
    (low, high): (u16, u16),
    consul: &[(u16, &str)],
) {
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
            let bridge = network.mode == "bridge";
            if let Some((_, what)) = consul.iter().find(|(p, _)| bridge && *p == host) {
                c.err(
                    at.clone(),
                    format!("static port {host} is {what}: mapping it would send the host's own Consul traffic to group \"{}\"", group.name),
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
