//! What the agent leaves for the next one: the running processes (`processes.json`), its
//! pid file, and the strays it must stop (recorded for groups no longer configured, or
//! journaled but never recorded).

use super::relay::RELAY_RECORD;
use crate::error::{Context, Error};
use crate::files;
use crate::plan::Plan;
use crate::supervise::{Proc, Stopping};
use miniserde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// SIGTERM, then SIGKILL after this, for processes whose group is no longer configured.
const STRAY_KILL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The start journal of `run_dir`.
pub fn journal_path(run_dir: &str) -> PathBuf {
    crate::supervise::journal_in(Path::new(run_dir))
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

/// Stops the processes no runner looks after, all at once (SIGTERM, SIGKILL after
/// `STRAY_KILL_TIMEOUT`): recorded tasks of groups `plan` does not have (a reload cut
/// short, or a group removed while no agent ran), and processes in the start journal that
/// nobody recorded (an agent killed between fork and record; runners start their own).
pub fn stop_strays(records: &BTreeMap<String, Vec<TaskRecord>>, plan: &Plan) {
    let recorded: BTreeSet<(i32, u64)> = records
        .values()
        .flatten()
        .map(|r| (r.pid, r.start_time))
        .collect();
    let unplanned = records
        .iter()
        .filter(|(group, _)| {
            group.as_str() != RELAY_RECORD && !plan.groups.iter().any(|g| &g.name == *group)
        })
        .flat_map(|(group, tasks)| {
            tasks.iter().map(move |t| {
                let proc = Proc {
                    pid: t.pid,
                    start_time: t.start_time,
                };
                (
                    format!("group {group} (no longer configured): task {}", t.task),
                    proc,
                )
            })
        });
    let unrecorded = crate::supervise::journaled(&journal_path(&plan.run_dir))
        .into_iter()
        .filter(|p| !recorded.contains(&(p.pid, p.start_time)))
        .map(|proc| {
            let what = "a process started by an agent stopped before recording it";
            (what.to_string(), proc)
        });
    let strays: Vec<Stopping> = unplanned
        .chain(unrecorded)
        .filter(|(_, proc)| proc.alive())
        .map(|(what, proc)| Stopping {
            what,
            proc,
            // Tasks of groups no longer configured, or journaled processes (raw tasks
            // on a host without cgroups): each leads its own process group.
            scope: crate::supervise::Scope::ProcessGroup,
            signal: nix::sys::signal::Signal::SIGTERM,
            delay: Duration::ZERO,
            timeout: STRAY_KILL_TIMEOUT,
        })
        .collect();
    crate::supervise::stop_all(&strays);
    // With cgroups, the cgroups of tasks no longer planned hold what is left of them.
    let planned: Vec<String> = plan
        .groups
        .iter()
        .flat_map(|g| g.tasks.iter().map(|t| t.resources.cgroup.clone()))
        .collect();
    let killed = crate::cgroup::sweep(&plan.cgroup_parent, &planned);
    if killed > 0 {
        log::warn!("killed {killed} process(es) in the cgroups of tasks no longer configured");
    }
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

pub(super) fn write_pid_file(run_dir: &str) -> Result<(), Error> {
    let me = std::process::id() as i32;
    let start = crate::supervise::start_time(me).unwrap_or(0);
    files::write_private(&pid_path(run_dir), format!("{me} {start}\n").as_bytes())
        .with_context(|| format!("cannot write {}", pid_path(run_dir).display()))
}
