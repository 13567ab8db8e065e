//! Starting, watching and stopping one task process (reference/nomad-connect.md §3.1, §8):
//! everything the child needs is prepared before `fork` (argv, env, the namespace fd, log
//! files, the user); the child only enters the namespace, drops privileges, wires its
//! stdio and execs. Processes get their own session, so they outlive the agent; a process
//! is known again after an agent restart by its pid and start time (`/proc/<pid>/stat`),
//! never by pid alone (pids are reused).

use crate::caps::CapSet;
use crate::cgroup::{Limits, TaskCgroup};
use crate::error::{Context, Error};
use crate::files::Dir;
use crate::view::View;
use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::{ForkResult, Pid, fork};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `run_dir/starting`: the journal of started processes (see `Spec::journal`).
pub fn journal_in(run_dir: &Path) -> PathBuf {
    run_dir.join("starting")
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    /// The group's network namespace (`/run/netns/outpost-<group>`); `None`: the host's.
    pub netns: Option<PathBuf>,
    pub user: Option<String>,
    /// The capabilities the task keeps (`caps::for_task`), under `no_new_privs`; `None`:
    /// the agent's own privileges (the xDS relay, which is outpost itself).
    pub caps: Option<CapSet>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Where every started process is noted (pid and start time) before it may exec, so
    /// one the agent was killed too early to record is still found
    /// (`agent::run::stop_strays`).
    pub journal: Option<PathBuf>,
    /// Bind-mounted over /etc/resolv.conf in the process's own mount namespace (the
    /// group's `dns`); `None`: the host's.
    pub resolv_conf: Option<PathBuf>,
    /// Nomad's exec driver: the task runs in its own view of the filesystem (`view`),
    /// with `/` as its working directory; else (raw_exec) in the host's, in `dir`.
    pub exec_view: bool,
    /// The task's own cgroup, joined before exec, with its limits; `None` where the host
    /// has no cgroups (stops then signal the process group). Where there is one, it is the
    /// record of the task's processes and `journal` is not needed.
    pub cgroup: Option<(TaskCgroup, Limits)>,
}

/// A running process, identified beyond its pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

/// The start time of `pid`, if it exists (and is not a zombie).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Proc {
    /// Whether this very process still runs (same pid and start time).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    pub fn signal(&self, signal: Signal) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }
}

fn cstring(text: &str, what: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| Error::permanent(format!("{what} contains a NUL byte")))
}

/// Opens a log for appending, in a directory only root writes (`allocdir`). A link at its
/// name (planted while a task could write there) is removed, never followed.
fn open_log(path: &Path) -> Result<File, Error> {
    let failed =
        |e: std::io::Error| Error::from(e).context(format!("cannot open {}", path.display()));
    let (dir, name) = split(path).map_err(failed)?;
    match dir.append(&name, 0o640) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            log::warn!("removed {}: it was a link", path.display());
            dir.remove(&name).map_err(failed)?;
            dir.append(&name, 0o640).map_err(failed)
        }
        other => other.map_err(failed),
    }
}

/// The directory of `path` (followed: the agent's own) and the file's name in it.
fn split(path: &Path) -> std::io::Result<(Dir, String)> {
    let dir = Dir::trusted(path.parent().unwrap_or(Path::new("/")))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    Ok((dir, name.to_string()))
}

/// uid, gid and supplementary groups of `user` (a name or a number).
pub(crate) fn credentials(user: &str) -> Result<(u32, u32), Error> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(uid.into()),
        Err(_) => nix::unistd::User::from_name(user),
    };
    // A minimal image may have no /etc/passwd at all (the lookup fails with ENOENT): that
    // is no such user, not a failed lookup.
    let found = match found {
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        other => other,
    };
    match found {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        // A bare uid need not be in /etc/passwd (as with containers): its gid is the same.
        Ok(None) => match user.parse::<u32>() {
            Ok(uid) => Ok((uid, uid)),
            // The default user, on a system image without it: the kernel's overflow ids.
            Err(_) if user == "nobody" => Ok((65534, 65534)),
            Err(_) => Err(Error::permanent(format!("user {user:?} does not exist"))),
        },
        Err(e) => Err(Error::permanent(format!(
            "cannot look up user {user:?}: {e}"
        ))),
    }
}

/// argv and the environment as execve takes them, built before fork: the child allocates
/// nothing. The pointers point into `_strings`, which lives as long as they do.
struct ExecArgs {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    env: Vec<*const libc::c_char>,
}

impl ExecArgs {
    fn new(argv: &[String], env: &[(String, String)]) -> Result<ExecArgs, Error> {
        let args: Vec<CString> = argv
            .iter()
            .map(|a| cstring(a, "an argument"))
            .collect::<Result<_, _>>()?;
        let vars: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}"), "an environment variable"))
            .collect::<Result<_, _>>()?;
        let pointers = |strings: &[CString]| {
            let mut list: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
            list.push(std::ptr::null());
            list
        };
        let (argv, env) = (pointers(&args), pointers(&vars));
        let mut strings = args;
        strings.extend(vars);
        Ok(ExecArgs {
            _strings: strings,
            argv,
            env,
        })
    }
}

/// A process forked and released, whose exec is not confirmed yet: a supervisor starting
/// many forks them all, then confirms them, instead of waiting on each child in turn to be
/// scheduled and exec (on a busy device, that wait is most of a start).
#[derive(Debug)]
pub struct Starting {
    pub proc: Proc,
    program: String,
    /// Closed by the child's exec (success) or carrying `errno | step << 32` (failure).
    report: File,
}

impl Starting {
    /// Waits for the exec: the running process, or why it could not start (it is reaped).
    pub fn confirm(mut self) -> Result<Proc, Error> {
        let mut buf = [0u8; 8];
        let n = self.report.read(&mut buf).unwrap_or(0);
        if n == 8 {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.proc.pid), None);
            let report = u64::from_ne_bytes(buf);
            let why = std::io::Error::from_raw_os_error((report & 0xffff_ffff) as i32);
            let step = STEPS[(report >> 32) as usize % STEPS.len()];
            return Err(Error::permanent(format!(
                "cannot start {}: {step} failed: {why}",
                self.program
            )));
        }
        Ok(self.proc)
    }
}

/// Forks the process, notes it in the journal and lets it exec; `Starting::confirm` says
/// whether it did.
pub fn begin(spec: &Spec) -> Result<Starting, Error> {
    let program = spec.argv.first().ok_or("empty command")?;
    let exec = ExecArgs::new(&spec.argv, &spec.env)?;
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("cannot create {}", spec.dir.display()))?;
    let view = match spec.exec_view {
        true => Some(View::new(&spec.dir, spec.resolv_conf.as_deref())?),
        false => None,
    };
    let dir = match view {
        Some(_) => c"/".to_owned(),
        None => cstring(&spec.dir.to_string_lossy(), "the directory")?,
    };
    let netns = match &spec.netns {
        Some(path) => Some(
            File::open(path)
                .with_context(|| format!("cannot open namespace {}", path.display()))?,
        ),
        None => None,
    };
    let stdout = open_log(&spec.stdout)?;
    let stderr = open_log(&spec.stderr)?;
    let devnull = File::open("/dev/null").context("cannot open /dev/null")?;
    let creds = spec.user.as_deref().map(credentials).transpose()?;
    let resolv = resolv_source(spec.resolv_conf.as_deref())?;
    if let Some((cgroup, limits)) = &spec.cgroup {
        prepare_cgroup(program, cgroup, limits)?;
    }
    let (report_read, report_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    // The child waits on this gate until the parent has noted it in the journal; if the
    // parent dies first (kill -9), the gate reads EOF and the child exits unexec'd.
    let (gate_read, gate_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;

    // SAFETY: the child calls only async-signal-safe functions (read, sigprocmask, setsid,
    // setns, chdir, dup2, setgroups/setgid/setuid, execve, write, _exit, close) on data
    // prepared above, then execs or exits.
    match unsafe { fork() } {
        Err(e) => Err(Error::permanent(format!("fork: {e}"))),
        Ok(ForkResult::Child) => {
            drop(report_read);
            drop(gate_write);
            let mut byte = 0u8;
            // SAFETY: a read of one byte into a local, on an fd we own.
            let opened = unsafe { libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1) };
            if opened != 1 {
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(126) };
            }
            let files = ChildFiles {
                netns: netns.as_ref(),
                view: view.as_ref(),
                resolv_conf: resolv.as_ref(),
                stdout: &stdout,
                stderr: &stderr,
                devnull: &devnull,
            };
            let errno = child(&exec.argv, &exec.env, &dir, &files, creds, spec.caps);
            let bytes = errno.to_ne_bytes();
            // SAFETY: plain syscalls on valid fds in the forked child.
            unsafe {
                libc::write(report_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report_write);
            drop(gate_read);
            let pid = child.as_raw();
            let start_time = start_time(pid).unwrap_or(0);
            if let Some((cgroup, _)) = &spec.cgroup
                && let Err(e) = cgroup.join(pid)
            {
                drop(gate_write); // the child exits without exec
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(Error::permanent(format!(
                    "cannot start {program}: cannot put it in its cgroup: {e}"
                )));
            }
            if let Some(journal) = &spec.journal
                && let Err(e) = note_start(journal, pid, start_time)
            {
                drop(gate_write); // the child exits without exec
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(Error::permanent(format!(
                    "cannot start {program}: cannot note it in {}: {e}",
                    journal.display()
                )));
            }
            let mut gate = File::from(gate_write);
            let _ = std::io::Write::write_all(&mut gate, b"x");
            drop(gate);
            Ok(Starting {
                proc: Proc { pid, start_time },
                program: program.clone(),
                report: File::from(report_read),
            })
        }
    }
}

/// Empties the task's cgroup of what an earlier run left (a daemon its last main process
/// forked, a process an agent killed mid-start started), then creates it with `limits`.
fn prepare_cgroup(program: &str, cgroup: &TaskCgroup, limits: &Limits) -> Result<(), Error> {
    let left = cgroup.empty(Duration::from_secs(1));
    if left > 0 {
        log::warn!(
            "cgroup {}: killed {left} process(es) left from an earlier run",
            cgroup.path
        );
    }
    cgroup.prepare(limits).map_err(|e| {
        Error::permanent(format!(
            "cannot start {program}: cannot set up its cgroup: {e}"
        ))
    })
}

/// What a short helper command printed, and how it ended.
#[derive(Debug)]
pub struct Captured {
    /// The exit code; 128+n when killed by signal n.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` with exactly `env` to its end and returns what it printed (each stream cut
/// at `limit` bytes), for helper commands (`envoy --version`, `consul connect envoy`):
/// the same fork/exec as tasks, without a namespace, user or journal. Killed after
/// `timeout`. (std's `Command` costs the device binary ~10 KiB more than this.)
pub fn capture(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    limit: usize,
) -> Result<Captured, Error> {
    capture_in(&Confinement::default(), argv, env, timeout, limit)
}

/// Where and as whom a captured command runs: by default on the host as the agent (helper
/// commands); for a script check, in its task's namespace, as its user, with its
/// capabilities and in its directory.
#[derive(Default)]
pub struct Confinement<'a> {
    pub netns: Option<&'a Path>,
    pub user: Option<&'a str>,
    pub caps: Option<CapSet>,
    pub dir: Option<&'a Path>,
    pub resolv_conf: Option<&'a Path>,
}

/// `capture` inside `confine`.
pub fn capture_in(
    confine: &Confinement,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    limit: usize,
) -> Result<Captured, Error> {
    let program = argv.first().ok_or("empty command")?;
    let exec = ExecArgs::new(argv, env)?;
    let dir = confine.dir.map_or("/".into(), |d| d.to_string_lossy());
    let root = cstring(&dir, "the directory")?;
    let netns = match confine.netns {
        Some(path) => Some(
            File::open(path)
                .with_context(|| format!("cannot open namespace {}", path.display()))?,
        ),
        None => None,
    };
    let creds = confine.user.map(credentials).transpose()?;
    let resolv = resolv_source(confine.resolv_conf)?;
    let devnull = File::open("/dev/null").context("cannot open /dev/null")?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe");
    let ((out_read, out_write), (err_read, err_write)) = (pipe()?, pipe()?);
    let (report_read, report_write) = pipe()?;
    let (out_write, err_write) = (File::from(out_write), File::from(err_write));
    // SAFETY: as in `begin`, the child only makes async-signal-safe calls, then execs.
    let pid = match unsafe { fork() } {
        Err(e) => return Err(Error::permanent(format!("fork: {e}"))),
        Ok(ForkResult::Child) => {
            let files = ChildFiles {
                netns: netns.as_ref(),
                view: None,
                resolv_conf: resolv.as_ref(),
                stdout: &out_write,
                stderr: &err_write,
                devnull: &devnull,
            };
            let errno = child(&exec.argv, &exec.env, &root, &files, creds, confine.caps);
            let bytes = errno.to_ne_bytes();
            // SAFETY: plain syscalls on valid fds in the forked child.
            unsafe {
                libc::write(report_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop((out_write, err_write, report_write));
    let started = Starting {
        proc: Proc {
            pid: pid.as_raw(),
            start_time: 0,
        },
        program: program.clone(),
        report: File::from(report_read),
    };
    started.confirm()?;
    let deadline = Instant::now() + timeout;
    let (stdout, stderr) = read_both(File::from(out_read), File::from(err_read), deadline, limit);
    loop {
        if let Some(code) = reap(pid.as_raw()) {
            return Ok(Captured {
                code,
                stdout,
                stderr,
            });
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(Error::permanent(format!(
                "{program} did not finish within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads two pipes until both end or `deadline`, keeping at most `limit` bytes of each.
fn read_both(out: File, err: File, deadline: Instant, limit: usize) -> (String, String) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut streams = [(Some(out), Vec::new()), (Some(err), Vec::new())];
    while streams.iter().any(|(f, _)| f.is_some()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait =
            PollTimeout::try_from(left.as_millis().min(10_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds: Vec<PollFd> = streams
            .iter()
            .filter_map(|(f, _)| f.as_ref())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, wait).is_err() {
            break;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut ready = ready.into_iter();
        for (file, kept) in streams.iter_mut() {
            let Some(f) = file.as_mut() else { continue };
            if !ready.next().unwrap_or(false) {
                continue;
            }
            let mut buf = [0u8; 4096];
            match f.read(&mut buf) {
                Ok(0) | Err(_) => *file = None,
                Ok(n) => kept.extend_from_slice(&buf[..n.min(limit.saturating_sub(kept.len()))]),
            }
        }
    }
    let [(_, out), (_, err)] = streams;
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Appends `pid start_time` to the journal.
fn note_start(journal: &Path, pid: i32, start_time: u64) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(journal)?;
    std::io::Write::write_all(&mut file, format!("{pid} {start_time}\n").as_bytes())
}

/// The processes noted in the journal that still run.
pub fn journaled(journal: &Path) -> Vec<Proc> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, start) = l.split_once(' ')?;
            Some(Proc {
                pid: pid.parse().ok()?,
                start_time: start.parse().ok()?,
            })
        })
        .filter(Proc::alive)
        .collect()
}

/// Forgets the journal once every process in it is recorded elsewhere.
pub fn clear_journal(journal: &Path) {
    let _ = OpenOptions::new().write(true).truncate(true).open(journal);
}

/// The files the child wires up.
struct ChildFiles<'a> {
    netns: Option<&'a File>,
    /// The exec driver's view (it carries the resolv.conf then).
    view: Option<&'a View>,
    /// Bind-mounted over /etc/resolv.conf in a mount namespace of the child's own.
    resolv_conf: Option<&'a CString>,
    stdout: &'a File,
    stderr: &'a File,
    devnull: &'a File,
}

const STEPS: [&str; 10] = [
    "setns",
    "chdir",
    "dup2",
    "setgid",
    "setuid",
    "execve",
    "dropping capabilities",
    "no_new_privs",
    "mounting the group's resolv.conf",
    "entering the exec driver's view (/alloc, /local, /secrets, /tmp)",
];

/// The group's resolv.conf as the child mounts it, checked to be a file first.
fn resolv_source(path: Option<&Path>) -> Result<Option<CString>, Error> {
    let Some(path) = path else { return Ok(None) };
    if !path.is_file() {
        return Err(Error::permanent(format!(
            "the group's resolv.conf {} is missing",
            path.display()
        )));
    }
    cstring(&path.to_string_lossy(), "the resolv.conf path").map(Some)
}

/// The child's side; returns `errno | step << 32` only when something failed.
fn child(
    argv: &[*const libc::c_char],
    env: &[*const libc::c_char],
    dir: &CString,
    files: &ChildFiles,
    creds: Option<(u32, u32)>,
    caps: Option<CapSet>,
) -> u64 {
    let fail = |step: u64| -> u64 {
        (std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32 as u64) | step << 32
    };
    reset_signals();
    // SAFETY: async-signal-safe syscalls on fds and C strings owned by the caller.
    unsafe {
        libc::setsid();
        if let Some(ns) = files.netns
            && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
        {
            return fail(0);
        }
        if let Some(view) = files.view {
            if !view.enter() {
                return fail(9);
            }
        } else if let Some(source) = files.resolv_conf {
            // Its own mount namespace, changes not propagated back, then the group's file
            // over the host's (through a link such as systemd-resolved's, onto its target).
            let none = std::ptr::null();
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                ) != 0
                || libc::mount(
                    source.as_ptr(),
                    c"/etc/resolv.conf".as_ptr(),
                    none,
                    libc::MS_BIND,
                    none.cast(),
                ) != 0
            {
                return fail(8);
            }
        }
        if libc::chdir(dir.as_ptr()) != 0 {
            return fail(1);
        }
        if libc::dup2(files.devnull.as_raw_fd(), 0) < 0
            || libc::dup2(files.stdout.as_raw_fd(), 1) < 0
            || libc::dup2(files.stderr.as_raw_fd(), 2) < 0
        {
            return fail(2);
        }
    }
    close_inherited_on_exec();
    let keep = caps.map(|c| c.0);
    if let Some(keep) = keep {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return fail(7);
        }
        if !drop_bounding(keep) {
            return fail(6);
        }
    }
    let non_root = creds.is_some_and(|(uid, _)| uid != 0);
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        if let Some((uid, gid)) = creds {
            // Capabilities kept across setuid are trimmed to `keep` right after.
            if non_root && keep.is_some_and(|k| k != 0) {
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            }
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 {
                return fail(3);
            }
            if libc::setuid(uid) != 0 {
                return fail(4);
            }
        }
    }
    if let Some(keep) = keep
        && !set_capabilities(keep, non_root)
    {
        return fail(6);
    }
    // SAFETY: argv and env are NUL-terminated arrays of C strings built before fork.
    unsafe { libc::execve(argv[0], argv.as_ptr(), env.as_ptr()) };
    fail(5)
}

/// Every signal back to its default disposition, real-time ones included, none blocked:
/// the agent blocks the signals it reads from a signalfd and may itself have been started
/// with some ignored (a shell's `&` ignores SIGINT), and a task's kill_signal must work.
fn reset_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // The kernel's `struct sigaction` (x86_64 and aarch64 alike). The call goes straight to
    // the kernel: libc refuses the numbers it keeps for itself (32-34), which a parent may
    // still have left ignored.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signo in 1..=64 {
        if signo != libc::SIGKILL && signo != libc::SIGSTOP {
            // SAFETY: rt_sigaction reads the struct above, which lives through the call.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signo,
                    &default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                )
            };
        }
    }
}

/// Marks every descriptor above stderr close-on-exec: whatever the agent inherited from
/// its parent or opened itself, the task gets only stdin, stdout and stderr.
fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        // Kernels before 5.11: every descriptor up to the limit, one by one.
        // SAFETY: getrlimit into a local; fcntl on numbers that may not be open (EBADF).
        unsafe {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            let top = limit.rlim_cur.min(65_536) as i32;
            for fd in 3..top {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Removes from the bounding set every capability not in `keep` (needs CAP_SETPCAP, which
/// the agent has as root), and clears the ambient set.
fn drop_bounding(keep: u64) -> bool {
    for cap in 0..64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        // EINVAL: beyond the kernel's last capability.
        if dropped != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return false;
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) == 0
    }
}

/// Sets the permitted and effective sets to `keep`; for a non-root user, also the
/// inheritable and ambient sets, so the capabilities survive its exec (a root task gets
/// its bounding set at exec). Capabilities the agent itself lacks (its systemd unit's
/// bounding set) cannot be given and are left out.
fn set_capabilities(keep: u64, non_root: bool) -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut held = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget writes two data structs into `held`.
    if unsafe { libc::syscall(libc::SYS_capget, &header, held.as_mut_ptr()) } != 0 {
        return false;
    }
    let keep = keep & (u64::from(held[1].permitted) << 32 | u64::from(held[0].permitted));
    let inheritable = if non_root { keep } else { 0 };
    let word = |mask: u64, i: u32| (mask >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(keep, i),
        permitted: word(keep, i),
        inheritable: word(inheritable, i),
    });
    // SAFETY: capset reads a v3 header and two data structs, both alive for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return false;
    }
    if non_root {
        for cap in (0..64).filter(|c| keep & (1u64 << c) != 0) {
            // SAFETY: prctl with integer arguments.
            let raised =
                unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) };
            if raised != 0 {
                return false;
            }
        }
    }
    true
}

/// One process to stop, Nomad's way: wait `delay` (its `shutdown_delay`; cut short if it
/// exits), send `signal`, SIGKILL after `timeout`.
pub struct Stopping {
    pub what: String,
    pub proc: Proc,
    /// What else belongs to it and goes with it.
    pub scope: Scope,
    pub signal: Signal,
    pub delay: Duration,
    pub timeout: Duration,
}

/// Stops all of `list` concurrently, each on its own schedule; returns when all exited,
/// descendants included.
pub fn stop_all(list: &[Stopping]) {
    let start = Instant::now();
    let mut signalled: Vec<Option<Instant>> = vec![None; list.len()];
    let mut killed = vec![false; list.len()];
    loop {
        let now = Instant::now();
        let mut running = false;
        for (i, s) in list.iter().enumerate() {
            reap(s.proc.pid);
            if !s.running() {
                continue;
            }
            running = true;
            match signalled[i] {
                None if now >= start + s.delay => {
                    log::info!("stopping {} (pid {}) with {}", s.what, s.proc.pid, s.signal);
                    s.signal_all(s.signal);
                    signalled[i] = Some(now);
                }
                Some(at) if now >= at + s.timeout && !killed[i] => {
                    log::warn!("{} did not stop within {:?}; SIGKILL", s.what, s.timeout);
                    s.kill_all();
                    killed[i] = true;
                }
                _ => {}
            }
        }
        if !running {
            for s in list {
                if let Scope::Cgroup(cgroup) = &s.scope {
                    cgroup.remove();
                }
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a stop takes besides the process itself.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Nothing: the relay, which forks nothing.
    Process,
    /// Every process of its process group (`proc` leads its own, from `setsid`): a task on
    /// a host without cgroups.
    ProcessGroup,
    /// Every process in the task's cgroup, emptied with `cgroup.kill`.
    Cgroup(TaskCgroup),
}

impl Stopping {
    /// Whether anything of it is left: the process, or any other of its scope.
    fn running(&self) -> bool {
        self.proc.alive()
            || match &self.scope {
                Scope::Process => false,
                Scope::ProcessGroup => process_group_lives(self.proc.pid),
                Scope::Cgroup(cgroup) => !cgroup.procs().is_empty(),
            }
    }

    fn signal_all(&self, signal: Signal) {
        self.proc.signal(signal);
        match &self.scope {
            Scope::Process => {}
            Scope::ProcessGroup if process_group_lives(self.proc.pid) => {
                let _ = nix::sys::signal::killpg(Pid::from_raw(self.proc.pid), signal);
            }
            Scope::ProcessGroup => {}
            Scope::Cgroup(cgroup) => cgroup.signal(signal),
        }
    }

    fn kill_all(&self) {
        match &self.scope {
            Scope::Cgroup(cgroup) => {
                self.proc.signal(Signal::SIGKILL);
                cgroup.kill();
            }
            _ => self.signal_all(Signal::SIGKILL),
        }
    }
}

/// Whether process group `pgid` has a member that is not a zombie (one waiting for a parent
/// to reap it is gone for this purpose). The number cannot be given to a new process while
/// the group has members; once it has none, it is not signalled again (the only window is
/// between the last member's exit and this check).
pub fn process_group_lives(pgid: i32) -> bool {
    if nix::sys::signal::killpg(Pid::from_raw(pgid), None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // Fields after the command name: state (3), ppid (4), pgrp (5).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        state != Some("Z") && pgrp == Some(pgid)
    })
}

/// Collects the exit of `pid` if it is our child: `Some(exit code)` once it exited
/// (128+n for a signal), `None` while it runs or when it is not ours.
pub fn reap(pid: i32) -> Option<i32> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        _ => None,
    }
}

/// A pidfd for `pid`: readable once the process exits, for processes that are not our
/// children too (adopted after an agent restart).
pub fn pidfd(pid: i32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Copy-and-truncate rotation of a log the task keeps open with O_APPEND: when `current`
/// (`<task>.stdout.0`) passes `max_bytes`, older files move up one index (`.1` is the most
/// recent old one) and those beyond `max_files` go. The task keeps writing, unaware, and
/// this works whether or not the agent that started it is still the same. Everything goes
/// through the log directory's descriptor, and no link is followed.
pub fn rotate(current: &Path, max_files: u32, max_bytes: u64) -> std::io::Result<bool> {
    let (dir, name) = split(current)?;
    let mut log = match dir.read(&name) {
        Ok(file) => file,
        // Not there yet, or a link (removed when the task starts): nothing to rotate.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    if log.metadata()?.len() <= max_bytes {
        return Ok(false);
    }
    if max_files >= 2 {
        let base = name.strip_suffix(".0").unwrap_or(&name);
        dir.remove(&format!("{base}.{}", max_files - 1))?;
        for i in (1..max_files - 1).rev() {
            match dir.rename(&format!("{base}.{i}"), &format!("{base}.{}", i + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let copy = format!("{base}.1");
        let mut kept = dir.append(&copy, 0o640)?;
        kept.set_len(0)?;
        std::io::copy(&mut log, &mut kept)?;
    }
    dir.write_existing(&name)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts the process and waits until it has exec'd.
    fn spawn(spec: &Spec) -> Result<Proc, Error> {
        begin(spec)?.confirm()
    }

    fn spec(dir: &Path, argv: &[&str]) -> Spec {
        Spec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![("GREETING".into(), "hello".into())],
            dir: dir.to_path_buf(),
            netns: None,
            user: None,
            caps: None,
            stdout: dir.join("logs/t.stdout.0"),
            stderr: dir.join("logs/t.stderr.0"),
            journal: Some(dir.join("starting")),
            resolv_conf: None,
            cgroup: None,
            exec_view: false,
        }
    }

    /// A shell that leaves two daemons behind: one in its own session (out of the process
    /// group), one in the process group; it prints their pids.
    const DAEMONIZES: &str = "setsid sleep 4242 & echo $!; sleep 4343 & echo $!; exec sleep 4444";

    fn pids_printed(dir: &Path) -> Vec<i32> {
        std::fs::read_to_string(dir.join("logs/t.stdout.0"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn wait_for_pids(dir: &Path, n: usize) -> Vec<i32> {
        for _ in 0..500 {
            let pids = pids_printed(dir);
            if pids.len() >= n {
                return pids;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the task did not print {n} pids");
    }

    fn exists(pid: i32) -> bool {
        start_time(pid).is_some()
    }

    #[test]
    fn a_stop_takes_the_whole_cgroup_even_what_left_the_session() {
        let dir = std::env::temp_dir().join(format!("outpost-cg-{}", std::process::id()));
        let path = format!("outpost-unit-{}.slice/g.slice/t.scope", std::process::id());
        let cgroup = TaskCgroup::new(&path);
        let limits = Limits {
            cpu: 100,
            memory: 64,
            memory_max: None,
        };
        let mut with_cgroup = spec(&dir, &["/bin/sh", "-c", DAEMONIZES]);
        with_cgroup.cgroup = Some((cgroup.clone(), limits));
        with_cgroup.journal = None;
        let p = spawn(&with_cgroup).unwrap();
        let daemons = wait_for_pids(&dir, 2);
        assert!(cgroup.contains(p.pid));
        for d in &daemons {
            assert!(cgroup.contains(*d), "daemon {d} is in the task's cgroup");
        }
        stop_all(&[Stopping {
            what: "test".into(),
            proc: p,
            scope: Scope::Cgroup(cgroup.clone()),
            signal: Signal::SIGTERM,
            delay: Duration::ZERO,
            timeout: Duration::from_secs(2),
        }]);
        reap(p.pid);
        for d in daemons.iter().copied().chain([p.pid]) {
            assert!(!exists(d), "pid {d} outlived the stop");
        }
        assert!(
            !crate::cgroup::host()
                .mounts_for_test()
                .iter()
                .any(|m| m.join(&path).exists()),
            "the cgroup is removed after the stop"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_cgroup_a_stop_takes_the_process_group() {
        let dir = std::env::temp_dir().join(format!("outpost-pg-{}", std::process::id()));
        let p = spawn(&spec(&dir, &["/bin/sh", "-c", DAEMONIZES])).unwrap();
        let daemons = wait_for_pids(&dir, 2);
        stop_all(&[Stopping {
            what: "test".into(),
            proc: p,
            scope: Scope::ProcessGroup,
            signal: Signal::SIGTERM,
            delay: Duration::ZERO,
            timeout: Duration::from_secs(2),
        }]);
        reap(p.pid);
        assert!(!exists(p.pid));
        assert!(
            !exists(daemons[1]),
            "the daemon in the process group is stopped"
        );
        // What left the process group (setsid) is what only a cgroup catches.
        assert!(exists(daemons[0]));
        let _ = kill(Pid::from_raw(daemons[0]), Signal::SIGKILL);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn runs_with_its_env_dir_and_logs_then_stops() {
        let dir = std::env::temp_dir().join(format!("outpost-supervise-{}", std::process::id()));
        let p = spawn(&spec(
            &dir,
            &["/bin/sh", "-c", "echo $GREETING; pwd; exec sleep 30"],
        ))
        .unwrap();
        assert!(p.alive());
        std::thread::sleep(Duration::from_millis(200));
        let out = std::fs::read_to_string(dir.join("logs/t.stdout.0")).unwrap();
        assert_eq!(out, format!("hello\n{}\n", dir.display()));
        // Noted in the journal before it could exec; forgotten once cleared.
        assert_eq!(journaled(&dir.join("starting")), vec![p]);
        clear_journal(&dir.join("starting"));
        assert!(journaled(&dir.join("starting")).is_empty());
        let stopping = |proc, delay| Stopping {
            what: "test".into(),
            proc,
            scope: Scope::Process,
            signal: Signal::SIGTERM,
            delay,
            timeout: Duration::from_secs(2),
        };
        stop_all(&[stopping(p, Duration::ZERO)]);
        assert!(!p.alive());

        // One stops on SIGTERM after its shutdown_delay (it notes the signal); one ignores
        // SIGTERM and is killed after its timeout. stop_all returns once both are gone.
        let graceful = spawn(&spec(
            &dir,
            &[
                "/bin/sh",
                "-c",
                "trap 'echo term > got; exit 0' TERM; while :; do sleep 0.05; done",
            ],
        ))
        .unwrap();
        let stubborn = spawn(&spec(
            &dir,
            &["/bin/sh", "-c", "trap '' TERM; exec sleep 30"],
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        stop_all(&[
            stopping(graceful, Duration::from_millis(100)),
            Stopping {
                timeout: Duration::from_millis(200),
                ..stopping(stubborn, Duration::ZERO)
            },
        ]);
        assert!(!graceful.alive() && !stubborn.alive());
        assert_eq!(std::fs::read_to_string(dir.join("got")).unwrap(), "term\n");

        let missing = spawn(&spec(&dir, &["/no/such/binary"])).unwrap_err();
        assert_eq!(
            missing.message(),
            "cannot start /no/such/binary: execve failed: No such file or directory (os error 2)"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn capture_returns_both_streams_the_code_and_gives_up_on_time() {
        let sh = |script: &str| vec!["/bin/sh".to_string(), "-c".into(), script.into()];
        let env = [("WHO".to_string(), "outpost".to_string())];
        let out = capture(
            &sh("echo out $WHO; echo err >&2; exit 3"),
            &env,
            Duration::from_secs(5),
            1024,
        )
        .unwrap();
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (3, "out outpost\n", "err\n")
        );
        // Only `env`: nothing of the agent's environment.
        let out = capture(&sh("echo ${HOME:-none}"), &[], Duration::from_secs(5), 1024).unwrap();
        assert_eq!(out.stdout, "none\n");
        let cut = capture(&sh("yes | head -c 100000"), &[], Duration::from_secs(5), 10).unwrap();
        assert_eq!(cut.stdout, "y\ny\ny\ny\ny\n");
        let slow = capture(&sh("sleep 5"), &[], Duration::from_millis(100), 10).unwrap_err();
        assert!(
            slow.message().contains("did not finish within 100ms"),
            "{slow}"
        );
        let missing =
            capture(&["/no/such".to_string()], &[], Duration::from_secs(1), 10).unwrap_err();
        assert!(missing.message().contains("execve failed"), "{missing}");
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("outpost-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let current = dir.join("t.stdout.0");
        for round in 0..4 {
            std::fs::write(&current, format!("round {round} {}", "x".repeat(100))).unwrap();
            assert!(rotate(&current, 3, 50).unwrap());
        }
        assert_eq!(std::fs::metadata(&current).unwrap().len(), 0);
        assert!(
            std::fs::read_to_string(dir.join("t.stdout.1"))
                .unwrap()
                .starts_with("round 3")
        );
        assert!(
            std::fs::read_to_string(dir.join("t.stdout.2"))
                .unwrap()
                .starts_with("round 2")
        );
        assert!(!dir.join("t.stdout.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
