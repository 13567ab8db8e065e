//! A sidecar's bootstrap, made the way Nomad makes it (reference/nomad-connect.md §3.2–3.8):
//! the same `consul connect envoy` flags and minimal environment, the same files under the
//! proxy task's directory, the same retry budget while the sidecar's registration is not
//! visible yet. `native` runs our renderer in-process; `consul-cli` runs `consul` itself.
//!
//! Files (the task's `secrets/` is 0700, every file in it 0600):
//! - `secrets/envoy_bootstrap.json` — the bootstrap; removed after a failed attempt;
//! - `secrets/.envoy_bootstrap.cmd` — the equivalent command line, token redacted;
//! - `secrets/.envoy_bootstrap.env` — its environment, a JSON array of `KEY=value`;
//! - `<alloc>/alloc/logs/envoy_bootstrap.stderr.0` — what the last failed attempt said.

use super::command::{self, EnvoyBootstrap, Failure};
use crate::config::{Consul, Preflight};
use crate::files::write_private;
use crate::retry::{Backoff, retry_until};
use argh::FromArgs;
use log::info;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to render: in-process, or by running `consul` as Nomad does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renderer {
    Native,
    ConsulCli { binary: String },
}

/// One proxy's bootstrap job.
pub struct Job<'a> {
    pub consul: &'a Consul,
    pub preflight: &'a Preflight,
    pub renderer: Renderer,
    pub proxy_id: &'a str,
    /// `ingress`, `terminating` or `mesh` for gateways.
    pub gateway: Option<&'a str>,
    pub admin_bind: &'a str,
    pub ready_bind: &'a str,
    /// Where Envoy reaches Consul's xDS: `consul.grpc_address`, or the group's socket.
    pub grpc_addr: String,
    /// The workload token of the service, else the agent's own (Nomad's fallback).
    pub token: Option<String>,
    /// The proxy task's directory (`secrets/` is in it) and the group's alloc dir.
    pub task_dir: &'a Path,
    pub alloc_dir: &'a Path,
    /// The NOMAD_* identity variables of the task, in Nomad's order (§3.4).
    pub nomad_env: Vec<(String, String)>,
    /// Before a restart of Envoy: retry for at most `REFRESH_BUDGET`, and keep the previous
    /// bootstrap when Consul does not answer, so Envoy comes back even during an outage.
    pub refresh: bool,
}

/// How long a restart of Envoy waits for a new bootstrap before it uses the previous one.
pub const REFRESH_BUDGET: Duration = Duration::from_secs(5);

/// One flag of Nomad's argument list.
enum Arg {
    Value(&'static str, String),
    Switch(&'static str),
}

impl Job<'_> {
    /// Nomad's arguments for `consul connect envoy`, in its order (§3.3).
    fn args(&self) -> Vec<Arg> {
        let mut args = vec![
            Arg::Value("grpc-addr", self.grpc_addr.clone()),
            Arg::Value("http-addr", self.consul.address.clone()),
            Arg::Value("admin-bind", self.admin_bind.to_string()),
            Arg::Value("address", self.ready_bind.to_string()),
            Arg::Value("proxy-id", self.proxy_id.to_string()),
            Arg::Switch("bootstrap"),
        ];
        let optional = [
            ("gateway", self.gateway.map(str::to_string)),
            ("token", self.token.clone()),
            ("grpc-ca-file", self.consul.grpc_ca_file.clone()),
            ("ca-file", self.consul.ca_file.clone()),
            ("client-cert", self.consul.cert_file.clone()),
            ("client-key", self.consul.key_file.clone()),
            ("namespace", self.consul.namespace.clone()),
        ];
        for (flag, value) in optional {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                args.push(Arg::Value(flag, value));
            }
        }
        args
    }

    /// The environment of the command: the identity variables, then Consul's (§3.4).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.nomad_env.clone();
        let tls = self.consul.address.starts_with("https://");
        env.push(("CONSUL_HTTP_SSL".into(), tls.to_string()));
        env.push(("CONSUL_HTTP_SSL_VERIFY".into(), "true".into()));
        if let Some(ns) = self.consul.namespace.as_ref().filter(|n| !n.is_empty()) {
            env.push(("CONSUL_NAMESPACE".into(), ns.clone()));
        }
        env
    }

    /// The argv (without the program): `consul`'s single-dash form or ours.
    pub fn argv(&self, redact: bool) -> Vec<String> {
        let mut argv: Vec<String> = match self.renderer {
            Renderer::Native => vec!["envoy-bootstrap".into()],
            Renderer::ConsulCli { .. } => vec!["connect".into(), "envoy".into()],
        };
        let dash = match self.renderer {
            Renderer::Native => "--",
            Renderer::ConsulCli { .. } => "-",
        };
        for arg in self.args() {
            match arg {
                // Implied by `outpost envoy-bootstrap`.
                Arg::Switch(_) if self.renderer == Renderer::Native => {}
                Arg::Switch(flag) => argv.push(format!("{dash}{flag}")),
                Arg::Value(flag, value) => {
                    argv.push(format!("{dash}{flag}"));
                    argv.push(if redact && flag == "token" {
                        "<redacted>".into()
                    } else {
                        value
                    });
                }
            }
        }
        argv
    }

    fn secrets(&self) -> PathBuf {
        self.task_dir.join("secrets")
    }

    pub fn bootstrap_path(&self) -> PathBuf {
        self.secrets().join("envoy_bootstrap.json")
    }

    fn stderr_path(&self) -> PathBuf {
        self.alloc_dir.join("alloc/logs/envoy_bootstrap.stderr.0")
    }

    /// One attempt: the bootstrap JSON, or why not.
    fn attempt(&self) -> Result<String, Failure> {
        let env = self.env();
        match &self.renderer {
            Renderer::Native => {
                let argv = self.argv(false);
                let strs: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
                let cmd = EnvoyBootstrap::from_args(&["envoy-bootstrap"], &strs)
                    .map_err(|e| format!("envoy-bootstrap arguments: {}", e.output))?;
                let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
                let out = command::run(&cmd, &lookup)?;
                for w in &out.warnings {
                    log::warn!("{}: {w}", self.proxy_id);
                }
                Ok(out.json)
            }
            Renderer::ConsulCli { binary } => {
                let out = std::process::Command::new(binary)
                    .args(self.argv(false))
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {binary}: {e}"))?;
                if out.status.success() {
                    return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
                }
                // Nomad retries any failed run: the registration may not be visible yet.
                Err(Failure {
                    message: format!(
                        "{binary} exited with {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    retryable: true,
                })
            }
        }
    }

    /// Writes the debug files, then the bootstrap, retrying within the preflight budget
    /// (`REFRESH_BUDGET` for a refresh). A failed first write leaves no bootstrap; a failed
    /// refresh leaves the previous one in place.
    pub fn write(&self) -> Result<PathBuf, String> {
        let secrets = self.secrets();
        let cmd = self.argv(true).join(" ") + "\n";
        write_private(&secrets.join(".envoy_bootstrap.cmd"), cmd.as_bytes())
            .map_err(|e| format!("cannot write in {}: {e}", secrets.display()))?;
        write_private(
            &secrets.join(".envoy_bootstrap.env"),
            env_json(&self.env()).as_bytes(),
        )
        .map_err(|e| format!("cannot write in {}: {e}", secrets.display()))?;
        let budget = match self.refresh {
            true => self.preflight.service_timeout.0.min(REFRESH_BUDGET),
            false => self.preflight.service_timeout.0,
        };
        let backoff = Backoff {
            base: self.preflight.service_base.0,
            factor: 2,
            max: budget,
            jitter: Duration::from_millis(500),
        };
        let path = self.bootstrap_path();
        let what = format!("bootstrap of {}", self.proxy_id);
        let result = retry_until(
            &what,
            budget,
            backoff,
            || {
                let attempt = self.attempt();
                if let Err(e) = &attempt {
                    if !self.refresh {
                        let _ = std::fs::remove_file(&path);
                    }
                    self.log_failure(&e.message);
                }
                attempt
            },
            |e| e.retryable,
        );
        let json = result.map_err(|gave_up| {
            format!(
                "error creating bootstrap configuration for Connect proxy sidecar: {}",
                gave_up.last
            )
        })?;
        write_private(&path, json.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        info!("{what}: written to {}", path.display());
        Ok(path)
    }

    fn log_failure(&self, message: &str) {
        let path = self.stderr_path();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&path, format!("{message}\n"));
    }
}

/// `["KEY=value", …]`, 4-space indented, as Nomad writes `.envoy_bootstrap.env`.
fn env_json(env: &[(String, String)]) -> String {
    let items: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("    {}", miniserde::json::to_string(&format!("{k}={v}"))))
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}
