//! `outpost apply` and `teardown` end to end with Consul: the binary sets up the network
//! and registers the group services in the Consul double, then removes both. Runs as root
//! in a private network namespace (this test thread's) with a private /run for the binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::consul_double::ConsulDouble;

/// Root, this thread in a private network namespace with lo up, and a Consul double
/// serving there. `None` when the test must be skipped.
fn sandbox(what: &str) -> Option<ConsulDouble> {
    if !support::root_or_skip(what) {
        return None;
    }
    // Only this thread (and what it spawns) moves to the new network namespace.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip");
    assert!(lo.success());
    Some(ConsulDouble::start())
}

/// examples/countdash.toml with its Consul address line replaced by `consul_lines` and
/// `agent_lines` added to [agent], written to `dir/outpost.toml`.
fn countdash_config(dir: &Path, consul_lines: &str, agent_lines: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let countdash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/countdash.toml"
    ))
    .unwrap();
    let config = countdash
        .replace("address = \"http://127.0.0.1:8500\"", consul_lines)
        .replace("[agent]\n", &format!("[agent]\n{agent_lines}\n"));
    let file = dir.join("outpost.toml");
    std::fs::write(&file, config).unwrap();
    file
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
    let Some(double) = sandbox("apply with Consul") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("outpost-apply-consul-{}", std::process::id()));
    let file = countdash_config(
        &dir,
        &format!("address = \"{}\"", double.url()),
        &format!("data_dir = \"{}\"", dir.display()),
    );

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

#[test]
fn login_mode_registers_each_service_with_its_own_token_reused_across_applies_and_released() {
    const AGENT_TOKEN: &str = "agent-token-0001-do-not-log";
    const JWT: &str = "header.payload.signature-for-outpost";
    let Some(double) = sandbox("apply in login mode") else {
        return;
    };
    double.enable_acls();
    double.add_token(AGENT_TOKEN, std::time::Duration::ZERO);
    double.add_auth_method("nomad-workloads", JWT);
    double.set_minted_lag(std::time::Duration::from_millis(1200));
    let dir = std::env::temp_dir().join(format!("outpost-login-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwt"), JWT).unwrap();
    let file = countdash_config(
        &dir,
        &format!(
            "address = \"{}\"\ntoken = \"{AGENT_TOKEN}\"\n[consul.acl]\nmode = \"login\"\njwt_file = \"{}\"\n[consul.preflight]\ntoken_base = \"100ms\"",
            double.url(),
            dir.join("jwt").display()
        ),
        &format!(
            "data_dir = \"{0}/data\"\nrun_dir = \"{0}/run\"",
            dir.display()
        ),
    );

    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(double.live_minted(), 2, "one token per service");
    assert_eq!(double.service_ids().len(), 4);
    assert!(
        !double.log().iter().any(|l| l.negative_cached),
        "preflight reads are stale"
    );
    let token_file = dir.join("run/alloc/api/secrets/_outpost-api-count-api-9001.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(token_file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    for secret in [AGENT_TOKEN, JWT, "11111111-2222-4333-8444-"] {
        assert!(!stderr.contains(secret), "a secret reached the log");
    }

    let again = outpost(&format!("apply -c {}", file.display()));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(double.live_minted(), 2, "the stored tokens are reused");

    let down = outpost(&format!("teardown -c {}", file.display()));
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(double.service_ids().is_empty());
    assert_eq!(double.live_minted(), 0, "tokens logged out");
    assert!(!token_file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn apply_with_consul_down_sets_up_the_network_and_fails_clearly() {
    let Some(_double) = sandbox("apply with Consul down") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("outpost-consul-down-{}", std::process::id()));
    let file = countdash_config(
        &dir,
        "address = \"http://127.0.0.1:9\"\ntoken = \"down-test-token-value\"",
        &format!("data_dir = \"{}\"", dir.display()),
    );
    let out = outpost(&format!("apply -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("network applied: 2 group(s)"), "{stderr}");
    assert!(
        stderr.contains("Consul registration at http://127.0.0.1:9: Consul is unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("down-test-token-value"));

    // Teardown with Consul still down: the network goes, the Consul part is reported.
    let down = outpost(&format!("teardown -c {}", file.display()));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(!down.status.success());
    assert!(stderr.contains("deleted bridge outpost"), "{stderr}");
    assert!(
        stderr.contains("the network was removed: run teardown again once Consul answers"),
        "{stderr}"
    );
    let bridge = Command::new("ip")
        .args(["link", "show", "outpost"])
        .output()
        .unwrap();
    assert!(!bridge.status.success(), "the bridge is gone");
    let _ = std::fs::remove_dir_all(&dir);
}
