//! Stand-ins for the systems outpost talks to, and what the tests share.
#![allow(dead_code)]

pub mod consul_double;
pub mod pki;

/// Whether a test that needs root may run. Without root it fails in CI (CI=true), where the
/// machine is ours to use, and is skipped with a message elsewhere.
pub fn root_or_skip(what: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} needs root (namespaces, links, nf_tables)"
        );
        eprintln!("skipping {what}: not root");
    }
    root
}
