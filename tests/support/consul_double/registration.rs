//! Service registration as the agent does it (sidecar expansion, proxies, checks),
//! deregistration, and the service listing with its filter.

use super::*;

pub(super) const SERVICE_KEYS: &[&str] = &[
    "Kind",
    "ID",
    "Name",
    "Tags",
    "Meta",
    "Port",
    "Address",
    "SocketPath",
    "TaggedAddresses",
    "EnableTagOverride",
    "Weights",
    "Check",
    "Checks",
    "Proxy",
    "Connect",
    "Namespace",
    "Partition",
    "Locality",
];
pub(super) const SIDECAR_KEYS: &[&str] = &[
    "ID", "Name", "Kind", "Tags", "Meta", "Port", "Address", "Proxy", "Checks", "Check", "Token",
];
pub(super) const PROXY_KEYS: &[&str] = &[
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "LocalServiceSocketPath",
    "Mode",
    "TransparentProxy",
    "Config",
    "Upstreams",
    "MeshGateway",
    "Expose",
    "AccessLogs",
    "EnvoyExtensions",
];
pub(super) const UPSTREAM_KEYS: &[&str] = &[
    "DestinationType",
    "DestinationNamespace",
    "DestinationPartition",
    "DestinationPeer",
    "DestinationName",
    "Datacenter",
    "LocalBindAddress",
    "LocalBindPort",
    "LocalBindSocketPath",
    "LocalBindSocketMode",
    "Config",
    "MeshGateway",
    "CentrallyConfigured",
];
pub(super) const CHECK_KEYS: &[&str] = &[
    "CheckID",
    "Name",
    "ScriptArgs",
    "Interval",
    "Timeout",
    "TTL",
    "HTTP",
    "Header",
    "Method",
    "Body",
    "TCP",
    "UDP",
    "Status",
    "Notes",
    "TLSServerName",
    "TLSSkipVerify",
    "GRPC",
    "GRPCUseTLS",
    "AliasNode",
    "AliasService",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "DeregisterCriticalServiceAfter",
];
pub(super) const KINDS: &[&str] = &[
    "",
    "connect-proxy",
    "mesh-gateway",
    "terminating-gateway",
    "ingress-gateway",
    "api-gateway",
];

pub(super) fn validate_proxy(proxy: &Object) -> Result<(), Reply> {
    check_keys(proxy, PROXY_KEYS, "Proxy")?;
    get_port(proxy, "LocalServicePort")?;
    for key in [
        "DestinationServiceName",
        "DestinationServiceID",
        "LocalServiceAddress",
        "Mode",
    ] {
        get_str(proxy, key)?;
    }
    if let Some(mode) = get_str(proxy, "Mode")?
        && !["", "direct", "transparent"].contains(&mode)
    {
        return Err(bad(&format!("Proxy.Mode: invalid mode \"{mode}\"")));
    }
    get_obj(proxy, "Config")?;
    for up in get_array(proxy, "Upstreams")?.into_iter().flatten() {
        let Value::Object(up) = up else {
            return Err(bad("Proxy.Upstreams: expected objects"));
        };
        check_keys(up, UPSTREAM_KEYS, "Upstream")?;
        if get_str(up, "DestinationName")?.is_none_or(str::is_empty) {
            return Err(text(
                400,
                "Invalid Proxy configuration: upstream destination name is required",
            ));
        }
        get_port(up, "LocalBindPort")?;
    }
    Ok(())
}

pub(super) fn validate_checks(obj: &Object) -> Result<Vec<Object>, Reply> {
    let mut checks = Vec::new();
    for c in get_array(obj, "Checks")?.into_iter().flatten() {
        let Value::Object(c) = c else {
            return Err(bad("Checks: expected objects"));
        };
        check_keys(c, CHECK_KEYS, "Check")?;
        let kinds = [
            "HTTP",
            "TCP",
            "GRPC",
            "TTL",
            "AliasService",
            "ScriptArgs",
            "UDP",
        ];
        if !kinds.iter().any(|k| c.contains_key(*k)) {
            return Err(text(400, "Invalid check: TTL must be > 0 for TTL checks"));
        }
        if (c.contains_key("HTTP") || c.contains_key("TCP") || c.contains_key("GRPC"))
            && !c.contains_key("Interval")
        {
            return Err(text(
                400,
                "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or GRPC checks",
            ));
        }
        let count = |key| match c.get(key) {
            Some(Value::Number(Number::U64(n))) => *n,
            _ => 0,
        };
        if count("FailuresBeforeWarning") > count("FailuresBeforeCritical") {
            return Err(text(
                400,
                "Invalid check: FailuresBeforeWarning can't be higher than FailuresBeforeCritical",
            ));
        }
        checks.push(c.clone());
    }
    Ok(checks)
}

/// The agent's metadata rules (structs.ValidateServiceMetadata).
pub(super) fn validate_meta(meta: &Object, kind: &str) -> Result<(), Reply> {
    let invalid = |why: &str| Err(text(400, &format!("Invalid Service Meta: {why}")));
    if meta.len() > 64 {
        return invalid("Node metadata cannot contain more than 64 key/value pairs");
    }
    for (key, value) in meta {
        if key.is_empty() {
            return invalid("Key cannot be blank");
        }
        if key.len() > 128 {
            return invalid("Key is too long (limit: 128 characters)");
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return invalid("Key contains invalid characters");
        }
        // The one reserved key a mesh gateway may carry (WAN federation).
        let allowed = kind == "mesh-gateway" && key == "consul-wan-federation";
        if key.starts_with("consul-") && !allowed {
            return invalid("Key prefix 'consul-' is reserved for internal use");
        }
        if matches!(value, Value::String(v) if v.len() > 512) {
            return invalid("Value is too long (limit: 512 characters)");
        }
    }
    Ok(())
}

pub(super) fn register(s: &mut State, body: &str) -> Reply {
    let Ok(Value::Object(reg)) = json::from_str::<Value>(body) else {
        return bad("expected a JSON object");
    };
    if let Err(reply) = check_keys(&reg, SERVICE_KEYS, "service") {
        return reply;
    }
    match build_services(&reg) {
        Ok(list) => {
            for (service, checks) in list {
                let id = match service.get("ID") {
                    Some(Value::String(id)) => id.clone(),
                    _ => continue,
                };
                let name = match service.get("Service") {
                    Some(Value::String(n)) => n.clone(),
                    _ => String::new(),
                };
                // replace-existing-checks: the service's checks are exactly these now.
                s.checks.retain(
                    |_, c| !matches!(c.get("ServiceID"), Some(Value::String(sid)) if *sid == id),
                );
                for (i, check) in checks.iter().enumerate() {
                    let check_id = match check.get("CheckID") {
                        Some(Value::String(c)) => c.clone(),
                        _ if checks.len() == 1 => format!("service:{id}"),
                        _ => format!("service:{id}:{}", i + 1),
                    };
                    let mut hc = Object::new();
                    hc.insert("Node".into(), Value::String("edge-01".into()));
                    hc.insert("CheckID".into(), Value::String(check_id.clone()));
                    hc.insert(
                        "Name".into(),
                        check
                            .get("Name")
                            .cloned()
                            .unwrap_or(Value::String(String::new())),
                    );
                    hc.insert(
                        "Status".into(),
                        check
                            .get("Status")
                            .cloned()
                            .unwrap_or(Value::String("critical".into())),
                    );
                    hc.insert("ServiceID".into(), Value::String(id.clone()));
                    hc.insert("ServiceName".into(), Value::String(name.clone()));
                    // What the agent will probe, as /v1/agent/checks shows it.
                    let definition: Object = ["HTTP", "TCP", "GRPC", "Interval", "Timeout", "TTL"]
                        .iter()
                        .filter_map(|k| Some((k.to_string(), check.get(*k)?.clone())))
                        .collect();
                    hc.insert("Definition".into(), Value::Object(definition));
                    s.checks.insert(check_id, hc);
                }
                s.services.insert(id, service);
            }
            (200, String::new(), Vec::new())
        }
        Err(reply) => reply,
    }
}

/// The parent (and its sidecar, expanded as the agent does) as AgentService objects.
pub(super) fn build_services(reg: &Object) -> Result<Vec<(Object, Vec<Object>)>, Reply> {
    let Some(name) = get_str(reg, "Name")?.filter(|n| !n.is_empty()) else {
        return Err(text(400, "Missing service name"));
    };
    let kind = get_str(reg, "Kind")?.unwrap_or("");
    if !KINDS.contains(&kind) {
        return Err(text(400, &format!("Invalid service kind: \"{kind}\"")));
    }
    let id = get_str(reg, "ID")?.unwrap_or(name).to_string();
    let port = get_port(reg, "Port")?;
    let address = get_str(reg, "Address")?.unwrap_or("").to_string();
    let tags = string_list(reg, "Tags")?;
    let meta = string_map(reg, "Meta")?;
    validate_meta(&meta, kind)?;
    let checks = validate_checks(reg)?;
    if let Some(proxy) = get_obj(reg, "Proxy")? {
        validate_proxy(proxy)?;
        if kind == "connect-proxy" && get_str(proxy, "DestinationServiceName")?.is_none() {
            return Err(text(
                400,
                "Invalid Proxy configuration: DestinationServiceName must be set",
            ));
        }
    }
    let mut parent = agent_service(kind, &id, name, &tags, &meta, port, &address);
    match get_obj(reg, "Proxy")? {
        Some(proxy) => {
            parent.insert("Proxy".into(), Value::Object(proxy.clone()));
        }
        // The agent gives every proxy and gateway a Proxy block, empty or not.
        None if !kind.is_empty() => {
            parent.insert("Proxy".into(), Value::Object(Object::new()));
        }
        None => {}
    }
    let mut out = Vec::new();
    let connect = get_obj(reg, "Connect")?;
    if let Some(connect) = connect {
        check_keys(connect, &["Native", "SidecarService"], "Connect")?;
        if let Some(Value::Bool(true)) = connect.get("Native") {
            let mut c = Object::new();
            c.insert("Native".into(), Value::Bool(true));
            parent.insert("Connect".into(), Value::Object(c));
        }
        if let Some(sidecar) = get_obj(connect, "SidecarService")? {
            out.push(expand_sidecar(
                sidecar, &id, name, &tags, &meta, port, &address,
            )?);
        }
    }
    out.insert(0, (parent, checks));
    Ok(out)
}

pub(super) fn agent_service(
    kind: &str,
    id: &str,
    name: &str,
    tags: &Array,
    meta: &Object,
    port: u64,
    address: &str,
) -> Object {
    let mut svc = Object::new();
    if !kind.is_empty() {
        svc.insert("Kind".into(), Value::String(kind.into()));
    }
    svc.insert("ID".into(), Value::String(id.into()));
    svc.insert("Service".into(), Value::String(name.into()));
    svc.insert("Tags".into(), Value::Array(tags.clone()));
    svc.insert("Meta".into(), Value::Object(meta.clone()));
    svc.insert("Port".into(), Value::Number(Number::U64(port)));
    svc.insert("Address".into(), Value::String(address.into()));
    let mut weights = Object::new();
    weights.insert("Passing".into(), Value::Number(Number::U64(1)));
    weights.insert("Warning".into(), Value::Number(Number::U64(1)));
    svc.insert("Weights".into(), Value::Object(weights));
    svc.insert("EnableTagOverride".into(), Value::Bool(false));
    svc.insert("Datacenter".into(), Value::String("dc1".into()));
    svc
}

/// The agent's sidecar defaults (agent/sidecar_service.go, §3.1).
pub(super) fn expand_sidecar(
    sidecar: &Object,
    parent_id: &str,
    parent_name: &str,
    parent_tags: &Array,
    parent_meta: &Object,
    parent_port: u64,
    parent_address: &str,
) -> Result<(Object, Vec<Object>), Reply> {
    check_keys(sidecar, SIDECAR_KEYS, "SidecarService")?;
    let id = format!("{parent_id}-sidecar-proxy");
    let name = get_str(sidecar, "Name")?
        .map(str::to_string)
        .unwrap_or(format!("{parent_name}-sidecar-proxy"));
    let mut tags = string_list(sidecar, "Tags")?;
    if tags.is_empty() {
        tags = parent_tags.clone();
    }
    let mut meta = string_map(sidecar, "Meta")?;
    validate_meta(&meta, "connect-proxy")?;
    if meta.is_empty() {
        meta = parent_meta.clone();
    }
    let port = get_port(sidecar, "Port")?;
    if port == 0 {
        return Err(text(
            400,
            "no port provided for sidecar_service and none left in the configured range [21000, 21255]",
        ));
    }
    let address = get_str(sidecar, "Address")?
        .unwrap_or(parent_address)
        .to_string();
    let mut proxy = match get_obj(sidecar, "Proxy")? {
        Some(p) => {
            validate_proxy(p)?;
            p.clone()
        }
        None => Object::new(),
    };
    proxy.insert(
        "DestinationServiceName".into(),
        Value::String(parent_name.into()),
    );
    proxy.insert(
        "DestinationServiceID".into(),
        Value::String(parent_id.into()),
    );
    // Unset, empty and zero are the same to Go: the agent fills in the defaults.
    if get_str(&proxy, "LocalServiceAddress")?.is_none_or(str::is_empty) {
        proxy.insert(
            "LocalServiceAddress".into(),
            Value::String("127.0.0.1".into()),
        );
    }
    if get_port(&proxy, "LocalServicePort")? == 0 {
        proxy.insert(
            "LocalServicePort".into(),
            Value::Number(Number::U64(parent_port)),
        );
    }
    proxy
        .entry("MeshGateway".into())
        .or_insert_with(|| Value::Object(Object::new()));
    proxy
        .entry("Expose".into())
        .or_insert_with(|| Value::Object(Object::new()));
    let mut svc = agent_service("connect-proxy", &id, &name, &tags, &meta, port, &address);
    svc.insert("Proxy".into(), Value::Object(proxy));
    let mut checks = validate_checks(sidecar)?;
    if checks.is_empty() {
        let mut tcp = Object::new();
        tcp.insert(
            "Name".into(),
            Value::String("Connect Sidecar Listening".into()),
        );
        tcp.insert("TCP".into(), Value::String(format!("{address}:{port}")));
        tcp.insert("Interval".into(), Value::String("10s".into()));
        let mut alias = Object::new();
        alias.insert(
            "Name".into(),
            Value::String(format!("Connect Sidecar Aliasing {parent_id}")),
        );
        alias.insert("AliasService".into(), Value::String(parent_id.into()));
        checks = vec![tcp, alias];
    }
    Ok((svc, checks))
}

pub(super) fn deregister(s: &mut State, id: &str) -> Reply {
    if s.services.remove(id).is_none() {
        return text(
            404,
            &format!(
                "Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."
            ),
        );
    }
    // The agent removes a locally registered sidecar with its parent.
    let sidecar = format!("{id}-sidecar-proxy");
    s.services.remove(&sidecar);
    s.checks.retain(|_, c| {
        let sid = match c.get("ServiceID") {
            Some(Value::String(v)) => v.as_str(),
            _ => "",
        };
        sid != id && sid != sidecar
    });
    (200, String::new(), Vec::new())
}

/// `filter` of the agent and catalog listings: the two bexpr forms `consul connect envoy`
/// sends (Kind == `x`, ID == "x"); anything else is refused rather than half-evaluated.
pub(super) fn filter_matches(filter: &str, svc: &Object) -> Result<bool, Reply> {
    let parse = |field: &str| -> Option<String> {
        let rest = filter
            .trim()
            .strip_prefix(field)?
            .trim_start()
            .strip_prefix("==")?
            .trim();
        let quoted = rest
            .strip_prefix('`')
            .and_then(|r| r.strip_suffix('`'))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
        Some(quoted.to_string())
    };
    let field_is = |key: &str, want: &str| match svc.get(key) {
        Some(Value::String(v)) => v == want,
        _ => want.is_empty(),
    };
    if let Some(kind) = parse("Kind") {
        return Ok(field_is("Kind", &kind));
    }
    if let Some(id) = parse("ID") {
        return Ok(field_is("ID", &id));
    }
    Err(text(
        400,
        &format!("Failed to create boolexpr evaluator: unsupported filter {filter:?}"),
    ))
}

pub(super) fn filtered_services(s: &State, r: &Request) -> Result<Vec<Object>, Reply> {
    let mut out = Vec::new();
    for svc in s.services.values() {
        let keep = match r.query_value("filter") {
            Some(f) => filter_matches(&f, svc)?,
            None => true,
        };
        if keep {
            out.push(svc.clone());
        }
    }
    Ok(out)
}

/// `PUT /v1/agent/check/update/<id>` (`{"Status", "Output"}`): a TTL check's new state, as
/// a script check's runner reports it.
pub(super) fn update_ttl_check(s: &mut State, id: &str, body: &str) -> Reply {
    let Ok(Value::Object(update)) = json::from_str::<Value>(body) else {
        return bad("not a JSON object");
    };
    let Some(check) = s.checks.get_mut(id) else {
        return text(
            404,
            &format!(
                "Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."
            ),
        );
    };
    let is_ttl = matches!(check.get("Definition"), Some(Value::Object(d)) if d.contains_key("TTL"));
    if !is_ttl {
        return text(
            500,
            &format!("CheckID \"{id}\" does not have associated TTL"),
        );
    }
    let status = match update.get("Status") {
        Some(Value::String(status)) => status.clone(),
        _ => String::new(),
    };
    if !matches!(status.as_str(), "passing" | "warning" | "critical") {
        return text(400, &format!("Invalid check status: '{status}'"));
    }
    let output = match update.get("Output") {
        Some(Value::String(o)) => o.clone(),
        _ => String::new(),
    };
    // The agent keeps at most 4 KiB of output (check_output_max_size).
    let output: String = output.chars().take(4096).collect();
    check.insert("Status".into(), Value::String(status));
    check.insert("Output".into(), Value::String(output));
    s.index += 1;
    (200, String::new(), Vec::new())
}
