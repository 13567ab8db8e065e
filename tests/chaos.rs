//! Chaos, bounded, as root in throwaway network and mount namespaces (see run_sidecars.rs
//! for the sandbox): what a device meets unattended.
//! - kill -9 of the agent (or of `teardown`) at 50 random points during bring-up, reload
//!   and teardown of several groups (one with a Connect sidecar), each followed by a fresh
//!   `run`: the node converges (every task running once, the registrations, the
//!   namespaces, no stray process) and after `teardown` nothing is left: no link, netns,
//!   nft rule, registration, process or file under run_dir;
//! - a Consul that fails in bursts (503) and answers slowly, and restarts meanwhile;
//! - an Envoy that exits at once, forever: the restarts follow the policy and the capped
//!   reschedule back-off, and the agent stays nearly idle;
//! - a data_dir that is full or read-only: a reload that needs the state file fails with a
//!   clear message, the old state file is intact and the running groups are untouched.
//!
//! The kill points come from a seeded generator; the seed is printed, and
//! OUTPOST_CHAOS_SEED replays a run.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::consul_double::ConsulDouble;

/// The advertise address: an "uplink" interface in the test's network namespace.
const UPLINK: &str = "192.0.2.10";
const AGENT_TOKEN: &str = "4f3c9b1e-7d2a-4e8f-9a61-2b5c8d0e7f13";
const JWT: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjaGFvcyJ9.c2ln";

/// xorshift64*: reproducible kill points without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A group of the chaos configs, as TOML.
fn group(name: &str, variant: &str) -> String {
    let sleep = "command = \"/bin/sleep\"\nargs = [\"100000\"]\nkill_timeout = \"1s\"\n";
    match name {
        "web" => format!(
            r#"
[[group]]
name = "web"
[group.network]
mode = "bridge"
[[group.network.port]]
label = "http"
static = 8081
to = 80
[[group.service]]
name = "web"
port = "http"
[[group.task]]
name = "server"
{sleep}[group.task.env]
VARIANT = "{variant}"
"#
        ),
        "api" => format!(
            r#"
[[group]]
name = "api"
[group.network]
mode = "bridge"
[[group.service]]
name = "api"
port = "9001"
[group.service.connect.sidecar_service]
[group.service.connect.sidecar_task]
shutdown_delay = "0s"
kill_timeout = "1s"
[[group.task]]
name = "app"
{sleep}"#
        ),
        other => format!(
            r#"
[[group]]
name = "{other}"
[group.network]
mode = "bridge"
[[group.task]]
name = "worker"
{sleep}"#
        ),
    }
}

struct Node {
    dir: PathBuf,
    double: ConsulDouble,
    file: PathBuf,
    records: PathBuf,
    envoy: PathBuf,
    run: support::PrivateRun,
    /// More of the `[consul]` section (ACLs).
    consul_extra: String,
}

/// What the agent reports of one group: its tasks as (name, state, pid).
type Reported = Vec<(String, Vec<(String, String, i64)>)>;

impl Node {
    fn new(name: &str) -> Option<Node> {
        if !support::private_network(name) {
            return None;
        }
        support::uplink(&["192.0.2.10/24"]);
        let double = support::xds_double();
        let dir = support::scratch().join(format!("outpost-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let records = dir.join("envoy-records");
        std::fs::create_dir_all(&records).unwrap();
        let envoy = support::stub_envoy(&dir, &records);
        let file = dir.join("outpost.toml");
        Some(Node {
            dir,
            double,
            file,
            records,
            envoy,
            run: support::PrivateRun::new(),
            consul_extra: String::new(),
        })
    }

    /// Consul with ACLs: the agent has its own token, and each service logs in with the
    /// auth method for a workload token (released at teardown).
    fn use_acl_login(&mut self) {
        self.double.enable_acls();
        self.double.add_token(AGENT_TOKEN, Duration::ZERO);
        self.double.add_auth_method("nomad-workloads", JWT);
        let jwt = self.dir.join("jwt");
        std::fs::write(&jwt, JWT).unwrap();
        self.consul_extra = format!(
            "token = \"{AGENT_TOKEN}\"\n[consul.acl]\nmode = \"login\"\njwt_file = \"{}\"\n",
            jwt.display()
        );
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes the config with these groups (and extra TOML for the agent section).
    fn configure(&self, groups: &[(&str, &str)]) {
        let mut config = format!(
            "[agent]\nnode_name = \"edge-01\"\ndata_dir = \"{}\"\nrun_dir = \"{}\"\n\n\
             [consul]\naddress = \"{}\"\n{}\n[network]\nadvertise_address = \"{UPLINK}\"\n\n\
             [envoy]\nbinary = \"{}\"\n",
            self.data_dir().display(),
            self.run_dir().display(),
            self.double.url(),
            self.consul_extra,
            self.envoy.display()
        );
        for (name, variant) in groups {
            config.push_str(&group(name, variant));
        }
        std::fs::write(&self.file, config).unwrap();
    }

    fn outpost(&self, args: &[&str]) -> Command {
        self.run
            .outpost(args, &self.file, &self.dir.join("agent.log"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// What the Envoys and the relay said on stderr, for a failure's message.
    fn sidecar_stderr(&self) -> String {
        let run_dir = self.run_dir();
        let mut files: Vec<PathBuf> = vec![run_dir.join("consul-grpc-relay.stderr.0")];
        for group in std::fs::read_dir(run_dir.join("alloc"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let logs = group.path().join("alloc/logs");
            for log in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let name = log.file_name().to_string_lossy().to_string();
                if name.starts_with("connect-proxy-") && name.contains(".stderr.") {
                    files.push(log.path());
                }
            }
        }
        let mut text = String::new();
        for file in files {
            if let Ok(body) = std::fs::read_to_string(&file) {
                text.push_str(&format!("\n--- {} ---\n{body}", file.display()));
            }
        }
        text
    }

    fn plan(&self) -> outpost::plan::Plan {
        let valid = outpost::load_config(&self.file).expect("the chaos config is valid");
        outpost::plan::build(
            &valid,
            &outpost::state::NodeState::default(),
            &outpost::plan::HostFacts::placeholder(),
        )
        .expect("plan")
    }

    /// Every group and task the running agent reports; empty if none answers.
    fn reported(&self) -> Reported {
        let mut all: Reported = Vec::new();
        for t in support::reported_tasks(&self.file) {
            let task = (t.task, t.state, t.pid);
            match all.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, tasks)) => tasks.push(task),
                None => all.push((t.group, vec![task])),
            }
        }
        all
    }

    /// Processes that belong to the node: in one of its cgroups (tasks, Envoy, whatever
    /// they forked), with a cwd under run_dir (raw_exec tasks) or a command line that names
    /// it (the relay). The agent itself names only the config file.
    fn processes(&self) -> BTreeSet<i64> {
        let run_dir = self.run_dir();
        let needle = run_dir.display().to_string();
        let cgroups = format!("/{}/", self.plan().cgroup_parent);
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            // A zombie is gone, whatever its parent (init, once the agent died) takes to
            // reap it; /proc still shows its last cgroup.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
            {
                continue;
            }
            if cwd.starts_with(&run_dir)
                || String::from_utf8_lossy(&cmdline).contains(&needle)
                || cgroup.contains(&cgroups)
            {
                found.insert(pid);
            }
        }
        found
    }

    /// Agents (run or teardown) still alive for this node's config.
    fn agents(&self) -> Vec<i64> {
        let needle = self.file.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            // A zombie has an empty cmdline; stat says so too.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            if cmdline.contains(&needle) && !zombie {
                found.push(pid);
            }
        }
        found
    }

    fn netns(&self) -> BTreeSet<String> {
        let out = self
            .run
            .command("ls")
            .args(["-A", "/run/netns"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Why the node does not match `plan` yet, or `None` when it does.
    fn diverges(&self, plan: &outpost::plan::Plan) -> Option<String> {
        let reported = self.reported();
        let want_groups: BTreeSet<String> = plan.groups.iter().map(|g| g.name.clone()).collect();
        let got_groups: BTreeSet<String> = reported.iter().map(|(g, _)| g.clone()).collect();
        if want_groups != got_groups {
            return Some(format!("groups {got_groups:?}, want {want_groups:?}"));
        }
        let mut pids = BTreeSet::new();
        // One relay for the node while a group has sidecars.
        let sidecars = plan
            .groups
            .iter()
            .any(|g| g.services.iter().any(|s| s.proxy.is_some()));
        match (sidecars, support::reported_relay(&self.file)) {
            (true, Some(pid)) => {
                pids.insert(pid);
            }
            (false, None) => {}
            (want, got) => return Some(format!("relay {got:?}, wanted: {want}")),
        }
        for (g, tasks) in &reported {
            let planned = plan.groups.iter().find(|p| &p.name == g)?;
            let want = planned.tasks.len();
            if tasks.len() != want || tasks.iter().any(|(_, state, _)| state != "running") {
                return Some(format!("group {g}: {tasks:?}"));
            }
            pids.extend(tasks.iter().map(|(_, _, pid)| *pid));
        }
        let mut want_ids: Vec<String> = Vec::new();
        for s in plan.groups.iter().flat_map(|g| &g.services) {
            want_ids.push(s.id.clone());
            if let Some(p) = &s.proxy {
                want_ids.push(p.id.clone());
            }
        }
        want_ids.sort();
        let mut ids = self.double.service_ids();
        ids.sort();
        if ids != want_ids {
            return Some(format!("registrations {ids:?}, want {want_ids:?}"));
        }
        let want_ns: BTreeSet<String> = plan
            .groups
            .iter()
            .map(|g| outpost::config::naming::netns_name(&g.name))
            .collect();
        let ns = self.netns();
        if ns != want_ns {
            return Some(format!("netns {ns:?}, want {want_ns:?}"));
        }
        let processes = self.processes();
        if processes != pids {
            return Some(format!("processes {processes:?}, the agent runs {pids:?}"));
        }
        None
    }

    fn converge(&self, what: &str) {
        let plan = self.plan();
        let start = Instant::now();
        let mut why = self.diverges(&plan);
        let mut last = String::new();
        while why.is_some() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
            why = self.diverges(&plan);
            if std::env::var_os("OUTPOST_CHAOS_LOG").is_some()
                && why.as_deref() != Some(last.as_str())
            {
                last = why.clone().unwrap_or_default();
                eprintln!("{:?}: {last}", start.elapsed());
            }
        }
        if let Some(why) = why {
            panic!(
                "{what}: did not converge: {why}\n{}{}",
                self.log(),
                self.sidecar_stderr()
            );
        }
    }

    /// What is left of the node after a teardown; empty when nothing.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            let name = name.split('@').next().unwrap_or_default();
            if !["lo", "uplink", "uplink-peer"].contains(&name) {
                left.push(format!("link {name}"));
            }
        }
        left.extend(self.netns().into_iter().map(|n| format!("netns {n}")));
        let nft = Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap();
        let nft = String::from_utf8_lossy(&nft.stdout);
        if nft.contains("outpost") {
            left.push(format!("nft rules: {nft}"));
        }
        left.extend(
            self.double
                .service_ids()
                .into_iter()
                .map(|s| format!("service {s}")),
        );
        left.extend(self.processes().into_iter().map(|p| format!("process {p}")));
        left.extend(self.agents().into_iter().map(|p| format!("agent {p}")));
        left.extend(
            files_under(&self.run_dir())
                .into_iter()
                .map(|f| format!("file {f}")),
        );
        left
    }

    fn teardown_clean(&self, what: &str) {
        let out = self.outpost(&["teardown"]).output().unwrap();
        assert!(
            out.status.success(),
            "{what}: teardown failed\n{}",
            self.log()
        );
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "{what}: left after teardown: {left:?}\n{}",
            self.log()
        );
    }

    /// `mount ARGS TARGET` in the node's mount namespace.
    fn mount(&self, args: &[&str], target: &Path) {
        let ok = self.run.command("mount").args(args).arg(target).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "mount {args:?} {}",
            target.display()
        );
    }

    fn start(&self) -> Child {
        self.outpost(&["run"]).spawn().unwrap()
    }

    /// Waits until no agent for this node is alive (a killed one may take a moment).
    fn no_agents_within(&self, secs: u64) -> bool {
        let start = Instant::now();
        while !self.agents().is_empty() {
            if start.elapsed() > Duration::from_secs(secs) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.outpost(&["teardown"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
            // An empty directory is not a file, but a group's directory is a leftover.
            if path.parent().is_some_and(|p| p.ends_with("alloc")) {
                files.push(format!("{}/", path.display()));
            }
        } else {
            files.push(path.display().to_string());
        }
    }
    files
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn sigkill(pid: i64) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

const CONFIG_A: [(&str, &str); 3] = [("web", "a"), ("api", ""), ("batch", "")];
/// The reload: batch goes, cache comes, web changes (restarted), api stays.
const CONFIG_B: [(&str, &str); 3] = [("web", "b"), ("api", ""), ("cache", "")];

#[test]
fn kill_9_at_random_points_of_bring_up_reload_and_teardown_converges_and_leaves_nothing() {
    let Some(node) = Node::new("chaos-kill") else {
        return;
    };
    kill_rounds(&node, 50);
}

#[test]
fn kill_9_with_acl_workload_tokens_gives_every_token_back() {
    let Some(mut node) = Node::new("chaos-kill-acl") else {
        return;
    };
    node.use_acl_login();
    kill_rounds(&node, 15);
    let logins = node
        .double
        .log()
        .iter()
        .filter(|l| l.path == "/v1/acl/login" && l.status == 200)
        .count();
    assert!(
        logins >= 30,
        "the services logged in for their tokens: {logins} logins"
    );
}

/// `default_rounds` kills (OUTPOST_CHAOS_ROUNDS overrides), cycling through bring-up, reload
/// and teardown, each followed by a fresh agent, convergence and a clean teardown.
fn kill_rounds(node: &Node, default_rounds: usize) {
    let seed = std::env::var("OUTPOST_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos seed {seed} (OUTPOST_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    // One clean pass of each phase measures how long it takes: the kill points fall in it.
    node.configure(&CONFIG_A);
    let started = Instant::now();
    let mut agent = node.start();
    node.converge("first bring-up");
    let up = started.elapsed();
    node.configure(&CONFIG_B);
    let reloaded = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    node.converge("first reload");
    let reload = reloaded.elapsed();
    let down_started = Instant::now();
    node.teardown_clean("first teardown");
    let down = down_started.elapsed();
    let _ = agent.wait();
    eprintln!("phases: bring-up {up:?}, reload {reload:?}, teardown {down:?}");

    let rounds = std::env::var("OUTPOST_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default_rounds);
    let mut kills = [0usize; 3];
    for round in 0..rounds {
        let phase = round % 3;
        let round_started = Instant::now();
        let what =
            |at: Duration| format!("round {round} (seed {seed}), phase {phase}, kill at {at:?}");
        node.configure(&CONFIG_A);
        match phase {
            // Bring-up from nothing, killed; a fresh agent finishes it.
            0 => {
                let at = Duration::from_micros(rng.below(up.as_micros() as u64 + 1));
                let mut agent = node.start();
                std::thread::sleep(at);
                kill9(&mut agent);
                let mut agent = node.start();
                node.converge(&what(at));
                node.teardown_clean(&what(at));
                let _ = agent.wait();
            }
            // A reload to config B, killed; a fresh agent starts from B.
            1 => {
                let mut agent = node.start();
                node.converge(&format!("round {round}: before the reload"));
                node.configure(&CONFIG_B);
                let at = Duration::from_micros(rng.below(reload.as_micros() as u64 + 1));
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(agent.id() as i32),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .unwrap();
                std::thread::sleep(at);
                kill9(&mut agent);
                let mut agent = node.start();
                node.converge(&what(at));
                node.teardown_clean(&what(at));
                let _ = agent.wait();
            }
            // Teardown, killed (it may have stopped the agent already); a fresh agent
            // brings the node back, and a second teardown removes everything.
            _ => {
                let mut agent = node.start();
                node.converge(&format!("round {round}: before the teardown"));
                let at = Duration::from_micros(rng.below(down.as_micros() as u64 + 1));
                let mut teardown = node.outpost(&["teardown"]).spawn().unwrap();
                std::thread::sleep(at);
                kill9(&mut teardown);
                // The agent was asked to stop (SIGTERM) or not yet: let it finish either way,
                // as a supervisor would, then start a fresh one.
                if agent.try_wait().ok().flatten().is_none() {
                    let stopped = std::time::Instant::now();
                    while agent.try_wait().ok().flatten().is_none()
                        && stopped.elapsed() < Duration::from_millis(300)
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if agent.try_wait().ok().flatten().is_none() {
                    sigkill(agent.id() as i64);
                }
                let _ = agent.wait();
                let mut agent = node.start();
                node.converge(&what(at));
                node.teardown_clean(&what(at));
                let _ = agent.wait();
            }
        }
        kills[phase] += 1;
        assert!(node.no_agents_within(10), "an agent outlived teardown");
        eprintln!("round {round} phase {phase}: {:?}", round_started.elapsed());
        if std::env::var_os("OUTPOST_CHAOS_LOG").is_some() {
            eprintln!("{}", node.log());
        }
        let _ = std::fs::remove_file(node.dir.join("agent.log"));
    }
    eprintln!(
        "kill -9: {} during bring-up, {} during reload, {} during teardown; each converged and left nothing",
        kills[0], kills[1], kills[2]
    );
}

/// The pid of every task the agent reports, by (group, task).
fn task_pids(reported: &Reported) -> Vec<(String, String, i64)> {
    reported
        .iter()
        .flat_map(|(g, tasks)| {
            tasks
                .iter()
                .map(move |(t, _, pid)| (g.clone(), t.clone(), *pid))
        })
        .collect()
}

fn wait_for_log(node: &Node, needle: &str, secs: u64) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if node.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_consul_failing_in_bursts_and_answering_slowly_is_retried_until_the_node_converges() {
    let Some(node) = Node::new("chaos-consul") else {
        return;
    };
    node.configure(&CONFIG_A);
    // Consul fails its next answers with 500 (no cluster leader) and answers slowly.
    node.double.fail_next(4);
    node.double.set_latency(Duration::from_millis(100));
    let mut agent = node.start();
    node.converge("through a 5xx burst");
    assert!(node.log().contains("No cluster leader"), "{}", node.log());
    assert!(node.log().contains("retrying every"), "{}", node.log());
    let before = task_pids(&node.reported());

    // Consul restarts (forgets every registration) and fails again: the presence check and
    // the retries repair it; no task is restarted for Consul's trouble.
    node.double.restart();
    node.double.fail_next(4);
    assert!(
        wait_for_log(&node, "Consul lost service", 30),
        "{}",
        node.log()
    );
    node.converge("after a Consul restart during a 5xx burst");
    assert_eq!(task_pids(&node.reported()), before, "{}", node.log());
    node.double.set_latency(Duration::ZERO);
    node.teardown_clean("after the Consul trouble");
    let _ = agent.wait();
}

/// CPU ticks (user + system) of `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let at = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(14) + at(15)
}

#[test]
fn an_envoy_that_exits_at_once_forever_is_held_back_and_the_agent_stays_idle() {
    let Some(node) = Node::new("chaos-envoy") else {
        return;
    };
    node.configure(&[("web", "a"), ("api", "")]);
    let config = std::fs::read_to_string(&node.file).unwrap().replacen(
        "name = \"api\"\n",
        // The interval is long enough that a slow start (a loaded CI machine) never opens a
        // second restart window within one allocation: each one starts Envoy 3 times.
        "name = \"api\"\n[group.restart]\nattempts = 2\ninterval = \"5s\"\ndelay = \"100ms\"\nmode = \"fail\"\n\
         [group.reschedule]\ndelay = \"200ms\"\nmax_delay = \"800ms\"\n",
        1,
    );
    std::fs::write(&node.file, config).unwrap();
    let proxy = "_outpost-api-api-9001-sidecar-proxy";
    std::fs::write(node.records.join(format!("crash-{proxy}")), "").unwrap();
    let mut agent = node.start();
    let web = |node: &Node| {
        task_pids(&node.reported())
            .into_iter()
            .find(|(g, t, _)| g == "web" && t == "server")
            .map(|(_, _, pid)| pid)
    };
    let start = Instant::now();
    while web(&node).is_none_or(|p| p == 0) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let web_pid = web(&node);
    assert!(web_pid.is_some_and(|p| p > 0), "{}", node.log());

    // Watch the crash loop for 6 s: the agent's CPU and what it decided.
    let window = Duration::from_secs(6);
    let ticks_before = cpu_ticks(agent.id());
    let starts_before = std::fs::read_to_string(node.records.join(format!("{proxy}.starts")))
        .unwrap_or_default()
        .lines()
        .count();
    std::thread::sleep(window);
    let ticks = cpu_ticks(agent.id()) - ticks_before;
    let starts = std::fs::read_to_string(node.records.join(format!("{proxy}.starts")))
        .unwrap_or_default()
        .lines()
        .count()
        - starts_before;
    let log = node.log();
    let delays: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("starting it again in ").nth(1))
        .filter_map(|d| {
            let d = d.trim();
            d.strip_suffix("ms")
                .and_then(|n| n.parse().ok())
                .or_else(|| {
                    d.strip_suffix('s')
                        .and_then(|n| n.parse::<u64>().ok())
                        .map(|s| s * 1000)
                })
        })
        .collect();
    // clock ticks are 1/100 s (USER_HZ) on Linux.
    let cpu_share = ticks as f64 / (window.as_secs_f64() * 100.0);
    eprintln!(
        "crash-looping Envoy over {window:?}: {starts} starts, reschedule delays {delays:?} ms, agent CPU {ticks} ticks ({:.1}% of one core)",
        cpu_share * 100.0
    );
    // The back-off doubles from 200ms and stops at max_delay.
    assert!(delays.len() >= 3, "{log}");
    assert_eq!(&delays[..3], &[200, 400, 800], "{log}");
    assert!(delays.iter().all(|&d| d <= 800), "{delays:?}");
    // Each reschedule allows the first start and 2 restarts: no more Envoys than that.
    assert!(starts <= 3 * (delays.len() + 1), "{starts} starts\n{log}");
    // A spinning loop would use a whole core; the agent sleeps between its decisions.
    assert!(
        cpu_share < 0.25,
        "agent CPU {:.1}% of a core",
        cpu_share * 100.0
    );
    assert_eq!(web(&node), web_pid, "the other group is untouched\n{log}");
    std::fs::remove_file(node.records.join(format!("crash-{proxy}"))).unwrap();
    node.teardown_clean("after the crash loop");
    let _ = agent.wait();
}

#[test]
fn a_full_or_read_only_data_dir_keeps_the_old_state_and_the_running_groups() {
    let Some(node) = Node::new("chaos-data-dir") else {
        return;
    };
    let data = node.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    node.mount(&["-t", "tmpfs", "-o", "size=64k", "tmpfs"], &data);
    let state = node.run.view(&data.join("state.json"));
    node.configure(&CONFIG_A);
    let mut agent = node.start();
    node.converge("before the disk fills");
    let before = task_pids(&node.reported());
    let saved = std::fs::read(&state).expect("the state file");

    // The disk fills up; a reload adds a group, which needs a new lease in the state file.
    let _ = node
        .run
        .command("dd")
        .args(["if=/dev/zero", "bs=4k", "status=none"])
        .arg(format!("of={}", data.join("filler").display()))
        .status();
    let hup = |agent: &Child| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    };
    node.configure(&CONFIG_B);
    hup(&agent);
    let refused = "reload: cannot write state file";
    assert!(wait_for_log(&node, refused, 10), "{}", node.log());
    let log = node.log();
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("keeping the running configuration"), "{log}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        saved,
        "the old state is intact"
    );
    assert!(
        !node.run.view(&data.join(".state.json.tmp")).exists(),
        "no partial file left"
    );
    assert_eq!(
        task_pids(&node.reported()),
        before,
        "running groups untouched"
    );
    assert!(
        !node.netns().contains("outpost-cache"),
        "nothing of the new config applied"
    );

    // Space again: the same reload goes through.
    std::fs::remove_file(node.run.view(&data.join("filler"))).unwrap();
    hup(&agent);
    node.converge("after space was freed");
    let before = task_pids(&node.reported());
    let saved = std::fs::read(&state).unwrap();

    // Read-only: a reload back to config A (batch needs its lease again) is refused alike.
    node.mount(&["-o", "remount,ro"], &data);
    let lines_before = node.log().lines().count();
    node.configure(&CONFIG_A);
    hup(&agent);
    let start = Instant::now();
    while !node
        .log()
        .lines()
        .skip(lines_before)
        .any(|l| l.contains(refused))
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = node.log();
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    assert_eq!(
        task_pids(&node.reported()),
        before,
        "running groups untouched"
    );

    // A fresh agent on the read-only data_dir says why it cannot start and changes nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = agent.wait();
    let out = node.outpost(&["run"]).output().unwrap();
    assert!(!out.status.success());
    let log = node.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot write state file") && last.contains("Read-only"),
        "{log}"
    );
    let still: Vec<i64> = before.iter().map(|(_, _, p)| *p).collect();
    let alive = node.processes();
    assert!(
        still.iter().all(|p| alive.contains(p)),
        "the groups keep running"
    );
    assert_eq!(std::fs::read(&state).unwrap(), saved);

    // Writable again: the next agent adopts the groups and applies config A.
    node.mount(&["-o", "remount,rw"], &data);
    let mut agent = node.start();
    node.converge("once data_dir is writable");
    node.teardown_clean("after the data_dir trouble");
    let _ = agent.wait();
}
