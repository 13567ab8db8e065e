//! The xDS relay (docs/architecture.md, "The xDS path survives agent restarts"): Envoy in a group's
//! namespace cannot reach the host's loopback, but unix sockets cross namespaces. When
//! Consul serves gRPC on TCP only, one `outpost relay` per node (this binary, started by the
//! agent as its own process, so it outlives agent restarts like the tasks do) listens on
//! every such group's `xds/consul_grpc.sock` and copies bytes to and from Consul's
//! gRPC port. One process for all groups: 20 relays took 4.2 MiB of PSS together
//! (benches/agent_envoy.rs), one takes a fraction of that.
//!
//! What it serves is a list file the agent writes (`to HOST:PORT`, then `listen PATH` per
//! socket); SIGHUP reads it again: new sockets are bound, sockets no longer listed are
//! closed, and connections already open (live ADS streams) go on untouched. A connection
//! accepted while no target is known is closed at once (Envoy retries).
//! TLS, when used, is end to end between Envoy and Consul; the relay sees only bytes.

use argh::FromArgs;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Relay unix sockets to Consul's gRPC TCP port (started by the agent, one per node, for the
/// groups whose Envoy reaches Consul through a socket). SIGHUP re-reads the list.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "relay")]
pub struct RelayCmd {
    /// the list of sockets to serve and where to: `to HOST:PORT`, then `listen PATH` lines
    #[argh(option)]
    pub sockets: PathBuf,
}

/// What the relay serves, as the list file says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct List {
    /// Consul's gRPC address; empty while the agent does not know it yet.
    pub to: String,
    pub listen: Vec<PathBuf>,
    /// Sockets relayed to Consul's HTTP API (Connect native tasks), each with its target
    /// (`host:port` or `unix:///path`), open to every task of the group.
    pub http: Vec<(PathBuf, String)>,
}

impl List {
    pub fn parse(text: &str) -> List {
        let mut list = List::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("to", to)) => list.to = to.trim().to_string(),
                Some(("listen", path)) => list.listen.push(PathBuf::from(path.trim())),
                Some(("http", rest)) => {
                    if let Some((path, to)) = rest.trim().split_once(' ') {
                        list.http.push((PathBuf::from(path), to.trim().to_string()));
                    }
                }
                _ => {}
            }
        }
        list
    }

    pub fn render(&self) -> String {
        let mut text = format!("to {}\n", self.to);
        for path in &self.listen {
            text.push_str(&format!("listen {}\n", path.display()));
        }
        for (path, to) in &self.http {
            text.push_str(&format!("http {} {to}\n", path.display()));
        }
        text
    }
}

/// The sockets being served and where their connections go.
#[derive(Default)]
struct Relay {
    to: String,
    listeners: BTreeMap<PathBuf, UnixListener>,
    /// The HTTP sockets' own targets (the others go to `to`).
    http_targets: BTreeMap<PathBuf, String>,
}

impl Relay {
    /// Serves what `list` names now: binds new sockets, closes those no longer listed.
    fn apply(&mut self, list: List) {
        self.to = list.to;
        self.http_targets = list.http.iter().cloned().collect();
        let http_targets = &self.http_targets;
        self.listeners.retain(|path, _| {
            let keep = list.listen.contains(path) || http_targets.contains_key(path);
            if !keep {
                let _ = std::fs::remove_file(path);
                log::info!("relay: closed {}", path.display());
            }
            keep
        });
        let wanted = list
            .listen
            .into_iter()
            .map(|p| (p, false))
            .chain(list.http.into_iter().map(|(p, _)| (p, true)));
        for (path, open_to_all) in wanted {
            if self.listeners.contains_key(&path) {
                continue;
            }
            match bind(&path, open_to_all) {
                Ok(listener) => {
                    self.listeners.insert(path, listener);
                }
                Err(e) => log::warn!("relay: cannot listen on {}: {e}", path.display()),
            }
        }
    }

    /// Takes every pending connection of `path`'s socket.
    fn accept(&self, path: &Path) {
        let Some(listener) = self.listeners.get(path) else {
            return;
        };
        let to = self.http_targets.get(path).unwrap_or(&self.to);
        loop {
            match listener.accept() {
                Ok((client, _)) if to.is_empty() => drop(client),
                Ok((client, _)) => {
                    let to = to.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = pipe(client, &to) {
                            log::info!("relay to {to}: {e}");
                        }
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("relay {}: accept: {e}", path.display());
                    return;
                }
            }
        }
    }
}

/// Binds `path`, then makes the socket 0660 with its directory's group (Envoy's, set by
/// the agent: `allocdir::xds`). The directory is root's and closed to others, so the
/// changes by path cannot be redirected, and no other task can reach the socket. An HTTP
/// socket (`open_to_all`) is 0666 in a directory only root writes (`allocdir::consul`).
fn bind(path: &Path, open_to_all: bool) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    if open_to_all {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        return Ok(listener);
    }
    let gid = std::fs::symlink_metadata(dir)?.gid();
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

fn read_list(path: &Path) -> List {
    match std::fs::read_to_string(path) {
        Ok(text) => List::parse(&text),
        Err(e) => {
            log::warn!("relay: cannot read {}: {e}", path.display());
            List::default()
        }
    }
}

/// Serves the sockets `list` names until killed; SIGHUP reads it again.
pub fn serve(list: &Path) -> io::Result<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGHUP);
    // Blocked before any thread starts, so every copying thread inherits it.
    mask.thread_block().map_err(io::Error::from)?;
    let hangups = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut relay = Relay::default();
    relay.apply(read_list(list));
    loop {
        let paths: Vec<PathBuf> = relay.listeners.keys().cloned().collect();
        let mut fds = vec![PollFd::new(hangups.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            relay
                .listeners
                .values()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        // A connection while no target is known: the list may already have one whose
        // SIGHUP is not here yet (the agent writes, then signals); read it now.
        if relay.to.is_empty() && ready[1..].iter().any(|r| *r) {
            relay.apply(read_list(list));
        }
        for (path, _) in paths.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            relay.accept(path);
        }
        if ready[0] {
            while let Ok(Some(_)) = hangups.read_signal() {}
            relay.apply(read_list(list));
        }
    }
}

/// A connection onwards: TCP to `host:port`, or a unix socket for `unix:///path`.
enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Upstream {
    fn connect(to: &str) -> io::Result<Upstream> {
        match to.strip_prefix("unix://") {
            Some(path) => Ok(Upstream::Unix(UnixStream::connect(path)?)),
            None => {
                let tcp = TcpStream::connect(to)?;
                tcp.set_nodelay(true)?;
                Ok(Upstream::Tcp(tcp))
            }
        }
    }

    /// A reading and a writing half.
    fn split(self) -> io::Result<(Box<dyn io::Read + Send>, Upstream)> {
        Ok(match self {
            Upstream::Tcp(s) => (Box::new(s.try_clone()?), Upstream::Tcp(s)),
            Upstream::Unix(s) => (Box::new(s.try_clone()?), Upstream::Unix(s)),
        })
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Upstream::Tcp(s) => s.shutdown(Shutdown::Write),
            Upstream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl io::Write for Upstream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Upstream::Tcp(s) => s.write(buf),
            Upstream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pipe(client: UnixStream, to: &str) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = Upstream::connect(to)?;
    let (mut client_r, mut client_w) = (client.try_clone()?, client);
    let (mut up_r, mut up_w) = upstream.split()?;
    let back = std::thread::spawn(move || {
        let _ = io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut client_r, &mut up_w);
    up_w.shutdown_write();
    let _ = back.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo_upstream() -> String {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = upstream.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut s in upstream.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 5];
                    while s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&[b"echo:".as_slice(), &buf].concat());
                    }
                });
            }
        });
        to
    }

    fn ask(client: &mut UnixStream) -> [u8; 10] {
        client.write_all(b"hello").unwrap();
        let mut answer = [0u8; 10];
        client.read_exact(&mut answer).unwrap();
        answer
    }

    #[test]
    fn the_list_reads_back_what_it_wrote() {
        let list = List {
            to: "127.0.0.1:8502".into(),
            listen: vec!["/a/grpc.sock".into(), "/b/grpc.sock".into()],
            http: vec![(
                "/a/consul_http.sock".into(),
                "unix:///run/consul.sock".into(),
            )],
        };
        assert_eq!(List::parse(&list.render()), list);
        assert_eq!(List::parse("garbage\nlisten\n"), List::default());
    }

    /// A list change binds the new socket and closes the removed one; a connection opened
    /// before goes on (the relay itself is served here by hand, a step at a time).
    #[test]
    fn a_new_list_adds_and_removes_sockets_without_dropping_open_streams() {
        let to = echo_upstream();
        let dir = std::env::temp_dir().join(format!("outpost-relay-{}", std::process::id()));
        let (a, b) = (dir.join("a/grpc.sock"), dir.join("b/grpc.sock"));
        let mut relay = Relay::default();
        relay.apply(List {
            to: to.clone(),
            listen: vec![a.clone()],
            http: Vec::new(),
        });
        let mut first = UnixStream::connect(&a).unwrap();
        relay.accept(&a);
        assert_eq!(&ask(&mut first), b"echo:hello");
        relay.apply(List {
            to,
            listen: vec![b.clone()],
            http: Vec::new(),
        });
        assert!(!a.exists() && UnixStream::connect(&a).is_err());
        let mut second = UnixStream::connect(&b).unwrap();
        relay.accept(&b);
        assert_eq!(&ask(&mut second), b"echo:hello");
        // The stream opened through the closed socket still flows.
        assert_eq!(&ask(&mut first), b"echo:hello");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_target_a_connection_is_closed_at_once() {
        let dir = std::env::temp_dir().join(format!("outpost-relay-none-{}", std::process::id()));
        let a = dir.join("grpc.sock");
        let mut relay = Relay::default();
        relay.apply(List {
            to: String::new(),
            listen: vec![a.clone()],
            http: Vec::new(),
        });
        let mut client = UnixStream::connect(&a).unwrap();
        relay.accept(&a);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap_or(0), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
