//! `outpost apply` and `teardown` end to end with Consul: the binary sets up the network
//! and registers the group services in the Consul double, then removes both. Runs as root
//! in a private network namespace (this test thread's) with a private /run for the binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::consul_double::ConsulDouble;

/// Root, this thread in a private network namespace, and a Consul double serving there.
/// `None` when the test must be skipped.
fn sandbox(what: &str) -> Option<ConsulDouble> {
    support::private_network(what).then(ConsulDouble::start)
}

/// examples/countdash.toml with its Consul address line replaced by `consul_lines` and
/// `agent_lines` added to [agent], written to `dir/outpost.toml`.
fn countdash_config(dir: &Path, consul_lines: &str, agent_lines: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let countdash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/countdash.toml"
    ))
    .unwrap();
    let config = countdash
        .replace("address = \"http://127.0.0.1:8500\"", consul_lines)
        .replace("[agent]\n", &format!("[agent]\n{agent_lines}\n"));
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config).unwrap();
    file
}

/// Runs `outpost <args>` in a new mount namespace with a private /run, in this thread's
/// network namespace.
fn outpost(args: &str) -> std::process::Output {
    let script = format!(
        "mount -t tmpfs tmpfs /run && {} {args}",
        env!("CARGO_BIN_EXE_outpost")
    );
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            &script,
        ])
        .output()
        .expect("unshare")
}

#[test]
fn apply_registers_services_after_the_network_and_teardown_removes_them() {
    let Some(double) = sandbox("apply with Consul") else {
        return;
    };
    let dir = support::scratch().join(format!("outpost-apply-consul-{}", std::process::id()));
    let file = countdash_config(
        &dir,
        &format!("address = \"{}\"", double.url()),
        &format!("data_dir = \"{}\"", dir.display()),
    );

    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Consul: 2 service(s) registered, 0 deregistered, 0 unchanged"),
        "{stderr}"
    );
    assert_eq!(
        double.service_ids().len(),
        4,
        "two services and their sidecars"
    );
    // The network came first: no registration before the namespaces existed.
    assert!(stderr.find("created veth").unwrap() < stderr.find("Consul:").unwrap());

    let again = outpost(&format!("apply -c {}", file.display()));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("0 service(s) registered, 0 deregistered, 2 unchanged")
    );

    let down = outpost(&format!("teardown -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(down.status.success(), "{stderr}");
    assert!(
        double.service_ids().is_empty(),
        "{:?}",
        double.service_ids()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// examples/gateways.toml pointed at the double, without the groups named in `drop`.
fn gateways_config(dir: &Path, consul: &str, drop: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/gateways.toml"
    ))
    .unwrap()
    .replace(
        "address = \"http://127.0.0.1:8500\"",
        &format!("address = \"{consul}\""),
    )
    .replace(
        "[agent]\n",
        &format!(
            "[agent]\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n",
            dir.display()
        ),
    );
    // Each group starts at its `[[group]]` line and runs to the next.
    let mut kept = String::new();
    for (i, part) in text.split("[[group]]\n").enumerate() {
        let name = part.lines().next().unwrap_or("");
        if i > 0 && drop.iter().any(|d| name == format!("name = \"{d}\"")) {
            continue;
        }
        if i > 0 {
            kept.push_str("[[group]]\n");
        }
        kept.push_str(part);
    }
    let file = dir.join("outpost.toml");
    std::fs::write(&file, kept).unwrap();
    file
}

#[test]
fn gateways_register_with_their_kind_and_write_only_their_own_config_entries() {
    let Some(double) = sandbox("gateways with Consul") else {
        return;
    };
    let dir = support::scratch().join(format!("outpost-gateways-{}", std::process::id()));
    // Someone else's entries: another ingress gateway, and one with the same kind and name
    // pattern but no outpost marks. They must survive everything below.
    let foreign = r#"{"Kind":"ingress-gateway","Name":"theirs","Listeners":[{"Port":9000,"Protocol":"tcp","Services":[{"Name":"web"}]}]}"#;
    assert_eq!(double.put_config_entry(foreign).0, 200);
    let other_node = r#"{"Kind":"terminating-gateway","Name":"elsewhere","Services":[{"Name":"db"}],"Meta":{"external-source":"outpost","outpost-node":"edge-02"}}"#;
    assert_eq!(double.put_config_entry(other_node).0, 200);

    let file = gateways_config(&dir, &double.url(), &[]);
    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kinds: Vec<String> = double
        .service_ids()
        .iter()
        .map(
            |id| match double.service(id).and_then(|s| s.get("Kind").cloned()) {
                Some(miniserde::json::Value::String(k)) => k,
                _ => String::new(),
            },
        )
        .collect();
    assert_eq!(
        kinds,
        ["ingress-gateway", "mesh-gateway", "terminating-gateway"]
    );
    let ingress = double
        .config_entry("ingress-gateway", "my-ingress")
        .expect("ingress entry");
    assert!(miniserde::json::to_string(&ingress).contains(
        r#""Listeners":[{"Port":8080,"Protocol":"tcp","Services":[{"Name":"count-api"}]}]"#
    ));
    assert!(
        double
            .config_entry("terminating-gateway", "my-terminating")
            .is_some()
    );
    // Each gateway's Envoy bootstraps as the gateway service itself; the ingress gateway
    // gets Consul's ready listener on its ready address.
    let bootstrap = std::fs::read_to_string(
        dir.join("run/alloc/ingress/connect-ingress-my-ingress/secrets/envoy_bootstrap.json"),
    )
    .expect("ingress bootstrap");
    let compact: String = bootstrap.split_whitespace().collect();
    assert!(
        compact.contains(r#""cluster":"my-ingress","id":"_outpost-ingress-my-ingress-inbound""#),
        "{bootstrap}"
    );
    assert!(
        compact.contains(r#""name":"envoy_ready_listener""#),
        "{bootstrap}"
    );
    assert!(compact.contains(r#""port_value":19100"#), "{bootstrap}");
    let mesh = std::fs::read_to_string(
        dir.join("run/alloc/mesh/connect-mesh-my-mesh/secrets/envoy_bootstrap.json"),
    )
    .expect("mesh bootstrap");
    assert!(
        !mesh.contains("envoy_ready_listener"),
        "only ingress gateways get it"
    );

    // Unchanged entries are not written again.
    let again = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(!stderr.contains("wrote Consul config entry"), "{stderr}");
    assert!(
        stderr.contains("0 service(s) registered, 0 deregistered, 3 unchanged"),
        "{stderr}"
    );

    // The terminating gateway goes: its entry goes, nobody else's.
    let file = gateways_config(&dir, &double.url(), &["terminating"]);
    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("deleted Consul config entry terminating-gateway/my-terminating"),
        "{stderr}"
    );
    assert!(
        double
            .config_entry("terminating-gateway", "my-terminating")
            .is_none()
    );
    assert!(
        double
            .config_entry("ingress-gateway", "my-ingress")
            .is_some()
    );

    let down = outpost(&format!("teardown -c {}", file.display()));
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        double.config_entry_names(),
        [
            ("ingress-gateway".to_string(), "theirs".to_string()),
            ("terminating-gateway".to_string(), "elsewhere".to_string())
        ]
    );
    assert!(double.service_ids().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn login_mode_registers_each_service_with_its_own_token_reused_across_applies_and_released() {
    const AGENT_TOKEN: &str = "agent-token-0001-do-not-log";
    const JWT: &str = "header.payload.signature-for-outpost";
    let Some(double) = sandbox("apply in login mode") else {
        return;
    };
    double.enable_acls();
    double.add_token(AGENT_TOKEN, std::time::Duration::ZERO);
    double.add_auth_method("nomad-workloads", JWT);
    double.set_minted_lag(std::time::Duration::from_millis(1200));
    let dir = support::scratch().join(format!("outpost-login-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwt"), JWT).unwrap();
    let file = countdash_config(
        &dir,
        &format!(
            "address = \"{}\"\ntoken = \"{AGENT_TOKEN}\"\n[consul.acl]\nmode = \"login\"\njwt_file = \"{}\"\n[consul.preflight]\ntoken_base = \"100ms\"",
            double.url(),
            dir.join("jwt").display()
        ),
        &format!(
            "data_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"",
            dir.display()
        ),
    );

    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(double.live_minted(), 2, "one token per service");
    assert_eq!(double.service_ids().len(), 4);
    assert!(
        !double.log().iter().any(|l| l.negative_cached),
        "preflight reads are stale"
    );
    let token_file = dir.join("run/alloc/api/secrets/_outpost-api-count-api-9001.token");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(token_file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    for secret in [AGENT_TOKEN, JWT, "11111111-2222-4333-8444-"] {
        assert!(!stderr.contains(secret), "a secret reached the log");
    }
    // Each sidecar's bootstrap, rendered natively with the service's own token.
    for (group, proxy) in [
        ("api", "_outpost-api-count-api-9001-sidecar-proxy"),
        (
            "dashboard",
            "_outpost-dashboard-count-dashboard-http-sidecar-proxy",
        ),
    ] {
        let task = dir.join(format!("run/alloc/{group}/connect-proxy-count-{group}"));
        let bootstrap = task.join("secrets/envoy_bootstrap.json");
        // Root's, readable by Envoy's group (uid 101 by default) and no one else.
        let owner = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
        };
        let envoy_gid = nix::unistd::User::from_uid(101.into())
            .unwrap()
            .map_or(101, |u| u.gid.as_raw());
        assert_eq!(owner(&bootstrap), (0, envoy_gid, 0o640));
        assert_eq!(owner(&task.join("secrets")), (0, envoy_gid, 0o750));
        let json = std::fs::read_to_string(&bootstrap).unwrap();
        assert!(json.contains(&format!("\"id\": \"{proxy}\"")), "{json}");
        let socket = dir.join(format!("run/alloc/{group}/xds/consul_grpc.sock"));
        assert!(json.contains(&format!("\"path\": \"{}\"", socket.display())));
        let token_line = json
            .lines()
            .skip_while(|l| !l.contains("x-consul-token"))
            .nth(1)
            .unwrap();
        assert!(
            !token_line.contains(AGENT_TOKEN) && !token_line.contains("\"\""),
            "the workload token, not the agent's: {token_line}"
        );
        let cmd = std::fs::read_to_string(task.join("secrets/.envoy_bootstrap.cmd")).unwrap();
        assert!(
            cmd.starts_with(&format!(
                "envoy-bootstrap --grpc-addr unix://{} --http-addr {} --admin-bind 127.0.0.2:",
                socket.display(),
                double.url()
            )),
            "{cmd}"
        );
        assert!(
            cmd.contains(&format!("--proxy-id {proxy} --token <redacted>\n")),
            "{cmd}"
        );
        let env = std::fs::read_to_string(task.join("secrets/.envoy_bootstrap.env")).unwrap();
        assert!(env.starts_with("[\n    \"NOMAD_ALLOC_ID="), "{env}");
        assert!(
            env.ends_with("\"CONSUL_HTTP_SSL=false\",\n    \"CONSUL_HTTP_SSL_VERIFY=true\"\n]\n")
        );
    }

    let again = outpost(&format!("apply -c {}", file.display()));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(double.live_minted(), 2, "the stored tokens are reused");

    let down = outpost(&format!("teardown -c {}", file.display()));
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(double.service_ids().is_empty());
    assert_eq!(double.live_minted(), 0, "tokens logged out");
    assert!(!token_file.exists());
    assert!(
        !dir.join("run/alloc/api").exists(),
        "bootstraps and logs go with the group"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn apply_with_consul_down_sets_up_the_network_and_fails_clearly() {
    let Some(_double) = sandbox("apply with Consul down") else {
        return;
    };
    let dir = support::scratch().join(format!("outpost-consul-down-{}", std::process::id()));
    let file = countdash_config(
        &dir,
        "address = \"http://127.0.0.1:9\"\ntoken = \"down-test-token-value\"",
        &format!("data_dir = \"{}\"", dir.display()),
    );
    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("network applied: 2 group(s)"), "{stderr}");
    assert!(
        stderr.contains("Consul registration at http://127.0.0.1:9: Consul is unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("down-test-token-value"));

    // Teardown with Consul still down: the network goes, the Consul part is reported.
    let down = outpost(&format!("teardown -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success());
    assert!(stderr.contains("deleted bridge outpost"), "{stderr}");
    assert!(
        stderr.contains("the network was removed: run teardown again once Consul answers"),
        "{stderr}"
    );
    let bridge = Command::new("ip")
        .args(["link", "show", "outpost"])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "the bridge is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in `consul` that records its argv, its environment and the token it was given
/// (with the token file's mode), then prints `{}` as a bootstrap would.
fn stub_consul(dir: &Path) -> PathBuf {
    let path = dir.join("consul");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {0}/argv.$$\ntr '\\0' '\\n' < /proc/$$/environ > {0}/env.$$\nstat -c '%a %U' \"$CONSUL_HTTP_TOKEN_FILE\" > {0}/token.$$\ncat \"$CONSUL_HTTP_TOKEN_FILE\" >> {0}/token.$$\necho '{{}}'\n",
            dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// What the stub recorded for the run whose argv holds `proxy_id`: (argv, env).
fn recorded(dir: &Path, proxy_id: &str) -> (Vec<String>, Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("argv.") else {
            continue;
        };
        let argv: Vec<String> = std::fs::read_to_string(entry.path())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        if argv.iter().any(|a| a == proxy_id) {
            let env = std::fs::read_to_string(dir.join(format!("env.{pid}")))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            return (argv, env);
        }
    }
    panic!("the stub consul never ran for {proxy_id}");
}

#[test]
fn consul_cli_mode_runs_consul_with_nomads_argv_and_minimal_environment() {
    if !support::private_network("consul-cli bootstrap") {
        return;
    }
    let dir = support::scratch().join(format!("outpost-consul-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = support::pki::test_pki();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca_pem),
        write("client.pem", &pki.client_cert_pem),
        write("client.key", &pki.client_key_pem),
    );
    let double = ConsulDouble::start_tls(support::pki::tls_server(&pki));
    let consul = stub_consul(&dir);
    let file = countdash_config(
        &dir,
        &format!(
            "address = \"{}\"\ntoken = \"agent-token-for-envoy\"\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\ngrpc_ca_file = \"{ca}\"",
            double.url()
        ),
        &format!(
            "data_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"",
            dir.display()
        ),
    );
    let config = std::fs::read_to_string(&file).unwrap().replace(
        "[envoy]\n",
        &format!(
            "[envoy]\nbootstrap = \"consul-cli\"\nconsul_binary = \"{}\"\n",
            consul.display()
        ),
    );
    std::fs::write(&file, config).unwrap();

    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("agent-token-for-envoy"));

    let proxy = "_outpost-api-count-api-9001-sidecar-proxy";
    let (argv, env) = recorded(&dir, proxy);
    let socket = format!(
        "unix://{}/run/alloc/api/xds/consul_grpc.sock",
        dir.display()
    );
    let url = double.url();
    let expected: Vec<&str> = vec![
        "connect",
        "envoy",
        "-grpc-addr",
        &socket,
        "-http-addr",
        &url,
        "-admin-bind",
        "127.0.0.2:19000",
        "-address",
        "127.0.0.1:19100",
        "-proxy-id",
        proxy,
        "-bootstrap",
        "-grpc-ca-file",
        &ca,
        "-ca-file",
        &ca,
        "-client-cert",
        &cert,
        "-client-key",
        &key,
    ];
    assert_eq!(argv, expected);
    // Exactly these variables (a process's environment has no order; the .env file keeps
    // Nomad's).
    let mut names: Vec<&str> = env.iter().map(|kv| kv.split('=').next().unwrap()).collect();
    names.sort_unstable();
    let mut expected_names = [
        "NOMAD_ALLOC_ID",
        "NOMAD_SHORT_ALLOC_ID",
        "NOMAD_ALLOC_NAME",
        "NOMAD_GROUP_NAME",
        "NOMAD_JOB_NAME",
        "NOMAD_JOB_ID",
        "NOMAD_NAMESPACE",
        "NOMAD_REGION",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "CONSUL_HTTP_TOKEN_FILE",
    ];
    expected_names.sort_unstable();
    assert_eq!(names, expected_names);
    assert!(env.contains(&"CONSUL_HTTP_SSL=true".to_string()));
    assert!(env.contains(&"NOMAD_GROUP_NAME=api".to_string()));
    // The same files as in native mode; the .cmd without the token.
    let secrets = dir.join("run/alloc/api/connect-proxy-count-api/secrets");
    assert_eq!(
        std::fs::read_to_string(secrets.join("envoy_bootstrap.json")).unwrap(),
        "{}\n"
    );
    let cmd = std::fs::read_to_string(secrets.join(".envoy_bootstrap.cmd")).unwrap();
    assert!(cmd.starts_with("connect envoy -grpc-addr "), "{cmd}");
    assert!(!cmd.contains("-token") && !cmd.contains("agent-token-for-envoy"));
    // The token reached `consul` through a file only root could read, gone afterwards.
    let token_file = format!(
        "CONSUL_HTTP_TOKEN_FILE={}",
        secrets.join(".consul_http_token").display()
    );
    assert!(env.contains(&token_file), "{env:?}");
    let pid = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("argv.")?.to_string();
            let argv = std::fs::read_to_string(e.path()).ok()?;
            argv.contains(proxy).then_some(pid)
        })
        .unwrap();
    let given = std::fs::read_to_string(dir.join(format!("token.{pid}"))).unwrap();
    assert_eq!(given, "600 root\nagent-token-for-envoy");
    assert!(!secrets.join(".consul_http_token").exists());

    let down = outpost(&format!("teardown -c {}", file.display()));
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
