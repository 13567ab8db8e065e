//! The cgroup v2 controllers, for real: this machine kind (and CI) mounts cgroup v2 without
//! controllers (the hybrid layout, where `tests/resources.rs` runs the limits on v1), so
//! `tests/vm/cgroup-v2.sh` boots Debian's kernel under qemu with only cgroup v2 mounted and
//! runs the static x86_64 binary there: a task past its `memory_max` beside a calm exec
//! task. Needs root, `qemu-system-x86_64`, a kernel in /boot and the static build
//! (`cargo build --release --target x86_64-unknown-linux-musl`); `.ci/run` has all of them
//! (`tests/setup.sh` installs qemu-system-x86 and linux-image-amd64). Missing, the test is
//! skipped, except in CI.

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn memory_and_cpu_limits_oom_kills_and_the_exec_view_on_a_cgroup_v2_kernel() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = root.join("target/x86_64-unknown-linux-musl/release/outpost");
    let kernel = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"));
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !support::root_or_skip("the cgroup v2 VM test") {
        return;
    }
    if !(binary.exists() && kernel && qemu) {
        assert!(
            std::env::var_os("CI").is_none(),
            "the cgroup v2 VM test needs {} (static build), a kernel in /boot and qemu-system-x86_64",
            binary.display()
        );
        eprintln!(
            "skipping the cgroup v2 VM test: needs the static build, a kernel in /boot and qemu (bash tests/setup.sh; cargo build --release --target x86_64-unknown-linux-musl)"
        );
        return;
    }
    let out = Command::new("bash")
        .arg(root.join("tests/vm/cgroup-v2.sh"))
        .arg(&binary)
        .output()
        .expect("bash");
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the guest did not finish\n{lines}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        // What the guest mounts: v2, its controllers there.
        "vm: log: INFO  [outpost::agent::run] cgroups: v2 at /sys/fs/cgroup; tasks under outpost.slice",
        // memory_max is the hard limit, memory the protected one, no swap; cpu 200 MHz is
        // runc's weight 8.
        "vm: hog memory.max 33554432",
        "vm: hog memory.low 16777216",
        "vm: hog memory.swap.max 0",
        "vm: hog cpu.weight 8",
        "vm: subtree_control cpu memory",
        // Nomad's default 300 MB for the neighbour.
        "vm: calm memory.max 314572800",
        // The exec view: /alloc, /local, /secrets and /tmp.
        "vm: calm stdout: calm sees 4 dirs",
        "vm: status: group mem (running)",
        "vm: after teardown: 0 outpost cgroups",
    ] {
        assert!(
            lines.lines().any(|l| l == expected),
            "missing {expected:?}\n{lines}"
        );
    }
    assert!(
        lines.contains("task hog killed: out of memory, limit 32 MiB; restarting"),
        "{lines}"
    );
    assert!(lines.contains("vm: hog memory.events oom_kill "), "{lines}");
    assert!(
        !lines.contains("vm: hog memory.events oom_kill 0"),
        "{lines}"
    );
    // The neighbour kept running, never restarted.
    assert!(
        lines.contains("vm: status:   calm                         main               running pid")
            && lines.contains("restarts 0"),
        "{lines}"
    );
}
