//! One group's lifecycle, in Nomad's order (reference/nomad-connect.md §3.1): sidecars
//! (prestart sidecar tasks: Envoy) started and waited for until their admin `/ready`
//! answers, then prestart tasks run to completion, then main and poststart tasks. Each task
//! is restarted by the group's restart policy (attempts within interval, delay, mode);
//! sidecars and main tasks restart even after exit 0, as in a Nomad service job. Stopping
//! goes in reverse: main tasks, then sidecars, each with its kill signal and timeout.
//!
//! Network and Consul are the agent's business; a runner only starts and watches processes,
//! and can take over processes an earlier agent started (`adopt`).

use crate::cgroup::{Limits, TaskCgroup};
use crate::error::{Context, Error};
use crate::plan::{GroupPlan, Lifecycle, RestartMode, TaskPlan};
use crate::supervise::{self, Proc, Spec};
use log::{info, warn};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a group is in its start sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for something outside (Consul registration, bootstraps).
    Waiting,
    Sidecars,
    Prestart,
    Main,
    Running,
    Stopped,
    /// A task failed for good: the group is stopped and starts again at `restart_at`.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running(Proc),
    /// Will be started again at this instant (restart delay).
    Restarting(Instant),
    /// A prestart task that finished with exit 0.
    Done,
    /// Restart policy `fail` gave up, or it could not be started at all.
    Failed,
}

#[derive(Debug)]
pub struct Task {
    pub plan_name: String,
    pub lifecycle: Lifecycle,
    pub spec: Spec,
    pub state: TaskState,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub kill_signal: nix::sys::signal::Signal,
    pub kill_timeout: Duration,
    /// How long the task runs on once stopping starts (Nomad's task `shutdown_delay`).
    pub shutdown_delay: Duration,
    /// Envoy's admin address for sidecars (`/ready` is asked there, in the namespace).
    pub ready_check: Option<String>,
    /// An Envoy whose restart is due only once the agent has written its bootstrap anew.
    awaiting_bootstrap: bool,
    /// Forked this pass, its exec not confirmed yet (see `Runner::confirm_starts`).
    starting: Option<supervise::Starting>,
    /// The task's `logs` block: files kept per stream and bytes per file.
    log_files: u32,
    log_bytes: u64,
    /// The task's last events (started, exited, failed), newest last, for `status`: a
    /// fixed few, so a crash-looping task costs no more memory than a quiet one.
    pub events: heapless::Deque<String, EVENTS_KEPT>,
    /// The group's resolv.conf, written before the task starts (see `resolv_conf` in its
    /// spec).
    resolv_text: Option<String>,
    /// The task's restart policy: its own `restart` block, else its group's (the plan
    /// resolved which).
    policy: Policy,
    window_start: Instant,
    window_count: u32,
    /// Its cgroup's OOM-kill count when it last started: more at its exit means the kernel
    /// killed it (or one of its processes) for its memory limit.
    oom_kills: u64,
}

/// How many events each task keeps for `status`.
pub const EVENTS_KEPT: usize = 5;

impl Task {
    /// Notes an event, stamped with the UTC time of day, dropping the oldest.
    fn event(&mut self, what: String) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self
            .events
            .push_back(format!("{h:02}:{m:02}:{s:02}Z {what}"));
    }
}

/// The restart policy (Nomad's `restart` block).
#[derive(Clone, Debug)]
pub struct Policy {
    pub attempts: u32,
    pub interval: Duration,
    pub delay: Duration,
    pub fail: bool,
}

#[derive(Debug)]
pub struct Runner {
    pub name: String,
    pub netns: Option<String>,
    pub phase: Phase,
    pub tasks: Vec<Task>,
    phase_since: Instant,
    /// The group registers services: it waits for Consul before each start.
    needs_consul: bool,
    /// Whether the agent should sync Consul now (the group waits again after a failure).
    pub wants_consul: bool,
    reschedule: Reschedule,
}

/// Nomad's reschedule of a failed allocation, on this node: the group starts again after
/// `base`, doubling each time up to `max`; the count resets once the group ran for `max`.
#[derive(Debug)]
struct Reschedule {
    base: Duration,
    max: Duration,
    count: u32,
    restart_at: Option<Instant>,
}

impl Reschedule {
    fn next_delay(&mut self, running_for: Duration) -> Duration {
        if running_for >= self.max {
            self.count = 0;
        }
        let delay = self
            .base
            .saturating_mul(2u32.saturating_pow(self.count))
            .min(self.max);
        self.count = self.count.saturating_add(1);
        delay
    }
}

/// How long sidecars may take to answer `/ready` before the group goes on anyway.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The start journal of the group's `run_dir` (a group's directory is
/// `run_dir/alloc/<group>`).
fn start_journal(group: &GroupPlan) -> Option<PathBuf> {
    let run_dir = Path::new(&group.alloc_dir).parent()?.parent()?;
    Some(supervise::journal_in(run_dir))
}

fn task_from_plan(group: &GroupPlan, t: &TaskPlan, ready: Option<String>) -> Task {
    let logs = Path::new(&group.alloc_dir).join("alloc/logs");
    let cgroup = crate::cgroup::host().tracks().then(|| {
        let r = &t.resources;
        let limits = Limits {
            cpu: r.cpu_mhz,
            memory: r.memory_mb,
            memory_max: r.memory_max_mb,
        };
        (TaskCgroup::new(&r.cgroup), limits)
    });
    Task {
        plan_name: t.name.clone(),
        lifecycle: t.lifecycle,
        spec: Spec {
            argv: t.argv.clone(),
            env: t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            dir: PathBuf::from(&t.dir),
            netns: group.netns.as_ref().map(|n| PathBuf::from(&n.path)),
            user: t.user.clone(),
            caps: Some(crate::caps::set_of(&t.capabilities)),
            stdout: logs.join(format!("{}.stdout.0", t.name)),
            stderr: logs.join(format!("{}.stderr.0", t.name)),
            // Where the task has a cgroup, that is the record of its processes.
            journal: cgroup.is_none().then(|| start_journal(group)).flatten(),
            resolv_conf: group.resolv_conf_path(),
            cgroup,
            exec_view: t.driver == "exec",
        },
        oom_kills: 0,
        resolv_text: group.resolv_conf.clone(),
        events: heapless::Deque::new(),
        state: TaskState::Pending,
        restarts: 0,
        last_error: None,
        kill_signal: t.kill_signal.0,
        kill_timeout: t.kill_timeout.0,
        shutdown_delay: t.shutdown_delay.0,
        ready_check: ready,
        awaiting_bootstrap: false,
        policy: Policy {
            attempts: t.restart.attempts,
            interval: t.restart.interval.0,
            delay: t.restart.delay.0,
            fail: t.restart.mode == RestartMode::Fail,
        },
        starting: None,
        log_files: t.logs.max_files,
        log_bytes: u64::from(t.logs.max_file_size_mb) << 20,
        window_start: Instant::now(),
        window_count: 0,
    }
}

impl Runner {
    pub fn new(group: &GroupPlan) -> Runner {
        let tasks: Vec<Task> = group
            .tasks
            .iter()
            .map(|t| {
                let ready = group
                    .services
                    .iter()
                    .filter_map(|s| s.proxy.as_ref())
                    .find(|s| s.task == t.name)
                    .map(|s| s.envoy_admin.clone());
                task_from_plan(group, t, ready)
            })
            .collect();
        Runner {
            name: group.name.clone(),
            netns: group.netns.as_ref().map(|n| n.name.clone()),
            phase: Phase::Waiting,
            tasks,
            phase_since: Instant::now(),
            needs_consul: !group.services.is_empty(),
            wants_consul: false,
            reschedule: Reschedule {
                base: group.reschedule.delay.0,
                max: group.reschedule.max_delay.0,
                count: 0,
                restart_at: None,
            },
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            info!("group {}: {:?} → {:?}", self.name, self.phase, phase);
            self.phase = phase;
            self.phase_since = Instant::now();
        }
    }

    /// Takes over the processes an earlier agent started, when they still run; a group
    /// whose tasks all run is `Running` without restarting anything.
    pub fn adopt(&mut self, records: &[(String, Proc, u32)]) -> usize {
        let mut adopted = 0;
        for task in &mut self.tasks {
            let recorded = records
                .iter()
                .find(|(n, _, _)| *n == task.plan_name)
                .filter(|(_, proc, _)| proc.alive());
            if let Some((_, proc, restarts)) = recorded {
                task.state = TaskState::Running(*proc);
                task.restarts = *restarts;
                adopted += 1;
                if let Some((cgroup, limits)) = &task.spec.cgroup
                    && !cgroup.contains(proc.pid)
                {
                    // Started by an agent without cgroups: in from now on, with what it
                    // forks from here.
                    let joined = cgroup.prepare(limits).and_then(|()| cgroup.join(proc.pid));
                    if let Err(e) = joined {
                        warn!("group {}: task {}: {e}", self.name, task.plan_name);
                    }
                }
            } else if let Some(proc) = task.spec.cgroup.as_ref().and_then(|(c, _)| first_in(c)) {
                // Never recorded (the agent stopped between fork and record): its cgroup
                // knows it.
                info!(
                    "group {}: task {} (pid {}) adopted from its cgroup",
                    self.name, task.plan_name, proc.pid
                );
                task.state = TaskState::Running(proc);
                adopted += 1;
            }
            if let (TaskState::Running(_), Some((cgroup, _))) = (&task.state, &task.spec.cgroup) {
                task.oom_kills = cgroup.oom_kills();
            }
        }
        let all = self
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Running(_)) || runs_to_completion(t));
        if adopted > 0 && all {
            for t in &mut self.tasks {
                // Prestart and poststart tasks ran; poststop tasks wait for the stop.
                if runs_to_completion(t)
                    && t.lifecycle != Lifecycle::Poststop
                    && t.state == TaskState::Pending
                {
                    t.state = TaskState::Done;
                }
            }
            self.set_phase(Phase::Running);
        }
        adopted
    }

    /// The processes to record, so the next agent can adopt them.
    pub fn records(&self) -> Vec<(String, Proc, u32)> {
        self.tasks
            .iter()
            .filter_map(|t| match t.state {
                TaskState::Running(p) => Some((t.plan_name.clone(), p, t.restarts)),
                _ => None,
            })
            .collect()
    }

    /// The group may start (its services are registered, its bootstraps written).
    pub fn release(&mut self) {
        if self.phase == Phase::Waiting {
            self.set_phase(Phase::Sidecars);
        }
    }

    /// Advances the start sequence and restarts what exited. Returns whether anything
    /// changed (the agent then records the processes).
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = self.watch(now);
        changed |= self.restart_due(now);
        match self.phase {
            Phase::Sidecars => {
                let started = self.start_where(|t| t.lifecycle == Lifecycle::PrestartSidecar);
                changed |= started;
                // An Envoy started just now cannot answer yet: ask from the next tick on, so
                // the other groups' sidecars start without waiting on this question.
                let ready = !started && self.sidecars_ready();
                let waited_out = !started && now - self.phase_since > READY_WAIT;
                if waited_out && !ready {
                    warn!(
                        "group {}: sidecars not ready after {READY_WAIT:?}; starting the tasks anyway",
                        self.name
                    );
                }
                if ready || waited_out {
                    self.set_phase(Phase::Prestart);
                }
            }
            Phase::Prestart => {
                changed |= self.start_where(is_prestart);
                let done = self
                    .tasks
                    .iter()
                    .filter(|t| is_prestart(t))
                    .all(|t| matches!(t.state, TaskState::Done | TaskState::Failed));
                if done {
                    self.set_phase(Phase::Main);
                }
            }
            Phase::Main => {
                changed |= self.start_where(|t| {
                    matches!(
                        t.lifecycle,
                        Lifecycle::Main | Lifecycle::Poststart | Lifecycle::PoststartSidecar
                    )
                });
                self.set_phase(Phase::Running);
            }
            Phase::Failed => {
                if self.reschedule.restart_at.is_some_and(|at| at <= now) {
                    self.start_again(now);
                    changed = true;
                }
            }
            Phase::Waiting | Phase::Running | Phase::Stopped => {}
        }
        changed |= self.fail_if_a_task_failed(now);
        changed
    }

    /// A task that failed for good fails the group (see `fail`).
    fn fail_if_a_task_failed(&mut self, now: Instant) -> bool {
        let failed =
            self.phase != Phase::Failed && self.tasks.iter().any(|t| t.state == TaskState::Failed);
        if failed {
            self.fail(now);
        }
        failed
    }

    /// A task failed for good (restart mode `fail`, or it cannot be started): Nomad stops
    /// the whole allocation and its scheduler places a new one; here the group stops and
    /// starts again after the reschedule back-off.
    fn fail(&mut self, now: Instant) {
        let running_for = match self.phase {
            Phase::Running => now - self.phase_since,
            _ => Duration::ZERO,
        };
        let delay = self.reschedule.next_delay(running_for);
        let failed: Vec<&str> = self
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| t.plan_name.as_str())
            .collect();
        warn!(
            "group {}: task {} failed; stopping the group, starting it again in {delay:?}",
            self.name,
            failed.join(", ")
        );
        let stopping = Instant::now();
        self.stop();
        // From the end of the stop, which may take the tasks' kill timeouts: the group
        // stays down (and out of the catalog) for the whole back-off.
        self.reschedule.restart_at = Some(now + stopping.elapsed() + delay);
        self.set_phase(Phase::Failed);
        // Its services leave the catalog until it starts again.
        self.wants_consul |= self.needs_consul;
    }

    fn start_again(&mut self, now: Instant) {
        for task in &mut self.tasks {
            task.state = TaskState::Pending;
            task.window_start = now;
            task.window_count = 0;
            task.awaiting_bootstrap = false;
        }
        self.reschedule.restart_at = None;
        if self.needs_consul {
            // Bootstraps are written anew before the sidecars start, as for a new alloc.
            self.set_phase(Phase::Waiting);
            self.wants_consul = true;
        } else {
            self.set_phase(Phase::Sidecars);
        }
    }

    fn sidecars_ready(&self) -> bool {
        self.tasks
            .iter()
            .filter(|t| t.lifecycle == Lifecycle::PrestartSidecar)
            .all(|t| match (&t.state, &t.ready_check, &self.netns) {
                (TaskState::Running(_), Some(admin), Some(ns)) => {
                    let uid = t.spec.user.as_deref().map(supervise::credentials);
                    envoy_ready(ns, admin, uid.and_then(Result::ok).map(|(uid, _)| uid))
                }
                (TaskState::Running(_), _, _) => true,
                _ => false,
            })
    }

    fn start_where(&mut self, pick: impl Fn(&Task) -> bool) -> bool {
        let mut changed = false;
        for task in self.tasks.iter_mut().filter(|t| pick(t)) {
            if task.state == TaskState::Pending {
                start(&self.name, task);
                changed = true;
            }
        }
        changed
    }

    /// Confirms the tasks `tick` forked: each exec'd (logged as started) or could not start
    /// (failed, which fails the group as in `tick`). The agent calls this after ticking
    /// every group, so the children exec side by side.
    pub fn confirm_starts(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for task in &mut self.tasks {
            let Some(starting) = task.starting.take() else {
                continue;
            };
            changed = true;
            match starting.confirm() {
                Ok(proc) => {
                    info!(
                        "group {}: started task {} (pid {})",
                        self.name, task.plan_name, proc.pid
                    );
                    task.event(format!("started (pid {})", proc.pid));
                }
                Err(e) => failed_to_start(&self.name, task, e),
            }
        }
        if changed {
            self.fail_if_a_task_failed(now);
        }
        changed
    }

    /// Notices exits: reaps our children, checks adopted ones by start time.
    fn watch(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let mut jitter = crate::retry::Jitter::new();
        for task in &mut self.tasks {
            let TaskState::Running(proc) = task.state else {
                continue;
            };
            let code = supervise::reap(proc.pid);
            if code.is_none() && proc.alive() {
                continue;
            }
            changed = true;
            let how = match end_of(task, proc) {
                Some(oom) => oom,
                None => code.map_or("exited".to_string(), |c| format!("exited with {c}")),
            };
            if runs_to_completion(task) && code == Some(0) {
                info!("group {}: task {} {how}; done", self.name, task.plan_name);
                task.state = TaskState::Done;
                continue;
            }
            task.last_error = Some(how.clone());
            let policy = task.policy.clone();
            task.state = next_after_exit(task, &policy, now, jitter.sample());
            let then = match task.state {
                TaskState::Restarting(at) => {
                    format!("restarting in {}", crate::retry::secs(at - now))
                }
                _ => "not restarted (restart policy exhausted)".to_string(),
            };
            task.event(format!("{how}; {then}"));
            task.awaiting_bootstrap =
                task.ready_check.is_some() && matches!(task.state, TaskState::Restarting(_));
            match task.state {
                // delay mode, attempts used up: the window was moved to the interval's end.
                TaskState::Restarting(at) if task.window_count == 0 => warn!(
                    "group {}: task {} {how}; {} restart(s) used in {:?}, restarting in {}, once the restart interval ends",
                    self.name,
                    task.plan_name,
                    policy.attempts,
                    policy.interval,
                    crate::retry::secs(at - now),
                ),
                TaskState::Restarting(at) => info!(
                    "group {}: task {} {how}; restarting in {} (restart {} of {} in this interval)",
                    self.name,
                    task.plan_name,
                    crate::retry::secs(at - now),
                    task.window_count,
                    policy.attempts
                ),
                _ => warn!(
                    "group {}: task {} {how}; restart policy exhausted (mode fail), not restarting",
                    self.name, task.plan_name
                ),
            }
        }
        changed
    }

    fn restart_due(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for task in &mut self.tasks {
            if let TaskState::Restarting(at) = task.state
                && at <= now
                && !task.awaiting_bootstrap
            {
                task.restarts += 1;
                start(&self.name, task);
                changed = true;
            }
        }
        changed
    }

    /// Envoy tasks whose restart is due now and waits for a new bootstrap.
    pub fn sidecar_restarts_due(&self, now: Instant) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|t| t.awaiting_bootstrap)
            .filter(|t| matches!(t.state, TaskState::Restarting(at) if at <= now))
            .map(|t| t.plan_name.clone())
            .collect()
    }

    /// The agent wrote (or tried to write) the bootstrap of `task`: it may restart.
    pub fn bootstrap_refreshed(&mut self, task: &str) {
        if let Some(t) = self.tasks.iter_mut().find(|t| t.plan_name == task) {
            t.awaiting_bootstrap = false;
        }
    }

    /// The earliest restart, for the agent's poll timeout (a restart held for its
    /// bootstrap is the agent's to wake for).
    pub fn next_due(&self) -> Option<Instant> {
        self.tasks
            .iter()
            .filter(|t| !t.awaiting_bootstrap)
            .filter_map(|t| match t.state {
                TaskState::Restarting(at) => Some(at),
                _ => None,
            })
            .chain(self.reschedule.restart_at)
            .min()
    }

    /// Stops every task: main and poststart first, then prestart sidecars last.
    pub fn stop(&mut self) {
        stop_all(std::slice::from_mut(self));
    }

    /// The running tasks of one class (sidecars or not) to stop; they become `Pending`.
    fn take_running(&mut self, sidecars: bool) -> Vec<supervise::Stopping> {
        let mut stopping = Vec::new();
        for task in &mut self.tasks {
            if task.lifecycle.is_sidecar() != sidecars {
                continue;
            }
            if let TaskState::Running(proc) = task.state {
                stopping.push(supervise::Stopping {
                    what: format!("group {}: task {}", self.name, task.plan_name),
                    proc,
                    scope: match &task.spec.cgroup {
                        Some((cgroup, _)) => supervise::Scope::Cgroup(cgroup.clone()),
                        None => supervise::Scope::ProcessGroup,
                    },
                    signal: task.kill_signal,
                    delay: task.shutdown_delay,
                    timeout: task.kill_timeout,
                });
            }
            task.state = TaskState::Pending;
        }
        stopping
    }

    /// Rotates each task's logs by its `logs` block.
    pub fn rotate_logs(&self) {
        for task in &self.tasks {
            for log in [&task.spec.stdout, &task.spec.stderr] {
                if let Err(e) = supervise::rotate(log, task.log_files, task.log_bytes) {
                    warn!("cannot rotate {}: {e}", log.display());
                }
            }
        }
    }
}

/// Stops several groups at once, in Nomad's order across all of them: every main and
/// poststart task concurrently, then every sidecar. So stopping many groups (teardown, a
/// reload) takes one shutdown_delay + kill_timeout per class, not one per group.
pub fn stop_all(runners: &mut [Runner]) {
    // Poststop tasks run for groups whose tasks ran, not for one that never got that far.
    let ran: Vec<bool> = runners
        .iter()
        .map(|r| {
            r.tasks
                .iter()
                .any(|t| !t.lifecycle.is_sidecar() && matches!(t.state, TaskState::Running(_)))
        })
        .collect();
    let stopping: Vec<supervise::Stopping> = runners
        .iter_mut()
        .flat_map(|r| r.take_running(false))
        .collect();
    supervise::stop_all(&stopping);
    run_poststop(runners, &ran);
    let stopping: Vec<supervise::Stopping> = runners
        .iter_mut()
        .flat_map(|r| r.take_running(true))
        .collect();
    supervise::stop_all(&stopping);
    for runner in runners {
        // Tasks that were not running (done, failed, waiting to restart) may still have a
        // cgroup, and a daemon in it.
        for (cgroup, _) in runner.tasks.iter().filter_map(|t| t.spec.cgroup.as_ref()) {
            cgroup.empty(Duration::from_secs(1));
            cgroup.remove();
        }
        runner.set_phase(Phase::Stopped);
    }
}

/// How long poststop tasks may run before they are stopped: a stop happens inside the
/// agent's loop (a failed group, a reload), which systemd's 30 s watchdog watches.
const POSTSTOP_LIMIT: Duration = Duration::from_secs(10);

/// Nomad's poststop tasks: started once the main tasks have stopped (sidecars still run),
/// each run to its end, at most `POSTSTOP_LIMIT`; then stopped with its kill signal.
fn run_poststop(runners: &mut [Runner], ran: &[bool]) {
    let mut running: Vec<(usize, usize)> = Vec::new();
    for (ri, runner) in runners.iter_mut().enumerate() {
        if !ran.get(ri).copied().unwrap_or(false) {
            continue;
        }
        for (ti, task) in runner.tasks.iter_mut().enumerate() {
            if task.lifecycle != Lifecycle::Poststop {
                continue;
            }
            start(&runner.name, task);
            if let Some(starting) = task.starting.take() {
                match starting.confirm() {
                    Ok(proc) => {
                        info!(
                            "group {}: started poststop task {} (pid {})",
                            runner.name, task.plan_name, proc.pid
                        );
                        running.push((ri, ti));
                    }
                    Err(e) => failed_to_start(&runner.name, task, e),
                }
            }
        }
    }
    let deadline = Instant::now() + POSTSTOP_LIMIT;
    while Instant::now() < deadline {
        running.retain(|&(ri, ti)| {
            let runner = &mut runners[ri];
            let task = &mut runner.tasks[ti];
            let TaskState::Running(proc) = task.state else {
                return false;
            };
            match supervise::reap(proc.pid) {
                None if proc.alive() => true,
                code => {
                    let how = code.map_or("exited".to_string(), |c| format!("exited with {c}"));
                    info!(
                        "group {}: poststop task {} {how}",
                        runner.name, task.plan_name
                    );
                    task.state = TaskState::Done;
                    false
                }
            }
        });
        if running.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    warn!("poststop tasks still running after {POSTSTOP_LIMIT:?}; stopping them");
    let stopping: Vec<supervise::Stopping> = runners
        .iter_mut()
        .flat_map(|r| r.take_running(false))
        .collect();
    supervise::stop_all(&stopping);
}

/// The task's main process as its cgroup shows it: the one that started first.
fn first_in(cgroup: &TaskCgroup) -> Option<Proc> {
    cgroup
        .procs()
        .into_iter()
        .filter_map(|pid| {
            Some(Proc {
                pid,
                start_time: supervise::start_time(pid)?,
            })
        })
        .min_by_key(|p| p.start_time)
}

fn is_prestart(t: &Task) -> bool {
    t.lifecycle == Lifecycle::Prestart
}

/// Tasks that run once to their end (exit 0 is done, not a reason to restart): Nomad's
/// prestart, poststart and poststop tasks that are not sidecars.
fn runs_to_completion(t: &Task) -> bool {
    matches!(
        t.lifecycle,
        Lifecycle::Prestart | Lifecycle::Poststart | Lifecycle::Poststop
    )
}

/// The group's and the task's directories, owned as `allocdir` describes.
fn make_dirs(task: &Task) -> Result<(), Error> {
    let (uid, gid) = match task.spec.user.as_deref() {
        Some(user) => supervise::credentials(user)?,
        None => (0, 0),
    };
    let group_dir = task.spec.dir.parent().unwrap_or(&task.spec.dir);
    crate::allocdir::prepare(group_dir, &task.plan_name, uid, gid)
        .map(drop)
        .with_context(|| format!("cannot prepare its directories in {}", group_dir.display()))?;
    if let Some(text) = &task.resolv_text {
        let group = crate::allocdir::group(group_dir)?;
        crate::allocdir::resolv_conf(&group, text)
            .with_context(|| format!("cannot write the resolv.conf of {}", group_dir.display()))?;
    }
    Ok(())
}

/// A task's main process exited: the rest of the task goes with it (what it forked and
/// left behind), as Nomad's executor ends a task. Returns how it ended when the kernel's
/// OOM killer had a part in it.
fn end_of(task: &mut Task, main: Proc) -> Option<String> {
    let Some((cgroup, limits)) = &task.spec.cgroup else {
        // Without a cgroup: the rest of its process group, while it has one.
        if supervise::process_group_lives(main.pid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(main.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return None;
    };
    cgroup.empty(Duration::from_secs(1));
    let ooms = cgroup.oom_kills();
    let oom = ooms > task.oom_kills;
    task.oom_kills = ooms;
    oom.then(|| format!("killed: out of memory, limit {} MiB", limits.hard_mib()))
}

fn start(group: &str, task: &mut Task) {
    if let Err(e) = make_dirs(task) {
        return failed_to_start(group, task, e);
    }
    match supervise::begin(&task.spec) {
        // Confirmed by `Runner::confirm_starts`, once every task of this pass is forked.
        Ok(starting) => {
            if let Some((cgroup, _)) = &task.spec.cgroup {
                task.oom_kills = cgroup.oom_kills();
            }
            task.state = TaskState::Running(starting.proc);
            task.starting = Some(starting);
        }
        Err(e) => failed_to_start(group, task, e),
    }
}

fn failed_to_start(group: &str, task: &mut Task, why: Error) {
    warn!("group {group}: task {}: {why}", task.plan_name);
    task.event(format!(
        "failed to start: {}",
        crate::text::cut(why.message(), 200)
    ));
    task.last_error = Some(why.to_string());
    task.state = TaskState::Failed;
}

/// Nomad's restart tracker: `attempts` restarts within `interval`, each after `delay` plus
/// up to 25% jitter (`random` in 0..1); then `delay` mode waits for the interval to end,
/// `fail` mode gives up.
fn next_after_exit(task: &mut Task, policy: &Policy, now: Instant, random: f64) -> TaskState {
    if now.duration_since(task.window_start) > policy.interval {
        task.window_start = now;
        task.window_count = 0;
    }
    if task.window_count < policy.attempts {
        task.window_count += 1;
        let jitter = policy.delay.mul_f64(0.25 * random.clamp(0.0, 1.0));
        return TaskState::Restarting(now + policy.delay + jitter);
    }
    if policy.fail {
        return TaskState::Failed;
    }
    let window_end = task.window_start + policy.interval;
    task.window_start = window_end;
    task.window_count = 0;
    TaskState::Restarting(window_end.max(now + policy.delay))
}

/// Whether Envoy's admin at `admin` is live (`envoy::admin`), asked inside the namespace.
/// `as_uid`: Envoy's uid under a transparent proxy. The question is asked from a socket
/// owned by that uid (the thread's fsuid), so the redirection rules let it through as
/// Envoy's own traffic instead of sending it to Envoy's outbound listener.
fn envoy_ready(netns: &str, admin: &str, as_uid: Option<u32>) -> bool {
    let admin = admin.to_string();
    crate::net::netns::run_in(netns, move || {
        if let Some(uid) = as_uid {
            // Only this short-lived thread changes: Linux credentials are per thread.
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        }
        let addr: std::net::SocketAddr = admin
            .parse()
            .map_err(|_| std::io::Error::other("bad admin address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(crate::envoy::admin::is_ready(&mut s, &admin))
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(lifecycle: Lifecycle, state: TaskState, now: Instant) -> Task {
        Task {
            plan_name: "t".into(),
            lifecycle,
            spec: Spec {
                argv: vec!["/bin/true".into()],
                env: Vec::new(),
                dir: PathBuf::from("/nonexistent"),
                netns: None,
                user: None,
                caps: None,
                stdout: PathBuf::from("/nonexistent/out"),
                stderr: PathBuf::from("/nonexistent/err"),
                journal: None,
                resolv_conf: None,
                cgroup: None,
                exec_view: false,
            },
            oom_kills: 0,
            resolv_text: None,
            events: heapless::Deque::new(),
            state,
            restarts: 0,
            last_error: None,
            kill_signal: nix::sys::signal::Signal::SIGTERM,
            kill_timeout: Duration::from_secs(1),
            shutdown_delay: Duration::ZERO,
            ready_check: None,
            awaiting_bootstrap: false,
            starting: None,
            log_files: 1,
            log_bytes: 1,
            policy: test_policy(),
            window_start: now,
            window_count: 0,
        }
    }

    fn test_policy() -> Policy {
        Policy {
            attempts: 2,
            interval: Duration::from_secs(10),
            delay: Duration::from_secs(1),
            fail: true,
        }
    }

    fn runner(tasks: Vec<Task>, now: Instant) -> Runner {
        Runner {
            name: "g".into(),
            netns: None,
            phase: Phase::Waiting,
            tasks,
            phase_since: now,
            needs_consul: false,
            wants_consul: false,
            reschedule: Reschedule {
                base: Duration::from_millis(200),
                max: Duration::from_millis(800),
                count: 0,
                restart_at: None,
            },
        }
    }

    #[test]
    fn restarts_follow_nomads_tracker() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut policy = test_policy();
        let mut t = task(Lifecycle::Main, TaskState::Pending, t0);
        // Two restarts within the interval, each after the delay (plus jitter up to 25%).
        assert_eq!(
            next_after_exit(&mut t, &policy, t0, 0.0),
            TaskState::Restarting(t0 + s(1))
        );
        let jittered = next_after_exit(&mut t, &policy, t0 + s(2), 1.0);
        assert_eq!(
            jittered,
            TaskState::Restarting(t0 + s(3) + Duration::from_millis(250))
        );
        // fail mode: the third exit in the interval fails the task.
        assert_eq!(
            next_after_exit(&mut t, &policy, t0 + s(4), 0.0),
            TaskState::Failed
        );
        // Once the interval has passed, the count starts again.
        let mut later = task(Lifecycle::Main, TaskState::Pending, t0);
        later.window_count = 2;
        assert_eq!(
            next_after_exit(&mut later, &policy, t0 + s(11), 0.0),
            TaskState::Restarting(t0 + s(12))
        );
        // delay mode: the third exit waits for the interval's end.
        policy.fail = false;
        let mut waits = task(Lifecycle::Main, TaskState::Pending, t0);
        waits.window_count = 2;
        assert_eq!(
            next_after_exit(&mut waits, &policy, t0 + s(4), 0.0),
            TaskState::Restarting(t0 + s(10))
        );
        assert_eq!(waits.window_count, 0);
    }

    #[test]
    fn reschedule_doubles_to_its_cap_and_resets_after_a_long_run() {
        let mut r = runner(Vec::new(), Instant::now()).reschedule;
        let delays: Vec<u128> = (0..4)
            .map(|_| r.next_delay(Duration::ZERO).as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 800, 800]);
        // A group that ran for max_delay before failing starts the back-off over.
        assert_eq!(r.next_delay(Duration::from_millis(800)).as_millis(), 200);
    }

    #[test]
    fn phases_advance_on_a_fake_clock_and_a_failure_reschedules_the_group() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A poststop task is never started by `tick`: the group's phases can be watched
        // without a process.
        let mut r = runner(vec![task(Lifecycle::Poststop, TaskState::Pending, t0)], t0);
        r.tick(t0);
        assert_eq!(r.phase, Phase::Waiting, "waits to be released");
        r.release();
        let mut phases = Vec::new();
        for i in 0..3 {
            r.tick(t0 + ms(i));
            phases.push(r.phase);
        }
        assert_eq!(phases, [Phase::Prestart, Phase::Main, Phase::Running]);
        // A task failing for good fails the group, which starts again after the back-off.
        r.tasks[0].state = TaskState::Failed;
        r.tick(t0 + ms(10));
        assert_eq!(r.phase, Phase::Failed);
        // The back-off counts from the end of the stop (here, nothing to stop: about 0).
        let due = r.next_due().expect("a restart is due");
        assert!(due >= t0 + ms(210), "{:?}", due - t0);
        r.tick(due - ms(1));
        assert_eq!(r.phase, Phase::Failed, "not before its time");
        r.tick(due);
        assert_eq!(r.phase, Phase::Sidecars);
        assert_eq!(r.tasks[0].state, TaskState::Pending);
    }
}
