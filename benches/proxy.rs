//! `cargo bench --bench proxy` (as root, with real Envoy: see tests/support/install-envoy.sh):
//! the built-in Connect proxy against real Envoy and against no proxy, in one run, under
//! `outpost run` in a private network and mount namespace, with the Consul double (and its
//! xDS server for Envoy).
//!
//! Groups: a client and a server group on built-in proxies (`bc` → `bs`), the same on Envoy
//! (`ec` → `es`), and 18 idle groups on built-in proxies, so that 20 built-in proxies run.
//! The server groups' app is this bench: threads inside the group's namespace listening on
//! 127.0.0.1:9001. Clients are threads inside the client group's namespace:
//! - builtin / envoy: to 127.0.0.1:8080, the client sidecar's upstream listener, which goes
//!   over mTLS to the server sidecar's public port on the host and on to the app;
//! - direct: to the server group's mapped host port (192.0.2.10:9101 → 9001), the same
//!   network path without proxies.
//!
//! Per path: bulk throughput over one connection (256 MiB up; the three paths in turns, five
//! rounds, the median of each), and request latency (64-byte echo) at 1 and 64 concurrent
//! connections (also in turns, five rounds, each percentile the median of the rounds').
//! Then each proxy's RSS.
//! Envoy runs with `--concurrency 1`, as outpost starts it. The binary measured is
//! `$OUTPOST_BENCH_BINARY`, else the static x86_64 musl release build when present, else
//! the bench profile's own. Ends with
//! `proxy: builtin_rss_kib=… envoy_rss_kib=… builtin_mbps=… envoy_mbps=… builtin_p99_us=… envoy_p99_us=…`
//! (p99 at 64 connections).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const UPLINK: &str = "192.0.2.10";
const IDLE_GROUPS: usize = 18;
const BULK_BYTES: usize = 256 << 20;
const MESSAGE: usize = 64;

fn group(name: &str, service: &str, driver: &str, upstream: Option<&str>, extra: &str) -> String {
    let mut text = format!(
        "\n[[group]]\nname = \"{name}\"\n[group.network]\nmode = \"bridge\"\n{extra}\
         [[group.service]]\nname = \"{service}\"\nport = \"9001\"\n\
         [group.service.connect.sidecar_service.proxy]\n"
    );
    if let Some(up) = upstream {
        text.push_str(&format!(
            "[[group.service.connect.sidecar_service.proxy.upstreams]]\n\
             destination_name = \"{up}\"\nlocal_bind_port = 8080\n"
        ));
    }
    text.push_str(&format!(
        "[group.service.connect.sidecar_task]\ndriver = \"{driver}\"\nshutdown_delay = \"0s\"\n\
         [[group.task]]\nname = \"app\"\ncommand = \"/bin/sleep\"\nargs = [\"1000000\"]\n"
    ));
    text
}

fn config(dir: &Path, consul: &str, envoy: &Path) -> String {
    let mut text = format!(
        "[agent]\nnode_name = \"edge-01\"\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n\
         [consul]\naddress = \"{consul}\"\n[network]\nadvertise_address = \"{UPLINK}\"\n\
         [envoy]\nbinary = \"{1}\"\n",
        dir.display(),
        envoy.display()
    );
    let direct = "[[group.network.port]]\nlabel = \"direct\"\nstatic = 9101\nto = 9001\n";
    text.push_str(&group("bs", "b-srv", "builtin", None, direct));
    text.push_str(&group("bc", "b-cli", "builtin", Some("b-srv"), ""));
    text.push_str(&group("es", "e-srv", "exec", None, ""));
    text.push_str(&group("ec", "e-cli", "exec", Some("e-srv"), ""));
    for i in 0..IDLE_GROUPS {
        text.push_str(&group(
            &format!("i{i:02}"),
            &format!("idle-{i:02}"),
            "builtin",
            None,
            "",
        ));
    }
    text
}

fn kib(pid: i64, key: &str) -> u64 {
    let file = if key == "Pss:" {
        "smaps_rollup"
    } else {
        "status"
    };
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Runs `f` on a thread inside the network namespace of process `pid`.
fn in_netns<T: Send + 'static>(
    pid: i64,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the task's netns");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// The app: `B` then bytes until EOF, answered with the count; or `E` then 64-byte echoes.
fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = stream;
            let _ = s.set_nodelay(true);
            let mut kind = [0u8; 1];
            if s.read_exact(&mut kind).is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            if kind[0] == b'B' {
                let mut total: u64 = 0;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes());
            } else {
                let mut msg = [0u8; MESSAGE];
                while s.read_exact(&mut msg).is_ok() {
                    if s.write_all(&msg).is_err() {
                        break;
                    }
                }
            }
        });
    }
}

fn connect(addr: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                return s;
            }
            Err(e) if Instant::now() > deadline => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Bulk upload over one connection: Mbit/s.
fn bulk(addr: &str) -> f64 {
    let mut s = connect(addr);
    let chunk = vec![7u8; 64 * 1024];
    let started = Instant::now();
    s.write_all(b"B").expect("bulk start");
    let mut sent = 0;
    while sent < BULK_BYTES {
        s.write_all(&chunk).expect("bulk write");
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).expect("the server's count");
    assert_eq!(
        u64::from_be_bytes(count),
        sent as u64,
        "bytes lost on {addr}"
    );
    sent as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e6
}

/// `requests` echoes on one connection: each round trip in µs (after a warm-up).
fn echoes(addr: &str, requests: usize) -> Vec<f64> {
    let mut s = connect(addr);
    s.write_all(b"E").expect("echo start");
    let msg = [1u8; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut times = Vec::with_capacity(requests);
    for i in 0..requests + 50 {
        let t = Instant::now();
        s.write_all(&msg).expect("echo write");
        s.read_exact(&mut back).expect("echo read");
        if i >= 50 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    times
}

struct PathResult {
    mbps: f64,
    p50_1: f64,
    p99_1: f64,
    p50_64: f64,
    p99_64: f64,
}

/// Bulk rounds per path: its rate is the median.
const ROUNDS: usize = 5;

/// The bulk rate (Mbit/s) of each path, `(client, addr)`, measured in turns (one round of
/// every path, then the next), so a slow spell of this shared machine falls on all of them
/// alike: each path's median of `ROUNDS`.
fn bulk_in_turns(paths: &[(i64, &'static str)]) -> Vec<f64> {
    let mut rates = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for (i, &(client, addr)) in paths.iter().enumerate() {
            rates[i].push(in_netns(client, move || bulk(addr)).join().expect("bulk"));
        }
    }
    rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.total_cmp(b));
            r[r.len() / 2]
        })
        .collect()
}

/// Latency rounds per path: each percentile reported is the median of the rounds'.
const LATENCY_ROUNDS: usize = 5;

/// p50 and p99 at one connection, then at 64, in µs.
type Latencies = (f64, f64, f64, f64);

/// The latencies of one path, from threads in the namespace of process `client`.
fn latencies(client: i64, addr: &'static str) -> Latencies {
    let mut one = in_netns(client, move || echoes(addr, 3000))
        .join()
        .expect("echoes");
    one.sort_by(|a, b| a.total_cmp(b));
    let threads: Vec<_> = (0..64)
        .map(|_| in_netns(client, move || echoes(addr, 300)))
        .collect();
    let mut many: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("echoes"))
        .collect();
    many.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&one, 0.5),
        percentile(&one, 0.99),
        percentile(&many, 0.5),
        percentile(&many, 0.99),
    )
}

/// Each path's latencies, measured in turns as the bulk rates are (one round of every path,
/// then the next), so a slow spell of this shared machine falls on all of them alike.
fn latencies_in_turns(paths: &[(i64, &'static str)]) -> Vec<Latencies> {
    let mut rounds = vec![Vec::new(); paths.len()];
    for _ in 0..LATENCY_ROUNDS {
        for (i, &(client, addr)) in paths.iter().enumerate() {
            rounds[i].push(latencies(client, addr));
        }
    }
    let median_of = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    rounds
        .into_iter()
        .map(|r| {
            (
                median_of(r.iter().map(|l| l.0).collect()),
                median_of(r.iter().map(|l| l.1).collect()),
                median_of(r.iter().map(|l| l.2).collect()),
                median_of(r.iter().map(|l| l.3).collect()),
            )
        })
        .collect()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !support::root_or_skip("the proxy benchmark") {
        return;
    }
    let Some(real) = support::real_envoy("the proxy benchmark") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let musl = root.join("target/x86_64-unknown-linux-musl/release/outpost");
    let outpost: PathBuf = match std::env::var_os("OUTPOST_BENCH_BINARY") {
        Some(chosen) => PathBuf::from(chosen),
        None if musl.exists() => musl,
        None => PathBuf::from(env!("CARGO_BIN_EXE_outpost")),
    };
    support::private_network("the proxy benchmark");
    support::uplink(&["192.0.2.10/24"]);
    let double = support::consul_double::ConsulDouble::start();
    let dir = support::scratch().join(format!("outpost-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _xds = double.serve_xds(&real.python, &dir.join("xds.log"));
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config(&dir, &double.url(), &real.envoy)).expect("config");
    let run = support::PrivateRun::new();
    let log = dir.join("agent.log");
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
    println!(
        "proxy: built-in ({}) vs real Envoy ({}, --concurrency 1) vs direct",
        outpost.display(),
        real.envoy.display()
    );
    let mut agent = spawn(&["run"]).spawn().expect("run");
    let groups = 4 + IDLE_GROUPS;
    let started = Instant::now();
    let tasks = loop {
        let tasks = support::reported_tasks(&file);
        let running = tasks.iter().filter(|t| t.state == "running").count();
        if running == groups * 2 {
            break tasks;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = spawn(&["teardown"]).output();
            let _ = agent.kill();
            panic!(
                "not running within 90 s ({running} of {} tasks)\n{}",
                groups * 2,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let pid = |group: &str, task: &str| {
        tasks
            .iter()
            .find(|t| t.group == group && t.task == task)
            .map(|t| t.pid)
            .expect("a running task")
    };
    for server in ["bs", "es"] {
        in_netns(pid(server, "app"), || {
            // All addresses: the proxies dial loopback, the direct path comes over the bridge.
            serve(TcpListener::bind("0.0.0.0:9001").expect("the app's port"))
        });
    }
    let faults = |group: &str, service: &str| -> u64 {
        let stat = std::fs::read_to_string(format!(
            "/proc/{}/stat",
            pid(group, &format!("connect-proxy-{service}"))
        ))
        .unwrap_or_default();
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(7)?.parse().ok())
            .unwrap_or(0)
    };
    let faults_before = faults("bs", "b-srv") + faults("bc", "b-cli");
    let measured = std::panic::catch_unwind(|| {
        let paths = [
            (pid("bc", "app"), "192.0.2.10:9101"),
            (pid("bc", "app"), "127.0.0.1:8080"),
            (pid("ec", "app"), "127.0.0.1:8080"),
        ];
        let mbps = bulk_in_turns(&paths);
        let mut latencies = latencies_in_turns(&paths).into_iter();
        let mut next = |mbps| {
            let (p50_1, p99_1, p50_64, p99_64) = latencies.next().unwrap_or_default();
            PathResult {
                mbps,
                p50_1,
                p99_1,
                p50_64,
                p99_64,
            }
        };
        (next(mbps[0]), next(mbps[1]), next(mbps[2]))
    });
    let (direct, builtin, envoy) = match measured {
        Ok(all) => all,
        Err(panic) => {
            // Leave nothing running behind.
            let _ = spawn(&["teardown"]).output();
            let _ = agent.wait();
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            std::panic::resume_unwind(panic);
        }
    };
    println!(
        "page faults of the two loaded built-in proxies during the run: {}",
        faults("bs", "b-srv") + faults("bc", "b-cli") - faults_before
    );
    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>13} {:>13}",
        "path", "bulk_mbps", "p50_us_c1", "p99_us_c1", "p50_us_c64", "p99_us_c64"
    );
    for (name, r) in [
        ("direct", &direct),
        ("builtin", &builtin),
        ("envoy", &envoy),
    ] {
        println!(
            "{name:<8} {:>10.0} {:>12.0} {:>12.0} {:>13.0} {:>13.0}",
            r.mbps, r.p50_1, r.p99_1, r.p50_64, r.p99_64
        );
    }
    let builtin_pids: Vec<i64> = tasks
        .iter()
        .filter(|t| t.task.starts_with("connect-proxy-") && !t.group.starts_with('e'))
        .map(|t| t.pid)
        .collect();
    let builtin_rss: Vec<u64> = builtin_pids.iter().map(|p| kib(*p, "VmRSS:")).collect();
    // The same binary's pages are shared: what the 20 cost together is their PSS.
    let sum = |key: &str| builtin_pids.iter().map(|p| kib(*p, key)).sum::<u64>();
    println!(
        "rss: {} built-in proxies together: PSS {} KiB; RSS anonymous {} KiB, file-backed {} KiB",
        builtin_pids.len(),
        sum("Pss:"),
        sum("RssAnon:"),
        sum("RssFile:")
    );
    let sidecar_rss =
        |group: &str, service: &str| kib(pid(group, &format!("connect-proxy-{service}")), "VmRSS:");
    let envoy_rss = vec![sidecar_rss("es", "e-srv"), sidecar_rss("ec", "e-cli")];
    let loaded = vec![sidecar_rss("bs", "b-srv"), sidecar_rss("bc", "b-cli")];
    println!(
        "rss: {} built-in proxies: median {} KiB, max {} KiB, total {} KiB (the two that carried the load: {:?} KiB); Envoy: {:?} KiB",
        builtin_rss.len(),
        median(builtin_rss.clone()),
        builtin_rss.iter().max().unwrap_or(&0),
        builtin_rss.iter().sum::<u64>(),
        loaded,
        envoy_rss
    );
    let out = spawn(&["teardown"]).output().expect("teardown");
    assert!(out.status.success(), "teardown failed");
    let _ = agent.wait();
    println!(
        "proxy: builtin_rss_kib={} envoy_rss_kib={} builtin_mbps={:.0} envoy_mbps={:.0} builtin_p99_us={:.0} envoy_p99_us={:.0}",
        median(builtin_rss),
        median(envoy_rss),
        builtin.mbps,
        envoy.mbps,
        builtin.p99_64,
        envoy.p99_64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
