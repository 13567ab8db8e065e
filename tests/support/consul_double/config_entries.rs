//! `PUT /v1/config`: the entries outpost writes, validated as Consul decodes them.

use super::*;

pub(super) const CONFIG_KINDS: &[&str] = &[
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
];

/// `PUT /v1/config`: the two gateway kinds outpost writes are validated field by field as
/// Consul decodes them (unknown keys are errors); other kinds are stored as given.
pub(super) fn put_config(s: &mut State, body: &str) -> Reply {
    let Ok(Value::Object(mut entry)) = json::from_str::<Value>(body) else {
        return text(400, "Request decoding failed: expected a JSON object");
    };
    let kind = match entry.get("Kind") {
        Some(Value::String(k)) => k.clone(),
        _ => return text(400, "Request decoding failed: Payload is missing Kind"),
    };
    if !CONFIG_KINDS.contains(&kind.as_str()) {
        return text(
            400,
            &format!("Request decoding failed: invalid config entry kind: {kind}"),
        );
    }
    let name = match entry.get("Name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => return text(400, &format!("Name is required for {kind} config entries")),
    };
    let valid = match kind.as_str() {
        "ingress-gateway" => validate_ingress_entry(&entry),
        "terminating-gateway" => validate_terminating_entry(&entry),
        "service-intentions" => validate_intentions_entry(&entry),
        _ => Ok(()),
    };
    if let Err(reply) = valid {
        return reply;
    }
    s.config_index += 1;
    let key = (kind, name);
    let create = s
        .config_entries
        .get(&key)
        .and_then(|e| e.get("CreateIndex").cloned())
        .unwrap_or(Value::Number(Number::U64(s.config_index)));
    entry.insert("CreateIndex".into(), create);
    entry.insert(
        "ModifyIndex".into(),
        Value::Number(Number::U64(s.config_index)),
    );
    s.config_entries.insert(key, entry);
    (200, "true".into(), Vec::new())
}

pub(super) fn decode_keys(obj: &Object, allowed: &[&str]) -> Result<(), Reply> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(text(
            400,
            &format!(
                "Request decoding failed: 1 error(s) decoding:\n\n* invalid config key \"{k}\""
            ),
        )),
        None => Ok(()),
    }
}

pub(super) fn validate_ingress_entry(entry: &Object) -> Result<(), Reply> {
    decode_keys(
        entry,
        &[
            "Kind",
            "Name",
            "Namespace",
            "Partition",
            "TLS",
            "Listeners",
            "Defaults",
            "Meta",
        ],
    )?;
    if let Some(tls) = get_obj(entry, "TLS")? {
        decode_keys(
            tls,
            &[
                "Enabled",
                "TLSMinVersion",
                "TLSMaxVersion",
                "CipherSuites",
                "SDS",
            ],
        )?;
    }
    for listener in get_array(entry, "Listeners")?.into_iter().flatten() {
        let Value::Object(l) = listener else {
            return Err(bad("Listeners: expected objects"));
        };
        decode_keys(l, &["Port", "Protocol", "Services", "TLS"])?;
        let port = get_port(l, "Port")?;
        let protocol = get_str(l, "Protocol")?.unwrap_or("tcp");
        if !["tcp", "http", "http2", "grpc"].contains(&protocol) {
            return Err(text(
                400,
                &format!(
                    "protocol must be 'tcp', 'http', 'http2', or 'grpc'. '{protocol}' is an unsupported protocol"
                ),
            ));
        }
        let services = get_array(l, "Services")?.map_or(0, |a| a.len());
        if protocol == "tcp" && services > 1 {
            return Err(text(
                400,
                &format!(
                    "Listener on port {port} protocol tcp: multiple services per listener are only supported for protocol = 'http' (1 error)"
                ),
            ));
        }
        for svc in get_array(l, "Services")?.into_iter().flatten() {
            let Value::Object(svc) = svc else {
                return Err(bad("Services: expected objects"));
            };
            decode_keys(
                svc,
                &[
                    "Name",
                    "Hosts",
                    "Namespace",
                    "Partition",
                    "RequestHeaders",
                    "ResponseHeaders",
                    "TLS",
                    "MaxConnections",
                    "MaxPendingRequests",
                    "MaxConcurrentRequests",
                    "PassiveHealthCheck",
                ],
            )?;
            if get_str(svc, "Name")?.is_none_or(str::is_empty) {
                return Err(text(
                    400,
                    &format!("Service name cannot be blank (listener on port {port})"),
                ));
            }
            string_list(svc, "Hosts")?;
        }
    }
    string_map(entry, "Meta")?;
    Ok(())
}

/// L4 intentions only (the double's xDS serves network RBAC): each source has a name and an
/// action `allow` or `deny`.
pub(super) fn validate_intentions_entry(entry: &Object) -> Result<(), Reply> {
    decode_keys(
        entry,
        &["Kind", "Name", "Namespace", "Partition", "Sources", "Meta"],
    )?;
    for (i, source) in get_array(entry, "Sources")?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Value::Object(source) = source else {
            return Err(bad("Sources: expected objects"));
        };
        decode_keys(
            source,
            &[
                "Name",
                "Namespace",
                "Partition",
                "Peer",
                "Action",
                "Description",
            ],
        )?;
        if get_str(source, "Name")?.unwrap_or("").is_empty() {
            return Err(text(400, &format!("Sources[{i}].Name is required")));
        }
        if !matches!(get_str(source, "Action")?, Some("allow" | "deny")) {
            return Err(text(
                400,
                &format!("Sources[{i}].Action must be set to 'allow' or 'deny'"),
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_terminating_entry(entry: &Object) -> Result<(), Reply> {
    decode_keys(
        entry,
        &["Kind", "Name", "Namespace", "Partition", "Services", "Meta"],
    )?;
    for svc in get_array(entry, "Services")?.into_iter().flatten() {
        let Value::Object(svc) = svc else {
            return Err(bad("Services: expected objects"));
        };
        decode_keys(
            svc,
            &[
                "Name",
                "Namespace",
                "Partition",
                "CAFile",
                "CertFile",
                "KeyFile",
                "SNI",
                "DisableAutoHostRewrite",
            ],
        )?;
        let name = get_str(svc, "Name")?.unwrap_or("");
        if name.is_empty() {
            return Err(text(400, "Service name cannot be blank."));
        }
        // One-way TLS needs only the CA; a client certificate needs all three.
        let (ca, cert, key) = (
            get_str(svc, "CAFile")?.is_some(),
            get_str(svc, "CertFile")?.is_some(),
            get_str(svc, "KeyFile")?.is_some(),
        );
        if (cert || key) && !(ca && cert && key) {
            return Err(text(
                400,
                &format!(
                    "Service \"{name}\": must have a CertFile, CAFile, and KeyFile specified for TLS origination"
                ),
            ));
        }
    }
    string_map(entry, "Meta")?;
    Ok(())
}
