//! Nomad's script checks: Consul only holds a TTL check; outpost runs the command itself,
//! in its task's namespace, as its user, with its environment and directory, every
//! `interval` (killed after `timeout`), and reports the result with
//! `PUT /v1/agent/check/update/<id>`: passing on exit 0, warning on 1, critical otherwise,
//! the output cut to Consul's 4 KiB.

use crate::config::ValidConfig;
use crate::consul::client::Client;
use crate::error::Error;
use crate::plan::{GroupPlan, ScriptCheckPlan};
use crate::supervise::{self, Confinement};
use miniserde::json::{Object, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

/// Consul keeps at most this much of a check's output (`check_output_max_size`).
const OUTPUT_MAX: usize = 4096;

/// When each check runs next, and which are running now.
#[derive(Default)]
pub(super) struct ScriptChecks {
    next: BTreeMap<String, Instant>,
    running: BTreeSet<String>,
    /// The last status reported, to log changes only.
    last: BTreeMap<String, String>,
}

impl ScriptChecks {
    /// The checks of `group` (which runs) that are due now; each is marked running until
    /// `finished`. A check runs first as soon as its group runs, then every interval.
    pub(super) fn due<'p>(
        &mut self,
        group: &'p GroupPlan,
        now: Instant,
    ) -> Vec<&'p ScriptCheckPlan> {
        let due: Vec<&ScriptCheckPlan> = group
            .script_checks
            .iter()
            .filter(|c| !self.running.contains(&c.check_id))
            .filter(|c| self.next.get(&c.check_id).is_none_or(|at| *at <= now))
            .collect();
        for check in &due {
            self.running.insert(check.check_id.clone());
            self.next
                .insert(check.check_id.clone(), now + check.interval.0);
        }
        due
    }

    /// A group that does not run has no checks to run; they start afresh with it.
    pub(super) fn forget(&mut self, group: &GroupPlan) {
        for check in &group.script_checks {
            if !self.running.contains(&check.check_id) {
                self.next.remove(&check.check_id);
            }
        }
    }

    pub(super) fn finished(&mut self, check_id: &str, result: &Result<&'static str, Error>) {
        self.running.remove(check_id);
        let now = match result {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        };
        if self.last.get(check_id) != Some(&now) {
            match result {
                Ok(status) => log::info!("script check {check_id}: {status}"),
                Err(e) => log::warn!("script check {check_id}: {e}"),
            }
            self.last.insert(check_id.to_string(), now);
        }
    }

    /// The earliest time a check is due, for the loop's timer.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.next
            .iter()
            .filter(|(id, _)| !self.running.contains(*id))
            .map(|(_, at)| *at)
            .min()
    }
}

/// Runs one check and reports it to Consul with `token` (the service's workload token,
/// else the agent's). Returns the status reported.
pub(super) fn run(
    valid: &ValidConfig,
    group: &GroupPlan,
    check: &ScriptCheckPlan,
    token: Option<&str>,
) -> Result<&'static str, Error> {
    let task = group
        .tasks
        .iter()
        .find(|t| t.name == check.task)
        .ok_or_else(|| Error::permanent(format!("no task {} in the plan", check.task)))?;
    let env: Vec<(String, String)> = task.env.clone().into_iter().collect();
    let resolv_conf = group.resolv_conf_path();
    let confine = Confinement {
        netns: group.netns.as_ref().map(|n| Path::new(&n.path)),
        user: task.user.as_deref(),
        caps: Some(crate::caps::set_of(&task.capabilities)),
        dir: Some(Path::new(&task.dir)),
        resolv_conf: resolv_conf.as_deref(),
    };
    let (status, output) =
        match supervise::capture_in(&confine, &check.argv, &env, check.timeout.0, OUTPUT_MAX) {
            Ok(out) => {
                let status = match out.code {
                    0 => "passing",
                    1 => "warning",
                    _ => "critical",
                };
                (status, out.stdout + &out.stderr)
            }
            // Did not start, or did not finish in time: Nomad reports critical.
            Err(e) => ("critical", e.to_string()),
        };
    let mut body = Object::new();
    body.insert("Status".into(), Value::String(status.into()));
    let output = crate::text::cut(&output, OUTPUT_MAX);
    body.insert("Output".into(), Value::String(output));
    let client = Client::new(&valid.config.consul)?;
    let client = match token {
        Some(t) => client.with_token(t),
        None => client,
    };
    client
        .put(
            &format!("/v1/agent/check/update/{}", check.check_id),
            &miniserde::json::to_string(&Value::Object(body)),
        )
        .map_err(|e| Error::from(e).context("reporting to Consul"))?;
    Ok(status)
}
