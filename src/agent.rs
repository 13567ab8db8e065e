//! The agent: turns a config into a running node. For now one reconcile pass (`apply`) and
//! `teardown`; the long-running loop (timers, signals, reload) builds on these.

use crate::config::ValidConfig;
use crate::consul::client::Client;
use crate::consul::sync::{self, Wanted};
use crate::plan::{self, HostFacts, Plan};
use crate::{net, state};
use log::{info, warn};

/// Every service the plan registers in Consul, with its body.
fn wanted_services(plan: &Plan) -> Vec<Wanted<'_>> {
    plan.groups
        .iter()
        .flat_map(|g| &g.services)
        .map(|s| Wanted {
            id: &s.id,
            body: &s.registration,
        })
        .collect()
}

/// Registers `wanted` and removes outpost's services that are not in it. Without any
/// services to register, an unreachable Consul is only a warning: such groups need no
/// Consul.
fn sync_consul(valid: &ValidConfig, wanted: &[Wanted]) -> Result<(), String> {
    let client = Client::new(&valid.config.consul)?;
    match sync::sync(&client, wanted, true) {
        Ok(done) => {
            info!(
                "Consul: {} service(s) registered, {} deregistered, {} unchanged",
                done.registered.len(),
                done.deregistered.len(),
                wanted.len() - done.registered.len()
            );
            Ok(())
        }
        Err(e) if wanted.is_empty() && e.is_retryable() => {
            warn!("Consul: cannot check for leftover registrations ({e}); groups need no Consul");
            Ok(())
        }
        Err(e) => Err(format!(
            "Consul registration at {}: {e}",
            valid.config.consul.address
        )),
    }
}

/// Plans from the config and the node state, records the plan's leases before touching the
/// host (so a crash mid-apply re-plans the same addresses and ports), then reconciles.
pub fn apply(valid: &ValidConfig, host: &HostFacts) -> Result<Plan, String> {
    let state_path = state::path_in(&valid.config.agent.data_dir);
    let previous = state::load(&state_path)?;
    let plan = plan::build(valid, &previous, host).map_err(|e| format!("cannot plan: {e}"))?;
    let check = net::self_check(&plan);
    for note in &check.notes {
        info!("{note}");
    }
    if !check.errors.is_empty() {
        return Err(check.errors.join("\n"));
    }
    let next = state::from_plan(&plan);
    if next != previous {
        state::save(&state_path, &next)
            .map_err(|e| format!("cannot write state file {}: {e}", state_path.display()))?;
    }
    net::apply(&plan).map_err(|e| e.to_string())?;
    info!(
        "network applied: {} group(s), bridge {}",
        plan.groups.len(),
        plan.bridge.name
    );
    // After the network: a service must not be advertised before its port is mapped.
    sync_consul(valid, &wanted_services(&plan))?;
    Ok(plan)
}

/// Removes everything outpost made on this host and releases every lease.
pub fn teardown(valid: &ValidConfig, host: &HostFacts) -> Result<(), String> {
    let state_path = state::path_in(&valid.config.agent.data_dir);
    let previous = state::load(&state_path).unwrap_or_else(|e| {
        warn!("{e}; tearing down by name only");
        state::NodeState::default()
    });
    let plan = plan::build(valid, &previous, host).map_err(|e| format!("cannot plan: {e}"))?;
    // Deregister first, so nothing is routed to groups that are going away.
    sync_consul(valid, &[])?;
    net::teardown(&plan).map_err(|e| e.to_string())?;
    if state_path.exists() {
        let empty = state::from_plan(&Plan {
            groups: Vec::new(),
            ..plan
        });
        state::save(&state_path, &empty)
            .map_err(|e| format!("cannot write state file {}: {e}", state_path.display()))?;
    }
    info!("teardown complete");
    Ok(())
}
