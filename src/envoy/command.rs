//! `outpost envoy-bootstrap`: a drop-in for `consul connect envoy -bootstrap`
//! (reference/consul-api.md §1.1–1.5) — the same flags (with `--`), environment variables,
//! precedence, HTTP calls, warnings and errors, and the same JSON on stdout. The agent's
//! native mode runs it in-process with the flags Nomad would pass to `consul`.

use super::access_logs::AccessLogs;
use super::bootstrap::{AgentAddress, Inputs, Options, Prometheus, render};
use super::proxy_config::ProxyConfig;
use super::stats::split_host_port;
use crate::config::Consul;
use crate::consul::agent::{self, AgentInfo};
use crate::consul::client::{Client, ConsulError};
use crate::consul::lookup::{self, consul_failure};
use crate::error::Error;
use argh::FromArgs;
use miniserde::json::{Object, Value};
use std::net::{IpAddr, ToSocketAddrs};

/// Print Envoy's bootstrap for a Connect sidecar or gateway, as `consul connect envoy -bootstrap` does.
#[derive(FromArgs, Clone, Debug, Default, PartialEq)]
#[argh(subcommand, name = "envoy-bootstrap")]
pub struct EnvoyBootstrap {
    /// the proxy's service ID on the local agent; becomes Envoy's node.id (env CONNECT_PROXY_ID)
    #[argh(option)]
    pub proxy_id: Option<String>,
    /// the ID of the service whose sidecar to bootstrap (env CONNECT_SIDECAR_FOR)
    #[argh(option)]
    pub sidecar_for: Option<String>,
    /// gateway kind: api, terminating, mesh or ingress
    #[argh(option)]
    pub gateway: Option<String>,
    /// register the gateway service before bootstrapping (gateways only)
    #[argh(switch)]
    pub register: bool,
    /// the gateway's service name (default: the kind, e.g. ingress-gateway)
    #[argh(option)]
    pub service: Option<String>,
    /// the gateway's LAN address ip[:port] (default ":8443"); ingress gateways serve /ready there
    #[argh(option)]
    pub address: Option<String>,
    /// the gateway's WAN address ip[:port] (with --register)
    #[argh(option)]
    pub wan_address: Option<String>,
    /// name=ip:port Envoy binds for the gateway (repeatable, with --register)
    #[argh(option)]
    pub bind_address: Vec<String>,
    /// the admin address host:port for Envoy (default "127.0.0.1:19000"; "[::1]:19000" on a dual-stack agent)
    #[argh(option)]
    pub admin_bind: Option<String>,
    /// DEPRECATED: the admin access log path (default "/dev/null"); use proxy-defaults AccessLogs
    #[argh(option)]
    pub admin_access_log_path: Option<String>,
    /// the agent's xDS address: host:port, http(s)://host:port or unix:///path (env CONSUL_GRPC_ADDR; default: discovered from the agent)
    #[argh(option)]
    pub grpc_addr: Option<String>,
    /// CA file for TLS to the xDS address, inlined into the bootstrap (env CONSUL_GRPC_CACERT)
    #[argh(option)]
    pub grpc_ca_file: Option<String>,
    /// directory of CA files for TLS to the xDS address (env CONSUL_GRPC_CAPATH)
    #[argh(option)]
    pub grpc_ca_path: Option<String>,
    /// the agent's HTTP API (env CONSUL_HTTP_ADDR; default "http://127.0.0.1:8500"; unix:///path too)
    #[argh(option)]
    pub http_addr: Option<String>,
    /// ACL token for the HTTP calls and Envoy's xDS stream (env CONSUL_HTTP_TOKEN)
    #[argh(option)]
    pub token: Option<String>,
    /// file holding the ACL token; wins over --token (env CONSUL_HTTP_TOKEN_FILE)
    #[argh(option)]
    pub token_file: Option<String>,
    /// CA file for the HTTP API's TLS, and the xDS CA when none is given (env CONSUL_CACERT)
    #[argh(option)]
    pub ca_file: Option<String>,
    /// directory of CA files for the HTTP API's TLS (env CONSUL_CAPATH)
    #[argh(option)]
    pub ca_path: Option<String>,
    /// client certificate for the HTTP API (env CONSUL_CLIENT_CERT)
    #[argh(option)]
    pub client_cert: Option<String>,
    /// client key for the HTTP API (env CONSUL_CLIENT_KEY)
    #[argh(option)]
    pub client_key: Option<String>,
    /// server name to verify the HTTP API's certificate against (env CONSUL_TLS_SERVER_NAME)
    #[argh(option)]
    pub tls_server_name: Option<String>,
    /// the Consul Enterprise namespace (env CONSUL_NAMESPACE)
    #[argh(option)]
    pub namespace: Option<String>,
    /// the Consul Enterprise admin partition (env CONSUL_PARTITION)
    #[argh(option)]
    pub partition: Option<String>,
    /// look the proxy up in the catalog of this node (needs --proxy-id)
    #[argh(option)]
    pub node_name: Option<String>,
    /// with --envoy-ready-bind-port: serve /ready on this address
    #[argh(option)]
    pub envoy_ready_bind_address: Option<String>,
    /// with --envoy-ready-bind-address: serve /ready on this port
    #[argh(option)]
    pub envoy_ready_bind_port: Option<u16>,
    /// with envoy_prometheus_bind_addr: scrape this port on the admin address instead of Envoy's admin
    #[argh(option)]
    pub prometheus_backend_port: Option<u16>,
    /// path the prometheus listener answers (default "/metrics")
    #[argh(option)]
    pub prometheus_scrape_path: Option<String>,
    /// CA file for the prometheus listener's TLS
    #[argh(option)]
    pub prometheus_ca_file: Option<String>,
    /// CA directory for the prometheus listener's TLS
    #[argh(option)]
    pub prometheus_ca_path: Option<String>,
    /// certificate for the prometheus listener's TLS
    #[argh(option)]
    pub prometheus_cert_file: Option<String>,
    /// key for the prometheus listener's TLS
    #[argh(option)]
    pub prometheus_key_file: Option<String>,
    /// leave out the stats tag rules deprecated since Consul 1.9
    #[argh(switch)]
    pub omit_deprecated_tags: bool,
    /// ignore the envoy_* keys of the proxy's Proxy.Config
    #[argh(switch)]
    pub no_central_config: bool,
    /// DEPRECATED: the same as --gateway mesh
    #[argh(switch)]
    pub mesh_gateway: bool,
    /// with --register on a mesh gateway: expose the servers for WAN federation (meta consul-wan-federation = "1")
    #[argh(switch)]
    pub expose_servers: bool,
    /// with --register: the gateway check's DeregisterCriticalServiceAfter (default "6h")
    #[argh(option)]
    pub deregister_after_critical: Option<String>,
    /// accepted for Consul's command line: this command always prints the bootstrap
    #[argh(switch)]
    pub bootstrap: bool,
    /// accepted and ignored, as Consul ignores it with -bootstrap
    #[argh(option)]
    pub envoy_binary: Option<String>,
    /// accepted and ignored (legacy in Consul, unused)
    #[argh(option)]
    pub envoy_version: Option<String>,
    /// accepted and ignored: Consul skips its Envoy version check only when it execs Envoy
    #[argh(switch)]
    pub ignore_envoy_compatibility: bool,
    /// accepted and ignored (Consul's debug logging while generating)
    #[argh(switch)]
    pub enable_config_gen_logging: bool,
}

/// The bootstrap and the warnings Consul would print on stderr.
#[derive(Debug)]
pub struct Output {
    pub json: String,
    pub warnings: Vec<String>,
}

/// Where a setting comes from: the flag, else the environment variable.
fn pick(flag: &Option<String>, env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    flag.clone().or_else(|| env(var)).filter(|v| !v.is_empty())
}

/// A missing file worded as Go's os errors, which Consul prints.
fn io_error(op: &str, path: &str, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    format!("{op} {path}: {why}")
}

/// The PEM text of a CA file, or of every file in a CA directory (in name order).
fn read_ca(file: Option<&str>, dir: Option<&str>) -> Result<Option<String>, Error> {
    if let Some(file) = file {
        return std::fs::read_to_string(file).map(Some).map_err(|e| {
            Error::permanent(format!(
                "Error loading CA File: {}",
                io_error("open", file, &e)
            ))
        });
    }
    let Some(dir) = dir else { return Ok(None) };
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("lstat", dir, &e))?;
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut pem = String::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io_error("open", &path.display().to_string(), &e))?;
        pem.push_str(&text);
    }
    Ok(Some(pem))
}

/// `localhost` and other names resolved to an IP (Envoy's STATIC clusters need IPs);
/// IPv4 first, as Go's resolver does.
fn resolve(host: &str) -> Result<String, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    // `localhost` is the loopback address (RFC 6761) without asking the system, which
    // cannot answer on a minimal image without /etc/hosts.
    if host.eq_ignore_ascii_case("localhost") {
        return Ok("127.0.0.1".into());
    }
    let addrs: Vec<_> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| Error::permanent(format!("cannot resolve {host}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip().to_string())
        .ok_or_else(|| Error::permanent(format!("cannot resolve {host}")))
}

fn gateway_kind(name: &str) -> Result<&'static str, Error> {
    match name {
        "api" => Ok("api-gateway"),
        "terminating" => Ok("terminating-gateway"),
        "mesh" => Ok("mesh-gateway"),
        "ingress" => Ok("ingress-gateway"),
        _ => Err("Gateway must be one of: api, terminating, mesh, or ingress".into()),
    }
}

/// The HTTP client the flags and environment describe.
fn http_client(
    cmd: &EnvoyBootstrap,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Client, String), Error> {
    let mut address = pick(&cmd.http_addr, env, "CONSUL_HTTP_ADDR")
        .unwrap_or_else(|| "127.0.0.1:8500".to_string());
    if !address.contains("://") {
        let tls = env("CONSUL_HTTP_SSL").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        address = format!("{}://{address}", if tls { "https" } else { "http" });
    }
    // Go's strconv.ParseBool, as Consul's API client reads it.
    let verify_ssl = !env("CONSUL_HTTP_SSL_VERIFY")
        .is_some_and(|v| matches!(v.as_str(), "0" | "f" | "F" | "false" | "FALSE" | "False"));
    let ca_file = pick(&cmd.ca_file, env, "CONSUL_CACERT");
    let ca_path = pick(&cmd.ca_path, env, "CONSUL_CAPATH");
    // Checked first, with Consul's wording: its API client loads the CA before any call.
    read_ca(ca_file.as_deref(), ca_path.as_deref())?;
    let token = match (&cmd.token_file, &cmd.token) {
        (Some(file), _) => Some(read_token(file)?),
        (None, Some(token)) => Some(token.clone()),
        (None, None) => match env("CONSUL_HTTP_TOKEN_FILE").filter(|f| !f.is_empty()) {
            Some(file) => Some(read_token(&file)?),
            None => env("CONSUL_HTTP_TOKEN"),
        },
    };
    let consul = Consul {
        address,
        token: token.clone(),
        // The client reads a directory of PEM files as well as one file.
        ca_file: ca_file.or(ca_path),
        cert_file: pick(&cmd.client_cert, env, "CONSUL_CLIENT_CERT"),
        key_file: pick(&cmd.client_key, env, "CONSUL_CLIENT_KEY"),
        tls_server_name: pick(&cmd.tls_server_name, env, "CONSUL_TLS_SERVER_NAME"),
        auth: env("CONSUL_HTTP_AUTH").filter(|a| !a.is_empty()),
        verify_ssl,
        ..Consul::default()
    };
    Ok((Client::new(&consul)?, token.unwrap_or_default()))
}

fn read_token(file: &str) -> Result<String, Error> {
    std::fs::read_to_string(file)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            Error::permanent(format!(
                "Error loading token file: {}",
                io_error("open", file, &e)
            ))
        })
}

/// The proxy ID to bootstrap, looked up when only `--sidecar-for` or `--gateway` is given.
fn resolve_proxy_id(
    cmd: &EnvoyBootstrap,
    client: &Client,
    kind: Option<&str>,
    proxy_id: Option<String>,
    sidecar_for: Option<String>,
) -> Result<String, Error> {
    if let Some(id) = proxy_id {
        return Ok(id);
    }
    if let Some(parent) = sidecar_for {
        return lookup::sidecar_for(client, &parent);
    }
    let Some(kind) = kind else {
        return Err(
            "No proxy ID specified. One of -proxy-id, -sidecar-for, or -gateway is required".into(),
        );
    };
    if cmd.register {
        return Ok(cmd.service.clone().unwrap_or_else(|| kind.to_string()));
    }
    lookup::gateway_by_kind(client, kind)
}

/// `ip[:port]` with Consul's defaults: no IP is 127.0.0.1 for the check, port 8443.
fn lan_address(address: Option<&str>) -> Result<(String, u16), Error> {
    let text = address.unwrap_or(":8443");
    let (host, port) = match split_host_port(text) {
        Some((host, port)) => (host.to_string(), port),
        None if !text.contains(':') || text.parse::<IpAddr>().is_ok() => (text.to_string(), 8443),
        None => return Err(Error::permanent(format!("Invalid address {text:?}"))),
    };
    Ok((host, port))
}

/// `PUT /v1/agent/service/register` for `--register` (reference/consul-api.md §1.9).
fn register_gateway(
    cmd: &EnvoyBootstrap,
    client: &Client,
    kind: &str,
    id: &str,
) -> Result<(), Error> {
    let name = cmd.service.clone().unwrap_or_else(|| kind.to_string());
    let (lan_ip, port) = lan_address(cmd.address.as_deref())?;
    let mut body = Object::new();
    let text = |s: &str| Value::String(s.to_string());
    let tagged = |ip: &str, port: u16| {
        let mut a = Object::new();
        a.insert("Address".into(), text(ip));
        a.insert(
            "Port".into(),
            Value::Number(miniserde::json::Number::U64(port.into())),
        );
        Value::Object(a)
    };
    body.insert("Kind".into(), text(kind));
    body.insert("ID".into(), text(id));
    body.insert("Name".into(), text(&name));
    body.insert("Address".into(), text(&lan_ip));
    body.insert(
        "Port".into(),
        Value::Number(miniserde::json::Number::U64(port.into())),
    );
    let mut addresses = Object::new();
    if !lan_ip.is_empty() {
        addresses.insert("lan".into(), tagged(&lan_ip, port));
    }
    if let Some(wan) = &cmd.wan_address {
        let (wan_ip, wan_port) = lan_address(Some(wan))?;
        addresses.insert("wan".into(), tagged(&wan_ip, wan_port));
    }
    if !addresses.is_empty() {
        body.insert("TaggedAddresses".into(), Value::Object(addresses));
    }
    if !cmd.bind_address.is_empty() {
        let mut binds = Object::new();
        for entry in &cmd.bind_address {
            let (bind_name, addr) = entry
                .split_once('=')
                .ok_or_else(|| format!("bind-address {entry:?} is not name=ip:port"))?;
            let (ip, bind_port) = split_host_port(addr)
                .ok_or_else(|| format!("bind-address {entry:?} is not name=ip:port"))?;
            binds.insert(bind_name.into(), tagged(ip, bind_port));
        }
        let mut config = Object::new();
        config.insert("envoy_gateway_no_default_bind".into(), Value::Bool(true));
        config.insert("envoy_gateway_bind_addresses".into(), Value::Object(binds));
        let mut proxy = Object::new();
        proxy.insert("Config".into(), Value::Object(config));
        body.insert("Proxy".into(), Value::Object(proxy));
    }
    let check_ip = if lan_ip.is_empty() {
        "127.0.0.1"
    } else {
        &lan_ip
    };
    let mut check = Object::new();
    check.insert("Name".into(), text(&format!("{kind} listening")));
    check.insert("TCP".into(), text(&format!("{check_ip}:{port}")));
    check.insert("Interval".into(), text("10s"));
    let deregister_after = cmd.deregister_after_critical.as_deref().unwrap_or("6h");
    check.insert(
        "DeregisterCriticalServiceAfter".into(),
        text(deregister_after),
    );
    body.insert("Check".into(), Value::Object(check));
    if cmd.expose_servers {
        let mut meta = Object::new();
        meta.insert("consul-wan-federation".into(), text("1"));
        body.insert("Meta".into(), Value::Object(meta));
    }
    client
        .put(
            "/v1/agent/service/register",
            &miniserde::json::to_string(&Value::Object(body)),
        )
        .map_err(|e| consul_failure(&format!("Error registering service {name:?}"), e))?;
    Ok(())
}

/// The xDS address (reference/consul-api.md §1.4), and whether to use TLS.
fn xds_address(
    explicit: Option<String>,
    has_grpc_ca: bool,
    agent: &dyn Fn() -> Result<AgentInfo, Error>,
    loopback: &str,
    warnings: &mut Vec<String>,
) -> Result<(AgentAddress, bool), Error> {
    let loopback = if loopback.contains(':') {
        format!("[{loopback}]")
    } else {
        loopback.to_string()
    };
    let address = match explicit {
        Some(address) => address,
        None => {
            let me = match agent() {
                Ok(me) => me,
                // An agent token without agent:read: Consul carries on with the default.
                Err(e) if e.message().contains("Permission denied") => AgentInfo {
                    debug_grpc_port: Some(0),
                    ..AgentInfo::default()
                },
                Err(e) => return Err(e),
            };
            match (me.xds_ports, me.debug_grpc_port) {
                (Some(p), _) if p.tls > 0 => format!("https://{loopback}:{}", p.tls),
                (Some(p), _) if p.plaintext > 0 => format!("http://{loopback}:{}", p.plaintext),
                (_, None) => return Err("agent does not have grpc port enabled".into()),
                (_, Some(port)) if port < 0 => return Err("agent has grpc disabled".into()),
                (_, Some(0)) => {
                    warnings.push("-grpc-addr not provided and unable to discover a gRPC address for xDS. Defaulting to localhost:8502".into());
                    format!("{loopback}:8502")
                }
                (_, Some(port)) => format!("{loopback}:{port}"),
            }
        }
    };
    if let Some(path) = address.strip_prefix("unix://") {
        return Ok((
            AgentAddress::Unix {
                path: path.to_string(),
            },
            has_grpc_ca,
        ));
    }
    let lower = address.to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("https://") {
        (true, &address[8..])
    } else if lower.starts_with("http://") {
        (false, &address[7..])
    } else {
        (false, address.as_str())
    };
    let (host, port) =
        split_host_port(rest).ok_or_else(|| format!("Invalid Consul HTTP address: {address}"))?;
    Ok((
        AgentAddress::Tcp {
            address: resolve(host)?,
            port,
        },
        tls,
    ))
}

/// Runs the command: the flags, then the environment, then the agent's answers.
pub fn run(cmd: &EnvoyBootstrap, env: &dyn Fn(&str) -> Option<String>) -> Result<Output, Error> {
    let mut warnings = Vec::new();
    let proxy_id = pick(&cmd.proxy_id, env, "CONNECT_PROXY_ID");
    let sidecar_for = pick(&cmd.sidecar_for, env, "CONNECT_SIDECAR_FOR");
    if cmd.node_name.is_some() && proxy_id.is_none() {
        return Err("'-node-name' requires '-proxy-id'".into());
    }
    if cmd.mesh_gateway && cmd.gateway.is_some() {
        return Err(
            "The mesh-gateway flag is deprecated and cannot be used alongside the gateway flag"
                .into(),
        );
    }
    let gateway = match cmd.mesh_gateway {
        true => Some("mesh"),
        false => cmd.gateway.as_deref(),
    };
    if cmd.expose_servers {
        if gateway != Some("mesh") {
            return Err("'-expose-servers' can only be used for mesh gateways".into());
        }
        if !cmd.register {
            return Err("'-expose-servers' requires '-register'".into());
        }
    }
    let kind = gateway.map(gateway_kind).transpose()?;
    if proxy_id.is_none() && sidecar_for.is_none() && kind.is_none() {
        return Err(
            "No proxy ID specified. One of -proxy-id, -sidecar-for, or -gateway is required".into(),
        );
    }
    let p = Prometheus {
        backend_port: cmd.prometheus_backend_port,
        scrape_path: cmd
            .prometheus_scrape_path
            .clone()
            .unwrap_or_else(|| "/metrics".into()),
        ca_file: cmd.prometheus_ca_file.clone(),
        ca_path: cmd.prometheus_ca_path.clone(),
        cert_file: cmd.prometheus_cert_file.clone(),
        key_file: cmd.prometheus_key_file.clone(),
    };
    let any_tls =
        p.ca_file.is_some() || p.ca_path.is_some() || p.cert_file.is_some() || p.key_file.is_some();
    if any_tls
        && (p.cert_file.is_none()
            || p.key_file.is_none()
            || (p.ca_file.is_none() && p.ca_path.is_none()))
    {
        return Err("Must provide a CA (-prometheus-ca-file or -prometheus-ca-path) as well as -prometheus-cert-file and -prometheus-key-file to enable TLS for prometheus metrics".into());
    }
    if cmd.register && kind.is_none() {
        return Err("Auto-Registration can only be used for gateways".into());
    }
    if cmd.register && cmd.node_name.is_some() {
        return Err("'-register' cannot be used with '-node-name'".into());
    }
    if let Some(path) = &cmd.admin_access_log_path
        && path != "/dev/null"
    {
        warnings.push("-admin-access-log-path is deprecated and will be removed in a future version of Consul. Configure access logging with proxy-defaults.accessLogs.".into());
    }
    let (client, token) = http_client(cmd, env)?;
    let proxy_id = resolve_proxy_id(cmd, &client, kind, proxy_id, sidecar_for)?;
    if cmd.register
        && let Some(kind) = kind
    {
        register_gateway(cmd, &client, kind, &proxy_id)?;
    }

    // The agent's own view, read once: dual-stack defaults and the xDS port.
    let agent_self = std::cell::OnceCell::new();
    let agent = || -> Result<AgentInfo, Error> {
        agent_self
            .get_or_init(|| agent::agent_info(&client))
            .clone()
            .map_err(|e| consul_failure("Error looking up xDS port", e))
    };
    let grpc_addr = pick(&cmd.grpc_addr, env, "CONSUL_GRPC_ADDR");
    let dual_stack = if cmd.admin_bind.is_none() || grpc_addr.is_none() {
        agent().map(|me| me.dual_stack()).unwrap_or(false)
    } else {
        false
    };
    let loopback = if dual_stack { "::1" } else { "127.0.0.1" };
    let (admin_address, admin_port) = match &cmd.admin_bind {
        Some(bind) => {
            let (host, port) = split_host_port(bind)
                .ok_or_else(|| format!("Failed to parse admin bind address {bind}"))?;
            (resolve(host)?, port)
        }
        None => (loopback.to_string(), 19000),
    };
    let grpc_ca_file = pick(&cmd.grpc_ca_file, env, "CONSUL_GRPC_CACERT");
    let grpc_ca_path = pick(&cmd.grpc_ca_path, env, "CONSUL_GRPC_CAPATH");
    let has_grpc_ca = grpc_ca_file.is_some() || grpc_ca_path.is_some();
    let (agent_address, tls) =
        xds_address(grpc_addr, has_grpc_ca, &agent, loopback, &mut warnings)?;
    let agent_tls_ca = if !tls {
        None
    } else if has_grpc_ca {
        read_ca(grpc_ca_file.as_deref(), grpc_ca_path.as_deref())?
    } else {
        let ca_file = pick(&cmd.ca_file, env, "CONSUL_CACERT");
        let ca_path = pick(&cmd.ca_path, env, "CONSUL_CAPATH");
        Some(read_ca(ca_file.as_deref(), ca_path.as_deref())?.unwrap_or_default())
    };

    if let Err(ConsulError::AclNotFound(_)) = client.get("/v1/acl/token/self")
        && token.is_empty()
    {
        warnings.push("No ACL token was provided to Envoy. Because the ACL system is enabled, pass a suitable ACL token for this service to Envoy to avoid potential communication failure.".into());
    }

    let namespace = pick(&cmd.namespace, env, "CONSUL_NAMESPACE").unwrap_or_default();
    let partition = pick(&cmd.partition, env, "CONSUL_PARTITION").unwrap_or_default();
    let proxy = lookup::proxy(
        &client,
        &proxy_id,
        cmd.node_name.as_deref(),
        &namespace,
        &partition,
    )?;
    let access_logs = lookup::proxy_defaults(&client, &partition)?
        .and_then(|entry| AccessLogs::from_entry(&entry));

    let config = if cmd.no_central_config {
        ProxyConfig::default()
    } else {
        ProxyConfig::from_object(&proxy.config)?
    };
    let ready_bind = match (&cmd.envoy_ready_bind_address, cmd.envoy_ready_bind_port) {
        (Some(address), Some(port)) if port != 0 => Some((address.clone(), port)),
        _ if kind == Some("ingress-gateway") => {
            let (host, port) = lan_address(cmd.address.as_deref())?;
            let host = if host.is_empty() {
                "127.0.0.1".to_string()
            } else {
                resolve(&host)?
            };
            Some((host, port))
        }
        _ => None,
    };
    let cluster = if proxy.destination_service_name.is_empty() {
        proxy.service.clone()
    } else {
        proxy.destination_service_name.clone()
    };
    let non_empty = |answer: &str, given: &str| {
        if answer.is_empty() {
            given.to_string()
        } else {
            answer.to_string()
        }
    };
    let inputs = Inputs {
        proxy_id: proxy_id.clone(),
        cluster,
        namespace: non_empty(&proxy.namespace, &namespace),
        partition: non_empty(&proxy.partition, &partition),
        datacenter: proxy.datacenter.clone(),
        options: Options {
            admin_address,
            admin_port,
            admin_access_log_path: cmd
                .admin_access_log_path
                .clone()
                .unwrap_or_else(|| "/dev/null".into()),
            agent: agent_address,
            agent_tls_ca,
            token,
            node_name: cmd.node_name.clone(),
            omit_deprecated_tags: cmd.omit_deprecated_tags,
            ready_bind,
            prometheus: p,
        },
        config,
        access_logs,
    };
    Ok(Output {
        json: render(&inputs)?,
        warnings,
    })
}
