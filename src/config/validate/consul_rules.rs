//! Values Consul's agent refuses when it decodes a registration or a config entry: caught
//! here, at their place, with Consul's rule, instead of as a 400 at the first sync.

use super::*;

/// Consul's limits on service metadata (agent/structs: `validateMetadata`).
const META_MAX_PAIRS: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;

pub(super) fn check_service_for_consul(
    c: &mut Checker,
    gi: usize,
    si: usize,
    service: &Service,
    acl_mode: AclMode,
) {
    let at = |keys: &[Seg]| {
        let mut p = path!["group", gi, "service", si];
        p.extend(keys.iter().cloned());
        p
    };
    check_meta(c, at(&[Seg::Key("meta")]), &service.meta);
    let sidecar = service
        .connect
        .as_ref()
        .and_then(|k| k.sidecar_service.as_ref());
    if let Some(sidecar) = sidecar {
        let meta = at(&[
            Seg::Key("connect"),
            Seg::Key("sidecar_service"),
            Seg::Key("meta"),
        ]);
        check_meta(c, meta, &sidecar.meta);
    }
    if acl_mode == AclMode::ServiceIdentity && !is_service_identity_name(&service.name) {
        c.err(
            at(&[Seg::Key("name")]),
            format!(
                "service name \"{}\" cannot be a Consul service identity (consul.acl.mode = \"service-identity\"): use lowercase letters, digits, '-' and '_'",
                service.name
            ),
        );
    }
    for (ci, check) in service.checks.iter().enumerate() {
        if check.failures_before_warning > check.failures_before_critical {
            c.err(
                at(&[
                    Seg::Key("check"),
                    Seg::Index(ci),
                    Seg::Key("failures_before_warning"),
                ]),
                format!(
                    "failures_before_warning ({}) must not be greater than failures_before_critical ({}): Consul refuses the check",
                    check.failures_before_warning, check.failures_before_critical
                ),
            );
        }
    }
    let upstreams = sidecar
        .and_then(|s| s.proxy.as_ref())
        .map_or(&[][..], |p| p.upstreams.as_slice());
    for (ui, up) in upstreams.iter().enumerate() {
        let up_at = |key: &'static str| {
            at(&[
                Seg::Key("connect"),
                Seg::Key("sidecar_service"),
                Seg::Key("proxy"),
                Seg::Key("upstreams"),
                Seg::Index(ui),
                Seg::Key(key),
            ])
        };
        if let Some(kind) = &up.destination_type {
            c.one_of(
                up_at("destination_type"),
                "upstream destination_type",
                kind,
                &["service", "prepared_query"],
            );
        }
        if up.destination_peer.is_some() && up.datacenter.is_some() {
            c.err(
                up_at("destination_peer"),
                format!(
                    "upstream \"{}\": destination_peer and datacenter cannot both be set (a peered service is not in one of this cluster's datacenters)",
                    up.destination_name
                ),
            );
        }
    }
}

/// Consul's service identity names: lowercase letters, digits, '-' and '_', starting and
/// ending with a letter or digit.
fn is_service_identity_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
}

fn check_meta(c: &mut Checker, at: Vec<Seg>, meta: &Env) {
    if meta.len() > META_MAX_PAIRS {
        c.err_at_key(
            at.clone(),
            format!(
                "metadata cannot contain more than {META_MAX_PAIRS} key/value pairs (has {})",
                meta.len()
            ),
        );
    }
    for (key, value) in meta {
        let mut here = at.clone();
        here.push(Seg::Name(key.clone()));
        let problem = if key.len() > META_KEY_MAX {
            Some(format!("is too long (limit: {META_KEY_MAX} characters)"))
        } else if !key
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-'))
        {
            Some("contains invalid characters (Consul allows ^[a-zA-Z0-9_-]+$)".to_string())
        } else if key.starts_with("consul-") {
            Some("has the prefix 'consul-', which Consul reserves for internal use".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            c.err_at_key(here.clone(), format!("meta key \"{key}\" {problem}"));
        }
        if value.len() > META_VALUE_MAX {
            c.err(
                here,
                format!("meta value of \"{key}\" is too long (limit: {META_VALUE_MAX} characters)"),
            );
        }
    }
}

/// An ingress gateway's listeners and a terminating gateway's TLS, as Consul validates
/// their config entries.
pub(super) fn check_gateway_entries(c: &mut Checker, at: &[Seg], gateway: &Gateway) {
    let sub = |keys: Vec<Seg>| {
        let mut p = at.to_vec();
        p.extend(keys);
        p
    };
    if let Some(ingress) = &gateway.ingress {
        if let Some(tls) = &ingress.tls {
            for (key, value) in [
                ("tls_min_version", &tls.tls_min_version),
                ("tls_max_version", &tls.tls_max_version),
            ] {
                if let Some(version) = value {
                    c.one_of(
                        sub(path!["ingress", "tls", key]),
                        key,
                        version,
                        &["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"],
                    );
                }
            }
        }
        let mut ports = BTreeSet::new();
        for (li, listener) in ingress.listeners.iter().enumerate() {
            if !ports.insert(listener.port) {
                c.err(
                    sub(path!["ingress", "listener", li, "port"]),
                    format!(
                        "port {} declared on two listeners: Consul refuses the ingress gateway's config entry",
                        listener.port
                    ),
                );
            }
            if listener.protocol != "tcp" {
                continue;
            }
            if listener.services.len() > 1 {
                c.err(
                    sub(path!["ingress", "listener", li, "service"]),
                    format!(
                        "listener on port {}: multiple services per listener are only supported for L7 protocols (http, http2, grpc), not tcp",
                        listener.port
                    ),
                );
            }
            for (ii, service) in listener.services.iter().enumerate() {
                if !service.hosts.is_empty() {
                    c.err(
                        sub(path!["ingress", "listener", li, "service", ii, "hosts"]),
                        format!(
                            "service \"{}\": hosts are not supported for the tcp protocol (only http, http2, grpc)",
                            service.name
                        ),
                    );
                }
            }
        }
    }
    if let Some(term) = &gateway.terminating {
        for (ti, linked) in term.services.iter().enumerate() {
            if linked.cert_file.is_some() && linked.key_file.is_some() && linked.ca_file.is_none() {
                c.err(
                    sub(path!["terminating", "service", ti, "name"]),
                    format!(
                        "terminating gateway service \"{}\" has cert_file and key_file but no ca_file: Consul needs all three for TLS origination",
                        linked.name
                    ),
                );
            }
        }
    }
}
