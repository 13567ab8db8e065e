//! The xDS relay (DESIGN.md "xDS path survives agent restarts"): Envoy in a group's
//! namespace cannot reach the host's loopback, but unix sockets cross namespaces. When
//! Consul serves gRPC on TCP only, `outpost relay` (this binary, started by the agent as
//! its own process, so it outlives agent restarts like the tasks do) listens on the
//! group's `alloc/tmp/consul_grpc.sock` and copies bytes to and from Consul's gRPC port.
//! TLS, when used, is end to end between Envoy and Consul; the relay sees only bytes.

use argh::FromArgs;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Relay a unix socket to Consul's gRPC TCP port (started by the agent for each group with sidecars).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "relay")]
pub struct RelayCmd {
    /// the unix socket to serve
    #[argh(option)]
    pub listen: PathBuf,
    /// where Consul's gRPC listens, host:port
    #[argh(option)]
    pub to: String,
}

/// Serves until killed; each connection gets two copying threads.
pub fn serve(listen: &Path, to: &str) -> io::Result<()> {
    if let Some(dir) = listen.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen)?;
    // Envoy may run under its own uid (transparent proxy); the directory guards access.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o777))?;
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                log::warn!("relay {}: accept: {e}", listen.display());
                continue;
            }
        };
        let to = to.to_string();
        std::thread::spawn(move || {
            if let Err(e) = pipe(client, &to) {
                log::info!("relay to {to}: {e}");
            }
        });
    }
    Ok(())
}

fn pipe(client: UnixStream, to: &str) -> io::Result<()> {
    let upstream = TcpStream::connect(to)?;
    upstream.set_nodelay(true)?;
    let (mut client_r, mut client_w) = (client.try_clone()?, client);
    let (mut up_r, mut up_w) = (upstream.try_clone()?, upstream);
    let back = std::thread::spawn(move || {
        let _ = io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut client_r, &mut up_w);
    let _ = up_w.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_flow_both_ways() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = upstream.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut s in upstream.incoming().flatten() {
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).unwrap();
                s.write_all(&[b"echo:".as_slice(), &buf].concat()).unwrap();
            }
        });
        let sock =
            std::env::temp_dir().join(format!("outpost-relay-{}/grpc.sock", std::process::id()));
        let listen = sock.clone();
        std::thread::spawn(move || serve(&listen, &to));
        let mut client = None;
        for _ in 0..100 {
            if let Ok(c) = UnixStream::connect(&sock) {
                client = Some(c);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut client = client.expect("the relay listens");
        client.write_all(b"hello").unwrap();
        let mut answer = [0u8; 10];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"echo:hello");
        let _ = std::fs::remove_dir_all(sock.parent().unwrap());
    }
}
