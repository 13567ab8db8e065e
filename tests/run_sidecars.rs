//! `outpost run` with Connect sidecars, end to end as root: the Consul double in this test
//! thread's network namespace, the agent in a private mount namespace, a stub Envoy
//! (tests/support/stub_envoy.py) that records how it was started and answers `/ready` on
//! its admin address. Both groups' services are registered, their bootstraps written, the
//! xDS relays and the Envoys started in the groups' namespaces, and teardown removes it all.

mod support;

use miniserde::json::Value;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::consul_double::ConsulDouble;

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => o.get(key),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// (group, task, state, pid) for every task the agent reports.
fn tasks(config: &Path) -> Vec<(String, String, String, i64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--json", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let Ok(status) = miniserde::json::from_str::<Value>(&String::from_utf8_lossy(&out.stdout))
    else {
        return Vec::new();
    };
    let mut all = Vec::new();
    if let Some(Value::Array(groups)) = field(&status, "groups") {
        for g in groups {
            if let Some(Value::Array(ts)) = field(g, "tasks") {
                for t in ts {
                    let pid = match field(t, "pid") {
                        Some(Value::Number(miniserde::json::Number::U64(p))) => *p as i64,
                        Some(Value::Number(miniserde::json::Number::I64(p))) => *p,
                        _ => 0,
                    };
                    all.push((
                        text(field(g, "name")),
                        text(field(t, "name")),
                        text(field(t, "state")),
                        pid,
                    ));
                }
            }
        }
    }
    all
}

fn running(all: &[(String, String, String, i64)], group: &str, task: &str) -> bool {
    pid(all, group, task).is_some()
}

fn pid(all: &[(String, String, String, i64)], group: &str, task: &str) -> Option<i64> {
    all.iter()
        .find(|(g, t, s, _)| g == group && t == task && s == "running")
        .map(|(_, _, _, p)| *p)
}

#[test]
fn run_registers_bootstraps_and_starts_the_sidecars_in_the_groups_namespaces() {
    if !support::private_network("run with sidecars") {
        return;
    }
    let double = ConsulDouble::start();
    let dir = std::env::temp_dir().join(format!("outpost-run-sidecars-{}", std::process::id()));
    let records = dir.join("envoy-records");
    std::fs::create_dir_all(&records).unwrap();
    let stub = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/stub_envoy.py");
    let envoy = dir.join("envoy");
    std::fs::write(
        &envoy,
        format!(
            "#!/bin/sh\nSTUB_ENVOY_RECORDS={} exec python3 {} \"$@\"\n",
            records.display(),
            stub.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&envoy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let countdash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/countdash.toml"
    ))
    .unwrap();
    let config = countdash
        .replace(
            "address = \"http://127.0.0.1:8500\"",
            &format!("address = \"{}\"\nsync_interval = \"1s\"", double.url()),
        )
        .replace("/usr/bin/envoy", &envoy.display().to_string())
        .replace(
            "\"/usr/local/bin/counting-service\"",
            "\"/bin/sleep\"\nargs = [\"1000\"]",
        )
        .replace(
            "\"/usr/local/bin/counter-dashboard\"",
            "\"/bin/sleep\"\nargs = [\"1000\"]",
        )
        .replace(
            "name = \"api\"\n",
            "name = \"api\"\n[group.restart]\ndelay = \"100ms\"\nmode = \"delay\"\n",
        )
        .replace(
            "[agent]\n",
            &format!(
                "[agent]\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n",
                dir.display()
            ),
        );
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config).unwrap();

    let started = Instant::now();
    let mut agent: Child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "bash", "-c"])
        .arg(format!(
            "mount -t tmpfs tmpfs /run && exec {} run -c {} 2>{}/agent.log",
            env!("CARGO_BIN_EXE_outpost"),
            file.display(),
            dir.display()
        ))
        .spawn()
        .unwrap();
    let mut all = Vec::new();
    let mut sidecars_up = None;
    while started.elapsed() < Duration::from_secs(30) {
        all = tasks(&file);
        if sidecars_up.is_none()
            && running(&all, "api", "connect-proxy-count-api")
            && running(&all, "dashboard", "connect-proxy-count-dashboard")
        {
            sidecars_up = Some(started.elapsed());
        }
        if running(&all, "api", "web") && running(&all, "dashboard", "dashboard") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    eprintln!("agent RSS with both groups running: {rss} KiB");
    eprintln!(
        "run → both sidecars running: {:?} (status polled every 20 ms)",
        sidecars_up
    );
    for (group, task) in [
        ("api", "consul-grpc-relay"),
        ("api", "connect-proxy-count-api"),
        ("api", "web"),
        ("dashboard", "consul-grpc-relay"),
        ("dashboard", "connect-proxy-count-dashboard"),
        ("dashboard", "dashboard"),
    ] {
        assert!(
            running(&all, group, task),
            "{group}/{task} not running: {all:?}\n{log}"
        );
    }
    assert_eq!(double.service_ids().len(), 4, "{log}");
    // Sidecars first, and the main task only once Envoy answered /ready.
    let sidecar_at = log.find("started task connect-proxy-count-api").unwrap();
    let main_at = log.find("group api: started task web").unwrap();
    assert!(sidecar_at < main_at, "{log}");

    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    for proxy in [
        "_outpost-api-count-api-9001-sidecar-proxy",
        "_outpost-dashboard-count-dashboard-http-sidecar-proxy",
    ] {
        let record = std::fs::read_to_string(records.join(format!("{proxy}.json")))
            .unwrap_or_else(|e| panic!("the stub Envoy of {proxy} did not run: {e}\n{log}"));
        let record: Value = miniserde::json::from_str(&record).unwrap();
        assert_ne!(
            Path::new(&text(field(&record, "netns"))),
            host_netns,
            "Envoy runs in the group's namespace"
        );
        let argv = match field(&record, "argv") {
            Some(Value::Array(a)) => a.iter().map(|v| text(Some(v))).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        assert!(
            argv.iter()
                .any(|a| a.ends_with("/secrets/envoy_bootstrap.json")),
            "{argv:?}"
        );
        assert!(
            argv.iter().any(|a| a == "--disable-hot-restart"),
            "{argv:?}"
        );
        let env = field(&record, "env");
        assert!(!text(field(env.unwrap(), "NOMAD_ALLOC_ID")).is_empty());
    }

    // A crashed Envoy is started again, with a bootstrap written anew for that start.
    use std::os::unix::fs::MetadataExt;
    let bootstrap = dir.join("run/alloc/api/connect-proxy-count-api/secrets/envoy_bootstrap.json");
    let before = std::fs::metadata(&bootstrap).unwrap().ino();
    let envoy_pid = pid(&all, "api", "connect-proxy-count-api").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(envoy_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut again = None;
    for _ in 0..250 {
        again = pid(&tasks(&file), "api", "connect-proxy-count-api").filter(|p| *p != envoy_pid);
        if again.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(again.is_some(), "Envoy was not restarted\n{log}");
    assert_ne!(
        std::fs::metadata(&bootstrap).unwrap().ino(),
        before,
        "the bootstrap is rewritten before the restart\n{log}"
    );

    // Consul restarts and forgets every registration: the next sync puts them back.
    double.restart();
    let mut back = 0;
    for _ in 0..250 {
        back = double.service_ids().len();
        if back == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(back, 4, "re-registered after a Consul restart");

    let agent_pid = agent.id().to_string();
    let down = Command::new("nsenter")
        .args(["-t", &agent_pid, "-m", "--"])
        .arg(env!("CARGO_BIN_EXE_outpost"))
        .args(["teardown", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let _ = agent.wait();
    assert!(double.service_ids().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
