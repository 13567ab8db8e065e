//! `cargo bench --bench size`: the stripped static release binary for the device (aarch64)
//! and for x86_64, in three builds: the default (TLS and the built-in proxy), TLS without
//! the proxy (`--no-default-features --features tls`), and neither
//! (`--no-default-features`), each built here with `--locked` into target/size/ (so the
//! figures are of this tree, not of a stale build). Prints a table and, last,
//! `size: aarch64_proxy=… x86_64_proxy=… aarch64_tls=… x86_64_tls=… aarch64_notls=… x86_64_notls=…`
//! (bytes). The budgets (docs/architecture.md, "Targets") are for aarch64: 2.25 MiB with the
//! proxy, 2.0 MiB with TLS alone.

use std::path::Path;
use std::process::Command;

const TARGETS: [&str; 2] = ["aarch64-unknown-linux-musl", "x86_64-unknown-linux-musl"];

/// A build: its name, its cargo feature flags, and its aarch64 budget.
const VARIANTS: [(&str, &[&str], Option<u64>); 3] = [
    ("proxy", &[], Some(2304 * 1024)),
    (
        "tls",
        &["--no-default-features", "--features", "tls"],
        Some(2048 * 1024),
    ),
    ("notls", &["--no-default-features"], None),
];

/// Builds one variant; its size in bytes, or why not.
fn build(target: &str, name: &str, flags: &[&str]) -> Result<u64, String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = Path::new(root).join("target/size").join(name);
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .args(flags);
    let out = cargo.output().map_err(|e| format!("cargo: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("build failed: {last}"));
    }
    let bin = dir.join(target).join("release/outpost");
    std::fs::metadata(&bin)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", bin.display()))
}

fn main() {
    println!("stripped static release binaries (opt-level z, LTO, panic=abort), in bytes");
    println!(
        "{:<28} {:>6} {:>10} {:>9} {:>18}",
        "target", "build", "bytes", "KiB", "aarch64 budget"
    );
    let mut summary = Vec::new();
    for (name, flags, budget) in VARIANTS {
        for target in TARGETS {
            let arch = target.split('-').next().unwrap_or(target);
            let key = format!("{arch}_{name}");
            match build(target, name, flags) {
                Ok(bytes) => {
                    let against = match (arch, budget) {
                        ("aarch64", Some(b)) if bytes <= b => {
                            format!("{} KiB under", (b - bytes) / 1024)
                        }
                        ("aarch64", Some(b)) => format!("{} KiB OVER", (bytes - b) / 1024),
                        _ => "-".into(),
                    };
                    println!(
                        "{target:<28} {name:>6} {bytes:>10} {:>9.1} {against:>18}",
                        bytes as f64 / 1024.0
                    );
                    summary.push(format!("{key}={bytes}"));
                }
                Err(why) => {
                    println!("{target:<28} {name:>6} not built: {why}");
                    summary.push(format!("{key}=none"));
                }
            }
        }
    }
    println!("size: {}", summary.join(" "));
}
