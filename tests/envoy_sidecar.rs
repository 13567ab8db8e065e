//! The agent's side of the bootstrap (envoy::sidecar): Nomad's retry while the sidecar's
//! registration is not visible, the files it leaves, and consul-cli mode's argv for a
//! gateway, with a stub `consul` that records what it was given.

mod support;

use outpost::config::{Consul, Dur, Preflight};
use outpost::consul::client::Client;
use outpost::envoy::sidecar::{Job, Renderer};
use outpost::files::Dir;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::consul_double::ConsulDouble;

fn scratch(name: &str) -> PathBuf {
    let dir = support::scratch().join(format!("outpost-sidecar-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn preflight(budget_ms: u64) -> Preflight {
    Preflight {
        service_timeout: Dur(Duration::from_millis(budget_ms)),
        service_base: Dur(Duration::from_millis(100)),
        ..Preflight::default()
    }
}

fn job<'a>(
    consul: &'a Consul,
    preflight: &'a Preflight,
    dir: &'a Path,
    renderer: Renderer,
    gateway: Option<&'a str>,
) -> Job<'a> {
    Job {
        consul,
        preflight,
        renderer,
        proxy_id: "web-sidecar-proxy",
        gateway,
        admin_bind: "127.0.0.2:19001",
        ready_bind: "127.0.0.1:19101",
        grpc_addr: format!("unix://{}/alloc/tmp/consul_grpc.sock", dir.display()),
        token: None,
        // The test's directory outlives every job of the test.
        secrets: Box::leak(Box::new(Dir::trusted(&dir.join("secrets")).unwrap())),
        reader_gid: 0,
        alloc_dir: dir,
        nomad_env: vec![(
            "NOMAD_ALLOC_ID".into(),
            "0b4c2a1e-0000-4000-8000-000000000001".into(),
        )],
        refresh: false,
    }
}

fn register_web_sidecar(address: String) {
    let client = Client::new(&Consul {
        address,
        ..Consul::default()
    })
    .unwrap();
    client
        .put(
            "/v1/agent/service/register",
            r#"{"Kind":"connect-proxy","ID":"web-sidecar-proxy","Name":"web-sidecar-proxy","Port":21000,"Proxy":{"DestinationServiceName":"web","DestinationServiceID":"web"}}"#,
        )
        .unwrap();
}

#[test]
fn native_bootstrap_waits_for_the_registration_like_nomad() {
    let double = ConsulDouble::start();
    let consul = Consul {
        address: double.url(),
        ..Consul::default()
    };
    let dir = scratch("wait");
    let late = double.url();
    let registrar = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        register_web_sidecar(late);
    });
    let pf = preflight(10_000);
    let path = job(&consul, &pf, &dir, Renderer::Native, None)
        .write()
        .expect("written once the sidecar is registered");
    registrar.join().unwrap();
    let json = std::fs::read_to_string(&path).unwrap();
    assert!(json.contains("\"id\": \"web-sidecar-proxy\""));
    let lookups = double
        .log()
        .iter()
        .filter(|l| l.path == "/v1/agent/service/web-sidecar-proxy")
        .count();
    assert!(lookups >= 2, "retried after the 404: {lookups} lookups");
    // The last failed attempt is kept where Nomad keeps the command's stderr.
    let stderr = std::fs::read_to_string(dir.join("alloc/logs/envoy_bootstrap.stderr.0")).unwrap();
    assert!(
        stderr.contains("unknown service ID: web-sidecar-proxy"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refresh_while_consul_is_away_keeps_the_previous_bootstrap() {
    // A port nothing listens on: connection refused, a retryable error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let consul = Consul {
        address,
        ..Consul::default()
    };
    let dir = scratch("refresh");
    let bootstrap = dir.join("secrets/envoy_bootstrap.json");
    std::fs::create_dir_all(bootstrap.parent().unwrap()).unwrap();
    std::fs::write(&bootstrap, "{\"previous\": true}").unwrap();
    let pf = preflight(300);
    let refresh = Job {
        refresh: true,
        ..job(&consul, &pf, &dir, Renderer::Native, None)
    };
    let err = refresh.write().unwrap_err();
    assert!(
        err.message()
            .starts_with("error creating bootstrap configuration for Connect proxy sidecar:"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&bootstrap).unwrap(),
        "{\"previous\": true}"
    );
    // The same failure on a first write leaves nothing to start Envoy with.
    let first = job(&consul, &pf, &dir, Renderer::Native, None);
    assert!(first.write().is_err());
    assert!(!bootstrap.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bootstrap_that_never_succeeds_fails_with_nomads_message_and_leaves_no_file() {
    let double = ConsulDouble::start();
    let consul = Consul {
        address: double.url(),
        ..Consul::default()
    };
    let dir = scratch("never");
    let pf = preflight(400);
    let err = job(&consul, &pf, &dir, Renderer::Native, None)
        .write()
        .unwrap_err();
    // Still a 404 when the budget ran out: the next sync may find the registration.
    assert!(err.is_retryable());
    assert_eq!(
        err.message(),
        "error creating bootstrap configuration for Connect proxy sidecar: failed fetch proxy config from local agent: Unexpected response code: 404 (unknown service ID: web-sidecar-proxy)"
    );
    assert!(!dir.join("secrets/envoy_bootstrap.json").exists());
    // The debug files are written before the first attempt, as Nomad does.
    assert!(dir.join("secrets/.envoy_bootstrap.cmd").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn consul_cli_mode_for_an_ingress_gateway_passes_the_gateway_kind() {
    let dir = scratch("gateway");
    let stub = dir.join("consul");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {}/argv\necho '{{}}'\n",
            dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let consul = Consul::default();
    let pf = preflight(1000);
    let renderer = Renderer::ConsulCli {
        binary: stub.display().to_string(),
    };
    job(&consul, &pf, &dir, renderer, Some("ingress"))
        .write()
        .unwrap();
    let argv = std::fs::read_to_string(dir.join("argv")).unwrap();
    let socket = format!("unix://{}/alloc/tmp/consul_grpc.sock", dir.display());
    let expected = [
        "connect",
        "envoy",
        "-grpc-addr",
        &socket,
        "-http-addr",
        "http://127.0.0.1:8500",
        "-admin-bind",
        "127.0.0.2:19001",
        "-address",
        "127.0.0.1:19101",
        "-proxy-id",
        "web-sidecar-proxy",
        "-bootstrap",
        "-gateway",
        "ingress",
    ];
    assert_eq!(argv.lines().collect::<Vec<_>>(), expected);
    let env = std::fs::read_to_string(dir.join("secrets/.envoy_bootstrap.env")).unwrap();
    assert_eq!(
        env,
        "[\n    \"NOMAD_ALLOC_ID=0b4c2a1e-0000-4000-8000-000000000001\",\n    \"CONSUL_HTTP_SSL=false\",\n    \"CONSUL_HTTP_SSL_VERIFY=true\"\n]\n"
    );
    // A missing binary is final, not retried for a minute.
    let missing = Renderer::ConsulCli {
        binary: dir.join("no-such-consul").display().to_string(),
    };
    let err = job(&consul, &pf, &dir, missing, None).write().unwrap_err();
    assert!(err.message().contains("cannot run"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
