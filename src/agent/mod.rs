//! The agent: turns a config into a running node. One reconcile pass (`apply`), `teardown`
//! in Nomad's stop order, and the pieces the long-running loop (`run`) shares with them.

use crate::config::{AclMode, BootstrapMode, ValidConfig};
use crate::consul::acl::{self, WorkloadToken};
use crate::consul::client::Client;
use crate::consul::gateway;
use crate::consul::preflight;
use crate::consul::sync::{self, Wanted};
use crate::envoy::sidecar::{Job, Renderer};
use crate::error::{Context, Error};
use crate::plan::{self, GroupPlan, HostFacts, Plan, ServicePlan};
use crate::{net, state};
use log::{info, warn};
use std::path::{Path, PathBuf};

mod records;
pub mod relay;
pub mod run;
mod script_checks;
mod status;
mod workers;

/// Where a service's workload token is kept: the group's secrets directory on tmpfs.
fn token_path(group: &GroupPlan, service_id: &str) -> PathBuf {
    Path::new(&group.alloc_dir)
        .join("secrets")
        .join(format!("{service_id}.token"))
}

fn read_token(path: &Path) -> Option<WorkloadToken> {
    let text = std::fs::read_to_string(path).ok()?;
    let (accessor, secret) = text.split_once('\n')?;
    Some(WorkloadToken {
        accessor: accessor.to_string(),
        secret: secret.trim().to_string(),
    })
}

/// The token `service` registers with: none in agent-token mode; otherwise the stored one
/// if Consul still resolves it, else a new one, stored and read back (preflight) first.
fn workload_token(
    base: &Client,
    valid: &ValidConfig,
    plan: &Plan,
    group: &GroupPlan,
    service: &ServicePlan,
) -> Result<Option<WorkloadToken>, Error> {
    let consul = &valid.config.consul;
    if consul.acl.mode == AclMode::AgentToken {
        return Ok(None);
    }
    let what = format!("service {}", service.name);
    let path = token_path(group, &service.id);
    if let Some(kept) = read_token(&path) {
        if preflight::token(&base.with_token(&kept.secret), &consul.preflight, &what).is_ok() {
            return Ok(Some(kept));
        }
        warn!("the stored token of {what} is not usable; replacing it");
        // Give it back first, so a token that was merely slow to replicate is not leaked.
        if let Err(e) = acl::release(base, &consul.acl, &kept) {
            warn!(
                "could not release the old token {} of {what}: {e}",
                kept.accessor
            );
        }
    }
    let Some(token) = acl::obtain(base, &consul.acl, &service.name, &plan.node_name)? else {
        return Ok(None);
    };
    acl::store_secret(&path, &format!("{}\n{}", token.accessor, token.secret)).map_err(|e| {
        format!(
            "cannot store the token of {what} in {}: {e}",
            path.display()
        )
    })?;
    info!(
        "{what}: new Consul token {} ({} mode)",
        token.accessor,
        consul.acl.mode.as_str()
    );
    preflight::token(&base.with_token(&token.secret), &consul.preflight, &what)?;
    Ok(Some(token))
}

/// Whether the config registers anything in Consul (if not, groups need no Consul).
fn has_services(plan: &Plan) -> bool {
    plan.groups.iter().any(|g| !g.services.is_empty())
}

/// The workload token (secret) each registered service got, by service ID.
type Tokens = std::collections::BTreeMap<String, String>;

/// Registers the plan's services (each with its workload token) and removes outpost's
/// services no group owns. The `failed` groups (stopped for good until their reschedule)
/// are left out, so they are deregistered and their tokens given back, as Nomad does for a
/// failed allocation. With `consul_optional` (a config without services) an unreachable
/// Consul is only a warning.
fn sync_consul(
    valid: &ValidConfig,
    plan: &Plan,
    failed: &[String],
    consul_optional: bool,
) -> Result<Tokens, Error> {
    let base = Client::new(&valid.config.consul)?;
    let at = |e: Error| {
        e.context(format!(
            "Consul registration at {}",
            valid.config.consul.address
        ))
    };
    let entries: Vec<&miniserde::json::Value> = plan
        .groups
        .iter()
        .flat_map(|g| &g.services)
        .map(|s| &s.config_entry)
        .filter(|e| !matches!(e, miniserde::json::Value::Null))
        .collect();
    // Entries first: an ingress gateway's Envoy gets its listeners from its entry.
    if !entries.is_empty() || !consul_optional {
        gateway::sync_entries(&base, &entries, &plan.node_name).map_err(|e| at(e.into()))?;
    }
    let mut registered = 0;
    let mut keep = Vec::new();
    let mut tokens = Tokens::new();
    // One look at the agent's services for the whole pass (not one per service).
    let listed = sync::agent_services(&base);
    for group in plan.groups.iter().filter(|g| !failed.contains(&g.name)) {
        for service in &group.services {
            let token = workload_token(&base, valid, plan, group, service)?;
            if let Some(t) = &token {
                tokens.insert(service.id.clone(), t.secret.clone());
            }
            let client = match &token {
                Some(t) => base.with_token(&t.secret),
                None => base.clone(),
            };
            let wanted = [Wanted {
                id: &service.id,
                body: &service.registration,
            }];
            let services = listed.as_ref().map_err(|e| at(e.clone().into()))?;
            registered += sync::register_missing(&client, &wanted, services)
                .map_err(|e| at(e.into()))?
                .len();
            keep.push(service.id.as_str());
        }
    }
    let removed = match listed {
        Ok(services) => sync::remove_unowned(&base, &services, &keep).map_err(|e| at(e.into()))?,
        Err(e) if consul_optional && e.is_retryable() => {
            info!(
                "Consul did not answer ({e}); this config registers nothing there, so no leftovers were looked for"
            );
            return Ok(tokens);
        }
        Err(e) => return Err(at(e.into())),
    };
    info!(
        "Consul: {registered} service(s) registered, {} deregistered, {} unchanged",
        removed.len(),
        keep.len() - registered
    );
    // Nomad's order for a group that went or failed: deregistered, then its tokens given
    // back.
    let failed_dirs = plan
        .groups
        .iter()
        .filter(|g| failed.contains(&g.name))
        .map(|g| PathBuf::from(&g.alloc_dir));
    let dirs: Vec<PathBuf> = orphan_dirs(plan).into_iter().chain(failed_dirs).collect();
    release_tokens_in(valid, &dirs).map_err(at)?;
    Ok(tokens)
}

/// The group's xDS socket, in a directory only root and Envoy's group may enter
/// (`allocdir`), so no other task reaches Consul's gRPC port through it.
const XDS_SOCKET: &str = "xds/consul_grpc.sock";

/// Where Envoy in the group's namespace reaches Consul's xDS: `consul.grpc_address`, else
/// the group's socket (served by the relay), by absolute path so Envoy's cwd does not matter.
fn grpc_addr(valid: &ValidConfig, group: &GroupPlan) -> String {
    match &valid.config.consul.grpc_address {
        Some(address) if address.starts_with("unix://") => address.clone(),
        _ => format!("unix://{}/{XDS_SOCKET}", group.alloc_dir),
    }
}

/// The group's xDS socket when a relay must serve it: the group has sidecars and Consul's
/// gRPC is on TCP (a `unix://` grpc_address is used directly).
pub fn relay_socket(valid: &ValidConfig, group: &GroupPlan) -> Option<PathBuf> {
    let sidecars = group
        .services
        .iter()
        .any(|s| s.proxy.as_ref().is_some_and(|p| p.is_envoy()));
    let direct = valid
        .config
        .consul
        .grpc_address
        .as_deref()
        .is_some_and(|a| a.starts_with("unix://"));
    (sidecars && !direct).then(|| Path::new(&group.alloc_dir).join(XDS_SOCKET))
}

/// Where the relays forward: `consul.grpc_address`, else the agent's host with its xDS
/// port (TLS port first) from `/v1/agent/self` (`agent`), else 8502.
pub fn relay_target(
    valid: &ValidConfig,
    agent: Result<&crate::consul::agent::AgentInfo, &crate::consul::client::ConsulError>,
) -> String {
    let consul = &valid.config.consul;
    if let Some(address) = &consul.grpc_address {
        let bare = address
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        return bare.to_string();
    }
    let host = match consul.address.split_once("://") {
        Some(("http" | "https", rest)) => rest
            .rsplit_once(':')
            .map_or(rest, |(h, _)| h)
            .trim_end_matches('/')
            .to_string(),
        _ => "127.0.0.1".to_string(),
    };
    let port = match agent {
        Ok(me) => match (me.xds_ports, me.debug_grpc_port) {
            (Some(p), _) if p.tls > 0 => p.tls,
            (Some(p), _) if p.plaintext > 0 => p.plaintext,
            (_, Some(p)) if p > 0 => p,
            _ => 8502,
        },
        Err(e) => {
            warn!("cannot read the agent's gRPC port ({e}); using 8502");
            8502
        }
    };
    format!("{host}:{port}")
}

/// Writes each Envoy's bootstrap (sidecars and gateways) into its task's secrets, as Nomad
/// does before starting Envoy: with the service's workload token, else the agent's own.
/// `only_task`: just that proxy task's bootstrap (before it restarts).
fn write_bootstraps<'a>(
    valid: &ValidConfig,
    groups: impl Iterator<Item = &'a GroupPlan>,
    tokens: &Tokens,
    only_task: Option<&str>,
) -> Result<(), Error> {
    let consul = &valid.config.consul;
    let renderer = match valid.config.envoy.bootstrap {
        BootstrapMode::ConsulCli => Renderer::ConsulCli {
            binary: valid.config.envoy.consul_binary.clone(),
        },
        BootstrapMode::Native => Renderer::Native,
    };
    let agent_token = crate::consul::client::agent_token(consul)?;
    for group in groups {
        for service in &group.services {
            let Some(sidecar) = service.proxy.as_ref().filter(|p| p.is_envoy()) else {
                continue;
            };
            if only_task.is_some_and(|only| only != sidecar.task) {
                continue;
            }
            let Some(task) = group.tasks.iter().find(|t| t.name == sidecar.task) else {
                continue;
            };
            let nomad_env = IDENTITY_VARS
                .iter()
                .filter_map(|k| task.env.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            // Envoy reads its bootstrap through its group; the task's directories are
            // set to their owners first, so nothing a task planted is written through.
            let (uid, gid) = crate::supervise::credentials(task.user.as_deref().unwrap_or("0"))?;
            let secrets = envoy_dirs(valid, group, &task.name, uid, gid).map_err(|e| {
                format!(
                    "group {}: task {}: cannot prepare its directories: {e}",
                    group.name, task.name
                )
            })?;
            let job = Job {
                consul,
                preflight: &consul.preflight,
                renderer: renderer.clone(),
                proxy_id: &sidecar.id,
                gateway: sidecar.gateway.map(|g| g.as_str()),
                admin_bind: &sidecar.envoy_admin,
                ready_bind: &sidecar.envoy_ready,
                grpc_addr: grpc_addr(valid, group),
                token: tokens
                    .get(&service.id)
                    .cloned()
                    .or_else(|| agent_token.clone()),
                secrets: &secrets,
                reader_gid: gid,
                alloc_dir: Path::new(&group.alloc_dir),
                nomad_env,
                refresh: only_task.is_some(),
            };
            job.write()?;
        }
    }
    Ok(())
}

/// What each Connect native task and built-in proxy reads to reach Consul
/// (`plan::native_env`): its workload token (an empty file without one; never the agent's
/// token) and copies of the agent's TLS files, in its secrets, readable by its group only.
fn write_native_files<'a>(
    valid: &ValidConfig,
    groups: impl Iterator<Item = &'a GroupPlan>,
    tokens: &Tokens,
) -> Result<(), Error> {
    use crate::allocdir::{NATIVE_TLS_FILES, NATIVE_TOKEN};
    let consul = &valid.config.consul;
    for group in groups {
        for service in &group.services {
            let Some(task) = service
                .consul_client_task()
                .and_then(|name| group.tasks.iter().find(|t| t.name == name))
            else {
                continue;
            };
            let (uid, gid) = crate::supervise::credentials(task.user.as_deref().unwrap_or("0"))?;
            let secrets =
                crate::allocdir::prepare(Path::new(&group.alloc_dir), &task.name, uid, gid)
                    .with_context(|| {
                        format!("group {}: task {}: its directories", group.name, task.name)
                    })?;
            let token = tokens.get(&service.id).map_or("", String::as_str);
            secrets
                .write_private(NATIVE_TOKEN, token.as_bytes(), Some(gid))
                .with_context(|| format!("group {}: the token of {}", group.name, task.name))?;
            let configured = [&consul.ca_file, &consul.cert_file, &consul.key_file];
            for ((_, file), source) in NATIVE_TLS_FILES.iter().zip(configured) {
                if let Some(source) = source {
                    let bytes =
                        std::fs::read(source).with_context(|| format!("cannot read {source}"))?;
                    secrets
                        .write_private(file, &bytes, Some(gid))
                        .with_context(|| {
                            format!("group {}: {file} of {}", group.name, task.name)
                        })?;
                }
            }
        }
    }
    Ok(())
}

/// The HTTP sockets the relay serves for groups with a Connect native task or a built-in
/// proxy, each with Consul's HTTP
/// address (`host:port`, or `unix:///path`; with https the TLS is end to end).
pub fn native_sockets(valid: &ValidConfig, plan: &Plan) -> Vec<(PathBuf, String)> {
    let address = &valid.config.consul.address;
    let to = match address.split_once("://") {
        Some(("unix", _)) => address.clone(),
        Some((_, rest)) => rest.trim_end_matches('/').to_string(),
        None => address.clone(),
    };
    plan.groups
        .iter()
        .filter(|g| g.services.iter().any(|s| s.consul_client_task().is_some()))
        .map(|g| {
            let socket = Path::new(&g.alloc_dir).join(crate::allocdir::CONSUL_HTTP_SOCKET);
            (socket, to.clone())
        })
        .collect()
}

/// An Envoy task's directories (`allocdir`), and the group's `xds/` when a relay serves
/// it, open to Envoy's group `gid`; returns the task's `secrets/`.
fn envoy_dirs(
    valid: &ValidConfig,
    group: &GroupPlan,
    task: &str,
    uid: u32,
    gid: u32,
) -> std::io::Result<crate::files::Dir> {
    let dir = crate::allocdir::group(Path::new(&group.alloc_dir))?;
    crate::allocdir::shared(&dir)?;
    if relay_socket(valid, group).is_some() {
        crate::allocdir::xds(&dir, gid)?;
    }
    crate::allocdir::task(&dir, task, uid, gid)
}

/// The identity variables Nomad gives the bootstrap command, in its order.
const IDENTITY_VARS: [&str; 8] = [
    "NOMAD_ALLOC_ID",
    "NOMAD_SHORT_ALLOC_ID",
    "NOMAD_ALLOC_NAME",
    "NOMAD_GROUP_NAME",
    "NOMAD_JOB_NAME",
    "NOMAD_JOB_ID",
    "NOMAD_NAMESPACE",
    "NOMAD_REGION",
];

/// Deregisters every service of ours (Consul is needed only when the config has services).
fn deregister_all(valid: &ValidConfig, plan: &Plan) -> Result<(), Error> {
    sync_consul(valid, &plan.without_groups(), &[], !has_services(plan)).map(|_| ())
}

/// Every group directory under `run_dir/alloc`, configured or not: all are outpost's.
fn group_dirs(run_dir: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(Path::new(run_dir).join("alloc")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The group directories no group of `plan` owns: left by a group removed from the
/// config (a reload, or an edit while no agent ran).
fn orphan_dirs(plan: &Plan) -> Vec<PathBuf> {
    group_dirs(&plan.run_dir)
        .into_iter()
        .filter(|d| !plan.groups.iter().any(|g| Path::new(&g.alloc_dir) == d))
        .collect()
}

/// The token files kept in a group directory's secrets.
fn token_files(group_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(group_dir.join("secrets")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "token"))
        .collect()
}

/// Gives back the workload tokens kept in `dirs`, deleting each file once Consul took it.
fn release_tokens_in(valid: &ValidConfig, dirs: &[PathBuf]) -> Result<(), Error> {
    let files: Vec<PathBuf> = dirs.iter().flat_map(|d| token_files(d)).collect();
    if files.is_empty() {
        return Ok(());
    }
    let base = Client::new(&valid.config.consul)?;
    for path in files {
        if let Some(token) = read_token(&path) {
            acl::release(&base, &valid.config.consul.acl, &token)
                .with_context(|| format!("releasing Consul token {}", token.accessor))?;
            info!("released Consul token {}", token.accessor);
        }
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Removes the directories of groups that are no longer configured, once their tasks are
/// stopped and their tokens given back (a directory still holding a token stays until
/// the next sync releases it).
fn remove_orphan_dirs(plan: &Plan) {
    for dir in orphan_dirs(plan) {
        if !token_files(&dir).is_empty() {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => info!("removed {}: no group owns it", dir.display()),
            Err(e) => warn!("cannot remove {}: {e}", dir.display()),
        }
    }
}

/// Plans from the config and the node state, records the plan's leases before touching the
/// host (so a crash mid-apply re-plans the same addresses and ports), then reconciles.
pub fn apply(valid: &ValidConfig, host: &HostFacts) -> Result<Plan, Error> {
    let plan = prepare(valid, host)?;
    net::apply(&plan.bridge, &plan.net_groups())?;
    info!(
        "network applied: {} group(s), bridge {}",
        plan.groups.len(),
        plan.bridge.name
    );
    // After the network: a service must not be advertised before its port is mapped.
    let tokens = sync_consul(valid, &plan, &[], !has_services(&plan))?;
    write_bootstraps(valid, plan.groups.iter(), &tokens, None)?;
    write_native_files(valid, plan.groups.iter(), &tokens)?;
    Ok(plan)
}

/// The plan, checked against the host, with its leases recorded before anything changes.
fn prepare(valid: &ValidConfig, host: &HostFacts) -> Result<Plan, Error> {
    let state_path = state::path_in(&valid.config.agent.data_dir);
    let previous = state::load(&state_path)?;
    // What listens on the host now (a reload may come long after the start): read once,
    // for the planner's dynamic ports and the check of mapped ones.
    let listeners = net::host::listeners();
    let host = HostFacts {
        listening_ports: listeners.iter().map(|l| l.port).collect(),
        ..host.clone()
    };
    let plan = plan::build(valid, &previous, &host).context("cannot plan")?;
    let check = net::self_check(&plan.bridge, &plan.net_groups(), &listeners);
    for note in &check.notes {
        info!("{note}");
    }
    if !check.errors.is_empty() {
        return Err(Error::config(check.errors.join("\n")));
    }
    let next = plan::node_state(&plan);
    if next != previous {
        state::save(&state_path, &next)
            .with_context(|| format!("cannot write state file {}", state_path.display()))?;
    }
    Ok(plan)
}

/// Stops a running agent first: it would restart the tasks teardown stops.
fn stop_agent(plan: &Plan) {
    if let Some(pid) = run::running_agent(&plan.run_dir) {
        info!("stopping the running agent (pid {pid})");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..200 {
            if run::running_agent(&plan.run_dir).is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Stops the recorded tasks of every group: main tasks first, sidecars last.
fn stop_tasks(plan: &Plan) {
    let records = run::load_records(&plan.run_dir);
    let mut runners = Vec::new();
    for group in &plan.groups {
        let mut runner = crate::alloc::Runner::new(group);
        if runner.adopt(&run::group_records(&records, &group.name)) > 0 {
            runners.push(runner);
        }
    }
    crate::alloc::stop_all(&mut runners);
    // Every Envoy is gone: the relay that carried their xDS streams goes too.
    if let Some(proc) = run::group_records(&records, relay::RELAY_RECORD)
        .first()
        .map(|(_, proc, _)| *proc)
        .filter(|p| p.alive())
    {
        relay::stop(proc, Path::new(&plan.run_dir));
    }
    run::stop_strays(&records, plan);
    // Whatever is left in the node's cgroups (tasks that were not running) goes, and the
    // cgroups with it.
    crate::cgroup::sweep(&plan.cgroup_parent, &[]);
    let _ = std::fs::remove_file(run::records_path(&plan.run_dir));
    let _ = std::fs::remove_file(run::journal_path(&plan.run_dir));
}

/// Removes `run_dir` once everything of the agent's in it is gone (kept, with a note, if
/// anything else is there).
fn remove_run_dir(run_dir: &str) {
    match std::fs::remove_dir(run_dir) {
        Ok(()) => info!("removed {run_dir}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => info!("keeping {run_dir}: it holds files outpost did not make"),
    }
}

/// Removes everything outpost made on this host and releases every lease.
pub fn teardown(valid: &ValidConfig, host: &HostFacts) -> Result<(), Error> {
    let state_path = state::path_in(&valid.config.agent.data_dir);
    let previous = state::load(&state_path).unwrap_or_else(|e| {
        warn!("{e}; tearing down by name only");
        state::NodeState::default()
    });
    let plan = plan::build(valid, &previous, host).context("cannot plan")?;
    stop_agent(&plan);
    // Nomad's order: deregister first, so nothing is routed to groups that are going away;
    // wait the groups' shutdown_delay; stop main tasks, then sidecars; give back the tokens;
    // remove the network. If Consul does not answer, the tasks and the network still go; the
    // tokens stay on disk for the next teardown.
    let consul = deregister_all(valid, &plan);
    if consul.is_ok() {
        let delay = plan
            .groups
            .iter()
            .filter(|g| !g.services.is_empty())
            .map(|g| g.shutdown_delay.0)
            .max()
            .unwrap_or_default();
        if !delay.is_zero() {
            info!("waiting the groups' shutdown_delay of {delay:?} before stopping tasks");
            std::thread::sleep(delay);
        }
    }
    stop_tasks(&plan);
    let consul = consul.and_then(|()| release_tokens_in(valid, &group_dirs(&plan.run_dir)));
    net::teardown(&plan.bridge)?;
    // Every lease is released: the state file goes (and data_dir, if nothing else is in it).
    match std::fs::remove_file(&state_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            warn!("cannot remove {}: {e}", state_path.display());
        }
        _ => {
            let _ = std::fs::remove_dir(&valid.config.agent.data_dir);
        }
    }
    consul.map_err(|e| {
        format!("{e}; the network was removed: run teardown again once Consul answers, to deregister and release tokens")
    })?;
    // Tokens are released: the groups' directories (bootstraps, logs) can go, also those
    // of groups no longer configured.
    for dir in group_dirs(&plan.run_dir) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => info!("removed {}", dir.display()),
            Err(e) => warn!("cannot remove {}: {e}", dir.display()),
        }
    }
    let _ = std::fs::remove_dir(Path::new(&plan.run_dir).join("alloc"));
    remove_run_dir(&plan.run_dir);
    info!("teardown complete");
    Ok(())
}
