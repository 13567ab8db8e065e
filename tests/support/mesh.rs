//! countdash under `outpost run`, as root, in a sandbox of its own (tests/run_sidecars.rs and
//! tests/run_envoy.rs):
//! - a private network namespace (the test thread's) with an "uplink" interface whose
//!   address is the advertise address, and the Consul double listening on 127.0.0.1 there;
//! - a private mount namespace with its own /run, held by a `sleep` so that the agent can be
//!   stopped and started again inside it;
//! - countdash with stand-ins (tests/support/countdash.py) for the two programs, and either the
//!   stub Envoy (tests/support/stub_envoy.py) or real Envoy fed by the double's xDS server.
//!
//! So a request to host:9002 goes dashboard → its Envoy's upstream listener 127.0.0.1:8080 →
//! the api sidecar's host port → api's Envoy public listener → api on 127.0.0.1:9001.

use super::consul_double::{ConsulDouble, XdsServer};
use super::{RealEnvoy, TaskStatus};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const API_PROXY: &str = "_outpost-api-count-api-9001-sidecar-proxy";
pub const DASHBOARD_PROXY: &str = "_outpost-dashboard-count-dashboard-http-sidecar-proxy";
/// The address of the uplink interface, the advertise address of the node.
pub const UPLINK: &str = "192.0.2.10";

pub fn pid(all: &[TaskStatus], group: &str, task: &str) -> Option<i64> {
    all.iter()
        .find(|t| t.group == group && t.task == task && t.state == "running")
        .map(|t| t.pid)
}

/// The tasks of countdash, as `(group, task)`; the node's one xDS relay serves both groups.
pub const TASKS: [(&str, &str); 4] = [
    ("api", "connect-proxy-count-api"),
    ("api", "web"),
    ("dashboard", "connect-proxy-count-dashboard"),
    ("dashboard", "dashboard"),
];

pub fn all_running(all: &[TaskStatus]) -> bool {
    TASKS.iter().all(|(g, t)| pid(all, g, t).is_some())
}

/// Sends `request` to `addr` and reads the answer until the server closes.
pub fn exchange(addr: &str, request: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &addr.parse().map_err(|e| format!("{e}"))?,
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    Ok(reply)
}

/// One HTTP/1.0 GET; the body of a 200 answer, else why not.
pub fn get(addr: &str) -> Result<String, String> {
    let reply = exchange(addr, "GET / HTTP/1.0\r\n\r\n")?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_string()),
        _ => Err(format!("answer: {reply:?}")),
    }
}

/// `f` until it gives `Ok`, at most `secs`; the last answer.
pub fn retry<T>(secs: u64, f: impl Fn() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Err(_) if start.elapsed() < Duration::from_secs(secs) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            answer => return answer,
        }
    }
}

/// `get` until it answers (the programs need a moment to listen after they started).
pub fn get_within(addr: &str, secs: u64) -> Result<String, String> {
    retry(secs, || get(addr))
}

pub struct Mesh {
    pub dir: PathBuf,
    pub double: ConsulDouble,
    pub file: PathBuf,
    /// Where the stub Envoy records its starts (unused with real Envoy).
    pub records: PathBuf,
    /// The private mount namespace (its own /run) the agents run in.
    pub run: super::PrivateRun,
    /// The double's xDS server, with real Envoy.
    pub xds: Option<XdsServer>,
}

impl Mesh {
    /// With the stub Envoy. `None` when the test must be skipped (not root, outside CI).
    pub fn new(name: &str) -> Option<Mesh> {
        Self::with(name, None, &[])
    }

    /// With real Envoy and the double's xDS server. `None` when the test must be skipped.
    pub fn with_real_envoy(name: &str) -> Option<Mesh> {
        let real = super::real_envoy(name)?;
        Self::with(name, Some(real), &[])
    }

    /// With real Envoy, and the built-in proxy as the sidecar of the services named.
    pub fn with_builtin(name: &str, builtin: &[&str]) -> Option<Mesh> {
        let real = super::real_envoy(name)?;
        Self::with(name, Some(real), builtin)
    }

    fn with(name: &str, real: Option<RealEnvoy>, builtin: &[&str]) -> Option<Mesh> {
        if !super::private_network(name) {
            return None;
        }
        super::uplink(&["192.0.2.10/24"]);
        let dir = super::scratch().join(format!("outpost-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let records = dir.join("envoy-records");
        std::fs::create_dir_all(&records).unwrap();
        let (double, xds, envoy) = match real {
            None => (super::xds_double(), None, super::stub_envoy(&dir, &records)),
            Some(real) => {
                let double = ConsulDouble::start();
                let xds = double.serve_xds(&real.python, &dir.join("xds.log"));
                (double, Some(xds), real.envoy)
            }
        };
        let countdash = super::support_file("countdash.py").display().to_string();
        let config = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/countdash.toml"
        ))
        .unwrap()
        .replace(
            "address = \"http://127.0.0.1:8500\"",
            &format!("address = \"{}\"", double.url()),
        )
        .replace(
            "[network]\n",
            &format!("[network]\nadvertise_address = \"{UPLINK}\"\n"),
        )
        .replace("/usr/bin/envoy", &envoy.display().to_string())
        .replace(
            "\"/usr/local/bin/counting-service\"",
            &format!("\"/usr/bin/python3\"\nargs = [\"{countdash}\", \"api\"]"),
        )
        .replace(
            "\"/usr/local/bin/counter-dashboard\"",
            &format!("\"/usr/bin/python3\"\nargs = [\"{countdash}\", \"dashboard\"]"),
        )
        .replace(
            "name = \"api\"\n",
            "name = \"api\"\n[group.restart]\nattempts = 2\ninterval = \"3s\"\ndelay = \"100ms\"\nmode = \"delay\"\n",
        )
        .replace(
            "[agent]\n",
            &format!(
                "[agent]\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n",
                dir.display()
            ),
        );
        let config = builtin.iter().fold(config, |c, s| use_builtin(&c, s));
        let file = dir.join("outpost.toml");
        std::fs::write(&file, config).unwrap();
        Some(Mesh {
            dir,
            double,
            file,
            records,
            run: super::PrivateRun::new(),
            xds,
        })
    }

    /// `outpost ARGS -c FILE` in the mount namespace, stderr appended to agent.log.
    pub fn outpost(&self, args: &[&str]) -> Command {
        self.run
            .outpost(args, &self.file, &self.dir.join("agent.log"))
    }

    pub fn start_agent(&self) -> Child {
        self.outpost(&["run"]).spawn().unwrap()
    }

    /// The agent's log, and the xDS server's when there is one.
    pub fn log(&self) -> String {
        let agent = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        match self.xds {
            None => agent,
            Some(_) => {
                let xds = std::fs::read_to_string(self.dir.join("xds.log")).unwrap_or_default();
                format!("{agent}\n--- xDS server ---\n{xds}")
            }
        }
    }

    /// Every task the running agent reports.
    pub fn tasks(&self) -> Vec<TaskStatus> {
        super::reported_tasks(&self.file)
    }

    /// Polls the agent's status every 20 ms until `done` holds (at most `secs`).
    pub fn wait(&self, secs: u64, done: impl Fn(&[TaskStatus]) -> bool) -> Vec<TaskStatus> {
        let start = Instant::now();
        loop {
            let all = self.tasks();
            if done(&all) || start.elapsed() > Duration::from_secs(secs) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many times the stub Envoy of `proxy` was started.
    pub fn envoy_starts(&self, proxy: &str) -> usize {
        std::fs::read_to_string(self.records.join(format!("{proxy}.starts")))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// With countdash running under `agent` and a client asking host:9002 without pause:
    /// the agent is stopped (SIGTERM) and started again, then killed (SIGKILL) and started
    /// again, each time until every task is reported running. The tasks before, after the
    /// SIGTERM and after the kill, the client's answered requests and failures, and the
    /// agent now running.
    pub fn restart_agent_twice_under_load(&self, mut agent: Child) -> RestartsUnderLoad {
        let before = self.wait(30, all_running);
        assert!(all_running(&before), "{before:?}\n{}", self.log());
        let load = Load::start("127.0.0.1:9002");
        let settle = || {
            let all = self.wait(30, all_running);
            assert!(all_running(&all), "{all:?}\n{}", self.log());
            all
        };
        let pause = || std::thread::sleep(Duration::from_millis(300));
        pause();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the agent");
        assert!(agent.wait().is_ok_and(|s| s.success()), "{}", self.log());
        pause();
        let mut agent = self.start_agent();
        let after_term = settle();
        pause();
        let _ = agent.kill();
        let _ = agent.wait();
        pause();
        let agent = self.start_agent();
        let after_kill = settle();
        pause();
        let (ok, failures) = load.stop();
        RestartsUnderLoad {
            before,
            after_term,
            after_kill,
            ok,
            failures,
            agent,
        }
    }

    pub fn teardown(&self) {
        let down = self.outpost(&["teardown"]).output().unwrap();
        assert!(down.status.success(), "teardown failed\n{}", self.log());
        assert!(self.double.service_ids().is_empty());
    }
}

/// countdash's `config` with the built-in proxy as `service`'s sidecar: a `sidecar_task`
/// table for the service, placed before its group's first task.
fn use_builtin(config: &str, service: &str) -> String {
    let at = config
        .find(&format!("name = \"{service}\""))
        .unwrap_or_else(|| panic!("no service {service} in countdash"));
    let task = at
        + config[at..]
            .find("[[group.task]]")
            .expect("a task after the service");
    format!(
        "{}[group.service.connect.sidecar_task]\ndriver = \"builtin\"\n\n{}",
        &config[..task],
        &config[task..]
    )
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.outpost(&["teardown"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Processes whose command line contains every one of `needles`, by pid.
pub fn processes_with(needles: &[&str]) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if needles.iter().all(|n| cmdline.contains(n)) {
            found.push(pid);
        }
    }
    found
}

/// Processes in the cgroups under `parent` (a node's tasks, whatever they forked) whose
/// command line contains `needle`.
pub fn processes_in_cgroups(parent: &str, needle: &str) -> Vec<i32> {
    let under = format!("/{parent}/");
    processes_with(&[needle])
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&under))
        })
        // A zombie is gone, however long its new parent takes to reap it.
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

/// One HTTP/1.1 GET of `path` (Envoy's HTTP listeners refuse HTTP/1.0 with 426, as Consul's
/// HTTP checks never send it): the status code and the body.
pub fn get_status(addr: &str, path: &str) -> Result<(u16, String), String> {
    let reply = exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("answer: {reply:?}"))?;
    Ok((code, body.to_string()))
}

pub struct RestartsUnderLoad {
    pub before: Vec<TaskStatus>,
    pub after_term: Vec<TaskStatus>,
    pub after_kill: Vec<TaskStatus>,
    pub ok: usize,
    pub failures: Vec<String>,
    pub agent: Child,
}

/// The pid of each countdash task, in `TASKS` order.
pub fn task_pids(all: &[TaskStatus]) -> [Option<i64>; 4] {
    TASKS.map(|(g, t)| pid(all, g, t))
}

/// A client asking `addr` (one HTTP/1.0 GET after another) until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    pub fn start(addr: &str) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addr = addr.to_string();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::Relaxed) {
                match get(&addr) {
                    Ok(_) => ok += 1,
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        });
        Load { stop, thread }
    }

    /// Stops the client: the requests answered and the failures, in order.
    pub fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
