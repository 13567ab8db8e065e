//! `cargo bench --bench resources` (as root): does a runaway task hurt its neighbours? One
//! node, one group in the host's (private) network, with two neighbours: one serving HTTP
//! (BusyBox httpd, a fork per request) and one counting in a loop for 2 s (BusyBox awk: its
//! count is the CPU it got). Depending on the round, beside them: nothing, a CPU hog (busy
//! loops, four per core), or a memory hog that allocates past its `memory_max` and is
//! OOM-killed and restarted over and over. The neighbours' `cpu` is Nomad's default (100,
//! the hog's equal) or 2000; one CPU round runs on a host without cgroups (unmounted in the
//! agent's mount namespace), where every task shares the agent's. Per round, sequential
//! requests for 3 s: count, p50, p99, max, and the counter's count. The rounds run side by
//! side in one run; nothing is asserted. Last line: `resources: idle_p99_us=…
//! cpu_hog_equal_p99_us=… cpu_hog_weighted_p99_us=… cpu_hog_no_cgroups_p99_us=…
//! oom_hog_p99_us=… counter_share_equal=… counter_share_no_cgroups=…` (shares: the count
//! beside the hog over the count alone).

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
[[group.task]]
name = "counter"
command = "/bin/busybox"
args = ["sh", "-c", "sleep 1; busybox awk 'BEGIN {{ e = systime() + 2; while (systime() < e) n++; print n }}'; exec sleep 1000"]
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
    neighbour_cpu: u32,
    latencies: Vec<Duration>,
    failed: usize,
    /// The counter's count (0: it did not report).
    count: u64,
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

/// `with_cgroups: false` runs the agent where no cgroup filesystem is mounted.
fn run_round(
    dir: &Path,
    name: &'static str,
    neighbour_cpu: u32,
    hog: &str,
    with_cgroups: bool,
) -> Round {
    let round = dir.join(name);
    let _ = std::fs::remove_dir_all(&round);
    std::fs::create_dir_all(&round).expect("scratch");
    let file = round.join("outpost.toml");
    std::fs::write(&file, config(&round, neighbour_cpu, hog)).expect("config");
    let outpost = |args: &[&str]| -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
        let hide = if with_cgroups {
            ""
        } else {
            "umount -R /sys/fs/cgroup && "
        };
        cmd.arg(format!("{hide}exec \"$@\""))
            .arg("sh")
            .arg(binary());
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
        neighbour_cpu,
        latencies: Vec::new(),
        failed: 0,
        count: 0,
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        match request() {
            Some(latency) => result.latencies.push(latency),
            None => result.failed += 1,
        }
    }
    // The counter has had its 2 s by now (it started 1 s after the agent).
    let counted = round.join("run/alloc/bench/alloc/logs/counter.stdout.0");
    result.count = std::fs::read_to_string(counted)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
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

/// This checkout's build (a musl build left in target/ may be older than the code).
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost"))
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
        run_round(&dir, "idle", 100, "", true),
        run_round(&dir, "cpu_hog_equal", 100, &cpu, true),
        run_round(&dir, "cpu_hog_weighted", 2000, &cpu, true),
        run_round(&dir, "cpu_hog_no_cgroups", 100, &cpu, false),
        run_round(&dir, "oom_hog", 100, OOM_HOG, true),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    println!("binary: {}; cgroups: {layout}", binary().display());
    println!("| round | neighbours' cpu | requests | failed | p50 | p99 | max | counter's count |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rounds {
        println!(
            "| {} | {} | {} | {} | {:?} | {:?} | {:?} | {} |",
            r.name,
            r.neighbour_cpu,
            r.latencies.len(),
            r.failed,
            r.percentile(0.5),
            r.percentile(0.99),
            r.percentile(1.0),
            r.count
        );
    }
    let p99 = |i: usize| rounds[i].percentile(0.99).as_micros();
    let share = |i: usize| rounds[i].count as f64 / rounds[0].count.max(1) as f64;
    println!(
        "resources: idle_p99_us={} cpu_hog_equal_p99_us={} cpu_hog_weighted_p99_us={} cpu_hog_no_cgroups_p99_us={} oom_hog_p99_us={} counter_share_equal={:.2} counter_share_no_cgroups={:.2}",
        p99(0),
        p99(1),
        p99(2),
        p99(3),
        p99(4),
        share(1),
        share(3)
    );
}
