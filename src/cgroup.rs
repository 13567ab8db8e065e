//! The kernel's cgroup filesystem: one cgroup per task, `<parent>/<group>.slice/<task>.scope`
//! (the parent is the node's, `outpost.slice` by default, as Nomad's `nomad.slice`), in every
//! hierarchy this host mounts. Created and joined before the task execs, so nothing of a
//! task ever runs outside it: its processes are listed, signalled and killed through it
//! (`cgroup.kill`), its limits apply there, and an OOM kill is counted there.
//!
//! Hosts differ (docs/device.md):
//! - **cgroup v2** with its controllers: membership, `cgroup.kill` and the limits, all there.
//! - **hybrid** (systemd's layout on many older images, and this repository's CI): v2 mounted
//!   without controllers keeps membership and `cgroup.kill`; the limits go to the v1
//!   `memory` and `cpu` hierarchies, as Nomad does on cgroups v1.
//! - **v1 only**: membership in v1, killing by listing (no `cgroup.kill`).
//! - **none**: `supervise` falls back to process groups, and `run` says which limits it
//!   cannot enforce (`Host::gaps`).
//!
//! Nomad's rules for `resources`: `cpu` (MHz) is the v1 `cpu.shares`, converted to
//! `cpu.weight` on v2 as runc does; `memory` is the hard limit, unless `memory_max` is given:
//! then `memory_max` is the hard limit and `memory` the soft one (`memory.low`,
//! `memory.soft_limit_in_bytes`). No swap beyond the hard limit.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nomad's `resources` block, as the plan resolved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// MHz: a relative weight, not a cap.
    pub cpu: u32,
    /// MB.
    pub memory: u32,
    /// MB.
    pub memory_max: Option<u32>,
}

impl Limits {
    fn hard_bytes(&self) -> u64 {
        u64::from(self.memory_max.unwrap_or(self.memory)) << 20
    }

    fn soft_bytes(&self) -> Option<u64> {
        self.memory_max.map(|_| u64::from(self.memory) << 20)
    }

    /// The hard limit as `status` and the log say it.
    pub fn hard_mib(&self) -> u32 {
        self.memory_max.unwrap_or(self.memory)
    }
}

/// v1 `cpu.shares` (Nomad writes the MHz) to v2 `cpu.weight`, runc's conversion:
/// 2..=262144 onto 1..=10000.
pub fn cpu_weight(mhz: u32) -> u64 {
    let shares = u64::from(mhz).clamp(2, 262_144);
    1 + (shares - 2) * 9999 / 262_142
}

/// What this host mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    v2: Option<V2>,
    memory_v1: Option<PathBuf>,
    cpu_v1: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct V2 {
    mount: PathBuf,
    memory: bool,
    cpu: bool,
}

/// Where a kind of limit is enforced on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforced {
    V2,
    V1,
    No,
}

/// The host as this process found it (read once).
pub fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        Host::from_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    })
}

impl Host {
    /// Reads `/proc/self/mountinfo` text: `... <mount point> ... - <fstype> <source> <options>`.
    pub fn from_mountinfo(text: &str) -> Host {
        let mut host = Host::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, options) = (right.next(), right.nth(1).unwrap_or(""));
            let mount = PathBuf::from(unescape(mount));
            match fstype {
                Some("cgroup2") if host.v2.is_none() => {
                    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
                    host.v2 = Some(V2 {
                        memory: has("memory"),
                        cpu: has("cpu"),
                        mount,
                    });
                }
                Some("cgroup") => {
                    let has = |c: &str| options.split(',').any(|x| x == c);
                    if has("memory") && host.memory_v1.is_none() {
                        host.memory_v1 = Some(mount.clone());
                    }
                    if has("cpu") && host.cpu_v1.is_none() {
                        host.cpu_v1 = Some(mount);
                    }
                }
                _ => {}
            }
        }
        host
    }

    /// Whether tasks get cgroups at all (else: process groups).
    pub fn tracks(&self) -> bool {
        self.v2.is_some() || self.memory_v1.is_some() || self.cpu_v1.is_some()
    }

    pub fn memory(&self) -> Enforced {
        match (&self.v2, &self.memory_v1) {
            (Some(v2), _) if v2.memory => Enforced::V2,
            (_, Some(_)) => Enforced::V1,
            _ => Enforced::No,
        }
    }

    pub fn cpu(&self) -> Enforced {
        match (&self.v2, &self.cpu_v1) {
            (Some(v2), _) if v2.cpu => Enforced::V2,
            (_, Some(_)) => Enforced::V1,
            _ => Enforced::No,
        }
    }

    /// One line per thing this host cannot do, with why; empty when it does all.
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        if !self.tracks() {
            gaps.push(
                "no cgroup filesystem is mounted: a stop signals the task's process group, so a \
                 process that left it (setsid) outlives its task"
                    .to_string(),
            );
        }
        if self.memory() == Enforced::No {
            gaps.push(
                "memory limits (resources.memory, memory_max) are not enforced: no memory controller \
                 in cgroup v2 or v1"
                    .to_string(),
            );
        }
        if self.cpu() == Enforced::No {
            gaps.push(
                "cpu weights (resources.cpu) are not enforced: no cpu controller in cgroup v2 or v1"
                    .to_string(),
            );
        }
        gaps
    }

    /// How the host's cgroups are laid out, for the log.
    pub fn describe(&self) -> String {
        match (&self.v2, self.memory(), self.cpu()) {
            (None, Enforced::No, Enforced::No) if !self.tracks() => "none".into(),
            (Some(v2), Enforced::V2, Enforced::V2) => format!("v2 at {}", v2.mount.display()),
            (Some(v2), m, c) => format!(
                "hybrid: tasks tracked in v2 at {}, memory limits in {}, cpu weights in {}",
                v2.mount.display(),
                version(m),
                version(c)
            ),
            (None, m, c) => format!(
                "v1: memory limits in {}, cpu weights in {}",
                version(m),
                version(c)
            ),
        }
    }

    /// The hierarchies a task's cgroup lives in, each once: the v2 one first (membership).
    fn mounts(&self) -> Vec<&Path> {
        let mut mounts: Vec<&Path> = Vec::new();
        let v2 = self.v2.as_ref().map(|v| v.mount.as_path());
        let v1_memory = (self.memory() == Enforced::V1)
            .then_some(self.memory_v1.as_deref())
            .flatten();
        let v1_cpu = (self.cpu() == Enforced::V1)
            .then_some(self.cpu_v1.as_deref())
            .flatten();
        // Without v2, the first v1 hierarchy keeps membership.
        let v1_any = self
            .memory_v1
            .as_deref()
            .or(self.cpu_v1.as_deref())
            .filter(|_| v2.is_none());
        for mount in [v2, v1_memory, v1_cpu, v1_any].into_iter().flatten() {
            if !mounts.contains(&mount) {
                mounts.push(mount);
            }
        }
        mounts
    }
}

#[cfg(test)]
impl Host {
    pub fn mounts_for_test(&self) -> Vec<PathBuf> {
        self.mounts().into_iter().map(Path::to_path_buf).collect()
    }
}

fn version(e: Enforced) -> &'static str {
    match e {
        Enforced::V2 => "v2",
        Enforced::V1 => "v1",
        Enforced::No => "none (not enforced)",
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One task's cgroup, in each hierarchy of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCgroup {
    /// `config::naming::task_cgroup`.
    pub path: String,
}

impl TaskCgroup {
    pub fn new(path: &str) -> TaskCgroup {
        TaskCgroup {
            path: path.to_string(),
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        host()
            .mounts()
            .into_iter()
            .map(|m| m.join(&self.path))
            .collect()
    }

    /// The membership directory (v2, else the first v1 hierarchy).
    fn main_dir(&self) -> Option<PathBuf> {
        self.dirs().into_iter().next()
    }

    /// Creates the cgroup in every hierarchy (v2 controllers enabled down to it) and writes
    /// `limits`.
    pub fn prepare(&self, limits: &Limits) -> io::Result<()> {
        let host = host();
        for dir in self.dirs() {
            std::fs::create_dir_all(&dir).map_err(|e| at(&dir, e))?;
        }
        if let Some(v2) = &host.v2 {
            let wanted: Vec<&str> = [("memory", v2.memory), ("cpu", v2.cpu)]
                .into_iter()
                .filter_map(|(c, on)| on.then_some(c))
                .collect();
            if !wanted.is_empty() {
                // Each level from the root down to the group enables them for its children.
                let mut level = v2.mount.clone();
                for part in Path::new(&self.path)
                    .parent()
                    .into_iter()
                    .flat_map(Path::components)
                {
                    enable_controllers(&level, &wanted)?;
                    level.push(part);
                }
                enable_controllers(&level, &wanted)?;
                let dir = v2.mount.join(&self.path);
                if v2.memory {
                    write(&dir, "memory.max", &limits.hard_bytes().to_string())?;
                    write(
                        &dir,
                        "memory.low",
                        &limits.soft_bytes().unwrap_or(0).to_string(),
                    )?;
                    write_if_present(&dir, "memory.swap.max", "0")?;
                }
                if v2.cpu {
                    write(&dir, "cpu.weight", &cpu_weight(limits.cpu).to_string())?;
                }
            }
        }
        if host.memory() == Enforced::V1
            && let Some(mount) = &host.memory_v1
        {
            let dir = mount.join(&self.path);
            // memsw (memory + swap) may not be below the memory limit: raise, then lower.
            write_if_present(&dir, "memory.memsw.limit_in_bytes", "-1")?;
            write(
                &dir,
                "memory.limit_in_bytes",
                &limits.hard_bytes().to_string(),
            )?;
            write_if_present(
                &dir,
                "memory.memsw.limit_in_bytes",
                &limits.hard_bytes().to_string(),
            )?;
            let soft = limits
                .soft_bytes()
                .map_or("-1".to_string(), |b| b.to_string());
            write(&dir, "memory.soft_limit_in_bytes", &soft)?;
        }
        if host.cpu() == Enforced::V1
            && let Some(mount) = &host.cpu_v1
        {
            let shares = limits.cpu.clamp(2, 262_144);
            write(&mount.join(&self.path), "cpu.shares", &shares.to_string())?;
        }
        Ok(())
    }

    /// Moves `pid` (a forked child that has not exec'd yet) into the cgroup, everywhere.
    pub fn join(&self, pid: i32) -> io::Result<()> {
        for dir in self.dirs() {
            write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in it now.
    pub fn procs(&self) -> Vec<i32> {
        let Some(dir) = self.main_dir() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn contains(&self, pid: i32) -> bool {
        self.procs().contains(&pid)
    }

    /// Sends `signal` to every process in it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL to everything in it, forks racing the kill included (`cgroup.kill`; on v1,
    /// by listing until nothing is left).
    pub fn kill(&self) {
        if let Some(dir) = self.main_dir()
            && dir.join("cgroup.kill").exists()
            && write(&dir, "cgroup.kill", "1").is_ok()
        {
            return;
        }
        for _ in 0..100 {
            if self.procs().is_empty() {
                return;
            }
            self.signal(nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills what is in it and waits (up to `wait`) until it is empty; the number killed.
    pub fn empty(&self, wait: Duration) -> usize {
        let found = self.procs().len();
        if found == 0 {
            return 0;
        }
        self.kill();
        let deadline = Instant::now() + wait;
        while !self.procs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        found
    }

    /// How many processes the kernel's OOM killer has killed in it so far.
    pub fn oom_kills(&self) -> u64 {
        let host = host();
        let (file, dir) = match host.memory() {
            Enforced::V2 => ("memory.events", host.v2.as_ref().map(|v| &v.mount)),
            Enforced::V1 => ("memory.oom_control", host.memory_v1.as_ref()),
            Enforced::No => return 0,
        };
        let Some(dir) = dir else { return 0 };
        let text = std::fs::read_to_string(dir.join(&self.path).join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the cgroup, then its group's and the node's when they are left empty
    /// (a directory still in use stays: rmdir refuses it).
    pub fn remove(&self) {
        for dir in self.dirs() {
            let mut dir = dir.as_path();
            for _ in 0..3 {
                if std::fs::remove_dir(dir).is_err() && dir.exists() {
                    break;
                }
                match dir.parent() {
                    Some(parent) => dir = parent,
                    None => break,
                }
            }
        }
    }
}

/// Every task cgroup under the node's `parent` that `keep` (task paths) does not name:
/// emptied and removed, with the group and node cgroups left empty. Returns how many
/// processes were killed.
pub fn sweep(parent: &str, keep: &[String]) -> usize {
    let mounts = host().mounts();
    let Some(root) = mounts.first().map(|m| m.join(parent)) else {
        return 0;
    };
    let mut killed = 0;
    for group in subdirs(&root) {
        for task in subdirs(&root.join(&group)) {
            let path = format!("{parent}/{group}/{task}");
            if keep.contains(&path) {
                continue;
            }
            let cgroup = TaskCgroup::new(&path);
            killed += cgroup.empty(Duration::from_secs(1));
            cgroup.remove();
        }
    }
    // What no task holds any more, in every hierarchy (rmdir leaves what is in use).
    for mount in mounts {
        let root = mount.join(parent);
        for group in subdirs(&root) {
            let _ = std::fs::remove_dir(root.join(group));
        }
        let _ = std::fs::remove_dir(&root);
    }
    killed
}

/// The cgroup directories directly under `dir` (its interface files are files).
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

fn enable_controllers(dir: &Path, controllers: &[&str]) -> io::Result<()> {
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in controllers {
        if !enabled.split_whitespace().any(|x| x == *c) {
            write(dir, "cgroup.subtree_control", &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// One write to a cgroup interface file (they take a whole value per write).
fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| at(&path, e))
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    if dir.join(file).exists() {
        write(dir, file, value)
    } else {
        Ok(())
    }
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_mhz_become_nomads_shares_and_runcs_weights() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(100), 4);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(0), 1, "below the minimum share");
    }

    #[test]
    fn memory_max_makes_memory_the_soft_limit() {
        let plain = Limits {
            cpu: 100,
            memory: 300,
            memory_max: None,
        };
        assert_eq!((plain.hard_bytes(), plain.soft_bytes()), (300 << 20, None));
        let over = Limits {
            memory_max: Some(512),
            ..plain
        };
        assert_eq!(over.hard_bytes(), 512 << 20);
        assert_eq!(over.soft_bytes(), Some(300 << 20));
    }

    #[test]
    fn layouts_are_read_from_mountinfo() {
        let hybrid = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
38 25 0:33 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids";
        let host = Host::from_mountinfo(hybrid);
        assert_eq!(host.memory(), Enforced::V1);
        assert_eq!(host.cpu(), Enforced::V1);
        assert!(host.tracks());
        assert!(host.gaps().is_empty());
        assert_eq!(host.mounts()[0], Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(host.mounts().len(), 3);

        let none = Host::from_mountinfo("22 1 0:5 / /proc rw - proc proc rw");
        assert!(!none.tracks());
        assert_eq!(none.gaps().len(), 3);
        assert_eq!(none.describe(), "none");

        let spaced = Host::from_mountinfo("1 1 0:1 / /mnt/c\\040g rw - cgroup cgroup rw,memory");
        assert_eq!(spaced.memory_v1.as_deref(), Some(Path::new("/mnt/c g")));
        assert_eq!(spaced.mounts(), [Path::new("/mnt/c g")]);
    }
}
