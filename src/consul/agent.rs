//! Typed reads of the local agent that Envoy's bootstrap needs: `/v1/agent/self` and
//! `/v1/agent/service/<proxy-id>` (reference/consul-api.md §1.3, §7.2).

use super::client::{Client, ConsulError};
use miniserde::json::{self, Number, Object, Value};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub datacenter: String,
    pub node_name: String,
    /// `Config.BindAddr`: an IPv6 address means a dual-stack agent (loopback defaults `::1`).
    pub bind_addr: String,
    /// `xDS.Ports` (Consul ≥ 1.14), absent when the agent serves no xDS.
    pub xds_ports: Option<XdsPorts>,
    /// `DebugConfig.GRPCPort`, what older agents offer instead.
    pub debug_grpc_port: Option<i64>,
    /// `xDS.SupportedProxies.envoy`: the Envoy versions this Consul supports (the newest
    /// patch of each supported minor), empty when the agent does not say.
    pub supported_envoy: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdsPorts {
    pub plaintext: i64,
    pub tls: i64,
}

impl AgentInfo {
    pub fn dual_stack(&self) -> bool {
        self.bind_addr.parse::<std::net::Ipv6Addr>().is_ok()
    }
}

#[derive(Clone, Debug)]
pub struct ProxyInfo {
    pub id: String,
    pub kind: String,
    pub service: String,
    /// Whether the answer has a `Proxy` block (sidecars and gateways do).
    pub is_proxy: bool,
    pub destination_service_name: String,
    pub datacenter: String,
    pub namespace: String,
    pub partition: String,
    pub config: Object,
}

pub(crate) fn parse_object(text: &str, what: &str) -> Result<Object, ConsulError> {
    match json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(ConsulError::Rejected {
            status: 200,
            body: format!("the agent's {what} answer is not a JSON object"),
        }),
    }
}

pub(crate) fn object<'a>(o: &'a Object, key: &str) -> Option<&'a Object> {
    match o.get(key) {
        Some(Value::Object(inner)) => Some(inner),
        _ => None,
    }
}

pub(crate) fn string(o: Option<&Object>, key: &str) -> String {
    match o.and_then(|o| o.get(key)) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

pub(crate) fn int(o: Option<&Object>, key: &str) -> Option<i64> {
    match o.and_then(|o| o.get(key))? {
        Value::Number(Number::U64(n)) => i64::try_from(*n).ok(),
        Value::Number(Number::I64(n)) => Some(*n),
        _ => None,
    }
}

/// The strings of a JSON array (other items skipped); empty for anything but an array.
pub(crate) fn string_items<C: FromIterator<String>>(v: Option<&Value>) -> C {
    let items = match v {
        Some(Value::Array(items)) => items.as_slice(),
        _ => &[],
    };
    items
        .iter()
        .filter_map(|i| match i {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

pub fn agent_info(client: &Client) -> Result<AgentInfo, ConsulError> {
    let me = parse_object(&client.get("/v1/agent/self")?, "agent/self")?;
    let config = object(&me, "Config");
    let ports = object(&me, "xDS").and_then(|x| object(x, "Ports"));
    Ok(AgentInfo {
        datacenter: string(config, "Datacenter"),
        node_name: string(config, "NodeName"),
        bind_addr: string(config, "BindAddr"),
        xds_ports: ports.map(|p| XdsPorts {
            plaintext: int(Some(p), "Plaintext").unwrap_or(0),
            tls: int(Some(p), "TLS").unwrap_or(0),
        }),
        debug_grpc_port: int(object(&me, "DebugConfig"), "GRPCPort"),
        supported_envoy: string_items(
            object(&me, "xDS")
                .and_then(|x| object(x, "SupportedProxies"))
                .and_then(|p| p.get("envoy")),
        ),
    })
}

/// The proxy's registration as the local agent has it (404 until it is registered).
/// `scope` is the `?ns=…&partition=…` query, or empty.
pub fn proxy_info(client: &Client, proxy_id: &str, scope: &str) -> Result<ProxyInfo, ConsulError> {
    let svc = parse_object(
        &client.get(&format!("/v1/agent/service/{proxy_id}{scope}"))?,
        "agent/service",
    )?;
    Ok(ProxyInfo::from_service(&svc))
}

impl ProxyInfo {
    /// From an AgentService (or catalog NodeService) object.
    pub fn from_service(svc: &Object) -> ProxyInfo {
        let proxy = object(svc, "Proxy");
        ProxyInfo {
            id: string(Some(svc), "ID"),
            kind: string(Some(svc), "Kind"),
            service: string(Some(svc), "Service"),
            is_proxy: proxy.is_some(),
            destination_service_name: string(proxy, "DestinationServiceName"),
            datacenter: string(Some(svc), "Datacenter"),
            namespace: string(Some(svc), "Namespace"),
            partition: string(Some(svc), "Partition"),
            config: proxy
                .and_then(|p| object(p, "Config"))
                .cloned()
                .unwrap_or_default(),
        }
    }
}
