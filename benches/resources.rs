//! `cargo bench --bench resources` (as root): does a runaway task hurt its neighbour? One
//! node, one group in the host's (private) network: a neighbour serving HTTP (BusyBox
//! httpd, a fork per request) and, depending on the round, nothing else, a CPU hog (busy
//! loops, four per core), or a memory hog that allocates past its `memory_max` and is
//! OOM-killed and restarted over and over. The neighbour's `cpu` is Nomad's default (100,
//! the hog's equal) or 2000. Per round, sequential requests for 3 s: count, p50, p99, max.
//! The rounds run side by side in one run; nothing is asserted. Last line:
//! `resources: idle_p99_us=… cpu_hog_equal_p99_us=… cpu_hog_weighted_p99_us=… oom_hog_p99_us=…`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PORT: u16 = 18480;

/// The neighbour and, per round, its hog.
fn config(dir: &Path, neighbour_cpu: u32, hog: &str) -> String {
    format!(
        r#"[agent]
data_dir = "{dir}/data"
run_dir = "{dir}/run"
[[group]]
name = "bench"
[group.network]
mode = "host"
[group.restart]
attempts = 1000
interval = "1h"
delay = "0s"
mode = "delay"
[[group.task]]
name = "neighbour"
command = "/bin/busybox"
args = ["sh", "-c", "echo ok > /local/index.html && exec busybox httpd -f -p 127.0.0.1:{PORT} -h /local"]
[group.task.resources]
cpu = {neighbour_cpu}
{hog}"#,
        dir = dir.display()
    )
}

fn cpu_hog() -> String {
    let loops = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    format!(
        r#"[[group.task]]
name = "hog"
command = "/bin/sh"
args = ["-c", "for i in $(seq {loops}); do (while :; do :; done) & done; wait"]
[group.task.resources]
cpu = 100
"#
    )
}

const OOM_HOG: &str = r#"[[group.task]]
name = "hog"
command = "/bin/sh"
args = ["-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)"]
[group.task.resources]
memory = 16
memory_max = 32
"#;

/// One GET, its latency.
fn request() -> Option<Duration> {
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    reply.starts_with(b"HTTP/1.").then(|| start.elapsed())
}

struct Round {
    name: &'static str,
    latencies: Vec<Duration>,
    failed: usize,
}

impl Round {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

fn run_round(dir: &Path, name: &'static str, neighbour_cpu: u32, hog: &str) -> Round {
    let round = dir.join(name);
    let _ = std::fs::remove_dir_all(&round);
    std::fs::create_dir_all(&round).expect("scratch");
    let file = round.join("outpost.toml");
    std::fs::write(&file, config(&round, neighbour_cpu, hog)).expect("config");
    let outpost = |args: &[&str]| -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args).arg("-c").arg(&file);
        cmd.stderr(
            std::fs::File::create(round.join(format!("{}.log", args[0]))).expect("log file"),
        );
        cmd
    };
    let mut agent: Child = outpost(&["run"]).spawn().expect("outpost run");
    let ready = Instant::now();
    while request().is_none() && ready.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the hog get going (and the OOM loop turn a few times).
    std::thread::sleep(Duration::from_secs(1));
    let mut result = Round {
        name,
        latencies: Vec::new(),
        failed: 0,
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match request() {
            Some(latency) => result.latencies.push(latency),
            None => result.failed += 1,
        }
    }
    let _ = outpost(&["teardown"]).status();
    let _ = agent.wait();
    let log = std::fs::read_to_string(round.join("run.log")).unwrap_or_default();
    let ooms = log.matches("killed: out of memory").count();
    if ooms > 0 {
        eprintln!("{name}: the hog was OOM-killed {ooms} times during the round");
    }
    let _ = std::fs::remove_dir_all(&round);
    result
}

/// The static musl build when present (the shipped kind), else the bench profile's.
fn binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let musl = root.join("target/x86_64-unknown-linux-musl/release/outpost");
    match musl.exists() {
        true => musl,
        false => PathBuf::from(env!("CARGO_BIN_EXE_outpost")),
    }
}

fn main() {
    if !support::root_or_skip("the resources benchmark") {
        println!("resources: skipped (needs root)");
        return;
    }
    if !support::private_network("the resources benchmark") {
        return;
    }
    let layout = outpost::cgroup::host().describe();
    let dir = support::scratch().join(format!("outpost-bench-resources-{}", std::process::id()));
    let cpu = cpu_hog();
    let rounds = [
        run_round(&dir, "idle", 100, ""),
        run_round(&dir, "cpu_hog_equal", 100, &cpu),
        run_round(&dir, "cpu_hog_weighted", 2000, &cpu),
        run_round(&dir, "oom_hog", 100, OOM_HOG),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    println!("binary: {}; cgroups: {layout}", binary().display());
    println!("| round | neighbour cpu | requests | failed | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rounds {
        let cpu = if r.name == "cpu_hog_weighted" {
            2000
        } else {
            100
        };
        println!(
            "| {} | {cpu} | {} | {} | {:?} | {:?} | {:?} |",
            r.name,
            r.latencies.len(),
            r.failed,
            r.percentile(0.5),
            r.percentile(0.99),
            r.percentile(1.0)
        );
    }
    let p99 = |i: usize| rounds[i].percentile(0.99).as_micros();
    println!(
        "resources: idle_p99_us={} cpu_hog_equal_p99_us={} cpu_hog_weighted_p99_us={} oom_hog_p99_us={}",
        p99(0),
        p99(1),
        p99(2),
        p99(3)
    );
}
