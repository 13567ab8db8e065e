//! outpost: what a Nomad client does for Consul service mesh, for one edge device.
//! See docs/architecture.md for the architecture (plan, then apply) and the module map.

/// `miniserde::Serialize` for a type shown as its `as_str()` (enums written as the config
/// and Nomad write them), in `plan --json` and the status.
macro_rules! serialize_as_str {
    ($type:ty) => {
        impl miniserde::Serialize for $type {
            fn begin(&self) -> miniserde::ser::Fragment<'_> {
                miniserde::ser::Fragment::Str(std::borrow::Cow::Borrowed(self.as_str()))
            }
        }
    };
}

pub mod agent;
pub mod alloc;
pub mod allocdir;
pub mod caps;
pub mod cgroup;
pub mod config;
pub mod consul;
pub mod envoy;
pub mod error;
pub mod files;
pub mod logs;
pub mod net;
pub mod plan;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod relay;
pub mod retry;
pub mod state;
pub mod supervise;
pub mod text;
pub mod view;

/// Reads and validates a config file, `${…}` references included: the way in for every
/// command.
pub fn load_config(path: &std::path::Path) -> Result<config::ValidConfig, Vec<config::Diagnostic>> {
    config::load(path, plan::unresolved_references)
}

/// `load_config` for config text; `file` names it in diagnostics.
pub fn parse_config(
    source: &str,
    file: &str,
) -> Result<config::ValidConfig, Vec<config::Diagnostic>> {
    config::parse(source, file, plan::unresolved_references)
}

/// `outpost version` output, from build.rs.
pub fn version_text() -> String {
    format!(
        "outpost {} (commit {}, target {})",
        env!("CARGO_PKG_VERSION"),
        env!("OUTPOST_COMMIT"),
        env!("OUTPOST_TARGET")
    )
}
