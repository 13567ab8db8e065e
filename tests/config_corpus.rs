//! Every file in tests/bad-configs/ is a config `outpost validate` must reject with exit 78,
//! printing exactly the `# expect: LINE:COL: message` lines at the end of the file (as
//! `FILE:LINE:COL: message`, in that order). The examples must validate with exit 0.

use std::path::{Path, PathBuf};
use std::process::Command;

const EX_CONFIG: i32 = 78;
const EXPECT: &str = "# expect: ";

fn outpost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run outpost")
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/bad-configs exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_has_at_least_forty_cases() {
    assert!(corpus().len() >= 40, "only {} bad configs", corpus().len());
}

#[test]
fn every_bad_config_is_rejected_with_exact_located_messages() {
    let mut failures = Vec::new();
    for file in corpus() {
        let relative = format!(
            "tests/bad-configs/{}",
            file.file_name().unwrap().to_string_lossy()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(EXPECT))
            .map(|rest| format!("{relative}:{rest}"))
            .collect();
        assert!(!expected.is_empty(), "{relative} has no `{EXPECT}` lines");
        let out = outpost(&["validate", "-c", &relative]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let got: Vec<&str> = stderr.lines().collect();
        if out.status.code() != Some(EX_CONFIG) || got != expected {
            failures.push(format!(
                "{relative}: exit {:?}\n  expected: {expected:#?}\n  got: {got:#?}",
                out.status.code()
            ));
        }
        assert!(
            out.stdout.is_empty(),
            "{relative}: nothing on stdout when invalid"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn examples_validate() {
    for example in ["examples/quickstart.toml", "examples/countdash.toml"] {
        let out = outpost(&["validate", "-c", example]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unreadable_config_is_a_config_error_naming_the_file() {
    let out = outpost(&["validate", "-c", "tests/bad-configs/does-not-exist.toml"]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tests/bad-configs/does-not-exist.toml: cannot read config:"),
        "{stderr}"
    );
}

#[test]
fn plan_refuses_a_bad_config_the_same_way() {
    let out = outpost(&["plan", "-c", "tests/bad-configs/28-relative-command.toml"]);
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert!(out.stdout.is_empty());
}
