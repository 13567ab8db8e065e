//! `cargo bench --bench envoy`: how long a sidecar's bootstrap takes natively — the whole
//! `envoy-bootstrap` command against a local Consul double (its four HTTP calls included,
//! each on a fresh connection as the command makes them) and the rendering alone.
//! Prints a table and, last, `envoy-bootstrap: p50_us=… p90_us=… render_p50_us=… n=…`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use outpost::config::Consul;
use outpost::consul::client::Client;
use outpost::envoy::bootstrap::{AgentAddress, Inputs, Options, Prometheus, render};
use outpost::envoy::command::{EnvoyBootstrap, run};
use outpost::envoy::proxy_config::ProxyConfig;
use std::time::{Duration, Instant};
use support::consul_double::ConsulDouble;

const N: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..20 {
        f();
    }
    let mut samples: Vec<Duration> = (0..N)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples
}

fn main() {
    let double = ConsulDouble::start();
    let client = Client::new(&Consul {
        address: double.url(),
        ..Consul::default()
    })
    .expect("client");
    client
        .put(
            "/v1/agent/service/register",
            r#"{"Kind":"connect-proxy","ID":"web-sidecar-proxy","Name":"web-sidecar-proxy","Port":21000,
                "Proxy":{"DestinationServiceName":"web","DestinationServiceID":"web",
                         "Config":{"envoy_stats_tags":["nomad.group=web"],"envoy_prometheus_bind_addr":"0.0.0.0:9102"}}}"#,
        )
        .expect("register");
    let cmd = EnvoyBootstrap {
        proxy_id: Some("web-sidecar-proxy".into()),
        http_addr: Some(double.url()),
        admin_bind: Some("127.0.0.2:19000".into()),
        grpc_addr: Some("unix:///run/outpost/alloc/web/alloc/tmp/consul_grpc.sock".into()),
        token: Some("c9a52720-bf6c-4aa6-b8bc-66881a5ade95".into()),
        ..EnvoyBootstrap::default()
    };
    let mut bytes = 0;
    let whole = measure(|| {
        bytes = run(&cmd, &|_| None).expect("bootstrap").json.len();
    });
    // The rendering alone, from the same inputs with the agent's answers in hand.
    let inputs = Inputs {
        proxy_id: "web-sidecar-proxy".into(),
        cluster: "web".into(),
        namespace: String::new(),
        partition: String::new(),
        datacenter: "dc1".into(),
        options: Options {
            admin_address: "127.0.0.2".into(),
            admin_port: 19000,
            admin_access_log_path: "/dev/null".into(),
            agent: AgentAddress::Unix {
                path: "/run/outpost/alloc/web/alloc/tmp/consul_grpc.sock".into(),
            },
            agent_tls_ca: None,
            token: "c9a52720-bf6c-4aa6-b8bc-66881a5ade95".into(),
            node_name: None,
            omit_deprecated_tags: false,
            ready_bind: None,
            prometheus: Prometheus::default(),
        },
        config: ProxyConfig {
            stats_tags: vec!["nomad.group=web".into()],
            prometheus_bind_addr: Some("0.0.0.0:9102".into()),
            ..ProxyConfig::default()
        },
        access_logs: None,
    };
    let rendering = measure(|| {
        assert!(render(&inputs).is_ok());
    });
    println!("native Envoy bootstrap, {N} runs each, {bytes} bytes of JSON, in µs");
    println!("{:<44} {:>8} {:>8} {:>8}", "what", "p50", "p90", "max");
    for (what, s) in [
        ("envoy-bootstrap (4 HTTP calls + render)", &whole),
        ("render only", &rendering),
    ] {
        println!(
            "{what:<44} {:>8} {:>8} {:>8}",
            percentile(s, 0.5).as_micros(),
            percentile(s, 0.9).as_micros(),
            s[s.len() - 1].as_micros()
        );
    }
    println!(
        "envoy-bootstrap: p50_us={} p90_us={} render_p50_us={} n={N}",
        percentile(&whole, 0.5).as_micros(),
        percentile(&whole, 0.9).as_micros(),
        percentile(&rendering, 0.5).as_micros()
    );
}
