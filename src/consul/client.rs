//! A blocking HTTP client for the local Consul agent (ureq; rustls with ring and the CA
//! from a file, no bundled roots). Errors are classified for the retry logic: connection
//! failures, timeouts and 5xx are retryable; 403 `ACL not found` is its own case (token
//! replication lag can explain it); other 4xx are final and carry Consul's own text.
//! The token is sent as `X-Consul-Token` and never appears in an error or a log line.

use crate::config::Consul;
use crate::error::{Context, Error};
use std::fmt;
use std::time::Duration;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, LazyBuffers, NextTimeout, Transport,
};

/// `consul.address = "unix:///path"`: every request goes to that socket, whatever the URL's
/// host. The agent is local, so fixed socket timeouts stand in for ureq's per-phase ones.
#[derive(Debug)]
struct UnixConnector {
    path: std::path::PathBuf,
}

#[derive(Debug)]
struct UnixTransport {
    stream: std::os::unix::net::UnixStream,
    buffers: LazyBuffers,
}

impl Connector for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<UnixTransport>, ureq::Error> {
        let stream = std::os::unix::net::UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(UnixTransport { stream, buffers }))
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, _timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write;
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        use std::io::Read;
        // A blocking query waits longer than a plain call (`Client::watch`).
        if let Some(wait) = timeout.not_zero() {
            self.stream.set_read_timeout(Some(*wait))?;
        }
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Not pooled: a new connection per request costs microseconds on a local socket.
        false
    }
}

/// With a unix socket there is nothing to look up: the URL's host (`localhost`) is only a
/// placeholder the connector ignores. A resolver that asked the system would fail on an
/// image without `/etc/hosts` and no DNS, as minimal edge images are.
#[derive(Debug)]
struct NoLookup;

impl Resolver for NoLookup {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], 80)));
        Ok(addrs)
    }
}

/// `consul.tls_server_name`: requests name that server (so TLS verifies it and sends it as
/// SNI) while this resolver sends them to the configured host.
#[derive(Debug)]
struct ServerNameResolver {
    server_name: String,
    real_host: String,
    inner: DefaultResolver,
}

impl Resolver for ServerNameResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if uri.host() != Some(self.server_name.as_str()) {
            return self.inner.resolve(uri, config, timeout);
        }
        let port = uri.port_u16().unwrap_or(443);
        let real: Uri = format!("https://{}:{port}/", self.real_host)
            .parse()
            .map_err(|_| ureq::Error::HostNotFound)?;
        self.inner.resolve(&real, config, timeout)
    }
}

/// Default per-call timeout; the agent is local, so anything slower is a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsulError {
    /// Could not connect, or no answer in time: retry.
    Unreachable(String),
    /// 5xx: retry.
    Server { status: u16, body: String },
    /// 403 `ACL not found`: the token is unknown to this agent (maybe not replicated yet).
    AclNotFound(String),
    /// Any other non-200 answer: do not retry; Consul's text says why.
    Rejected { status: u16, body: String },
}

impl ConsulError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConsulError::Unreachable(_) | ConsulError::Server { .. }
        )
    }
}

impl fmt::Display for ConsulError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsulError::Unreachable(why) => write!(f, "Consul is unreachable: {why}"),
            // The Go client's wording, which users know from Nomad and Consul logs.
            ConsulError::Server { status, body } | ConsulError::Rejected { status, body } => {
                write!(f, "Unexpected response code: {status} ({})", body.trim())
            }
            ConsulError::AclNotFound(body) => {
                write!(f, "Unexpected response code: 403 ({})", body.trim())
            }
        }
    }
}

impl std::error::Error for ConsulError {}

/// Whether a Consul failure is worth a retry is decided here, once: unreachable and 5xx
/// are. Callers that know more (a 404 for a registration on its way) say so themselves.
impl From<ConsulError> for crate::error::Error {
    fn from(e: ConsulError) -> crate::error::Error {
        match e.is_retryable() {
            true => crate::error::Error::temporary(e.to_string()),
            false => crate::error::Error::permanent(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    /// `Authorization: Basic …` from `consul.auth` (a secret, like the token).
    basic_auth: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        write!(
            f,
            "Client({}, token: {})",
            self.base,
            if self.token.is_some() { "set" } else { "none" }
        )
    }
}

/// TLS to Consul (the `tls` feature): the CA, and the client certificate when Consul
/// verifies incoming connections.
#[cfg(feature = "tls")]
mod tls {
    use crate::config::Consul;
    use crate::error::{Context, Error};
    use std::sync::Arc;
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

    /// The PEM items of a file, or of every file in a directory (a CA path).
    fn read_pem(path: &str, what: &str) -> Result<Vec<PemItem<'static>>, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
        };
        let bytes = if std::path::Path::new(path).is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {what} {path}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            let mut all = Vec::new();
            for file in files {
                all.extend(read(&file)?);
                all.push(b'\n');
            }
            all
        } else {
            read(std::path::Path::new(path))?
        };
        ureq::tls::parse_pem(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::permanent(format!("{what} {path} is not valid PEM: {e}")))
    }

    pub fn config(cfg: &Consul) -> Result<TlsConfig, Error> {
        let mut roots: Vec<Certificate<'static>> = Vec::new();
        if let Some(ca) = &cfg.ca_file {
            for item in read_pem(ca, "consul.ca_file")? {
                if let PemItem::Certificate(c) = item {
                    roots.push(c);
                }
            }
            if roots.is_empty() {
                return Err(Error::permanent(format!(
                    "consul.ca_file {ca} holds no certificate"
                )));
            }
        }
        let client_cert = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                let chain: Vec<Certificate<'static>> = read_pem(cert, "consul.cert_file")?
                    .into_iter()
                    .filter_map(|i| match i {
                        PemItem::Certificate(c) => Some(c),
                        _ => None,
                    })
                    .collect();
                let key: PrivateKey<'static> = read_pem(key, "consul.key_file")?
                    .into_iter()
                    .find_map(|i| match i {
                        PemItem::PrivateKey(k) => Some(k),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        Error::permanent(format!("consul.key_file {key} holds no private key"))
                    })?;
                Some(ClientCert::new_with_certs(&chain, key))
            }
            _ => None,
        };
        // Without a CA file, trust nothing rather than panic on ureq's disabled WebPKI roots:
        // an https address then needs consul.ca_file (validation cannot know the scheme's
        // needs, so the error comes on first use, naming the setting).
        Ok(TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&roots))
            // Consul's CONSUL_HTTP_SSL_VERIFY=false / Nomad's verify_ssl = false.
            .disable_verification(!cfg.verify_ssl)
            .client_cert(client_cert)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build())
    }
}

/// The agent's own token: `consul.token`, else the contents of `consul.token_file`.
pub fn agent_token(cfg: &Consul) -> Result<Option<String>, Error> {
    match (&cfg.token, &cfg.token_file) {
        (Some(t), _) => Ok(Some(t.clone())),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|t| Some(t.trim().to_string()))
            .with_context(|| format!("cannot read consul.token_file {file}")),
        (None, None) => Ok(None),
    }
}

/// Per-connection buffer in each direction, and the largest response header accepted.
const IO_BUFFER: usize = 16 * 1024;

impl Client {
    pub fn new(cfg: &Consul) -> Result<Client, Error> {
        Self::with_buffers(cfg, IO_BUFFER)
    }

    /// With `buffer` bytes per connection each way: the built-in proxy holds one connection
    /// per watch for its whole life, and reads small answers (its headers are well under
    /// 4 KiB; bodies stream through).
    pub fn with_buffers(cfg: &Consul, buffer: usize) -> Result<Client, Error> {
        let (base, unix_socket) = match cfg.address.split_once("://") {
            Some(("http" | "https", _)) => (cfg.address.trim_end_matches('/').to_string(), None),
            Some(("unix", path)) => (
                "http://localhost".to_string(),
                Some(std::path::PathBuf::from(path)),
            ),
            _ => {
                return Err(Error::permanent(format!(
                    "consul.address {} is not http(s):// or unix://",
                    cfg.address
                )));
            }
        };
        let token = agent_token(cfg)?;
        let builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(CALL_TIMEOUT))
            // ureq's defaults (128 KiB each way per connection) are sized for the internet;
            // the local agent's headers are small and bodies stream through the buffers.
            // Four bootstraps at once cost 1 MiB of RSS with the defaults.
            .input_buffer_size(buffer)
            .output_buffer_size(buffer)
            .max_response_header_size(buffer);
        #[cfg(feature = "tls")]
        let builder = builder.tls_config(tls::config(cfg)?);
        #[cfg(not(feature = "tls"))]
        if cfg.address.starts_with("https://") {
            return Err(Error::permanent(format!(
                "consul.address {} needs TLS, and this outpost was built without it (the tls feature)",
                cfg.address
            )));
        }
        let config = builder.build();
        let (agent, base) = match (&cfg.tls_server_name, base.strip_prefix("https://")) {
            _ if unix_socket.is_some() => {
                let connector = UnixConnector {
                    path: unix_socket.unwrap_or_default(),
                };
                (ureq::Agent::with_parts(config, connector, NoLookup), base)
            }
            (Some(name), Some(authority)) => {
                let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "443"));
                let resolver = ServerNameResolver {
                    server_name: name.clone(),
                    real_host: host.to_string(),
                    inner: DefaultResolver::default(),
                };
                let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
                (agent, format!("https://{name}:{port}"))
            }
            _ => (ureq::Agent::new_with_config(config), base),
        };
        Ok(Client {
            agent,
            base,
            token: token.filter(|t| !t.is_empty()),
            basic_auth: cfg
                .auth
                .as_deref()
                .filter(|a| !a.is_empty())
                .map(|a| format!("Basic {}", base64(a.as_bytes()))),
        })
    }

    /// The same agent with another token (a workload token).
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            agent: self.agent.clone(),
            base: self.base.clone(),
            token: Some(token.to_string()),
            basic_auth: self.basic_auth.clone(),
        }
    }

    pub fn get(&self, path_and_query: &str) -> Result<String, ConsulError> {
        let mut req = self.agent.get(format!("{}{path_and_query}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(auth) = &self.basic_auth {
            req = req.header("Authorization", auth);
        }
        answer(req.call())
    }

    /// A blocking query (reference/consul-api.md §4.2): `GET path?…&<key>=<seen>&wait=…`,
    /// answered when the result changes or after `wait`. `key` is `index` (answers carry
    /// `X-Consul-Index`) or `hash` (`X-Consul-ContentHash`, agent-local endpoints); `seen` is
    /// what the last answer carried (none for the first call). The body and the new value.
    pub fn watch(
        &self,
        path_and_query: &str,
        key: &str,
        seen: Option<&str>,
        wait: Duration,
    ) -> Result<(String, Option<String>), ConsulError> {
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = match seen {
            Some(seen) => format!(
                "{}{path_and_query}{sep}{key}={seen}&wait={}s",
                self.base,
                wait.as_secs()
            ),
            None => format!("{}{path_and_query}", self.base),
        };
        let mut req = self
            .agent
            .get(url)
            .config()
            // Consul adds up to wait/16 of jitter to a blocking query's wait.
            .timeout_global(Some(wait + wait / 16 + CALL_TIMEOUT))
            .build();
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(auth) = &self.basic_auth {
            req = req.header("Authorization", auth);
        }
        let header = if key == "hash" {
            "X-Consul-ContentHash"
        } else {
            "X-Consul-Index"
        };
        let response = req.call();
        let value = response.as_ref().ok().and_then(|r| {
            r.headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        answer(response).map(|body| (body, value))
    }

    pub fn put(&self, path_and_query: &str, body: &str) -> Result<String, ConsulError> {
        self.send("PUT", path_and_query, body)
    }

    pub fn post(&self, path_and_query: &str, body: &str) -> Result<String, ConsulError> {
        self.send("POST", path_and_query, body)
    }

    pub fn delete(&self, path_and_query: &str) -> Result<String, ConsulError> {
        let mut req = self.agent.delete(format!("{}{path_and_query}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        answer(req.call())
    }

    fn send(&self, method: &str, path_and_query: &str, body: &str) -> Result<String, ConsulError> {
        let url = format!("{}{path_and_query}", self.base);
        let mut req = match method {
            "POST" => self.agent.post(url),
            _ => self.agent.put(url),
        }
        .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(auth) = &self.basic_auth {
            req = req.header("Authorization", auth);
        }
        answer(req.send(body))
    }
}

/// Standard base64 with padding (RFC 4648), for the basic-auth header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How much of an error answer's body is kept.
const ERROR_BODY_MAX: usize = 512;

fn answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String, ConsulError> {
    let mut response = result.map_err(|e| ConsulError::Unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| ConsulError::Unreachable(format!("reading the answer: {e}")))?;
    if status == 200 {
        return Ok(body);
    }
    let acl_not_found = status == 403 && body.contains("ACL not found");
    // An error page goes into logs and `status`: only its start.
    let body = crate::text::cut(&body, ERROR_BODY_MAX);
    match status {
        403 if acl_not_found => Err(ConsulError::AclNotFound(body)),
        500..=599 => Err(ConsulError::Server { status, body }),
        _ => Err(ConsulError::Rejected { status, body }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_follows_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
