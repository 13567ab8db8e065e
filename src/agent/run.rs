//! `outpost run`: the long-running agent. It reconciles every group (network, Consul
//! registration and bootstraps, processes), then keeps them converged from one loop on
//! smol's reactor (`serve`): signals through a signalfd, process exits through pidfds, the
//! status socket and a timer for the earliest due work (restart delays, Consul retries and
//! anti-entropy, log rotation, the systemd watchdog). Each pass looks at everything; the
//! loop then waits for the next of those events. What waits on Consul (registration, token
//! preflight, bootstraps) runs on smol's blocking pool (`workers`), and the loop awaits it
//! with the rest.
//!
//! SIGTERM/SIGINT: the agent exits and the groups keep running; the next `run` adopts them
//! from `run_dir/processes.json` (pid + start time). SIGHUP: the config is read again; a
//! broken file changes nothing (and says why); otherwise groups are added, changed and
//! removed.

pub use super::records::*;
use super::relay::{NodeRelay, RELAY_RECORD, RELAY_TASK};
use super::script_checks::{self, ScriptChecks};
pub use super::status::*;
use super::workers::*;
use super::{Tokens, has_services, prepare, relay_socket, write_bootstraps, write_native_files};
use crate::alloc::{Phase, Runner, TaskState};
use crate::config::ValidConfig;
use crate::consul::anti_entropy::{self, QUICK_CHECK};
use crate::envoy::version::EnvoyVersion;
use crate::error::{Context, Error};
use crate::plan::{GroupPlan, HostFacts, Plan};
use crate::{envoy, files, net};
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use smol::Async;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(250);
const ROTATE_EVERY: Duration = Duration::from_secs(10);

/// Consul's side of the loop: when to try again and what went wrong last.
struct ConsulState {
    next_try: Instant,
    /// The next presence check (anti-entropy between full syncs).
    next_check: Instant,
    last_error: Option<Error>,
    synced_once: bool,
}

struct Agent {
    path: PathBuf,
    valid: Arc<ValidConfig>,
    host: HostFacts,
    plan: Arc<Plan>,
    runners: Vec<Runner>,
    consul: ConsulState,
    tokens: Tokens,
    workers: Workers,
    /// Each Envoy binary the proxies run, with its version (read once per binary).
    envoys: Vec<(String, EnvoyVersion)>,
    /// Whether `envoys` was compared with the versions Consul supports.
    envoys_compared: bool,
    /// The one relay process for every group's xDS socket.
    relay: NodeRelay,
    script_checks: ScriptChecks,
}

/// The xDS sockets the plan's groups need a relay for.
fn relay_sockets(valid: &ValidConfig, plan: &Plan) -> BTreeSet<PathBuf> {
    plan.groups
        .iter()
        .filter_map(|g| relay_socket(valid, g))
        .collect()
}

/// The Envoy binaries the plan's proxies run, each with its version: `known` for binaries
/// read before, `envoy --version` for the others. An error, before anything changes, when
/// one is missing or does not answer like Envoy.
fn envoy_versions(
    plan: &Plan,
    known: &[(String, EnvoyVersion)],
) -> Result<Vec<(String, EnvoyVersion)>, Error> {
    let mut envoys: Vec<(String, EnvoyVersion)> = Vec::new();
    for group in &plan.groups {
        let proxies = group.services.iter().filter_map(|s| s.proxy.as_ref());
        for proxy in proxies.filter(|p| p.is_envoy()) {
            let Some(binary) = group
                .tasks
                .iter()
                .find(|t| t.name == proxy.task)
                .and_then(|t| t.argv.first())
            else {
                continue;
            };
            if envoys.iter().any(|(b, _)| b == binary) {
                continue;
            }
            let version = match known.iter().find(|(b, _)| b == binary) {
                Some((_, v)) => *v,
                None => {
                    envoy::version::read(binary).with_context(|| format!("group {}", group.name))?
                }
            };
            envoys.push((binary.clone(), version));
        }
    }
    Ok(envoys)
}

/// A group's runner; a group without services needs no Consul and may start at once.
fn new_runner(group: &GroupPlan) -> Runner {
    let mut runner = Runner::new(group);
    if group.services.is_empty() {
        runner.release();
    }
    runner
}

impl Agent {
    fn start(path: &Path, valid: ValidConfig, host: HostFacts) -> Result<Agent, Error> {
        let plan = prepare(&valid, &host)?;
        let envoys = envoy_versions(&plan, &[])?;
        for (binary, version) in &envoys {
            info!("Envoy {version} at {binary}");
        }
        net::apply(&plan.bridge, &plan.net_groups())?;
        info!("network applied: {} group(s)", plan.groups.len());
        let cgroups = crate::cgroup::host();
        info!(
            "cgroups: {}; tasks under {}",
            cgroups.describe(),
            plan.cgroup_parent
        );
        for gap in cgroups.gaps() {
            warn!("cgroups: {gap}");
        }
        let records = load_records(&plan.run_dir);
        stop_strays(&records, &plan);
        super::remove_orphan_dirs(&plan);
        let mut relay = NodeRelay::new(&plan.run_dir);
        if let Some((_, proc, _)) = group_records(&records, RELAY_RECORD).first()
            && relay.adopt(*proc)
        {
            info!(
                "adopted the xDS relay (pid {}) from the previous agent",
                proc.pid
            );
        }
        relay.set_sockets(relay_sockets(&valid, &plan));
        relay.set_http_sockets(super::native_sockets(&valid, &plan));
        let mut runners = Vec::new();
        for group in &plan.groups {
            let mut runner = new_runner(group);
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
            valid: Arc::new(valid),
            host,
            plan: Arc::new(plan),
            runners,
            consul: ConsulState {
                next_try: Instant::now(),
                next_check: Instant::now() + QUICK_CHECK,
                last_error: None,
                synced_once: false,
            },
            tokens: Tokens::new(),
            workers: Workers::new(),
            envoys,
            envoys_compared: false,
            relay,
            script_checks: ScriptChecks::default(),
        };
        agent.save_records();
        Ok(agent)
    }

    /// Registers, and releases the groups that waited for it; retried every few seconds
    /// while Consul does not answer, and repeated every `sync_interval` (anti-entropy).
    /// The work runs on a worker; `finish` takes its outcome.
    fn consul_step(&mut self, now: Instant) {
        if self.workers.syncing {
            return;
        }
        if now < self.consul.next_try {
            self.presence_check(now);
            return;
        }
        if !has_services(&self.plan) {
            self.consul.next_try = now + self.valid.config.consul.sync_interval.0;
            return;
        }
        let waiting = self.groups_in(Phase::Waiting);
        let failed = self.groups_in(Phase::Failed);
        let (valid, plan) = (self.valid.clone(), self.plan.clone());
        self.workers.spawn(move || {
            let result = sync_and_bootstrap(&valid, &plan, &waiting, &failed);
            Outcome::Synced {
                plan,
                failed,
                result,
            }
        });
        self.workers.syncing = true;
    }

    fn groups_in(&self, phase: Phase) -> Vec<String> {
        self.runners
            .iter()
            .filter(|r| r.phase == phase)
            .map(|r| r.name.clone())
            .collect()
    }

    /// Between full syncs, every `QUICK_CHECK`: does Consul still have every service? A
    /// restarted Consul agent forgets them all; the next full sync is then due at once.
    fn presence_check(&mut self, now: Instant) {
        if self.workers.checking || now < self.consul.next_check {
            return;
        }
        self.consul.next_check = now + QUICK_CHECK;
        if !self.consul.synced_once || self.consul.last_error.is_some() {
            return;
        }
        let mut ids = Vec::new();
        // A failed group's services are deregistered on purpose.
        let failed = self.groups_in(Phase::Failed);
        let registered = self
            .plan
            .groups
            .iter()
            .filter(|g| !failed.contains(&g.name));
        for service in registered.flat_map(|g| &g.services) {
            ids.push(service.id.clone());
            if let Some(proxy) = &service.proxy {
                ids.push(proxy.id.clone());
            }
        }
        let consul = self.valid.clone();
        self.workers.checking = true;
        self.workers.spawn(move || {
            let client = crate::consul::client::Client::new(&consul.config.consul);
            // A failed check says nothing: the full sync notices and reports a down Consul.
            let missing = client
                .ok()
                .and_then(|c| anti_entropy::missing(&c, &ids).ok())
                .flatten();
            Outcome::Checked { missing }
        });
    }

    /// Envoy gets a fresh bootstrap before each restart, as Nomad's hook runs on every
    /// start (the token may have changed; secrets are never reused from an old start). The
    /// restart waits for it; a failed refresh restarts Envoy with its previous bootstrap.
    fn refresh_bootstraps(&mut self, now: Instant) {
        let due: Vec<(String, String)> = self
            .runners
            .iter()
            .flat_map(|r| {
                r.sidecar_restarts_due(now)
                    .into_iter()
                    .map(|task| (r.name.clone(), task))
            })
            .filter(|key| !self.workers.refreshing.contains(key))
            .collect();
        for (group, task) in due {
            let (valid, plan, tokens) =
                (self.valid.clone(), self.plan.clone(), self.tokens.clone());
            let key = (group.clone(), task.clone());
            self.workers.spawn(move || {
                let only = || plan.groups.iter().filter(|g| g.name == group);
                // Envoy's bootstrap, or the built-in proxy's token file, written anew.
                let error = write_bootstraps(&valid, only(), &tokens, Some(&task))
                    .and_then(|()| write_native_files(&valid, only(), &tokens))
                    .err();
                Outcome::Refreshed { group, task, error }
            });
            self.workers.refreshing.insert(key);
        }
    }

    /// Runs the script checks that are due in running groups, each on a worker.
    fn run_script_checks(&mut self, now: Instant) {
        for runner in &self.runners {
            let Some(group) = self.plan.groups.iter().find(|g| g.name == runner.name) else {
                continue;
            };
            if runner.phase != Phase::Running {
                self.script_checks.forget(group);
                continue;
            }
            for check in self.script_checks.due(group, now) {
                let (valid, plan) = (self.valid.clone(), self.plan.clone());
                let token = self.tokens.get(&check.service_id).cloned();
                let (group, check_id) = (group.name.clone(), check.check_id.clone());
                self.workers.spawn(move || {
                    let planned = plan.groups.iter().find(|g| g.name == group);
                    let check = planned
                        .and_then(|g| g.script_checks.iter().find(|c| c.check_id == check_id));
                    let result = match (planned, check) {
                        (Some(g), Some(c)) => script_checks::run(&valid, g, c, token.as_deref()),
                        _ => Err(Error::permanent("no longer planned")),
                    };
                    Outcome::ScriptChecked { check_id, result }
                });
            }
        }
    }

    /// Takes what a worker did.
    fn finish(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Synced {
                plan,
                failed,
                result,
            } => {
                self.workers.syncing = false;
                if !Arc::ptr_eq(&plan, &self.plan) {
                    // A reload came in between: sync the new plan now.
                    self.consul.next_try = now;
                    return;
                }
                // A group failed (or came back) while it ran: its registrations follow now.
                let failed_changed = failed != self.groups_in(Phase::Failed);
                match result {
                    Ok(synced) => self.synced(synced, now),
                    Err(e) => {
                        if self.consul.last_error.as_ref() != Some(&e) {
                            warn!("{e}; retrying every {}s", CONSUL_RETRY.as_secs());
                        }
                        self.consul.last_error = Some(e);
                        self.consul.next_try = now + CONSUL_RETRY;
                    }
                }
                if failed_changed {
                    self.consul.next_try = now;
                }
            }
            Outcome::ScriptChecked { check_id, result } => {
                self.script_checks.finished(&check_id, &result);
            }
            Outcome::Checked { missing } => {
                self.workers.checking = false;
                if let Some(id) = missing {
                    info!("Consul lost service {id} (agent restarted?); registering again");
                    self.consul.next_try = now;
                }
            }
            Outcome::Refreshed { group, task, error } => {
                self.workers
                    .refreshing
                    .remove(&(group.clone(), task.clone()));
                if let Some(e) = error {
                    warn!("group {group}: {e}; restarting {task} with its previous bootstrap");
                }
                if let Some(runner) = self.runners.iter_mut().find(|r| r.name == group) {
                    runner.bootstrap_refreshed(&task);
                }
            }
        }
    }

    fn synced(&mut self, synced: Synced, now: Instant) {
        if self.consul.last_error.take().is_some() {
            info!("Consul answers again");
        }
        // Before the released groups start their Envoys: the relay learns where to go.
        if let Some(to) = &synced.relay_target {
            self.relay.set_target(to);
            if self.relay.tick(now) {
                self.save_records();
            }
        }
        if let Some(supported) = &synced.supported_envoy {
            self.compare_envoys(supported);
        }
        self.tokens = synced.tokens;
        self.consul.synced_once = true;
        // The sync gave back the tokens of groups that went: their directories can go.
        super::remove_orphan_dirs(&self.plan);
        self.consul.next_try = match synced.unreleased {
            0 => now + self.valid.config.consul.sync_interval.0,
            _ => now + CONSUL_RETRY,
        };
        for runner in &mut self.runners {
            if !synced.released.contains(&runner.name) {
                continue;
            }
            runner.release();
        }
    }

    /// Warns, once per binary, about an Envoy outside the versions Consul supports (it may
    /// still work; Consul's xDS is tested only against those).
    fn compare_envoys(&mut self, supported: &[String]) {
        if self.envoys_compared || supported.is_empty() {
            return;
        }
        self.envoys_compared = true;
        for (binary, version) in &self.envoys {
            if !version.supported_by(supported) {
                warn!(
                    "Envoy {version} ({binary}) is not among the versions this Consul supports ({}); \
                     it may still work, but Consul's xDS is tested only with those",
                    supported.join(", ")
                );
            }
        }
    }

    fn save_records(&self) {
        let mut records: BTreeMap<String, Vec<TaskRecord>> = self
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
        if let Some(p) = self.relay.proc() {
            let relay = TaskRecord {
                task: RELAY_TASK.into(),
                pid: p.pid,
                start_time: p.start_time,
                restarts: 0,
            };
            records.insert(RELAY_RECORD.into(), vec![relay]);
        }
        let path = records_path(&self.plan.run_dir);
        let text = miniserde::json::to_string(&records);
        match files::write_private(&path, text.as_bytes()) {
            // Every process started so far is in the records now.
            Ok(()) => crate::supervise::clear_journal(&journal_path(&self.plan.run_dir)),
            Err(e) => error!(
                "cannot record the running processes in {}: {e}",
                path.display()
            ),
        }
    }

    /// SIGHUP: a valid new config replaces the old one group by group.
    fn reload(&mut self) {
        let valid = match crate::load_config(&self.path) {
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
        let envoys = match envoy_versions(&plan, &self.envoys) {
            Ok(envoys) => envoys,
            Err(e) => {
                error!("reload: {e}; keeping the running configuration");
                return;
            }
        };
        if envoys != self.envoys {
            self.envoys = envoys;
            self.envoys_compared = false;
        }
        let same = |a: &GroupPlan, b: &GroupPlan| {
            miniserde::json::to_string(a) == miniserde::json::to_string(b)
        };
        // Groups that go or change stop first, before their network is touched.
        let mut kept = Vec::new();
        let mut going = Vec::new();
        for runner in std::mem::take(&mut self.runners) {
            let old = self.plan.groups.iter().find(|g| g.name == runner.name);
            let new = plan.groups.iter().find(|g| g.name == runner.name);
            match (old, new) {
                (Some(o), Some(n)) if same(o, n) => kept.push(runner),
                _ => {
                    info!("reload: stopping group {}", runner.name);
                    going.push(runner);
                }
            }
        }
        crate::alloc::stop_all(&mut going);
        super::remove_orphan_dirs(&plan);
        if let Err(e) = net::apply(&plan.bridge, &plan.net_groups()) {
            error!("reload: network: {e}");
        }
        for group in &plan.groups {
            if kept.iter().any(|r| r.name == group.name) {
                continue;
            }
            info!("reload: starting group {}", group.name);
            kept.push(new_runner(group));
        }
        self.runners = kept;
        self.relay.set_sockets(relay_sockets(&valid, &plan));
        self.relay
            .set_http_sockets(super::native_sockets(&valid, &plan));
        self.valid = Arc::new(valid);
        self.plan = Arc::new(plan);
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
        if let Some(at) = self.script_checks.next_due() {
            next = next.min(at);
        }
        // While a sync runs, its due time has passed: the loop waits for its outcome.
        if !self.workers.syncing {
            next = next.min(self.consul.next_try);
        }
        if !self.workers.checking {
            next = next.min(self.consul.next_check);
        }
        next.saturating_duration_since(now)
    }

    fn status_json(&self) -> String {
        let groups: Vec<GroupStatus> = self
            .runners
            .iter()
            .map(|r| {
                let planned = self.plan.groups.iter().find(|g| g.name == r.name);
                GroupStatus {
                    name: r.name.clone(),
                    phase: format!("{:?}", r.phase).to_lowercase(),
                    address: planned
                        .and_then(|g| g.netns.as_ref())
                        .map(|n| n.address.clone()),
                    address_ipv6: planned
                        .and_then(|g| g.netns.as_ref())
                        .and_then(|n| n.address_ipv6.clone()),
                    ports: planned.map(|g| {
                        g.ports
                            .iter()
                            .map(|p| format!("{} {} -> {}", p.label, p.host_port, p.netns_port))
                            .collect()
                    }),
                    netns: r.netns.clone(),
                    tasks: r
                        .tasks
                        .iter()
                        .map(|t| TaskStatus {
                            name: t.plan_name.clone(),
                            lifecycle: t.lifecycle.to_string(),
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
                            events: Some(t.events.iter().cloned().collect()),
                            admin: planned
                                .into_iter()
                                .flat_map(|g| &g.services)
                                .filter_map(|s| s.proxy.as_ref())
                                .find(|p| !p.is_envoy() && p.task == t.plan_name)
                                .map(|p| p.envoy_admin.clone()),
                        })
                        .collect(),
                }
            })
            .collect();
        miniserde::json::to_string(&Status {
            pid: std::process::id(),
            config: self.path.display().to_string(),
            consul_synced: self.consul.synced_once && self.consul.last_error.is_none(),
            consul_last_error: self.consul.last_error.as_ref().map(Error::to_string),
            relay_pid: self.relay.proc().map(|p| p.pid),
            envoy: Some(
                self.envoys
                    .iter()
                    .map(|(binary, version)| EnvoyStatus {
                        binary: binary.clone(),
                        version: version.to_string(),
                    })
                    .collect(),
            ),
            groups,
        })
    }
}

/// What woke the loop.
enum Wake {
    /// A signal, a status query, a child's exit or a timer: the loop's pass looks at all.
    Event,
    /// Consul work finished.
    Worker(Outcome),
}

/// The agent's event sources, registered with smol's reactor.
struct Sources {
    signals: Async<SignalFd>,
    status: Async<UnixListener>,
    /// A pidfd per running process (tasks and Envoys), by (pid, start time); readable once
    /// the process exits.
    children: BTreeMap<(i32, u64), Async<OwnedFd>>,
}

impl Sources {
    /// Watches exactly the processes that run now.
    fn watch_children(&mut self, agent: &Agent) {
        let running: BTreeSet<(i32, u64)> = agent
            .runners
            .iter()
            .flat_map(|r| r.tasks.iter())
            .filter_map(|t| match t.state {
                TaskState::Running(p) => Some((p.pid, p.start_time)),
                _ => None,
            })
            .collect();
        self.children.retain(|key, _| running.contains(key));
        for key in running {
            if self.children.contains_key(&key) {
                continue;
            }
            // No pidfd (an exited process, or a kernel before 5.3): the timer's pass looks.
            if let Some(fd) = crate::supervise::pidfd(key.0)
                && let Ok(watched) = Async::new(fd)
            {
                self.children.insert(key, watched);
            }
        }
    }

    /// Waits until something happens or `deadline` passes.
    async fn next(&self, workers: &mut Workers, deadline: Instant) -> Wake {
        let mut timer = smol::Timer::at(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = workers.poll_finished(cx) {
                return Poll::Ready(Wake::Worker(outcome));
            }
            let ready = self.signals.poll_readable(cx).is_ready()
                || self.status.poll_readable(cx).is_ready()
                || self
                    .children
                    .values()
                    .any(|child| child.poll_readable(cx).is_ready())
                || Pin::new(&mut timer).poll(cx).is_ready();
            match ready {
                true => Poll::Ready(Wake::Event),
                false => Poll::Pending,
            }
        })
        .await
    }
}

/// Runs the agent until SIGTERM/SIGINT./// Runs the agent until SIGTERM/SIGINT.
pub fn run(path: &Path, valid: ValidConfig, host: HostFacts) -> Result<(), Error> {
    let run_dir = valid.config.agent.run_dir.clone();
    if let Some(pid) = running_agent(&run_dir) {
        return Err(Error::permanent(format!(
            "an outpost agent (pid {pid}) already runs for {run_dir}; stop it first"
        )));
    }
    // Blocked before smol's threads (its reactor's, the blocking pool's) exist, so they
    // inherit the mask and every signal comes through the signalfd.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;

    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {run_dir}"))?;
    write_pid_file(&run_dir)?;
    let socket = socket_path(&run_dir);
    let _ = std::fs::remove_file(&socket);
    let status = Async::<UnixListener>::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    let sources = Sources {
        signals: Async::new(signals).context("signalfd")?,
        status,
        children: BTreeMap::new(),
    };

    let agent = Agent::start(path, valid, host)?;
    smol::block_on(serve(agent, sources, &run_dir, &socket))
}

/// The loop: one pass over everything (Consul, the relay, every group's tasks, logs, the
/// watchdog), then wait for the next event or the earliest timer.
async fn serve(
    mut agent: Agent,
    mut sources: Sources,
    run_dir: &str,
    socket: &Path,
) -> Result<(), Error> {
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
        agent.run_script_checks(now);
        // The relay first: a group's sockets are served before its Envoy starts.
        let mut changed = agent.relay.tick(now);
        let mut wants_consul = false;
        for r in &mut agent.runners {
            changed |= r.tick(now);
            wants_consul |= std::mem::take(&mut r.wants_consul);
        }
        // Every group forked what it starts; now see that each exec'd.
        for r in &mut agent.runners {
            changed |= r.confirm_starts(now);
        }
        if wants_consul {
            agent.consul.next_try = now;
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
            agent.relay.rotate_logs();
            last_rotate = now;
        }
        if let Some(every) = watchdog
            && now - last_watchdog >= every
        {
            notify("WATCHDOG=1");
            last_watchdog = now;
        }

        sources.watch_children(&agent);
        let deadline = Instant::now() + agent.next_timeout(Instant::now());
        if let Wake::Worker(outcome) = sources.next(&mut agent.workers, deadline).await {
            agent.finish(outcome, Instant::now());
        }

        while let Ok(Some(info)) = sources.signals.get_ref().read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    agent.save_records();
                    let _ = std::fs::remove_file(socket);
                    let _ = std::fs::remove_file(pid_path(run_dir));
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
        while let Ok((mut stream, _)) = sources.status.get_ref().accept() {
            use std::io::Write;
            // Small (a few KiB for 20 groups), well under the socket's buffer: written at once.
            let _ = stream.set_nonblocking(false);
            let _ = stream.write_all(agent.status_json().as_bytes());
        }
    }
}
