//! Users' habits: every command answers `--help`, and `version` says what was built.

use std::process::Command;

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("run outpost")
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["plan", "--help"],
        vec!["apply", "--help"],
        vec!["teardown", "--help"],
        vec!["envoy-bootstrap", "--help"],
        vec!["version", "--help"],
    ] {
        let out = outpost(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(text.starts_with("Usage: "), "{args:?}: {text}");
    }
    let top = String::from_utf8_lossy(&outpost(&["--help"]).stdout).to_string();
    for command in [
        "validate",
        "plan",
        "apply",
        "teardown",
        "envoy-bootstrap",
        "version",
    ] {
        assert!(
            top.contains(command),
            "top-level help lists {command}: {top}"
        );
    }
}

#[test]
fn version_names_version_commit_and_target() {
    let out = outpost(&["version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("outpost {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains(", target "), "{text}");
    assert!(!text.contains("target unknown"), "{text}");
}

#[test]
fn unknown_command_fails() {
    assert!(!outpost(&["frobnicate"]).status.success());
}

#[test]
fn envoy_bootstrap_help_lists_consuls_flags_with_their_defaults() {
    let text = String::from_utf8_lossy(&outpost(&["envoy-bootstrap", "--help"]).stdout).to_string();
    for flag in [
        "--proxy-id",
        "--sidecar-for",
        "--gateway",
        "--register",
        "--service",
        "--address",
        "--admin-bind",
        "--admin-access-log-path",
        "--grpc-addr",
        "--grpc-ca-file",
        "--grpc-ca-path",
        "--http-addr",
        "--token",
        "--token-file",
        "--ca-file",
        "--client-cert",
        "--client-key",
        "--namespace",
        "--partition",
        "--node-name",
        "--envoy-ready-bind-address",
        "--envoy-ready-bind-port",
        "--prometheus-backend-port",
        "--prometheus-scrape-path",
        "--prometheus-ca-file",
        "--prometheus-ca-path",
        "--prometheus-cert-file",
        "--prometheus-key-file",
        "--omit-deprecated-tags",
    ] {
        let listed = text
            .lines()
            .any(|l| l.starts_with("  ") && l.split_whitespace().next() == Some(flag));
        assert!(listed, "{flag} missing:\n{text}");
    }
    for default in [
        "\"http://127.0.0.1:8500\"",
        "\"/dev/null\"",
        "\"/metrics\"",
        "\":8443\"",
    ] {
        assert!(text.contains(default), "default {default} missing:\n{text}");
    }
}

/// A huge config is refused unread, and a huge value is quoted only in part: an error
/// about a 900 KB name is one short line, not the value twice.
#[test]
fn huge_configs_and_values_give_short_errors() {
    let dir = std::env::temp_dir().join(format!("outpost-cli-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let task = "[[group.task]]\nname = \"t\"\ncommand = \"/bin/true\"\n";
    let oversized = dir.join("oversized.toml");
    let filler = format!("# {}\n", "x".repeat(1 << 20));
    std::fs::write(
        &oversized,
        format!("{filler}[[group]]\nname = \"g\"\n{task}"),
    )
    .unwrap();
    let out = outpost(&["validate", "-c", &oversized.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr.contains("larger than 1048576 bytes"), "{stderr}");

    let long_value = dir.join("long-value.toml");
    let name = "x".repeat(900 * 1024);
    std::fs::write(&long_value, format!("[[group]]\nname = \"{name}\"\n{task}")).unwrap();
    let out = outpost(&["validate", "-c", &long_value.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr.len() < 400, "{} bytes of errors", stderr.len());
    assert!(
        stderr.contains(&format!("\"{}… (921600 bytes)\"", &name[..80])),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
