//! Anti-entropy: keep the local agent's registrations equal to the plan.
//! - a full sync every `consul.sync_interval` (Nomad: 30s);
//! - a cheap presence check every few seconds, so an agent restart (which forgets every
//!   registration) is repaired within seconds, not at the next full sync;
//! - `_outpost-*` services no group owns are removed only after a start-up probation
//!   (Nomad: 1 minute), so a restarted outpost does not remove what it is about to re-plan;
//! - after a failure, retry after 1s x consecutive failures, at most 30s (Nomad's rule).
//!   The first failure and the recovery are logged; repeats only at debug level.
//!
//! The caller owns the clock: `tick(now)` does what is due and says when to call again.

use super::client::Client;
use super::sync::{self, Wanted};
use log::{debug, info, warn};
use std::time::{Duration, Instant};

pub const QUICK_CHECK: Duration = Duration::from_secs(2);
pub const PROBATION: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(30);

pub struct AntiEntropy {
    full_interval: Duration,
    quick_interval: Duration,
    probation_until: Instant,
    next_full: Instant,
    next_quick: Instant,
    failures: u32,
}

/// What a tick did.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    Idle,
    Checked,
    Synced {
        registered: usize,
        deregistered: usize,
    },
    Failed,
}

impl AntiEntropy {
    pub fn new(
        full_interval: Duration,
        quick_interval: Duration,
        probation: Duration,
        now: Instant,
    ) -> AntiEntropy {
        AntiEntropy {
            full_interval,
            quick_interval,
            probation_until: now + probation,
            next_full: now,
            next_quick: now + quick_interval,
            failures: 0,
        }
    }

    /// When the next tick has work.
    pub fn next_due(&self) -> Instant {
        self.next_full.min(self.next_quick)
    }

    pub fn tick(&mut self, client: &Client, wanted: &[Wanted], now: Instant) -> Tick {
        if now < self.next_full {
            if now < self.next_quick {
                return Tick::Idle;
            }
            self.next_quick = now + self.quick_interval;
            match self.missing(client, wanted) {
                Ok(None) => return Tick::Checked,
                Ok(Some(id)) => {
                    info!("Consul lost service {id} (agent restarted?); re-registering")
                }
                Err(e) => return self.failed(&e, now),
            }
        }
        let remove_orphans = now >= self.probation_until;
        match sync::sync(client, wanted, remove_orphans) {
            Ok(done) => {
                if self.failures > 0 {
                    info!(
                        "Consul answers again after {} failed attempt(s)",
                        self.failures
                    );
                }
                self.failures = 0;
                self.next_full = now + self.full_interval;
                self.next_quick = now + self.quick_interval;
                Tick::Synced {
                    registered: done.registered.len(),
                    deregistered: done.deregistered.len(),
                }
            }
            Err(e) => self.failed(&e.to_string(), now),
        }
    }

    fn failed(&mut self, error: &str, now: Instant) -> Tick {
        self.failures += 1;
        let delay = (Duration::from_secs(1) * self.failures).min(MAX_RETRY);
        if self.failures == 1 {
            warn!(
                "Consul sync failed: {error}; retrying in {}s",
                delay.as_secs()
            );
        } else {
            debug!(
                "Consul sync failed again ({} in a row): {error}; retrying in {}s",
                self.failures,
                delay.as_secs()
            );
        }
        self.next_full = now + delay;
        self.next_quick = self.next_full;
        Tick::Failed
    }

    /// The first wanted service (or its sidecar) the agent does not have.
    fn missing(&self, client: &Client, wanted: &[Wanted]) -> Result<Option<String>, String> {
        let services = sync::agent_services(client).map_err(|e| e.to_string())?;
        for w in wanted {
            if !services.contains_key(w.id) {
                return Ok(Some(w.id.to_string()));
            }
            let sidecar = format!("{}-sidecar-proxy", w.id);
            if sync::has_sidecar(w.body) && !services.contains_key(&sidecar) {
                return Ok(Some(sidecar));
            }
        }
        Ok(None)
    }
}
