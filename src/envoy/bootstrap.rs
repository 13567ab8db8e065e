//! Envoy's bootstrap for a Connect sidecar, rendered natively: the same JSON as
//! `consul connect envoy -bootstrap` (reference/consul-api.md §1.6, §1.8; the goldens in
//! reference/consul-envoy-golden), so a device needs no `consul` binary.
//!
//! This is the core document: admin (file access log), node, layered runtime, the
//! `local_agent` cluster (TCP or unix pipe, optional TLS with the CA inlined), stats tags
//! and ADS over delta gRPC with the token in the initial metadata. `Proxy.Config` knobs and
//! gateways build on it.

use super::json::{self, J, obj, s};
use crate::consul::agent::{AgentInfo, ProxyInfo};

/// Where Envoy reaches the Consul agent's xDS (gRPC) server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAddress {
    Tcp { address: String, port: u16 },
    Unix { path: String },
}

/// Everything the document is made from.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub proxy_id: String,
    /// The Envoy cluster: the destination service of a sidecar, the gateway's name.
    pub cluster: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
    pub options: Options,
    /// `Proxy.Config` fragments inserted verbatim (comma-separated JSON values).
    pub extra_static_clusters_json: Option<String>,
    pub extra_static_listeners_json: Option<String>,
    pub extra_stats_sinks_json: Option<String>,
}

/// How Envoy should reach the agent and be administered: outpost's plan (admin and xDS
/// addresses) or `envoy-bootstrap`'s flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub admin_address: String,
    pub admin_port: u16,
    pub admin_access_log_path: String,
    pub agent: AgentAddress,
    /// TLS to the agent's gRPC, with the CA PEM to trust (empty when none is given).
    pub agent_tls_ca: Option<String>,
    pub token: String,
    pub node_name: Option<String>,
    pub omit_deprecated_tags: bool,
}

impl Inputs {
    /// Inputs for a sidecar from the agent's own view of it: the Envoy cluster is the
    /// destination service (the service itself for a gateway), the fragments come from
    /// its `Proxy.Config`.
    pub fn for_proxy(agent: &AgentInfo, proxy: &ProxyInfo, options: Options) -> Inputs {
        let text = |key: &str| match proxy.config.get(key) {
            Some(miniserde::json::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let cluster = if proxy.destination_service_name.is_empty() {
            proxy.service.clone()
        } else {
            proxy.destination_service_name.clone()
        };
        Inputs {
            proxy_id: proxy.id.clone(),
            cluster,
            namespace: proxy.namespace.clone(),
            partition: proxy.partition.clone(),
            datacenter: agent.datacenter.clone(),
            options,
            extra_static_clusters_json: text("envoy_extra_static_clusters_json"),
            extra_static_listeners_json: text("envoy_extra_static_listeners_json"),
            extra_stats_sinks_json: text("envoy_extra_stats_sinks_json"),
        }
    }
}

/// A verbatim fragment, validated: `None` when unset or blank.
fn fragment(key: &str, text: &Option<String>) -> Result<Option<Vec<J>>, String> {
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => json::parse_list(text)
            .map(Some)
            .map_err(|e| format!("Proxy.Config {key} is not valid JSON: {e}")),
    }
}

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

fn socket_address(address: &str, port: u16) -> J {
    obj([(
        "socket_address",
        obj([
            ("address", s(address)),
            ("port_value", J::Int(i64::from(port))),
        ]),
    )])
}

fn ads_source() -> J {
    obj([
        ("ads", obj([])),
        ("initial_fetch_timeout", s("0s")),
        ("resource_api_version", s("V3")),
    ])
}

fn local_agent(i: &Inputs) -> J {
    let address = match &i.options.agent {
        AgentAddress::Tcp { address, port } => socket_address(address, *port),
        AgentAddress::Unix { path } => obj([("pipe", obj([("path", s(path))]))]),
    };
    let mut cluster = obj([
        ("name", s("local_agent")),
        ("ignore_health_on_host_removal", J::Bool(false)),
        ("connect_timeout", s("1s")),
        ("type", s("STATIC")),
    ]);
    if let Some(ca) = &i.options.agent_tls_ca {
        cluster.push(
            "transport_socket",
            obj([
                ("name", s("tls")),
                (
                    "typed_config",
                    obj([
                        ("@type", s("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")),
                        (
                            "common_tls_context",
                            obj([("validation_context", obj([("trusted_ca", obj([("inline_string", s(ca))]))]))]),
                        ),
                    ]),
                ),
            ]),
        );
    }
    cluster.push(
        "typed_extension_protocol_options",
        obj([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            obj([
                (
                    "@type",
                    s("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                ),
                (
                    "explicit_http_config",
                    obj([("http2_protocol_options", obj([]))]),
                ),
            ]),
        )]),
    );
    cluster.push(
        "loadAssignment",
        obj([
            ("clusterName", s("local_agent")),
            (
                "endpoints",
                J::Arr(vec![obj([(
                    "lbEndpoints",
                    J::Arr(vec![obj([("endpoint", obj([("address", address)]))])]),
                )])]),
            ),
        ]),
    );
    cluster
}

fn stats_tags(i: &Inputs) -> J {
    let rule = |(tag, regex): &(&str, &str)| obj([("regex", s(regex)), ("tag_name", s(tag))]);
    let mut tags: Vec<J> = CURRENT_TAGS.iter().map(rule).collect();
    if !i.options.omit_deprecated_tags {
        tags.extend(DEPRECATED_TAGS.iter().map(rule));
    }
    let fixed = [
        ("local_cluster", &i.cluster),
        ("consul.source.service", &i.cluster),
        ("consul.source.namespace", &i.namespace),
        ("consul.source.partition", &i.partition),
        ("consul.source.datacenter", &i.datacenter),
    ];
    tags.extend(
        fixed
            .iter()
            .map(|(tag, value)| obj([("tag_name", s(tag)), ("fixed_value", s(value))])),
    );
    obj([
        ("stats_tags", J::Arr(tags)),
        ("use_all_default_tags", J::Bool(true)),
    ])
}

/// The bootstrap document, printed as Consul prints it (ends with `}` and two newlines), or
/// what is wrong with a verbatim fragment.
pub fn render(i: &Inputs) -> Result<String, String> {
    let extra_clusters = fragment(
        "envoy_extra_static_clusters_json",
        &i.extra_static_clusters_json,
    )?;
    let extra_listeners = fragment(
        "envoy_extra_static_listeners_json",
        &i.extra_static_listeners_json,
    )?;
    let extra_sinks = fragment("envoy_extra_stats_sinks_json", &i.extra_stats_sinks_json)?;
    let mut clusters = vec![local_agent(i)];
    clusters.extend(extra_clusters.into_iter().flatten());
    let mut static_resources = obj([("clusters", J::Arr(clusters))]);
    if let Some(listeners) = extra_listeners {
        static_resources.push("listeners", J::Arr(listeners));
    }
    let mut metadata = obj([]);
    if let Some(node) = &i.options.node_name {
        metadata.push("node_name", s(node));
    }
    metadata.push("namespace", s(&i.namespace));
    metadata.push("partition", s(&i.partition));
    let mut doc = obj([
        (
            "admin",
            obj([
                (
                    "access_log",
                    J::Arr(vec![obj([
                        ("name", s("envoy.access_loggers.file")),
                        (
                            "typed_config",
                            obj([
                                (
                                    "@type",
                                    s(
                                        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                    ),
                                ),
                                ("path", s(&i.options.admin_access_log_path)),
                            ]),
                        ),
                    ])]),
                ),
                (
                    "address",
                    socket_address(&i.options.admin_address, i.options.admin_port),
                ),
            ]),
        ),
        (
            "node",
            obj([
                ("cluster", s(&i.cluster)),
                ("id", s(&i.proxy_id)),
                ("metadata", metadata),
            ]),
        ),
        (
            "layered_runtime",
            obj([(
                "layers",
                J::Arr(vec![obj([
                    ("name", s("base")),
                    (
                        "static_layer",
                        obj([("re2.max_program_size.error_level", J::Int(1_048_576))]),
                    ),
                ])]),
            )]),
        ),
        ("static_resources", static_resources),
    ]);
    if let Some(sinks) = extra_sinks {
        doc.push("stats_sinks", J::Arr(sinks));
    }
    doc.push("stats_config", stats_tags(i));
    doc.push(
        "dynamic_resources",
        obj([
            ("lds_config", ads_source()),
            ("cds_config", ads_source()),
            (
                "ads_config",
                obj([
                    ("api_type", s("DELTA_GRPC")),
                    ("transport_api_version", s("V3")),
                    (
                        "grpc_services",
                        obj([
                            (
                                "initial_metadata",
                                J::Arr(vec![obj([
                                    ("key", s("x-consul-token")),
                                    ("value", s(&i.options.token)),
                                ])]),
                            ),
                            ("envoy_grpc", obj([("cluster_name", s("local_agent"))])),
                        ]),
                    ),
                ]),
            ),
        ]),
    );
    Ok(doc.pretty() + "\n\n")
}
