//! What `consul connect envoy -bootstrap` asks the local agent (reference/consul-api.md
//! §1.1–1.5), with its error texts: the proxy ID behind `-sidecar-for` or `-gateway`, the
//! proxy's registration (agent or catalog), and `proxy-defaults`.

use super::agent::{self, ProxyInfo};
use super::client::{Client, ConsulError};
use crate::error::Error;
use miniserde::json::{Object, Value};

/// A Consul error met while looking something up for a bootstrap, in `context`. A 404 is
/// worth waiting for here (the registration is on its way), which is how the agent's
/// bootstrap loop decides to retry.
pub fn consul_failure(context: &str, e: ConsulError) -> Error {
    match e {
        ConsulError::Rejected { status: 404, .. } => Error::temporary(format!("{context}: {e}")),
        e => Error::from(e).context(context),
    }
}

/// The one sidecar proxy registered for `parent` (by destination service ID).
pub fn sidecar_for(client: &Client, parent: &str) -> Result<String, Error> {
    let all = services(client, "")?;
    let mut ids: Vec<String> = all
        .values()
        .filter_map(|svc| match svc {
            Value::Object(svc) => Some(ProxyInfo::from_service(svc)),
            _ => None,
        })
        .filter(|p| {
            p.kind == "connect-proxy" && destination_id(all.get(&p.id)).eq_ignore_ascii_case(parent)
        })
        .map(|p| p.id)
        .collect();
    ids.sort();
    match ids.len() {
        0 => Err(Error::permanent(format!(
            "No sidecar proxy registered for {parent}"
        ))),
        1 => Ok(ids.remove(0)),
        _ => Err(Error::permanent(format!(
            "More than one sidecar proxy registered for {parent}.\n    Start proxy with -proxy-id and one of the following IDs: {}",
            ids.join(", ")
        ))),
    }
}

/// The one gateway of `kind` registered with the agent.
pub fn gateway_by_kind(client: &Client, kind: &str) -> Result<String, Error> {
    let filter = format!("?filter={}", percent_encode(&format!("Kind == `{kind}`")));
    let found = services(client, &filter)?;
    let mut ids: Vec<&String> = found.keys().collect();
    match ids.len() {
        0 => Err(Error::permanent(format!(
            "No {kind} services registered with this agent"
        ))),
        1 => Ok(ids.remove(0).clone()),
        _ => Err(Error::permanent(format!(
            "Cannot lookup the {kind}'s proxy ID because multiple are registered with the agent"
        ))),
    }
}

fn destination_id(svc: Option<&Value>) -> String {
    match svc {
        Some(Value::Object(svc)) => match svc.get("Proxy") {
            Some(Value::Object(p)) => match p.get("DestinationServiceID") {
                Some(Value::String(id)) => id.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        },
        _ => String::new(),
    }
}

fn services(client: &Client, query: &str) -> Result<Object, Error> {
    let text = client
        .get(&format!("/v1/agent/services{query}"))
        .map_err(|e| consul_failure("Failed looking up services", e))?;
    match miniserde::json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(Error::permanent(
            "Failed looking up services: the answer is not a JSON object",
        )),
    }
}

/// Query values: everything but unreserved characters escaped.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The proxy's registration: from the local agent, or the catalog with a node name.
pub fn proxy(
    client: &Client,
    proxy_id: &str,
    node_name: Option<&str>,
    namespace: &str,
    partition: &str,
) -> Result<ProxyInfo, Error> {
    let mut scope = String::new();
    for (key, value) in [("ns", namespace), ("partition", partition)] {
        if !value.is_empty() {
            scope.push(if scope.is_empty() { '?' } else { '&' });
            scope.push_str(&format!("{key}={}", percent_encode(value)));
        }
    }
    let failed = |e: ConsulError| consul_failure("failed fetch proxy config from local agent", e);
    let proxy = match node_name {
        None => agent::proxy_info(client, proxy_id, &scope).map_err(failed)?,
        Some(node) => {
            let filter = percent_encode(&format!("ID == \"{proxy_id}\""));
            let sep = if scope.is_empty() { '?' } else { '&' };
            let text = client
                .get(&format!(
                    "/v1/catalog/node-services/{node}{scope}{sep}filter={filter}&merge-central-config"
                ))
                .map_err(failed)?;
            catalog_proxy(&text).ok_or_else(|| {
                failed(ConsulError::Rejected {
                    status: 404,
                    body: format!("no service {proxy_id} on node {node}"),
                })
            })?
        }
    };
    if !proxy.is_proxy {
        return Err(Error::permanent(
            "service is not a Connect proxy or gateway",
        ));
    }
    Ok(proxy)
}

/// The one service of a `/v1/catalog/node-services` answer, with the node's datacenter.
fn catalog_proxy(text: &str) -> Option<ProxyInfo> {
    let Ok(Value::Object(answer)) = miniserde::json::from_str::<Value>(text) else {
        return None;
    };
    let Some(Value::Array(list)) = answer.get("Services") else {
        return None;
    };
    let Some(Value::Object(svc)) = list.first() else {
        return None;
    };
    let mut proxy = ProxyInfo::from_service(svc);
    if proxy.datacenter.is_empty()
        && let Some(Value::Object(node)) = answer.get("Node")
        && let Some(Value::String(dc)) = node.get("Datacenter")
    {
        proxy.datacenter = dc.clone();
    }
    Some(proxy)
}

/// The `proxy-defaults/global` entry; an error answer (404: no entry) means none, only an
/// unreachable agent fails.
pub fn proxy_defaults(client: &Client, partition: &str) -> Result<Option<Object>, Error> {
    let query = if partition.is_empty() {
        String::new()
    } else {
        format!("?partition={}", percent_encode(partition))
    };
    match client.get(&format!("/v1/config/proxy-defaults/global{query}")) {
        Ok(text) => match miniserde::json::from_str::<Value>(&text) {
            Ok(Value::Object(entry)) => Ok(Some(entry)),
            _ => Ok(None),
        },
        Err(e @ ConsulError::Unreachable(_)) => {
            Err(consul_failure("failed fetch proxy-defaults", e))
        }
        Err(_) => Ok(None),
    }
}
