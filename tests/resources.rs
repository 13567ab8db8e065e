//! A task is its cgroup: stops and restarts take every process of a task (what it forked and
//! daemonized included), `resources` become cgroup limits, an OOM kill is reported as one
//! and restarts the task alone, a restarted agent finds its tasks in their cgroups, and a
//! host without cgroups says what it cannot enforce and stops tasks by process group.
//!
//! Real agent, real processes, real cgroups (whatever this host mounts: v2, or the hybrid
//! layout with v1 memory and cpu), as root, in a throwaway network namespace and a private
//! /run.

mod support;

use miniserde::json::{self, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One node: its scratch directory, config, log, and private /run.
struct Node {
    dir: PathBuf,
    file: PathBuf,
    log: PathBuf,
    run: support::PrivateRun,
}

impl Node {
    /// `None` when the test must be skipped (not root).
    fn new(name: &str, groups: &str, run: fn() -> support::PrivateRun) -> Option<Node> {
        if !support::private_network(name) {
            return None;
        }
        let dir = support::scratch().join(format!("outpost-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("outpost.toml");
        let config = format!(
            "[agent]\ndata_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"\n{groups}",
            dir.display()
        );
        std::fs::write(&file, config).unwrap();
        Some(Node {
            log: dir.join("agent.log"),
            dir,
            file,
            run: run(),
        })
    }

    fn outpost(&self, args: &[&str]) -> Command {
        self.run.outpost(args, &self.file, &self.log)
    }

    fn start(&self) -> Child {
        self.outpost(&["run"]).spawn().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 30 s) until `done` holds; the log, for the assertion's message.
    fn wait_for(&self, what: &str, done: impl Fn(&Node) -> bool) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if done(self) {
                return self.log();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}\n{}", self.log());
    }

    /// A task's stdout so far.
    fn stdout(&self, group: &str, task: &str) -> String {
        let path = self
            .dir
            .join(format!("run/alloc/{group}/alloc/logs/{task}.stdout.0"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// `status --json`, once the agent answers.
    fn status(&self) -> Value {
        for _ in 0..200 {
            let out = self.outpost(&["status", "--json"]).output().unwrap();
            if out.status.success() {
                return json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no status\n{}", self.log());
    }

    fn plan(&self) -> Value {
        let out = self.outpost(&["plan", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", self.log());
        json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
    }

    fn teardown(&self, mut agent: Child) {
        let down = self.outpost(&["teardown"]).status().unwrap();
        let _ = agent.wait();
        assert!(down.success(), "{}", self.log());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // After a failed assertion: no agent or task left running (a no-op otherwise).
        let _ = self.outpost(&["teardown"]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn field<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    let mut at = value;
    for key in path {
        at = match at {
            Value::Object(o) => o.get(*key).unwrap_or(&Value::Null),
            _ => &Value::Null,
        };
    }
    at
}

fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(a) => a,
        _ => &[],
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => json::to_string(other),
    }
}

/// A task of `status --json`.
fn task_status(status: &Value, group: &str, task: &str) -> Value {
    let g = array(field(status, &["groups"]))
        .iter()
        .find(|g| text(field(g, &["name"])) == group)
        .unwrap_or_else(|| panic!("no group {group}"));
    array(field(g, &["tasks"]))
        .iter()
        .find(|t| text(field(t, &["name"])) == task)
        .cloned()
        .unwrap_or_else(|| panic!("no task {task}"))
}

fn pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn exists(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A task that leaves two daemons and exits after a second: one daemon in a session of its
/// own (`setsid`, out of the process group), one in the process group. It prints their
/// pids.
const DAEMONIZES: &str = r#"
[[group]]
name = "forks"
[group.restart]
attempts = 5
delay = "1s"
[[group.task]]
name = "d"
command = "/bin/sh"
args = ["-c", "setsid sleep 4242 & echo $!; sleep 4343 & echo $!; sleep 1; exit 3"]
"#;

#[test]
fn a_daemonizing_task_leaves_nothing_behind_after_restart_and_teardown() {
    let Some(node) = Node::new("cg-daemons", DAEMONIZES, support::PrivateRun::new) else {
        return;
    };
    let agent = node.start();
    // Two runs: the first exited (exit 3) and was restarted.
    let log = node.wait_for("the restart", |n| pids(&n.stdout("forks", "d")).len() >= 4);
    let all = pids(&node.stdout("forks", "d"));
    let (first, second) = all.split_at(2);
    for pid in first {
        assert!(
            !exists(*pid),
            "a daemon of the first run ({pid}) outlived its restart\n{log}"
        );
    }
    assert!(
        second.iter().all(|p| exists(*p)),
        "the second run's daemons run\n{log}"
    );
    node.teardown(agent);
    for pid in &all {
        assert!(
            !exists(*pid),
            "daemon {pid} outlived the teardown\n{}",
            node.log()
        );
    }
}

/// A task past its `memory_max`, beside one that stays small.
const OOM: &str = r#"
[[group]]
name = "mem"
[group.restart]
attempts = 5
delay = "1s"
[[group.task]]
name = "hog"
command = "/bin/sh"
# 200 MB in a shell variable, then wait: killed at 32 MiB.
args = ["-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); sleep 100"]
[group.task.resources]
cpu = 200
memory = 16
memory_max = 32
[[group.task]]
name = "calm"
command = "/bin/sleep"
args = ["1000"]
"#;

#[test]
fn a_task_past_its_memory_max_is_oom_killed_reported_and_restarted_alone() {
    let Some(node) = Node::new("cg-oom", OOM, support::PrivateRun::new) else {
        return;
    };
    let plan = node.plan();
    let hog_plan = array(field(&plan, &["groups"]))[0].clone();
    let hog_plan = array(field(&hog_plan, &["tasks"]))
        .iter()
        .find(|t| text(field(t, &["name"])) == "hog")
        .cloned()
        .unwrap();
    let env = field(&hog_plan, &["env"]);
    assert_eq!(text(field(env, &["NOMAD_MEMORY_LIMIT"])), "16");
    assert_eq!(text(field(env, &["NOMAD_MEMORY_MAX_LIMIT"])), "32");
    assert_eq!(text(field(env, &["NOMAD_CPU_LIMIT"])), "200");
    let cgroup = text(field(&hog_plan, &["resources", "cgroup"]));

    let agent = node.start();
    let calm_pid = |status: &Value| field(&task_status(status, "mem", "calm"), &["pid"]).clone();
    node.wait_for("the neighbour", |n| {
        !matches!(
            field(&task_status(&n.status(), "mem", "calm"), &["pid"]),
            Value::Null
        )
    });
    let first = node.status();
    let log = node.wait_for("the OOM kill", |n| {
        n.log()
            .contains("killed: out of memory, limit 32 MiB; restarting")
    });
    // The kernel's own record of it, where this host keeps it.
    let limits = cgroup_files(&cgroup);
    assert!(
        limits
            .iter()
            .any(|(f, v)| f == "memory.max" && v == "33554432")
            || limits
                .iter()
                .any(|(f, v)| f == "memory.limit_in_bytes" && v == "33554432"),
        "{limits:?}"
    );
    assert!(
        limits
            .iter()
            .any(|(f, v)| f == "memory.low" && v == "16777216")
            || limits
                .iter()
                .any(|(f, v)| f == "memory.soft_limit_in_bytes" && v == "16777216"),
        "{limits:?}"
    );
    assert!(
        limits.iter().any(|(f, v)| f == "cpu.shares" && v == "200")
            || limits.iter().any(|(f, v)| f == "cpu.weight" && v == "8"),
        "{limits:?}"
    );
    let status = node.wait_for("the restart", |n| {
        let hog = task_status(&n.status(), "mem", "hog");
        text(field(&hog, &["restarts"])) != "0" && text(field(&hog, &["state"])) == "running"
    });
    let now = node.status();
    let hog = task_status(&now, "mem", "hog");
    assert_eq!(
        text(field(&hog, &["last_error"])),
        "killed: out of memory, limit 32 MiB",
        "{log}\n{status}"
    );
    let events = json::to_string(field(&hog, &["events"]));
    assert!(
        events.contains("killed: out of memory, limit 32 MiB; restarting in"),
        "{events}"
    );
    // The neighbour: the same process, never restarted.
    let calm = task_status(&now, "mem", "calm");
    assert_eq!(
        json::to_string(&calm_pid(&now)),
        json::to_string(&calm_pid(&first))
    );
    assert_eq!(text(field(&calm, &["restarts"])), "0");
    assert_eq!(text(field(&calm, &["state"])), "running");
    node.teardown(agent);
    assert!(cgroup_files(&cgroup).is_empty(), "the cgroup is removed");
}

/// The limit files of `cgroup` (a plan's `resources.cgroup`) in every hierarchy this host
/// mounts, with their values.
fn cgroup_files(cgroup: &str) -> Vec<(String, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup") {
            continue;
        }
        let mount = Path::new(left.split(' ').nth(4).unwrap_or("/nonexistent"));
        for file in [
            "memory.max",
            "memory.low",
            "memory.limit_in_bytes",
            "memory.soft_limit_in_bytes",
            "cpu.shares",
            "cpu.weight",
        ] {
            if let Ok(value) = std::fs::read_to_string(mount.join(cgroup).join(file)) {
                found.push((file.to_string(), value.trim().to_string()));
            }
        }
    }
    found
}

const SLEEPER: &str = r#"
[[group]]
name = "quiet"
[[group.task]]
name = "s"
command = "/bin/sh"
args = ["-c", "sleep 4545 & echo $!; exec sleep 1000"]
"#;

#[test]
fn an_agent_killed_before_recording_finds_its_task_in_its_cgroup() {
    let Some(node) = Node::new("cg-adopt", SLEEPER, support::PrivateRun::new) else {
        return;
    };
    let mut first = node.start();
    node.wait_for("the task", |n| pids(&n.stdout("quiet", "s")).len() == 1);
    let task = field(&task_status(&node.status(), "quiet", "s"), &["pid"]).clone();
    // The agent dies and its record with it: as if killed between fork and record.
    first.kill().unwrap();
    let _ = first.wait();
    std::fs::remove_file(node.dir.join("run/processes.json")).unwrap();
    let second = node.start();
    node.wait_for("the adoption", |n| {
        n.log().contains("adopted from its cgroup")
    });
    let now = task_status(&node.status(), "quiet", "s");
    assert_eq!(
        json::to_string(field(&now, &["pid"])),
        json::to_string(&task)
    );
    assert_eq!(
        pids(&node.stdout("quiet", "s")).len(),
        1,
        "not started again"
    );
    let daemon = pids(&node.stdout("quiet", "s"))[0];
    node.teardown(second);
    assert!(!exists(daemon), "{}", node.log());
}

#[test]
fn without_cgroups_run_says_what_it_cannot_enforce_and_stops_by_process_group() {
    let Some(node) = Node::new("cg-none", SLEEPER, support::PrivateRun::without_cgroups) else {
        return;
    };
    let agent = node.start();
    node.wait_for("the task", |n| pids(&n.stdout("quiet", "s")).len() == 1);
    let daemon = pids(&node.stdout("quiet", "s"))[0];
    let log = node.log();
    for gap in [
        "cgroups: no cgroup filesystem is mounted",
        "cgroups: memory limits (resources.memory, memory_max) are not enforced",
        "cgroups: cpu weights (resources.cpu) are not enforced",
    ] {
        assert_eq!(log.matches(gap).count(), 1, "said once: {gap}\n{log}");
    }
    let plan = node.outpost(&["plan"]).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("limits cpu 100 MHz (not enforced here), memory 300 MB (not enforced here)"),
        "{plan}"
    );
    node.teardown(agent);
    assert!(
        !exists(daemon),
        "its process group was stopped\n{}",
        node.log()
    );
}

/// Two exec tasks: one waits for `/local/x`, copies it to `/alloc/data/y` and reports what
/// it sees; the other waits for `/alloc/data/y` and prints it. A raw_exec task beside
/// them sees the host's paths.
const VIEWS: &str = r#"
[[group]]
name = "views"
[[group.task]]
name = "writer"
command = "/bin/sh"
args = ["-c", """
while [ ! -e /local/x ]; do sleep 0.05; done
cp /local/x /alloc/data/y
echo "dirs $NOMAD_ALLOC_DIR $NOMAD_TASK_DIR $NOMAD_SECRETS_DIR"
echo "host tmp files seen: $(ls -A /tmp | grep -c outpost-views-marker)"
touch /tmp/mine && echo "tmp writable"
touch /usr/outpost-probe 2>/dev/null || echo "usr read-only"
touch /outpost-probe 2>/dev/null || echo "root read-only"
[ -e /etc/passwd ] && echo "host visible"
exec sleep 1000
"""]
[[group.task]]
name = "reader"
command = "/bin/sh"
args = ["-c", "while [ ! -e /alloc/data/y ]; do sleep 0.05; done; echo \"read $(cat /alloc/data/y)\"; exec sleep 1000"]
[[group.task]]
name = "raw"
driver = "raw_exec"
command = "/bin/sh"
args = ["-c", "echo \"raw $NOMAD_TASK_DIR\"; exec sleep 1000"]
"#;

#[test]
fn exec_tasks_see_nomads_paths_and_share_alloc_raw_exec_sees_the_hosts() {
    let Some(node) = Node::new("cg-views", VIEWS, support::PrivateRun::new) else {
        return;
    };
    // A file of the host's /tmp, which the exec tasks' private /tmp does not show.
    let marker = support::scratch().join(format!("outpost-views-marker-{}", std::process::id()));
    std::fs::write(&marker, "host").unwrap();
    let agent = node.start();
    let local = node.dir.join("run/alloc/views/writer/local");
    node.wait_for("the writer's directory", |_| local.is_dir());
    std::fs::write(local.join("x"), "from-local").unwrap();
    node.wait_for("the reader", |n| {
        n.stdout("views", "reader").contains("read ")
    });
    assert_eq!(node.stdout("views", "reader"), "read from-local\n");
    let writer = node.wait_for("the writer", |n| {
        n.stdout("views", "writer").contains("host visible")
    });
    assert_eq!(
        node.stdout("views", "writer"),
        "dirs /alloc /local /secrets\nhost tmp files seen: 0\ntmp writable\nusr read-only\nroot read-only\nhost visible\n",
        "{writer}"
    );
    let raw = node.dir.join("run/alloc/views/raw/local");
    assert_eq!(
        node.stdout("views", "raw"),
        format!("raw {}\n", raw.display())
    );
    node.teardown(agent);
    let _ = std::fs::remove_file(&marker);
}
