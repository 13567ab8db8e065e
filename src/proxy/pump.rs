//! Copies bytes both ways between a TLS connection and a plain one, until both directions
//! have ended. A `Pump` only moves what its non-blocking sockets allow and says whether it
//! is done, waiting or has more; the relay (`relay.rs`) waits for the sockets of all of a
//! proxy's connections in one epoll(7) and steps each when one of its sockets is ready.
//!
//! Records are opened and sealed in place (`record::Session`): the network's bytes are
//! read into one buffer, each record decrypted where it lies and the payloads written to
//! the app with one writev; the app's bytes are read with one readv into record-sized
//! slots, sealed there, and the records, now contiguous, go out with one write.
//!
//! Each direction is closed on its own (a caller that has sent its request and shut its
//! write side still gets the answer): the end of the TLS peer's stream becomes a FIN to the
//! app, the app's FIN becomes a close_notify (then a FIN) to the peer.

use super::handshake::Established;
use super::record::{MAX_PAYLOAD, MAX_RECORD, Opened, Session};
use std::io::{self, ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};

/// Bytes read from the network at once (eight full records), plus room for a record that
/// began at the end of the last read. Eight rather than four: 10-15% more bulk rate in
/// `benches/proxy.rs`; the pages are touched only by a connection that moves that much.
const INBOUND: usize = 128 * 1024 + MAX_RECORD;
/// Opened payloads written to the app with one writev, at most.
const MAX_READY: usize = 16;
/// Records sealed from one read of the app.
const SLOTS: usize = 8;
/// Room for a key update record before the slots.
const KEY_UPDATE_ROOM: usize = 64;
/// The widest slot: TLS 1.2 AES-GCM's 13 bytes before a payload, TLS 1.3's 17 after.
const MAX_SLOT: usize = 13 + MAX_PAYLOAD + 17;

/// Records from the network, opened where they lie.
struct Inbound {
    buf: Box<[u8]>,
    /// Bytes read into `buf`.
    filled: usize,
    /// Where the first record not yet opened starts.
    next: usize,
    /// Opened payloads not yet written to the app, in order.
    ready: Vec<Range<usize>>,
    /// The peer's close_notify came, after the payloads in `ready`.
    closed: bool,
}

impl Inbound {
    /// Moves the unopened rest of the buffer to its start, once every payload is written.
    fn compact(&mut self) {
        self.buf.copy_within(self.next..self.filled, 0);
        self.filled -= self.next;
        self.next = 0;
    }
}

/// Sealed records not yet written to the network.
struct Outbound {
    buf: Box<[u8]>,
    at: usize,
    len: usize,
}

impl Outbound {
    fn is_empty(&self) -> bool {
        self.at == self.len
    }
}

/// Errors that mean the other end has closed the connection entirely.
fn is_gone(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
}

/// What one pass of the loop saw.
#[derive(Default)]
struct Flow {
    /// Anything moved: loop again before waiting.
    moved: bool,
}

/// One of a pump's two sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The TLS connection to or from the mesh.
    Net,
    /// The plain connection to or from the local app.
    App,
}

/// Where a pump stands after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Both directions have ended: the connection can be closed.
    Done,
    /// Nothing more moves until a socket is ready again.
    Waiting,
    /// It used up its passes and could still move bytes.
    Busy,
}

/// The two sides, and where each direction stands.
pub struct Pump {
    session: Session,
    net: TcpStream,
    app: TcpStream,
    inbound: Inbound,
    outbound: Outbound,
    /// The network gave its FIN.
    net_eof: bool,
    /// Whether a read may find bytes: false after a read that drained the socket, true
    /// again when epoll says so. Saves a read that would block on every pass.
    net_readable: bool,
    app_readable: bool,
    /// The other end's FIN (or an error) is waiting on the socket. A short read then does
    /// not mean there is nothing more to read, and no new edge would come to say so.
    net_hung_up: bool,
    app_hung_up: bool,
    /// The peer's stream ended (close_notify or FIN), and the app was told.
    peer_done: bool,
    app_told: bool,
    /// The app's stream ended, and the peer was told.
    app_done: bool,
    peer_told: bool,
}

impl Pump {
    /// Takes over an established session and its two sockets, which become non-blocking;
    /// the application bytes that came with the end of the handshake are written to the
    /// app first.
    pub fn new(established: Established, net: TcpStream, mut app: TcpStream) -> io::Result<Self> {
        let Established {
            session,
            early,
            leftover,
        } = established;
        app.write_all(&early)?;
        net.set_nonblocking(true)?;
        app.set_nonblocking(true)?;
        let _ = net.set_nodelay(true);
        let _ = app.set_nodelay(true);
        let mut buf = vec![0u8; INBOUND].into_boxed_slice();
        buf.get_mut(..leftover.len())
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "a handshake too long"))?
            .copy_from_slice(&leftover);
        Ok(Pump {
            session,
            net,
            app,
            inbound: Inbound {
                buf,
                filled: leftover.len(),
                next: 0,
                ready: Vec::with_capacity(MAX_READY),
                closed: false,
            },
            outbound: Outbound {
                buf: vec![0u8; KEY_UPDATE_ROOM + SLOTS * MAX_SLOT].into_boxed_slice(),
                at: 0,
                len: 0,
            },
            net_eof: false,
            net_readable: true,
            app_readable: true,
            net_hung_up: false,
            app_hung_up: false,
            peer_done: false,
            app_told: false,
            app_done: false,
            peer_told: false,
        })
    }

    /// The socket of `side`, to wait on.
    pub fn socket(&self, side: Side) -> BorrowedFd<'_> {
        match side {
            Side::Net => self.net.as_fd(),
            Side::App => self.app.as_fd(),
        }
    }

    /// A read on `side` may find bytes again; `hung_up`: the other end has closed its side
    /// or reset, and the socket stays readable until a read says so.
    pub fn readable(&mut self, side: Side, hung_up: bool) {
        match side {
            Side::Net => {
                self.net_readable = true;
                self.net_hung_up |= hung_up;
            }
            Side::App => {
                self.app_readable = true;
                self.app_hung_up |= hung_up;
            }
        }
    }

    /// Moves bytes both ways for at most `passes` passes, until nothing moves; an error
    /// from either side ends the connection.
    pub fn step(&mut self, passes: usize) -> io::Result<Step> {
        for _ in 0..passes {
            let mut flow = Flow::default();
            self.read_peer(&mut flow)?;
            self.write_app(&mut flow)?;
            self.read_app(&mut flow)?;
            match self.write_peer(&mut flow) {
                // The peer ended its stream and went away before our close_notify reached
                // it: the exchange is over.
                Err(e) if self.peer_done && is_gone(&e) => return Ok(Step::Done),
                other => other?,
            }
            if self.app_told && self.peer_told && self.outbound.is_empty() {
                return Ok(Step::Done);
            }
            if !flow.moved {
                return Ok(Step::Waiting);
            }
        }
        Ok(Step::Busy)
    }

    /// Records from the network, opened into `inbound.ready` once it is drained.
    fn read_peer(&mut self, flow: &mut Flow) -> io::Result<()> {
        if !self.inbound.ready.is_empty() || self.peer_done {
            return Ok(());
        }
        self.open_records()?;
        if self.inbound.ready.is_empty()
            && !self.inbound.closed
            && !self.net_eof
            && self.net_readable
        {
            self.inbound.compact();
            let inbound = &mut self.inbound;
            let room = inbound.buf.len() - inbound.filled;
            match self.net.read(&mut inbound.buf[inbound.filled..]) {
                // A FIN. Without close_notify first, the stream ends there all the same
                // (as a caller that only half-closes expects).
                Ok(0) => {
                    self.net_eof = true;
                    flow.moved = true;
                }
                Ok(n) => {
                    inbound.filled += n;
                    self.net_readable = n == room || self.net_hung_up;
                    flow.moved = true;
                    self.open_records()?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.net_readable = false,
                Err(e) => return Err(e),
            }
        }
        if self.inbound.ready.is_empty() && (self.inbound.closed || self.net_eof) {
            self.peer_done = true;
            flow.moved = true;
        }
        Ok(())
    }

    /// Opens the whole records read so far, up to `MAX_READY` payloads.
    fn open_records(&mut self) -> io::Result<()> {
        let inbound = &mut self.inbound;
        while !inbound.closed && inbound.ready.len() < MAX_READY {
            let rest = &inbound.buf[inbound.next..inbound.filled];
            let Some(len) = Session::record_len(rest).map_err(invalid)? else {
                break;
            };
            let at = inbound.next;
            let record = &mut inbound.buf[at..at + len];
            match self.session.open(record).map_err(invalid)? {
                Opened::Data(r) => inbound.ready.push(at + r.start..at + r.end),
                Opened::Closed => inbound.closed = true,
                Opened::Nothing => {}
            }
            inbound.next += len;
        }
        Ok(())
    }

    fn write_app(&mut self, flow: &mut Flow) -> io::Result<()> {
        let inbound = &mut self.inbound;
        while !inbound.ready.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_READY];
            for (slice, range) in slices.iter_mut().zip(&inbound.ready) {
                *slice = IoSlice::new(&inbound.buf[range.clone()]);
            }
            match self.app.write_vectored(&slices[..inbound.ready.len()]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    flow.moved = true;
                    let mut done = 0;
                    for range in inbound.ready.iter_mut() {
                        let took = n.min(range.len());
                        range.start += took;
                        n -= took;
                        if range.start < range.end {
                            break;
                        }
                        done += 1;
                    }
                    inbound.ready.drain(..done);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.peer_done && !self.app_told {
            let _ = self.app.shutdown(Shutdown::Write);
            self.app_told = true;
            flow.moved = true;
        }
        Ok(())
    }

    /// The app's bytes, sealed into records, once the last ones have gone out.
    fn read_app(&mut self, flow: &mut Flow) -> io::Result<()> {
        if self.app_done || !self.outbound.is_empty() || !self.app_readable {
            return Ok(());
        }
        let out = &mut self.outbound.buf;
        let mut start = 0;
        if self.session.key_update_due() {
            start = self.session.seal_key_update(out).map_err(invalid)?;
            flow.moved = true;
        }
        let (prefix, suffix) = self.session.overhead();
        let slot = prefix + MAX_PAYLOAD + suffix;
        let read = {
            let mut slices: heapless::Vec<IoSliceMut<'_>, SLOTS> = heapless::Vec::new();
            for chunk in out[start..].chunks_exact_mut(slot).take(SLOTS) {
                let _ = slices.push(IoSliceMut::new(&mut chunk[prefix..prefix + MAX_PAYLOAD]));
            }
            self.app.read_vectored(&mut slices)
        };
        let end = match read {
            Ok(0) => {
                self.app_done = true;
                flow.moved = true;
                start
                    + self
                        .session
                        .seal_close_notify(&mut out[start..])
                        .map_err(invalid)?
            }
            Ok(n) => {
                flow.moved = true;
                self.app_readable = n == SLOTS * MAX_PAYLOAD || self.app_hung_up;
                let mut end = start;
                for (i, at) in (0..n).step_by(MAX_PAYLOAD).enumerate() {
                    let from = start + i * slot;
                    let len = (n - at).min(MAX_PAYLOAD);
                    end = from
                        + self
                            .session
                            .seal_data(&mut out[from..from + slot], len)
                            .map_err(invalid)?;
                }
                end
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.app_readable = false;
                start
            }
            Err(e) => return Err(e),
        };
        self.outbound.at = 0;
        self.outbound.len = end;
        Ok(())
    }

    fn write_peer(&mut self, flow: &mut Flow) -> io::Result<()> {
        let outbound = &mut self.outbound;
        while !outbound.is_empty() {
            match self.net.write(&outbound.buf[outbound.at..outbound.len]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    outbound.at += n;
                    flow.moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.app_done && !self.peer_told {
            let _ = self.net.shutdown(Shutdown::Write);
            self.peer_told = true;
            flow.moved = true;
        }
        Ok(())
    }
}

/// A record the peer should not have sent: the connection ends.
fn invalid(e: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    //! Our records against rustls's own, over loopback: each cipher suite the proxy may
    //! speak, both ways, with key updates, session tickets and close_notify.

    use super::*;
    use crate::proxy::handshake;
    use crate::proxy::relay::testing::relayed;
    use crate::proxy::tls::{self, testing::*};
    use rustls::crypto::ring::cipher_suite as suite;
    use rustls::{ClientConnection, ServerConnection, StreamOwned, SupportedCipherSuite};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    const SUITES: [SupportedCipherSuite; 6] = [
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    /// 300 KB that differ from one record to the next.
    fn payload() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    fn listener() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    /// An app that echoes one connection until its EOF, then closes its side.
    fn echo(l: TcpListener) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 7000];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
            s.shutdown(Shutdown::Write).unwrap();
        })
    }

    /// Writes `data` in pieces over a rustls stream, asking for a key update (TLS 1.3) in
    /// the middle, then ends its stream with close_notify.
    fn send<S, C>(tls: &mut StreamOwned<C, TcpStream>, data: &[u8])
    where
        S: rustls::SideData,
        C: std::ops::DerefMut<Target = rustls::ConnectionCommon<S>>,
    {
        let (first, second) = data.split_at(data.len() / 2);
        for piece in first.chunks(30_000) {
            tls.write_all(piece).unwrap();
        }
        if tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            tls.conn.refresh_traffic_keys().unwrap();
        }
        for piece in second.chunks(1000) {
            tls.write_all(piece).unwrap();
        }
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    }

    #[test]
    fn a_rustls_client_through_our_server_for_every_suite() {
        let ca = make_ca();
        let store = tls::roots(&[ca.pem()]).unwrap();
        let (web, db) = (leaf(&ca, "web"), leaf(&ca, "db"));
        for suite in SUITES {
            let (app, app_addr) = listener();
            let app = echo(app);
            let (public, addr) = listener();
            let ours = tls::server(&db, &store).unwrap();
            let proxy = thread::spawn(move || {
                let (mut net, _) = public.accept().unwrap();
                let Ok((mut established, chain)) = handshake::accept(ours, &mut net) else {
                    panic!("handshake")
                };
                // Our own key updates too, every 5 records (TLS 1.3).
                established.session = established.session.with_key_limit(5);
                assert!(tls::caller(Some(&chain)).is_some_and(|(uri, _)| uri.ends_with("/web")));
                let app = TcpStream::connect(app_addr).unwrap();
                relayed(Pump::new(established, net, app))
            });
            let config = client_speaking(suite, &web, &store, expect("db"));
            let conn = ClientConnection::new(config, tls::sni("db", "dc1", TD).unwrap()).unwrap();
            let mut tls = StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
            let data = payload();
            send(&mut tls, &data);
            let mut back = Vec::new();
            // Ends with our close_notify: rustls reports a truncation as an error.
            tls.read_to_end(&mut back).unwrap();
            assert!(
                back == data,
                "{:?}: {} bytes back",
                suite.suite(),
                back.len()
            );
            assert_eq!(tls.conn.negotiated_cipher_suite(), Some(suite));
            proxy.join().unwrap().unwrap();
            app.join().unwrap();
        }
    }

    #[test]
    fn our_client_to_a_rustls_server_for_every_suite() {
        let ca = make_ca();
        let store = tls::roots(&[ca.pem()]).unwrap();
        let (web, db) = (leaf(&ca, "web"), leaf(&ca, "db"));
        for suite in SUITES {
            let (upstream, addr) = listener();
            let mut config = (*server_speaking(suite, &db, &store)).clone();
            // A server that sends session tickets, which our client ignores.
            config.send_tls13_tickets = 2;
            config.session_storage = rustls::server::ServerSessionMemoryCache::new(8);
            let config = Arc::new(config);
            let server = thread::spawn(move || {
                let (sock, _) = upstream.accept().unwrap();
                let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
                let mut got = Vec::new();
                tls.read_to_end(&mut got).unwrap();
                send(&mut tls, &got);
            });
            let (app_side, app_addr) = listener();
            let mut app = TcpStream::connect(app_addr).unwrap();
            let ours = tls::client(&web, &store, expect("db")).unwrap();
            let proxy = thread::spawn(move || {
                let (to_app, _) = app_side.accept().unwrap();
                let mut net = TcpStream::connect(addr).unwrap();
                let Ok(established) =
                    handshake::connect(ours, tls::sni("db", "dc1", TD).unwrap(), &mut net)
                else {
                    panic!("handshake")
                };
                relayed(Pump::new(established, net, to_app))
            });
            let data = payload();
            app.write_all(&data).unwrap();
            app.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).unwrap();
            assert!(
                back == data,
                "{:?}: {} bytes back",
                suite.suite(),
                back.len()
            );
            proxy.join().unwrap().unwrap();
            server.join().unwrap();
        }
    }
}
