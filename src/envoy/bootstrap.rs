//! Envoy's bootstrap for a Connect sidecar or gateway, rendered natively: the same JSON as
//! `consul connect envoy -bootstrap` (reference/consul-api.md §1.6–1.9; the goldens in
//! reference/consul-envoy-golden), so a device needs no `consul` binary.
//!
//! The document: admin (file access log, or proxy-defaults' access logs), node, layered
//! runtime, the `local_agent` cluster (TCP or unix pipe, optional TLS with the CA inlined),
//! extra and helper clusters and listeners (prometheus, stats, ready), stats sinks and tags,
//! tracing, and ADS over delta gRPC with the token in the initial metadata.

use super::access_logs::AccessLogs;
use super::json::{self, J, obj, s};
use super::proxy_config::ProxyConfig;
use super::stats::{self, Source, split_host_port};

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
    /// The bootstrap keys of the proxy's `Proxy.Config`.
    pub config: ProxyConfig,
    /// `AccessLogs` of the `proxy-defaults` entry, when there is one.
    pub access_logs: Option<AccessLogs>,
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
    /// The `/ready` listener (ingress gateways, or `--envoy-ready-bind-*`).
    pub ready_bind: Option<(String, u16)>,
    pub prometheus: Prometheus,
}

/// The `--prometheus-*` flags.
#[derive(Clone, Debug)]
pub struct Prometheus {
    pub backend_port: Option<u16>,
    pub scrape_path: String,
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            backend_port: None,
            scrape_path: "/metrics".into(),
            ca_file: None,
            ca_path: None,
            cert_file: None,
            key_file: None,
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

/// A fragment that must be exactly one JSON value (`envoy_stats_config_json`, `envoy_tracing_json`).
fn single(key: &str, text: &Option<String>) -> Result<Option<J>, String> {
    match fragment(key, text)? {
        None => Ok(None),
        Some(mut values) if values.len() == 1 => Ok(values.pop()),
        Some(_) => Err(format!("Proxy.Config {key} must hold one JSON value")),
    }
}

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
        http_options("http2_protocol_options"),
    );
    cluster.push("loadAssignment", load_assignment("local_agent", address));
    cluster
}

fn load_assignment(cluster: &str, address: J) -> J {
    obj([
        ("clusterName", s(cluster)),
        (
            "endpoints",
            J::Arr(vec![obj([(
                "lbEndpoints",
                J::Arr(vec![obj([("endpoint", obj([("address", address)]))])]),
            )])]),
        ),
    ])
}

/// `self_admin` or `prometheus_backend`: a plain HTTP/1 cluster on the admin address.
fn helper_cluster(name: &str, address: &str, port: u16) -> J {
    obj([
        ("name", s(name)),
        ("ignore_health_on_host_removal", J::Bool(false)),
        ("connect_timeout", s("5s")),
        ("type", s("STATIC")),
        (
            "typed_extension_protocol_options",
            http_options("http_protocol_options"),
        ),
        (
            "loadAssignment",
            load_assignment(name, socket_address(address, port)),
        ),
    ])
}

fn http_options(protocol: &str) -> J {
    obj([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        obj([
            (
                "@type",
                s("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
            ),
            ("explicit_http_config", obj([(protocol, obj([]))])),
        ]),
    )])
}

/// One helper listener: `match` on `<match_kind>: <match_value>` goes to `cluster` with
/// the path rewritten, anything else is a 404.
struct HelperListener<'a> {
    name: &'a str,
    bind: &'a str,
    match_kind: &'a str,
    match_value: &'a str,
    rewrite: &'a str,
    cluster: &'a str,
    tls: bool,
}

impl HelperListener<'_> {
    fn render(&self) -> Result<J, String> {
        let (host, port) = split_host_port(self.bind)
            .ok_or_else(|| format!("invalid {} bind address: {}", self.name, self.bind))?;
        let typed = |t: &str| obj([("@type", s(t))]);
        let manager = obj([
            (
                "@type",
                s(
                    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                ),
            ),
            ("stat_prefix", s(self.name)),
            ("codec_type", s("HTTP1")),
            (
                "route_config",
                obj([
                    ("name", s("self_admin_route")),
                    (
                        "virtual_hosts",
                        J::Arr(vec![obj([
                            ("name", s("self_admin")),
                            ("domains", J::Arr(vec![s("*")])),
                            (
                                "routes",
                                J::Arr(vec![
                                    obj([
                                        ("match", obj([(self.match_kind, s(self.match_value))])),
                                        (
                                            "route",
                                            obj([
                                                ("cluster", s(self.cluster)),
                                                ("prefix_rewrite", s(self.rewrite)),
                                            ]),
                                        ),
                                    ]),
                                    obj([
                                        ("match", obj([("prefix", s("/"))])),
                                        ("direct_response", obj([("status", J::Int(404))])),
                                    ]),
                                ]),
                            ),
                        ])]),
                    ),
                ]),
            ),
            (
                "http_filters",
                J::Arr(vec![obj([
                    ("name", s("envoy.filters.http.router")),
                    (
                        "typedConfig",
                        typed("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
                    ),
                ])]),
            ),
        ]);
        let mut chain = obj([(
            "filters",
            J::Arr(vec![obj([
                ("name", s("envoy.filters.network.http_connection_manager")),
                ("typedConfig", manager),
            ])]),
        )]);
        if self.tls {
            chain.push(
                "transportSocket",
                obj([
                    ("name", s("tls")),
                    (
                        "typedConfig",
                        obj([
                            ("@type", s("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")),
                            (
                                "commonTlsContext",
                                obj([
                                    (
                                        "tlsCertificateSdsSecretConfigs",
                                        J::Arr(vec![obj([("name", s("prometheus_cert"))])]),
                                    ),
                                    (
                                        "validationContextSdsSecretConfig",
                                        obj([("name", s("prometheus_validation_context"))]),
                                    ),
                                ]),
                            ),
                        ]),
                    ),
                ]),
            );
        }
        Ok(obj([
            ("name", s(&format!("{}_listener", self.name))),
            ("address", socket_address(host, port)),
            ("filter_chains", J::Arr(vec![chain])),
        ]))
    }
}

/// The secrets the prometheus listener's TLS refers to (files Envoy reads itself).
fn prometheus_secrets(p: &Prometheus) -> Vec<J> {
    let file = |path: &Option<String>| obj([("filename", s(path.as_deref().unwrap_or("")))]);
    let validation = match &p.ca_path {
        Some(dir) => obj([("watchedDirectory", obj([("path", s(dir))]))]),
        None => obj([("trustedCa", file(&p.ca_file))]),
    };
    vec![
        obj([
            ("name", s("prometheus_cert")),
            (
                "tlsCertificate",
                obj([
                    ("certificateChain", file(&p.cert_file)),
                    ("privateKey", file(&p.key_file)),
                ]),
            ),
        ]),
        obj([
            ("name", s("prometheus_validation_context")),
            ("validationContext", validation),
        ]),
    ]
}

fn has_cluster(clusters: &[J], name: &str) -> bool {
    clusters.iter().any(|c| match c {
        J::Obj(pairs) => pairs.iter().any(|(k, v)| k == "name" && *v == s(name)),
        _ => false,
    })
}

/// `static_resources`: local_agent, the extra clusters, then the helper listeners with
/// their clusters (prometheus, stats, ready — Consul's order; `self_admin` only once).
fn static_resources(i: &Inputs) -> Result<J, String> {
    let c = &i.config;
    let o = &i.options;
    let mut clusters = vec![local_agent(i)];
    clusters.extend(
        fragment(
            "envoy_extra_static_clusters_json",
            &c.extra_static_clusters_json,
        )?
        .into_iter()
        .flatten(),
    );
    let mut listeners: Vec<J> = fragment(
        "envoy_extra_static_listeners_json",
        &c.extra_static_listeners_json,
    )?
    .into_iter()
    .flatten()
    .collect();
    let mut secrets = Vec::new();
    let ready = o
        .ready_bind
        .as_ref()
        .map(|(host, port)| format!("{}:{port}", bracketed(host)));
    let helpers = [
        (
            c.prometheus_bind_addr.as_deref(),
            "envoy_prometheus_metrics",
            "path",
            o.prometheus.scrape_path.as_str(),
            "/stats/prometheus",
        ),
        (
            c.stats_bind_addr.as_deref(),
            "envoy_metrics",
            "prefix",
            "/stats",
            "/stats",
        ),
        (ready.as_deref(), "envoy_ready", "path", "/ready", "/ready"),
    ];
    for (bind, name, match_kind, match_value, rewrite) in helpers {
        let Some(bind) = bind else { continue };
        let prometheus = name == "envoy_prometheus_metrics";
        let (cluster, port) = match o.prometheus.backend_port {
            Some(port) if prometheus => ("prometheus_backend", port),
            _ => ("self_admin", o.admin_port),
        };
        if cluster == "prometheus_backend" || !has_cluster(&clusters, cluster) {
            clusters.push(helper_cluster(cluster, &o.admin_address, port));
        }
        let tls = prometheus && o.prometheus.cert_file.is_some();
        listeners.push(
            HelperListener {
                name,
                bind,
                match_kind,
                match_value,
                rewrite,
                cluster,
                tls,
            }
            .render()?,
        );
        if tls {
            secrets.extend(prometheus_secrets(&o.prometheus));
        }
    }
    let mut out = obj([("clusters", J::Arr(clusters))]);
    if !listeners.is_empty() {
        out.push("listeners", J::Arr(listeners));
    }
    if !secrets.is_empty() {
        out.push("secrets", J::Arr(secrets));
    }
    Ok(out)
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn admin(i: &Inputs) -> Result<J, String> {
    let loggers = match &i.access_logs {
        Some(logs) => logs.admin_loggers()?,
        None => None,
    };
    let loggers = loggers.unwrap_or_else(|| {
        vec![obj([
            ("name", s("envoy.access_loggers.file")),
            (
                "typed_config",
                obj([
                    (
                        "@type",
                        s("type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"),
                    ),
                    ("path", s(&i.options.admin_access_log_path)),
                ]),
            ),
        ])]
    });
    Ok(obj([
        ("access_log", J::Arr(loggers)),
        (
            "address",
            socket_address(&i.options.admin_address, i.options.admin_port),
        ),
    ]))
}

fn node(i: &Inputs) -> J {
    let mut metadata = obj([]);
    if let Some(node) = &i.options.node_name {
        metadata.push("node_name", s(node));
    }
    metadata.push("namespace", s(or_default(&i.namespace)));
    metadata.push("partition", s(or_default(&i.partition)));
    obj([
        ("cluster", s(&i.cluster)),
        ("id", s(&i.proxy_id)),
        ("metadata", metadata),
    ])
}

fn or_default(name: &str) -> &str {
    if name.is_empty() { "default" } else { name }
}

fn dynamic_resources(token: &str) -> J {
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
                                ("value", s(token)),
                            ])]),
                        ),
                        ("envoy_grpc", obj([("cluster_name", s("local_agent"))])),
                    ]),
                ),
            ]),
        ),
    ])
}

/// The bootstrap document, printed as Consul prints it (ends with `}` and two newlines), or
/// what is wrong with the inputs (a bad fragment, bind address or sink URL).
pub fn render(i: &Inputs) -> Result<String, crate::error::Error> {
    let c = &i.config;
    let mut sinks = stats::sinks(c, &|var| std::env::var(var).ok())?;
    sinks.extend(
        fragment("envoy_extra_stats_sinks_json", &c.extra_stats_sinks_json)?
            .into_iter()
            .flatten(),
    );
    let stats_config = match single("envoy_stats_config_json", &c.stats_config_json)? {
        Some(verbatim) => verbatim,
        None => {
            let source = Source {
                cluster: &i.cluster,
                service: &i.cluster,
                namespace: &i.namespace,
                partition: &i.partition,
                datacenter: &i.datacenter,
            };
            stats::stats_config(&c.stats_tags, &source, i.options.omit_deprecated_tags)
        }
    };
    let tracing = single("envoy_tracing_json", &c.tracing_json)?;
    let mut doc = obj([
        ("admin", admin(i)?),
        ("node", node(i)),
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
        ("static_resources", static_resources(i)?),
    ]);
    if !sinks.is_empty() {
        doc.push("stats_sinks", J::Arr(sinks));
    }
    doc.push("stats_config", stats_config);
    if let Some(interval) = &c.stats_flush_interval {
        doc.push("stats_flush_interval", s(interval));
    }
    if let Some(tracing) = tracing {
        doc.push("tracing", tracing);
    }
    doc.push("dynamic_resources", dynamic_resources(&i.options.token));
    Ok(doc.pretty() + "\n\n")
}
