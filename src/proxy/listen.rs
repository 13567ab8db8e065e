//! The proxy's listeners: the public one (mTLS in, intentions, then the app), one per
//! upstream (plain in, mTLS out to a healthy instance), and the admin address.

use super::{CALLERS_KEPT, Proxy, handshake, pump::Pump, tls, upstream_key};
use crate::consul::connect::{self, Registration, Upstream};
use log::{debug, info, warn};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A new connection's thread, until it is handed to the relay: the handshake needs far
/// less than the default 2 MiB (it is address space, not memory, either way).
const CONNECTION_STACK: usize = 256 * 1024;

/// Connections served at once by one proxy (each is two sockets, and a thread until it is
/// established); more are closed as they come, so a flood of callers cannot exhaust the
/// device.
pub(super) const MAX_CONNECTIONS: usize = 1024;

/// How many connections a proxy serves at once; a `Slot` is one of them.
pub(super) struct Slots {
    active: AtomicUsize,
    max: usize,
}

/// A connection's place among the `Slots`, given back when dropped.
pub(super) struct Slot(Arc<Slots>);

impl Slots {
    pub(super) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            active: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, unless all are taken.
    fn take(slots: &Arc<Slots>) -> Option<Slot> {
        let taken = slots
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < slots.max).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(slots.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a listener for every address the registration has and none is serving, and
/// closes the ones it no longer has.
pub(super) fn bind(proxy: &Arc<Proxy>) {
    let mut s = proxy.state();
    let Some(reg) = s.registration.clone() else {
        return;
    };
    let wanted: Vec<SocketAddr> = std::iter::once(reg.public)
        .chain(reg.upstreams.iter().map(|u| u.bind))
        .collect();
    let stale: Vec<SocketAddr> = s
        .bound
        .keys()
        .filter(|a| !wanted.contains(a))
        .copied()
        .collect();
    for addr in stale {
        if let Some(listener) = s.bound.remove(&addr) {
            // Wakes its accept with an error; its thread then sees it is not wanted.
            let _ =
                nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            info!("closed the listener on {addr}");
        }
        s.listening.remove(&addr);
    }
    for addr in wanted {
        if s.listening.insert(addr) {
            let proxy = proxy.clone();
            let started = std::thread::Builder::new()
                .name(format!("listen {addr}"))
                .stack_size(CONNECTION_STACK)
                .spawn(move || serve(&proxy, addr));
            if let Err(e) = started {
                warn!("cannot start the listener on {addr}: {e}");
                s.listening.remove(&addr);
            }
        }
    }
}

/// What a listener's address is for, in the current registration.
enum Role {
    Public(Registration),
    Upstream(Registration, Upstream),
}

fn role(proxy: &Proxy, addr: SocketAddr) -> Option<Role> {
    let reg = proxy.state().registration.clone()?;
    if reg.public == addr {
        return Some(Role::Public(reg));
    }
    let up = reg.upstreams.iter().find(|u| u.bind == addr)?.clone();
    Some(Role::Upstream(reg, up))
}

/// Binds `addr` (retrying while it is in use) and accepts on it while it is wanted.
fn serve(proxy: &Arc<Proxy>, addr: SocketAddr) {
    let listener = loop {
        if !proxy.state().listening.contains(&addr) {
            return;
        }
        match TcpListener::bind(addr) {
            Ok(l) => break Arc::new(l),
            Err(e) => {
                warn!("cannot listen on {addr}: {e}; retrying in 1s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    proxy.state().bound.insert(addr, listener.clone());
    info!("listening on {addr}");
    let mut said_full = false;
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            if proxy.state().bound.contains_key(&addr) {
                // Out of descriptors or memory, say: not a loop at full speed meanwhile.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            return;
        };
        let Some(role) = role(proxy, addr) else {
            continue;
        };
        let Some(slot) = Slots::take(&proxy.connections) else {
            if !said_full {
                warn!(
                    "{addr}: {MAX_CONNECTIONS} connections open; closing new ones until some end"
                );
                said_full = true;
            }
            continue;
        };
        said_full = false;
        let mine = proxy.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let established = match role {
                    Role::Public(reg) => inbound(&mine, &reg, stream),
                    Role::Upstream(reg, up) => outbound(&mine, &reg, &up, stream),
                };
                match established {
                    Ok(pump) => mine.relay.hand_over(
                        pump,
                        Box::new(move |end| {
                            drop(slot);
                            if let Err(e) = end {
                                debug!("connection from {peer} to {addr}: {e}");
                            }
                        }),
                    ),
                    // A connect-and-close (Consul's TCP check of the public port).
                    Err(Failure::Quiet(e)) => debug!("connection from {peer} to {addr}: {e}"),
                    Err(Failure::Said(e)) => info!("connection from {peer} to {addr}: {e}"),
                }
            });
        if let Err(e) = spawned {
            warn!("cannot take a connection on {addr}: {e}");
        }
    }
}

/// Why a connection ended early: worth a log line, or not (a peer that left before its
/// handshake, an app that reset).
enum Failure {
    Said(String),
    Quiet(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Said(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Failure {
        Failure::Said(e.to_string())
    }
}

impl Failure {
    fn of_handshake(what: &str, e: handshake::Error) -> Failure {
        match e {
            handshake::Error::Quiet(e) => Failure::Quiet(format!("{what}: {e}")),
            handshake::Error::Failed(e) => Failure::Said(format!("{what}: {e}")),
        }
    }
}

/// A caller through the mesh: its certificate must chain to the roots, and intentions
/// must let its service reach ours; then its bytes go to the app.
fn inbound(proxy: &Proxy, reg: &Registration, mut net: TcpStream) -> Result<Pump, Failure> {
    let config = proxy
        .state()
        .server
        .clone()
        .ok_or("no certificate loaded yet")?;
    net.set_read_timeout(Some(reg.handshake_timeout))
        .and_then(|()| net.set_write_timeout(Some(reg.handshake_timeout)))
        .map_err(|e| e.to_string())?;
    let (established, chain) =
        handshake::accept(config, &mut net).map_err(|e| Failure::of_handshake("caller", e))?;
    let (uri, serial) =
        tls::caller(Some(&chain)).ok_or("the caller's certificate has no SPIFFE ID")?;
    if !authorized(proxy, &reg.service, &uri, &serial) {
        // `authorized` said why.
        return Err(Failure::Quiet(format!(
            "{uri} may not connect to {}",
            reg.service
        )));
    }
    let app = TcpStream::connect_timeout(&reg.local, reg.local_connect_timeout)
        .map_err(|e| format!("the app at {}: {e}", reg.local))?;
    net.set_read_timeout(None)
        .and_then(|()| net.set_write_timeout(None))
        .map_err(|e| e.to_string())?;
    Pump::new(established, net, app).map_err(|e| Failure::Quiet(e.to_string()))
}

/// Whether `uri` may connect to `target`: the cached answer while the intentions stay,
/// else the agent's. When the agent cannot answer, a caller seen before keeps its answer
/// and a new one is refused.
fn authorized(proxy: &Proxy, target: &str, uri: &str, serial: &str) -> bool {
    let generation = {
        let s = proxy.state();
        if s.cache_usable
            && let Some(&allowed) = s.allowed.get(uri)
        {
            return allowed;
        }
        s.generation
    };
    match connect::authorize(&proxy.client, target, uri, serial) {
        Ok((allowed, reason)) => {
            if !allowed {
                info!("{uri} refused: {reason}");
            }
            let mut s = proxy.state();
            // An answer from before an intentions change is not kept.
            if s.cache_usable && s.generation == generation {
                if s.allowed.len() >= CALLERS_KEPT {
                    s.allowed.clear();
                }
                s.allowed.insert(uri.to_string(), allowed);
            }
            allowed
        }
        Err(e) => match proxy.state().allowed.get(uri) {
            Some(&allowed) => allowed,
            None => {
                warn!("cannot authorize {uri} ({e}); refused");
                false
            }
        },
    }
}

/// An app's connection to an upstream: to a healthy instance, round robin, the next on a
/// connect error; over mTLS, presenting the leaf and checking the server is the upstream.
fn outbound(
    proxy: &Proxy,
    reg: &Registration,
    up: &Upstream,
    app: TcpStream,
) -> Result<Pump, Failure> {
    let key = upstream_key(up);
    let (config, sni, candidates) = {
        let mut s = proxy.state();
        let config = s
            .clients
            .get(&key)
            .cloned()
            .ok_or("no certificate loaded yet")?;
        let leaf = s.leaf.clone().ok_or("no certificate loaded yet")?;
        let trust_domain = s
            .roots
            .as_ref()
            .map(|(td, _)| td.clone())
            .unwrap_or_default();
        let datacenter = super::datacenter_of(up, &leaf);
        let sni = tls::sni(&up.name, &datacenter, &trust_domain)
            .ok_or_else(|| format!("no SNI name for {}", up.name))?;
        let Some((list, next)) = s.instances.get_mut(&key) else {
            return Err(format!("no healthy instance of {}", up.name).into());
        };
        if list.is_empty() {
            return Err(format!("no healthy instance of {}", up.name).into());
        }
        let start = *next % list.len();
        *next = next.wrapping_add(1);
        let mut order = list[start..].to_vec();
        order.extend_from_slice(&list[..start]);
        (config, sni, order)
    };
    let mut net = None;
    for addr in &candidates {
        match TcpStream::connect_timeout(addr, up.connect_timeout) {
            Ok(s) => {
                net = Some(s);
                break;
            }
            Err(e) => debug!("upstream {}: {addr}: {e}; trying the next", up.name),
        }
    }
    let mut net = net.ok_or_else(|| {
        format!(
            "upstream {}: none of {} instance(s) accepted",
            up.name,
            candidates.len()
        )
    })?;
    net.set_read_timeout(Some(reg.handshake_timeout))
        .and_then(|()| net.set_write_timeout(Some(reg.handshake_timeout)))
        .map_err(|e| e.to_string())?;
    let established = handshake::connect(config, sni, &mut net)
        .map_err(|e| Failure::of_handshake(&format!("upstream {}", up.name), e))?;
    net.set_read_timeout(None)
        .and_then(|()| net.set_write_timeout(None))
        .map_err(|e| e.to_string())?;
    Pump::new(established, net, app).map_err(|e| Failure::Quiet(e.to_string()))
}

/// The admin address: `GET /ready` (`200 LIVE` when ready, else `503`, as Envoy's admin
/// answers) and `GET /status`.
pub(super) fn admin(proxy: &Proxy, listener: &TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut request = [0u8; 1024];
        let mut len = 0;
        while len < request.len() {
            match stream.read(&mut request[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if request[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&request[..len]);
        let path = text.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = match path {
            "/ready" if proxy.ready() => ("200 OK", "LIVE\n".to_string()),
            "/ready" => ("503 Service Unavailable", "PRE_INITIALIZING\n".to_string()),
            "/status" => ("200 OK", proxy.status()),
            _ => ("404 Not Found", "not found\n".to_string()),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_slots_than_the_maximum_and_a_dropped_one_is_free_again() {
        let slots = Slots::new(3);
        let mut taken: Vec<Slot> = (0..3).filter_map(|_| Slots::take(&slots)).collect();
        assert_eq!(taken.len(), 3);
        assert!(Slots::take(&slots).is_none());
        taken.pop();
        let again = Slots::take(&slots);
        assert!(again.is_some());
        assert!(Slots::take(&slots).is_none());
    }
}
