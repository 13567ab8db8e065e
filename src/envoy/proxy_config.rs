//! The `envoy_*` keys of a proxy's `Proxy.Config` that shape its bootstrap
//! (reference/consul-api.md §1.7). Consul decodes them weakly typed: a number or a boolean
//! where a string is expected is taken as its text, one string where a list is expected is
//! a list of one.

use miniserde::json::{Number, Object, Value};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `k=v` or bare `k` (value `1`): fixed stats tags, emitted first.
    pub stats_tags: Vec<String>,
    pub statsd_url: Option<String>,
    pub dogstatsd_url: Option<String>,
    /// Comma-separated JSON values inserted verbatim.
    pub extra_static_clusters_json: Option<String>,
    pub extra_static_listeners_json: Option<String>,
    pub extra_stats_sinks_json: Option<String>,
    /// Replaces the whole `stats_config`.
    pub stats_config_json: Option<String>,
    pub stats_flush_interval: Option<String>,
    pub tracing_json: Option<String>,
    pub prometheus_bind_addr: Option<String>,
    pub stats_bind_addr: Option<String>,
}

/// Keys Consul knows that the native renderer cannot honour; failing beats ignoring them.
const NOT_NATIVE: [&str; 2] = [
    "envoy_bootstrap_json_tpl",
    "envoy_telemetry_collector_bind_socket_dir",
];

fn text(key: &str, value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(Number::U64(n)) => Ok(Some(n.to_string())),
        Value::Number(Number::I64(n)) => Ok(Some(n.to_string())),
        Value::Number(Number::F64(n)) => Ok(Some(n.to_string())),
        _ => Err(format!("Proxy.Config {key}: expected a string")),
    }
}

fn list(key: &str, value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| text(key, item).transpose())
            .collect(),
        other => Ok(text(key, other)?.into_iter().collect()),
    }
}

impl ProxyConfig {
    /// Reads the bootstrap keys; other keys (the ones that shape xDS, like `protocol` or
    /// `bind_port`) are not ours and pass untouched.
    pub fn from_object(config: &Object) -> Result<ProxyConfig, String> {
        let mut out = ProxyConfig::default();
        for (key, value) in config {
            let slot = match key.as_str() {
                "envoy_stats_tags" => {
                    out.stats_tags = list(key, value)?;
                    continue;
                }
                k if NOT_NATIVE.contains(&k) => {
                    if text(key, value)?.is_some() {
                        return Err(format!(
                            "Proxy.Config {key} is not supported by the native renderer; \
                             set envoy.bootstrap = \"consul-cli\" to have Consul render it"
                        ));
                    }
                    continue;
                }
                "envoy_statsd_url" => &mut out.statsd_url,
                "envoy_dogstatsd_url" => &mut out.dogstatsd_url,
                "envoy_extra_static_clusters_json" => &mut out.extra_static_clusters_json,
                "envoy_extra_static_listeners_json" => &mut out.extra_static_listeners_json,
                "envoy_extra_stats_sinks_json" => &mut out.extra_stats_sinks_json,
                "envoy_stats_config_json" => &mut out.stats_config_json,
                "envoy_stats_flush_interval" => &mut out.stats_flush_interval,
                "envoy_tracing_json" => &mut out.tracing_json,
                "envoy_prometheus_bind_addr" => &mut out.prometheus_bind_addr,
                "envoy_stats_bind_addr" => &mut out.stats_bind_addr,
                _ => continue,
            };
            *slot = text(key, value)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniserde::json;

    fn parse(text: &str) -> Result<ProxyConfig, String> {
        let Ok(Value::Object(o)) = json::from_str::<Value>(text) else {
            panic!("test input is an object")
        };
        ProxyConfig::from_object(&o)
    }

    #[test]
    fn weakly_typed_like_consul() {
        let c = parse(
            r#"{"envoy_stats_tags":"canary","envoy_stats_flush_interval":5,
                "envoy_prometheus_bind_addr":"0.0.0.0:9102","bind_port":21000}"#,
        )
        .unwrap();
        assert_eq!(c.stats_tags, ["canary"]);
        assert_eq!(c.stats_flush_interval.as_deref(), Some("5"));
        assert_eq!(c.prometheus_bind_addr.as_deref(), Some("0.0.0.0:9102"));
    }

    #[test]
    fn unsupported_and_mistyped_keys_are_errors() {
        assert!(
            parse(r#"{"envoy_bootstrap_json_tpl":"{}"}"#)
                .unwrap_err()
                .contains("consul-cli")
        );
        assert_eq!(
            parse(r#"{"envoy_tracing_json":{"http":{}}}"#).unwrap_err(),
            "Proxy.Config envoy_tracing_json: expected a string"
        );
    }
}
