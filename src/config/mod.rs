//! `outpost.toml`: the schema, its defaults, and validation with `file:line:col` errors.
//!
//! `load` is the only way in: it returns a [`ValidConfig`] (the parsed file plus the values
//! validation already had to parse, such as the subnet) or every problem found.

pub mod duration;
pub mod ipv4;
pub mod ipv6;
mod load;
pub mod locate;
pub mod naming;
mod read;
mod schema;
pub(crate) mod validate;

pub use duration::Dur;
pub use ipv4::Ipv4Net;
pub use ipv6::Ipv6Net;
pub use schema::*;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

/// A config that passed validation, with the values validation parsed.
#[derive(Debug)]
pub struct ValidConfig {
    pub config: Config,
    pub subnet: Ipv4Net,
    /// `network.subnet_ipv6`: the bridge is dual-stack when set.
    pub subnet_ipv6: Option<Ipv6Net>,
    /// Inclusive range for dynamic host ports.
    pub dynamic_ports: (u16, u16),
    pub advertise_address: Option<Ipv4Addr>,
}

/// One problem, printed as `FILE:LINE:COL: message` (or `FILE: message` when the file could
/// not be read at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The largest config file read: a device's config is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How much of a value a message quotes.
const QUOTED_MAX: usize = 80;

/// Checks of a valid config that need more than the config (the planner's variables):
/// supplied by the caller, so `config` imports nothing above it.
pub type LateCheck = fn(&ValidConfig) -> Vec<validate::Problem>;

/// Reads and validates a config file, then runs `late_check` on it.
pub fn load(path: &Path, late_check: LateCheck) -> Result<ValidConfig, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let problem = |message: String| {
        vec![Diagnostic {
            file: file.clone(),
            position: None,
            message,
        }]
    };
    let source = read_capped(path).map_err(|e| problem(format!("cannot read config: {e}")))?;
    match source {
        Some(source) => parse(&source, &file, late_check),
        None => Err(problem(format!(
            "the config is larger than {MAX_CONFIG_BYTES} bytes (1 MiB), which outpost does not read"
        ))),
    }
}

/// The file's text, or `None` when it is larger than `MAX_CONFIG_BYTES`.
fn read_capped(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    Ok((text.len() as u64 <= MAX_CONFIG_BYTES).then_some(text))
}

/// Parses and validates config text, then runs `late_check`; `file` is only used in
/// diagnostics.
pub fn parse(
    source: &str,
    file: &str,
    late_check: LateCheck,
) -> Result<ValidConfig, Vec<Diagnostic>> {
    let at = |offset: usize, message: String| Diagnostic {
        file: file.to_string(),
        position: Some(locate::line_col(source, offset)),
        message: crate::text::cut_quoted(&message, QUOTED_MAX),
    };
    let root = toml::de::DeTable::parse(source).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        vec![at(offset, e.message().trim_end().to_string())]
    })?;
    let errors = read::Errors::default();
    let config: Config = load::config(read::Table::root(&root, &errors));
    let mut read_errors = errors.take();
    if !read_errors.is_empty() {
        read_errors.sort_by_key(|(offset, _)| *offset);
        return Err(read_errors
            .into_iter()
            .map(|(offset, message)| at(offset, message))
            .collect());
    }
    // Semantic errors are located by path in the same tree.
    let locator = locate::Locator::from_parsed(source, root);
    let located = |problems: Vec<validate::Problem>| {
        let mut located: Vec<(usize, Diagnostic)> = problems
            .into_iter()
            .map(|p| {
                let offset = locator.span(&p.path, p.target).start;
                (offset, at(offset, p.message))
            })
            .collect();
        // File order reads best; the sort is stable so rules at one spot keep their order.
        located.sort_by_key(|(offset, _)| *offset);
        located.into_iter().map(|(_, d)| d).collect::<Vec<_>>()
    };
    let valid = validate::validate(config).map_err(located)?;
    // E.g. `${…}` references, checked against the variables the plan derives.
    let late = late_check(&valid);
    if late.is_empty() {
        Ok(valid)
    } else {
        Err(located(late))
    }
}

/// `[agent] run_dir` read line by line from a file that may not validate (for `status`,
/// which only needs to find the agent's socket); the default when it is not there.
pub fn run_dir_hint(path: &std::path::Path) -> String {
    let text = read_capped(path).ok().flatten().unwrap_or_default();
    let mut in_agent = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_agent = line == "[agent]";
        } else if in_agent
            && let Some(value) = line.strip_prefix("run_dir")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            return value.trim().trim_matches('"').to_string();
        }
    }
    Agent::default().run_dir
}

/// Whether Envoy has a build for the machine this outpost was built for: not for 32-bit
/// ARM (envoyproxy/envoy#1861), where sidecars need the built-in proxy.
pub const ENVOY_BUILDS_HERE: bool = !cfg!(target_arch = "arm");

/// The services whose proxy is Envoy (sidecars not on `builtin`, and gateways), for the
/// warning on machines Envoy does not build for.
pub fn envoy_services(config: &Config) -> Vec<&str> {
    let mut names = Vec::new();
    for service in config.groups.iter().flat_map(|g| &g.services) {
        let Some(connect) = &service.connect else {
            continue;
        };
        let driver = connect.driver(config.connect.sidecar_driver);
        let sidecar = connect.sidecar_service.is_some() && driver != SidecarDriver::Builtin;
        if sidecar || connect.gateway.is_some() {
            names.push(service.name.as_str());
        }
    }
    names
}

/// The warning for a config that runs Envoy where Envoy has no build; none elsewhere.
pub fn envoy_warning(config: &Config) -> Option<String> {
    let envoys = envoy_services(config);
    (!ENVOY_BUILDS_HERE && !envoys.is_empty()).then(|| {
        format!(
            "Envoy has no build for 32-bit ARM, and {} would run it: set connect.sidecar_driver = \"builtin\" (gateways need a 64-bit machine)",
            envoys.join(", ")
        )
    })
}
