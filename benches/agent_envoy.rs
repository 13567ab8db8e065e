//! `cargo bench --bench agent_envoy` (as root, with real Envoy: see
//! tests/support/install-envoy.sh): `outpost run` with 20 bridge groups, each with a Connect
//! sidecar running real Envoy, fed over ADS by the Consul double's xDS server
//! (tests/support/xds_server.py), in a private network and mount namespace. Group g01 runs
//! countdash's dashboard on host port 9002 with an upstream to svc-02; the others run the
//! counting API. Per round, from `run` spawned:
//! - ready: every group past its sidecars (each Envoy answered `/ready` LIVE; the agent asks
//!   every 250 ms) and its tasks started, read off `outpost status --json` every 20 ms;
//! - first byte: the first answer through an upstream (host:9002 → dashboard → its Envoy →
//!   mTLS → svc-02's Envoy → API);
//! - 2 s later: the agent's RSS, the relay's PSS (one process serves every group), Envoy's
//!   RSS (median of 20);
//! - down: `outpost teardown` (Envoy's drain is set to 0 s).
//!
//! The binary measured is the static x86_64 musl build when present, else the bench
//! profile's own. Ends with
//! `agent-envoy: groups=20 ready_ms=… first_byte_ms=… agent_rss_kib=… relays_pss_kib=… envoy_rss_kib=…`
//! (medians over the rounds).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GROUPS: usize = 20;
const ROUNDS: usize = 3;
const UPLINK: &str = "192.0.2.10";

fn config(dir: &Path, consul: &str, envoy: &Path) -> String {
    let countdash = support::support_file("countdash.py");
    let mut text = format!(
        "[agent]\nnode_name = \"edge-01\"\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n\
         [consul]\naddress = \"{consul}\"\n[network]\nadvertise_address = \"{UPLINK}\"\n\
         [envoy]\nbinary = \"{1}\"\n",
        dir.display(),
        envoy.display()
    );
    for i in 1..=GROUPS {
        let (port, role, extra) = match i {
            1 => (
                "\"http\"",
                "dashboard",
                "[[group.network.port]]\nlabel = \"http\"\nstatic = 9002\nto = 9002\n",
            ),
            _ => ("\"9001\"", "api", ""),
        };
        text.push_str(&format!(
            "\n[[group]]\nname = \"g{i:02}\"\n[group.network]\nmode = \"bridge\"\n{extra}\
             [[group.service]]\nname = \"svc-{i:02}\"\nport = {port}\n\
             [group.service.connect.sidecar_service.proxy]\n"
        ));
        if i == 1 {
            text.push_str(
                "[[group.service.connect.sidecar_service.proxy.upstreams]]\n\
                 destination_name = \"svc-02\"\nlocal_bind_port = 8080\n",
            );
        }
        text.push_str(&format!(
            "[group.service.connect.sidecar_task]\nshutdown_delay = \"0s\"\n\
             [[group.task]]\nname = \"app\"\ncommand = \"/usr/bin/python3\"\n\
             args = [\"{}\", \"{role}\"]\n[group.task.env]\n",
            countdash.display()
        ));
        text.push_str(match i {
            1 => {
                "PORT = \"9002\"\nCOUNTING_SERVICE_URL = \"http://${NOMAD_UPSTREAM_ADDR_svc_02}\"\n"
            }
            _ => "PORT = \"9001\"\n",
        });
    }
    text
}

fn kib(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Every group's phase is "running" (its sidecars answered /ready and its tasks started).
fn all_groups_running(file: &Path) -> bool {
    let Ok(out) = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["status", "--json", "-c"])
        .arg(file)
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.matches("\"phase\":\"running\"").count() == GROUPS
}

/// One GET of host:9002; whether the dashboard's answer came through the upstream.
fn through_upstream() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:9002".parse().expect("address"),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_string(&mut reply).is_ok()
        && reply.contains("dashboard: {\"count\"")
}

struct Round {
    ready_ms: f64,
    first_byte_ms: f64,
    agent_rss: u64,
    relays_pss: u64,
    envoy_rss: u64,
    down_ms: f64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::root_or_skip("the real-Envoy agent benchmark") {
        return;
    }
    let Some(real) = support::real_envoy("the real-Envoy agent benchmark") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let musl = root.join("target/x86_64-unknown-linux-musl/release/outpost");
    let outpost: PathBuf = if musl.exists() {
        musl
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_outpost"))
    };
    support::private_network("the real-Envoy agent benchmark");
    support::uplink(&["192.0.2.10/24"]);
    let double = support::consul_double::ConsulDouble::start();
    let dir = support::scratch().join(format!("outpost-bench-envoy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _xds = double.serve_xds(&real.python, &dir.join("xds.log"));
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config(&dir, &double.url(), &real.envoy)).expect("config");
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
    let run_dir = format!("{}/run", dir.display());

    println!(
        "agent-envoy: {GROUPS} groups with real Envoy sidecars ({}), binary {}",
        real.envoy.display(),
        outpost.display()
    );
    println!(
        "{:<6} {:>9} {:>14} {:>14} {:>16} {:>15} {:>8}",
        "round",
        "ready_ms",
        "first_byte_ms",
        "agent_rss_kib",
        "relays_pss_kib",
        "envoy_rss_kib",
        "down_ms"
    );
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let spawn = |args: &[&str]| {
            let mut cmd = run.command(&outpost.display().to_string());
            cmd.args(args).arg("-c").arg(&file);
            if let Ok(f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                cmd.stderr(f);
            }
            cmd
        };
        let started = Instant::now();
        let mut agent = spawn(&["run"]).spawn().expect("run");
        let (mut ready_ms, mut first_byte_ms) = (None, None);
        while (ready_ms.is_none() || first_byte_ms.is_none())
            && started.elapsed() < Duration::from_secs(60)
        {
            if first_byte_ms.is_none() && through_upstream() {
                first_byte_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            if ready_ms.is_none() && all_groups_running(&file) {
                ready_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (Some(ready_ms), Some(first_byte_ms)) = (ready_ms, first_byte_ms) else {
            let _ = spawn(&["teardown"]).output();
            let _ = agent.wait();
            panic!(
                "round {round}: not ready within 60 s\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        std::thread::sleep(Duration::from_secs(2));
        let agent_rss = kib(agent.id() as i32, "status", "VmRSS:");
        let relays = support::mesh::processes_with(&[&run_dir, "relay", "--sockets"]);
        let relays_pss: u64 = relays.iter().map(|p| kib(*p, "smaps_rollup", "Pss:")).sum();
        let envoys: Vec<i32> = support::mesh::processes_with(&[&run_dir, "envoy_bootstrap.json"]);
        let envoy_rss = median(
            envoys
                .iter()
                .map(|p| kib(*p, "status", "VmRSS:") as f64)
                .collect(),
        ) as u64;
        assert_eq!(relays.len(), 1, "one relay for the node");
        assert_eq!(envoys.len(), GROUPS, "one Envoy per group");
        let down = Instant::now();
        let out = spawn(&["teardown"]).output().expect("teardown");
        let down_ms = down.elapsed().as_secs_f64() * 1000.0;
        assert!(out.status.success(), "teardown failed");
        let _ = agent.wait();
        println!(
            "{round:<6} {ready_ms:>9.0} {first_byte_ms:>14.0} {agent_rss:>14} {relays_pss:>16} {envoy_rss:>15} {down_ms:>8.0}"
        );
        rounds.push(Round {
            ready_ms,
            first_byte_ms,
            agent_rss,
            relays_pss,
            envoy_rss,
            down_ms,
        });
    }
    let m = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    println!(
        "relay: one process for {} groups, PSS (median) {:.0} KiB (budget for the relays 2048)",
        GROUPS,
        m(|r| r.relays_pss as f64)
    );
    println!("teardown (median): {:.0} ms", m(|r| r.down_ms));
    println!(
        "agent-envoy: groups={GROUPS} ready_ms={:.0} first_byte_ms={:.0} agent_rss_kib={:.0} relays_pss_kib={:.0} envoy_rss_kib={:.0}",
        m(|r| r.ready_ms),
        m(|r| r.first_byte_ms),
        m(|r| r.agent_rss as f64),
        m(|r| r.relays_pss as f64),
        m(|r| r.envoy_rss as f64)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
