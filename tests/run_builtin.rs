//! The built-in Connect proxy (`sidecar_task.driver = "builtin"`) beside real Envoy, end to
//! end as root in the countdash sandbox of tests/support/mesh.rs: each direction with mTLS
//! from the Consul double's CA, intentions, leaf rotation under traffic, agent restarts
//! under traffic.

mod support;

use support::mesh::*;

/// The countdash mesh with the built-in proxy as the sidecar of `builtin`, its agent
/// started, every task running and the dashboard answering through the mesh.
fn running(name: &str, builtin: &[&str]) -> Option<(Mesh, std::process::Child)> {
    let mesh = Mesh::with_builtin(name, builtin)?;
    let agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    get_within("127.0.0.1:9002", 20).unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    Some((mesh, agent))
}

/// Tears the mesh down (which checks nothing is left registered) and stops its agent.
fn finish(mesh: &Mesh, mut agent: std::process::Child) {
    mesh.teardown();
    let _ = agent.kill();
    let _ = agent.wait();
}

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
    let agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    // The agent's `/ready` probe got LIVE from the built-in proxy as from Envoy.
    let log = mesh.log();
    assert!(!log.contains("sidecars not ready"), "{log}");
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
    finish(&mesh, agent);
}

#[test]
fn builtin_dashboard_reaches_the_api_through_envoy() {
    flows_and_follows_intentions("builtin-to-envoy", &["count-dashboard"]);
}

#[test]
fn envoy_dashboard_reaches_the_api_through_builtin() {
    flows_and_follows_intentions("envoy-to-builtin", &["count-api"]);
}

/// Both sidecars built-in, with a client asking host:9002 without pause: both leaves are
/// rotated (new connections take the new one), then the agent is stopped and started, and
/// killed and started; no request fails. Then the API is issued a leaf naming another
/// service, and the dashboard's proxy refuses it as the API.
#[test]
fn rotation_and_agent_restarts_under_traffic_lose_no_request() {
    let Some((mesh, agent)) = running("builtin-both", &["count-api", "count-dashboard"]) else {
        return;
    };

    let load = Load::start("127.0.0.1:9002");
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Each proxy loads its new leaf, and traffic goes on meanwhile.
    rotate_both_leaves(&mesh);
    no_request_lost(&mesh, load);

    let restarts = mesh.restart_agent_twice_under_load(agent);
    assert!(
        restarts.ok > 20 && restarts.failures.is_empty(),
        "{} answered, failed: {:?}\n{}",
        restarts.ok,
        restarts.failures,
        mesh.log()
    );
    // The proxies ran on through both restarts: the same processes.
    assert_eq!(task_pids(&restarts.before), task_pids(&restarts.after_kill));
    let agent = restarts.agent;

    // A server that is not the API is refused by the dashboard's proxy.
    mesh.double.rotate_leaf_as("count-api", "count-impostor");
    let refused = retry(10, || match get("127.0.0.1:9002") {
        Ok(body) if body.contains("\"count\"") => Err(format!("still answered: {body}")),
        other => Ok(other),
    });
    assert!(refused.is_ok(), "{refused:?}");
    let dash = proxy_log(&mesh, "dashboard", "connect-proxy-count-dashboard");
    assert!(
        dash.contains("the server's certificate is not for service count-api in dc1"),
        "{dash}"
    );
    finish(&mesh, agent);
}

/// A client of the API's public port (its host port) presenting `cert`: whether the
/// proxy let it through to the API (an HTTP answer came back).
fn answered_with(mesh: &Mesh, cert: &str, key: &str) -> Result<String, String> {
    use outpost::proxy::{tls, x509::ServiceId};
    use std::io::{Read, Write};
    let (root, trust_domain) = mesh.double.ca_root();
    let leaf = tls::Leaf::from_pem(cert, key)?;
    let roots = tls::roots(&[root])?;
    let expected = ServiceId {
        trust_domain: trust_domain.clone(),
        namespace: "default".into(),
        datacenter: "dc1".into(),
        service: "count-api".into(),
    };
    let config = tls::client(&leaf, &roots, expected)?;
    let sni = tls::sni("count-api", "dc1", &trust_domain).ok_or("sni")?;
    let mut tcp = std::net::TcpStream::connect((UPLINK, 20000)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, sni).map_err(|e| e.to_string())?;
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    if reply.starts_with("HTTP/1.0 200") {
        Ok(reply)
    } else {
        Err(format!("answer: {reply:?}"))
    }
}

/// A leaf with the dashboard's SPIFFE ID, from a CA Consul does not have.
fn foreign_leaf(trust_domain: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::default();
    let uri = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/count-dashboard");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn the_public_listener_refuses_foreign_and_expired_certificates() {
    let Some(mesh) = Mesh::with_builtin("builtin-certs", &["count-api"]) else {
        return;
    };
    let agent = mesh.start_agent();
    let all = mesh.wait(60, all_running);
    assert!(all_running(&all), "{all:?}\n{}", mesh.log());
    // A current leaf of Consul's CA gets through: the refusals below are the certificates'.
    let (cert, key) = mesh.double.issue_leaf("count-dashboard", false);
    let ok = retry(20, || answered_with(&mesh, &cert, &key));
    assert!(ok.is_ok(), "{ok:?}\n{}", mesh.log());

    let (_, trust_domain) = mesh.double.ca_root();
    let (cert, key) = foreign_leaf(&trust_domain);
    let foreign = answered_with(&mesh, &cert, &key);
    assert!(foreign.is_err(), "{foreign:?}");
    let (cert, key) = mesh.double.issue_leaf("count-dashboard", true);
    let expired = answered_with(&mesh, &cert, &key);
    assert!(expired.is_err(), "{expired:?}");
    // The proxy logs each refusal once the caller has gone.
    let logged = retry(5, || {
        let log = proxy_log(&mesh, "api", "connect-proxy-count-api");
        let both = log.contains("invalid peer certificate: UnknownIssuer")
            && log.contains("invalid peer certificate: certificate expired");
        if both { Ok(()) } else { Err(log) }
    });
    assert!(logged.is_ok(), "{logged:?}");
    finish(&mesh, agent);
}

/// `outpost status`'s lines for the built-in proxy's task.
fn status_lines(mesh: &Mesh) -> String {
    // In the mesh's mount namespace, where its network namespaces are.
    let out = mesh.outpost(&["status"]).output().expect("outpost status");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("proxy: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Once the API's proxy has logged `api` and the dashboard's `dashboard`, within 10 s;
/// else both logs.
fn proxy_logs_say(mesh: &Mesh, api: &str, dashboard: &str) -> Result<(), String> {
    retry(10, || {
        let api_log = proxy_log(mesh, "api", "connect-proxy-count-api");
        let dash_log = proxy_log(mesh, "dashboard", "connect-proxy-count-dashboard");
        if api_log.contains(api) && dash_log.contains(dashboard) {
            Ok(())
        } else {
            Err(format!("{api_log}\n{dash_log}"))
        }
    })
}

/// Gives both sidecars a new leaf and waits until each proxy has loaded its own.
fn rotate_both_leaves(mesh: &Mesh) {
    let api = mesh.double.rotate_leaf("count-api");
    let dashboard = mesh.double.rotate_leaf("count-dashboard");
    let loaded = proxy_logs_say(
        mesh,
        &format!("(serial {api})"),
        &format!("(serial {dashboard})"),
    );
    assert!(loaded.is_ok(), "{loaded:?}");
}

/// Lets `load` run half a second more, stops it, and checks every request was answered.
fn no_request_lost(mesh: &Mesh, load: Load) {
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (ok, failures) = load.stop();
    assert!(
        ok > 20 && failures.is_empty(),
        "{ok} answered, failed: {failures:?}\n{}",
        mesh.log()
    );
}

/// `status` once its proxy lines say `needle`, within `secs`; else the last lines.
fn status_says(mesh: &Mesh, secs: u64, needle: &str) -> Result<String, String> {
    retry(secs, || {
        let status = status_lines(mesh);
        if status.contains(needle) {
            Ok(status)
        } else {
            Err(status)
        }
    })
}

/// With the local agent down, the built-in proxy serves callers it knows with the leaf,
/// roots and answers it has, and `status` says so; when the agent is back, it says that.
#[test]
fn with_consul_down_the_proxy_serves_with_what_it_has() {
    let Some((mesh, agent)) = running("builtin-consul-down", &["count-api"]) else {
        return;
    };
    let status = status_lines(&mesh);
    assert!(
        status.contains("proxy: ready") && status.contains("proxy: consul: reachable"),
        "{status}"
    );

    mesh.double.set_down(true);
    let said = status_says(&mesh, 20, "consul: unreachable");
    assert!(said.is_ok(), "{said:?}");
    for _ in 0..20 {
        let body = get("127.0.0.1:9002").unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
        assert!(body.contains("\"count\""), "{body}");
    }
    mesh.double.set_down(false);
    let back = status_says(&mesh, 30, "consul: reachable");
    assert!(back.is_ok(), "{back:?}");
    finish(&mesh, agent);
}

/// A TCP relay on the uplink to the API's public port: another instance of the API's
/// sidecar for the mesh, which counts the connections it carries.
fn counting_relay() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind((UPLINK, 0)).expect("relay listener");
    let port = listener.local_addr().expect("relay address").port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for caller in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let Ok(api) = std::net::TcpStream::connect((UPLINK, 20000)) else {
                continue;
            };
            for (mut from, mut to) in [
                (caller.try_clone().unwrap(), api.try_clone().unwrap()),
                (api, caller),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, count)
}

/// A PUT to the double's HTTP API, as another client of the agent would send it.
fn put(mesh: &Mesh, path: &str, body: &str) {
    let double = mesh.double.url();
    let request = format!(
        "PUT {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = exchange(double.trim_start_matches("http://"), &request).expect("PUT");
    assert!(reply.contains(" 200 "), "{path}: {reply}");
}

/// Registers another instance of the API's sidecar at `port` on the uplink.
fn register_api_instance(mesh: &Mesh, id: &str, port: u16) {
    let body = format!(
        r#"{{"ID":"{id}","Name":"count-api-sidecar-proxy","Kind":"connect-proxy","Address":"{UPLINK}","Port":{port},"Proxy":{{"DestinationServiceName":"count-api"}}}}"#
    );
    put(mesh, "/v1/agent/service/register", &body);
}

/// The dashboard's built-in proxy spreads new connections over the API's instances in
/// turn, and one that refuses connections is skipped for the next: with three instances
/// (the API's sidecar, a port nothing listens on, and a relay to the sidecar, in the
/// double's order, by ID), every request is answered, and the relay carries its own third
/// and the third that started at the refusing instance: 20 of 30.
#[test]
fn upstream_connections_go_round_robin_and_skip_a_refusing_instance() {
    use std::sync::atomic::Ordering;
    let Some((mesh, agent)) = running("builtin-round-robin", &["count-dashboard"]) else {
        return;
    };

    let (relay, carried) = counting_relay();
    // IDs sort after the sidecar's (`_nomad-task-…`): refusing, then relay.
    register_api_instance(&mesh, "count-api-relay", relay);
    // Nothing listens there: a connection is refused at once.
    let closed = std::net::TcpListener::bind((UPLINK, 0)).expect("a free port");
    let refusing = closed.local_addr().expect("its port").port();
    drop(closed);
    register_api_instance(&mesh, "count-api-refusing", refusing);
    let seen = status_says(&mesh, 70, "upstream count-api: 3 instances");
    assert!(seen.is_ok(), "{seen:?}");

    let before = carried.load(Ordering::SeqCst);
    for _ in 0..30 {
        let body = get("127.0.0.1:9002").unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
        assert!(body.contains("\"count\""), "{body}");
    }
    assert_eq!(carried.load(Ordering::SeqCst) - before, 20);
    for id in ["count-api-relay", "count-api-refusing"] {
        put(&mesh, &format!("/v1/agent/service/deregister/{id}"), "");
    }
    finish(&mesh, agent);
}

/// A CA root rotation under traffic, as Consul does one: the new root is listed beside the
/// old, both proxies load both, then each gets a leaf from the new root. No request fails,
/// and callers with a leaf of either root are let in.
#[test]
fn a_ca_root_rotation_under_traffic_loses_no_request() {
    let Some((mesh, agent)) = running("builtin-root", &["count-api", "count-dashboard"]) else {
        return;
    };
    let (old_cert, old_key) = mesh.double.issue_leaf("count-dashboard", false);

    let load = Load::start("127.0.0.1:9002");
    std::thread::sleep(std::time::Duration::from_millis(500));
    mesh.double.rotate_ca_root();
    let roots = "CA roots loaded (2 root(s))";
    let trusted = proxy_logs_say(&mesh, roots, roots);
    assert!(trusted.is_ok(), "{trusted:?}");
    rotate_both_leaves(&mesh);
    no_request_lost(&mesh, load);

    let old = answered_with(&mesh, &old_cert, &old_key);
    assert!(old.is_ok(), "a leaf of the old root: {old:?}");
    let (new_cert, new_key) = mesh.double.issue_leaf("count-dashboard", false);
    let new = answered_with(&mesh, &new_cert, &new_key);
    assert!(new.is_ok(), "a leaf of the new root: {new:?}");
    finish(&mesh, agent);
}
