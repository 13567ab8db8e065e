//! The plan for the examples, checked field by field where the issue names a value, and
//! whole against reviewed snapshots in tests/expected/ (regenerate with
//! `UPDATE_EXPECTED=1 cargo test --test plan`, then review the diff).

use outpost::plan::{self, HostFacts, Plan};

/// Plans are rendered as for a host that enforces every limit.
const ENFORCED: plan::render::Enforced = plan::render::Enforced {
    memory: true,
    cpu: true,
};
use outpost::state::{GroupState, NodeState};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

fn facts() -> HostFacts {
    HostFacts {
        hostname: "gateway-7".into(),
        default_address: Ipv4Addr::new(192, 0, 2, 10),
        default_address_source: "test".into(),
        listening_ports: Default::default(),
    }
}

fn plan_for(example: &str, state: &NodeState) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
    let valid = outpost::load_config(&path).unwrap_or_else(|d| panic!("{example}: {d:?}"));
    plan::build(&valid, state, &facts()).expect("plan")
}

fn check_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/expected")
        .join(name);
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{name} differs from the plan; if the change is intended, regenerate and review"
    );
}

#[test]
fn countdash_plan_matches_snapshot() {
    let p = plan_for("examples/countdash.toml", &NodeState::default());
    check_snapshot("countdash.plan.json", &plan::render::json(&p));
}

/// Every registration body of countdash, by service ID, as Consul will receive it.
#[test]
fn countdash_registration_bodies_match_expected() {
    let p = plan_for("examples/countdash.toml", &NodeState::default());
    let mut bodies = miniserde::json::Object::new();
    for service in p.groups.iter().flat_map(|g| &g.services) {
        bodies.insert(service.id.clone(), service.registration.clone());
    }
    let text = miniserde::json::to_string(&miniserde::json::Value::Object(bodies));
    check_snapshot("countdash.registrations.json", &(text + "\n"));
}

/// Every gateway's registration body and config entry, by service ID (reviewed against
/// reference/nomad-connect.md §1.4–1.5, §6.5 and consul-api.md §3.4).
#[test]
fn gateway_registrations_and_config_entries_match_expected() {
    let p = plan_for("examples/gateways.toml", &NodeState::default());
    let mut bodies = miniserde::json::Object::new();
    for service in p.groups.iter().flat_map(|g| &g.services) {
        let mut both = miniserde::json::Object::new();
        both.insert("registration".into(), service.registration.clone());
        both.insert("config_entry".into(), service.config_entry.clone());
        bodies.insert(service.id.clone(), miniserde::json::Value::Object(both));
    }
    let text = miniserde::json::to_string(&miniserde::json::Value::Object(bodies));
    check_snapshot("gateways.registrations.json", &(text + "\n"));
}

#[test]
fn gateways_are_main_tasks_with_nomads_injected_ports() {
    let p = plan_for("examples/gateways.toml", &NodeState::default());
    let expect = [
        (
            "ingress",
            "connect-ingress-my-ingress",
            "connect-ingress:my-ingress",
            "inbound",
        ),
        (
            "terminating",
            "connect-terminating-my-terminating",
            "connect-terminating:my-terminating",
            "connect-terminating-my-terminating",
        ),
        (
            "mesh",
            "connect-mesh-my-mesh",
            "connect-mesh:my-mesh",
            "wan",
        ),
    ];
    for (group, (kind, task_name, task_kind, label)) in p.groups.iter().zip(expect) {
        let task = group
            .tasks
            .iter()
            .find(|t| t.name == task_name)
            .expect(task_name);
        assert_eq!(task.kind.as_deref(), Some(task_kind));
        assert_eq!(
            task.lifecycle.as_str(),
            "main",
            "a gateway is not a prestart sidecar"
        );
        assert_eq!(task.shutdown_delay.to_string(), "5s");
        let proxy = group.services[0].proxy.as_ref().expect("gateway proxy");
        assert_eq!(proxy.gateway.map(|g| g.as_str()), Some(kind));
        // The gateway bootstraps as its own service ID, with no -sidecar-proxy suffix.
        assert_eq!(proxy.id, group.services[0].id);
        assert_eq!(proxy.port_label, label);
    }
    let injected: Vec<(&str, &str)> = p
        .groups
        .iter()
        .flat_map(|g| {
            g.ports
                .iter()
                .filter(|p| p.injected)
                .map(move |p| (g.name.as_str(), p.label.as_str()))
        })
        .collect();
    assert_eq!(
        injected,
        [
            ("terminating", "connect-terminating-my-terminating"),
            ("mesh", "connect-mesh-my-mesh-lan")
        ]
    );
    // Nomad sets the terminating gateway's service port to the injected label.
    assert_eq!(
        p.groups[1].services[0].id,
        "_outpost-terminating-my-terminating-connect-terminating-my-terminating"
    );
}

#[test]
fn quickstart_plan_matches_snapshot() {
    let p = plan_for("examples/quickstart.toml", &NodeState::default());
    check_snapshot("quickstart.plan.json", &plan::render::json(&p));
}

#[test]
fn countdash_injects_sidecars_with_nomad_args_and_addresses() {
    let p = plan_for("examples/countdash.toml", &NodeState::default());
    let api = &p.groups[0];
    let proxy = api
        .tasks
        .iter()
        .find(|t| t.name == "connect-proxy-count-api")
        .expect("injected sidecar task");
    assert!(proxy.injected);
    assert_eq!(proxy.kind.as_deref(), Some("connect-proxy:count-api"));
    assert_eq!(proxy.lifecycle.as_str(), "prestart sidecar");
    assert_eq!(
        proxy.argv,
        [
            "/usr/bin/envoy",
            "-c",
            // In the exec driver's view, as with Nomad's isolated drivers.
            "/secrets/envoy_bootstrap.json",
            "-l",
            "info",
            "--concurrency",
            "1",
            "--disable-hot-restart"
        ]
    );
    assert_eq!(
        proxy.env["NOMAD_ENVOY_ADMIN_ADDR_count_api"],
        "127.0.0.2:19000"
    );
    assert_eq!(
        proxy.env["NOMAD_ENVOY_READY_ADDR_count_api"],
        "127.0.0.1:19100"
    );
    let sidecar = api.services[0].proxy.as_ref().expect("sidecar");
    assert_eq!(sidecar.id, "_outpost-api-count-api-9001-sidecar-proxy");
    assert_eq!(sidecar.envoy_admin, "127.0.0.2:19000");
    assert!((20000..=32000).contains(&sidecar.host_port));
    assert_eq!(sidecar.host_port, sidecar.netns_port);

    let dash = &p.groups[1];
    let task = dash.tasks.iter().find(|t| t.name == "dashboard").unwrap();
    assert_eq!(task.env["NOMAD_UPSTREAM_ADDR_count_api"], "127.0.0.1:8080");
    assert_eq!(task.env["NOMAD_UPSTREAM_ADDR_count-api"], "127.0.0.1:8080");
    assert_eq!(task.env["COUNTING_SERVICE_URL"], "http://127.0.0.1:8080");
    assert_eq!(task.env["PORT"], "9002");
    let dash_sidecar = dash.services[0].proxy.as_ref().unwrap();
    assert_ne!(dash_sidecar.host_port, sidecar.host_port);
    // Sidecar tasks come after the user's tasks, in service order (Nomad's order).
    let names: Vec<&str> = dash.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["dashboard", "connect-proxy-count-dashboard"]);
}

#[test]
fn leases_and_dynamic_ports_from_state_are_kept() {
    let mut state = NodeState {
        version: 1,
        ..Default::default()
    };
    state.groups.insert(
        "dashboard".into(),
        GroupState {
            address: Some("172.26.64.40".into()),
            address_ipv6: None,
            ports: [("connect-proxy-count-dashboard".to_string(), 23456)].into(),
        },
    );
    let p = plan_for("examples/countdash.toml", &state);
    let dash = &p.groups[1];
    assert_eq!(dash.netns.as_ref().unwrap().address, "172.26.64.40/20");
    assert_eq!(dash.services[0].proxy.as_ref().unwrap().host_port, 23456);
    // The new group takes the lowest free address, not the kept one.
    assert_eq!(
        p.groups[0].netns.as_ref().unwrap().address,
        "172.26.64.2/20"
    );
}

/// `network.subnet_ipv6`: every bridge group gets an IPv6 lease beside its IPv4 one (kept
/// in the state like it), the bridge its gateway address, and every mapping an ip6 rule.
#[test]
fn a_dual_stack_bridge_leases_both_families_and_maps_ports_for_both() {
    let dir = std::env::temp_dir().join(format!("outpost-plan-v6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/countdash.toml"),
    )
    .unwrap()
    .replace(
        "subnet = \"172.26.64.0/20\"\n",
        "subnet = \"172.26.64.0/20\"\nsubnet_ipv6 = \"fd00:a110:c8::/120\"\n",
    );
    let file = dir.join("dual.toml");
    std::fs::write(&file, text).unwrap();
    let valid = outpost::load_config(&file).unwrap_or_else(|d| panic!("{d:?}"));
    let mut state = NodeState {
        version: 1,
        ..Default::default()
    };
    state.groups.insert(
        "dashboard".into(),
        GroupState {
            address: Some("172.26.64.40".into()),
            address_ipv6: Some("fd00:a110:c8::40".into()),
            ports: Default::default(),
        },
    );
    let p = plan::build(&valid, &state, &facts()).expect("plan");
    assert_eq!(
        p.bridge.address_ipv6.as_deref(),
        Some("fd00:a110:c8::1/120")
    );
    let ns = |i: usize| p.groups[i].netns.as_ref().unwrap();
    assert_eq!(ns(1).address_ipv6.as_deref(), Some("fd00:a110:c8::40/120"));
    assert_eq!(ns(0).address_ipv6.as_deref(), Some("fd00:a110:c8::2/120"));
    assert_eq!(ns(0).gateway_ipv6.as_deref(), Some("fd00:a110:c8::1"));
    let kept = plan::node_state(&p);
    assert_eq!(
        kept.groups["api"].address_ipv6.as_deref(),
        Some("fd00:a110:c8::2")
    );
    let dash = &p.groups[1];
    assert!(
        dash.firewall_rules
            .iter()
            .any(|r| r
                == "ip6 portmap: meta l4proto tcp th dport 9002 dnat to [fd00:a110:c8::40]:9002"),
        "{:?}",
        dash.firewall_rules
    );
    assert!(
        p.bridge.firewall_rules.iter().any(|r| r
            == "ip6 postrouting: ip6 saddr fd00:a110:c8::/120 oifname != \"outpost\" masquerade"),
        "{:?}",
        p.bridge.firewall_rules
    );
    let text = plan::render::text(&p, ENFORCED);
    assert!(
        text.contains("address  fd00:a110:c8::40/120 on eth0, default via fd00:a110:c8::1"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plan_is_deterministic() {
    let a = plan::render::json(&plan_for("examples/countdash.toml", &NodeState::default()));
    let b = plan::render::json(&plan_for("examples/countdash.toml", &NodeState::default()));
    assert_eq!(a, b);
}

#[test]
fn plan_command_text_shows_injected_tasks_and_upstream_env() {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["plan", "-c", "examples/countdash.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "+ Task \"connect-proxy-count-api\" (injected connect-proxy:count-api, prestart sidecar)",
        "+ Task \"connect-proxy-count-dashboard\" (injected connect-proxy:count-dashboard, prestart sidecar)",
        "-l info --concurrency 1 --disable-hot-restart",
        "envoy (exec) admin 127.0.0.2:19000",
        "env    NOMAD_UPSTREAM_ADDR_count_api=127.0.0.1:8080",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn plan_command_text_shows_gateway_tasks_ports_and_config_entries() {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["plan", "-c", "examples/gateways.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "+ Task \"connect-ingress-my-ingress\" (injected connect-ingress:my-ingress, main)",
        "+ Task \"connect-terminating-my-terminating\" (injected connect-terminating:my-terminating, main)",
        "+ Task \"connect-mesh-my-mesh\" (injected connect-mesh:my-mesh, main)",
        "port     connect-terminating-my-terminating host 20000 -> 20000 (dynamic, injected)",
        "port     connect-mesh-my-mesh-lan     host 20001 -> 20001 (dynamic, injected)",
        "ingress gateway _outpost-ingress-my-ingress-inbound on port inbound",
        r#"proxy  {"Config":{"connect_timeout_ms":5000,"envoy_gateway_bind_addresses":{"lan":{"Address":"0.0.0.0","Port":20001},"wan":{"Address":"0.0.0.0","Port":8443}},"envoy_gateway_no_default_bind":true}}"#,
        r#"config entry (PUT /v1/config) {"Kind":"ingress-gateway","Listeners":[{"Port":8080"#,
        r#"config entry (PUT /v1/config) {"Kind":"terminating-gateway""#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn plan_shows_the_transparent_proxy_rules_and_envoys_uid() {
    let p = plan_for("examples/tproxy.toml", &NodeState::default());
    let web = &p.groups[0];
    let t = web.tproxy.as_ref().expect("tproxy planned");
    let sidecar = web.services[0].proxy.as_ref().unwrap();
    assert_eq!(t.inbound_port, sidecar.netns_port);
    assert_eq!(t.outbound_port, 15001);
    assert_eq!(t.dns.as_deref(), Some("172.26.64.1:8600"));
    // The exposed check's listener is excluded from inbound redirection (Nomad's rule).
    let expose = web
        .ports
        .iter()
        .find(|p| p.label.starts_with("svc_web_ck_"))
        .unwrap();
    assert_eq!(t.exclude_inbound_ports, [expose.netns_port.to_string()]);
    let envoy = web
        .tasks
        .iter()
        .find(|t| t.name == "connect-proxy-web")
        .unwrap();
    assert_eq!(envoy.user.as_deref(), Some("101"));
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["plan", "-c", "examples/tproxy.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "nft table ip outpost-tproxy in the namespace:",
        "CONSUL_PROXY_OUTPUT: ip daddr 10.0.0.0/8 return",
        "CONSUL_PROXY_OUTPUT: meta l4proto tcp th dport 5432 return",
        "CONSUL_PROXY_OUTPUT: meta skuid 101 return",
        "CONSUL_PROXY_REDIRECT: meta l4proto tcp redirect to :15001",
        "CONSUL_NAT_PREROUTING: meta l4proto tcp jump CONSUL_PROXY_INBOUND",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn plan_command_json_is_the_library_plan() {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["plan", "-c", "examples/quickstart.toml", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let value: miniserde::json::Value =
        miniserde::json::from_str(&String::from_utf8_lossy(&out.stdout)).expect("valid JSON");
    let miniserde::json::Value::Object(top) = value else {
        panic!("plan JSON is an object")
    };
    assert!(top.contains_key("groups") && top.contains_key("bridge"));
}

#[test]
fn a_tasks_restart_block_overrides_its_groups_field_by_field() {
    let text = r#"
[[group]]
name = "g"
[group.restart]
attempts = 5
delay = "3s"
[[group.task]]
name = "inherits"
command = "/bin/true"
[[group.task]]
name = "own"
command = "/bin/true"
[group.task.restart]
mode = "delay"
"#;
    let valid = outpost::parse_config(text, "restart.toml").expect("valid");
    let plan = plan::build(&valid, &NodeState::default(), &facts()).expect("plan");
    let tasks = &plan.groups[0].tasks;
    let restart = |name: &str| {
        let t = tasks.iter().find(|t| t.name == name).expect("task");
        (
            t.restart.attempts,
            t.restart.delay.0,
            t.restart.mode.as_str(),
        )
    };
    let three = std::time::Duration::from_secs(3);
    assert_eq!(restart("inherits"), (5, three, "fail"));
    // Nomad merges: the task's mode, the group's attempts and delay.
    assert_eq!(restart("own"), (5, three, "delay"));
}

/// The built-in proxy registers the same sidecars as Envoy (the mesh, the UI and intentions
/// see no difference), and runs this binary as `proxy`, with what a Connect native task
/// gets to reach Consul, and without Envoy's variables.
#[test]
fn builtin_proxy_sidecars_register_as_envoys_do() {
    let envoy = plan_for("examples/countdash.toml", &NodeState::default());
    let builtin = plan_for("examples/builtin-proxy.toml", &NodeState::default());
    let services = |p: &plan::Plan| -> Vec<(String, String)> {
        p.groups
            .iter()
            .flat_map(|g| &g.services)
            .map(|s| (s.id.clone(), miniserde::json::to_string(&s.registration)))
            .collect()
    };
    assert_eq!(services(&envoy), services(&builtin));
    for group in &builtin.groups {
        let proxy = group.services[0].proxy.as_ref().expect("a sidecar");
        assert!(!proxy.is_envoy());
        let task = group.tasks.iter().find(|t| t.name == proxy.task).unwrap();
        assert_eq!(
            task.argv,
            [
                "/proc/self/exe",
                "proxy",
                "--proxy-id",
                &proxy.id,
                "--admin",
                &proxy.envoy_admin
            ]
        );
        assert_eq!(task.driver, "exec");
        assert!(task.env["CONSUL_HTTP_ADDR"].ends_with("/alloc/consul/consul_http.sock"));
        assert!(task.env["CONSUL_HTTP_TOKEN_FILE"].ends_with("/secrets/consul_token"));
        assert!(!task.env.keys().any(|k| k.starts_with("NOMAD_ENVOY_")));
    }
}
