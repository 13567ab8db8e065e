//! `outpost run`: the long-running agent. It reconciles every group (network, Consul
//! registration and bootstraps, processes), then keeps them converged from one plain poll
//! loop — signals through a signalfd, process exits through pidfds, the status socket, and
//! timers (restart delays, Consul retries and anti-entropy, log rotation, the systemd
//! watchdog). No async runtime: every wait is one `poll`.
//!
//! SIGTERM/SIGINT: the agent exits and the groups keep running; the next `run` adopts them
//! from `run_dir/processes.json` (pid + start time). SIGHUP: the config is read again; a
//! broken file changes nothing (and says why); otherwise groups are added, changed and
//! removed.

use super::{
    Tokens, has_services, prepare, relay_socket, relay_target, sync_consul, write_bootstraps,
};
use crate::alloc::{Phase, Runner, TaskState};
use crate::config::{self, ValidConfig};
use crate::plan::{GroupPlan, HostFacts, Plan};
use crate::supervise::Proc;
use crate::{files, net};
use log::{error, info, warn};
use miniserde::{Deserialize, Serialize};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(250);
const CONSUL_RETRY: Duration = Duration::from_secs(5);
const ROTATE_EVERY: Duration = Duration::from_secs(10);

/// One running task as recorded for the next agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskRecord {
    pub task: String,
    pub pid: i32,
    pub start_time: u64,
    pub restarts: u32,
}

pub fn records_path(run_dir: &str) -> PathBuf {
    Path::new(run_dir).join("processes.json")
}

pub fn pid_path(run_dir: &str) -> PathBuf {
    Path::new(run_dir).join("outpost.pid")
}

pub fn socket_path(run_dir: &str) -> PathBuf {
    Path::new(run_dir).join("outpost.sock")
}

pub fn load_records(run_dir: &str) -> BTreeMap<String, Vec<TaskRecord>> {
    std::fs::read_to_string(records_path(run_dir))
        .ok()
        .and_then(|t| miniserde::json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The recorded processes of `group`, as the runner takes them.
pub fn group_records(
    records: &BTreeMap<String, Vec<TaskRecord>>,
    group: &str,
) -> Vec<(String, Proc, u32)> {
    records
        .get(group)
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r.task.clone(),
                Proc {
                    pid: r.pid,
                    start_time: r.start_time,
                },
                r.restarts,
            )
        })
        .collect()
}

/// Consul's side of the loop: when to try again and what went wrong last.
struct ConsulState {
    next_try: Instant,
    last_error: Option<String>,
    synced_once: bool,
}

struct Agent {
    path: PathBuf,
    valid: ValidConfig,
    host: HostFacts,
    plan: Plan,
    runners: Vec<Runner>,
    consul: ConsulState,
    tokens: Tokens,
}

/// `sd_notify` without libsystemd: one datagram to `$NOTIFY_SOCKET` (`@` = abstract).
fn notify(message: &str) {
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

/// A group's runner; a group without services needs no Consul and may start at once.
fn new_runner(valid: &ValidConfig, group: &GroupPlan) -> Runner {
    let mut runner = Runner::new(group, relay_socket(valid, group));
    if group.services.is_empty() {
        runner.release();
    }
    runner
}

impl Agent {
    fn start(path: &Path, valid: ValidConfig, host: HostFacts) -> Result<Agent, String> {
        let plan = prepare(&valid, &host)?;
        net::apply(&plan).map_err(|e| e.to_string())?;
        info!("network applied: {} group(s)", plan.groups.len());
        let records = load_records(&plan.run_dir);
        let mut runners = Vec::new();
        for group in &plan.groups {
            let mut runner = new_runner(&valid, group);
            let adopted = runner.adopt(&group_records(&records, &group.name));
            if adopted > 0 {
                info!(
                    "group {}: adopted {adopted} running task(s) from the previous agent",
                    group.name
                );
            }
            runners.push(runner);
        }
        let agent = Agent {
            path: path.to_path_buf(),
            valid,
            host,
            plan,
            runners,
            consul: ConsulState {
                next_try: Instant::now(),
                last_error: None,
                synced_once: false,
            },
            tokens: Tokens::new(),
        };
        agent.save_records();
        Ok(agent)
    }

    /// Registers, and releases the groups that waited for it; retried every few seconds
    /// while Consul does not answer, and repeated every `sync_interval` (anti-entropy).
    fn consul_step(&mut self, now: Instant) {
        if now < self.consul.next_try {
            return;
        }
        if !has_services(&self.plan) {
            self.consul.next_try = now + self.valid.config.consul.sync_interval.0;
            return;
        }
        match sync_consul(&self.valid, &self.plan, false) {
            Ok(tokens) => {
                if self.consul.last_error.take().is_some() {
                    info!("Consul answers again");
                }
                self.tokens = tokens;
                self.consul.synced_once = true;
                self.consul.next_try = now + self.valid.config.consul.sync_interval.0;
                self.release_waiting();
            }
            Err(e) => {
                if self.consul.last_error.as_deref() != Some(e.as_str()) {
                    warn!("{e}; retrying every {}s", CONSUL_RETRY.as_secs());
                }
                self.consul.last_error = Some(e);
                self.consul.next_try = now + CONSUL_RETRY;
            }
        }
    }

    /// Writes the bootstraps of waiting groups and lets them start.
    fn release_waiting(&mut self) {
        let waiting: Vec<String> = self
            .runners
            .iter()
            .filter(|r| r.phase == Phase::Waiting)
            .map(|r| r.name.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let groups = self
            .plan
            .groups
            .iter()
            .filter(|g| waiting.contains(&g.name));
        match write_bootstraps(&self.valid, groups, &self.tokens, None) {
            Ok(()) => {
                let client = crate::consul::client::Client::new(&self.valid.config.consul);
                let target = client.map(|c| relay_target(&self.valid, &c)).ok();
                for r in self
                    .runners
                    .iter_mut()
                    .filter(|r| waiting.contains(&r.name))
                {
                    if let Some(to) = &target {
                        r.set_relay_target(to);
                    }
                    r.release();
                }
            }
            Err(e) => {
                warn!("{e}; retrying");
                self.consul.next_try = Instant::now() + CONSUL_RETRY;
            }
        }
    }

    /// Envoy gets a fresh bootstrap before each restart, as Nomad's hook runs on every
    /// start (the token may have changed; secrets are never reused from an old start).
    fn refresh_bootstraps(&self, now: Instant) {
        for runner in &self.runners {
            for task in runner.sidecar_restarts_due(now) {
                let group = self.plan.groups.iter().filter(|g| g.name == runner.name);
                if let Err(e) = write_bootstraps(&self.valid, group, &self.tokens, Some(&task)) {
                    warn!("group {}: {e}", runner.name);
                }
            }
        }
    }

    fn save_records(&self) {
        let records: BTreeMap<String, Vec<TaskRecord>> = self
            .runners
            .iter()
            .map(|r| {
                let tasks = r
                    .records()
                    .into_iter()
                    .map(|(task, p, restarts)| TaskRecord {
                        task,
                        pid: p.pid,
                        start_time: p.start_time,
                        restarts,
                    })
                    .collect();
                (r.name.clone(), tasks)
            })
            .collect();
        let path = records_path(&self.plan.run_dir);
        let text = miniserde::json::to_string(&records);
        if let Err(e) = files::write_private(&path, text.as_bytes()) {
            error!(
                "cannot record the running processes in {}: {e}",
                path.display()
            );
        }
    }

    /// SIGHUP: a valid new config replaces the old one group by group.
    fn reload(&mut self) {
        let valid = match config::load(&self.path) {
            Ok(v) => v,
            Err(diagnostics) => {
                for d in &diagnostics {
                    error!("reload: {d}");
                }
                error!("reload: the config has errors; keeping the running configuration");
                return;
            }
        };
        let plan = match prepare(&valid, &self.host) {
            Ok(p) => p,
            Err(e) => {
                error!("reload: {e}; keeping the running configuration");
                return;
            }
        };
        let same = |a: &GroupPlan, b: &GroupPlan| {
            miniserde::json::to_string(a) == miniserde::json::to_string(b)
        };
        // Groups that go or change stop first, before their network is touched.
        let mut kept = Vec::new();
        for mut runner in std::mem::take(&mut self.runners) {
            let old = self.plan.groups.iter().find(|g| g.name == runner.name);
            let new = plan.groups.iter().find(|g| g.name == runner.name);
            match (old, new) {
                (Some(o), Some(n)) if same(o, n) => kept.push(runner),
                _ => {
                    info!("reload: stopping group {}", runner.name);
                    runner.stop();
                }
            }
        }
        if let Err(e) = net::apply(&plan) {
            error!("reload: network: {e}");
        }
        for group in &plan.groups {
            if kept.iter().any(|r| r.name == group.name) {
                continue;
            }
            info!("reload: starting group {}", group.name);
            kept.push(new_runner(&valid, group));
        }
        self.runners = kept;
        self.valid = valid;
        self.plan = plan;
        self.consul.next_try = Instant::now();
        self.save_records();
        info!("reload: done, {} group(s)", self.runners.len());
    }

    fn next_timeout(&self, now: Instant) -> Duration {
        let mut next = now + TICK;
        for r in &self.runners {
            if let Some(at) = r.next_due() {
                next = next.min(at);
            }
        }
        next = next.min(self.consul.next_try);
        next.saturating_duration_since(now)
    }

    fn status_json(&self) -> String {
        let groups: Vec<GroupStatus> = self
            .runners
            .iter()
            .map(|r| GroupStatus {
                name: r.name.clone(),
                phase: format!("{:?}", r.phase).to_lowercase(),
                tasks: r
                    .tasks
                    .iter()
                    .map(|t| TaskStatus {
                        name: t.plan_name.clone(),
                        lifecycle: t.lifecycle.clone(),
                        state: match t.state {
                            TaskState::Pending => "pending".into(),
                            TaskState::Running(_) => "running".into(),
                            TaskState::Restarting(_) => "restarting".into(),
                            TaskState::Done => "done".into(),
                            TaskState::Failed => "failed".into(),
                        },
                        pid: match t.state {
                            TaskState::Running(p) => Some(p.pid),
                            _ => None,
                        },
                        restarts: t.restarts,
                        last_error: t.last_error.clone(),
                    })
                    .collect(),
            })
            .collect();
        miniserde::json::to_string(&Status {
            pid: std::process::id(),
            config: self.path.display().to_string(),
            consul_synced: self.consul.synced_once && self.consul.last_error.is_none(),
            consul_last_error: self.consul.last_error.clone(),
            groups,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub config: String,
    pub consul_synced: bool,
    pub consul_last_error: Option<String>,
    pub groups: Vec<GroupStatus>,
}

#[derive(Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub phase: String,
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
}

/// The pid of a running agent for this `run_dir`, if any.
pub fn running_agent(run_dir: &str) -> Option<i32> {
    let text = std::fs::read_to_string(pid_path(run_dir)).ok()?;
    let (pid, start) = text.trim().split_once(' ')?;
    let proc = Proc {
        pid: pid.parse().ok()?,
        start_time: start.parse().ok()?,
    };
    proc.alive().then_some(proc.pid)
}

fn write_pid_file(run_dir: &str) -> Result<(), String> {
    let me = std::process::id() as i32;
    let start = crate::supervise::start_time(me).unwrap_or(0);
    files::write_private(&pid_path(run_dir), format!("{me} {start}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", pid_path(run_dir).display()))
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(path: &Path, valid: ValidConfig, host: HostFacts) -> Result<(), String> {
    let run_dir = valid.config.agent.run_dir.clone();
    if let Some(pid) = running_agent(&run_dir) {
        return Err(format!(
            "an outpost agent (pid {pid}) already runs for {run_dir}; stop it first"
        ));
    }
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;

    std::fs::create_dir_all(&run_dir).map_err(|e| format!("cannot create {run_dir}: {e}"))?;
    write_pid_file(&run_dir)?;
    let socket = socket_path(&run_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("status socket: {e}"))?;

    let mut agent = Agent::start(path, valid, host)?;
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .map(|us| Duration::from_micros(us / 2));
    let mut last_watchdog = Instant::now();
    let mut last_rotate = Instant::now();
    let mut ready_sent = false;
    info!(
        "agent running ({} group(s)); status on {}",
        agent.runners.len(),
        socket.display()
    );

    loop {
        let now = Instant::now();
        agent.consul_step(now);
        agent.refresh_bootstraps(now);
        let mut changed = false;
        for r in &mut agent.runners {
            changed |= r.tick(now);
        }
        if changed {
            agent.save_records();
        }
        if !ready_sent {
            // First reconcile done: every group is started or waiting for Consul.
            notify("READY=1");
            ready_sent = true;
        }
        if now - last_rotate > ROTATE_EVERY {
            for runner in &agent.runners {
                runner.rotate_logs();
            }
            last_rotate = now;
        }
        if let Some(every) = watchdog
            && now - last_watchdog >= every
        {
            notify("WATCHDOG=1");
            last_watchdog = now;
        }

        let pidfds: Vec<OwnedFd> = agent
            .runners
            .iter()
            .flat_map(|r| r.tasks.iter())
            .filter_map(|t| match t.state {
                TaskState::Running(p) => crate::supervise::pidfd(p.pid),
                _ => None,
            })
            .collect();
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            pidfds
                .iter()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = agent.next_timeout(Instant::now());
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let _ = poll(&mut fds, PollTimeout::from(ms));
        drop(fds);

        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    agent.save_records();
                    let _ = std::fs::remove_file(&socket);
                    let _ = std::fs::remove_file(pid_path(&run_dir));
                    info!("agent stopping; the groups keep running and the next `run` adopts them");
                    return Ok(());
                }
                Ok(Signal::SIGHUP) => {
                    info!("SIGHUP: reloading {}", agent.path.display());
                    agent.reload();
                }
                _ => {}
            }
        }
        while let Ok((mut stream, _)) = listener.accept() {
            use std::io::Write;
            let _ = stream.set_nonblocking(false);
            let _ = stream.write_all(agent.status_json().as_bytes());
        }
    }
}

/// `outpost status`: asks the running agent.
pub fn query_status(run_dir: &str) -> Result<Status, String> {
    use std::io::Read;
    let path = socket_path(run_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("no agent answers on {}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the agent's status: {e}"))?;
    miniserde::json::from_str(&text).map_err(|_| "the agent's status is not valid JSON".to_string())
}
