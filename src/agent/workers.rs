//! The agent's Consul work on worker threads (registration, token preflight, bootstraps),
//! so a slow Consul never stalls the loop; outcomes come back through a shared list and a
//! wake pipe.

use super::{Tokens, relay_target, sync_consul, write_bootstraps};
use crate::config::ValidConfig;
use crate::error::{Context, Error};
use crate::plan::{GroupPlan, Plan};
use log::warn;
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the agent waits before trying Consul again.
pub(super) const CONSUL_RETRY: Duration = Duration::from_secs(5);
/// Threads that write the waiting groups' bootstraps at once.
const BOOTSTRAP_THREADS: usize = 4;

/// What a worker thread did with Consul.
pub(super) enum Outcome {
    /// Registration, and the bootstraps of the groups that waited for it, for `plan`.
    Synced {
        plan: Arc<Plan>,
        result: Result<Synced, Error>,
    },
    /// The presence check between full syncs: a service Consul no longer has, if any.
    Checked { missing: Option<String> },
    /// The bootstrap of one Envoy, written anew before its restart (or why not).
    Refreshed {
        group: String,
        task: String,
        error: Option<Error>,
    },
}

pub(super) struct Synced {
    pub(super) tokens: Tokens,
    /// Groups whose bootstraps are written: they may start.
    pub(super) released: Vec<String>,
    /// Waiting groups whose bootstraps failed (retried soon).
    pub(super) unreleased: usize,
    /// Where the released groups' relays forward.
    pub(super) relay_target: Option<String>,
    /// The Envoy versions the agent supports (`xDS.SupportedProxies.envoy`), when read.
    pub(super) supported_envoy: Option<Vec<String>>,
}

/// Registers the plan's services, then writes the bootstraps of the `waiting` groups.
pub(super) fn sync_and_bootstrap(
    valid: &ValidConfig,
    plan: &Plan,
    waiting: &[String],
) -> Result<Synced, Error> {
    let tokens = sync_consul(valid, plan, false)?;
    let groups: Vec<&GroupPlan> = plan
        .groups
        .iter()
        .filter(|g| waiting.contains(&g.name))
        .collect();
    let outcomes = write_bootstraps_side_by_side(valid, &groups, &tokens);
    let mut released = Vec::new();
    for (group, written) in outcomes {
        match written {
            Ok(()) => released.push(group),
            Err(e) => warn!(
                "group {group}: {e}; retrying in {}s",
                CONSUL_RETRY.as_secs()
            ),
        }
    }
    let (mut target, mut supported_envoy) = (None, None);
    if !released.is_empty()
        && let Ok(client) = crate::consul::client::Client::new(&valid.config.consul)
    {
        let agent = crate::consul::agent::agent_info(&client);
        target = Some(relay_target(valid, agent.as_ref()));
        supported_envoy = agent.ok().map(|a| a.supported_envoy);
    }
    Ok(Synced {
        tokens,
        unreleased: waiting.len() - released.len(),
        released,
        relay_target: target,
        supported_envoy,
    })
}

/// Writes each group's bootstraps; by group name, whether it worked. The bootstraps are
/// independent and each waits on a few round trips to Consul, so `BOOTSTRAP_THREADS`
/// threads write them side by side (20 sidecars: 72 ms one by one, see benches/agent.rs).
pub(super) fn write_bootstraps_side_by_side(
    valid: &ValidConfig,
    groups: &[&GroupPlan],
    tokens: &Tokens,
) -> Vec<(String, Result<(), Error>)> {
    let write = |chunk: &[&GroupPlan]| -> Vec<(String, Result<(), Error>)> {
        chunk
            .iter()
            .map(|g| {
                let written = write_bootstraps(valid, std::iter::once(*g), tokens, None);
                (g.name.clone(), written)
            })
            .collect()
    };
    let per_thread = groups.len().div_ceil(BOOTSTRAP_THREADS).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || write(chunk)))
            .collect();
        // A panicked thread's groups are not released; the next sync retries them.
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Consul work runs on worker threads, so that a slow Consul — the token preflight may wait
/// a minute for ACL replication, a bootstrap retries as long — never stalls the loop:
/// restarts, the status socket and the watchdog go on. A worker leaves its outcome in a
/// shared list and wakes the loop through a pipe. One sync at a time; one refresh per Envoy
/// at a time.
pub(super) struct Workers {
    pub(super) outcomes: Arc<Mutex<Vec<Outcome>>>,
    pub(super) wake_read: OwnedFd,
    pub(super) wake_write: Arc<OwnedFd>,
    pub(super) syncing: bool,
    pub(super) checking: bool,
    pub(super) refreshing: BTreeSet<(String, String)>,
}

impl Workers {
    pub(super) fn new() -> Result<Workers, Error> {
        let (wake_read, wake_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("pipe")?;
        Ok(Workers {
            outcomes: Arc::new(Mutex::new(Vec::new())),
            wake_read,
            wake_write: Arc::new(wake_write),
            syncing: false,
            checking: false,
            refreshing: BTreeSet::new(),
        })
    }

    /// Runs `work` on a new thread; false (and logged) when no thread could be made.
    pub(super) fn spawn(&self, work: impl FnOnce() -> Outcome + Send + 'static) -> bool {
        let (outcomes, wake) = (self.outcomes.clone(), self.wake_write.clone());
        let spawned = std::thread::Builder::new()
            .name("consul".into())
            .spawn(move || {
                let outcome = work();
                // A poisoned lock only means another worker panicked; the list is intact.
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(outcome);
                let _ = nix::unistd::write(&*wake, &[1]);
            });
        if let Err(e) = &spawned {
            warn!("cannot start a thread for Consul work: {e}; trying again later");
        }
        spawned.is_ok()
    }

    /// The outcomes that arrived, after emptying the wake pipe.
    pub(super) fn arrived(&self) -> Vec<Outcome> {
        let mut sink = [0u8; 64];
        while nix::unistd::read(&self.wake_read, &mut sink).is_ok_and(|n| n > 0) {}
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
