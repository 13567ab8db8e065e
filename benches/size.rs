//! `cargo bench --bench size`: the stripped static release binary for the device (aarch64)
//! and for x86_64, with TLS (the default build) and without (`--no-default-features`),
//! each built here with `--locked` into target/size/ (so the figures are of this tree, not
//! of a stale build). Prints a table and, last,
//! `size: aarch64_tls=… x86_64_tls=… aarch64_notls=… x86_64_notls=…` (bytes).
//! The budget (docs/architecture.md, "Targets") is 2.0 MiB for aarch64 with TLS.

use std::path::Path;
use std::process::Command;

const BUDGET: u64 = 2 * 1024 * 1024;
const TARGETS: [&str; 2] = ["aarch64-unknown-linux-musl", "x86_64-unknown-linux-musl"];

/// Builds one variant; its size in bytes, or why not.
fn build(target: &str, tls: bool) -> Result<u64, String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = Path::new(root)
        .join("target/size")
        .join(if tls { "tls" } else { "notls" });
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
        .arg(&dir);
    if !tls {
        cargo.arg("--no-default-features");
    }
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
        "{:<28} {:>5} {:>10} {:>9} {:>16}",
        "target", "tls", "bytes", "KiB", "budget (2 MiB)"
    );
    let mut summary = Vec::new();
    for tls in [true, false] {
        for target in TARGETS {
            let arch = target.split('-').next().unwrap_or(target);
            let key = format!("{arch}_{}", if tls { "tls" } else { "notls" });
            match build(target, tls) {
                Ok(bytes) => {
                    let budget = match (arch, tls) {
                        ("aarch64", true) if bytes <= BUDGET => {
                            format!("{} KiB under", (BUDGET - bytes) / 1024)
                        }
                        ("aarch64", true) => format!("{} KiB OVER", (bytes - BUDGET) / 1024),
                        _ => "-".into(),
                    };
                    println!(
                        "{target:<28} {:>5} {bytes:>10} {:>9.1} {budget:>16}",
                        if tls { "yes" } else { "no" },
                        bytes as f64 / 1024.0
                    );
                    summary.push(format!("{key}={bytes}"));
                }
                Err(why) => {
                    println!(
                        "{target:<28} {:>5} not built: {why}",
                        if tls { "yes" } else { "no" }
                    );
                    summary.push(format!("{key}=none"));
                }
            }
        }
    }
    println!("size: {}", summary.join(" "));
}
