//! Registration as reconciliation (reference/nomad-connect.md §6.7): compare the local
//! agent's services with the wanted bodies, register what is missing or different, remove
//! `_outpost-*` services no group owns, sidecar before parent.

use super::agent::string_items;
use super::client::{Client, ConsulError};
use log::info;
use miniserde::json::{self, Number, Object, Value};
use std::collections::BTreeSet;

pub const ID_PREFIX: &str = "_outpost-";
const SIDECAR_SUFFIX: &str = "-sidecar-proxy";

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub registered: Vec<String>,
    pub deregistered: Vec<String>,
}

/// One service to have registered: its ID and its registration body.
pub struct Wanted<'a> {
    pub id: &'a str,
    pub body: &'a Value,
}

pub fn agent_services(client: &Client) -> Result<Object, ConsulError> {
    let text = client.get("/v1/agent/services")?;
    match json::from_str::<Value>(&text) {
        Ok(Value::Object(services)) => Ok(services),
        _ => Err(ConsulError::Rejected {
            status: 200,
            body: "the agent's service list is not a JSON object".into(),
        }),
    }
}

/// Registers what is missing or different; with `remove_orphans`, deregisters our
/// services that are not wanted (the agent's start-up probation is the caller's call).
pub fn sync(
    client: &Client,
    wanted: &[Wanted],
    remove_orphans: bool,
) -> Result<Synced, ConsulError> {
    let services = agent_services(client)?;
    let mut done = Synced {
        registered: register_missing(client, wanted, &services)?,
        ..Synced::default()
    };
    if remove_orphans {
        let keep: Vec<&str> = wanted.iter().map(|w| w.id).collect();
        done.deregistered = remove_unowned(client, &services, &keep)?;
    }
    Ok(done)
}

/// Registers each of `wanted` that `services` (the agent's list) lacks or has otherwise;
/// returns their IDs.
pub fn register_missing(
    client: &Client,
    wanted: &[Wanted],
    services: &Object,
) -> Result<Vec<String>, ConsulError> {
    let mut registered = Vec::new();
    for w in wanted {
        if needs_registering(w, services) {
            client.put(
                "/v1/agent/service/register?replace-existing-checks=true",
                &json::to_string(w.body),
            )?;
            info!("registered service {} in Consul", w.id);
            registered.push(w.id.to_string());
        }
    }
    Ok(registered)
}

/// Deregisters `_outpost-*` services in `services` whose ID is not in `keep` (their
/// sidecars first). Returns the parent IDs removed.
pub fn remove_unowned(
    client: &Client,
    services: &Object,
    keep: &[&str],
) -> Result<Vec<String>, ConsulError> {
    let keep: BTreeSet<&str> = keep.iter().copied().collect();
    let mut removed = Vec::new();
    for id in services.keys() {
        let ours = id.starts_with(ID_PREFIX) && !id.ends_with(SIDECAR_SUFFIX);
        if ours && !keep.contains(id.as_str()) {
            deregister(client, id)?;
            removed.push(id.clone());
        }
    }
    Ok(removed)
}

/// Removes a service and its sidecar, sidecar first. Absent is fine.
pub fn deregister(client: &Client, id: &str) -> Result<(), ConsulError> {
    for target in [format!("{id}{SIDECAR_SUFFIX}"), id.to_string()] {
        match client.put(&format!("/v1/agent/service/deregister/{target}"), "") {
            Ok(_) => info!("deregistered service {target} from Consul"),
            Err(ConsulError::Rejected { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a registration body asks for a sidecar.
pub fn has_sidecar(body: &Value) -> bool {
    match body {
        Value::Object(b) => object(b, "Connect")
            .and_then(|c| object(c, "SidecarService"))
            .is_some(),
        _ => false,
    }
}

fn field<'a>(obj: &'a Object, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !matches!(v, Value::Null))
}

fn object<'a>(obj: &'a Object, key: &str) -> Option<&'a Object> {
    match field(obj, key) {
        Some(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// Consul answers with its zero values where we sent nothing (`"Port": 0`, `"Tags": []`,
/// `"Meta": {}`), and we leave empty fields out as Nomad does: absent and zero are equal.
fn is_zero(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => !b,
        Some(Value::Number(n)) => {
            matches!(n, Number::U64(0) | Number::I64(0)) || matches!(n, Number::F64(f) if *f == 0.0)
        }
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
    }
}

fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    if is_zero(a) || is_zero(b) {
        return is_zero(a) && is_zero(b);
    }
    json::to_string(&a.cloned().unwrap_or(Value::Null))
        == json::to_string(&b.cloned().unwrap_or(Value::Null))
}

/// Missing, or different in what we set (Nomad's comparison, §6.7, on the fields outpost
/// sends): name, kind, port, address, tags, our meta, a gateway's proxy config, and the
/// sidecar's presence, port and upstreams.
fn needs_registering(w: &Wanted, services: &Object) -> bool {
    let Value::Object(body) = w.body else {
        return false;
    };
    let Some(Value::Object(have)) = services.get(w.id) else {
        return true;
    };
    let want_address = field(body, "Address");
    let proxy_config = |o: &Object| object(o, "Proxy").and_then(|p| field(p, "Config")).cloned();
    let tags = |o: &Object| string_items::<BTreeSet<String>>(field(o, "Tags"));
    let differs = !same(field(body, "Name"), field(have, "Service"))
        || !same(field(body, "Kind"), field(have, "Kind"))
        || (object(body, "Proxy").is_some()
            && !same(proxy_config(body).as_ref(), proxy_config(have).as_ref()))
        || !same(field(body, "Port"), field(have, "Port"))
        || (want_address.is_some() && !same(want_address, field(have, "Address")))
        || tags(body) != tags(have)
        || object(body, "Meta").into_iter().flatten().any(|(k, v)| {
            object(have, "Meta")
                .and_then(|m| m.get(k))
                .is_none_or(|hv| !same(Some(v), Some(hv)))
        });
    if differs {
        return true;
    }
    let Some(sidecar) = object(body, "Connect").and_then(|c| object(c, "SidecarService")) else {
        return false;
    };
    let Some(Value::Object(have_sidecar)) = services.get(&format!("{}{SIDECAR_SUFFIX}", w.id))
    else {
        return true;
    };
    let upstreams = |o: &Object| -> BTreeSet<String> {
        match object(o, "Proxy").and_then(|p| field(p, "Upstreams")) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|u| match u {
                    Value::Object(u) => Some(format!(
                        "{}|{}|{}",
                        json::to_string(&u.get("DestinationName").cloned().unwrap_or(Value::Null)),
                        json::to_string(&u.get("LocalBindPort").cloned().unwrap_or(Value::Null)),
                        json::to_string(&u.get("LocalBindAddress").cloned().unwrap_or(Value::Null)),
                    )),
                    _ => None,
                })
                .collect(),
            _ => BTreeSet::new(),
        }
    };
    !same(field(sidecar, "Port"), field(have_sidecar, "Port"))
        || upstreams(sidecar) != upstreams(have_sidecar)
}
