//! Envoy's admin access log from the `proxy-defaults` config entry's `AccessLogs`
//! (reference/consul-api.md §1.7): one logger named "Consul Listener Filter Log", written
//! the way Consul prints it (protojson: camelCase, `@type` first, Struct keys sorted).

use super::json::{self, J, obj, s};
use miniserde::json::{Object, Value};

/// `AccessLogs` of `proxy-defaults/global`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogs {
    pub enabled: bool,
    /// `""`/`stdout`, `stderr` or `file`.
    pub sink: String,
    pub path: String,
    pub json_format: String,
    pub text_format: String,
}

/// Consul's default JSON format: `%…%` operators by key.
const DEFAULT_FORMAT: [(&str, &str); 24] = [
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

impl AccessLogs {
    /// From a `GET /v1/config/proxy-defaults/global` answer; `None` when it has none.
    pub fn from_entry(entry: &Object) -> Option<AccessLogs> {
        let Some(Value::Object(logs)) = entry.get("AccessLogs") else {
            return None;
        };
        let text = |key: &str| match logs.get(key) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        Some(AccessLogs {
            enabled: matches!(logs.get("Enabled"), Some(Value::Bool(true))),
            sink: text("Type"),
            path: text("Path"),
            json_format: text("JSONFormat"),
            text_format: text("TextFormat"),
        })
    }

    /// The admin loggers, or `None` when access logs are off.
    pub fn admin_loggers(&self) -> Result<Option<Vec<J>>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let format = if !self.json_format.is_empty() {
            let parsed = json::parse(&self.json_format).map_err(|e| {
                format!("proxy-defaults AccessLogs.JSONFormat is not valid JSON: {e}")
            })?;
            obj([("jsonFormat", sorted(parsed))])
        } else if !self.text_format.is_empty() {
            let mut line = self.text_format.clone();
            if !line.ends_with('\n') {
                line.push('\n');
            }
            obj([("textFormatSource", obj([("inlineString", J::Str(line))]))])
        } else {
            let fields = DEFAULT_FORMAT
                .iter()
                .map(|(k, v)| (k.to_string(), s(v)))
                .collect();
            obj([("jsonFormat", J::Obj(fields))])
        };
        let type_url = |name: &str| s(&format!("type.googleapis.com/envoy.extensions.{name}"));
        let typed = match self.sink.as_str() {
            "" | "stdout" => obj([
                (
                    "@type",
                    type_url("access_loggers.stream.v3.StdoutAccessLog"),
                ),
                ("logFormat", format),
            ]),
            "stderr" => obj([
                (
                    "@type",
                    type_url("access_loggers.stream.v3.StderrAccessLog"),
                ),
                ("logFormat", format),
            ]),
            "file" => obj([
                ("@type", type_url("access_loggers.file.v3.FileAccessLog")),
                ("path", s(&self.path)),
                ("logFormat", format),
            ]),
            other => return Err(format!("unsupported log format: {other}")),
        };
        Ok(Some(vec![obj([
            ("name", s("Consul Listener Filter Log")),
            ("typedConfig", typed),
        ])]))
    }
}

/// A protobuf Struct prints its keys sorted, at every depth.
fn sorted(value: J) -> J {
    match value {
        J::Obj(mut pairs) => {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            J::Obj(pairs.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        J::Arr(items) => J::Arr(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
