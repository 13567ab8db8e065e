//! The node's xDS relay process (`crate::relay`): one `outpost relay` for every group whose
//! Envoy reaches Consul's gRPC through a unix socket. The agent writes the list of sockets
//! and Consul's gRPC address to `run_dir/relay.list`, starts the relay when one is needed
//! (or adopts the one an earlier agent started: it is recorded with the tasks), sends it
//! SIGHUP when the list changes, starts it again if it dies, and stops it when no group
//! needs it (or on teardown). Live ADS streams survive all of that but the relay's death.

use crate::files;
use crate::supervise::{self, Proc, Spec, Stopping};
use log::{info, warn};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Its key in the records of running processes (no group is named "").
pub const RELAY_RECORD: &str = "";
/// Its name in those records and in logs.
pub const RELAY_TASK: &str = "consul-grpc-relay";
/// It logs only connection failures: this many files of `LOG_BYTES` are plenty.
const LOG_FILES: u32 = 2;
const LOG_BYTES: u64 = 1 << 20;
/// How soon a relay that died is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

pub struct NodeRelay {
    run_dir: PathBuf,
    sockets: BTreeSet<PathBuf>,
    /// The Connect native groups' HTTP sockets, each with Consul's HTTP address.
    http_sockets: Vec<(PathBuf, String)>,
    /// Consul's gRPC `host:port`; empty until Consul has answered.
    target: String,
    /// The list as last written; a differing one is written and signalled.
    written: Option<String>,
    proc: Option<Proc>,
    next_start: Instant,
}

impl NodeRelay {
    pub fn new(run_dir: &str) -> NodeRelay {
        NodeRelay {
            run_dir: PathBuf::from(run_dir),
            sockets: BTreeSet::new(),
            http_sockets: Vec::new(),
            target: String::new(),
            written: None,
            proc: None,
            next_start: Instant::now(),
        }
    }

    fn list_path(&self) -> PathBuf {
        self.run_dir.join("relay.list")
    }

    /// Takes over the relay an earlier agent started, if it still runs, with the target
    /// that agent gave it (kept until Consul answers this agent: new connections, such as
    /// an Envoy's reconnect, keep working meanwhile).
    pub fn adopt(&mut self, proc: Proc) -> bool {
        if !proc.alive() {
            return false;
        }
        self.proc = Some(proc);
        self.written = std::fs::read_to_string(self.list_path()).ok();
        if let Some(text) = &self.written {
            self.target = crate::relay::List::parse(text).to;
        }
        true
    }

    /// The sockets to serve (one per group that needs one).
    pub fn set_sockets(&mut self, sockets: BTreeSet<PathBuf>) {
        self.sockets = sockets;
    }

    /// The HTTP sockets to serve (one per group with a Connect native service).
    pub fn set_http_sockets(&mut self, sockets: Vec<(PathBuf, String)>) {
        self.http_sockets = sockets;
    }

    /// Consul's gRPC address, once known.
    pub fn set_target(&mut self, to: &str) {
        self.target = to.to_string();
    }

    pub fn proc(&self) -> Option<Proc> {
        self.proc
    }

    /// Brings the relay in line: writes a changed list (SIGHUP to the running relay), starts
    /// it when needed and not running, stops it when no socket is left. Whether the running
    /// process changed (the records must be saved).
    pub fn tick(&mut self, now: Instant) -> bool {
        // Reaped first if it is our child (a zombie still looks alive), as tasks are.
        if self
            .proc
            .is_some_and(|p| supervise::reap(p.pid).is_some() || !p.alive())
        {
            warn!(
                "the xDS relay (pid {}) exited; starting it again",
                self.proc.map_or(0, |p| p.pid)
            );
            self.proc = None;
            self.next_start = now + RESTART_DELAY;
        }
        if self.sockets.is_empty() && self.http_sockets.is_empty() {
            return self.stop();
        }
        let list = crate::relay::List {
            to: self.target.clone(),
            listen: self.sockets.iter().cloned().collect(),
            http: self.http_sockets.clone(),
        }
        .render();
        if self.written.as_deref() != Some(list.as_str()) {
            if let Err(e) = files::write_private(&self.list_path(), list.as_bytes()) {
                warn!("cannot write {}: {e}", self.list_path().display());
                return false;
            }
            self.written = Some(list);
            if let Some(proc) = self.proc {
                proc.signal(Signal::SIGHUP);
            }
        }
        if self.proc.is_some() || now < self.next_start {
            return false;
        }
        self.start(now)
    }

    fn start(&mut self, now: Instant) -> bool {
        // After an upgrade replaced the binary under a running agent, the kernel names the
        // old one "<path> (deleted)": the relay starts from the new one at the same path.
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .map(|p| p.trim_end_matches(" (deleted)").to_string())
            .unwrap_or_else(|_| "/usr/local/bin/outpost".into());
        let spec = Spec {
            argv: vec![
                exe,
                "relay".into(),
                "--sockets".into(),
                self.list_path().display().to_string(),
            ],
            env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
            dir: self.run_dir.clone(),
            netns: None,
            user: None,
            caps: None,
            stdout: self.log_path("stdout"),
            stderr: self.log_path("stderr"),
            journal: Some(supervise::journal_in(&self.run_dir)),
            resolv_conf: None,
            // The relay is the agent's own: not a task, no limits, the host's view.
            cgroup: None,
            exec_view: false,
        };
        match supervise::begin(&spec).and_then(|s| s.confirm()) {
            Ok(proc) => {
                info!(
                    "started the xDS relay (pid {}) for {} socket(s)",
                    proc.pid,
                    self.sockets.len() + self.http_sockets.len()
                );
                self.proc = Some(proc);
                true
            }
            Err(e) => {
                warn!("cannot start the xDS relay: {e}; retrying in {RESTART_DELAY:?}");
                self.next_start = now + RESTART_DELAY;
                false
            }
        }
    }

    /// Its log files under `run_dir` (it logs only connection failures).
    fn log_path(&self, stream: &str) -> PathBuf {
        self.run_dir.join(format!("{RELAY_TASK}.{stream}.0"))
    }

    /// Keeps its logs to `LOG_FILES` files of `LOG_BYTES`.
    pub fn rotate_logs(&self) {
        for stream in ["stdout", "stderr"] {
            if let Err(e) = supervise::rotate(&self.log_path(stream), LOG_FILES, LOG_BYTES) {
                warn!("cannot rotate the relay's {stream}: {e}");
            }
        }
    }

    /// Stops the relay (SIGTERM, then SIGKILL after 2 s); whether one ran.
    pub fn stop(&mut self) -> bool {
        let Some(proc) = self.proc.take() else {
            return false;
        };
        stop(proc, &self.run_dir);
        self.written = None;
        true
    }
}

/// Stops a relay process and removes its list and logs.
pub fn stop(proc: Proc, run_dir: &Path) {
    supervise::stop_all(&[Stopping {
        scope: supervise::Scope::Process,
        what: format!("the xDS relay (pid {})", proc.pid),
        proc,
        signal: Signal::SIGTERM,
        delay: Duration::ZERO,
        timeout: Duration::from_secs(2),
    }]);
    let _ = std::fs::remove_file(run_dir.join("relay.list"));
    for stream in ["stdout", "stderr"] {
        for n in 0..LOG_FILES {
            let _ = std::fs::remove_file(run_dir.join(format!("{RELAY_TASK}.{stream}.{n}")));
        }
    }
}
