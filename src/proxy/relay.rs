//! A proxy's established connections, all moved by one thread waiting in epoll(7), as
//! Envoy's single worker moves them. Under load, 64 busy connections are then one thread's
//! work rather than 128 threads taking turns on a device's two cores, which is what set the
//! tail latency in `benches/proxy.rs`. A connection's handshake, authorization and connect
//! to the app stay straight-line blocking code in a short-lived thread of their own, with
//! their own timeouts; the connection is handed over here once it carries bytes.
//!
//! The sockets are edge-triggered: each is added once, for reading, writing and the other
//! end's FIN, and a pump remembers which side may have bytes (`Pump::readable`), so no
//! interest is changed as a connection goes from one direction to the other.

use super::pump::{Pump, Side, Step};
use log::warn;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io::{self, ErrorKind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Called once, in the relay's thread, with how the connection ended.
pub type OnEnd = Box<dyn FnOnce(io::Result<()>) + Send>;

/// A connection quiet in both directions for this long is closed (Envoy's default idle
/// timeout for TCP proxies is one hour).
const IDLE: Duration = Duration::from_secs(3600);

/// How often quiet connections are looked for.
const SWEEP: Duration = Duration::from_secs(60);

/// Passes over one connection before the others get their turn: a bulk transfer moves up
/// to eight records each way per pass, and must not hold up the requests of the rest.
const PASSES: usize = 4;

/// Events taken from epoll at once.
const EVENTS: usize = 64;

/// The token of the eventfd that says connections were handed over.
const HANDED: u64 = u64::MAX;

/// The relay's stack: its loop and a pump's step need little.
const STACK: usize = 128 * 1024;

pub struct Relay {
    epoll: Epoll,
    wake: EventFd,
    /// Boxed as they will be in `Connections` (and this list's capacity stays small).
    #[allow(clippy::vec_box)]
    handed: Mutex<Vec<Box<Entry>>>,
    /// Whether the thread runs. It starts with the first connection: an idle sidecar (most
    /// of a device's, most of the time) spends no stack on it. A failed start (no memory,
    /// too many threads) is tried again with the next connection.
    started: Mutex<bool>,
    /// `IDLE` and `SWEEP` (shorter in tests).
    idle: Duration,
    sweep: Duration,
}

/// A connection the relay moves.
struct Entry {
    pump: Pump,
    on_end: OnEnd,
    /// The last time one of its sockets was ready.
    active: Instant,
}

/// The relay thread's connections, by slot; a socket's token is its slot and side. Boxed:
/// a pump is about 2 KiB, and the list keeps the length of its busiest moment.
#[derive(Default)]
struct Connections {
    slots: Vec<Option<Box<Entry>>>,
    free: Vec<usize>,
}

fn token(slot: usize, side: Side) -> u64 {
    (slot as u64) << 1 | u64::from(side == Side::App)
}

fn of_token(token: u64) -> (usize, Side) {
    let side = if token & 1 == 1 { Side::App } else { Side::Net };
    ((token >> 1) as usize, side)
}

impl Relay {
    /// A relay with no connections; its thread starts with the first.
    pub fn new() -> io::Result<Arc<Relay>> {
        Relay::with_idle(IDLE, SWEEP)
    }

    /// A relay that ends connections quiet for `idle`, looking every `sweep`.
    fn with_idle(idle: Duration, sweep: Duration) -> io::Result<Arc<Relay>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, HANDED))?;
        Ok(Arc::new(Relay {
            epoll,
            wake,
            handed: Mutex::new(Vec::new()),
            started: Mutex::new(false),
            idle,
            sweep,
        }))
    }

    /// Gives a connection to the relay's thread, which moves it until it ends, then calls
    /// `on_end`.
    pub fn hand_over(self: &Arc<Self>, pump: Pump, on_end: OnEnd) {
        if let Err(e) = self.start() {
            on_end(Err(io::Error::new(
                e.kind(),
                format!("cannot start the relay thread: {e}"),
            )));
            return;
        }
        self.handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(Entry {
                pump,
                on_end,
                active: Instant::now(),
            }));
        if let Err(e) = self.wake.write(1) {
            // Only a counter at its maximum fails, and then the relay is awake anyway.
            warn!("cannot wake the relay: {e}");
        }
    }

    /// Starts the thread unless it runs.
    fn start(self: &Arc<Self>) -> io::Result<()> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if !*started {
            let mine = self.clone();
            std::thread::Builder::new()
                .name("relay".to_string())
                .stack_size(STACK)
                .spawn(move || mine.run())?;
            *started = true;
        }
        Ok(())
    }

    fn run(&self) {
        let mut connections = Connections::default();
        let mut events = [EpollEvent::empty(); EVENTS];
        // Connections that used up their passes, stepped again after the next wait.
        let mut busy = Vec::new();
        let mut again = Vec::new();
        let mut swept = Instant::now();
        loop {
            let timeout = if busy.is_empty() {
                EpollTimeout::try_from(self.sweep).unwrap_or(EpollTimeout::MAX)
            } else {
                EpollTimeout::ZERO
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("the relay cannot wait for its connections: {e}; retrying in 1s");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let now = Instant::now();
            for event in &events[..n] {
                if event.data() == HANDED {
                    self.take_handed(&mut connections, &mut busy, now);
                    continue;
                }
                let (slot, side) = of_token(event.data());
                let hung_up = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR;
                if let Some(Some(entry)) = connections.slots.get_mut(slot) {
                    entry.active = now;
                    let events = event.events();
                    if events.intersects(EpollFlags::EPOLLIN | hung_up) {
                        entry.pump.readable(side, events.intersects(hung_up));
                    }
                    connections.step(slot, &mut busy);
                }
            }
            std::mem::swap(&mut busy, &mut again);
            for slot in again.drain(..) {
                connections.step(slot, &mut busy);
            }
            if now.duration_since(swept) >= self.sweep {
                connections.end_idle(now, self.idle);
                swept = now;
            }
        }
    }

    /// Adds the connections handed over since the last look, and steps each once.
    fn take_handed(&self, connections: &mut Connections, busy: &mut Vec<usize>, now: Instant) {
        let _ = self.wake.read();
        let handed =
            std::mem::take(&mut *self.handed.lock().unwrap_or_else(PoisonError::into_inner));
        for mut entry in handed {
            entry.active = now;
            let slot = connections.insert(entry);
            if let Err(e) = self.watch(connections, slot) {
                connections.end(slot, Err(e.into()));
                continue;
            }
            connections.step(slot, busy);
        }
    }

    /// Adds the connection's two sockets to the epoll set, edge-triggered.
    fn watch(&self, connections: &Connections, slot: usize) -> Result<(), Errno> {
        let Some(Some(entry)) = connections.slots.get(slot) else {
            return Ok(());
        };
        let wanted = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLET;
        for side in [Side::Net, Side::App] {
            let event = EpollEvent::new(wanted, token(slot, side));
            self.epoll.add(entry.pump.socket(side), event)?;
        }
        Ok(())
    }
}

impl Connections {
    fn insert(&mut self, entry: Box<Entry>) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        }
    }

    /// Moves the connection in `slot` on; it ends when done or failed, and goes on the
    /// `busy` list when it could move more.
    fn step(&mut self, slot: usize, busy: &mut Vec<usize>) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        match entry.pump.step(PASSES) {
            Ok(Step::Waiting) => {}
            Ok(Step::Busy) => {
                entry.active = Instant::now();
                busy.push(slot);
            }
            Ok(Step::Done) => self.end(slot, Ok(())),
            Err(e) => self.end(slot, Err(e)),
        }
    }

    /// Closes the connection's sockets (which leaves the epoll set) and reports its end.
    fn end(&mut self, slot: usize, result: io::Result<()>) {
        if let Some(entry) = self.slots.get_mut(slot).and_then(Option::take) {
            self.free.push(slot);
            let Entry { pump, on_end, .. } = *entry;
            drop(pump);
            on_end(result);
        }
    }

    /// Ends the connections quiet for `idle`.
    fn end_idle(&mut self, now: Instant, idle: Duration) {
        let idle: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, entry)| {
                let entry = entry.as_ref()?;
                (now.duration_since(entry.active) >= idle).then_some(slot)
            })
            .collect();
        for slot in idle {
            self.end(slot, Err(io::Error::new(ErrorKind::TimedOut, "idle")));
        }
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use std::sync::mpsc;

    /// Moves `pump` through a relay of its own until it ends.
    pub fn relayed(pump: io::Result<Pump>) -> io::Result<()> {
        let relay = Relay::new()?;
        let (ended, end) = mpsc::channel();
        relay.hand_over(
            pump?,
            Box::new(move |result| {
                let _ = ended.send(result);
            }),
        );
        end.recv().map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    //! Many connections at once through one relay: each gets all of its bytes back, in
    //! order, while the others move theirs, and each end is reported. And the idle timeout.

    use super::*;
    use crate::proxy::handshake;
    use crate::proxy::tls::{self, testing::*};
    use rustls::{ClientConfig, ClientConnection, StreamOwned};
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::thread;

    const CONNECTIONS: usize = 24;

    type Caller = StreamOwned<ClientConnection, TcpStream>;

    /// An app that echoes each connection until its EOF, then closes its side.
    fn echo_all(l: TcpListener) {
        thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                thread::spawn(move || {
                    let mut buf = [0u8; 5000];
                    // No panics here: the test may be over (and its callers gone).
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
    }

    /// A public listener whose first `connections` callers are handed to `relay` on their
    /// way to an echo app; each end is reported with the caller's port.
    #[allow(clippy::type_complexity)]
    fn serve(
        relay: Arc<Relay>,
        connections: usize,
    ) -> (
        SocketAddr,
        Arc<ClientConfig>,
        mpsc::Receiver<(u16, io::Result<()>)>,
    ) {
        let ca = make_ca();
        let store = tls::roots(&[ca.pem()]).unwrap();
        let (web, db) = (leaf(&ca, "web"), leaf(&ca, "db"));
        let app = TcpListener::bind("127.0.0.1:0").unwrap();
        let app_addr = app.local_addr().unwrap();
        echo_all(app);
        let public = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = public.local_addr().unwrap();
        let (ended, ends) = mpsc::channel();
        let server = tls::server(&db, &store).unwrap();
        thread::spawn(move || {
            for net in public.incoming().take(connections) {
                let (mut net, relay, ended, server) =
                    (net.unwrap(), relay.clone(), ended.clone(), server.clone());
                thread::spawn(move || {
                    let port = net.peer_addr().unwrap().port();
                    let (established, _) = handshake::accept(server, &mut net).ok().unwrap();
                    let app = TcpStream::connect(app_addr).unwrap();
                    let pump = Pump::new(established, net, app).unwrap();
                    relay.hand_over(
                        pump,
                        Box::new(move |result| {
                            let _ = ended.send((port, result));
                        }),
                    );
                });
            }
        });
        let config = tls::client(&web, &store, expect("db")).unwrap();
        (addr, config, ends)
    }

    fn caller(addr: SocketAddr, config: &Arc<ClientConfig>) -> Caller {
        let conn = ClientConnection::new(config.clone(), tls::sni("db", "dc1", TD).unwrap());
        StreamOwned::new(conn.unwrap(), TcpStream::connect(addr).unwrap())
    }

    fn echoed(tls: &mut Caller, data: &[u8]) -> bool {
        let mut back = vec![0u8; data.len()];
        tls.write_all(data).is_ok() && tls.read_exact(&mut back).is_ok() && back == data
    }

    #[test]
    fn one_relay_moves_many_connections_at_once_and_reports_how_each_ended() {
        let (addr, config, ends) = serve(Relay::new().unwrap(), CONNECTIONS);
        let callers: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let mut tls = caller(addr, &config);
                thread::spawn(move || {
                    // Different sizes, so some connections are still busy as others end.
                    let data: Vec<u8> = (0..20_000 * (i + 1)).map(|b| (b * 31 + i) as u8).collect();
                    let all_back = data.chunks(7000).all(|piece| echoed(&mut tls, piece));
                    tls.conn.send_close_notify();
                    tls.flush().unwrap();
                    let mut rest = Vec::new();
                    tls.read_to_end(&mut rest).unwrap();
                    all_back && rest.is_empty()
                })
            })
            .collect();
        for (i, caller) in callers.into_iter().enumerate() {
            assert!(
                caller.join().unwrap(),
                "connection {i} got other bytes back"
            );
        }
        let reported: Vec<bool> = ends
            .iter()
            .take(CONNECTIONS)
            .map(|(_, r)| r.is_ok())
            .collect();
        assert!(reported.iter().all(|ok| *ok), "{reported:?}");
    }

    #[test]
    fn a_quiet_connection_is_ended_after_the_idle_time_and_a_talking_one_is_not() {
        let relay = Relay::with_idle(Duration::from_secs(2), Duration::from_millis(100)).unwrap();
        let (addr, config, ends) = serve(relay, 2);
        let (mut quiet, mut talking) = (caller(addr, &config), caller(addr, &config));
        assert!(echoed(&mut quiet, b"hello") && echoed(&mut talking, b"hello"));
        let quiet_port = quiet.sock.local_addr().unwrap().port();
        // The talking one echoes every 100 ms until an end is reported: the quiet one's.
        let mut ended = None;
        for _ in 0..600 {
            assert!(echoed(&mut talking, b"still here"));
            match ends.recv_timeout(Duration::from_millis(100)) {
                Ok(end) => {
                    ended = Some(end);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let (port, result) = ended.expect("no connection ended");
        assert_eq!(port, quiet_port, "the talking connection was ended");
        assert_eq!(result.map_err(|e| e.kind()), Err(ErrorKind::TimedOut));
        // The quiet caller's connection is closed; the talking one goes on for longer than
        // the idle time, and is not ended.
        let mut rest = Vec::new();
        assert!(!matches!(quiet.read_to_end(&mut rest), Ok(n) if n > 0));
        for _ in 0..30 {
            assert!(echoed(&mut talking, b"and on"));
            match ends.recv_timeout(Duration::from_millis(100)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                other => panic!("the talking connection: {other:?}"),
            }
        }
    }
}
