//! Rules that relate config values to each other or to what later stages need: names that
//! become files and interfaces, ports, Nomad's Connect rules (reference/nomad-connect.md §1.6,
//! §1.7; the wording follows Nomad's where it has one). Every rule is checked and every
//! failure reported, each at the value it is about.

use super::locate::{Seg, Target};
use super::schema::*;
use super::{Ipv4Net, Ipv6Net, ValidConfig};
use crate::path;

mod connect;
mod consul_rules;
mod group;
mod node;
mod task;

use connect::*;
use consul_rules::*;
use group::*;
use node::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use task::*;

pub struct Problem {
    pub path: Vec<Seg>,
    pub target: Target,
    pub message: String,
}

use super::naming::MAX_IFNAME;
/// The parent directory name shared by a group's tasks (Nomad's alloc dir layout).
/// The entries of a group directory that are not task directories, and what they hold.
const GROUP_DIR_ENTRIES: [(&str, &str); 3] = [
    ("alloc", "it is the group's shared directory"),
    ("secrets", "it holds the group's Consul tokens"),
    (
        "xds",
        "it holds the socket Envoy reaches Consul's xDS through",
    ),
];
pub const PROXY_PREFIX: &str = "connect-proxy";
const KILL_SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM", "SIGWINCH",
];

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn err(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            target: Target::Value,
            message: message.into(),
        });
    }

    fn err_at_key(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            target: Target::Key,
            message: message.into(),
        });
    }

    fn one_of(&mut self, path: Vec<Seg>, what: &str, value: &str, allowed: &[&str]) {
        if !allowed.contains(&value) {
            let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            self.err(
                path,
                format!("{what} must be one of {}; got \"{value}\"", list.join(", ")),
            );
        }
    }

    fn absolute(&mut self, path: Vec<Seg>, what: &str, value: &str) {
        if !value.starts_with('/') {
            self.err(path, format!("{what} \"{value}\" must be an absolute path"));
        } else if value.split('/').any(|part| part == "..") {
            self.err(path, format!("{what} \"{value}\" must not contain \"..\""));
        }
    }

    fn absolute_opt(&mut self, path: Vec<Seg>, what: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.absolute(path, what, v);
        }
    }

    fn env_names(&mut self, base: Vec<Seg>, env: &Env) {
        for name in env.keys() {
            if !is_env_name(name) {
                let mut p = base.clone();
                p.push(Seg::Name(name.clone()));
                self.err_at_key(
                    p,
                    format!(
                        "invalid environment variable name \"{name}\": use letters, digits and '_', not starting with a digit"
                    ),
                );
            }
        }
    }
}

pub fn validate(config: Config) -> Result<ValidConfig, Vec<Problem>> {
    let mut c = Checker::default();
    check_agent(&mut c, &config.agent);
    check_consul(&mut c, &config.consul);
    let network = check_network(&mut c, &config.network);
    check_envoy(&mut c, &config.envoy);
    check_group_names(&mut c, &config.groups);
    for (gi, group) in config.groups.iter().enumerate() {
        check_group(&mut c, gi, group);
        for (si, service) in group.services.iter().enumerate() {
            check_service_for_consul(&mut c, gi, si, service, config.consul.acl.mode);
            check_builtin_proxy(&mut c, gi, si, service, config.connect.sidecar_driver);
        }
    }
    if let Some(range) = network.dynamic_ports {
        check_static_ports(&mut c, &config.groups, range, &consul_ports(&config.consul));
    }
    match (
        c.problems.is_empty(),
        network.subnet,
        network.subnet_ipv6,
        network.dynamic_ports,
    ) {
        (true, Some(subnet), Some(subnet_ipv6), Some(dynamic_ports)) => Ok(ValidConfig {
            config,
            subnet,
            subnet_ipv6,
            dynamic_ports,
            advertise_address: network.advertise_address,
        }),
        _ => Err(c.problems),
    }
}

pub fn is_group_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn is_task_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_port_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_ifname(name: &str) -> bool {
    name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
