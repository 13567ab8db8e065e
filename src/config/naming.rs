//! The naming rules: Consul service IDs, port labels Nomad injects, namespace and veth
//! names, Envoy's ports, allocation IDs. It depends only on the config's types, so
//! validation, `plan`, `net` and `consul` all follow the same rules and every import
//! points at `config`.

use super::Service;
use super::validate::PROXY_PREFIX;

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// A Linux interface name: 1 to 15 bytes, so the kernel never refuses or cuts it. Fixed
/// size (heapless): names are built and copied into netlink messages without allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfName(heapless::String<MAX_IFNAME>);

impl IfName {
    /// `name` as an interface name, if it is one.
    pub fn new(name: &str) -> Option<IfName> {
        let fixed = heapless::String::try_from(name).ok()?;
        (!name.is_empty()).then_some(IfName(fixed))
    }

    /// A name written in our source ("lo", "eth0"): all are short, and one that were not
    /// would be cut, never refused.
    pub fn literal(name: &'static str) -> IfName {
        let mut fixed = heapless::String::new();
        for c in name.chars() {
            if fixed.push(c).is_err() {
                break;
            }
        }
        IfName(fixed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for IfName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

serialize_as_str!(IfName);

/// Envoy's admin and ready ports inside the namespace for the `i`th service of a group
/// (docs/architecture.md: admin 127.0.0.2:19000+i, ready 127.0.0.1:19100+i).
pub fn envoy_ports(service_index: usize) -> (u16, u16) {
    let i = u16::try_from(service_index).unwrap_or(u16::MAX).min(99);
    (19000 + i, 19100 + i)
}

pub const NETNS_DIR: &str = "/run/netns";

pub fn netns_name(group: &str) -> String {
    format!("outpost-{group}")
}

/// Host end of a group's veth: `op` + 8 hex digits of a hash of the group name, so it fits
/// IFNAMSIZ whatever the group is called.
/// Inside each namespace the group's interface is `eth0`, as with Nomad's CNI bridge.
pub fn group_interface() -> IfName {
    IfName::literal(GROUP_INTERFACE)
}

pub const GROUP_INTERFACE: &str = "eth0";

pub fn host_veth_name(group: &str) -> IfName {
    use std::fmt::Write;
    let mut name = heapless::String::new();
    // 10 bytes: always fits.
    let _ = write!(name, "op{:08x}", fnv1a64(group.as_bytes(), 0) as u32);
    IfName(name)
}

/// Consul service ID (docs/architecture.md): `_outpost-<group>-<service>-<port label or number>`.
pub fn service_id(group: &str, service: &Service) -> String {
    match service_port(service) {
        Some(port) => format!("_outpost-{group}-{}-{port}", service.name),
        None => format!("_outpost-{group}-{}", service.name),
    }
}

/// The kind of a Connect gateway, as Consul and `-gateway` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayKind {
    Ingress,
    Terminating,
    Mesh,
}

impl GatewayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayKind::Ingress => "ingress",
            GatewayKind::Terminating => "terminating",
            GatewayKind::Mesh => "mesh",
        }
    }
}

impl std::fmt::Display for GatewayKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

serialize_as_str!(GatewayKind);

/// The gateway kind of a service, if it is one.
pub fn gateway_kind(service: &Service) -> Option<GatewayKind> {
    let gateway = service.connect.as_ref()?.gateway.as_ref()?;
    if gateway.ingress.is_some() {
        Some(GatewayKind::Ingress)
    } else if gateway.terminating.is_some() {
        Some(GatewayKind::Terminating)
    } else {
        gateway.mesh.as_ref().map(|_| GatewayKind::Mesh)
    }
}

/// The service's port label or number. A terminating gateway written without one gets
/// Nomad's injected `connect-terminating-<service>` (§1.4).
pub fn service_port(service: &Service) -> Option<String> {
    match (&service.port, gateway_kind(service)) {
        (Some(port), _) => Some(port.0.clone()),
        (None, Some(GatewayKind::Terminating)) => {
            Some(format!("connect-terminating-{}", service.name))
        }
        (None, _) => None,
    }
}

/// The dynamic port label of the `ci`th check of a service when it is exposed through the
/// sidecar without a port of its own: Nomad's `svc_<service>_ck_<6 hex>` (§1.6). Nomad's hex
/// comes from its check hash; ours from a hash of the service name and check index, just as
/// stable.
pub fn expose_check_label(service: &Service, ci: usize) -> String {
    let hash = fnv1a64(format!("{}_{ci}", service.name).as_bytes(), 0);
    format!("svc_{}_ck_{:06x}", service.name, hash & 0xff_ffff)
}

fn fnv1a64(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A stable, UUID-shaped allocation ID for `NOMAD_ALLOC_ID`: the same node and group always
/// get the same ID, so metrics tags and logs stay comparable across restarts.
pub fn alloc_id(node: &str, group: &str) -> String {
    let key = format!("{node}/{group}");
    let hi = fnv1a64(key.as_bytes(), 0);
    let lo = fnv1a64(key.as_bytes(), 0x9e37_79b9_7f4a_7c15);
    let hex = format!("{hi:016x}{lo:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn has_sidecar(service: &Service) -> bool {
    service
        .connect
        .as_ref()
        .is_some_and(|c| c.sidecar_service.is_some())
}

pub fn sidecar_label(service: &Service) -> String {
    service
        .connect
        .as_ref()
        .and_then(|c| c.sidecar_service.as_ref())
        .and_then(|s| s.port.clone())
        .unwrap_or_else(|| format!("{PROXY_PREFIX}-{}", service.name))
}

/// The node's parent cgroup when the config names none: `outpost.slice` for the default
/// run_dir, else one per run_dir (two agents with their own run_dirs are two nodes, and
/// must not share cgroups).
pub fn default_cgroup_parent(run_dir: &str) -> String {
    if run_dir == "/run/outpost" {
        return "outpost.slice".into();
    }
    // FNV-1a: stable across builds and architectures.
    let hash = run_dir.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("outpost-{:08x}.slice", hash as u32)
}

/// The cgroup path of a task, relative to each hierarchy's root.
pub fn task_cgroup(parent: &str, group: &str, task: &str) -> String {
    format!("{parent}/{group}.slice/{task}.scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_1_to_15_bytes() {
        assert_eq!(
            IfName::new("outpost-bridge1").as_deref(),
            Some("outpost-bridge1")
        );
        assert_eq!(IfName::new("outpost-bridge12"), None);
        assert_eq!(IfName::new(""), None);
        assert_eq!(IfName::literal("lo").as_str(), "lo");
        assert_eq!(group_interface().as_str(), "eth0");
    }

    #[test]
    fn names_fit_their_limits() {
        let long = "a".repeat(63);
        assert_eq!(netns_name(&long).len(), 71);
        assert_eq!(host_veth_name(&long).len(), 10);
        assert_ne!(host_veth_name("api"), host_veth_name("web"));
        assert_eq!(alloc_id("n", "g"), alloc_id("n", "g"));
        assert_ne!(alloc_id("n", "g"), alloc_id("n", "h"));
        assert_eq!(alloc_id("n", "g").len(), 36);
    }

    #[test]
    fn each_run_dir_is_its_own_node_in_the_cgroup_tree() {
        assert_eq!(default_cgroup_parent("/run/outpost"), "outpost.slice");
        let a = default_cgroup_parent("/tmp/a/run");
        assert_ne!(a, default_cgroup_parent("/tmp/b/run"));
        assert!(a.starts_with("outpost-") && a.ends_with(".slice"), "{a}");
        assert_eq!(
            task_cgroup("outpost.slice", "web", "api"),
            "outpost.slice/web.slice/api.scope"
        );
    }
}
