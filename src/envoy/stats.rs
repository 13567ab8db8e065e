//! Envoy's stats configuration as Consul writes it (reference/consul-api.md §1.7, §1.8):
//! the tag rules that turn Consul's cluster and listener names into tags, the fixed tags of
//! this proxy, and the statsd/dogstatsd sinks.

use super::json::{J, obj, s};
use super::proxy_config::ProxyConfig;

/// Consul's stats tag rules, in its order (reference/consul-api.md §1.8): (tag, regex).
pub const CURRENT_TAGS: [(&str, &str); 16] = [
    (
        "consul.destination.custom_hash",
        r#"^cluster\.(?:passthrough~)?((?:([^.]+)~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.service_subset",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:([^.]+)\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.service",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:[^.]+\.)?([^.]+)\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.namespace",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.([^.]+)\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.partition",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:([^.]+)\.)?[^.]+\.internal[^.]*\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.datacenter",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?([^.]+)\.internal[^.]*\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.peer",
        r#"^cluster\.([^.]+\.(?:[^.]+\.)?([^.]+)\.external\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.routing_type",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.([^.]+)\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.trust_domain",
        r#"^cluster\.(?:passthrough~)?((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.([^.]+)\.consul\.)"#,
    ),
    (
        "consul.destination.target",
        r#"^cluster\.(?:passthrough~)?(((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+)\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.destination.full_target",
        r#"^cluster\.(?:passthrough~)?(((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+)\.consul\.)"#,
    ),
    (
        "consul.upstream.service",
        r#"^(?:tcp|http)\.upstream(?:_peered)?\.(([^.]+)(?:\.[^.]+)?(?:\.[^.]+)?\.[^.]+\.)"#,
    ),
    (
        "consul.upstream.datacenter",
        r#"^(?:tcp|http)\.upstream\.([^.]+(?:\.[^.]+)?(?:\.[^.]+)?\.([^.]+)\.)"#,
    ),
    (
        "consul.upstream.peer",
        r#"^(?:tcp|http)\.upstream_peered\.([^.]+(?:\.[^.]+)?\.([^.]+)\.)"#,
    ),
    (
        "consul.upstream.namespace",
        r#"^(?:tcp|http)\.upstream(?:_peered)?\.([^.]+(?:\.([^.]+))?(?:\.[^.]+)?\.[^.]+\.)"#,
    ),
    (
        "consul.upstream.partition",
        r#"^(?:tcp|http)\.upstream\.([^.]+(?:\.[^.]+)?(?:\.([^.]+))?\.[^.]+\.)"#,
    ),
];

/// The older names Consul still emits unless `--omit-deprecated-tags`.
pub const DEPRECATED_TAGS: [(&str, &str); 9] = [
    (
        "consul.custom_hash",
        r#"^cluster\.((?:([^.]+)~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.service_subset",
        r#"^cluster\.((?:[^.]+~)?(?:([^.]+)\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.service",
        r#"^cluster\.((?:[^.]+~)?(?:[^.]+\.)?([^.]+)\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.namespace",
        r#"^cluster\.((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.([^.]+)\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.datacenter",
        r#"^cluster\.((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?([^.]+)\.internal[^.]*\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.routing_type",
        r#"^cluster\.((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.([^.]+)\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.trust_domain",
        r#"^cluster\.((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.([^.]+)\.consul\.)"#,
    ),
    (
        "consul.target",
        r#"^cluster\.(((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+)\.[^.]+\.[^.]+\.consul\.)"#,
    ),
    (
        "consul.full_target",
        r#"^cluster\.(((?:[^.]+~)?(?:[^.]+\.)?[^.]+\.[^.]+\.(?:[^.]+\.)?[^.]+\.[^.]+\.[^.]+)\.consul\.)"#,
    ),
];

/// Who the proxy is, for its fixed tags (empty values are left out).
pub struct Source<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    pub namespace: &'a str,
    pub partition: &'a str,
    pub datacenter: &'a str,
}

/// `stats_config`: the user's fixed tags, the rules, then the defaults the user did not set.
pub fn stats_config(user_tags: &[String], source: &Source, omit_deprecated: bool) -> J {
    let fixed = |tag: &str, value: &str| obj([("tag_name", s(tag)), ("fixed_value", s(value))]);
    let mut set_by_user = Vec::new();
    let mut tags: Vec<J> = user_tags
        .iter()
        .map(|tag| {
            let (key, value) = tag.split_once('=').unwrap_or((tag, "1"));
            let key = key.to_lowercase();
            let out = fixed(&key, value);
            set_by_user.push(key);
            out
        })
        .collect();
    let rule = |(tag, regex): &(&str, &str)| obj([("regex", s(regex)), ("tag_name", s(tag))]);
    tags.extend(CURRENT_TAGS.iter().map(rule));
    if !omit_deprecated {
        tags.extend(DEPRECATED_TAGS.iter().map(rule));
    }
    let defaults = [
        ("local_cluster", source.cluster),
        ("consul.source.service", source.service),
        ("consul.source.namespace", or_default(source.namespace)),
        ("consul.source.partition", or_default(source.partition)),
        ("consul.source.datacenter", source.datacenter),
    ];
    for (tag, value) in defaults {
        if !value.is_empty() && !set_by_user.iter().any(|t| t == tag) {
            tags.push(fixed(tag, value));
        }
    }
    obj([
        ("stats_tags", J::Arr(tags)),
        ("use_all_default_tags", J::Bool(true)),
    ])
}

fn or_default(name: &str) -> &str {
    if name.is_empty() { "default" } else { name }
}

/// The statsd and dogstatsd sinks, in Consul's order (extra sinks come after them).
pub fn sinks(config: &ProxyConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<J>, String> {
    let mut out = Vec::new();
    let kinds = [
        (&config.statsd_url, "envoy.stat_sinks.statsd", "StatsdSink"),
        (
            &config.dogstatsd_url,
            "envoy.stat_sinks.dog_statsd",
            "DogStatsdSink",
        ),
    ];
    for (url, name, kind) in kinds {
        let Some(url) = url else { continue };
        out.push(obj([
            ("name", s(name)),
            (
                "typedConfig",
                obj([
                    (
                        "@type",
                        s(&format!(
                            "type.googleapis.com/envoy.config.metrics.v3.{kind}"
                        )),
                    ),
                    ("address", sink_address(name, url, env)?),
                ]),
            ),
        ]));
    }
    Ok(out)
}

/// `udp://ip:port` or `unix:///path`; `$VAR` reads the whole URL from the environment and
/// `${HOST_IP}` is the only variable expanded inside one (Consul's rule).
fn sink_address(name: &str, url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<J, String> {
    let url = match url.strip_prefix('$') {
        Some(var) if url.len() > 2 => env(var).unwrap_or_default(),
        _ => url.replace("${HOST_IP}", &env("HOST_IP").unwrap_or_default()),
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("", &url));
    match scheme {
        "udp" => {
            let (host, port) = split_host_port(rest)
                .ok_or_else(|| format!("failed to parse {name} sink address {url:?}"))?;
            Ok(obj([(
                "socket_address",
                obj([
                    ("address", s(host)),
                    ("port_value", J::Int(i64::from(port))),
                ]),
            )]))
        }
        "unix" => Ok(obj([("pipe", obj([("path", s(rest))]))])),
        other => Err(format!(
            "unsupported address protocol {other:?} for {name} sink"
        )),
    }
}

/// `host:port` or `[v6]:port`.
pub fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    Some((host, port.parse().ok()?))
}
