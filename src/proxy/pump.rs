//! Copies bytes both ways between a TLS connection and a plain one, until both directions
//! have ended: one thread per proxied connection, waiting in poll(2) on its two sockets.
//!
//! Each direction is closed on its own (a caller that has sent its request and shut its
//! write side still gets the answer): the end of the TLS peer's stream becomes a FIN to the
//! app, the app's FIN becomes a close_notify (then a FIN) to the peer.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustls::Connection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

/// Bytes read from a socket at once: a full TLS record. rustls reads the network 4 KiB at
/// a time; reading a record's worth and handing it over from memory saves system calls.
const CHUNK: usize = 64 * 1024;

/// Bytes read from one side and not yet passed on, in a buffer allocated once.
struct Buf {
    data: Box<[u8]>,
    at: usize,
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            data: vec![0u8; CHUNK].into_boxed_slice(),
            at: 0,
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.at == self.len
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.at..self.len]
    }

    /// Refills an empty buffer with one `read`; what it returned.
    fn fill(&mut self, read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        self.at = 0;
        self.len = 0;
        let n = read(&mut self.data)?;
        self.len = n;
        Ok(n)
    }
}

/// A connection quiet in both directions for this long is closed (Envoy's default idle
/// timeout for TCP proxies is one hour).
pub const IDLE: Duration = Duration::from_secs(3600);

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

/// The two sides, and where each direction stands.
pub struct Pump<'a> {
    tls: &'a mut Connection,
    net: &'a mut TcpStream,
    app: &'a mut TcpStream,
    /// Plaintext from the TLS peer not yet written to the app.
    to_app: Buf,
    /// Bytes read from the network not yet given to rustls.
    from_net: Buf,
    /// The network gave its FIN (rustls still holds what came before it).
    net_eof: bool,
    /// The peer's stream ended (close_notify or FIN), and the app was told.
    peer_done: bool,
    app_told: bool,
    /// The app's stream ended, and the peer was told.
    app_done: bool,
    peer_told: bool,
}

impl<'a> Pump<'a> {
    pub fn new(tls: &'a mut Connection, net: &'a mut TcpStream, app: &'a mut TcpStream) -> Self {
        Pump {
            tls,
            net,
            app,
            to_app: Buf::new(),
            from_net: Buf::new(),
            net_eof: false,
            peer_done: false,
            app_told: false,
            app_done: false,
            peer_told: false,
        }
    }

    /// Runs until both directions have ended, or one side fails or stays idle for `IDLE`.
    pub fn run(mut self) -> io::Result<()> {
        self.net.set_nonblocking(true)?;
        self.app.set_nonblocking(true)?;
        let _ = self.net.set_nodelay(true);
        let _ = self.app.set_nodelay(true);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut flow = Flow::default();
            self.read_peer(&mut flow)?;
            self.write_app(&mut flow)?;
            self.read_app(&mut buf, &mut flow)?;
            match self.write_peer(&mut flow) {
                // The peer ended its stream and went away before our close_notify reached
                // it: the exchange is over.
                Err(e) if self.peer_done && is_gone(&e) => return Ok(()),
                other => other?,
            }
            if self.app_told && self.peer_told && !self.tls.wants_write() {
                return Ok(());
            }
            if !flow.moved && !self.wait()? {
                return Err(io::Error::new(ErrorKind::TimedOut, "idle"));
            }
        }
    }

    /// TLS records from the network, decrypted into `to_app` once it is drained.
    fn read_peer(&mut self, flow: &mut Flow) -> io::Result<()> {
        if self.from_net.is_empty() && !self.net_eof && !self.peer_done {
            let net = &mut *self.net;
            match self.from_net.fill(|buf| net.read(buf)) {
                Ok(0) => {
                    // A FIN: the reader below reports whether close_notify came first.
                    self.net_eof = true;
                    flow.moved = true;
                    let _ = self.tls.read_tls(&mut io::empty());
                    self.process()?;
                }
                Ok(_) => flow.moved = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        while !self.from_net.is_empty() && self.tls.wants_read() {
            let mut rest = self.from_net.pending();
            let n = self.tls.read_tls(&mut rest)?;
            self.from_net.at += n;
            self.process()?;
            flow.moved = true;
        }
        if self.to_app.is_empty() && !self.peer_done {
            let tls = &mut *self.tls;
            match self.to_app.fill(|buf| tls.reader().read(buf)) {
                Ok(0) => {
                    self.peer_done = true;
                    flow.moved = true;
                }
                Ok(_) => flow.moved = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // The peer closed its TCP side without close_notify: its stream ended.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    self.peer_done = true;
                    flow.moved = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn process(&mut self) -> io::Result<()> {
        self.tls
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
    }

    fn write_app(&mut self, flow: &mut Flow) -> io::Result<()> {
        while !self.to_app.is_empty() {
            match self.app.write(self.to_app.pending()) {
                Ok(n) => {
                    self.to_app.at += n;
                    flow.moved = true;
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

    /// The app's bytes, encrypted, while rustls has no records waiting to go out.
    fn read_app(&mut self, buf: &mut [u8], flow: &mut Flow) -> io::Result<()> {
        if self.app_done || self.tls.wants_write() {
            return Ok(());
        }
        match self.app.read(buf) {
            Ok(0) => {
                self.app_done = true;
                self.tls.send_close_notify();
                flow.moved = true;
            }
            Ok(n) => {
                self.tls.writer().write_all(&buf[..n])?;
                flow.moved = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn write_peer(&mut self, flow: &mut Flow) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(self.net) {
                Ok(_) => flow.moved = true,
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

    /// Waits until a socket can do what is pending; false after `IDLE` of nothing.
    fn wait(&self) -> io::Result<bool> {
        let mut net = PollFlags::empty();
        if !self.net_eof && !self.peer_done && self.from_net.is_empty() {
            net |= PollFlags::POLLIN;
        }
        if self.tls.wants_write() {
            net |= PollFlags::POLLOUT;
        }
        let mut app = PollFlags::empty();
        if !self.app_done && !self.tls.wants_write() {
            app |= PollFlags::POLLIN;
        }
        if !self.to_app.is_empty() {
            app |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(self.net.as_fd(), net),
            PollFd::new(self.app.as_fd(), app),
        ];
        let timeout = PollTimeout::try_from(IDLE.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        loop {
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
