//! The built-in Connect proxy (`outpost proxy`, the `builtin` sidecar driver): what
//! `consul connect proxy -sidecar-for` does at L4, in this binary, for devices too small for
//! Envoy and for 32-bit ARM, which Envoy does not build for (docs/architecture.md).
//!
//! It runs as the sidecar task, in the group's namespace, as `nobody`, supervised like
//! Envoy. It reads everything from the local agent through the group's relayed HTTP socket,
//! with the service's workload token (the environment a Connect native task gets):
//! - its own registration (`/v1/agent/service/<proxy-id>`, watched), which gives the public
//!   listener, the app's address and the upstreams, so the mesh sees the same sidecar;
//! - the service's leaf and the CA roots (watched: a new leaf or root serves new
//!   connections; live ones go on with theirs);
//! - each upstream's healthy instances (watched), tried round robin, the next on a connect
//!   error;
//! - intentions, through `/v1/agent/connect/authorize` for each new caller, cached until
//!   the intentions for the service change (a watch on their match index).
//!
//! When Consul cannot be reached it goes on with what it has, and says so on its admin
//! address (`GET /status`), where `GET /ready` answers `LIVE` once its listeners are bound
//! and its certificates loaded, as Envoy's does.
//!
//! One process per sidecar, like Envoy: each holds only its own service's key and token,
//! and a crash or a bad peer costs one service. A new connection gets a thread for its
//! handshake, authorization and connect (straight-line blocking code with timeouts); once
//! established, it is handed to the proxy's one relay thread, which moves the bytes of all
//! its connections from one epoll set, as Envoy's worker does (`relay.rs`).

mod handshake;
mod listen;
pub mod pump;
pub mod record;
mod relay;
pub mod tls;
mod watch;
pub mod x509;

use crate::consul::client::Client;
use crate::consul::connect::Registration;
use crate::error::{Context, Error};
use argh::FromArgs;
use log::{info, warn};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Run a built-in Connect proxy for a registered sidecar (started by the agent as the
/// sidecar task). Consul is reached as CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN_FILE and the
/// CONSUL_CACERT/CLIENT_CERT/CLIENT_KEY files say.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "proxy")]
pub struct ProxyCmd {
    /// the sidecar's service ID in the local agent
    #[argh(option)]
    pub proxy_id: String,
    /// where to answer `GET /ready` and `GET /status` (the plan's admin address)
    #[argh(option)]
    pub admin: SocketAddr,
}

/// Bytes per Consul connection each way (one connection per watch, held open).
const CONSUL_BUFFER: usize = 2048;

/// Callers whose answer is kept at most (the cache is emptied when full).
const CALLERS_KEPT: usize = 256;

/// What the proxy knows, shared by its watches and its connections.
#[derive(Default)]
struct State {
    registration: Option<Registration>,
    leaf: Option<Arc<tls::Leaf>>,
    /// The trust domain and the roots.
    roots: Option<(String, RootCertStore)>,
    /// Made from the leaf and roots; new connections take the current one.
    server: Option<Arc<ServerConfig>>,
    /// Per upstream name: its client TLS.
    clients: BTreeMap<String, Arc<ClientConfig>>,
    /// Per upstream name: its healthy instances, and the next one to try.
    instances: BTreeMap<String, (Vec<SocketAddr>, usize)>,
    /// Authorize answers per caller URI, valid while the intentions index stays.
    allowed: BTreeMap<String, bool>,
    /// Whether the intentions watch works (else every caller is asked about).
    cache_usable: bool,
    /// Counts intentions changes, so an answer asked before one is not kept after it.
    generation: u64,
    /// The addresses a listener thread serves, and those of them bound so far.
    listening: std::collections::BTreeSet<SocketAddr>,
    bound: BTreeMap<SocketAddr, Arc<std::net::TcpListener>>,
    /// Why Consul could not be reached, while it cannot.
    unreachable: Option<String>,
}

pub struct Proxy {
    client: Client,
    proxy_id: String,
    state: Mutex<State>,
    /// Connections being served (`listen::MAX_CONNECTIONS` at most).
    connections: Arc<listen::Slots>,
    /// Moves the bytes of the established connections.
    relay: Arc<relay::Relay>,
}

impl Proxy {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether it can serve: listeners bound and certificates loaded.
    fn ready(&self) -> bool {
        ready_in(&self.state())
    }

    /// One line per fact, for `GET /status`.
    fn status(&self) -> String {
        let s = self.state();
        let mut out = String::new();
        out.push_str(if ready_in(&s) {
            "ready\n"
        } else {
            "not ready\n"
        });
        match &s.unreachable {
            Some(why) => out.push_str(&format!(
                "consul: unreachable ({why}); serving with what it has\n"
            )),
            None => out.push_str("consul: reachable\n"),
        }
        if let Some(leaf) = &s.leaf {
            out.push_str(&format!("leaf: serial {}\n", leaf.serial));
        }
        for (name, (list, _)) in &s.instances {
            out.push_str(&format!("upstream {name}: {} instances\n", list.len()));
        }
        out
    }

    /// Remakes the TLS configs from the current leaf and roots (after either changed).
    fn remake_tls(&self) {
        let mut s = self.state();
        let (Some(leaf), Some((trust_domain, roots)), Some(reg)) =
            (s.leaf.clone(), s.roots.clone(), s.registration.clone())
        else {
            return;
        };
        match tls::server(&leaf, &roots) {
            Ok(server) => s.server = Some(server),
            Err(e) => warn!("cannot use the leaf for the public listener: {e}"),
        }
        let mut clients = BTreeMap::new();
        for up in &reg.upstreams {
            let expected = x509::ServiceId {
                trust_domain: trust_domain.clone(),
                namespace: "default".into(),
                datacenter: datacenter_of(up, &leaf),
                service: up.name.clone(),
            };
            match tls::client(&leaf, &roots, expected) {
                Ok(client) => {
                    clients.insert(upstream_key(up), client);
                }
                Err(e) => warn!("upstream {}: cannot use the leaf: {e}", up.name),
            }
        }
        s.clients = clients;
    }
}

fn ready_in(s: &State) -> bool {
    let Some(reg) = &s.registration else {
        return false;
    };
    s.server.is_some()
        && s.bound.contains_key(&reg.public)
        && reg
            .upstreams
            .iter()
            .all(|u| s.bound.contains_key(&u.bind) && s.clients.contains_key(&upstream_key(u)))
}

/// Upstreams are told apart by name and datacenter.
fn upstream_key(up: &crate::consul::connect::Upstream) -> String {
    if up.datacenter.is_empty() {
        up.name.clone()
    } else {
        format!("{}.{}", up.name, up.datacenter)
    }
}

/// An upstream's datacenter: its own, else the proxy's (from its leaf's SPIFFE ID).
fn datacenter_of(up: &crate::consul::connect::Upstream, leaf: &tls::Leaf) -> String {
    if up.datacenter.is_empty() {
        leaf.id.datacenter.clone()
    } else {
        up.datacenter.clone()
    }
}

/// Consul's client settings from the environment Connect native tasks get.
fn consul_from_env() -> Result<crate::config::Consul, Error> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let address = var("CONSUL_HTTP_ADDR").unwrap_or_else(|| "http://127.0.0.1:8500".into());
    let address = if address.contains("://") {
        address
    } else if var("CONSUL_HTTP_SSL").as_deref() == Some("true") {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    // Named as the proxy got it (Client::new would name the agent's consul.address).
    if !["http://", "https://", "unix://"]
        .iter()
        .any(|scheme| address.starts_with(scheme))
    {
        return Err(Error::permanent(format!(
            "CONSUL_HTTP_ADDR {address} is not http(s)://, unix:// or host:port"
        )));
    }
    Ok(crate::config::Consul {
        address,
        token: var("CONSUL_HTTP_TOKEN"),
        token_file: var("CONSUL_HTTP_TOKEN_FILE"),
        ca_file: var("CONSUL_CACERT"),
        cert_file: var("CONSUL_CLIENT_CERT"),
        key_file: var("CONSUL_CLIENT_KEY"),
        tls_server_name: var("CONSUL_TLS_SERVER_NAME"),
        verify_ssl: var("CONSUL_HTTP_SSL_VERIFY").as_deref() != Some("false"),
        ..Default::default()
    })
}

/// Runs the proxy until it is killed.
pub fn run(cmd: &ProxyCmd) -> Result<(), Error> {
    let consul = consul_from_env()?;
    let client = Client::with_buffers(&consul, CONSUL_BUFFER).context("the Consul client")?;
    let admin = std::net::TcpListener::bind(cmd.admin)
        .with_context(|| format!("cannot listen on the admin address {}", cmd.admin))?;
    let proxy = Arc::new(Proxy {
        client,
        proxy_id: cmd.proxy_id.clone(),
        state: Mutex::new(State::default()),
        connections: listen::Slots::new(listen::MAX_CONNECTIONS),
        relay: relay::Relay::new().context("cannot make the relay's epoll set")?,
    });
    info!(
        "proxy {}: starting; Consul at {}",
        cmd.proxy_id, consul.address
    );
    watch::start(&proxy);
    listen::admin(&proxy, &admin);
    Ok(())
}
