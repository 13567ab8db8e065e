//! `outpost apply` and `teardown` end to end with Consul: the binary sets up the network
//! and registers the group services in the Consul double, then removes both. Runs as root
//! in a private network namespace (this test thread's) with a private /run for the binary.

mod support;

use std::process::Command;
use support::consul_double::ConsulDouble;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `outpost <args>` in a new mount namespace with a private /run, in this thread's
/// network namespace.
fn outpost(args: &str) -> std::process::Output {
    let script = format!(
        "mount -t tmpfs tmpfs /run && {} {args}",
        env!("CARGO_BIN_EXE_outpost")
    );
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            &script,
        ])
        .output()
        .expect("unshare")
}

#[test]
fn apply_registers_services_after_the_network_and_teardown_removes_them() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root (namespaces)"
        );
        eprintln!("skipping: not root");
        return;
    }
    // Only this thread (and what it spawns) moves to the new network namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    assert!(
        Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let double = ConsulDouble::start();
    let dir = std::env::temp_dir().join(format!("outpost-apply-consul-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let countdash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/countdash.toml"
    ))
    .unwrap();
    let config = countdash
        .replace(
            "address = \"http://127.0.0.1:8500\"",
            &format!("address = \"{}\"", double.url()),
        )
        .replace(
            "[agent]\n",
            &format!("[agent]\ndata_dir = \"{}\"\n", dir.display()),
        );
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config).unwrap();

    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Consul: 2 service(s) registered, 0 deregistered, 0 unchanged"),
        "{stderr}"
    );
    assert_eq!(
        double.service_ids().len(),
        4,
        "two services and their sidecars"
    );
    // The network came first: no registration before the namespaces existed.
    assert!(stderr.find("created veth").unwrap() < stderr.find("Consul:").unwrap());

    let again = outpost(&format!("apply -c {}", file.display()));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("0 service(s) registered, 0 deregistered, 2 unchanged")
    );

    let down = outpost(&format!("teardown -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(down.status.success(), "{stderr}");
    assert!(
        double.service_ids().is_empty(),
        "{:?}",
        double.service_ids()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
