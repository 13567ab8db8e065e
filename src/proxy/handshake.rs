//! The TLS handshake over a blocking socket, with rustls's unbuffered connections, ending
//! in a `record::Session` that the pump uses for the records after it.
//!
//! rustls's unbuffered API reads only what the caller hands it and says how much it used,
//! so the bytes that follow the handshake (the peer's first records) stay with us, and the
//! connection can then give up its keys (`dangerous_into_kernel_connection`).

use super::record::Session;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// The largest handshake flight read before giving up (certificate chains are ~2 KiB).
const MAX_FLIGHT: usize = 64 * 1024;

/// How a handshake failed.
pub enum Error {
    /// The peer left before presenting anything (a TCP health check, a port scan).
    Quiet(String),
    Failed(String),
}

/// A session, with what came with the end of the handshake.
pub struct Established {
    pub session: Session,
    /// Application bytes rustls had already decrypted.
    pub early: Vec<u8>,
    /// Bytes read after the handshake: the start of the peer's next records.
    pub leftover: Vec<u8>,
}

/// The two kinds of unbuffered connection, driven by one loop.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn peer_seen(&self) -> bool;
}

/// The same three lines for each kind.
macro_rules! unbuffered {
    ($conn:ty, $data:ty) => {
        impl Unbuffered for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn peer_seen(&self) -> bool {
                self.peer_certificates().is_some()
            }
        }
    };
}

unbuffered!(UnbufferedClientConnection, ClientConnectionData);
unbuffered!(UnbufferedServerConnection, ServerConnectionData);

/// Accepts a caller: the session and the caller's certificate chain.
pub fn accept(
    config: Arc<ServerConfig>,
    net: &mut TcpStream,
) -> Result<(Established, Vec<CertificateDer<'static>>), Error> {
    let failed = |e: rustls::Error| Error::Failed(format!("TLS handshake: {e}"));
    let mut conn = UnbufferedServerConnection::new(config).map_err(failed)?;
    let (early, leftover) = drive(&mut conn, net)?;
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(failed)?;
    let session = Session::server(secrets, kernel).map_err(Error::Failed)?;
    Ok((
        Established {
            session,
            early,
            leftover,
        },
        chain,
    ))
}

/// Connects to an upstream instance as `name`.
pub fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    net: &mut TcpStream,
) -> Result<Established, Error> {
    let failed = |e: rustls::Error| Error::Failed(format!("TLS handshake: {e}"));
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(failed)?;
    let (early, leftover) = drive(&mut conn, net)?;
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(failed)?;
    let session = Session::client(secrets, kernel).map_err(Error::Failed)?;
    Ok(Established {
        session,
        early,
        leftover,
    })
}

/// Runs the handshake to its end: the application bytes already decrypted, and the bytes
/// read past it.
fn drive(conn: &mut impl Unbuffered, net: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let mut incoming = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut outgoing = vec![0u8; 4 * 1024];
    let mut queued = 0;
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..filled]);
        let mut established = false;
        let mut blocked = false;
        match state {
            Err(e) => {
                let said = format!("TLS handshake: {e}");
                // rustls queued an alert telling the peer why: send it on the way out.
                if let Ok(ConnectionState::EncodeTlsData(mut alert)) = conn.process(&mut []).state
                    && let Ok(n) = alert.encode(&mut outgoing[queued..])
                {
                    let _ = net.write_all(&outgoing[..queued + n]);
                }
                return Err(Error::Failed(said));
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => loop {
                match data.encode(&mut outgoing[queued..]) {
                    Ok(n) => {
                        queued += n;
                        break;
                    }
                    Err(EncodeError::InsufficientSize(s)) => {
                        outgoing.resize(queued + s.required_size, 0)
                    }
                    Err(e) => return Err(Error::Failed(format!("TLS handshake: {e}"))),
                }
            },
            Ok(ConnectionState::TransmitTlsData(data)) => {
                net.write_all(&outgoing[..queued]).map_err(io_failure)?;
                queued = 0;
                data.done();
            }
            Ok(ConnectionState::BlockedHandshake) => blocked = true,
            Ok(ConnectionState::ReadTraffic(mut data)) => {
                while let Some(record) = data.next_record() {
                    let record = record.map_err(|e| Error::Failed(format!("TLS: {e}")))?;
                    discard += record.discard;
                    early.extend_from_slice(record.payload);
                }
            }
            Ok(ConnectionState::WriteTraffic(_)) => established = true,
            Ok(_) => return Err(Error::Failed("closed during the TLS handshake".into())),
        }
        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        if established {
            incoming.truncate(filled);
            return Ok((early, incoming));
        }
        if blocked {
            if filled == incoming.len() {
                if incoming.len() >= MAX_FLIGHT {
                    return Err(Error::Failed("a TLS handshake message too long".into()));
                }
                incoming.resize(incoming.len() * 2, 0);
            }
            match net.read(&mut incoming[filled..]) {
                Ok(0) if !conn.peer_seen() => {
                    return Err(Error::Quiet("closed before the handshake".into()));
                }
                Ok(0) => return Err(Error::Failed("closed during the TLS handshake".into())),
                Ok(n) => filled += n,
                Err(e) if !conn.peer_seen() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(Error::Quiet(format!("before the handshake: {e}")));
                }
                Err(e) => return Err(io_failure(e)),
            }
        }
    }
}

/// A socket error during the handshake; the socket's timeout is the handshake's.
fn io_failure(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Error::Failed("TLS handshake: timed out".into())
        }
        _ => Error::Failed(format!("TLS handshake: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::tls::{self, testing::*};
    use std::net::TcpListener;
    use std::time::Duration;

    /// What accepting says of a caller that does `caller` and nothing more.
    fn accepting(caller: impl FnOnce(TcpStream) + Send + 'static) -> Error {
        let ca = make_ca();
        let store = tls::roots(&[ca.pem()]).unwrap();
        let config = tls::server(&leaf(&ca, "db"), &store).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || caller(TcpStream::connect(addr).unwrap()));
        let (mut net, _) = listener.accept().unwrap();
        net.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let Err(e) = accept(config, &mut net) else {
            panic!("a handshake with no client")
        };
        peer.join().unwrap();
        e
    }

    #[test]
    fn a_caller_that_leaves_at_once_is_quiet_and_a_silent_one_times_out() {
        let left = accepting(drop);
        assert!(matches!(left, Error::Quiet(_)));
        let silent = accepting(|s| {
            std::thread::sleep(Duration::from_millis(400));
            drop(s)
        });
        assert!(matches!(&silent, Error::Failed(e) if e == "TLS handshake: timed out"));
    }
}
