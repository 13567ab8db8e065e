//! `outpost envoy-bootstrap` against Consul's own `consul connect envoy -bootstrap` outputs
//! (../shared/reference/consul-envoy-golden, read in place, never copied). Each case runs the
//! real binary with the case's flags and environment against the Consul double, set up the
//! way Consul's test mock answers (CASES.md): the proxy `test-proxy` registered as a
//! connect-proxy for `test` in dc1, and the agent's bind address IPv6 for the dual-stack
//! cases. The output must be byte-equal to the golden.
//!
//! Where ../shared is absent, our own snapshots in tests/expected/envoy (checked in, our
//! output) cover the same inputs; the cases that need Consul's test CA then skip.

mod support;

use outpost::config::Consul;
use outpost::consul::client::Client;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::consul_double::{AgentSelf, ConsulDouble};

const TOKEN: &str = "c9a52720-bf6c-4aa6-b8bc-66881a5ade95";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/consul-envoy-golden")
}

fn test_ca_path() -> PathBuf {
    golden_dir().join("inputs/test/ca/root.cer")
}

fn scratch(name: &str) -> PathBuf {
    let dir = support::scratch().join(format!("outpost-golden-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A double answering as Consul's test mock: dual-stack or not, `test-proxy` registered
/// with `proxy_config` as its Proxy.Config.
fn mock_agent(double: ConsulDouble, dual_stack: bool, proxy_config: &str) -> ConsulDouble {
    mock_agent_with(double, dual_stack, proxy_config, Consul::default())
}

/// The same, reaching the double with `client` settings (its TLS files).
fn mock_agent_with(
    double: ConsulDouble,
    dual_stack: bool,
    proxy_config: &str,
    client: Consul,
) -> ConsulDouble {
    double.set_agent_self(AgentSelf {
        bind_addr: if dual_stack { "::" } else { "127.0.0.1" }.into(),
        xds_ports: Some((8502, 0)),
        debug_grpc_port: 8502,
    });
    register_with(&double, proxy_config, client);
    double
}

fn register_test_proxy(double: &ConsulDouble, proxy_config: &str) {
    register_with(double, proxy_config, Consul::default());
}

fn register_with(double: &ConsulDouble, proxy_config: &str, client: Consul) {
    let client = Client::new(&Consul {
        address: double.url(),
        ..client
    })
    .unwrap();
    client
        .put(
            "/v1/agent/service/register",
            &format!(
                r#"{{"Kind":"connect-proxy","ID":"test-proxy","Name":"test-proxy","Port":21000,
                    "Proxy":{{"DestinationServiceName":"test","DestinationServiceID":"test","Config":{proxy_config}}}}}"#
            ),
        )
        .unwrap();
}

struct Run {
    stdout: String,
    stderr: String,
    ok: bool,
}

fn run(double: &ConsulDouble, flags: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("envoy-bootstrap")
        .args(flags)
        .env_clear()
        .env("CONSUL_HTTP_ADDR", double.url())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

/// Byte-equal to the golden when ../shared is there; equal to our snapshot when we keep one.
fn check(case: &str, run: &Run, snapshot: bool) {
    assert!(run.ok, "{case}: failed: {}", run.stderr);
    if let Ok(golden) = std::fs::read_to_string(golden_dir().join(format!("{case}.golden"))) {
        assert!(
            run.stdout == golden,
            "{case}: not byte-equal to Consul's golden\n--- ours\n{}",
            run.stdout
        );
    } else {
        eprintln!("{case}: ../shared absent, golden comparison skipped");
    }
    if snapshot {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/expected/envoy/{case}.json"));
        if std::env::var_os("UPDATE_EXPECTED").is_some() {
            std::fs::write(&path, &run.stdout).unwrap();
        }
        assert_eq!(
            run.stdout,
            std::fs::read_to_string(&path).unwrap_or_default(),
            "{case}: snapshot"
        );
    }
}

fn plain_mock(dual_stack: bool) -> ConsulDouble {
    mock_agent(ConsulDouble::start(), dual_stack, "{}")
}

#[test]
fn defaults() {
    let d = plain_mock(true);
    let r = run(&d, &["--proxy-id", "test-proxy"], &[]);
    assert_eq!(r.stderr, "");
    check("defaults-with-dual-stack", &r, true);
}

#[test]
fn admin_bind_localhost_resolves_to_ipv4() {
    let d = plain_mock(true);
    let r = run(
        &d,
        &["--proxy-id", "test-proxy", "--admin-bind", "localhost:9999"],
        &[],
    );
    check("admin-bind-flag-with-dual-stack", &r, true);
}

#[test]
fn node_name_looks_up_the_catalog_and_goes_into_metadata() {
    let d = plain_mock(true);
    // The double's node is edge-01; Consul's mock answers for any node.
    let r = run(
        &d,
        &["--proxy-id", "test-proxy", "--node-name", "edge-01"],
        &[],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        d.log()
            .iter()
            .any(|l| l.path == "/v1/catalog/node-services/edge-01")
    );
    // The golden is for node "test-node"; the name is the only difference.
    let ours = r.stdout.replace("\"edge-01\"", "\"test-node\"");
    check(
        "defaults-nodemeta-dualstack",
        &Run { stdout: ours, ..r },
        true,
    );
}

#[test]
fn token_file_from_the_environment() {
    let d = plain_mock(true);
    let dir = scratch("token");
    let file = dir.join("token.txt");
    std::fs::write(&file, TOKEN).unwrap();
    let r = run(
        &d,
        &["--proxy-id", "test-proxy"],
        &[("CONSUL_HTTP_TOKEN_FILE", file.to_str().unwrap())],
    );
    check("token-file-env-dualstack", &r, true);
    // The file wins over CONSUL_HTTP_TOKEN, and --token over both.
    let both = run(
        &d,
        &["--proxy-id", "test-proxy"],
        &[
            ("CONSUL_HTTP_TOKEN_FILE", file.to_str().unwrap()),
            ("CONSUL_HTTP_TOKEN", "from-env"),
        ],
    );
    assert_eq!(both.stdout, r.stdout);
    let flag = run(
        &d,
        &["--proxy-id", "test-proxy", "--token", "from-flag"],
        &[("CONSUL_HTTP_TOKEN_FILE", file.to_str().unwrap())],
    );
    assert!(flag.stdout.contains("\"value\": \"from-flag\""));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unix_socket_agent_is_a_pipe() {
    let d = plain_mock(true);
    let r = run(
        &d,
        &[
            "--proxy-id",
            "test-proxy",
            "--grpc-addr",
            "unix:///var/run/consul.sock",
        ],
        &[],
    );
    check("grpc-addr-unix-dualstack", &r, true);
}

#[test]
fn tls_to_the_agent_inlines_the_ca() {
    if !test_ca_path().exists() {
        eprintln!("../shared absent: the TLS cases need Consul's test CA; skipped");
        return;
    }
    let ca = test_ca_path();
    let ca = ca.to_str().unwrap();
    let d = plain_mock(true);
    let unix = run(
        &d,
        &[
            "--proxy-id",
            "test-proxy",
            "--grpc-ca-file",
            ca,
            "--grpc-addr",
            "unix:///var/run/consul.sock",
        ],
        &[],
    );
    check("grpc-addr-unix-with-tls-dualstack", &unix, false);

    // Consul's case serves its HTTP API over TLS too.
    let pki = support::pki::test_pki();
    let dir = scratch("tls");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (http_ca, cert, key) = (
        write("ca.pem", &pki.ca_pem),
        write("client.pem", &pki.client_cert_pem),
        write("client.key", &pki.client_key_pem),
    );
    let d = mock_agent_with(
        ConsulDouble::start_tls(support::pki::tls_server(&pki)),
        true,
        "{}",
        Consul {
            ca_file: Some(http_ca.clone()),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            ..Consul::default()
        },
    );
    let tcp = run(
        &d,
        &["--proxy-id", "test-proxy", "--grpc-ca-file", ca],
        &[
            ("CONSUL_GRPC_ADDR", "https://127.0.0.1:8502"),
            ("CONSUL_CACERT", &http_ca),
            ("CONSUL_CLIENT_CERT", &cert),
            ("CONSUL_CLIENT_KEY", &key),
        ],
    );
    check("existing-ca-file-dualstack", &tcp, false);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_deprecated_access_log_flag_warns_and_works() {
    let d = plain_mock(true);
    let r = run(
        &d,
        &[
            "--proxy-id",
            "test-proxy",
            "--admin-access-log-path",
            "/some/path/access.log",
        ],
        &[],
    );
    assert!(
        r.stderr.contains("-admin-access-log-path is deprecated"),
        "{}",
        r.stderr
    );
    check("access-log-path-dualstack", &r, true);
}

#[test]
fn extra_static_clusters_listeners_and_sinks_are_inserted_verbatim() {
    // Consul's test strings carry newlines and tabs around each object.
    let d = mock_agent(
        ConsulDouble::start(),
        true,
        r#"{"envoy_extra_static_clusters_json":"\n\t\t\t\t{\n\t\t\t\t\t\"name\": \"fake_cluster_1\"\n\t\t\t\t}\n\t\t\t",
            "envoy_extra_static_listeners_json":"\n\t\t\t\t{\n\t\t\t\t\t\"name\": \"fake_listener_1\"\n\t\t\t\t}\n\t\t\t",
            "envoy_extra_stats_sinks_json":"\n\t\t\t\t{\n\t\t\t\t\t\"name\": \"fake_sink_1\"\n\t\t\t\t}\n\t\t\t"}"#,
    );
    let r = run(&d, &["--proxy-id", "test-proxy"], &[]);
    check("extra_-single-dualstack", &r, true);
}

#[test]
fn ingress_gateway_registered_without_proxy_id_or_address() {
    let d = ConsulDouble::start();
    let r = run(
        &d,
        &[
            "--gateway",
            "ingress",
            "--register",
            "--service",
            "my-gateway",
        ],
        &[],
    );
    check(
        "ingress-gateway-register-with-service-without-proxy-id-without-address",
        &r,
        true,
    );
    let registered = d.service("my-gateway").expect("the gateway is registered");
    assert!(matches!(
        registered.get("Kind"),
        Some(miniserde::json::Value::String(k)) if k == "ingress-gateway"
    ));
}

#[test]
fn consuls_error_texts() {
    let d = plain_mock(false);
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &[],
            &[],
            "No proxy ID specified. One of -proxy-id, -sidecar-for, or -gateway is required",
        ),
        (
            &["--node-name", "n1"],
            &[],
            "'-node-name' requires '-proxy-id'",
        ),
        (
            &["--gateway", "egress"],
            &[],
            "Gateway must be one of: api, terminating, mesh, or ingress",
        ),
        (
            &["--proxy-id", "test-proxy", "--ca-file", "some/path"],
            &[],
            "Error loading CA File: open some/path: no such file or directory",
        ),
        (
            &["--proxy-id", "test-proxy"],
            &[("CONSUL_CAPATH", "some/path")],
            "lstat some/path: no such file or directory",
        ),
        (
            &[
                "--proxy-id",
                "test-proxy",
                "--prometheus-cert-file",
                "c.pem",
            ],
            &[],
            "Must provide a CA (-prometheus-ca-file or -prometheus-ca-path) as well as -prometheus-cert-file and -prometheus-key-file to enable TLS for prometheus metrics",
        ),
    ];
    for (flags, env, message) in cases {
        let r = run(&d, flags, env);
        assert!(!r.ok, "{flags:?} should fail");
        assert_eq!(r.stderr.trim_end(), message, "{flags:?}");
        assert_eq!(r.stdout, "");
    }

    let disabled = ConsulDouble::start();
    disabled.set_agent_self(AgentSelf {
        xds_ports: None,
        debug_grpc_port: -1,
        ..AgentSelf::default()
    });
    register_test_proxy(&disabled, "{}");
    let r = run(&disabled, &["--proxy-id", "test-proxy"], &[]);
    assert_eq!(r.stderr.trim_end(), "agent has grpc disabled");

    let bad = mock_agent(
        ConsulDouble::start(),
        false,
        r#"{"envoy_extra_static_clusters_json":"{\"name\": \"x\",}"}"#,
    );
    let r = run(&bad, &["--proxy-id", "test-proxy"], &[]);
    assert_eq!(
        r.stderr.trim_end(),
        "Proxy.Config envoy_extra_static_clusters_json is not valid JSON: expected a key in quotes at byte 14"
    );
}

#[test]
fn acls_on_without_a_token_is_a_warning_only() {
    let d = plain_mock(false);
    d.enable_acls();
    // The double refuses reads without a token once ACLs are on; Consul's mock answers
    // the service lookup anyway. Only the warning matters here.
    let r = run(&d, &["--proxy-id", "test-proxy"], &[]);
    assert!(
        r.stderr
            .starts_with("No ACL token was provided to Envoy. Because the ACL system is enabled"),
        "{}",
        r.stderr
    );
}

#[test]
fn sidecar_for_finds_the_one_proxy_of_a_service() {
    let d = plain_mock(false);
    let by_parent = run(&d, &["--sidecar-for", "TEST"], &[]);
    let by_id = run(&d, &["--proxy-id", "test-proxy"], &[]);
    assert!(by_parent.ok, "{}", by_parent.stderr);
    assert_eq!(by_parent.stdout, by_id.stdout);
    let none = run(&d, &["--sidecar-for", "web"], &[]);
    assert_eq!(
        none.stderr.trim_end(),
        "No sidecar proxy registered for web"
    );
}

#[test]
fn proxy_config_knobs_render_consuls_helper_listeners_and_sinks() {
    let d = mock_agent(
        ConsulDouble::start(),
        false,
        r#"{"envoy_prometheus_bind_addr":"0.0.0.0:9102","envoy_stats_bind_addr":"0.0.0.0:9103",
            "envoy_statsd_url":"udp://127.0.0.1:8125","envoy_dogstatsd_url":"unix:///var/run/dog.sock",
            "envoy_stats_tags":["Canary","env=edge"],"envoy_stats_flush_interval":"10s",
            "envoy_tracing_json":"{\"http\":{\"name\":\"envoy.tracers.zipkin\"}}"}"#,
    );
    d.set_proxy_defaults(
        match miniserde::json::from_str(
            r#"{"Kind":"proxy-defaults","Name":"global","AccessLogs":{"Enabled":true,"Type":"file","Path":"/var/log/envoy.log","TextFormat":"MY START TIME %START_TIME%"}}"#,
        ) {
            Ok(miniserde::json::Value::Object(o)) => o,
            _ => unreachable!(),
        },
    );
    let r = run(
        &d,
        &[
            "--proxy-id",
            "test-proxy",
            "--envoy-ready-bind-address",
            "127.0.0.1",
            "--envoy-ready-bind-port",
            "21000",
            "--prometheus-backend-port",
            "20100",
            "--prometheus-scrape-path",
            "/scrape-path",
        ],
        &[],
    );
    check("proxy-config-knobs", &r, true);
}
