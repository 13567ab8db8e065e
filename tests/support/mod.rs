//! Stand-ins for the systems outpost talks to, and what the tests share.
#![allow(dead_code)]

pub mod consul_double;
pub mod pki;

/// Whether a test that needs root may run. Without root it fails in CI (CI=true), where the
/// machine is ours to use, and is skipped with a message elsewhere.
pub fn root_or_skip(what: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} needs root (namespaces, links, nf_tables)"
        );
        eprintln!("skipping {what}: not root");
    }
    root
}

/// Root, and this thread in a private network namespace with lo up (a Consul double
/// started afterwards serves there). `false` when the test must be skipped.
pub fn private_network(what: &str) -> bool {
    if !root_or_skip(what) {
        return false;
    }
    // Only this thread (and what it spawns) moves to the new network namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let lo = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
    assert!(lo.success());
    true
}

/// A private mount namespace with its own tmpfs on /run (where outpost keeps namespaces and
/// its run_dir), held by a `sleep` so that agents can be stopped and started inside it.
pub struct PrivateRun {
    holder: std::process::Child,
}

impl PrivateRun {
    pub fn new() -> PrivateRun {
        let holder = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && exec sleep 100000")
            .spawn()
            .expect("unshare");
        let mountinfo = format!("/proc/{}/mountinfo", holder.id());
        for _ in 0..200 {
            let mounts = std::fs::read_to_string(&mountinfo).unwrap_or_default();
            if mounts.lines().any(|l| l.split(' ').nth(4) == Some("/run")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        PrivateRun { holder }
    }

    /// `program` to be run inside the namespace (nsenter execs it: same pid).
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.args(["-t", &self.holder.id().to_string(), "-m", "--", program]);
        cmd
    }

    /// `path` as the namespace sees it (through the holder's root), for reading files on a
    /// mount only the namespace has.
    pub fn view(&self, path: &std::path::Path) -> std::path::PathBuf {
        let inside = path.strip_prefix("/").unwrap_or(path);
        std::path::Path::new(&format!("/proc/{}/root", self.holder.id())).join(inside)
    }

    /// `outpost ARGS -c CONFIG` in the namespace, its stderr appended to `log`.
    pub fn outpost(
        &self,
        args: &[&str],
        config: &std::path::Path,
        log: &std::path::Path,
    ) -> std::process::Command {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(args).arg("-c").arg(config);
        if let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            cmd.stderr(file);
        }
        cmd
    }
}

impl Drop for PrivateRun {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
