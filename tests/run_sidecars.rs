//! `outpost run` with Connect sidecars, end to end as root, in the countdash sandbox of
//! tests/support/mesh.rs with the stub Envoy (tests/support/stub_envoy.py), which reads its
//! registration through the xDS socket and relays TCP for the public listener and the
//! upstream; fast, so it carries the restart policy and Consul's failures.
//! tests/run_envoy.rs runs the same mesh with real Envoy.

mod support;

use miniserde::json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::mesh::*;
use support::{TaskStatus, field, number, text};

#[test]
fn countdash_traffic_flows_through_the_sidecars_which_are_restarted_when_they_crash() {
    let Some(mesh) = Mesh::new("run-sidecars") else {
        return;
    };
    let started = Instant::now();
    let mut agent = mesh.start_agent();
    let both_sidecars = |all: &[TaskStatus]| {
        pid(all, "api", "connect-proxy-count-api").is_some()
            && pid(all, "dashboard", "connect-proxy-count-dashboard").is_some()
    };
    mesh.wait(30, both_sidecars);
    let sidecars_up = started.elapsed();
    let all = mesh.wait(30, all_running);
    for (group, task) in TASKS {
        assert!(
            pid(&all, group, task).is_some(),
            "{group}/{task} not running: {all:?}\n{}",
            mesh.log()
        );
    }
    assert_eq!(mesh.double.service_ids().len(), 4, "{}", mesh.log());
    // Sidecars first, and the main task only once Envoy answered /ready.
    let log = mesh.log();
    let sidecar_at = log.find("started task connect-proxy-count-api").unwrap();
    let main_at = log.find("group api: started task web").unwrap();
    assert!(sidecar_at < main_at, "{log}");

    // Bytes flow host:9002 → dashboard → upstream → api's sidecar → api.
    let first = get_within("127.0.0.1:9002", 10);
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    eprintln!("agent RSS with countdash running: {rss} KiB (nsenter execs the agent: same pid)");
    eprintln!("run → both sidecars running: {sidecars_up:?} (status polled every 20 ms)");
    let body = first.unwrap_or_else(|e| panic!("host:9002 → dashboard → api: {e}\n{log}"));
    assert!(body.starts_with("dashboard: {\"count\": 1,"), "{body}");
    let again = get(&format!("{UPLINK}:9002")).unwrap();
    assert!(again.starts_with("dashboard: {\"count\": 2,"), "{again}");

    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    for proxy in [API_PROXY, DASHBOARD_PROXY] {
        let record = std::fs::read_to_string(mesh.records.join(format!("{proxy}.json")))
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
        let env = field(&record, "env").unwrap();
        assert!(!text(field(env, "NOMAD_ALLOC_ID")).is_empty());
    }

    // A crashing Envoy: restarted by the policy (2 attempts in 3s, delay mode), with a
    // bootstrap written anew for every start, then held back until the interval ends. Once
    // it starts cleanly again, traffic flows again.
    let bootstrap = mesh
        .dir
        .join("run/alloc/api/connect-proxy-count-api/secrets/envoy_bootstrap.json");
    assert!(bootstrap.exists(), "{}", mesh.log());
    let written = |log: &str| {
        log.matches(&format!("bootstrap of {API_PROXY}: written"))
            .count()
    };
    let writes_before = written(&mesh.log());
    let crash = mesh.records.join(format!("crash-{API_PROXY}"));
    std::fs::write(&crash, "").unwrap();
    let envoy_pid = pid(&all, "api", "connect-proxy-count-api").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(envoy_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let held_back = |log: &str| log.contains("once the restart interval ends");
    for _ in 0..500 {
        if held_back(&mesh.log()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = mesh.log();
    assert!(held_back(&log), "no back-off after the attempts\n{log}");
    // The first start, then 2 restarts per interval. The interval began when the group
    // started, so the loop may straddle two of them: up to 2 more.
    let starts = mesh.envoy_starts(API_PROXY);
    assert!((3..=5).contains(&starts), "{starts} starts\n{log}");
    // Not by inode: a file renamed over twice can get its first inode number back.
    assert!(
        written(&log) - writes_before >= starts - 1,
        "the bootstrap is rewritten before each restart\n{log}"
    );
    std::fs::remove_file(&crash).unwrap();
    let all = mesh.wait(10, |all| {
        mesh.envoy_starts(API_PROXY) == starts + 1
            && pid(all, "api", "connect-proxy-count-api").is_some()
    });
    assert!(
        pid(&all, "api", "connect-proxy-count-api").is_some(),
        "{all:?}\n{}",
        mesh.log()
    );
    assert_eq!(mesh.envoy_starts(API_PROXY), starts + 1, "{}", mesh.log());
    let recovered = get_within("127.0.0.1:9002", 10);
    assert!(recovered.is_ok(), "{recovered:?}\n{}", mesh.log());

    // Consul restarts and forgets every registration: the presence check (every 2 s; the
    // full sync is 30 s away) notices, and a sync puts them back.
    mesh.double.restart();
    let mut back = 0;
    for _ in 0..500 {
        back = mesh.double.service_ids().len();
        if back == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(back, 4, "re-registered after a Consul restart");
    assert!(mesh.log().contains("Consul lost service"), "{}", mesh.log());

    mesh.teardown();
    let _ = agent.wait();
    assert!(processes_with(&[&mesh.dir.display().to_string()]).is_empty());
    let run_dir = format!("{}/run", mesh.dir.display());
    let cgroups = outpost::config::naming::default_cgroup_parent(&run_dir);
    assert!(processes_in_cgroups(&cgroups, "").is_empty());
    // Nomad's stop order: deregister, then the main task, then Envoy (after its 5 s
    // shutdown_delay, so in-flight upstream traffic drains).
    let log = mesh.log();
    let at = |line: &str| {
        log.rfind(line)
            .unwrap_or_else(|| panic!("no {line:?} in\n{log}"))
    };
    let deregistered = at("deregistered service _outpost-api-count-api-9001 from Consul");
    let web = at("stopping group api: task web");
    let envoy = at("stopping group api: task connect-proxy-count-api");
    assert!(deregistered < web && web < envoy, "{log}");
}

#[test]
fn restarting_the_agent_under_load_fails_no_request_and_restarts_nothing() {
    let Some(mesh) = Mesh::new("run-restart") else {
        return;
    };
    let agent = mesh.start_agent();
    let before = mesh.wait(30, all_running);
    assert!(all_running(&before), "{before:?}\n{}", mesh.log());
    get_within("127.0.0.1:9002", 10).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    let relay_before = support::reported_relay(&mesh.file);
    assert!(relay_before.is_some());

    let run = mesh.restart_agent_twice_under_load(agent);
    let mut agent = run.agent;
    eprintln!(
        "load across two agent restarts with sidecars: ok={} failed={}",
        run.ok,
        run.failures.len()
    );
    assert!(
        run.failures.is_empty(),
        "{:?}\n{}",
        run.failures,
        mesh.log()
    );
    assert!(run.ok > 0);
    let pids = task_pids(&run.before);
    assert_eq!(pids, task_pids(&run.after_term), "adopted, not restarted");
    assert_eq!(pids, task_pids(&run.after_kill), "adopted, not restarted");
    assert!(
        run.after_kill.iter().all(|t| t.restarts == 0),
        "{:?}",
        run.after_kill
    );
    for proxy in [API_PROXY, DASHBOARD_PROXY] {
        assert_eq!(mesh.envoy_starts(proxy), 1, "{proxy} started once");
    }
    // Nothing duplicated: one Envoy and one program per group, one relay for the node.
    let run_dir = format!("{}/run", mesh.dir.display());
    let cgroups = outpost::config::naming::default_cgroup_parent(&run_dir);
    assert_eq!(processes_in_cgroups(&cgroups, "stub_envoy.py").len(), 2);
    let relay_list = format!("{}/run/relay.list", mesh.dir.display());
    let relays = processes_with(&[&relay_list, "relay"]);
    assert_eq!(relays.len(), 1);
    assert_eq!(
        relay_before,
        Some(i64::from(relays[0])),
        "adopted, not restarted"
    );
    assert_eq!(support::reported_relay(&mesh.file), relay_before);
    let programs = support::support_file("countdash.py").display().to_string();
    assert_eq!(processes_in_cgroups(&cgroups, &programs).len(), 2);

    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_slow_consul_does_not_stall_the_agents_loop() {
    let Some(mesh) = Mesh::new("run-slow-consul") else {
        return;
    };
    // Every Consul answer takes longer than `outpost status` waits for the agent (5 s).
    mesh.double.set_latency(Duration::from_secs(6));
    let mut agent = mesh.start_agent();
    let status = || {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(["status", "--json", "-c"])
            .arg(&mesh.file)
            .output()
            .unwrap()
    };
    let mut out = status();
    for _ in 0..100 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        out = status();
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mesh.log()
    );
    assert!(text.contains("\"phase\":\"waiting\""), "{text}");
    assert!(text.contains("\"consul_synced\":false"), "{text}");
    // Consul speeds up: the groups come up.
    mesh.double.set_latency(Duration::ZERO);
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn an_exposed_check_answers_from_the_host_through_the_sidecar() {
    let Some(mesh) = Mesh::new("run-expose") else {
        return;
    };
    let config = std::fs::read_to_string(&mesh.file).unwrap().replace(
        "port = \"9001\"\n",
        "port = \"9001\"\n[[group.service.check]]\nname = \"api-health\"\ntype = \"http\"\npath = \"/health\"\ninterval = \"10s\"\ntimeout = \"2s\"\nexpose = true\n",
    );
    std::fs::write(&mesh.file, config).unwrap();
    let mut agent = mesh.start_agent();
    let all = mesh.wait(30, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());

    // The sidecar's registration carries the path Nomad's mutator adds for the check.
    let sidecar = Value::Object(mesh.double.service(API_PROXY).expect("api sidecar"));
    let Some(Value::Array(paths)) = field(
        field(field(&sidecar, "Proxy").unwrap(), "Expose").unwrap(),
        "Paths",
    ) else {
        panic!("no expose paths: {}", miniserde::json::to_string(&sidecar));
    };
    assert_eq!(paths.len(), 1);
    let listener = number(field(&paths[0], "ListenerPort"));
    assert!(
        (20000..=32000).contains(&listener),
        "a dynamic port: {listener}"
    );
    assert_eq!(text(field(&paths[0], "Path")), "/health");
    assert_eq!(number(field(&paths[0], "LocalPathPort")), 9001);
    // The check probes that port on the node's address, as Consul will.
    let (code, checks) = get_status(&mesh.double.address, "/v1/agent/checks").unwrap();
    assert_eq!(code, 200);
    let want = format!("\"HTTP\":\"http://{UPLINK}:{listener}/health\"");
    assert!(
        checks.contains("api-health") && checks.contains(&want),
        "{checks}"
    );

    // From the host: the exposed path reaches the API through its Envoy; nothing else does.
    let addr = format!("{UPLINK}:{listener}");
    let start = Instant::now();
    let mut answer = get_status(&addr, "/health");
    while !matches!(answer, Ok((200, _))) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        answer = get_status(&addr, "/health");
    }
    let (code, body) = answer.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"count\""), "{body}");
    assert_eq!(get_status(&addr, "/").unwrap().0, 404);
    mesh.teardown();
    let _ = agent.wait();
}

/// The config's `envoy.binary` becomes `/nonexistent/envoy`.
fn point_envoy_at_nothing(mesh: &Mesh) {
    let config = std::fs::read_to_string(&mesh.file).unwrap();
    let stub = config
        .lines()
        .find_map(|l| l.strip_prefix("binary = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &mesh.file,
        config.replace(
            &format!("binary = {stub}"),
            "binary = \"/nonexistent/envoy\"",
        ),
    )
    .unwrap();
}

#[test]
fn a_reload_naming_a_missing_envoy_binary_keeps_the_running_configuration() {
    let Some(mesh) = Mesh::new("run-reload-no-envoy") else {
        return;
    };
    let mut agent = mesh.start_agent();
    let before = mesh.wait(30, all_running);
    assert!(all_running(&before), "{before:?}\n{}", mesh.log());
    point_envoy_at_nothing(&mesh);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let refused = "reload: group api: Envoy binary /nonexistent/envoy: No such file or directory (os error 2); keeping the running configuration";
    let start = Instant::now();
    while !mesh.log().contains(refused) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mesh.log().contains(refused), "{}", mesh.log());
    let after = mesh.tasks();
    assert_eq!(task_pids(&before), task_pids(&after), "nothing restarted");
    get_within("127.0.0.1:9002", 10).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_missing_envoy_binary_stops_run_before_anything_changes() {
    let Some(mesh) = Mesh::new("run-no-envoy") else {
        return;
    };
    point_envoy_at_nothing(&mesh);
    let out = mesh.outpost(&["run"]).output().unwrap();
    assert!(!out.status.success());
    let log = mesh.log();
    assert!(
        log.contains("group api: Envoy binary /nonexistent/envoy: No such file or directory"),
        "{log}"
    );
    // Nothing changed: no namespace, no bridge, no registration.
    let netns = std::fs::read_dir(mesh.run.view(Path::new("/run/netns")))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(netns, 0, "{log}");
    let bridge = Command::new("ip")
        .args(["link", "show", "outpost"])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "{log}");
    assert!(mesh.double.service_ids().is_empty());
}

#[test]
fn a_service_on_a_port_with_to_is_reached_through_its_sidecar_on_the_to_port() {
    let Some(mesh) = Mesh::new("run-port-to") else {
        return;
    };
    // The API as the quickstart's web: host port 8080, the app on 80 in its namespace.
    let config = std::fs::read_to_string(&mesh.file)
        .unwrap()
        .replace(
            "name = \"api\"\n",
            "name = \"api\"\n[[group.network.port]]\nlabel = \"http\"\nstatic = 8080\nto = 80\n",
        )
        .replace("port = \"9001\"", "port = \"http\"")
        .replace("PORT = \"9001\"", "PORT = \"${NOMAD_PORT_http}\"");
    std::fs::write(&mesh.file, config).unwrap();
    // The [group.network.port] above lands after `mode = "bridge"` only if the group's
    // network table comes first; check the config is what we meant.
    let valid = outpost::load_config(&mesh.file).expect("valid");
    assert!(valid.config.groups[0].network.is_some());
    let mut agent = mesh.start_agent();
    let all = mesh.wait(30, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    let proxy = "_outpost-api-count-api-http-sidecar-proxy";
    let sidecar = Value::Object(mesh.double.service(proxy).expect("api sidecar"));
    let local = number(field(field(&sidecar, "Proxy").unwrap(), "LocalServicePort"));
    assert_eq!(local, 80, "{}", miniserde::json::to_string(&sidecar));
    // Dashboard -> its upstream -> the API's sidecar -> the app on port 80.
    let body = get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.contains("\"count\""), "{body}");
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_group_that_fails_for_good_leaves_the_catalog_until_it_starts_again() {
    let Some(mesh) = Mesh::new("run-failed-group") else {
        return;
    };
    // The dashboard gets a task that fails for good after a moment; its group is stopped
    // and started again 4 s later.
    // (The group's name, not its task's, which is also "dashboard".)
    let config = std::fs::read_to_string(&mesh.file).unwrap().replacen(
        "name = \"dashboard\"\n",
        "name = \"dashboard\"\n[group.reschedule]\ndelay = \"4s\"\nmax_delay = \"4s\"\n",
        1,
    ) + "\n[[group.task]]\nname = \"doomed\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"sleep 2; exit 1\"]\n[group.task.restart]\nattempts = 0\nmode = \"fail\"\n";
    std::fs::write(&mesh.file, config).unwrap();
    let dashboard = "_outpost-dashboard-count-dashboard-http";
    let registered = |mesh: &Mesh| {
        let ids = mesh.double.service_ids();
        ids.iter().any(|id| id == dashboard) && ids.iter().any(|id| id == DASHBOARD_PROXY)
    };
    let mut agent = mesh.start_agent();
    let wait_for = |want: bool| {
        let start = Instant::now();
        while registered(&mesh) != want && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        registered(&mesh) == want
    };
    assert!(wait_for(true), "registered first\n{}", mesh.log());
    assert!(
        wait_for(false),
        "deregistered once it failed\n{}",
        mesh.log()
    );
    // The API group did not fail: it stays.
    assert!(mesh.double.service(API_PROXY).is_some());
    assert!(
        wait_for(true),
        "registered again after the back-off\n{}",
        mesh.log()
    );
    let log = mesh.log();
    assert!(
        log.contains("task doomed failed; stopping the group"),
        "{log}"
    );
    assert!(
        log.contains(&format!("deregistered service {dashboard}")),
        "{log}"
    );
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_script_check_runs_in_its_task_and_reports_each_result_to_consul() {
    let Some(mesh) = Mesh::new("run-script-check") else {
        return;
    };
    // The check exits with what the file says: 0 passing, 1 warning, 2 critical.
    let verdict = mesh.dir.join("verdict");
    std::fs::write(&verdict, "0").unwrap();
    let check = format!(
        "[[group.service.check]]\nname = \"api-script\"\ntype = \"script\"\ntask = \"web\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo checked as $(id -u) in $NOMAD_TASK_NAME; exit $(cat {})\"]\ninterval = \"1s\"\ntimeout = \"2s\"\n",
        verdict.display()
    );
    let config = std::fs::read_to_string(&mesh.file).unwrap().replacen(
        "port = \"9001\"\n",
        &format!("port = \"9001\"\n{check}"),
        1,
    );
    std::fs::write(&mesh.file, config).unwrap();
    let mut agent = mesh.start_agent();
    let status_of = || {
        let (_, checks) = get_status(&mesh.double.address, "/v1/agent/checks").ok()?;
        let Ok(Value::Object(all)) = miniserde::json::from_str::<Value>(&checks) else {
            return None;
        };
        all.values().find_map(|c| {
            (text(field(c, "Name")) == "api-script")
                .then(|| (text(field(c, "Status")), text(field(c, "Output"))))
        })
    };
    let wait_for = |want: &str| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some((status, output)) = status_of()
                && status == want
            {
                return output;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never {want}: {:?}\n{}", status_of(), mesh.log());
    };
    let output = wait_for("passing");
    // As the task's user (nobody), with the task's environment.
    assert!(output.contains("checked as 65534 in web"), "{output}");
    std::fs::write(&verdict, "2").unwrap();
    wait_for("critical");
    std::fs::write(&verdict, "1").unwrap();
    wait_for("warning");
    std::fs::write(&verdict, "0").unwrap();
    wait_for("passing");
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_connect_native_task_reaches_consul_through_its_groups_socket_for_its_leaf() {
    let Some(mesh) = Mesh::new("run-native") else {
        return;
    };
    // Asks the agent for its service's leaf certificate as a Connect native app would:
    // through CONSUL_HTTP_ADDR (a unix socket), with the token in CONSUL_HTTP_TOKEN_FILE.
    let ask = r#"
import http.client, os, socket
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(os.environ['CONSUL_HTTP_ADDR'][len('unix://'):])
token = open(os.environ['CONSUL_HTTP_TOKEN_FILE']).read()
c = Unix('consul')
c.request('GET', '/v1/agent/connect/ca/leaf/native-app', headers={'X-Consul-Token': token})
r = c.getresponse()
print(r.status, 'CertPEM' in r.read().decode(), os.environ['CONSUL_HTTP_SSL'], flush=True)
"#;
    let group = format!(
        "\n[[group]]\nname = \"native\"\n[group.network]\nmode = \"bridge\"\n[[group.service]]\nname = \"native-app\"\nport = \"7000\"\ntask = \"app\"\n[group.service.connect]\nnative = true\n[[group.task]]\nname = \"app\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", {:?}]\n",
        format!("python3 -c \"$ASK\"; sleep 1000")
    ) + &format!("[group.task.env]\nASK = {ask:?}\n");
    let config = std::fs::read_to_string(&mesh.file).unwrap() + &group;
    std::fs::write(&mesh.file, config).unwrap();
    let mut agent = mesh.start_agent();
    let stdout = mesh.dir.join("run/alloc/native/alloc/logs/app.stdout.0");
    let start = Instant::now();
    let mut answer = String::new();
    while answer.is_empty() && start.elapsed() < Duration::from_secs(30) {
        answer = std::fs::read_to_string(&stdout).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = std::fs::read_to_string(mesh.dir.join("run/alloc/native/alloc/logs/app.stderr.0"))
        .unwrap_or_default();
    assert_eq!(answer.trim(), "200 True false", "{stderr}\n{}", mesh.log());
    // The socket is in a directory only root writes; tasks may connect to it.
    use std::os::unix::fs::PermissionsExt;
    let socket = mesh.dir.join("run/alloc/native/alloc/consul");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    mesh.teardown();
    let _ = agent.wait();
}
