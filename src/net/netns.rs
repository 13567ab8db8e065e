//! Named network namespaces, as `ip netns` keeps them: a file under /run/netns bind-mounted
//! from a thread that unshared its network namespace, on a shared mount so other mount
//! namespaces (`ip netns exec`) see it.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use crate::config::naming::NETNS_DIR;

/// statfs magic of nsfs: the file is a live namespace, not a leftover empty file.
const NSFS_MAGIC: i64 = 0x6e73_6673;

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn nix_err(what: &str, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Creates /run/netns and makes it a shared mount point (as `ip netns add` does), so
/// namespaces mounted later are visible in other mount namespaces.
pub fn ensure_dir() -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let make_shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(nix::Error::EINVAL) => {
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| nix_err("bind-mount /run/netns", e))?;
            make_shared().map_err(|e| nix_err("make /run/netns shared", e))
        }
        Err(e) => Err(nix_err("make /run/netns shared", e)),
    }
}

pub fn exists(name: &str) -> bool {
    is_namespace(&path(name))
}

// f_type is i64 on glibc and u64 on musl, so the cast is not always a no-op.
#[allow(clippy::unnecessary_cast)]
fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as i64 == NSFS_MAGIC)
}

/// Creates the named namespace. A file left by an interrupted create (not a namespace) is
/// replaced. Returns whether a namespace was created (false: it already existed).
pub fn create(name: &str) -> io::Result<bool> {
    let target = path(name);
    if is_namespace(&target) {
        return Ok(false);
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    File::create_new(&target)?;
    let mounted = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| nix_err("unshare(CLONE_NEWNET)", e))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| nix_err("bind-mount the new namespace", e))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    });
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(true)
}

/// Removes the named namespace. The kernel destroys it, and the veth in it, once nothing
/// else holds it. Missing is fine.
pub fn delete(name: &str) -> io::Result<()> {
    let target = path(name);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_err("unmount namespace", e)),
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names under /run/netns that start with `prefix`.
pub fn list(prefix: &str) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Runs `f` on a fresh thread that has entered the named namespace. Netlink sockets opened
/// in `f` stay bound to that namespace.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = File::open(path(name))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| nix_err("setns", e))?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}
