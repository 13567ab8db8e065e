//! `outpost run` without Consul, as root in private network and mount namespaces:
//! - the README's main command, `outpost run -c examples/quickstart.toml` (data_dir moved to
//!   a scratch directory), serves the mapped port and talks to systemd's notify socket;
//! - a task that fails for good restarts its whole group with Nomad's reschedule back-off.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn ask(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

#[test]
fn quickstart_serves_the_mapped_port_without_consul_and_notifies_systemd() {
    if !support::private_network("quickstart") {
        return;
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI installs busybox");
        eprintln!("skipping quickstart: no /bin/busybox");
        return;
    }
    let dir = support::scratch().join(format!("outpost-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("quickstart.toml");
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.toml"
    ))
    .unwrap();
    assert!(
        !quickstart.contains("[consul]"),
        "the quickstart needs no Consul"
    );
    std::fs::write(
        &file,
        quickstart.replace(
            "data_dir = \"/var/lib/outpost\"",
            &format!(
                "data_dir = \"{}/data\"\ncgroup_parent = \"outpost-test-quickstart-{}.slice\"",
                dir.display(),
                std::process::id()
            ),
        ),
    )
    .unwrap();
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
    let outpost = |args: &[&str]| run.outpost(args, &file, &log);
    // systemd's notify socket: READY=1 after the first pass, WATCHDOG=1 every half period.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut agent = outpost(&["run"])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .unwrap();
    let mut answer = Err(std::io::Error::other("not asked"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        answer = ask("127.0.0.1:8080");
        if answer
            .as_ref()
            .is_ok_and(|r| r.contains("hello from outpost"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut notes = Vec::new();
    let mut buf = [0u8; 64];
    while !notes.iter().any(|n| n == "WATCHDOG=1") {
        match notify.recv(&mut buf) {
            Ok(n) => notes.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(_) => break,
        }
    }
    let down = outpost(&["teardown"]).status().unwrap();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let reply = answer.unwrap_or_else(|e| panic!("host:8080: {e}\n{log}"));
    // The page the task's shell wrote into its local/ directory, served by its httpd.
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}\n{log}");
    assert!(
        reply.contains("<h1>hello from outpost</h1>"),
        "{reply}\n{log}"
    );
    assert!(down.success(), "{log}");
    assert_eq!(
        notes.first().map(String::as_str),
        Some("READY=1"),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n == "WATCHDOG=1"), "{notes:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the agent on `groups` (TOML after the agent section, in scratch directories) until
/// its log satisfies `done` (at most 30 s), tears down, and returns the log (the teardown's
/// included) and whether the teardown succeeded. `None` when the test must be skipped.
fn run_until(name: &str, groups: &str, done: impl Fn(&str) -> bool) -> Option<(String, bool)> {
    if !support::private_network(name) {
        return None;
    }
    let dir = support::scratch().join(format!("outpost-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outpost.toml");
    let config = format!(
        "[agent]\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n{groups}",
        dir.display()
    );
    std::fs::write(&file, config).unwrap();
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
    let outpost = |args: &[&str]| run.outpost(args, &file, &log);
    let mut agent = outpost(&["run"]).spawn().unwrap();
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if done(&text) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = outpost(&["teardown"]).status().is_ok_and(|s| s.success());
    let _ = agent.wait();
    let text = std::fs::read_to_string(&log).unwrap_or(text);
    let _ = std::fs::remove_dir_all(&dir);
    Some((text, down))
}

#[test]
fn a_task_that_fails_for_good_restarts_its_group_with_a_capped_back_off() {
    // The delays double from 200ms and stop at 400ms.
    let expected = [
        "task crash failed; stopping the group, starting it again in 200ms",
        "task crash failed; stopping the group, starting it again in 400ms",
        "task crash failed; stopping the group, starting it again in 400ms",
    ];
    let seen = |text: &str| {
        let mut from = 0;
        expected.iter().all(|line| match text[from..].find(line) {
            Some(i) => {
                from += i + line.len();
                true
            }
            None => false,
        })
    };
    let groups = r#"
[[group]]
name = "flaky"
[group.restart]
attempts = 1
interval = "1m"
delay = "50ms"
mode = "fail"
[group.reschedule]
delay = "200ms"
max_delay = "400ms"

[[group.task]]
name = "crash"
command = "/bin/sh"
args = ["-c", "sleep 0.1; exit 3"]

[[group.task]]
name = "steady"
command = "/bin/sleep"
args = ["1000"]
"#;
    let Some((text, down)) = run_until("reschedule", groups, seen) else {
        return;
    };
    assert!(seen(&text), "{text}");
    // The whole group restarts: its steady task too, each time.
    assert!(
        text.matches("stopping group flaky: task steady").count() >= 3,
        "{text}"
    );
    assert!(down);
}

#[test]
fn a_task_that_cannot_be_started_fails_its_group_with_the_reason() {
    let groups = r#"
[[group]]
name = "broken"
[group.reschedule]
delay = "10s"
max_delay = "10s"

[[group.task]]
name = "steady"
command = "/bin/sleep"
args = ["1000"]

[[group.task]]
name = "missing"
command = "/no/such/program"
"#;
    let failed = |text: &str| text.contains("starting it again in 10s");
    let Some((text, down)) = run_until("cannot-start", groups, failed) else {
        return;
    };
    let why =
        "task missing: cannot start /no/such/program: execve failed: No such file or directory";
    assert!(text.contains(why), "{text}");
    // The whole group stops: its other task too.
    assert!(
        text.contains("stopping group broken: task steady"),
        "{text}"
    );
    assert!(failed(&text), "{text}");
    assert!(down);
}

/// Nomad's lifecycle hooks beyond prestart: a poststart task runs once with the main task
/// (exit 0 is done, not restarted), and a poststop task runs when the group stops, after
/// its main task has stopped (gone, or a zombie its new parent has not reaped yet).
#[test]
fn poststart_runs_once_and_poststop_runs_after_the_main_task_stopped() {
    let out = support::scratch().join(format!("outpost-poststop-out-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    // The tasks run as nobody.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let result = out.join("poststop");
    let groups = format!(
        r#"
[[group]]
name = "job"

[[group.task]]
name = "server"
command = "/bin/sh"
args = ["-c", "echo $$ > $NOMAD_ALLOC_DIR/data/server.pid; exec sleep 1000"]

[[group.task]]
name = "greet"
command = "/bin/sh"
args = ["-c", "echo hello"]
[group.task.lifecycle]
hook = "poststart"

[[group.task]]
name = "cleanup"
command = "/bin/sh"
args = ["-c", "s=$(cut -d' ' -f3 /proc/$(cat $NOMAD_ALLOC_DIR/data/server.pid)/stat 2>/dev/null); case $s in ''|Z) r=server-stopped;; *) r=server-running;; esac; echo $r > {}"]
[group.task.lifecycle]
hook = "poststop"
"#,
        result.display()
    );
    let started = |text: &str| {
        text.contains("started task server") && text.contains("task greet exited with 0; done")
    };
    let Some((text, down)) = run_until("poststop", &groups, started) else {
        return;
    };
    let ran = std::fs::read_to_string(&result).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    assert!(down, "{text}");
    // Not started with the main task, started at the stop, after the server stopped.
    assert_eq!(text.matches("started task cleanup").count(), 0, "{text}");
    assert!(text.contains("started poststop task cleanup"), "{text}");
    assert!(
        text.contains("poststop task cleanup exited with 0"),
        "{text}"
    );
    assert_eq!(ran, "server-stopped\n", "{text}");
    // The poststart task ran once.
    assert_eq!(text.matches("started task greet").count(), 1, "{text}");
}

#[test]
fn a_groups_dns_block_is_its_tasks_resolv_conf_and_their_queries_reach_its_server() {
    if !support::private_network("group-dns") {
        return;
    }
    support::uplink(&["192.0.2.10/24"]);
    // A stand-in DNS server on the uplink: it records the queries it gets.
    let server = std::net::UdpSocket::bind("192.0.2.10:53").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let dir = support::scratch().join(format!("outpost-group-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outpost.toml");
    let config = format!(
        r#"[agent]
data_dir = "{0}/data"
run_dir = "{0}/run"

[[group]]
name = "resolver"
[group.network]
mode = "bridge"
[group.network.dns]
servers = ["192.0.2.10"]
searches = ["edge.internal"]
options = ["ndots:1"]

[[group.task]]
name = "ask"
command = "/bin/sh"
args = ["-c", "cat /etc/resolv.conf; python3 -c \"import socket\ntry: socket.getaddrinfo('probe.example', 80)\nexcept OSError: pass\"; sleep 1000"]
"#,
        dir.display()
    );
    std::fs::write(&file, config).unwrap();
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
    let outpost = |args: &[&str]| run.outpost(args, &file, &log);
    let mut agent = outpost(&["run"]).spawn().unwrap();
    let mut packet = [0u8; 512];
    let received = server.recv_from(&mut packet);
    let stdout = std::fs::read_to_string(dir.join("run/alloc/resolver/alloc/logs/ask.stdout.0"))
        .unwrap_or_default();
    let down = outpost(&["teardown"]).status().is_ok_and(|s| s.success());
    let _ = agent.wait();
    let agent_log = std::fs::read_to_string(&log).unwrap_or_default();
    let (len, _) =
        received.unwrap_or_else(|e| panic!("no query reached the server: {e}\n{agent_log}"));
    // The question's name: length-prefixed labels after the 12-byte header.
    let mut name = Vec::new();
    let mut at = 12;
    while at < len && packet[at] != 0 {
        let n = packet[at] as usize;
        name.push(String::from_utf8_lossy(&packet[at + 1..(at + 1 + n).min(len)]).to_string());
        at += 1 + n;
    }
    assert_eq!(name.join("."), "probe.example", "{agent_log}");
    assert_eq!(
        stdout.lines().take(3).collect::<Vec<_>>(),
        [
            "nameserver 192.0.2.10",
            "search edge.internal",
            "options ndots:1"
        ],
        "{agent_log}"
    );
    // The host's own file is untouched.
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);
    assert!(down, "{agent_log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What teardown must give back: links, namespaces, nf_tables, ip_forward, /run,
/// data_dir and the node's cgroups, read inside the test's private namespaces.
fn host_snapshot(run: &support::PrivateRun, data_dir: &std::path::Path) -> Vec<String> {
    let output = |program: &str, args: &[&str]| {
        let out = run.command(program).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let links: Vec<String> = output("ip", &["-o", "link"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect();
    vec![
        format!("links {links:?}"),
        format!("netns {}", output("ip", &["netns"])),
        format!("nft {}", output("nft", &["list", "ruleset"])),
        format!(
            "ip_forward {}",
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
        ),
        format!("/run {}", output("ls", &["-A", "/run"])),
        format!("data_dir exists {}", data_dir.exists()),
        format!(
            "cgroups {}",
            output(
                "sh",
                &[
                    "-c",
                    &format!(
                        "ls -d /sys/fs/cgroup/*/{TEARDOWN_CGROUP}-{}.slice /sys/fs/cgroup/{TEARDOWN_CGROUP}-{}.slice 2>/dev/null",
                        std::process::id(),
                        std::process::id()
                    )
                ]
            )
        ),
    ]
}

/// The teardown test's cgroup parent (without its pid).
const TEARDOWN_CGROUP: &str = "outpost-test-teardown";

#[test]
fn teardown_leaves_the_host_as_run_found_it() {
    if !support::private_network("teardown-host") {
        return;
    }
    // A host that does not forward, as many do before anything asks it to.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
    let dir = support::scratch().join(format!("outpost-teardown-host-{}", std::process::id()));
    // Pids repeat across the tests' pid namespaces: start from nothing.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data_dir = dir.join("data");
    let file = dir.join("outpost.toml");
    std::fs::write(
        &file,
        format!(
            "[agent]\ndata_dir = \"{}\"\nrun_dir = \"/run/outpost\"\ncgroup_parent = \"outpost-test-teardown-{}.slice\"\n\n[[group]]\nname = \"web\"\n[group.network]\nmode = \"bridge\"\n[[group.network.port]]\nlabel = \"http\"\nstatic = 8080\n[[group.task]]\nname = \"web\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\n",
            data_dir.display(),
            std::process::id()
        ),
    )
    .unwrap();
    let run = support::PrivateRun::new();
    let before = host_snapshot(&run, &data_dir);
    let log = dir.join("agent.log");
    let outpost = |args: &[&str]| run.outpost(args, &file, &log);
    let mut agent = outpost(&["run"]).spawn().unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("started task web")
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = host_snapshot(&run, &data_dir);
    // `status <group>`: its address, its ports, and each task's last events.
    let status = outpost(&["status", "web"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains("group web (running, 172.26.64."),
        "{status}"
    );
    assert!(status.contains("  port http 8080 -> 8080"), "{status}");
    assert!(status.contains("Z started (pid "), "{status}");
    let unknown = outpost(&["status", "nope"]).output().unwrap();
    assert!(!unknown.status.success());
    let down = outpost(&["teardown"]).output().unwrap();
    let _ = agent.wait();
    let after = host_snapshot(&run, &data_dir);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(down.status.success(), "{text}");
    assert_ne!(before, during, "run changed nothing?\n{text}");
    assert_eq!(before, after, "{text}");
    // A config without services never needed Consul: teardown does not warn about it.
    assert!(!text.contains("WARN"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
