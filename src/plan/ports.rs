//! Every group's ports: those written, those Nomad injects (proxies, gateways, exposed
//! checks), and dynamic host ports kept off what already listens.

use super::*;

/// Port labels Nomad injects for a service's proxy or gateway (§1.4), and for its checks
/// exposed through the sidecar (§1.6).
pub(super) fn injected_labels(service: &Service) -> Vec<String> {
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

/// Every group's ports (written and injected), with dynamic host ports allocated.
pub(super) fn plan_ports(
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
