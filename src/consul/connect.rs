//! What a Connect proxy reads from the local agent (reference/consul-api.md §5): its own
//! registration, the service's leaf certificate, the CA roots, upstream instances, and
//! whether a caller may connect. Typed here; `proxy` does the watching.

use super::agent::{int, object, parse_object, string};
use super::client::{Client, ConsulError};
use miniserde::json::{self, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A sidecar's registration as `/v1/agent/service/<proxy-id>` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The service it is the sidecar of: its leaf's name and the authorize target.
    pub service: String,
    /// The public listener: `Proxy.Config.bind_address:bind_port` (Nomad sets them to the
    /// port inside the namespace), else `0.0.0.0:Port`.
    pub public: SocketAddr,
    /// The app: `LocalServiceAddress:LocalServicePort`.
    pub local: SocketAddr,
    pub local_connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub upstreams: Vec<Upstream>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// Empty: the local datacenter.
    pub datacenter: String,
    pub bind: SocketAddr,
    pub connect_timeout: Duration,
}

fn millis(o: Option<&miniserde::json::Object>, key: &str, default: u64) -> Duration {
    let n = int(o, key).and_then(|n| u64::try_from(n).ok());
    Duration::from_millis(n.unwrap_or(default))
}

fn ip_or(text: &str, default: IpAddr) -> IpAddr {
    text.parse().unwrap_or(default)
}

fn port(o: Option<&miniserde::json::Object>, key: &str) -> Option<u16> {
    int(o, key).and_then(|n| u16::try_from(n).ok())
}

const ANY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Reads a sidecar registration; what a proxy cannot serve is an error naming it.
pub fn registration(text: &str) -> Result<Registration, String> {
    let svc = parse_object(text, "agent/service").map_err(|e| e.to_string())?;
    let proxy = object(&svc, "Proxy").ok_or("the service is not a proxy")?;
    let config = object(proxy, "Config");
    let service = string(Some(proxy), "DestinationServiceName");
    if service.is_empty() {
        return Err("the proxy has no DestinationServiceName".into());
    }
    let public_port = port(config, "bind_port")
        .or_else(|| port(Some(&svc), "Port"))
        .ok_or("the proxy has no port")?;
    let public = SocketAddr::new(ip_or(&string(config, "bind_address"), ANY), public_port);
    let local_port = port(Some(proxy), "LocalServicePort").ok_or("no LocalServicePort")?;
    let local = SocketAddr::new(
        ip_or(&string(Some(proxy), "LocalServiceAddress"), LOOPBACK),
        local_port,
    );
    let mut upstreams = Vec::new();
    if let Some(Value::Array(items)) = proxy.get("Upstreams") {
        for item in items {
            let Value::Object(up) = item else { continue };
            let name = string(Some(up), "DestinationName");
            let kind = string(Some(up), "DestinationType");
            if !(kind.is_empty() || kind == "service") {
                return Err(format!(
                    "upstream {name}: destination type {kind} is not served by the built-in proxy"
                ));
            }
            let bind_port = port(Some(up), "LocalBindPort")
                .ok_or_else(|| format!("upstream {name} has no LocalBindPort"))?;
            upstreams.push(Upstream {
                datacenter: string(Some(up), "Datacenter"),
                bind: SocketAddr::new(
                    ip_or(&string(Some(up), "LocalBindAddress"), LOOPBACK),
                    bind_port,
                ),
                connect_timeout: millis(object(up, "Config"), "connect_timeout_ms", 10_000),
                name,
            });
        }
    }
    Ok(Registration {
        service,
        public,
        local,
        local_connect_timeout: millis(config, "local_connect_timeout_ms", 1000),
        handshake_timeout: millis(config, "handshake_timeout_ms", 10_000),
        upstreams,
    })
}

/// `/v1/agent/connect/ca/leaf/<service>`: the certificate chain and key, as PEM.
pub fn leaf(text: &str) -> Result<(String, String), String> {
    let leaf = parse_object(text, "connect/ca/leaf").map_err(|e| e.to_string())?;
    let (cert, key) = (
        string(Some(&leaf), "CertPEM"),
        string(Some(&leaf), "PrivateKeyPEM"),
    );
    if cert.is_empty() || key.is_empty() {
        return Err("the leaf answer has no CertPEM or PrivateKeyPEM".into());
    }
    Ok((cert, key))
}

/// `/v1/agent/connect/ca/roots`: the trust domain and every root's PEM (with its
/// intermediates), the active one first.
pub fn roots(text: &str) -> Result<(String, Vec<String>), String> {
    let list = parse_object(text, "connect/ca/roots").map_err(|e| e.to_string())?;
    let active = string(Some(&list), "ActiveRootID");
    let mut pems = Vec::new();
    if let Some(Value::Array(roots)) = list.get("Roots") {
        for root in roots {
            let Value::Object(root) = root else { continue };
            let mut pem = string(Some(root), "RootCert");
            if let Some(Value::Array(inter)) = root.get("IntermediateCerts") {
                for i in inter {
                    if let Value::String(i) = i {
                        pem.push('\n');
                        pem.push_str(i);
                    }
                }
            }
            if string(Some(root), "ID") == active {
                pems.insert(0, pem);
            } else {
                pems.push(pem);
            }
        }
    }
    Ok((string(Some(&list), "TrustDomain"), pems))
}

/// `/v1/health/connect/<service>?passing`: where each healthy instance's proxy listens
/// (`Service.Address`, else `Node.Address`, and `Service.Port`).
pub fn instances(text: &str) -> Result<Vec<SocketAddr>, String> {
    let Ok(Value::Array(entries)) = json::from_str::<Value>(text) else {
        return Err("the health answer is not a JSON array".into());
    };
    let mut found = Vec::new();
    for entry in &entries {
        let Value::Object(entry) = entry else {
            continue;
        };
        let service = object(entry, "Service");
        let address = match string(service, "Address") {
            a if a.is_empty() => string(object(entry, "Node"), "Address"),
            a => a,
        };
        if let (Ok(ip), Some(port)) = (address.parse::<IpAddr>(), port(service, "Port")) {
            found.push(SocketAddr::new(ip, port));
        }
    }
    Ok(found)
}

/// `POST /v1/agent/connect/authorize`: whether `uri` may connect to `target`, and why.
pub fn authorize(
    client: &Client,
    target: &str,
    uri: &str,
    serial: &str,
) -> Result<(bool, String), ConsulError> {
    let mut body = miniserde::json::Object::new();
    for (k, v) in [
        ("Target", target),
        ("ClientCertURI", uri),
        ("ClientCertSerial", serial),
    ] {
        body.insert(k.into(), Value::String(v.into()));
    }
    let answer = client.post(
        "/v1/agent/connect/authorize",
        &json::to_string(&Value::Object(body)),
    )?;
    let answer = parse_object(&answer, "connect/authorize")?;
    let allowed = matches!(answer.get("Authorized"), Some(Value::Bool(true)));
    Ok((allowed, string(Some(&answer), "Reason")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nomad_sidecar_registration_gives_the_listeners() {
        let text = r#"{"ID":"web-sidecar-proxy","Service":"web-sidecar-proxy","Port":20000,
            "Address":"192.0.2.10","Kind":"connect-proxy",
            "Proxy":{"DestinationServiceName":"web","DestinationServiceID":"web",
              "LocalServiceAddress":"127.0.0.1","LocalServicePort":9001,
              "Config":{"bind_address":"0.0.0.0","bind_port":20000,"handshake_timeout_ms":500},
              "Upstreams":[{"DestinationType":"service","DestinationName":"db",
                "LocalBindPort":8080,"Config":{"connect_timeout_ms":250}},
                {"DestinationName":"cache","Datacenter":"dc2","LocalBindAddress":"127.0.0.3",
                "LocalBindPort":8081}]}}"#;
        let r = registration(text).unwrap();
        assert_eq!(r.service, "web");
        assert_eq!(r.public, "0.0.0.0:20000".parse().unwrap());
        assert_eq!(r.local, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(r.handshake_timeout, Duration::from_millis(500));
        assert_eq!(r.local_connect_timeout, Duration::from_millis(1000));
        assert_eq!(r.upstreams[0].bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(r.upstreams[0].connect_timeout, Duration::from_millis(250));
        assert_eq!(r.upstreams[1].datacenter, "dc2");
        assert_eq!(r.upstreams[1].bind, "127.0.0.3:8081".parse().unwrap());
    }

    #[test]
    fn what_the_proxy_cannot_serve_is_refused_by_name() {
        let query = r#"{"Port":1,"Proxy":{"DestinationServiceName":"web","LocalServicePort":1,
            "Upstreams":[{"DestinationType":"prepared_query","DestinationName":"q","LocalBindPort":2}]}}"#;
        assert!(registration(query).unwrap_err().contains("prepared_query"));
        assert!(registration(r#"{"Port":1}"#).is_err());
        assert!(registration("[]").is_err());
    }

    #[test]
    fn instances_prefer_the_service_address() {
        let text = r#"[{"Node":{"Address":"10.0.0.1"},"Service":{"Address":"","Port":21000}},
            {"Node":{"Address":"10.0.0.1"},"Service":{"Address":"10.0.0.2","Port":21001}},
            {"Node":{"Address":"host.example"},"Service":{"Port":1}}]"#;
        assert_eq!(
            instances(text).unwrap(),
            vec![
                "10.0.0.1:21000".parse().unwrap(),
                "10.0.0.2:21001".parse().unwrap()
            ]
        );
    }
}
