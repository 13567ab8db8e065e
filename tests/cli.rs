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
        vec!["version", "--help"],
    ] {
        let out = outpost(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(text.starts_with("Usage: "), "{args:?}: {text}");
    }
    let top = String::from_utf8_lossy(&outpost(&["--help"]).stdout).to_string();
    for command in ["validate", "plan", "version"] {
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
