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
        vec!["status", "--help"],
        vec!["logs", "--help"],
        vec!["run", "--help"],
        vec!["relay", "--help"],
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
        "logs",
    ] {
        assert!(
            top.contains(command),
            "top-level help lists {command}: {top}"
        );
    }
    // The relay is the agent's, not the user's: it answers, but the help does not list it.
    assert!(!top.contains("relay"), "{top}");
}

/// The commands the README and the docs show are commands this binary has, each with the
/// flags shown: a renamed command or flag fails here, not in a newcomer's terminal.
#[test]
fn the_commands_the_docs_show_exist_with_their_flags() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut shown = 0;
    for doc in ["README.md", "docs/guide.md", "docs/device.md"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        let mut in_block = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_block = line == "```sh";
                continue;
            }
            let Some(at) = line.find("outpost ").filter(|_| in_block) else {
                continue;
            };
            // `outpost …` or `./target/release/outpost …`, up to a comment, pipe or quote.
            let before = &line[..at];
            if !(before.is_empty() || before.ends_with('/') || before.ends_with('\'')) {
                continue;
            }
            let words: Vec<&str> = line[at + "outpost ".len()..]
                .split(['#', '|', '>', '&', '\''])
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            let Some(command) = words.first() else {
                continue;
            };
            // `scp …/outpost root@device:…` copies the binary; it is not a command line.
            if !command.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            if command.starts_with('-') {
                let out = outpost(&[command]);
                assert!(out.status.success(), "{doc}: `{line}`: {out:?}");
                shown += 1;
                continue;
            }
            let help = outpost(&[command, "--help"]);
            let usage = String::from_utf8_lossy(&help.stdout);
            assert!(help.status.success(), "{doc}: `{line}`: {help:?}");
            for flag in words.iter().filter(|w| w.starts_with('-')) {
                let long = flag.split('=').next().unwrap_or(flag);
                assert!(
                    usage.contains(&format!("[{long}"))
                        || usage.contains(&format!("{long}, "))
                        || usage.contains(&format!("{long} ")),
                    "{doc}: `{line}`: {command} has no {long}:\n{usage}"
                );
            }
            shown += 1;
        }
    }
    assert!(shown >= 10, "the docs show {shown} outpost commands");
}

#[test]
fn dash_dash_version_and_the_config_from_a_positional_or_the_environment() {
    let out = outpost(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("outpost "), "{text}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.toml");
    let positional = outpost(&["validate", example]);
    assert!(positional.status.success(), "{positional:?}");
    let from_env = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("validate")
        .env("OUTPOST_CONFIG", example)
        .output()
        .unwrap();
    assert!(from_env.status.success(), "{from_env:?}");
    assert!(String::from_utf8_lossy(&from_env.stdout).contains("quickstart.toml: valid"));
    // Nothing given: the installed location, named in the error.
    let default = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("validate")
        .env_remove("OUTPOST_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&default.stderr);
    if !std::path::Path::new("/etc/outpost/outpost.toml").exists() {
        assert_eq!(default.status.code(), Some(78));
        assert!(
            stderr.starts_with("/etc/outpost/outpost.toml: cannot read config"),
            "{stderr}"
        );
    }
}

#[test]
fn logs_prints_a_tasks_rotated_output_oldest_first() {
    let dir = std::env::temp_dir().join(format!("outpost-cli-logs-{}", std::process::id()));
    let logs = dir.join("run/alloc/web/alloc/logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("server.stdout.1"), "started\n").unwrap();
    std::fs::write(logs.join("server.stdout.0"), "serving\n").unwrap();
    std::fs::write(logs.join("server.stderr.0"), "warning\n").unwrap();
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nrun_dir = \"{}/run\"\n[[group]]\nname = \"web\"\n[[group.task]]\nname = \"server\"\ncommand = \"/bin/true\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = outpost(&["logs", "web", "server", "-c", config]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nserving\n");
    let err = outpost(&["logs", "web", "server", "--stderr", "-c", config]);
    assert_eq!(String::from_utf8_lossy(&err.stdout), "warning\n");
    let unknown = outpost(&["logs", "web", "nope", "-c", config]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("tasks with logs: server"),
        "{unknown:?}"
    );
    let escape = outpost(&["logs", "..", "server", "-c", config]);
    assert_eq!(escape.status.code(), Some(78));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plan_as_a_user_who_cannot_read_the_state_still_plans() {
    let root = nix::unistd::Uid::effective().is_root();
    if !root || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipping: needs root and setpriv to become another user");
        return;
    }
    let dir = std::env::temp_dir().join(format!("outpost-cli-plan-user-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    // The state as the agent leaves it: root's, 0600.
    std::fs::write(dir.join("data/state.json"), "{}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("data/state.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = dir.join("outpost.toml");
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.toml"
    ))
    .unwrap()
    .replace(
        "data_dir = \"/var/lib/outpost\"",
        &format!("data_dir = \"{}/data\"", dir.display()),
    );
    std::fs::write(&config, quickstart).unwrap();
    // The binary where nobody may run it.
    let binary = dir.join("outpost");
    std::fs::copy(env!("CARGO_BIN_EXE_outpost"), &binary).unwrap();
    for path in [&dir, &binary, &config] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["plan", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("planning without it"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Group \"hello\""));
    let _ = std::fs::remove_dir_all(&dir);
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
