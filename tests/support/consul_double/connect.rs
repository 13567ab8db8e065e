//! The double's intentions as the agent answers a Connect proxy about them:
//! `POST /v1/agent/connect/authorize` and `GET /v1/connect/intentions/match`
//! (reference/consul-api.md §5.1), from the `service-intentions` config entries.

use super::*;

/// The intention deciding `source` → `destination`, most specific first, as Consul orders
/// them (exact destination before `*`, then exact source before `*`): its source name,
/// destination name and action.
fn deciding(s: &State, source: &str, destination: &str) -> Option<(String, String, String)> {
    for dest in [destination, "*"] {
        let Some(entry) = s
            .config_entries
            .get(&("service-intentions".to_string(), dest.to_string()))
        else {
            continue;
        };
        let sources = get_array(entry, "Sources").ok().flatten();
        for wanted in [source, "*"] {
            for src in sources.into_iter().flatten() {
                let Value::Object(src) = src else { continue };
                if get_str(src, "Name").ok().flatten() == Some(wanted) {
                    let action = get_str(src, "Action").ok().flatten().unwrap_or("allow");
                    return Some((wanted.to_string(), dest.to_string(), action.to_string()));
                }
            }
        }
    }
    None
}

/// `POST /v1/agent/connect/authorize`: whether the client's service may connect to
/// `Target`. Default allow (the double has ACLs in allow mode, or none).
pub(super) fn authorize(s: &State, body: &str) -> Reply {
    let Ok(Value::Object(req)) = json::from_str::<Value>(body) else {
        return bad("Request decode failed: invalid character");
    };
    let target = get_str(&req, "Target").ok().flatten().unwrap_or("");
    if target.is_empty() {
        return text(400, "Target service must be specified");
    }
    let uri = get_str(&req, "ClientCertURI").ok().flatten().unwrap_or("");
    if uri.is_empty() {
        return text(400, "ClientCertURI must be specified");
    }
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return text(400, "ClientCertURI not a valid Connect identifier");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let source = match parts.as_slice() {
        [_, "ns", _, "dc", _, "svc", svc] => *svc,
        _ => return text(400, "ClientCertURI not a valid Service identifier"),
    };
    let (allowed, reason) = match deciding(s, source, target) {
        Some((src, dst, action)) => (
            action == "allow",
            format!("Matched L4 intention: {src} => {dst} ({action})"),
        ),
        None => (true, "Default behavior configured by ACLs".to_string()),
    };
    let mut answer = Object::new();
    answer.insert("Authorized".into(), Value::Bool(allowed));
    answer.insert("Reason".into(), Value::String(reason));
    ok_json(Value::Object(answer))
}

/// `GET /v1/connect/intentions/match?by=destination&name=<service>`: the intentions that
/// apply to the service, as `{"<service>": [...]}`.
pub(super) fn intentions_match(s: &State, r: &Request) -> Reply {
    let Some(by) = r.query_value("by") else {
        return text(400, "required query parameter 'by' not set");
    };
    if by != "source" && by != "destination" {
        return text(
            400,
            "'by' parameter must be one of 'source' or 'destination'",
        );
    }
    let Some(name) = r.query_value("name") else {
        return text(400, "required query parameter 'name' not set");
    };
    let mut list = Array::new();
    for dest in [name.as_str(), "*"] {
        if let Some(entry) = s
            .config_entries
            .get(&("service-intentions".to_string(), dest.to_string()))
        {
            for src in get_array(entry, "Sources")
                .ok()
                .flatten()
                .into_iter()
                .flatten()
            {
                let Value::Object(src) = src else { continue };
                let mut i = Object::new();
                i.insert("DestinationName".into(), Value::String(dest.into()));
                for key in ["Name", "Action"] {
                    if let Some(v) = src.get(key) {
                        let key = if key == "Name" { "SourceName" } else { key };
                        i.insert(key.into(), v.clone());
                    }
                }
                list.push(Value::Object(i));
            }
        }
    }
    let mut answer = Object::new();
    answer.insert(name, Value::Array(list));
    ok_json(Value::Object(answer))
}
