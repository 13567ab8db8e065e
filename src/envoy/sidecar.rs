//! A sidecar's bootstrap, made the way Nomad makes it (reference/nomad-connect.md §3.2–3.8):
//! the same `consul connect envoy` flags and minimal environment, the same files under the
//! proxy task's directory, the same retry budget while the sidecar's registration is not
//! visible yet. `native` runs our renderer in-process; `consul-cli` runs `consul` itself.
//!
//! Files (the task's `secrets/` is root's, 0750 with Envoy's group; every file in it 0640,
//! written through the directory's descriptor, never through a link a task planted):
//! - `secrets/envoy_bootstrap.json` — the bootstrap; removed after a failed attempt;
//! - `secrets/.envoy_bootstrap.cmd` — the equivalent command line, token redacted;
//! - `secrets/.envoy_bootstrap.env` — its environment, a JSON array of `KEY=value`;
//! - `<alloc>/alloc/logs/envoy_bootstrap.stderr.0` — what the last failed attempt said.

use super::command::{self, EnvoyBootstrap};
use crate::config::{Consul, Preflight};
use crate::error::{Context, Error};
use crate::files::Dir;
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
    /// The proxy task's `secrets/` (`allocdir::task`), the group Envoy reads it with, and
    /// the group's alloc dir.
    pub secrets: &'a Dir,
    pub reader_gid: u32,
    pub alloc_dir: &'a Path,
    /// The NOMAD_* identity variables of the task, in Nomad's order (§3.4).
    pub nomad_env: Vec<(String, String)>,
    /// Before a restart of Envoy: retry for at most `REFRESH_BUDGET`, and keep the previous
    /// bootstrap when Consul does not answer, so Envoy comes back even during an outage.
    pub refresh: bool,
}

const BOOTSTRAP: &str = "envoy_bootstrap.json";
/// How long one `consul connect envoy` run may take.
const CONSUL_TIMEOUT: Duration = Duration::from_secs(30);
/// The token `consul connect envoy` reads (consul-cli mode).
const TOKEN_FILE: &str = ".consul_http_token";

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
        // `consul` reads the token from a file (`CONSUL_HTTP_TOKEN_FILE`): an argument is
        // readable by every user in /proc/<pid>/cmdline.
        let token = match self.renderer {
            Renderer::Native => self.token.clone(),
            Renderer::ConsulCli { .. } => None,
        };
        let optional = [
            ("gateway", self.gateway.map(str::to_string)),
            ("token", token),
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
        if matches!(self.renderer, Renderer::ConsulCli { .. }) && self.token.is_some() {
            let file = self.secrets.path().join(TOKEN_FILE);
            env.push(("CONSUL_HTTP_TOKEN_FILE".into(), file.display().to_string()));
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

    pub fn bootstrap_path(&self) -> PathBuf {
        self.secrets.path().join(BOOTSTRAP)
    }

    fn write_secret(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        self.secrets
            .write_private(name, bytes, Some(self.reader_gid))
            .with_context(|| format!("cannot write {}", self.secrets.path().join(name).display()))
    }

    fn stderr_path(&self) -> PathBuf {
        self.alloc_dir.join("alloc/logs/envoy_bootstrap.stderr.0")
    }

    /// One attempt: the bootstrap JSON, or why not.
    fn attempt(&self) -> Result<String, Error> {
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
                // Root's alone (0600), and only while `consul` runs.
                if let Some(token) = &self.token {
                    self.secrets
                        .write_private(TOKEN_FILE, token.as_bytes(), None)
                        .with_context(|| format!("cannot write the token file for {binary}"))?;
                }
                let mut argv = vec![binary.clone()];
                argv.extend(self.argv(false));
                let out = crate::supervise::capture(&argv, &env, CONSUL_TIMEOUT, 4 << 20);
                let _ = self.secrets.remove(TOKEN_FILE);
                let out = out.with_context(|| format!("cannot run {binary}"))?;
                if out.code == 0 {
                    return Ok(out.stdout);
                }
                // Nomad retries any failed run: the registration may not be visible yet.
                Err(Error::temporary(format!(
                    "{binary} exited with exit status: {}: {}",
                    out.code,
                    crate::text::cut(out.stderr.trim(), 512)
                )))
            }
        }
    }

    /// Writes the debug files, then the bootstrap, retrying within the preflight budget
    /// (`REFRESH_BUDGET` for a refresh). A failed first write leaves no bootstrap; a failed
    /// refresh leaves the previous one in place.
    pub fn write(&self) -> Result<PathBuf, Error> {
        let cmd = self.argv(true).join(" ") + "\n";
        self.write_secret(".envoy_bootstrap.cmd", cmd.as_bytes())?;
        self.write_secret(".envoy_bootstrap.env", env_json(&self.env()).as_bytes())?;
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
                        let _ = self.secrets.remove(BOOTSTRAP);
                    }
                    self.log_failure(e.message());
                }
                attempt
            },
            Error::is_retryable,
        );
        let json = result.map_err(|gave_up| {
            gave_up
                .last
                .context("error creating bootstrap configuration for Connect proxy sidecar")
        })?;
        self.write_secret(BOOTSTRAP, json.as_bytes())?;
        info!("{what}: written to {}", path.display());
        Ok(path)
    }

    /// Keeps what the last failed attempt said in the group's logs (root's directory).
    fn log_failure(&self, message: &str) {
        let path = self.stderr_path();
        let _ = crate::files::write_private(&path, format!("{message}\n").as_bytes());
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
