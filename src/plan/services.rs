//! A group's services: their Consul IDs, proxies and registration bodies, and the
//! transparent-proxy redirection a sidecar asks for.

use super::*;

impl Context<'_> {
    /// The transparent proxy of a bridge group: the first sidecar with `transparent_proxy`
    /// (validation allows one connect block with it).
    pub(super) fn tproxy(
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

    pub(super) fn service(
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
            let node_default = self.valid.config.connect.sidecar_driver;
            let driver = service
                .connect
                .as_ref()
                .map_or(node_default, |c| c.driver(node_default));
            let driver = match (gateway, driver) {
                // Gateways are Envoy's alone: a node-wide `builtin` leaves them to Envoy
                // (and validate refuses it in a gateway's own sidecar_task).
                (Some(_), SidecarDriver::Builtin) => SidecarDriver::Exec,
                (_, driver) => driver,
            };
            ProxyPlan {
                id: proxy_id,
                name,
                gateway,
                driver,
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
            native_task: (connect == "native").then(|| {
                service
                    .task
                    .clone()
                    .or_else(|| group.tasks.first().map(|t| t.name.clone()))
                    .unwrap_or_default()
            }),
            registration,
            config_entry,
        }
    }
}

/// `Connect.SidecarService.Proxy.Expose.Paths[].ListenerPort` of a registration body.
pub(super) fn expose_listener_ports(body: &miniserde::json::Value) -> Vec<u64> {
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
