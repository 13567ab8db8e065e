//! The exec driver's view of the filesystem (Nomad's `exec`): a mount namespace of the
//! task's own whose root is a small tmpfs holding
//! - the host's top-level directories, bound; the system's (`SYSTEM`: programs,
//!   libraries, /etc, /sys) read-only, the rest as the host has them (ownership and modes
//!   still decide, and tasks run as `nobody`); its top-level links as they are;
//! - `/alloc` (the group's shared directory), `/local` and `/secrets` (the task's);
//! - a private `/tmp` (a tmpfs of its own: the host's `/tmp` is not seen);
//! - the group's directory at its host path when that is under `/tmp` (the xDS and Consul
//!   sockets a sidecar's bootstrap names are there), and the group's resolv.conf at
//!   `/etc/resolv.conf`.
//!
//! Everything is prepared before fork as C strings (`View::new`); the child only calls
//! mount, mkdir, symlink, chdir and pivot_root (`View::enter`). The tmpfs root is mounted on
//! the task's own `root/` (root's, empty), so nothing is written where a task can write.

use crate::error::Error;
use nix::libc;
use std::ffi::CString;
use std::path::Path;

/// One entry of the new root.
enum Entry {
    /// `/<name>` bound from the host; `writable` unless it is one of `SYSTEM`. `keep`: the
    /// host mount's nosuid/nodev/noexec, kept when the bind is made read-only.
    Dir {
        host: CString,
        at: CString,
        writable: bool,
        keep: libc::c_ulong,
    },
    /// A top-level link (`/bin -> usr/bin`), made again.
    Link { target: CString, at: CString },
}

/// The view of one task, ready for the forked child.
pub struct View {
    root: CString,
    entries: Vec<Entry>,
    tmp: CString,
    /// Directories made in the private /tmp, then `group` bound at the last one.
    group_at: Vec<CString>,
    group: CString,
    /// (host directory, mount point) of /alloc, /local and /secrets.
    dirs: Vec<(CString, CString)>,
    resolv: Option<(CString, CString)>,
}

fn c(text: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| Error::permanent(format!("{text:?} contains a NUL byte")))
}

/// Top-level directories bound read-only: what a task runs but never writes.
const SYSTEM: [&str; 11] = [
    "bin", "boot", "etc", "lib", "lib32", "lib64", "libx32", "opt", "sbin", "sys", "usr",
];

/// Top-level entries never bound: the view has its own.
const OWN: [&str; 4] = ["tmp", "alloc", "local", "secrets"];

/// The nosuid/nodev/noexec flags of the mount `path` is on (a read-only remount of a bind
/// must repeat them).
fn mount_flags(path: &Path) -> libc::c_ulong {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(stat) = statvfs(path) else { return 0 };
    let flags = stat.flags();
    [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
    ]
    .into_iter()
    .filter(|(f, _)| flags.contains(*f))
    .fold(0, |acc, (_, m)| acc | m)
}

impl View {
    /// The view for a task whose directory is `task_dir` (`<group dir>/<task>`).
    pub fn new(task_dir: &Path, resolv_conf: Option<&Path>) -> Result<View, Error> {
        let group_dir = task_dir.parent().unwrap_or(Path::new("/"));
        let root = task_dir.join("root");
        let under = |p: &str| c(&format!("{}{p}", root.display()));
        let mut entries = Vec::new();
        let listing =
            std::fs::read_dir("/").map_err(|e| Error::permanent(format!("cannot list /: {e}")))?;
        for entry in listing.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if OWN.contains(&name.as_str()) {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let at = under(&format!("/{name}"))?;
            if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())
                    .map_err(|e| Error::permanent(format!("cannot read /{name}: {e}")))?;
                entries.push(Entry::Link {
                    target: c(&target.to_string_lossy())?,
                    at,
                });
            } else if kind.is_dir() {
                entries.push(Entry::Dir {
                    host: c(&format!("/{name}"))?,
                    at,
                    writable: !SYSTEM.contains(&name.as_str()),
                    keep: mount_flags(&entry.path()),
                });
            }
        }
        // The group's directory at its own path, when the private /tmp hides it.
        let mut group_at = Vec::new();
        if let Ok(rest) = group_dir.strip_prefix("/tmp") {
            let mut path = format!("{}/tmp", root.display());
            for part in rest.components() {
                path.push('/');
                path.push_str(&part.as_os_str().to_string_lossy());
                group_at.push(c(&path)?);
            }
        }
        let dirs = vec![
            (
                c(&group_dir.join("alloc").to_string_lossy())?,
                under("/alloc")?,
            ),
            (
                c(&task_dir.join("local").to_string_lossy())?,
                under("/local")?,
            ),
            (
                c(&task_dir.join("secrets").to_string_lossy())?,
                under("/secrets")?,
            ),
        ];
        let resolv = match resolv_conf {
            Some(file) => Some((c(&file.to_string_lossy())?, under("/etc/resolv.conf")?)),
            None => None,
        };
        Ok(View {
            root: c(&root.to_string_lossy())?,
            entries,
            tmp: under("/tmp")?,
            group_at,
            group: c(&group_dir.to_string_lossy())?,
            dirs,
            resolv,
        })
    }

    /// In the forked child: builds the view and makes it the root. Async-signal-safe
    /// syscalls only; returns false (errno set) on the first failure.
    pub fn enter(&self) -> bool {
        // SAFETY: syscalls on C strings prepared before fork; the mount namespace is this
        // process's own from the first call on.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || !mount(
                    NONE,
                    c"/".as_ptr(),
                    NONE,
                    libc::MS_REC | libc::MS_PRIVATE,
                    NONE,
                )
                || !tmpfs(&self.root, c"mode=0755,size=1m")
            {
                return false;
            }
            for entry in &self.entries {
                let ok = match entry {
                    Entry::Dir {
                        host,
                        at,
                        writable,
                        keep,
                    } => {
                        mkdir(at, 0o755)
                            && bind(host, at)
                            && (*writable || read_only(at.as_ptr(), *keep))
                    }
                    Entry::Link { target, at } => libc::symlink(target.as_ptr(), at.as_ptr()) == 0,
                };
                if !ok {
                    return false;
                }
            }
            if !mkdir(&self.tmp, 0o1777) || !tmpfs(&self.tmp, c"mode=1777") {
                return false;
            }
            if !self.group_at.iter().all(|dir| mkdir(dir, 0o755)) {
                return false;
            }
            if let Some(at) = self.group_at.last()
                && !bind(&self.group, at)
            {
                return false;
            }
            if !self
                .dirs
                .iter()
                .all(|(host, at)| mkdir(at, 0o755) && bind(host, at))
            {
                return false;
            }
            if let Some((file, at)) = &self.resolv
                && !mount(file.as_ptr(), at.as_ptr(), NONE, libc::MS_BIND, NONE)
            {
                return false;
            }
            // The tmpfs becomes the root; the old one is detached beneath it.
            libc::chdir(self.root.as_ptr()) == 0
                && libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0
                && libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0
                && libc::chdir(c"/".as_ptr()) == 0
                // A task writes only where it is given a directory.
                && read_only(c"/".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV)
        }
    }
}

const NONE: *const libc::c_char = std::ptr::null();

// The child's syscalls, each true on success (errno set otherwise).

unsafe fn mount(
    source: *const libc::c_char,
    at: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> bool {
    // SAFETY: the caller passes NUL-terminated strings or null.
    unsafe { libc::mount(source, at, fstype, flags, data.cast()) == 0 }
}

unsafe fn tmpfs(at: &CString, options: &std::ffi::CStr) -> bool {
    // SAFETY: C strings.
    unsafe {
        mount(
            c"tmpfs".as_ptr(),
            at.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr(),
        )
    }
}

unsafe fn bind(source: &CString, at: &CString) -> bool {
    // SAFETY: C strings.
    unsafe {
        mount(
            source.as_ptr(),
            at.as_ptr(),
            NONE,
            libc::MS_BIND | libc::MS_REC,
            NONE,
        )
    }
}

unsafe fn read_only(at: *const libc::c_char, keep: libc::c_ulong) -> bool {
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep;
    // SAFETY: a C string.
    unsafe { mount(NONE, at, NONE, flags, NONE) }
}

unsafe fn mkdir(at: &CString, mode: libc::mode_t) -> bool {
    // SAFETY: a C string.
    let made = unsafe { libc::mkdir(at.as_ptr(), mode) } == 0;
    made || std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
}
