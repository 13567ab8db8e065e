//! Transparent proxy with real traffic, as root: `outpost run` puts a group with
//! `transparent_proxy` in its namespace and installs the redirection rules there; a stub
//! Envoy (tests/support/stub_envoy.py), run as uid 101, serves the outbound listener
//! (passthrough to the original destination, answers prefixed "via-envoy ") and the public
//! listener. A probe (tests/support/tproxy_probe.py) run inside the namespace plays the
//! task. Outside the namespace, on the test's private "host" network, small servers answer
//! "direct" and a UDP server stands for Consul's DNS.

mod support;

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

const UPLINK: &str = "192.0.2.10";
const EXCLUDED_NET_HOST: &str = "198.51.100.1";

/// A TCP server that answers every connection with "direct" and closes it.
fn answer_direct(addr: &str) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"direct\n");
        }
    });
}

#[test]
fn transparent_proxy_redirects_outbound_inbound_and_dns_in_the_namespace() {
    if !support::private_network("transparent proxy") {
        return;
    }
    support::uplink(&["192.0.2.10/24", "198.51.100.1/24"]);
    answer_direct(&format!("{UPLINK}:7000"));
    answer_direct(&format!("{UPLINK}:7001"));
    answer_direct(&format!("{EXCLUDED_NET_HOST}:7000"));
    let dns = UdpSocket::bind(format!("{UPLINK}:8600")).unwrap();
    // The names asked of "Consul's DNS" (length-prefixed labels after a 12-byte header).
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let names = asked.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = dns.recv_from(&mut buf) {
            let mut labels = Vec::new();
            let mut at = 12;
            while at < len && buf[at] != 0 {
                let n = buf[at] as usize;
                labels
                    .push(String::from_utf8_lossy(&buf[at + 1..(at + 1 + n).min(len)]).to_string());
                at += 1 + n;
            }
            if let Ok(mut names) = names.lock() {
                names.push(labels.join("."));
            }
            let _ = dns.send_to(b"dns", from);
        }
    });

    let double = support::xds_double();
    let dir = support::scratch().join(format!("outpost-tproxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records = dir.join("envoy-records");
    std::fs::create_dir_all(&records).unwrap();
    // The stub runs as uid 101 and writes its records here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&records, std::fs::Permissions::from_mode(0o777)).unwrap();
    let envoy = support::stub_envoy(&dir, &records);
    let probe = support::support_file("tproxy_probe.py");
    let config = format!(
        r#"[agent]
node_name = "edge-01"
data_dir = "{dir}/data"
run_dir = "{dir}/run"

[consul]
address = "{consul}"
dns_address = "{UPLINK}:8600"

[network]
advertise_address = "{UPLINK}"

[envoy]
binary = "{envoy}"

[[group]]
name = "app"

[group.network]
mode = "bridge"

[[group.service]]
name = "app"
port = "9001"

[group.service.connect.sidecar_service.proxy.transparent_proxy]
exclude_outbound_ports = [7001]
exclude_outbound_cidrs = ["198.51.100.0/24"]

[[group.task]]
name = "app"
command = "/usr/bin/python3"
args = ["{probe}", "serve", "9001"]

# Resolves an upstream's virtual name through the group's resolv.conf (Consul's DNS).
[[group.task]]
name = "resolve"
command = "/bin/sh"
args = ["-c", "cat /etc/resolv.conf; python3 -c \"import socket\ntry: socket.getaddrinfo('count-api.virtual.consul', 80)\nexcept OSError: pass\"; sleep 1000"]
"#,
        dir = dir.display(),
        consul = double.url(),
        envoy = envoy.display(),
        probe = probe.display(),
    );
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config).unwrap();
    let log = dir.join("agent.log");
    let run = support::PrivateRun::new();
    let mut agent = run.outpost(&["run"], &file, &log).spawn().unwrap();
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // What the task sees: a probe inside the group's namespace.
    let in_group = |args: &[&str]| -> String {
        let out = run
            .command("nsenter")
            .arg("--net=/run/netns/outpost-app")
            .arg("python3")
            .arg(&probe)
            .args(args)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    // Envoy is up once the redirected connection comes back through it.
    let start = Instant::now();
    let mut outbound = in_group(&["tcp", UPLINK, "7000"]);
    while outbound != "via-envoy direct" && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        outbound = in_group(&["tcp", UPLINK, "7000"]);
    }
    // An arbitrary outside address lands on Envoy's outbound listener, and Envoy's own
    // connection onwards goes out directly (else it would loop back into itself).
    assert_eq!(outbound, "via-envoy direct", "{}", show_log());
    // An excluded port and an excluded CIDR bypass Envoy.
    assert_eq!(in_group(&["tcp", UPLINK, "7001"]), "direct");
    assert_eq!(in_group(&["tcp", EXCLUDED_NET_HOST, "7000"]), "direct");
    // DNS to Consul's DNS address goes to its real port.
    assert_eq!(in_group(&["udp", UPLINK, "53"]), "dns");
    // A task resolves through its group's resolv.conf, which names Consul's DNS, so an
    // upstream's virtual name reaches it (port 53, redirected to 8600).
    let start = Instant::now();
    let virtual_name = "count-api.virtual.consul".to_string();
    while !asked.lock().unwrap().contains(&virtual_name)
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        asked.lock().unwrap().contains(&virtual_name),
        "{:?}\n{}",
        asked.lock().unwrap(),
        show_log()
    );
    let resolv = std::fs::read_to_string(dir.join("run/alloc/app/alloc/logs/resolve.stdout.0"))
        .unwrap_or_default();
    assert_eq!(resolv.trim(), format!("nameserver {UPLINK}"));

    // Inbound to the service port goes through Envoy's public listener, which dials the
    // app from 127.0.0.1; without the rules the app would see the bridge address.
    // (The app starts once Envoy is ready; until then the public listener has nothing to
    // dial.)
    let inbound = || -> String {
        use std::io::Read;
        let Ok(mut conn) = std::net::TcpStream::connect_timeout(
            &"172.26.64.2:9001".parse().unwrap(),
            Duration::from_secs(5),
        ) else {
            return String::new();
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    };
    let start = Instant::now();
    let mut answer = inbound();
    while answer.is_empty() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        answer = inbound();
    }
    assert_eq!(answer.trim(), "app peer=127.0.0.1", "{}", show_log());

    // Envoy ran as the proxy uid, and Consul was told the proxy is transparent.
    let record = std::fs::read_to_string(records.join("_outpost-app-app-9001-sidecar-proxy.json"))
        .expect("stub envoy record");
    assert!(record.contains("\"uid\": 101"), "{record}");
    let sidecar = double
        .service("_outpost-app-app-9001-sidecar-proxy")
        .expect("sidecar registered");
    let proxy = miniserde::json::to_string(&sidecar["Proxy"]);
    assert!(proxy.contains(r#""Mode":"transparent""#), "{proxy}");

    let down = run.outpost(&["teardown"], &file, &log).output().unwrap();
    assert!(down.status.success(), "{}", show_log());
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
