//! Registration, sync and preflight against the Consul agent double (tests/support).

mod support;

use miniserde::json::Value;
use outpost::config::ValidConfig;
use outpost::consul::client::{Client, ConsulError};
use outpost::consul::preflight;
use outpost::consul::sync::{self, Wanted};
use outpost::plan::{self, HostFacts, Plan};
use outpost::state::NodeState;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use support::consul_double::ConsulDouble;
use support::pki::{test_pki, test_pki_for, tls_server};

const TOKEN: &str = "5f1e2d3c-secret-token-value-0001";

/// Every log line outpost writes in this test binary, at every level.
struct Capture;
static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_boxed_logger(Box::new(Capture)).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn assert_logs_free_of(secrets: &[&str]) {
    let lines = LINES.lock().unwrap();
    assert!(!lines.is_empty(), "the flows under test log something");
    for line in lines.iter() {
        for secret in secrets {
            assert!(!line.contains(secret), "a secret reached the log: {line}");
        }
    }
}

fn consul_config(url: &str, extra: &str) -> ValidConfig {
    outpost::parse_config(
        &format!("[consul]\naddress = \"{url}\"\n{extra}"),
        "test.toml",
    )
    .expect("valid")
}

fn countdash_plan() -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/countdash.toml");
    let valid = outpost::load_config(&path).expect("countdash is valid");
    let facts = HostFacts {
        hostname: "gateway-7".into(),
        default_address: Ipv4Addr::new(192, 0, 2, 10),
        default_address_source: "test".into(),
        listening_ports: Default::default(),
    };
    plan::build(&valid, &NodeState::default(), &facts).expect("plan")
}

fn wanted(plan: &Plan) -> Vec<Wanted<'_>> {
    plan.groups
        .iter()
        .flat_map(|g| &g.services)
        .map(|s| Wanted {
            id: &s.id,
            body: &s.registration,
        })
        .collect()
}

fn str_at<'a>(obj: &'a miniserde::json::Object, path: &[&str]) -> Option<&'a str> {
    let mut cur = obj;
    for (i, key) in path.iter().enumerate() {
        match cur.get(*key)? {
            Value::Object(o) if i + 1 < path.len() => cur = o,
            Value::String(s) if i + 1 == path.len() => return Some(s),
            _ => return None,
        }
    }
    None
}

#[test]
fn countdash_bodies_are_accepted_and_sidecars_expanded_as_consul_does() {
    let double = ConsulDouble::start();
    let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
    let plan = countdash_plan();
    let done = sync::sync(&client, &wanted(&plan), true).expect("sync");
    assert_eq!(
        done.registered,
        [
            "_outpost-api-count-api-9001",
            "_outpost-dashboard-count-dashboard-http"
        ]
    );
    assert_eq!(
        double.service_ids(),
        [
            "_outpost-api-count-api-9001",
            "_outpost-api-count-api-9001-sidecar-proxy",
            "_outpost-dashboard-count-dashboard-http",
            "_outpost-dashboard-count-dashboard-http-sidecar-proxy"
        ]
    );
    let sidecar = double
        .service("_outpost-api-count-api-9001-sidecar-proxy")
        .unwrap();
    assert_eq!(str_at(&sidecar, &["Kind"]), Some("connect-proxy"));
    assert_eq!(
        str_at(&sidecar, &["Service"]),
        Some("count-api-sidecar-proxy")
    );
    assert_eq!(
        str_at(&sidecar, &["Proxy", "DestinationServiceName"]),
        Some("count-api")
    );
    assert_eq!(
        str_at(&sidecar, &["Proxy", "LocalServiceAddress"]),
        Some("127.0.0.1")
    );
    assert!(matches!(
        sidecar.get("Proxy").and_then(|p| match p {
            Value::Object(p) => p.get("LocalServicePort"),
            _ => None,
        }),
        Some(Value::Number(miniserde::json::Number::U64(9001)))
    ));
    assert_eq!(
        str_at(&sidecar, &["Meta", "external-source"]),
        Some("outpost")
    );

    // Nothing changed: a second sync registers nothing.
    let again = sync::sync(&client, &wanted(&plan), true).expect("sync");
    assert_eq!(again, sync::Synced::default());
}

#[test]
fn an_agent_restart_is_repaired_and_a_removed_group_deregistered_sidecar_first() {
    let double = ConsulDouble::start();
    let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
    let plan = countdash_plan();
    sync::sync(&client, &wanted(&plan), true).unwrap();

    double.restart();
    assert!(double.service_ids().is_empty());
    let repaired = sync::sync(&client, &wanted(&plan), true).unwrap();
    assert_eq!(repaired.registered.len(), 2);
    assert_eq!(double.service_ids().len(), 4);

    // The dashboard group is gone from the config.
    let only_api: Vec<Wanted> = wanted(&plan)
        .into_iter()
        .filter(|w| w.id.contains("-api-"))
        .collect();
    let removed = sync::sync(&client, &only_api, true).unwrap();
    assert_eq!(
        removed.deregistered,
        ["_outpost-dashboard-count-dashboard-http"]
    );
    assert_eq!(double.service_ids().len(), 2);
    let deregs: Vec<String> = double
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/v1/agent/service/deregister/"))
        .map(|l| l.path)
        .collect();
    assert_eq!(
        deregs,
        [
            "/v1/agent/service/deregister/_outpost-dashboard-count-dashboard-http-sidecar-proxy",
            "/v1/agent/service/deregister/_outpost-dashboard-count-dashboard-http"
        ]
    );
    // Without orphan removal (start-up probation) nothing of ours is removed.
    sync::sync(&client, &wanted(&plan), true).unwrap();
    let kept = sync::sync(&client, &only_api, false).unwrap();
    assert!(kept.deregistered.is_empty());
    assert_eq!(double.service_ids().len(), 4);
}

#[test]
fn the_double_rejects_what_consul_rejects_and_errors_are_classified() {
    let double = ConsulDouble::start();
    let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
    let put = |body: &str| client.put("/v1/agent/service/register", body);
    assert_eq!(
        put(r#"{"ID":"x","Port":1}"#),
        Err(ConsulError::Rejected {
            status: 400,
            body: "Missing service name".into()
        })
    );
    assert_eq!(
        put(r#"{"Name":"x","Kind":"sidecar"}"#),
        Err(ConsulError::Rejected {
            status: 400,
            body: "Invalid service kind: \"sidecar\"".into()
        })
    );
    assert!(matches!(
        put(r#"{"Name":"x","Prot":1}"#),
        Err(ConsulError::Rejected { status: 400, .. })
    ));
    assert!(matches!(
        put(r#"{"Name":"x","Port":"80"}"#),
        Err(ConsulError::Rejected { status: 400, .. })
    ));
    assert_eq!(
        client.put("/v1/agent/service/deregister/nope", ""),
        Err(ConsulError::Rejected {
            status: 404,
            body: "Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.".into()
        })
    );
    let e = client.get("/v1/agent/service/nope").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unexpected response code: 404 (unknown service ID: nope)"
    );
    assert!(!e.is_retryable());

    double.fail_next(1);
    let e = client.get("/v1/agent/services").unwrap_err();
    assert!(matches!(e, ConsulError::Server { status: 500, .. }) && e.is_retryable());
    assert!(client.get("/v1/agent/services").is_ok());

    let dead = Client::new(&consul_config("http://127.0.0.1:9", "").config.consul).unwrap();
    assert!(matches!(
        dead.get("/v1/agent/self"),
        Err(ConsulError::Unreachable(_))
    ));
}

#[test]
fn token_preflight_waits_out_replication_lag_without_negative_caching() {
    let double = ConsulDouble::start();
    double.enable_acls();
    double.add_token(TOKEN, Duration::from_secs(3));
    let valid = consul_config(&double.url(), &format!("token = \"{TOKEN}\""));
    let client = Client::new(&valid.config.consul).unwrap();
    capture_logs();
    preflight::token(&client, &valid.config.consul.preflight, "service lag-test")
        .expect("preflight passes once replicated");
    // Logged once per state change: one info line, the repeats at debug.
    let lines = LINES.lock().unwrap().clone();
    let step = "ACL token preflight for service lag-test: Unexpected response code: 403 (ACL not found); retrying in";
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("INFO {step}")))
            .count(),
        1,
        "{lines:#?}"
    );
    // (release builds compile debug logging out: log's release_max_level_info)
    assert!(
        !cfg!(debug_assertions)
            || lines
                .iter()
                .any(|l| l.starts_with("DEBUG ACL token preflight for service lag-test"))
    );
    let reads: Vec<_> = double
        .log()
        .into_iter()
        .filter(|l| l.path == "/v1/acl/token/self")
        .collect();
    assert!(
        reads.len() > 1,
        "the token was not visible at first: {reads:?}"
    );
    assert!(reads.iter().all(|l| l.query == "stale" && l.sent_token));
    assert!(!double.log().iter().any(|l| l.negative_cached));
    assert_eq!(reads.last().map(|l| l.status), Some(200));
}

#[test]
fn token_preflight_timeout_names_the_step_and_the_wait_but_not_the_token() {
    let double = ConsulDouble::start();
    double.enable_acls();
    double.add_token(TOKEN, Duration::from_secs(60));
    let valid = consul_config(
        &double.url(),
        &format!(
            "token = \"{TOKEN}\"\n[consul.preflight]\ntoken_timeout = \"1s\"\ntoken_base = \"100ms\""
        ),
    );
    let client = Client::new(&valid.config.consul).unwrap();
    let err =
        preflight::token(&client, &valid.config.consul.preflight, "service count-api").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("ACL token preflight for service count-api: the local Consul agent did not resolve the token within 1.0s"), "{text}");
    assert!(
        text.ends_with("last answer: Unexpected response code: 403 (ACL not found)"),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
    assert!(!format!("{client:?}").contains(TOKEN));
}

#[test]
fn a_non_stale_read_of_an_unreplicated_token_is_cached_negative() {
    // The failure mode preflight avoids: the double must reproduce it.
    let double = ConsulDouble::start();
    double.enable_acls();
    double.add_token(TOKEN, Duration::from_millis(200));
    let valid = consul_config(&double.url(), &format!("token = \"{TOKEN}\""));
    let client = Client::new(&valid.config.consul).unwrap();
    assert!(matches!(
        client.get("/v1/acl/token/self"),
        Err(ConsulError::AclNotFound(_))
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(
        client.get("/v1/acl/token/self?stale"),
        Err(ConsulError::AclNotFound(_))
    ));
    assert!(double.log().iter().any(|l| l.negative_cached));
}

#[test]
fn service_preflight_reads_back_the_sidecar() {
    let double = ConsulDouble::start();
    let valid = consul_config(
        &double.url(),
        "[consul.preflight]\nservice_timeout = \"3s\"\nservice_base = \"100ms\"",
    );
    let client = Client::new(&valid.config.consul).unwrap();
    let p = &valid.config.consul.preflight;
    let err =
        preflight::service(&client, p, "_outpost-api-count-api-9001-sidecar-proxy").unwrap_err();
    assert!(
        err.to_string()
            .contains("did not show _outpost-api-count-api-9001-sidecar-proxy within 3.0s"),
        "{err}"
    );
    let plan = countdash_plan();
    sync::sync(&client, &wanted(&plan), true).unwrap();
    preflight::service(&client, p, "_outpost-api-count-api-9001-sidecar-proxy")
        .expect("registered");
}

#[test]
fn https_with_a_client_certificate_works_and_without_one_is_refused() {
    let pki = test_pki();
    let dir = support::scratch().join(format!("outpost-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = write("ca.pem", &pki.ca_pem);
    let cert = write("client.pem", &pki.client_cert_pem);
    let key = write("client-key.pem", &pki.client_key_pem);
    let double = ConsulDouble::start_tls(tls_server(&pki));

    let with_cert = consul_config(
        &double.url(),
        &format!("ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\""),
    );
    let client = Client::new(&with_cert.config.consul).expect("client");
    let plan = countdash_plan();
    sync::sync(&client, &wanted(&plan), true).expect("registration over mutual TLS");
    assert_eq!(double.service_ids().len(), 4);

    let without_cert = consul_config(&double.url(), &format!("ca_file = \"{ca}\""));
    let refused = Client::new(&without_cert.config.consul)
        .unwrap()
        .get("/v1/agent/services");
    assert!(
        matches!(refused, Err(ConsulError::Unreachable(_))),
        "{refused:?}"
    );

    let no_ca = consul_config(&double.url(), "");
    let untrusted = Client::new(&no_ca.config.consul)
        .unwrap()
        .get("/v1/agent/services");
    assert!(
        matches!(untrusted, Err(ConsulError::Unreachable(_))),
        "{untrusted:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_tls_files_are_reported_by_setting_name() {
    let valid = consul_config(
        "https://127.0.0.1:8501",
        "ca_file = \"/nonexistent/ca.pem\"",
    );
    let err = Client::new(&valid.config.consul).unwrap_err();
    assert!(
        err.message()
            .starts_with("cannot read consul.ca_file /nonexistent/ca.pem:"),
        "{err}"
    );
}

const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjb3VudC1hcGkifQ.c2lnbmF0dXJl";

#[test]
fn login_mode_mints_a_token_per_service_that_preflights_registers_and_logs_out() {
    use outpost::consul::acl;
    capture_logs();
    let double = ConsulDouble::start();
    double.enable_acls();
    double.add_token(TOKEN, Duration::ZERO);
    double.add_auth_method("nomad-workloads", JWT);
    double.set_minted_lag(Duration::from_millis(1500));
    let dir = support::scratch().join(format!("outpost-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwt_file = dir.join("jwt");
    std::fs::write(&jwt_file, JWT).unwrap();
    let valid = consul_config(
        &double.url(),
        &format!(
            "token = \"{TOKEN}\"\n[consul.acl]\nmode = \"login\"\njwt_file = \"{}\"",
            jwt_file.display()
        ),
    );
    let consul = &valid.config.consul;
    let client = Client::new(consul).unwrap();

    let token = acl::obtain(&client, &consul.acl, "count-api", "edge-01")
        .unwrap()
        .expect("login mode mints");
    assert!(!format!("{token:?}").contains(&token.secret));
    let workload = client.with_token(&token.secret);
    preflight::token(&workload, &consul.preflight, "service count-api")
        .expect("visible after the lag");
    assert!(!double.log().iter().any(|l| l.negative_cached));

    let plan = countdash_plan();
    let api: Vec<Wanted> = wanted(&plan)
        .into_iter()
        .filter(|w| w.id.contains("-api-"))
        .collect();
    sync::sync(&workload, &api, false).expect("registered with the workload token");
    // The bootstrap's first call (what `consul connect envoy -bootstrap` does first): with
    // the token preflighted, it succeeds on the first try.
    let sidecar = "/v1/agent/service/_outpost-api-count-api-9001-sidecar-proxy";
    workload
        .get(sidecar)
        .expect("the first bootstrap read succeeds");
    let reads: Vec<_> = double
        .log()
        .into_iter()
        .filter(|l| l.path == sidecar)
        .collect();
    assert_eq!(reads.len(), 1);
    assert!(reads[0].sent_token && reads[0].status == 200);

    let secrets = dir.join("secrets");
    acl::store_secret(&secrets.join("si_token"), &token.secret).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(secrets.join("si_token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    acl::release(&client, &consul.acl, &token).unwrap();
    assert_eq!(double.live_minted(), 0, "logged out");
    acl::release(&client, &consul.acl, &token).expect("releasing twice is fine");

    std::fs::write(&jwt_file, "not-the-jwt").unwrap();
    let err = acl::obtain(&client, &consul.acl, "count-api", "edge-01").unwrap_err();
    assert!(err.starts_with("ACL login with auth method nomad-workloads for service count-api: Unexpected response code: 403"), "{err}");
    assert!(!err.contains("not-the-jwt") && !err.contains(TOKEN));
    assert_logs_free_of(&[TOKEN, JWT, &token.secret]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn service_identity_mode_creates_a_local_token_and_deletes_it() {
    use outpost::consul::acl;
    let double = ConsulDouble::start();
    double.enable_acls();
    double.add_token(TOKEN, Duration::ZERO);
    let valid = consul_config(
        &double.url(),
        &format!("token = \"{TOKEN}\"\n[consul.acl]\nmode = \"service-identity\""),
    );
    let consul = &valid.config.consul;
    let client = Client::new(consul).unwrap();
    let token = acl::obtain(&client, &consul.acl, "count-dashboard", "edge-01")
        .unwrap()
        .expect("minted");
    assert_eq!(double.live_minted(), 1);
    preflight::token(
        &client.with_token(&token.secret),
        &consul.preflight,
        "service count-dashboard",
    )
    .unwrap();
    acl::release(&client, &consul.acl, &token).unwrap();
    assert_eq!(double.live_minted(), 0, "deleted");

    // agent-token mode mints nothing.
    let agent = consul_config(&double.url(), &format!("token = \"{TOKEN}\""));
    assert_eq!(
        acl::obtain(&client, &agent.config.consul.acl, "x", "n").unwrap(),
        None
    );
}

#[test]
fn the_presence_check_names_what_a_restarted_agent_forgot() {
    use outpost::consul::anti_entropy::missing;
    let double = ConsulDouble::start();
    let valid = consul_config(&double.url(), "");
    let client = Client::new(&valid.config.consul).unwrap();
    let plan = countdash_plan();
    let wanted = wanted(&plan);
    sync::sync(&client, &wanted, false).unwrap();
    let mut ids: Vec<String> = wanted.iter().map(|w| w.id.to_string()).collect();
    ids.extend(wanted.iter().map(|w| format!("{}-sidecar-proxy", w.id)));
    assert_eq!(missing(&client, &ids).unwrap(), None);
    double.restart();
    assert_eq!(missing(&client, &ids).unwrap(), Some(ids[0].clone()));
    double.fail_next(1);
    assert!(missing(&client, &ids).unwrap_err().is_retryable());
}

#[test]
fn tls_server_name_verifies_the_certificate_against_that_name() {
    let pki = test_pki_for(&["consul.service.test"]);
    let dir = support::scratch().join(format!("outpost-sni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca = path("ca.pem", &pki.ca_pem);
    let cert = path("client.pem", &pki.client_cert_pem);
    let key = path("client-key.pem", &pki.client_key_pem);
    let double = ConsulDouble::start_tls(tls_server(&pki));
    let files = format!("ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"");
    let named = consul_config(
        &double.url(),
        &format!("{files}\ntls_server_name = \"consul.service.test\""),
    );
    Client::new(&named.config.consul)
        .unwrap()
        .get("/v1/agent/self")
        .expect("verified as consul.service.test");
    let unnamed = consul_config(&double.url(), &files);
    let mismatch = Client::new(&unnamed.config.consul)
        .unwrap()
        .get("/v1/agent/self");
    assert!(
        matches!(mismatch, Err(ConsulError::Unreachable(_))),
        "127.0.0.1 is not in the certificate: {mismatch:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_unix_socket_address_reaches_the_agent() {
    let dir = support::scratch().join(format!("outpost-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let double = ConsulDouble::start_unix(&dir.join("consul.sock"));
    let valid = consul_config(&double.url(), "");
    assert!(valid.config.consul.address.starts_with("unix:///"));
    let client = Client::new(&valid.config.consul).unwrap();
    let plan = countdash_plan();
    sync::sync(&client, &wanted(&plan), true).expect("registration over the unix socket");
    assert_eq!(double.service_ids().len(), 4);
    let again = sync::sync(&client, &wanted(&plan), true).unwrap();
    assert_eq!(again, sync::Synced::default());

    let gone = consul_config(&format!("unix://{}/nothing.sock", dir.display()), "");
    let err = Client::new(&gone.config.consul)
        .unwrap()
        .get("/v1/agent/self")
        .unwrap_err();
    assert!(
        matches!(err, ConsulError::Unreachable(_)) && err.is_retryable(),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A unix socket needs no name lookup: on an image without /etc/hosts and without DNS (a
/// minimal Debian root has none), the agent still reaches Consul. The client runs in a
/// thread of its own mount namespace where /etc/hosts and /etc/resolv.conf are empty.
#[test]
fn a_unix_socket_address_needs_no_name_lookup() {
    if !support::root_or_skip("a unix socket without /etc/hosts") {
        return;
    }
    let dir = support::scratch().join(format!("outpost-unix-nohosts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let double = ConsulDouble::start_unix(&dir.join("consul.sock"));
    let valid = consul_config(&double.url(), "");
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let result = std::thread::spawn(move || {
        use nix::mount::{MsFlags, mount};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("private mounts");
        // Only those that exist: a missing one hides nothing.
        let present = ["/etc/hosts", "/etc/resolv.conf"]
            .into_iter()
            .filter(|f| Path::new(f).exists());
        for file in present {
            mount(
                Some(&empty),
                file,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("hide a resolver file");
        }
        let client = Client::new(&valid.config.consul).unwrap();
        client.get("/v1/agent/self").map(|_| ())
    })
    .join()
    .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sidecar_bootstrap_is_rendered_from_the_agents_own_view() {
    use outpost::envoy::command::{EnvoyBootstrap, run};
    let double = ConsulDouble::start();
    let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
    let plan = countdash_plan();
    sync::sync(&client, &wanted(&plan), true).unwrap();
    let sidecar_id = "_outpost-dashboard-count-dashboard-http-sidecar-proxy";
    let cmd = EnvoyBootstrap {
        proxy_id: Some(sidecar_id.into()),
        http_addr: Some(double.url()),
        admin_bind: Some("127.0.0.2:19000".into()),
        token: Some("workload-token-value".into()),
        ..EnvoyBootstrap::default()
    };
    let out = run(&cmd, &|_| None).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    for expected in [
        "\"id\": \"_outpost-dashboard-count-dashboard-http-sidecar-proxy\"",
        "\"cluster\": \"count-dashboard\"",
        "\"fixed_value\": \"count-dashboard\"",
        "\"fixed_value\": \"dc1\"",
        "\"address\": \"127.0.0.2\"",
        "\"port_value\": 8502",
        "\"value\": \"workload-token-value\"",
        "\"tag_name\": \"nomad.group\"",
    ] {
        assert!(
            out.json.contains(expected),
            "missing {expected}:\n{}",
            out.json
        );
    }
    // Nomad's stats tags, from the registration's Proxy.Config, come before the rules.
    let first_rule = out.json.find("\"regex\"").unwrap();
    assert!(out.json.find("\"tag_name\": \"nomad.group\"").unwrap() < first_rule);
    assert!(
        miniserde::json::from_str::<Value>(&out.json).is_ok(),
        "valid JSON"
    );
    // The calls Consul's command makes, in its order.
    let paths: Vec<String> = double
        .log()
        .into_iter()
        .skip_while(|l| l.path != "/v1/agent/self")
        .map(|l| l.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/agent/self",
            "/v1/acl/token/self",
            &format!("/v1/agent/service/{sidecar_id}"),
            "/v1/config/proxy-defaults/global"
        ]
    );

    let missing = run(
        &EnvoyBootstrap {
            proxy_id: Some("nope-sidecar-proxy".into()),
            ..cmd
        },
        &|_| None,
    )
    .unwrap_err();
    assert!(
        missing.is_retryable(),
        "a proxy not yet registered is worth waiting for"
    );
    assert_eq!(
        missing.message(),
        "failed fetch proxy config from local agent: Unexpected response code: 404 (unknown service ID: nope-sidecar-proxy)"
    );
}

#[test]
fn a_body_larger_than_the_clients_buffers_goes_through_whole() {
    let double = ConsulDouble::start();
    let client = Client::new(&outpost::config::Consul {
        address: double.url(),
        ..outpost::config::Consul::default()
    })
    .unwrap();
    // 200 tags of 400 bytes: an 80 KB registration, and as much back in the service list.
    let tags: Vec<String> = (0..200)
        .map(|i| format!("\"{i:03}{}\"", "t".repeat(397)))
        .collect();
    let body = format!(
        r#"{{"ID":"big","Name":"big","Port":8080,"Tags":[{}]}}"#,
        tags.join(",")
    );
    assert!(body.len() > 64 * 1024);
    client.put("/v1/agent/service/register", &body).unwrap();
    let listed = client.get("/v1/agent/services").unwrap();
    assert!(listed.len() > 64 * 1024, "{}", listed.len());
    assert!(listed.contains(&format!("199{}", "t".repeat(397))));
}

/// The plan of a config file or text, on a fixed host.
fn plan_of(valid: &ValidConfig) -> Plan {
    let facts = HostFacts {
        hostname: "gateway-7".into(),
        default_address: Ipv4Addr::new(192, 0, 2, 10),
        default_address_source: "test".into(),
        listening_ports: Default::default(),
    };
    plan::build(valid, &NodeState::default(), &facts).expect("plan")
}

/// A service without a port (Consul answers `"Port": 0`), one with a TTL check and tags,
/// one on a named port with `to`, in a host-mode and a bridge group.
const PORTLESS: &str = r#"
[[group]]
name = "jobs"
[[group.service]]
name = "worker"
tags = ["batch"]
[[group.service.check]]
name = "alive"
type = "ttl"
ttl = "30s"
[[group.task]]
name = "worker"
command = "/bin/sleep"
args = ["1000"]

[[group]]
name = "web"
[group.network]
mode = "bridge"
[[group.network.port]]
label = "http"
static = 8080
to = 80
[[group.service]]
name = "web"
port = "http"
meta = { team = "edge" }
[group.service.connect.sidecar_service]
[[group.task]]
name = "web"
command = "/bin/sleep"
args = ["1000"]
"#;

#[test]
fn a_second_sync_writes_nothing_for_every_example_and_a_portless_service() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs: Vec<(String, ValidConfig)> = [
        "countdash",
        "gateways",
        "quickstart",
        "tproxy",
        "builtin-proxy",
    ]
    .iter()
    .map(|name| {
        let path = root.join(format!("examples/{name}.toml"));
        let valid = outpost::load_config(&path).expect("example is valid");
        (name.to_string(), valid)
    })
    .collect();
    let portless = outpost::parse_config(PORTLESS, "portless.toml").expect("valid");
    configs.push(("portless".into(), portless));
    for (name, valid) in configs {
        let double = ConsulDouble::start();
        let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
        let plan = plan_of(&valid);
        sync::sync(&client, &wanted(&plan), true).expect("first sync");
        let before = double.log().len();
        let again = sync::sync(&client, &wanted(&plan), true).expect("second sync");
        let writes: Vec<String> = double.log()[before..]
            .iter()
            .filter(|l| l.method != "GET")
            .map(|l| format!("{} {}", l.method, l.path))
            .collect();
        assert_eq!(writes, Vec::<String>::new(), "{name}: {again:?}");
    }
}

#[test]
fn the_double_refuses_metadata_and_check_thresholds_as_consuls_agent_does() {
    let double = ConsulDouble::start();
    let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
    let refused = |body: &str| match client.put("/v1/agent/service/register", body) {
        Err(ConsulError::Rejected { status: 400, body }) => body,
        other => panic!("{body}: {other:?}"),
    };
    let reserved = refused(r#"{"Name":"web","Meta":{"consul-version":"1"}}"#);
    assert!(
        reserved.contains("Key prefix 'consul-' is reserved"),
        "{reserved}"
    );
    let dotted = refused(r#"{"Name":"web","Meta":{"team.name":"edge"}}"#);
    assert!(
        dotted.contains("Key contains invalid characters"),
        "{dotted}"
    );
    let thresholds = refused(
        r#"{"Name":"web","Checks":[{"TTL":"30s","FailuresBeforeWarning":3,"FailuresBeforeCritical":2}]}"#,
    );
    assert!(thresholds.contains("FailuresBeforeWarning"), "{thresholds}");
    assert!(double.service_ids().is_empty());
}

#[test]
fn verify_ssl_false_skips_the_agents_certificate_check_as_consul_http_ssl_verify_does() {
    let pki = test_pki();
    let dir = support::scratch().join(format!("outpost-noverify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cert = write("client.pem", &pki.client_cert_pem);
    let key = write("client-key.pem", &pki.client_key_pem);
    let double = ConsulDouble::start_tls(tls_server(&pki));
    // No CA: verified, the agent's certificate is not trusted; unverified, it answers.
    let files = format!("cert_file = \"{cert}\"\nkey_file = \"{key}\"");
    let verified = consul_config(&double.url(), &files);
    let untrusted = Client::new(&verified.config.consul)
        .unwrap()
        .get("/v1/agent/self");
    assert!(
        matches!(untrusted, Err(ConsulError::Unreachable(_))),
        "{untrusted:?}"
    );
    let unverified = consul_config(&double.url(), &format!("{files}\nverify_ssl = false"));
    Client::new(&unverified.config.consul)
        .unwrap()
        .get("/v1/agent/self")
        .expect("answers without verification");

    // The drop-in reads CONSUL_HTTP_SSL_VERIFY=false the same way: it gets past TLS to the
    // proxy lookup (nothing is registered, so Consul's 404 comes back).
    let cmd = outpost::envoy::command::EnvoyBootstrap {
        proxy_id: Some("web-sidecar-proxy".into()),
        ..Default::default()
    };
    let env = |var: &str| match var {
        "CONSUL_HTTP_ADDR" => Some(double.url()),
        "CONSUL_HTTP_SSL_VERIFY" => Some("false".into()),
        "CONSUL_CLIENT_CERT" => Some(cert.clone()),
        "CONSUL_CLIENT_KEY" => Some(key.clone()),
        _ => None,
    };
    let err = outpost::envoy::command::run(&cmd, &env).unwrap_err();
    assert!(err.message().contains("404"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_drop_ins_deprecated_and_mesh_gateway_flags_follow_consuls_rules() {
    use outpost::envoy::command::{EnvoyBootstrap, run};
    let refused = |cmd: EnvoyBootstrap| run(&cmd, &|_| None).unwrap_err().to_string();
    let both = EnvoyBootstrap {
        mesh_gateway: true,
        gateway: Some("mesh".into()),
        ..Default::default()
    };
    assert_eq!(
        refused(both),
        "The mesh-gateway flag is deprecated and cannot be used alongside the gateway flag"
    );
    let ingress = EnvoyBootstrap {
        gateway: Some("ingress".into()),
        expose_servers: true,
        register: true,
        ..Default::default()
    };
    assert_eq!(
        refused(ingress),
        "'-expose-servers' can only be used for mesh gateways"
    );
    let unregistered = EnvoyBootstrap {
        mesh_gateway: true,
        expose_servers: true,
        ..Default::default()
    };
    assert_eq!(
        refused(unregistered),
        "'-expose-servers' requires '-register'"
    );
}

#[test]
fn ingress_tls_sds_headers_limits_and_host_rewrite_reach_the_config_entries() {
    let text = r#"
[[group]]
name = "edge"
[group.network]
mode = "bridge"
[[group.network.port]]
label = "http"
static = 8080
[[group.service]]
name = "ingress"
port = "http"
[group.service.connect.gateway.ingress.tls]
enabled = true
tls_min_version = "TLSv1_2"
cipher_suites = ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]
[group.service.connect.gateway.ingress.tls.sds]
cluster_name = "sds-cluster"
cert_resource = "edge-cert"
[[group.service.connect.gateway.ingress.listener]]
port = 8080
protocol = "http"
[[group.service.connect.gateway.ingress.listener.service]]
name = "web"
hosts = ["web.example.com"]
max_connections = 100
max_pending_requests = 10
max_concurrent_requests = 50
[group.service.connect.gateway.ingress.listener.service.tls.sds]
cluster_name = "sds-cluster"
cert_resource = "web-cert"
[group.service.connect.gateway.ingress.listener.service.request_headers]
add = { x-edge = "outpost" }
remove = ["x-debug"]
[group.service.connect.gateway.ingress.listener.service.response_headers]
set = { cache-control = "no-store" }

[[group]]
name = "exit"
[group.network]
mode = "bridge"
[[group.service]]
name = "terminating"
[group.service.connect.gateway.terminating]
[[group.service.connect.gateway.terminating.service]]
name = "billing"
ca_file = "/etc/ssl/ca.pem"
disable_auto_host_rewrite = true
"#;
    let valid = outpost::parse_config(text, "gateways.toml").expect("valid");
    let plan = plan_of(&valid);
    let double = ConsulDouble::start();
    let client = Client::new(&consul_config(&double.url(), "").config.consul).unwrap();
    let entries: Vec<&Value> = plan
        .groups
        .iter()
        .flat_map(|g| &g.services)
        .map(|s| &s.config_entry)
        .filter(|e| !matches!(e, Value::Null))
        .collect();
    let synced = outpost::consul::gateway::sync_entries(&client, &entries, &plan.node_name)
        .expect("the double accepts both entries");
    assert_eq!(synced.written.len(), 2);
    let ingress =
        miniserde::json::to_string(&double.config_entry("ingress-gateway", "ingress").unwrap());
    for part in [
        r#""SDS":{"CertResource":"edge-cert","ClusterName":"sds-cluster"}"#,
        r#""TLSMinVersion":"TLSv1_2""#,
        r#""MaxConnections":100"#,
        r#""MaxPendingRequests":10"#,
        r#""MaxConcurrentRequests":50"#,
        r#""RequestHeaders":{"Add":{"x-edge":"outpost"},"Remove":["x-debug"]}"#,
        r#""ResponseHeaders":{"Set":{"cache-control":"no-store"}}"#,
        r#""TLS":{"SDS":{"CertResource":"web-cert","ClusterName":"sds-cluster"}}"#,
    ] {
        assert!(ingress.contains(part), "{part} not in {ingress}");
    }
    let terminating = miniserde::json::to_string(
        &double
            .config_entry("terminating-gateway", "terminating")
            .unwrap(),
    );
    assert!(
        terminating.contains(r#""DisableAutoHostRewrite":true"#),
        "{terminating}"
    );
}
