//! Typed reads of the local agent that Envoy's bootstrap needs: `/v1/agent/self` and
//! `/v1/agent/service/<proxy-id>` (reference/consul-api.md §1.3, §7.2).

use super::client::{Client, ConsulError};
use miniserde::json::{self, Number, Object, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub datacenter: String,
    pub node_name: String,
    /// The xDS plaintext and TLS gRPC ports (0 or negative: not served).
    pub grpc_port: i64,
    pub grpc_tls_port: i64,
}

#[derive(Clone, Debug)]
pub struct ProxyInfo {
    pub id: String,
    pub kind: String,
    pub service: String,
    pub destination_service_name: String,
    pub namespace: String,
    pub partition: String,
    pub config: Object,
}

fn parse_object(text: &str, what: &str) -> Result<Object, ConsulError> {
    match json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(ConsulError::Rejected {
            status: 200,
            body: format!("the agent's {what} answer is not a JSON object"),
        }),
    }
}

fn object<'a>(o: &'a Object, key: &str) -> Option<&'a Object> {
    match o.get(key) {
        Some(Value::Object(inner)) => Some(inner),
        _ => None,
    }
}

fn string(o: Option<&Object>, key: &str) -> String {
    match o.and_then(|o| o.get(key)) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn int(o: Option<&Object>, key: &str) -> Option<i64> {
    match o.and_then(|o| o.get(key))? {
        Value::Number(Number::U64(n)) => i64::try_from(*n).ok(),
        Value::Number(Number::I64(n)) => Some(*n),
        _ => None,
    }
}

pub fn agent_info(client: &Client) -> Result<AgentInfo, ConsulError> {
    let me = parse_object(&client.get("/v1/agent/self")?, "agent/self")?;
    let config = object(&me, "Config");
    let xds_ports = object(&me, "xDS").and_then(|x| object(x, "Ports"));
    let debug = object(&me, "DebugConfig");
    Ok(AgentInfo {
        datacenter: string(config, "Datacenter"),
        node_name: string(config, "NodeName"),
        grpc_port: int(xds_ports, "Plaintext")
            .or_else(|| int(debug, "GRPCPort"))
            .unwrap_or(-1),
        grpc_tls_port: int(xds_ports, "TLS")
            .or_else(|| int(debug, "GRPCTLSPort"))
            .unwrap_or(-1),
    })
}

/// The proxy's registration as the local agent has it (404 until it is registered).
pub fn proxy_info(client: &Client, proxy_id: &str) -> Result<ProxyInfo, ConsulError> {
    let svc = parse_object(
        &client.get(&format!("/v1/agent/service/{proxy_id}"))?,
        "agent/service",
    )?;
    let proxy = object(&svc, "Proxy");
    let or_default = |s: String| {
        if s.is_empty() {
            "default".to_string()
        } else {
            s
        }
    };
    Ok(ProxyInfo {
        id: string(Some(&svc), "ID"),
        kind: string(Some(&svc), "Kind"),
        service: string(Some(&svc), "Service"),
        destination_service_name: string(proxy, "DestinationServiceName"),
        namespace: or_default(string(Some(&svc), "Namespace")),
        partition: or_default(string(Some(&svc), "Partition")),
        config: proxy
            .and_then(|p| object(p, "Config"))
            .cloned()
            .unwrap_or_default(),
    })
}
