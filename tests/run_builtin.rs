//! The built-in Connect proxy (`sidecar_task.driver = "builtin"`) beside real Envoy, end to
//! end as root in the countdash sandbox of tests/support/mesh.rs: each direction with mTLS
//! from the Consul double's CA, intentions, leaf rotation under traffic, agent restarts
//! under traffic.

mod support;

use support::mesh::*;

/// A deny intention from the dashboard to the API (a `service-intentions` config entry),
/// or none.
fn deny_dashboard(mesh: &Mesh, deny: bool) {
    if deny {
        let (status, body) = mesh.double.put_config_entry(
            r#"{"Kind":"service-intentions","Name":"count-api","Sources":[{"Name":"count-dashboard","Action":"deny"}]}"#,
        );
        assert_eq!(status, 200, "{body}");
    } else {
        let _ = mesh
            .double
            .delete_config_entry("service-intentions", "count-api");
    }
}

/// The stderr of a sidecar task (the built-in proxy logs there).
fn proxy_log(mesh: &Mesh, group: &str, task: &str) -> String {
    let out = mesh
        .outpost(&["logs", group, task, "--stderr"])
        .output()
        .expect("outpost logs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The built-in proxy's task in countdash: the sidecar of `service`.
fn builtin_task(service: &str) -> (&'static str, &'static str) {
    if service == "count-api" {
        ("api", "connect-proxy-count-api")
    } else {
        ("dashboard", "connect-proxy-count-dashboard")
    }
}

/// host:9002 → dashboard → its sidecar's upstream listener 127.0.0.1:8080 → mTLS → the
/// API's sidecar → the API: answers, refused with a deny intention, answers again without.
fn flows_and_follows_intentions(name: &str, builtin: &[&str]) {
    let Some(mesh) = Mesh::with_builtin(name, builtin) else {
        return;
    };
    let mut agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    let body = get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.starts_with("dashboard: {\"count\": 1,"), "{body}");
    // It is the built-in proxy that carried it: its leaf and listeners, in its own log.
    let (group, task) = builtin_task(builtin[0]);
    let log = proxy_log(&mesh, group, task);
    assert!(
        log.contains("leaf for ") && log.contains("listening on "),
        "{log}"
    );

    deny_dashboard(&mesh, true);
    // Envoy's RBAC follows over xDS, the built-in proxy's cache with the intentions index.
    let refused = retry(20, || match get("127.0.0.1:9002") {
        Ok(body) if body.contains("\"count\"") => Err(format!("still answered: {body}")),
        other => Ok(other),
    });
    assert!(refused.is_ok(), "{refused:?}\n{}", mesh.log());
    if group == "api" {
        // The built-in proxy asked the agent, which cited the intention.
        let log = proxy_log(&mesh, group, task);
        assert!(
            log.contains("svc/count-dashboard refused: Matched L4 intention: count-dashboard => count-api (deny)"),
            "{log}"
        );
    }
    deny_dashboard(&mesh, false);
    let body = retry(20, || match get("127.0.0.1:9002") {
        Ok(body) if body.contains("\"count\"") => Ok(body),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    assert!(body.contains("\"count\""), "{body}");
    mesh.teardown();
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn builtin_dashboard_reaches_the_api_through_envoy() {
    flows_and_follows_intentions("builtin-to-envoy", &["count-dashboard"]);
}

#[test]
fn envoy_dashboard_reaches_the_api_through_builtin() {
    flows_and_follows_intentions("envoy-to-builtin", &["count-api"]);
}
