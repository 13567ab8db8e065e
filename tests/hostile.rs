//! Tasks as an attacker would run them (docs/trust-model.md; issue 16), as root in
//! throwaway network and mount namespaces. Each test tries what a task or Envoy could do
//! against the agent, the host or another group, and asserts it no longer works:
//!
//! 1. links planted where the agent writes or chowns (an older layout's task-owned
//!    directory, the task's `secrets/`, the group's logs) are not followed;
//! 2. (with 4 and 5) network: host ports in use, the LAN routing the group subnet, the
//!    host's loopback over the bridge (`tests/net/hostile.sh`);
//! 3. consul-cli mode's token is not on a command line (`tests/apply_consul.rs`,
//!    `consul_cli_mode_…`, reads it back as `consul` gets it);
//! 6. tasks run as `nobody` with no capabilities and `no_new_privs`; a root task keeps only
//!    Nomad's default set; neither can make namespaces (the way into the host's) or flush nf_tables;
//! 7. the xDS socket is open to Envoy's group only;
//! 8. no descriptor, ignored signal or blocked signal of the agent's reaches a task.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the probe task finds out about itself and tries, one `key value` per line.
/// It runs with the exec driver (its own view of the filesystem), from its directory's
/// host path (`HOST_DIR`), which that view still shows.
const PROBE: &str = r#"export PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd "$HOST_DIR" || exit 1
try() { if "$@" >/dev/null 2>&1; then echo ok; else echo denied; fi; }
{
  echo "uid $(id -u)"
  grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|CapInh|NoNewPrivs|SigIgn|SigBlk):' /proc/self/status
  echo "plant-in-task-dir $(try ln -s /etc/passwd planted)"
  echo "plant-in-secrets $(try ln -s /etc/passwd secrets/planted)"
  echo "plant-in-logs $(try ln -s /etc/passwd ../alloc/logs/probe.stdout.1)"
  echo "read-group-tokens $(try ls ../secrets)"
  echo "new-namespace $(try unshare --net true)"
  echo "flush-nftables $(try nft flush ruleset)"
  echo "write-shared $(try touch "../alloc/data/$NOMAD_TASK_NAME")"
} > local/results.tmp
mv local/results.tmp local/results
exec sleep 1000
"#;

fn config(dir: &Path) -> String {
    let task = |name: &str, extra: &str| {
        format!(
            "[[group.task]]\nname = \"{name}\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {}]\nenv = {{ HOST_DIR = \"{}/run/alloc/evil/{name}\" }}\n{extra}",
            miniserde::json::to_string(PROBE),
            dir.display()
        )
    };
    format!(
        "[agent]\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n\
         [network]\nbridge = \"outpost\"\nsubnet = \"10.79.0.0/24\"\n\
         [[group]]\nname = \"evil\"\n[group.network]\nmode = \"bridge\"\n\
         {1}{2}{3}\
         [[group.task]]\nname = \"fds\"\ncommand = \"/bin/ls\"\nargs = [\"/proc/self/fd\"]\n\
         [group.task.lifecycle]\nhook = \"prestart\"\n",
        dir.display(),
        task("probe", ""),
        task("rootly", "user = \"root\"\n"),
        task("netadmin", "cap_add = [\"net_admin\"]\n"),
    )
}

/// `key value` lines as a map.
fn facts(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.trim_end_matches(':').to_string(), v.trim().to_string()))
        })
        .collect()
}

fn wait_for(path: &Path, log: &Path) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} never appeared\n{}",
        path.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The agent under test, torn down even when an assertion fails first.
struct Agent {
    child: std::process::Child,
    teardown: std::process::Command,
}

impl Agent {
    /// `teardown`, then the agent's exit; whether the teardown succeeded.
    fn stop(mut self) -> bool {
        let down = self.teardown.status().is_ok_and(|s| s.success());
        let _ = self.child.wait();
        down
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.teardown.status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn owner(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// A root-owned file and directory a task would like to own, and the links an older
/// layout let a task plant on the way to them.
struct Bait {
    file: PathBuf,
    dir: PathBuf,
}

fn plant(run_dir: &Path, bait: &Bait) {
    use std::os::unix::fs::symlink;
    let task = run_dir.join("alloc/evil/probe");
    std::fs::create_dir_all(&task).unwrap();
    // The task dir was the task's own: it could put links where the agent creates.
    std::os::unix::fs::chown(&task, Some(65534), Some(65534)).unwrap();
    symlink(&bait.file, task.join("secrets")).unwrap();
    symlink(&bait.dir, task.join("local")).unwrap();
    let logs = run_dir.join("alloc/evil/alloc/logs");
    std::fs::create_dir_all(&logs).unwrap();
    symlink(&bait.file, logs.join("probe.stdout.0")).unwrap();
}

#[test]
fn a_task_cannot_take_root_files_escape_its_privileges_or_inherit_the_agents() {
    if !support::private_network("hostile tasks") {
        return;
    }
    let dir = support::scratch().join(format!("outpost-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bait = Bait {
        file: dir.join("root-file"),
        dir: dir.join("root-dir"),
    };
    std::fs::write(&bait.file, "root's\n").unwrap();
    std::fs::create_dir_all(&bait.dir).unwrap();
    let run_dir = dir.join("run");
    plant(&run_dir, &bait);
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config(&dir)).unwrap();
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
    // The agent's parent leaves it a descriptor (7) and two ignored signals (SIGUSR2 and
    // real-time 40), as a careless supervisor would.
    let agent = run
        .command("/bin/sh")
        .args([
            "-c",
            "trap '' USR2 40; exec 7</etc/hostname; exec \"$0\" run -c \"$1\" 2>>\"$2\"",
            env!("CARGO_BIN_EXE_outpost"),
        ])
        .arg(&file)
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent {
        child: agent,
        teardown: run.outpost(&["teardown"], &file, &log),
    };

    let group = run_dir.join("alloc/evil");
    let probe = facts(&wait_for(&group.join("probe/local/results"), &log));
    let rootly = facts(&wait_for(&group.join("rootly/local/results"), &log));
    let netadmin = facts(&wait_for(&group.join("netadmin/local/results"), &log));
    let fds = std::fs::read_to_string(group.join("alloc/logs/fds.stdout.0")).unwrap_or_default();
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    let down = agent.stop();

    // 1. Nothing planted was followed: the bait is root's as before, the links are gone.
    assert_eq!(owner(&bait.file), (0, 0, 0o644), "{agent_log}");
    assert_eq!(owner(&bait.dir), (0, 0, 0o755), "{agent_log}");
    assert_eq!(std::fs::read_to_string(&bait.file).unwrap(), "root's\n");
    for (key, value) in [
        ("plant-in-task-dir", "denied"),
        ("plant-in-secrets", "denied"),
        ("plant-in-logs", "denied"),
        ("read-group-tokens", "denied"),
        ("write-shared", "ok"),
    ] {
        assert_eq!(
            probe.get(key).map(String::as_str),
            Some(value),
            "{key}: {probe:?}"
        );
    }
    assert!(agent_log.contains("it was not a directory"), "{agent_log}");

    // 6. nobody, nothing to escape with; root with Nomad's exec default set only.
    let no_caps = "0000000000000000";
    assert_eq!(probe["uid"], "65534");
    for key in ["CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(probe[key], no_caps, "{key}: {probe:?}");
    }
    assert_eq!(probe["NoNewPrivs"], "1");
    let default_root = format!("{:016x}", outpost::caps::for_task(true, &[], &[]).0);
    assert_eq!(rootly["uid"], "0");
    assert_eq!(rootly["CapBnd"], default_root, "{rootly:?}");
    assert_eq!(rootly["CapEff"], default_root, "{rootly:?}");
    assert_eq!(rootly["NoNewPrivs"], "1");
    for facts in [&probe, &rootly] {
        assert_eq!(facts["new-namespace"], "denied", "{facts:?}");
        assert_eq!(facts["flush-nftables"], "denied", "{facts:?}");
    }
    // cap_add gives a non-root task exactly what it asked for, through the ambient set.
    assert_eq!(netadmin["uid"], "65534");
    assert_eq!(
        netadmin["CapAmb"],
        format!("{:016x}", 1u64 << 12),
        "{netadmin:?}"
    );
    assert_eq!(netadmin["flush-nftables"], "ok", "{netadmin:?}");

    // 8. Only stdin, stdout, stderr (and ls's own directory, 3); no signal ignored or blocked.
    assert_eq!(fds, "0\n1\n2\n3\n", "{agent_log}");
    for facts in [&probe, &rootly] {
        assert_eq!(facts["SigIgn"], no_caps, "{facts:?}");
        assert_eq!(facts["SigBlk"], no_caps, "{facts:?}");
    }
    assert!(down, "{agent_log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 7, the relay's socket: Envoy's group connects, another user (another group's task)
/// is refused, whatever order the agent and the relay set it up in.
#[test]
fn the_xds_socket_is_open_to_envoys_group_only() {
    if !support::root_or_skip("the xDS socket's permissions") {
        return;
    }
    let dir = support::scratch().join(format!("outpost-hostile-xds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let group_dir = dir.join("run/alloc/web");
    let envoy_gid = 101;
    let group = outpost::allocdir::group(&group_dir).unwrap();
    outpost::allocdir::xds(&group, envoy_gid).unwrap();
    let socket = group_dir
        .join("xds")
        .join(outpost::allocdir::XDS_SOCKET_NAME);
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let list = dir.join("relay.list");
    std::fs::write(
        &list,
        format!(
            "to {}\nlisten {}\n",
            target.local_addr().unwrap(),
            socket.display()
        ),
    )
    .unwrap();
    let mut relay = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["relay", "--sockets"])
        .arg(&list)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let address = nix::sys::socket::UnixAddr::new(&socket).unwrap();
    // A child as `uid:uid` (no other groups) connects: 0, or the errno.
    let connect_as = |uid: u32| -> i32 {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, connect, socket};
        use nix::unistd::{ForkResult, Gid, Uid, fork, setgid, setgroups, setuid};
        // SAFETY: the child makes plain syscalls on data built before the fork, then exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let tried = setgroups(&[])
                    .and_then(|()| setgid(Gid::from_raw(uid)))
                    .and_then(|()| setuid(Uid::from_raw(uid)))
                    .and_then(|()| {
                        let fd = socket(
                            AddressFamily::Unix,
                            SockType::Stream,
                            SockFlag::empty(),
                            None,
                        )?;
                        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)
                    });
                let code = match tried {
                    Ok(()) => 0,
                    Err(e) => e as i32,
                };
                // SAFETY: leaving the forked child at once.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("{other:?}"),
            },
        }
    };
    let envoy = connect_as(envoy_gid);
    let other = connect_as(65534);
    let _ = relay.kill();
    let _ = relay.wait();
    assert_eq!(owner(&socket).1, envoy_gid);
    assert_eq!(owner(&socket).2, 0o660);
    assert_eq!(owner(&group_dir.join("xds")), (0, envoy_gid, 0o750));
    assert_eq!(envoy, 0, "Envoy's group connects");
    assert_eq!(other, nix::libc::EACCES, "another user is refused");
    let _ = std::fs::remove_dir_all(&dir);
}

/// 2, 4, 5: a host service's port, the LAN, the host's loopback (tests/net/hostile.sh).
#[test]
fn groups_reach_no_host_service_and_the_lan_only_mapped_ports() {
    support::net_scenario("hostile.sh");
}
