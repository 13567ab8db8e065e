//! What the agent tells the outside: `outpost status` over the status socket, and systemd
//! through `sd_notify`.

use super::records::socket_path;
use crate::error::{Context, Error};
use log::warn;
use miniserde::{Deserialize, Serialize};
use std::time::Duration;

/// `sd_notify` without libsystemd: one datagram to `$NOTIFY_SOCKET` (`@` = abstract).
pub(super) fn notify(message: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let sent = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
        }
        None => socket.send_to(message.as_bytes(), &path),
    };
    if let Err(e) = sent {
        warn!("sd_notify {message}: {e}");
    }
}

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub config: String,
    pub consul_synced: bool,
    pub consul_last_error: Option<String>,
    /// The Envoy binaries the proxies run and their versions (absent from older agents).
    pub envoy: Option<Vec<EnvoyStatus>>,
    /// The pid of the xDS relay serving every group's socket, when one runs.
    pub relay_pid: Option<i32>,
    pub groups: Vec<GroupStatus>,
}

#[derive(Serialize, Deserialize)]
pub struct EnvoyStatus {
    pub binary: String,
    pub version: String,
}

#[derive(Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub phase: String,
    /// The group's address in its namespace (bridge mode).
    pub address: Option<String>,
    /// Its IPv6 address on a dual-stack bridge (absent from older agents).
    pub address_ipv6: Option<String>,
    /// Its port mappings, `label host -> namespace`.
    pub ports: Option<Vec<String>>,
    /// Its network namespace (absent from older agents, and for host-mode groups).
    pub netns: Option<String>,
    pub tasks: Vec<TaskStatus>,
}

#[derive(Serialize, Deserialize)]
pub struct TaskStatus {
    pub name: String,
    pub lifecycle: String,
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_error: Option<String>,
    /// The task's last events, newest last (absent from older agents).
    pub events: Option<Vec<String>>,
    /// For a built-in proxy: its admin address in the namespace, where `GET /status` says
    /// what it serves with (`proxy_status`).
    pub admin: Option<String>,
}

/// A built-in proxy's own account (`GET /status` on its admin address, asked inside the
/// group's namespace): ready or not, whether Consul answers, its leaf and upstreams.
pub fn proxy_status(netns: &str, admin: &str) -> Result<String, Error> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = admin
        .parse()
        .map_err(|_| Error::permanent(format!("bad admin address {admin}")))?;
    let text = crate::net::netns::run_in(netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /status HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        s.take(16 * 1024).read_to_string(&mut text)?;
        Ok(text)
    })
    .with_context(|| format!("asking the proxy at {admin} in {netns}"))?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string()))
}

/// `outpost status`: asks the running agent.
pub fn query_status(run_dir: &str) -> Result<Status, Error> {
    use std::io::Read;
    let path = socket_path(run_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no agent answers on {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .context("reading the agent's status")?;
    miniserde::json::from_str(&text)
        .map_err(|_| Error::permanent("the agent's status is not valid JSON"))
}
