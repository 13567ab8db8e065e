//! Gateways in Consul: the registration with the gateway `Kind` and Nomad's proxy defaults
//! (reference/nomad-connect.md §1.5, §6.5), and the ingress-gateway / terminating-gateway
//! config entries Nomad's server would write (§1.3, reference/consul-api.md §3.4).
//!
//! outpost marks the entries it writes with `Meta` (`external-source = outpost`,
//! `outpost-node = <node>`), so it deletes only its own when a gateway goes away.

use super::client::{Client, ConsulError};
use super::registration::{Obj, ServiceInputs, service_body as plain_body, strings};
use crate::config::{Gateway, HeaderChanges, Sds, Service};
use log::info;
use miniserde::json::{self, Array, Number, Object, Value};

/// The config entry kinds outpost writes.
pub const ENTRY_KINDS: [&str; 2] = ["ingress-gateway", "terminating-gateway"];
const OWNER_KEY: &str = "outpost-node";

/// Nomad's default gateway connect timeout ("same as consul").
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;

/// The registration body of a gateway service: the plain service body with the gateway
/// `Kind` and `Proxy.Config`, no `Connect` block.
/// `netns_port_of` maps a port label to its port inside the group's namespace, where
/// Envoy binds.
pub fn service_body(
    input: &ServiceInputs,
    gateway: &Gateway,
    bridge: bool,
    netns_port_of: &dyn Fn(&str) -> Option<u16>,
) -> Value {
    let Value::Object(mut body) = plain_body(input) else {
        return Value::Null;
    };
    let kind = kind_of(gateway);
    body.insert("Kind".into(), Value::String(format!("{kind}-gateway")));
    let config = proxy_config(input.service, gateway, bridge, netns_port_of);
    let mut proxy = Object::new();
    proxy.insert("Config".into(), Value::Object(config));
    body.insert("Proxy".into(), Value::Object(proxy));
    Value::Object(body)
}

fn kind_of(gateway: &Gateway) -> &'static str {
    if gateway.ingress.is_some() {
        "ingress"
    } else if gateway.terminating.is_some() {
        "terminating"
    } else {
        "mesh"
    }
}

/// `Proxy.Config` (§6.5) from the proxy block after Nomad's defaults (§1.5): a block that
/// sets any bind option is used as written; otherwise the connect timeout defaults to 5 s
/// and, in bridge mode, Envoy binds 0.0.0.0 on the gateway's ports inside the namespace.
fn proxy_config(
    service: &Service,
    gateway: &Gateway,
    bridge: bool,
    netns_port_of: &dyn Fn(&str) -> Option<u16>,
) -> Object {
    let written = gateway.proxy.as_ref();
    let as_written = written.is_some_and(|p| {
        p.envoy_gateway_no_default_bind
            || p.envoy_gateway_bind_tagged_addresses
            || !p.envoy_gateway_bind_addresses.is_empty()
    });
    let mut config = Object::new();
    let timeout = written
        .and_then(|p| p.connect_timeout)
        .map_or(DEFAULT_CONNECT_TIMEOUT_MS, |d| d.0.as_millis() as u64);
    config.insert(
        "connect_timeout_ms".into(),
        Value::Number(Number::U64(timeout)),
    );
    if let Some(dns) = written.and_then(|p| p.envoy_dns_discovery_type.clone()) {
        config.insert("envoy_dns_discovery_type".into(), Value::String(dns));
    }
    let mut binds = Vec::new();
    if let Some(p) = written.filter(|_| as_written) {
        if p.envoy_gateway_no_default_bind {
            config.insert("envoy_gateway_no_default_bind".into(), Value::Bool(true));
        }
        if p.envoy_gateway_bind_tagged_addresses {
            config.insert(
                "envoy_gateway_bind_tagged_addresses".into(),
                Value::Bool(true),
            );
        }
        for (name, bind) in &p.envoy_gateway_bind_addresses {
            binds.push((name.clone(), bind.address.clone(), bind.port));
        }
    } else if bridge {
        config.insert("envoy_gateway_no_default_bind".into(), Value::Bool(true));
        binds = default_binds(service, gateway, netns_port_of);
    }
    if !binds.is_empty() {
        let map: Object = binds
            .into_iter()
            .map(|(name, address, port)| {
                let bind = Obj::new()
                    .str("Address", &address)
                    .num("Port", u64::from(port))
                    .build();
                (name, bind)
            })
            .collect();
        config.insert("envoy_gateway_bind_addresses".into(), Value::Object(map));
    }
    for (key, value) in written.map(|p| &p.config).into_iter().flatten() {
        config.insert(key.clone(), value.clone());
    }
    config
}

/// Nomad's bridge-mode binds per kind (§1.5): ingress binds each listener's port under each
/// of its services' names; terminating binds `default` on its injected port; mesh binds
/// `wan` on the service port and `lan` on the injected `-lan` port.
fn default_binds(
    service: &Service,
    gateway: &Gateway,
    netns_port_of: &dyn Fn(&str) -> Option<u16>,
) -> Vec<(String, String, u16)> {
    let any = "0.0.0.0".to_string();
    let service_port = crate::config::naming::service_port(service)
        .and_then(|label| netns_port_of(&label).or_else(|| label.parse().ok()))
        .unwrap_or(0);
    if let Some(ingress) = &gateway.ingress {
        let mut binds = Vec::new();
        for listener in &ingress.listeners {
            for linked in &listener.services {
                binds.push((linked.name.clone(), any.clone(), listener.port));
            }
        }
        binds
    } else if gateway.terminating.is_some() {
        vec![("default".into(), any, service_port)]
    } else {
        let lan = netns_port_of(&format!("connect-mesh-{}-lan", service.name)).unwrap_or(0);
        vec![
            ("lan".into(), any.clone(), lan),
            ("wan".into(), any, service_port),
        ]
    }
}

/// The config entry a gateway needs, or null (mesh gateways need none).
pub fn config_entry(service: &Service, gateway: &Gateway, node: &str) -> Value {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("external-source".to_string(), "outpost".to_string());
    meta.insert(OWNER_KEY.to_string(), node.to_string());
    let entry = Obj::new().str("Name", &service.name);
    let entry = if let Some(ingress) = &gateway.ingress {
        let listeners: Array = ingress
            .listeners
            .iter()
            .map(|l| {
                let services: Array = l
                    .services
                    .iter()
                    .map(|s| {
                        Obj::new()
                            .str("Name", &s.name)
                            .set("Hosts", strings(&s.hosts))
                            .set(
                                "TLS",
                                s.tls_sds.as_ref().map_or(Value::Null, |sds| {
                                    Obj::new().set("SDS", sds_body(sds)).build()
                                }),
                            )
                            .set("RequestHeaders", headers_body(s.request_headers.as_ref()))
                            .set("ResponseHeaders", headers_body(s.response_headers.as_ref()))
                            .num("MaxConnections", u64::from(s.max_connections.unwrap_or(0)))
                            .num(
                                "MaxPendingRequests",
                                u64::from(s.max_pending_requests.unwrap_or(0)),
                            )
                            .num(
                                "MaxConcurrentRequests",
                                u64::from(s.max_concurrent_requests.unwrap_or(0)),
                            )
                            .build()
                    })
                    .collect();
                Obj::new()
                    .num("Port", u64::from(l.port))
                    .str("Protocol", &l.protocol)
                    .set("Services", Value::Array(services))
                    .build()
            })
            .collect();
        let tls = ingress.tls.as_ref().map_or(Value::Null, |t| {
            Obj::new()
                .set("Enabled", Value::Bool(t.enabled))
                .opt_str("TLSMinVersion", &t.tls_min_version)
                .opt_str("TLSMaxVersion", &t.tls_max_version)
                .set("CipherSuites", strings(&t.cipher_suites))
                .set("SDS", t.sds.as_ref().map_or(Value::Null, sds_body))
                .build()
        });
        entry
            .str("Kind", "ingress-gateway")
            .set("TLS", tls)
            .set("Listeners", Value::Array(listeners))
    } else if let Some(term) = &gateway.terminating {
        let services: Array = term
            .services
            .iter()
            .map(|s| {
                Obj::new()
                    .str("Name", &s.name)
                    .opt_str("CAFile", &s.ca_file)
                    .opt_str("CertFile", &s.cert_file)
                    .opt_str("KeyFile", &s.key_file)
                    .opt_str("SNI", &s.sni)
                    .set(
                        "DisableAutoHostRewrite",
                        Value::Bool(s.disable_auto_host_rewrite),
                    )
                    .build()
            })
            .collect();
        entry
            .str("Kind", "terminating-gateway")
            .set("Services", Value::Array(services))
    } else {
        return Value::Null;
    };
    entry
        .set("Meta", super::registration::string_map(&meta))
        .build()
}

fn sds_body(sds: &Sds) -> Value {
    Obj::new()
        .str("ClusterName", &sds.cluster_name)
        .str("CertResource", &sds.cert_resource)
        .build()
}

/// `{Add, Set, Remove}` of an ingress service's header changes, as Consul's entry has them.
fn headers_body(headers: Option<&HeaderChanges>) -> Value {
    let Some(h) = headers else {
        return Value::Null;
    };
    Obj::new()
        .set("Add", super::registration::string_map(&h.add))
        .set("Set", super::registration::string_map(&h.set))
        .set("Remove", strings(&h.remove))
        .build()
}

/// What one entry sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EntriesSynced {
    pub written: Vec<String>,
    pub deleted: Vec<String>,
}

/// Writes the wanted entries that are missing or differ, then deletes the entries this node
/// wrote earlier that are no longer wanted. Entries written by others are never touched.
pub fn sync_entries(
    client: &Client,
    wanted: &[&Value],
    node: &str,
) -> Result<EntriesSynced, ConsulError> {
    let mut done = EntriesSynced::default();
    let mut keep = Vec::new();
    for entry in wanted {
        let Value::Object(want) = entry else {
            continue;
        };
        let (kind, name) = (text(want, "Kind"), text(want, "Name"));
        keep.push(format!("{kind}/{name}"));
        let have = match client.get(&format!("/v1/config/{kind}/{name}")) {
            Ok(body) => json::from_str::<Value>(&body).ok(),
            Err(ConsulError::Rejected { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        if have.as_ref().is_some_and(|h| covers(h, entry)) {
            continue;
        }
        client.put("/v1/config", &json::to_string(*entry))?;
        info!("wrote Consul config entry {kind}/{name}");
        done.written.push(format!("{kind}/{name}"));
    }
    for kind in ENTRY_KINDS {
        let list = client.get(&format!("/v1/config/{kind}"))?;
        let Ok(Value::Array(entries)) = json::from_str::<Value>(&list) else {
            continue;
        };
        for entry in entries {
            let Value::Object(e) = entry else { continue };
            let name = text(&e, "Name");
            let ours = match e.get("Meta") {
                Some(Value::Object(m)) => {
                    text(m, OWNER_KEY) == node && text(m, "external-source") == "outpost"
                }
                _ => false,
            };
            let key = format!("{kind}/{name}");
            if ours && !keep.contains(&key) {
                match client.delete(&format!("/v1/config/{kind}/{name}")) {
                    Ok(_) | Err(ConsulError::Rejected { status: 404, .. }) => {}
                    Err(e) => return Err(e),
                }
                info!("deleted Consul config entry {key}: no gateway of this node uses it");
                done.deleted.push(key);
            }
        }
    }
    Ok(done)
}

fn text(obj: &Object, key: &str) -> String {
    match obj.get(key) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Whether `have` (as Consul returns it, with defaults and indexes added) says everything
/// `want` says: every key of an object, every element of an array in order.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| covers(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| covers(hv, wv))
        }
        _ => json::to_string(have) == json::to_string(want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_ignores_what_consul_adds_but_not_changes() {
        let want: Value = json::from_str(r#"{"Kind":"x","L":[{"Port":1}]}"#).unwrap();
        let have: Value =
            json::from_str(r#"{"Kind":"x","L":[{"Port":1,"Hosts":null}],"ModifyIndex":7}"#)
                .unwrap();
        assert!(covers(&have, &want));
        let changed: Value = json::from_str(r#"{"Kind":"x","L":[{"Port":2}]}"#).unwrap();
        assert!(!covers(&changed, &want));
        let longer: Value = json::from_str(r#"{"Kind":"x","L":[{"Port":1},{"Port":2}]}"#).unwrap();
        assert!(!covers(&longer, &want));
    }
}
