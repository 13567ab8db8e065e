//! Anti-entropy: keep the local agent's registrations equal to the plan. The agent's loop
//! (agent::run) re-syncs everything every `consul.sync_interval` (Nomad: 30 s) and, between
//! those, asks this cheap presence check every `QUICK_CHECK`, so a Consul agent restart
//! (which forgets every registration) is repaired within seconds, not at the next full sync.

use super::client::{Client, ConsulError};
use super::sync;
use std::time::Duration;

pub const QUICK_CHECK: Duration = Duration::from_secs(2);

/// The first of `ids` (services and their sidecars) the agent does not have; one
/// `GET /v1/agent/services`.
pub fn missing(client: &Client, ids: &[String]) -> Result<Option<String>, ConsulError> {
    let services = sync::agent_services(client)?;
    Ok(ids.iter().find(|id| !services.contains_key(*id)).cloned())
}
