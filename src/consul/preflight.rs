//! Preflight checks before an Envoy bootstrap (reference/nomad-connect.md §3.7–3.9,
//! consul-api.md §4.3): a new token is read back with `?stale` until the local agent can
//! resolve it (a stale read is not negatively cached), then the sidecar's registration is
//! read back from the local agent. On timeout the error names the step, the time waited
//! and Consul's last answer, never the token.

use super::client::{Client, ConsulError};
use crate::config::Preflight;
use crate::error::Error;
use crate::retry::{Backoff, retry_until};
use std::time::Duration;

/// `GET /v1/acl/token/self?stale` with `client`'s token until it answers 200. ACLs
/// disabled (401) passes: there is no token to wait for.
pub fn token(client: &Client, p: &Preflight, what: &str) -> Result<(), Error> {
    // Nomad: first try at once, then a constant 2 x base.
    let backoff = Backoff {
        base: p.token_base.0 * 2,
        factor: 1,
        max: p.token_base.0 * 2,
        jitter: Duration::ZERO,
    };
    let step = format!("ACL token preflight for {what}");
    let result = retry_until(
        &step,
        p.token_timeout.0,
        backoff,
        || match client.get("/v1/acl/token/self?stale") {
            Err(ConsulError::Rejected { status: 401, .. }) => Ok(()),
            other => other.map(|_| ()),
        },
        |e| e.is_retryable() || matches!(e, ConsulError::AclNotFound(_)),
    );
    result.map_err(|gave_up| {
        Error::temporary(format!(
            "ACL token preflight for {what}: the local Consul agent did not resolve the token within {} ({} attempts); last answer: {}",
            crate::retry::secs(gave_up.waited),
            gave_up.attempts,
            gave_up.last
        ))
    })
}

/// `GET /v1/agent/service/<id>` until the local agent has the sidecar registration.
pub fn service(client: &Client, p: &Preflight, sidecar_id: &str) -> Result<(), Error> {
    // Nomad: 1s doubling with up to 500ms jitter, within the 60s budget.
    let backoff = Backoff {
        base: p.service_base.0,
        factor: 2,
        max: p.service_timeout.0,
        jitter: Duration::from_millis(500),
    };
    let step = format!("service preflight for {sidecar_id}");
    let result = retry_until(
        &step,
        p.service_timeout.0,
        backoff,
        || {
            client
                .get(&format!("/v1/agent/service/{sidecar_id}"))
                .map(|_| ())
        },
        |e| {
            e.is_retryable()
                || matches!(
                    e,
                    ConsulError::AclNotFound(_) | ConsulError::Rejected { status: 404, .. }
                )
        },
    );
    result.map_err(|gave_up| {
        Error::temporary(format!(
            "service preflight: the local Consul agent did not show {sidecar_id} within {} ({} attempts); last answer: {}",
            crate::retry::secs(gave_up.waited),
            gave_up.attempts,
            gave_up.last
        ))
    })
}
