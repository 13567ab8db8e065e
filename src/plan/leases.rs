//! Deterministic allocation of bridge addresses (host-local IPAM semantics) and dynamic host
//! ports. Earlier leases from the node state are kept whenever still valid, so a restart or
//! reboot gives every group the same address and ports; new requests take the lowest free
//! value. Two passes (keep, then allocate) so a new group never takes an existing lease.

use crate::config::{Ipv4Net, Ipv6Net};
use crate::state::NodeState;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Picks an IPv4 address for each named group.
pub fn lease_addresses(
    subnet: Ipv4Net,
    groups: &[&str],
    state: &NodeState,
) -> Result<BTreeMap<String, Ipv4Addr>, String> {
    let leasable = |ip: Ipv4Addr| {
        subnet.contains(ip)
            && ip != subnet.gateway()
            && ip != subnet.network()
            && ip != subnet.broadcast()
    };
    lease(
        groups,
        |g| state.groups.get(g)?.address.as_deref()?.parse().ok(),
        leasable,
        || subnet.leasable(),
    )
    .map_err(|group| format!("subnet {subnet} has no free address left for group \"{group}\""))
}

/// Picks an IPv6 address for each named group (`network.subnet_ipv6`), kept in the state
/// beside the IPv4 lease.
pub fn lease_addresses_ipv6(
    subnet: Ipv6Net,
    groups: &[&str],
    state: &NodeState,
) -> Result<BTreeMap<String, Ipv6Addr>, String> {
    let leasable =
        |ip: Ipv6Addr| subnet.contains(ip) && ip != subnet.gateway() && ip != subnet.network();
    lease(
        groups,
        |g| state.groups.get(g)?.address_ipv6.as_deref()?.parse().ok(),
        leasable,
        || subnet.leasable(),
    )
    .map_err(|group| format!("subnet_ipv6 {subnet} has no free address left for group \"{group}\""))
}

/// Host-local IPAM for either family: the previous lease when still valid and not taken,
/// else the lowest free address. `Err` names the group left without one.
fn lease<A: Copy + Ord, I: Iterator<Item = A>>(
    groups: &[&str],
    previous: impl Fn(&str) -> Option<A>,
    leasable: impl Fn(A) -> bool,
    candidates: impl Fn() -> I,
) -> Result<BTreeMap<String, A>, String> {
    let mut taken = BTreeSet::new();
    let mut leases = BTreeMap::new();
    for group in groups {
        if let Some(ip) = previous(group).filter(|ip| leasable(*ip) && !taken.contains(ip)) {
            taken.insert(ip);
            leases.insert(group.to_string(), ip);
        }
    }
    for group in groups {
        if leases.contains_key(*group) {
            continue;
        }
        let ip = candidates()
            .find(|ip| !taken.contains(ip))
            .ok_or_else(|| group.to_string())?;
        taken.insert(ip);
        leases.insert(group.to_string(), ip);
    }
    Ok(leases)
}

/// One dynamic port to allocate.
pub struct PortRequest {
    pub group: String,
    pub label: String,
    /// Ports this request must not get because something in the group's namespace already
    /// listens there (only matters when the namespace port equals the host port).
    pub avoid: BTreeSet<u16>,
}

/// Allocates host ports from `range` for each request, avoiding `used` (static ports).
/// Returns the ports in request order.
pub fn allocate_ports(
    range: (u16, u16),
    used: &BTreeSet<u16>,
    requests: &[PortRequest],
    state: &NodeState,
) -> Result<Vec<u16>, String> {
    let (low, high) = range;
    let mut taken = used.clone();
    let mut result: Vec<Option<u16>> = vec![None; requests.len()];
    for (i, req) in requests.iter().enumerate() {
        let previous = state
            .groups
            .get(&req.group)
            .and_then(|g| g.ports.get(&req.label))
            .copied();
        if let Some(port) = previous
            .filter(|p| (low..=high).contains(p) && !taken.contains(p) && !req.avoid.contains(p))
        {
            taken.insert(port);
            result[i] = Some(port);
        }
    }
    for (i, req) in requests.iter().enumerate() {
        if result[i].is_some() {
            continue;
        }
        let port = (low..=high)
            .find(|p| !taken.contains(p) && !req.avoid.contains(p))
            .ok_or_else(|| {
                format!(
                    "dynamic port range {low}-{high} has no free port left for group \"{}\" port \"{}\"",
                    req.group, req.label
                )
            })?;
        taken.insert(port);
        result[i] = Some(port);
    }
    Ok(result.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::GroupState;

    fn state_with(group: &str, address: Option<&str>, ports: &[(&str, u16)]) -> NodeState {
        let mut state = <NodeState as Default>::default();
        state.groups.insert(
            group.into(),
            GroupState {
                address: address.map(Into::into),
                address_ipv6: None,
                ports: ports.iter().map(|(l, p)| (l.to_string(), *p)).collect(),
            },
        );
        state
    }

    #[test]
    fn addresses_keep_leases_and_fill_lowest_free() {
        let subnet = Ipv4Net::parse("10.9.0.0/29").unwrap();
        let state = state_with("b", Some("10.9.0.2"), &[]);
        let leases = lease_addresses(subnet, &["a", "b", "c"], &state).unwrap();
        assert_eq!(leases["b"], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(leases["a"], Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(leases["c"], Ipv4Addr::new(10, 9, 0, 4));
    }

    #[test]
    fn addresses_ignore_stale_leases_outside_the_subnet_and_report_exhaustion() {
        let subnet = Ipv4Net::parse("10.9.0.0/30").unwrap();
        let state = state_with("a", Some("192.168.1.7"), &[]);
        let leases = lease_addresses(subnet, &["a"], &state).unwrap();
        assert_eq!(leases["a"], Ipv4Addr::new(10, 9, 0, 2));
        let err = lease_addresses(subnet, &["a", "b"], &state).unwrap_err();
        assert!(err.contains("no free address"), "{err}");
    }

    #[test]
    fn ipv6_addresses_keep_leases_beside_ipv4_ones() {
        let subnet = Ipv6Net::parse("fd00:a110:c8::/126").unwrap();
        let mut state = state_with("b", Some("10.9.0.2"), &[]);
        if let Some(b) = state.groups.get_mut("b") {
            b.address_ipv6 = Some("fd00:a110:c8::3".into());
        }
        let leases = lease_addresses_ipv6(subnet, &["a", "b"], &state).unwrap();
        assert_eq!(leases["b"], "fd00:a110:c8::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(leases["a"], "fd00:a110:c8::2".parse::<Ipv6Addr>().unwrap());
        // A /126 holds the network address, the gateway and two groups.
        let err = lease_addresses_ipv6(subnet, &["a", "b", "c"], &state).unwrap_err();
        assert!(
            err.contains("subnet_ipv6") && err.contains("\"c\""),
            "{err}"
        );
    }

    #[test]
    fn ports_keep_state_skip_used_and_avoided() {
        let state = state_with("g", None, &[("p2", 20001)]);
        let used = BTreeSet::from([20000]);
        let requests = vec![
            PortRequest {
                group: "g".into(),
                label: "p1".into(),
                avoid: BTreeSet::from([20002]),
            },
            PortRequest {
                group: "g".into(),
                label: "p2".into(),
                avoid: BTreeSet::new(),
            },
        ];
        let ports = allocate_ports((20000, 20010), &used, &requests, &state).unwrap();
        assert_eq!(ports, vec![20003, 20001]);
        let err = allocate_ports((20000, 20001), &used, &requests, &state).unwrap_err();
        assert!(err.contains("no free port"), "{err}");
    }
}
