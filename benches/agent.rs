//! `cargo bench --bench agent` (as root): `outpost run` with 20 bridge groups, each with a
//! Connect sidecar, against the Consul double and the stub Envoy (tests/support), in a
//! private network and mount namespace. Two sets of rounds, side by side: with the stand-in
//! Envoy idle (its wrapper only sleeps: the agent's own speed) and with the stub Envoy
//! (Python, ~40 ms of CPU each at start, which competes with the agent). Per round:
//! - the bring-up by stage, read off the agent's log: network applied, services
//!   registered, bootstraps written, the last Envoy exec'd (the agent logs a start once the
//!   exec succeeded); the wrapper's own first line; every task of every group running;
//! - the agent's RSS once settled (all running, 2 s later) and its peak (VmHWM);
//! - down: `outpost teardown` from spawn to exit (deregister, stop, remove the network).
//!
//! The groups set `sidecar_task.shutdown_delay = "0s"`: with Nomad's default 5 s Envoy
//! drain, teardown is that 5 s plus the figure here.
//! The binary measured is the static x86_64 musl build when present
//! (`cargo build --release --target x86_64-unknown-linux-musl`), the shipped kind, else the
//! bench profile's own. Prints the tables and, last,
//! `agent: groups=20 up_ms=… rss_kib=… down_ms=…` (medians of the stub Envoy's rounds).
//! `OUTPOST_BENCH_BINARIES=a:b` measures several builds one after the other in one run.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GROUPS: usize = 20;
const ROUNDS: usize = 5;

fn config(dir: &Path, consul: &str, envoy: &Path) -> String {
    let mut text = format!(
        "[agent]\nnode_name = \"edge-01\"\ndata_dir = \"{0}/data\"\nrun_dir = \"/run/outpost\"\n\n\
         [consul]\naddress = \"{consul}\"\n\n[network]\nadvertise_address = \"192.0.2.10\"\n\n\
         [envoy]\nbinary = \"{1}\"\n",
        dir.display(),
        envoy.display()
    );
    for i in 1..=GROUPS {
        text.push_str(&format!(
            r#"
[[group]]
name = "g{i:02}"
[group.network]
mode = "bridge"
[[group.service]]
name = "svc-{i:02}"
port = "9001"
[group.service.connect.sidecar_service]
[group.service.connect.sidecar_task]
shutdown_delay = "0s"
[[group.task]]
name = "app"
command = "/bin/sleep"
args = ["100000"]
"#
        ));
    }
    text
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// When each stage of the bring-up ended, in ms after `run` was spawned: read off the
/// agent's log as its lines arrive (the log has no timestamps of its own).
#[derive(Default, Clone, Copy)]
struct Stages {
    network: f64,
    registered: f64,
    bootstraps: f64,
    /// The agent logged the last Envoy as started: after its exec succeeded (the exec
    /// closes the child's report pipe, which the agent waits on before logging).
    execs: f64,
}

fn trace_stages(
    log: PathBuf,
    from: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Stages> {
    std::thread::spawn(move || {
        let mut stages = Stages::default();
        let mut seen = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut bootstraps = 0;
        let mut envoys = 0;
        while !stop.load(Ordering::Relaxed) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let at = from.elapsed().as_secs_f64() * 1000.0;
            for line in text.get(seen..).unwrap_or("").lines() {
                if line.contains("network applied") {
                    stages.network = at;
                } else if line.contains("service(s) registered") && stages.registered == 0.0 {
                    stages.registered = at;
                } else if line.contains("started task connect-proxy-") {
                    envoys += 1;
                    if envoys == GROUPS {
                        stages.execs = at;
                    }
                } else if line.contains("bootstrap of") {
                    bootstraps += 1;
                    if bootstraps == GROUPS {
                        stages.bootstraps = at;
                    }
                }
            }
            seen = text.len().max(seen);
            std::thread::sleep(Duration::from_micros(500));
        }
        stages
    })
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// User + system CPU time of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let at = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of proc(5); the list starts at field 3.
    at(11) + at(12)
}

fn kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Round {
    stages: Stages,
    cpu_ms: u64,
    envoys_ms: f64,
    all_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
    down_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_header() {
    println!(
        "{:<6} {:>8} {:>11} {:>11} {:>10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "round",
        "network",
        "registered",
        "bootstraps",
        "envoys_up",
        "stub_ran",
        "agent_cpu",
        "all_up",
        "rss_kib",
        "hwm_kib",
        "down_ms"
    );
}

/// The binaries to measure: `OUTPOST_BENCH_BINARIES` (colon-separated, measured one after
/// the other in this run, to compare builds side by side), else the one described above.
fn binaries(root: &Path) -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("OUTPOST_BENCH_BINARIES") {
        return std::env::split_paths(&list).collect();
    }
    let musl = root.join("target/x86_64-unknown-linux-musl/release/outpost");
    match musl.exists() {
        true => vec![musl],
        false => vec![PathBuf::from(env!("CARGO_BIN_EXE_outpost"))],
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !support::root_or_skip("the agent benchmark") {
        println!("agent: skipped (needs root for namespaces)");
        return;
    }
    if !support::private_network("the agent benchmark") {
        return;
    }
    support::uplink(&["192.0.2.10/24"]);
    let double = support::xds_double();
    let dir = support::scratch().join(format!("outpost-bench-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let records = dir.join("records");
    std::fs::create_dir_all(&records).expect("scratch dir");
    // The stand-in Envoy runs as Envoy's uid (101), not root: it may write its records.
    std::fs::set_permissions(&records, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let envoy = dir.join("envoy");
    let execs = dir.join("envoy-execs");
    // While this file exists the stand-in Envoy only sleeps: no CPU at start, no /ready.
    let idle_flag = dir.join("idle-envoy");
    std::fs::write(
        &envoy,
        format!(
            "#!/bin/sh\n{}echo $(date +%s%N) >> {}\n[ -e {} ] && exec sleep 100000\nSTUB_ENVOY_RECORDS={} exec python3 {} \"$@\"\n",
            support::STUB_ENVOY_VERSION,
            execs.display(),
            idle_flag.display(),
            records.display(),
            support::support_file("stub_envoy.py").display()
        ),
    )
    .expect("stub wrapper");
    std::fs::set_permissions(&envoy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config(&dir, &double.url(), &envoy)).expect("config");
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
    let bench = |bin: &Path| {
        let version = Command::new(bin).arg("version").output();
        let version = version
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("binary: {} ({version})", bin.display());
        let outpost = |args: &[&str]| {
            let mut cmd = run.command(&bin.display().to_string());
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

        println!(
            "{GROUPS} bridge groups, each a service with a Connect sidecar (stub Envoy), Consul double without lag"
        );
        println!(
            "ms after `run` was spawned: network applied, services registered, last bootstrap written,"
        );
        println!(
            "last Envoy exec'd (the agent logs it once the exec succeeded), last stub Envoy running (its"
        );
        println!(
            "wrapper's first line), all tasks running (polled every 20 ms); agent_cpu: the agent's own CPU"
        );
        println!("time until the last stub ran, in 10 ms ticks");
        // Rounds with the stand-in Envoy idle (`idle`: the agent's own speed, nothing else
        // starting), or with the stub (Python, ~40 ms of CPU each at start, answering /ready).
        let measure = |idle: bool| -> Option<Vec<Round>> {
            if idle {
                std::fs::write(&idle_flag, "").ok()?;
            } else {
                let _ = std::fs::remove_file(&idle_flag);
            }
            print_header();
            let mut rounds = Vec::new();
            for round in 1..=ROUNDS {
                // Emptied, not removed: the stand-in (uid 101) appends to it.
                std::fs::write(&execs, "").expect("exec log");
                std::fs::set_permissions(&execs, std::fs::Permissions::from_mode(0o666))
                    .expect("chmod");
                let started = now_ns();
                let clock = Instant::now();
                let mut agent = match outpost(&["run"]).spawn() {
                    Ok(a) => a,
                    Err(e) => {
                        println!("agent: cannot start {}: {e}", bin.display());
                        return None;
                    }
                };
                let stop = Arc::new(AtomicBool::new(false));
                let tracer = trace_stages(log.clone(), clock, stop.clone());
                let mut all_ms = None;
                let mut cpu_ms = None;
                while clock.elapsed() < Duration::from_secs(60) {
                    if cpu_ms.is_none() && count_lines(&execs) >= GROUPS {
                        cpu_ms = Some(cpu_ticks(agent.id()) * 10);
                    }
                    let status = outpost(&["status", "--json"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                        .unwrap_or_default();
                    let running = status.matches("\"state\":\"running\"").count();
                    // Per group: app and Envoy (one relay serves the node); idle Envoys never get
                    // ready, so no app.
                    if idle && running == GROUPS && count_lines(&execs) >= GROUPS {
                        std::thread::sleep(Duration::from_millis(100)); // the log catches up
                        all_ms = Some(0.0);
                        break;
                    }
                    if running == GROUPS * 2 {
                        all_ms = Some(clock.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if cpu_ms.is_none() {
                    cpu_ms = Some(cpu_ticks(agent.id()) * 10);
                }
                stop.store(true, Ordering::Relaxed);
                let stages = tracer.join().unwrap_or_default();
                let stamps: Vec<u128> = std::fs::read_to_string(&execs)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                let (Some(all_ms), true) = (all_ms, stamps.len() >= GROUPS) else {
                    println!(
                        "agent: round {round} did not come up ({} Envoys exec'd); see {}",
                        stamps.len(),
                        log.display()
                    );
                    let _ = outpost(&["teardown"]).status();
                    return None;
                };
                let last = stamps.iter().copied().max().unwrap_or(started);
                let envoys_ms = (last.saturating_sub(started)) as f64 / 1e6;
                if !idle {
                    std::thread::sleep(Duration::from_secs(2));
                }
                let rss_kib = kib(agent.id(), "VmRSS:");
                let hwm_kib = kib(agent.id(), "VmHWM:");
                let down = Instant::now();
                let ok = outpost(&["teardown"]).status().is_ok_and(|s| s.success());
                let down_ms = down.elapsed().as_secs_f64() * 1000.0;
                let _ = agent.wait();
                if !ok {
                    println!("agent: teardown failed; see {}", log.display());
                    return None;
                }
                println!(
                    "{round:<6} {:>8.1} {:>11.1} {:>11.1} {:>10.1} {envoys_ms:>9.1} {:>10} {all_ms:>8.1} {rss_kib:>8} {hwm_kib:>8} {down_ms:>8.1}",
                    stages.network,
                    stages.registered,
                    stages.bootstraps,
                    stages.execs,
                    cpu_ms.unwrap_or(0)
                );
                rounds.push(Round {
                    stages,
                    cpu_ms: cpu_ms.unwrap_or(0),
                    envoys_ms,
                    all_ms,
                    rss_kib,
                    hwm_kib,
                    down_ms,
                });
            }
            Some(rounds)
        };
        println!(
            "stand-in Envoy idle (exec'd, then sleeps): the agent alone; all_up, RSS not settled"
        );
        let Some(idle) = measure(true) else {
            return false;
        };
        let idle_up = median(idle.iter().map(|r| r.stages.execs).collect());
        println!("stub Envoy (Python: reads its bootstrap and registration, answers /ready)");
        let Some(rounds) = measure(false) else {
            return false;
        };
        let stub_ran = median(rounds.iter().map(|r| r.envoys_ms).collect());
        let all = median(rounds.iter().map(|r| r.all_ms).collect());
        let rss = median(rounds.iter().map(|r| r.rss_kib as f64).collect());
        let hwm = median(rounds.iter().map(|r| r.hwm_kib as f64).collect());
        let down = median(rounds.iter().map(|r| r.down_ms).collect());
        let cpu = median(rounds.iter().map(|r| r.cpu_ms as f64).collect());
        let stage = |f: fn(&Stages) -> f64| median(rounds.iter().map(|r| f(&r.stages)).collect());
        let up = stage(|s| s.execs);
        println!(
            "medians: network {:.0} ms, registration {:.0} ms more, bootstraps {:.0} ms more, 21 processes (the relay, an Envoy per group) exec'd {:.0} ms more; the last stub ran at {stub_ran:.0} ms; the agent's CPU until then: {cpu:.0} ms",
            stage(|s| s.network),
            stage(|s| s.registered) - stage(|s| s.network),
            stage(|s| s.bootstraps) - stage(|s| s.registered),
            up - stage(|s| s.bootstraps)
        );
        println!(
            "budgets (docs/architecture.md): 20 sidecars exec'd <= 250 ms: {up:.0} ms ({idle_up:.0} ms with the idle stand-in); RSS with 20 groups <= 4096 KiB: {rss:.0} KiB (peak {hwm:.0}); all tasks running: {all:.0} ms"
        );
        println!("agent: groups={GROUPS} up_ms={up:.0} rss_kib={rss:.0} down_ms={down:.0}");
        true
    };
    let mut all_measured = true;
    for bin in binaries(root) {
        all_measured &= bench(&bin);
    }
    // A failed round's log stays for reading.
    if all_measured {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
