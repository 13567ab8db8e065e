//! The agent's Consul work (registration, token preflight, bootstraps) on smol's blocking
//! pool, so a slow Consul never stalls the loop; the loop awaits each task's outcome.

use super::{Tokens, relay_target, sync_consul, write_bootstraps, write_native_files};
use crate::config::ValidConfig;
use crate::error::Error;
use crate::plan::{GroupPlan, Plan};
use log::warn;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
        /// The groups it left out of Consul (failed for good).
        failed: Vec<String>,
        result: Result<Synced, Error>,
    },
    /// The presence check between full syncs: a service Consul no longer has, if any.
    Checked { missing: Option<String> },
    /// A script check ran and was reported (its status), or why not.
    ScriptChecked {
        check_id: String,
        result: Result<&'static str, Error>,
    },
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

/// Registers the plan's services but the `failed` groups' (which are deregistered), then
/// writes the bootstraps of the `waiting` groups.
pub(super) fn sync_and_bootstrap(
    valid: &ValidConfig,
    plan: &Plan,
    waiting: &[String],
    failed: &[String],
) -> Result<Synced, Error> {
    let tokens = sync_consul(valid, plan, failed, false)?;
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
                let written = write_bootstraps(valid, std::iter::once(*g), tokens, None)
                    .and_then(|()| write_native_files(valid, std::iter::once(*g), tokens));
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

/// Consul work runs on smol's blocking pool (ureq is blocking), so that a slow Consul —
/// the token preflight may wait a minute for ACL replication, a bootstrap retries as long
/// — never stalls the loop: restarts, the status socket and the watchdog go on. The loop
/// awaits the tasks among its other events. One sync at a time; one refresh per Envoy at
/// a time.
pub(super) struct Workers {
    running: Vec<smol::Task<Outcome>>,
    pub(super) syncing: bool,
    pub(super) checking: bool,
    pub(super) refreshing: BTreeSet<(String, String)>,
}

impl Workers {
    pub(super) fn new() -> Workers {
        Workers {
            running: Vec::new(),
            syncing: false,
            checking: false,
            refreshing: BTreeSet::new(),
        }
    }

    /// Runs `work` on the blocking pool. When no thread can be made, the pool queues it
    /// until one of its threads is free.
    pub(super) fn spawn(&mut self, work: impl FnOnce() -> Outcome + Send + 'static) {
        self.running.push(smol::unblock(work));
    }

    /// The outcome of a task that finished, if one did; otherwise `cx` is woken when one
    /// does.
    pub(super) fn poll_finished(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        for i in 0..self.running.len() {
            if let Poll::Ready(outcome) = Pin::new(&mut self.running[i]).poll(cx) {
                drop(self.running.swap_remove(i));
                return Poll::Ready(outcome);
            }
        }
        Poll::Pending
    }
}
