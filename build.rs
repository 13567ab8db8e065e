//! Embeds what `outpost version` prints: the crate version, the git commit (when built from a
//! git checkout, or from OUTPOST_GIT_COMMIT when built from a tarball) and the target triple.
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=OUTPOST_TARGET={target}");
    discard_unwind_tables(&target);

    let commit = std::env::var("OUTPOST_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OUTPOST_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=OUTPOST_GIT_COMMIT");
    // Rebuild when HEAD moves, so the embedded commit is never stale.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// The device build (aarch64 musl, linked by rust-lld) drops the unwind tables: see
/// link/discard-unwind-tables.ld. Only the binary: tests and benches keep them.
fn discard_unwind_tables(target: &str) {
    let script = "link/discard-unwind-tables.ld";
    println!("cargo:rerun-if-changed={script}");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if target == "aarch64-unknown-linux-musl" && release {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rustc-link-arg-bins=-T{dir}/{script}");
    }
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let hash = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
