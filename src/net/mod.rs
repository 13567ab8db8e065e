//! The host's network for bridge-mode groups: the bridge, one namespace and veth pair per
//! group, addresses, routes, sysctls, and NAT (`firewall`). Everything is reconciled from
//! the plan: applying twice changes nothing, a half-finished apply is completed by the next,
//! and our objects that no group owns any more are removed.

pub mod firewall;
pub mod host;
mod host_before;
mod link;
mod netlink;
pub mod netns;
mod nft;
pub mod spec;
pub mod tproxy;

pub use host::host_facts;

use firewall::{Mapping, NatSpec};
use log::{info, warn};
use spec::{BridgePlan, Firewall, GroupNet};
use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// Our namespaces are `outpost-<group>`.
const NETNS_PREFIX: &str = "outpost-";
use crate::config::naming::GROUP_INTERFACE as GROUP_IFNAME;
/// IPv4 settings of a group's interface (netavark's choice): announce the address on link
/// up, loose reverse-path filtering. Set over netlink with the link-up request.
const GROUP_IPV4_CONF: [(u16, u32); 2] = [
    (link::IPV4_DEVCONF_ARP_NOTIFY, 1),
    (link::IPV4_DEVCONF_RP_FILTER, 2),
];

/// A failed step, with what it was about.
#[derive(Debug)]
pub struct NetError {
    pub what: String,
    pub source: io::Error,
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for NetError {}

/// The kernel said no: trying the same change again would not help.
impl From<NetError> for crate::error::Error {
    fn from(e: NetError) -> crate::error::Error {
        crate::error::Error::permanent(e.to_string())
    }
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, NetError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, NetError> {
        self.map_err(|source| NetError {
            what: what(),
            source,
        })
    }
}

/// Is `name` one of our host-side veth names (`op` + 8 hex digits)?
fn is_our_veth(name: &str) -> bool {
    name.len() == 10 && name.starts_with("op") && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The port mappings of a bridge group (none in host mode).
pub fn group_mappings(group: &GroupNet) -> Vec<Mapping> {
    let Some(address) = group
        .netns
        .and_then(|ns| ns.address.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
    else {
        return Vec::new();
    };
    let address_ipv6 = group
        .netns
        .and_then(|ns| ns.address_ipv6.as_deref()?.split('/').next()?.parse().ok());
    group
        .ports
        .iter()
        .map(|p| Mapping {
            group: group.name.to_string(),
            label: p.label.clone(),
            host_port: p.host_port,
            address,
            address_ipv6,
            port: p.netns_port,
        })
        .collect()
}

fn nat_spec(bridge: &BridgePlan, groups: &[GroupNet]) -> NatSpec {
    NatSpec {
        bridge: bridge.name.clone(),
        subnet: bridge.subnet,
        subnet_ipv6: bridge.subnet_ipv6,
        mappings: groups.iter().flat_map(group_mappings).collect(),
    }
}

/// Brings the host to the plan's network: bridge, every bridge group's namespace, veth,
/// address and route, the NAT table; removes our namespaces, veths and rules no group owns.
pub fn apply(bridge: &BridgePlan, groups: &[GroupNet]) -> Result<(), NetError> {
    let bridge_groups: Vec<&GroupNet> = groups.iter().filter(|g| g.netns.is_some()).collect();
    if bridge_groups.is_empty() {
        // Nothing needs the bridge: leave no bridge, namespace or rule of ours behind.
        return teardown(bridge);
    }
    let mut host = HostNetwork::prepare(bridge)?;
    for group in &bridge_groups {
        host.ensure_group(group)?;
    }
    host.remove_orphans(&bridge_groups)?;
    sync_firewall(bridge, groups)
}

/// Replaces our NAT table with the rules for `groups` (or removes it when the firewall is
/// not ours).
pub fn sync_firewall(bridge: &BridgePlan, groups: &[GroupNet]) -> Result<(), NetError> {
    if bridge.firewall == Firewall::Nftables {
        firewall::replace(&nat_spec(bridge, groups))
            .context(|| format!("install nf_tables table {}", firewall::TABLE))
    } else {
        firewall::remove().context(|| format!("remove nf_tables table {}", firewall::TABLE))
    }
}

/// The host side, ready for groups: the bridge exists with its address and sysctls.
pub struct HostNetwork {
    sock: netlink::Socket,
    bridge: i32,
    bridge_plan: BridgePlan,
}

impl HostNetwork {
    pub fn prepare(plan: &BridgePlan) -> Result<HostNetwork, NetError> {
        let mut sock = link::open().context(|| "open a netlink route socket".into())?;
        // First, because it refuses a name taken by another kind of interface before
        // anything on the host has changed.
        let bridge = ensure_bridge(&mut sock, plan)?;
        host_before::remember()
            .context(|| format!("record the host's state in {}", host_before::FILE))?;
        netns::ensure_dir().context(|| "prepare /run/netns".into())?;
        for (key, value) in forwarding_sysctls(plan) {
            write_sysctl(&key, value)?;
        }
        keep_sysctls(plan)?;
        Ok(HostNetwork {
            sock,
            bridge,
            bridge_plan: plan.clone(),
        })
    }

    /// One group's namespace, veth pair, address and route (not its NAT rules: see
    /// `sync_firewall`).
    pub fn ensure_group(&mut self, group: &GroupNet) -> Result<(), NetError> {
        ensure_group(&mut self.sock, self.bridge, &self.bridge_plan, group)
    }

    /// Deletes a group's namespace; the kernel removes its veth.
    pub fn remove_group(&mut self, group: &GroupNet) -> Result<(), NetError> {
        let Some(ns) = group.netns else {
            return Ok(());
        };
        netns::delete(&ns.name)
            .context(|| format!("group {}: delete namespace {}", group.name, ns.name))
    }

    fn remove_orphans(&mut self, groups: &[&GroupNet]) -> Result<(), NetError> {
        remove_orphans(&mut self.sock, groups)
    }
}

/// Removes everything `apply` made: every `outpost-*` namespace and our veths, our NAT
/// table, and the bridge if no port of anyone else is left on it.
pub fn teardown(bridge_plan: &BridgePlan) -> Result<(), NetError> {
    for name in netns::list(NETNS_PREFIX).context(|| "list /run/netns".into())? {
        netns::delete(&name).context(|| format!("delete namespace {name}"))?;
        info!("deleted namespace {name}");
    }
    let mut sock = link::open().context(|| "open a netlink route socket".into())?;
    // The kernel frees a deleted namespace, and the veth in it, later and asynchronously:
    // delete the host ends now, so nothing of ours is left when teardown returns.
    for l in link::list(&mut sock).context(|| "list links".into())? {
        if is_our_veth(&l.name) {
            link::delete(&mut sock, l.index).context(|| format!("delete {}", l.name))?;
        }
    }
    // (Without nf_tables in the kernel there is nothing to remove.)
    firewall::remove().context(|| format!("remove nf_tables table {}", firewall::TABLE))?;
    let bridge_name = &bridge_plan.name;
    let Some(bridge) =
        link::get(&mut sock, bridge_name).context(|| format!("look up bridge {bridge_name}"))?
    else {
        host_before::restore();
        return Ok(());
    };
    let links = link::list(&mut sock).context(|| "list links".into())?;
    let foreign_ports: Vec<&str> = links
        .iter()
        .filter(|l| l.master == Some(bridge.index) && !is_our_veth(&l.name))
        .map(|l| l.name.as_str())
        .collect();
    if !foreign_ports.is_empty() {
        warn!(
            "keeping bridge {bridge_name}: other interfaces are attached ({})",
            foreign_ports.join(", ")
        );
        return Ok(());
    }
    link::delete(&mut sock, bridge.index).context(|| format!("delete bridge {bridge_name}"))?;
    match std::fs::remove_file(sysctl_file(bridge_name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).context(|| format!("remove {}", sysctl_file(bridge_name).display()));
        }
        _ => {}
    }
    info!("deleted bridge {bridge_name}");
    host_before::restore();
    Ok(())
}

/// A locally administered MAC derived from the bridge name: the same on every start.
fn bridge_mac(name: &str) -> [u8; 6] {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let b = h.to_be_bytes();
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

fn ensure_bridge(sock: &mut netlink::Socket, plan: &BridgePlan) -> Result<i32, NetError> {
    let name = &plan.name;
    let existing = link::get(sock, name).context(|| format!("look up bridge {name}"))?;
    let bridge = match existing {
        Some(l) if l.kind.as_deref() == Some("bridge") => l,
        Some(l) => {
            return Err(NetError {
                what: format!("network.bridge {name}"),
                source: io::Error::other(format!(
                    "an interface with that name exists and is a {}, not a bridge",
                    l.kind.as_deref().unwrap_or("device")
                )),
            });
        }
        None => {
            link::create_bridge(sock, name, bridge_mac(name)).map_err(|e| NetError {
                what: format!("create bridge {name}"),
                source: explain_missing_kernel_support(e, "bridge", "CONFIG_BRIDGE", "bridge"),
            })?;
            info!("created bridge {name}");
            link::get(sock, name)
                .context(|| format!("look up bridge {name}"))?
                .ok_or_else(|| NetError {
                    what: format!("bridge {name}"),
                    source: io::Error::other("vanished after creation"),
                })?
        }
    };
    // Before the addresses: a host with IPv6 off by default has it off on a new bridge.
    for (key, value) in bridge_sysctls(plan) {
        write_sysctl(&key, value)?;
    }
    let mut wanted = vec![(plan.subnet.gateway().into(), plan.subnet.prefix)];
    wanted.extend(plan.subnet_ipv6.map(|s| (s.gateway().into(), s.prefix)));
    link::set_addresses(sock, bridge.index, &wanted).context(|| {
        let list: Vec<String> = wanted.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
        format!("set address {} on bridge {name}", list.join(" and "))
    })?;
    if !bridge.up {
        link::set_up(sock, bridge.index).context(|| format!("set bridge {name} up"))?;
    }
    Ok(bridge.index)
}

fn explain_missing_kernel_support(
    e: io::Error,
    what: &str,
    config: &str,
    module: &str,
) -> io::Error {
    if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) {
        io::Error::new(
            e.kind(),
            format!(
                "the kernel has no {what} support ({config}); load it with `modprobe {module}`: {e}"
            ),
        )
    } else {
        e
    }
}

fn ensure_group(
    sock: &mut netlink::Socket,
    bridge: i32,
    bridge_plan: &BridgePlan,
    group: &GroupNet,
) -> Result<(), NetError> {
    let Some(ns) = group.netns else {
        return Ok(());
    };
    let created = netns::create(&ns.name)
        .context(|| format!("group {}: create namespace {}", group.name, ns.name))?;
    if created {
        info!("group {}: created namespace {}", group.name, ns.name);
    }
    let host_veth = link::get(sock, &ns.host_veth)
        .context(|| format!("group {}: look up {}", group.name, ns.host_veth))?;
    // A namespace made just now cannot hold a peer yet; skip the look (a thread hop).
    let peer_present = !created
        && netns::run_in(&ns.name, || {
            Ok(link::get(&mut link::open()?, GROUP_IFNAME)?.is_some())
        })
        .context(|| {
            format!(
                "group {}: look up {GROUP_IFNAME} in {}",
                group.name, ns.name
            )
        })?;
    let pair_ok = host_veth
        .as_ref()
        .is_some_and(|l| l.kind.as_deref() == Some("veth"))
        && peer_present;
    if !pair_ok {
        // Half a pair (an interrupted apply, or a namespace recreated under it): start over.
        if let Some(stale) = &host_veth {
            link::delete(sock, stale.index)
                .context(|| format!("group {}: delete stale {}", group.name, stale.name))?;
        }
        if peer_present {
            netns::run_in(&ns.name, || {
                let mut s = link::open()?;
                match link::get(&mut s, GROUP_IFNAME)? {
                    Some(l) => link::delete(&mut s, l.index),
                    None => Ok(()),
                }
            })
            .context(|| format!("group {}: delete stale {GROUP_IFNAME}", group.name))?;
        }
        let ns_file = std::fs::File::open(netns::path(&ns.name))
            .context(|| format!("group {}: open {}", group.name, ns.path))?;
        link::create_veth(
            sock,
            &ns.host_veth,
            bridge,
            GROUP_IFNAME,
            ns_file.as_raw_fd(),
        )
        .map_err(|e| NetError {
            what: format!("group {}: create veth {}", group.name, ns.host_veth),
            source: explain_missing_kernel_support(e, "veth", "CONFIG_VETH", "veth"),
        })?;
        info!(
            "group {}: created veth {} <-> {}:{GROUP_IFNAME}",
            group.name, ns.host_veth, ns.name
        );
    } else if let Some(l) = &host_veth {
        if l.master != Some(bridge) {
            link::set_master(sock, l.index, bridge)
                .context(|| format!("group {}: attach {} to the bridge", group.name, l.name))?;
        }
        if !l.up {
            link::set_up(sock, l.index)
                .context(|| format!("group {}: set {} up", group.name, l.name))?;
        }
    }
    let port = link::get(sock, &ns.host_veth)
        .context(|| format!("group {}: look up {}", group.name, ns.host_veth))?
        .ok_or_else(|| NetError {
            what: format!("group {}: veth {}", group.name, ns.host_veth),
            source: io::Error::other("vanished after creation"),
        })?;
    link::set_hairpin(sock, port.index)
        .context(|| format!("group {}: hairpin on {}", group.name, ns.host_veth))?;
    let inside = Inside {
        v4: parse_cidr(&ns.address),
        gateway_v4: bridge_plan.subnet.gateway().into(),
        v6: ns
            .address_ipv6
            .as_deref()
            .map(parse_cidr)
            .zip(bridge_plan.subnet_ipv6.map(|s| s.gateway().into())),
    };
    netns::run_in(&ns.name, || configure_inside(&inside, created)).context(|| {
        format!(
            "group {}: configure {GROUP_IFNAME} in {}",
            group.name, ns.name
        )
    })?;
    if let Some(t) = group.tproxy {
        netns::run_in(&ns.name, || tproxy::apply(t)).context(|| {
            format!(
                "group {}: transparent proxy rules (table {}) in {}",
                group.name,
                tproxy::TABLE,
                ns.name
            )
        })?;
    }
    Ok(())
}

/// `addr/prefix` from the plan (which wrote it); a malformed one becomes the unspecified
/// address, which the kernel refuses with an error naming the step.
fn parse_cidr(text: &str) -> (IpAddr, u8) {
    let (ip, prefix) = text.split_once('/').unwrap_or((text, ""));
    let ip: IpAddr = ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let full = if ip.is_ipv4() { 32 } else { 128 };
    (ip, prefix.parse().unwrap_or(full))
}

/// A group's addresses and gateways inside its namespace (IPv6 on a dual-stack bridge).
struct Inside {
    v4: (IpAddr, u8),
    gateway_v4: IpAddr,
    /// (address and prefix length, gateway).
    v6: Option<((IpAddr, u8), IpAddr)>,
}

/// Inside a group's namespace: lo and eth0 up, the addresses, the default routes, sysctls.
fn configure_inside(inside: &Inside, fresh: bool) -> io::Result<()> {
    let mut sock = link::open()?;
    let eth0 = link::get(&mut sock, GROUP_IFNAME)?.ok_or_else(|| io::Error::other("no eth0"))?;
    let v6 = inside.v6;
    if fresh {
        // A new namespace: lo and eth0 down, no address. One write, processed in order.
        let (address, prefix) = inside.v4;
        let mut batch = vec![
            link::set_up_msg(link::LOOPBACK_INDEX),
            link::set_up_with_ipv4_conf_msg(eth0.index, &GROUP_IPV4_CONF),
            link::add_address_msg(eth0.index, address, prefix),
            link::default_route_msg(inside.gateway_v4, eth0.index),
        ];
        if let Some(((address, prefix), gateway)) = v6 {
            batch.push(link::add_address_msg(eth0.index, address, prefix));
            batch.push(link::default_route_msg(gateway, eth0.index));
        }
        sock.batch(batch)?;
    } else {
        if !link::get(&mut sock, "lo")?.is_some_and(|lo| lo.up) {
            link::set_up(&mut sock, link::LOOPBACK_INDEX)?;
        }
        sock.request(link::set_up_with_ipv4_conf_msg(
            eth0.index,
            &GROUP_IPV4_CONF,
        ))?;
        let mut wanted = vec![inside.v4];
        wanted.extend(v6.map(|(address, _)| address));
        link::set_addresses(&mut sock, eth0.index, &wanted)?;
        link::replace_default_route(&mut sock, inside.gateway_v4, eth0.index)?;
        match v6 {
            Some((_, gateway)) => link::replace_default_route(&mut sock, gateway, eth0.index)?,
            None => link::delete_ipv6_default_route(&mut sock)?,
        }
    }
    // Tasks run unprivileged; inside its own namespace a group binds any port (as Docker
    // sets it), and only mapped ports are reachable from outside anyway.
    std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
}

fn remove_orphans(sock: &mut netlink::Socket, groups: &[&GroupNet]) -> Result<(), NetError> {
    let wanted_ns: BTreeSet<&str> = groups
        .iter()
        .filter_map(|g| g.netns)
        .map(|n| n.name.as_str())
        .collect();
    for name in netns::list(NETNS_PREFIX).context(|| "list /run/netns".into())? {
        if !wanted_ns.contains(name.as_str()) {
            netns::delete(&name).context(|| format!("delete namespace {name}"))?;
            info!("deleted namespace {name}: no group owns it");
        }
    }
    let wanted_veth: BTreeSet<&str> = groups
        .iter()
        .filter_map(|g| g.netns)
        .map(|n| n.host_veth.as_str())
        .collect();
    for l in link::list(sock).context(|| "list links".into())? {
        if is_our_veth(&l.name) && !wanted_veth.contains(l.name.as_str()) {
            link::delete(sock, l.index).context(|| format!("delete {}", l.name))?;
            info!("deleted veth {}: no group owns it", l.name);
        }
    }
    Ok(())
}

const SYSCTL_D: &str = "/run/sysctl.d";

fn sysctl_file(bridge: &str) -> std::path::PathBuf {
    std::path::Path::new(SYSCTL_D).join(format!("50-outpost-{bridge}.conf"))
}

/// Forwarding for the families the bridge carries (host-wide).
fn forwarding_sysctls(plan: &BridgePlan) -> Vec<(String, &'static str)> {
    let mut list = vec![("net/ipv4/ip_forward".to_string(), "1")];
    if plan.subnet_ipv6.is_some() {
        list.push(("net/ipv6/conf/all/forwarding".into(), "1"));
    }
    list
}

/// The bridge's own settings. Loose reverse-path filtering and route_localnet let
/// 127.0.0.1:<port> reach groups (netavark sets the same); on a dual-stack bridge IPv6 is
/// on and takes no router advertisements (the bridge is the router).
fn bridge_sysctls(plan: &BridgePlan) -> Vec<(String, &'static str)> {
    let name = &plan.name;
    let mut list = vec![
        (format!("net/ipv4/conf/{name}/route_localnet"), "1"),
        (format!("net/ipv4/conf/{name}/rp_filter"), "2"),
    ];
    if plan.subnet_ipv6.is_some() {
        list.push((format!("net/ipv6/conf/{name}/disable_ipv6"), "0"));
        list.push((format!("net/ipv6/conf/{name}/accept_ra"), "0"));
    }
    list
}

/// The host sysctls outpost sets, also written to /run/sysctl.d so a later run of
/// systemd-sysctl does not undo them (netavark does the same). Slash-separated keys,
/// because a bridge name may contain dots.
fn keep_sysctls(plan: &BridgePlan) -> Result<(), NetError> {
    let bridge = &plan.name;
    let mut text =
        format!("# Written by outpost for bridge {bridge}; removed by `outpost teardown`.\n");
    for (key, value) in forwarding_sysctls(plan)
        .into_iter()
        .chain(bridge_sysctls(plan))
    {
        text.push_str(&format!("{key} = {value}\n"));
    }
    let path = sysctl_file(bridge);
    if std::fs::read_to_string(&path).is_ok_and(|current| current == text) {
        return Ok(());
    }
    std::fs::create_dir_all(SYSCTL_D)
        .and_then(|()| std::fs::write(&path, text))
        .context(|| format!("write {}", path.display()))
}

fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/{key}");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value)
        .context(|| format!("set sysctl {} = {value}", key.replace('/', ".")))
}

/// Problems and notes about this host's support for bridge networking, in words that say
/// what to do. Errors make `apply` pointless; notes are worth a log line.
pub struct SelfCheck {
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// `listeners`: what listens on the host (`host::listeners`), for mapped-port conflicts.
pub fn self_check(
    bridge: &BridgePlan,
    groups: &[GroupNet],
    listeners: &[host::Listener],
) -> SelfCheck {
    let mut check = SelfCheck {
        errors: Vec::new(),
        notes: Vec::new(),
    };
    if !groups.iter().any(|g| g.netns.is_some()) {
        return check;
    }
    check.errors.extend(probe_link_support());
    // Whether /run/netns can be made, without making it: a failed check changes nothing.
    let parent = std::path::Path::new(netns::NETNS_DIR)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    let writable = std::path::Path::new(netns::NETNS_DIR).is_dir()
        || nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable {
        check.errors.push(format!(
            "cannot create {}: {} is not writable; outpost needs root and a writable /run",
            netns::NETNS_DIR,
            parent.display()
        ));
    }
    if bridge.firewall == Firewall::Nftables {
        check.errors.extend(port_conflicts(groups, listeners));
    }
    if bridge.firewall == Firewall::Nftables
        && let Err(e) = firewall_probe()
    {
        check.errors.push(format!(
            "nf_tables is not usable ({e}); enable CONFIG_NF_TABLES and CONFIG_NFT_NAT/MASQ/FIB, or set network.firewall = \"none\" and map ports yourself"
        ));
    }
    if bridge.subnet_ipv6.is_some() {
        ipv6_check(&mut check);
    }
    match std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").map(|v| v.trim() == "1") {
        Ok(true) => check.notes.push(format!(
            "net.bridge.bridge-nf-call-iptables = 1: traffic between groups on bridge {} also passes the host's ip filter hooks; if a host firewall drops forwarded packets, allow {}",
            bridge.name, bridge.subnet
        )),
        Ok(false) => {}
        Err(_) => check.notes.push("br_netfilter is not loaded: bridged traffic between groups bypasses the host firewall (outpost does not need it)".into()),
    }
    check
}

/// A dual-stack bridge needs IPv6 in the kernel; and turning IPv6 forwarding on makes the
/// kernel ignore router advertisements on interfaces with `accept_ra = 1`, which a host
/// that takes its own IPv6 address or route from them would notice.
fn ipv6_check(check: &mut SelfCheck) {
    let conf = std::path::Path::new("/proc/sys/net/ipv6/conf");
    let Ok(entries) = std::fs::read_dir(conf) else {
        check.errors.push("network.subnet_ipv6 is set but this kernel has no IPv6 (booted with ipv6.disable=1, or built without CONFIG_IPV6); remove subnet_ipv6".into());
        return;
    };
    let forwarding = std::fs::read_to_string(conf.join("all/forwarding")).unwrap_or_default();
    if forwarding.trim() == "1" {
        return;
    }
    let mut listening: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !["all", "default", "lo"].contains(&name.as_str()))
        .filter(|name| {
            std::fs::read_to_string(conf.join(name).join("accept_ra"))
                .is_ok_and(|v| v.trim() == "1")
        })
        .collect();
    listening.sort();
    if !listening.is_empty() {
        check.notes.push(format!(
            "net.ipv6.conf.all.forwarding = 1 (for network.subnet_ipv6) stops router advertisements being accepted on {}: if the host takes its IPv6 address or route from them, set accept_ra = 2 there",
            listening.join(", ")
        ));
    }
}

/// Mapped host ports that a host service listens on: the DNAT rule would take its traffic
/// (from the host itself too) to the group instead.
fn port_conflicts(groups: &[GroupNet], listeners: &[host::Listener]) -> Vec<String> {
    let mut errors = Vec::new();
    for group in groups.iter().filter(|g| g.netns.is_some()) {
        for port in group.ports.iter().filter(|p| p.host_port > 0) {
            for l in listeners.iter().filter(|l| l.port == port.host_port) {
                errors.push(format!(
                    "group \"{}\" port \"{}\" maps host port {}, which {} already listens on: its traffic would go to the group; choose another port",
                    group.name, port.label, port.host_port, l.describe()
                ));
            }
        }
    }
    errors
}

/// Creates a bridge and a veth pair in a throwaway network namespace (a probe thread's
/// own, gone when the thread ends): the one sure test that the kernel supports both, however
/// its modules are packaged (built-in drivers may leave no trace in /sys/module). Nothing on
/// the host changes. Without the right to unshare there is no verdict here; `apply` will say.
fn probe_link_support() -> Vec<String> {
    let probe = || -> Vec<String> {
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return Vec::new();
        }
        let Ok(mut sock) = link::open() else {
            return Vec::new();
        };
        let missing = |e: &io::Error| e.raw_os_error() == Some(nix::libc::EOPNOTSUPP);
        let mut errors = Vec::new();
        if let Err(e) = link::create_bridge(&mut sock, "opprobe0", [0x02, 0, 0, 0, 0, 1])
            && missing(&e)
        {
            errors.push("the kernel has no bridge support: build it with CONFIG_BRIDGE or load the module (modprobe bridge)".to_string());
        }
        let own_ns = std::fs::File::open("/proc/thread-self/ns/net");
        if let Ok(ns) = own_ns
            && let Err(e) = link::create_veth(&mut sock, "opprobe1", 0, "opprobe2", ns.as_raw_fd())
            && missing(&e)
        {
            errors.push("the kernel has no veth support: build it with CONFIG_VETH or load the module (modprobe veth)".to_string());
        }
        errors
    };
    std::thread::scope(|scope| scope.spawn(probe).join().unwrap_or_default())
}

fn firewall_probe() -> io::Result<()> {
    firewall::probe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_our_veth_names() {
        assert!(is_our_veth("op056aae07"));
        assert!(!is_our_veth("op056aae0"));
        assert!(!is_our_veth("eth0"));
        assert!(!is_our_veth("opzzzzzzzz"));
        assert_eq!(bridge_mac("outpost")[0], 0x02);
        assert_eq!(bridge_mac("outpost"), bridge_mac("outpost"));
    }
}
