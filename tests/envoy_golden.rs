//! The native bootstrap against Consul's own `consul connect envoy -bootstrap` outputs
//! (../shared/reference/consul-envoy-golden, read in place, never copied). Each case must
//! be byte-equal to its golden. Our own snapshots in tests/expected/envoy cover the same
//! inputs when ../shared is absent; cases that need Consul's test CA run only with it.

use outpost::envoy::bootstrap::{AgentAddress, Inputs, Options, render};
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/consul-envoy-golden")
}

fn base() -> Inputs {
    Inputs {
        proxy_id: "test-proxy".into(),
        cluster: "test".into(),
        namespace: "default".into(),
        partition: "default".into(),
        datacenter: "dc1".into(),
        options: Options {
            admin_address: "::1".into(),
            admin_port: 19000,
            admin_access_log_path: "/dev/null".into(),
            agent: AgentAddress::Tcp {
                address: "::1".into(),
                port: 8502,
            },
            agent_tls_ca: None,
            token: String::new(),
            node_name: None,
            omit_deprecated_tags: false,
        },
        extra_static_clusters_json: None,
        extra_static_listeners_json: None,
        extra_stats_sinks_json: None,
    }
}

/// The base inputs with `change` applied.
fn with(change: impl FnOnce(&mut Inputs)) -> Inputs {
    let mut i = base();
    change(&mut i);
    i
}

fn test_ca() -> Option<String> {
    std::fs::read_to_string(golden_dir().join("inputs/test/ca/root.cer")).ok()
}

/// Compares with the golden when ../shared is there, and with our snapshot when we keep one.
fn check(case: &str, inputs: &Inputs, snapshot: bool) {
    let rendered = render(inputs).expect("renders");
    if let Ok(golden) = std::fs::read_to_string(golden_dir().join(format!("{case}.golden"))) {
        assert!(
            rendered == golden,
            "{case}: not byte-equal to Consul's golden\n--- ours\n{rendered}"
        );
    } else {
        eprintln!("{case}: ../shared absent, golden comparison skipped");
    }
    if snapshot {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/expected/envoy/{case}.json"));
        if std::env::var_os("UPDATE_EXPECTED").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        assert_eq!(
            rendered,
            std::fs::read_to_string(&path).unwrap_or_default(),
            "{case}: snapshot"
        );
    }
}

#[test]
fn defaults() {
    check("defaults-with-dual-stack", &base(), true);
}

#[test]
fn admin_bind() {
    let i = with(|i| {
        i.options.admin_address = "127.0.0.1".into();
        i.options.admin_port = 9999;
    });
    check("admin-bind-flag-with-dual-stack", &i, true);
}

#[test]
fn node_name_in_metadata() {
    let i = with(|i| i.options.node_name = Some("test-node".into()));
    check("defaults-nodemeta-dualstack", &i, true);
}

#[test]
fn unix_socket_agent_is_a_pipe() {
    let i = with(|i| {
        i.options.agent = AgentAddress::Unix {
            path: "/var/run/consul.sock".into(),
        }
    });
    check("grpc-addr-unix-dualstack", &i, true);
}

#[test]
fn token_goes_into_the_initial_metadata() {
    let i = with(|i| i.options.token = "c9a52720-bf6c-4aa6-b8bc-66881a5ade95".into());
    check("token-file-env-dualstack", &i, true);
}

#[test]
fn tls_to_the_agent_inlines_the_ca() {
    let Some(ca) = test_ca() else {
        eprintln!("../shared absent: TLS cases need Consul's test CA; skipped");
        return;
    };
    let tcp = with(|i| {
        i.options.agent = AgentAddress::Tcp {
            address: "127.0.0.1".into(),
            port: 8502,
        };
        i.options.agent_tls_ca = Some(ca.clone());
    });
    check("existing-ca-file-dualstack", &tcp, false);
    let unix = with(|i| {
        i.options.agent = AgentAddress::Unix {
            path: "/var/run/consul.sock".into(),
        };
        i.options.agent_tls_ca = Some(ca);
    });
    check("grpc-addr-unix-with-tls-dualstack", &unix, false);
}

#[test]
fn deprecated_tags_can_be_omitted() {
    let all = render(&base()).unwrap();
    let without = render(&with(|i| i.options.omit_deprecated_tags = true)).unwrap();
    assert!(all.contains("\"tag_name\": \"consul.service\""));
    assert!(!without.contains("\"tag_name\": \"consul.service\""));
    assert!(without.contains("\"tag_name\": \"consul.destination.service\""));
}

#[test]
fn admin_access_log_path() {
    let i = with(|i| i.options.admin_access_log_path = "/some/path/access.log".into());
    check("access-log-path-dualstack", &i, true);
}

#[test]
fn extra_static_clusters_listeners_and_sinks_are_inserted_verbatim() {
    // The Consul test's strings carry newlines and tabs around each object.
    let i = Inputs {
        extra_static_clusters_json: Some(
            "\n\t\t\t\t{\n\t\t\t\t\t\"name\": \"fake_cluster_1\"\n\t\t\t\t}\n\t\t\t".into(),
        ),
        extra_static_listeners_json: Some(
            "\n\t\t\t\t{\n\t\t\t\t\t\"name\": \"fake_listener_1\"\n\t\t\t\t}\n\t\t\t".into(),
        ),
        extra_stats_sinks_json: Some(
            "\n\t\t\t\t{\n\t\t\t\t\t\"name\": \"fake_sink_1\"\n\t\t\t\t}\n\t\t\t".into(),
        ),
        ..base()
    };
    check("extra_-single-dualstack", &i, true);
}

#[test]
fn an_invalid_fragment_is_an_error_naming_the_setting() {
    let i = Inputs {
        extra_static_clusters_json: Some(r#"{"name": "x",}"#.into()),
        ..base()
    };
    assert_eq!(
        render(&i).unwrap_err(),
        "Proxy.Config envoy_extra_static_clusters_json is not valid JSON: expected a key in quotes at byte 14"
    );
}
