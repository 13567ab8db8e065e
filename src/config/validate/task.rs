//! Tasks and sidecar_task overrides: names, commands, users, signals, restart, logs.

use super::*;

pub(super) fn check_tasks(c: &mut Checker, gi: usize, group: &Group) {
    let mut names = BTreeSet::new();
    // The injected proxy of each service: its sidecar, or the gateway task.
    let reserved: BTreeMap<String, &str> = group
        .services
        .iter()
        .filter(|s| {
            s.connect
                .as_ref()
                .is_some_and(|k| k.sidecar_service.is_some())
                || crate::config::naming::gateway_kind(s).is_some()
        })
        .map(|s| {
            let prefix = crate::config::naming::gateway_kind(s)
                .map_or(PROXY_PREFIX.to_string(), |kind| format!("connect-{kind}"));
            (format!("{prefix}-{}", s.name), s.name.as_str())
        })
        .collect();
    for (ti, task) in group.tasks.iter().enumerate() {
        let at = |key| path!["group", gi, "task", ti, key];
        if !is_task_name(&task.name) {
            c.err(
                at("name"),
                format!("task name \"{}\" must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit", task.name),
            );
        } else if let Some(why) = reserved_dir_name(&task.name) {
            c.err(
                at("name"),
                format!("task name \"{}\" is reserved: {why}", task.name),
            );
        } else if let Some(service) = reserved.get(&task.name) {
            c.err(
                at("name"),
                format!(
                    "task name \"{}\" is reserved for the proxy of service \"{service}\"",
                    task.name
                ),
            );
        } else if !names.insert(task.name.as_str()) {
            c.err(
                at("name"),
                format!(
                    "duplicate task name \"{}\" in group \"{}\"",
                    task.name, group.name
                ),
            );
        }
        c.one_of(at("driver"), "driver", &task.driver, &["exec", "raw_exec"]);
        check_command(c, at("command"), &task.command);
        c.env_names(at("env"), &task.env);
        if let Some(user) = &task.user {
            check_user(c, at("user"), user);
        }
        check_caps(c, at("cap_add"), &task.cap_add);
        check_caps(c, at("cap_drop"), &task.cap_drop);
        if let Some(lc) = &task.lifecycle {
            c.one_of(
                path!["group", gi, "task", ti, "lifecycle", "hook"],
                "lifecycle hook",
                &lc.hook,
                &["prestart", "poststart", "poststop"],
            );
            if lc.hook == "poststop" && lc.sidecar {
                c.err(
                    path!["group", gi, "task", ti, "lifecycle", "sidecar"],
                    "a poststop task cannot be a sidecar",
                );
            }
        }
        if let Some(restart) = &task.restart {
            check_restart(c, at("restart"), restart);
        }
        if let Some(logs) = &task.logs {
            check_logs(c, at("logs"), logs);
        }
        check_signal(c, at("kill_signal"), &task.kill_signal);
        check_resources(c, at("resources"), &task.resources);
    }
}

/// Nomad's bounds: at least 1 MHz and 10 MB; `memory_max` not below `memory`.
fn check_resources(c: &mut Checker, at: Vec<Seg>, r: &Resources) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    if r.cpu < 1 {
        c.err(sub("cpu"), "resources.cpu must be at least 1 (MHz)");
    }
    if r.memory < 10 {
        c.err(
            sub("memory"),
            format!(
                "resources.memory must be at least 10 (MB); got {}",
                r.memory
            ),
        );
    }
    if let Some(max) = r.memory_max
        && max < r.memory
    {
        c.err(
            sub("memory_max"),
            format!(
                "resources.memory_max ({max} MB) must not be below resources.memory ({} MB)",
                r.memory
            ),
        );
    }
}

pub(super) fn check_sidecar_task(c: &mut Checker, at: Vec<Seg>, task: &SidecarTask) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    if let Some(name) = &task.name {
        if !is_task_name(name) {
            c.err(
                sub("name"),
                format!("task name \"{name}\" must be 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit"),
            );
        } else if let Some(why) = reserved_dir_name(name) {
            c.err(
                sub("name"),
                format!("task name \"{name}\" is reserved: {why}"),
            );
        }
    }
    if let Some(cmd) = &task.command {
        check_command(c, sub("command"), cmd);
    }
    c.env_names(sub("env"), &task.env);
    if let Some(user) = &task.user {
        check_user(c, sub("user"), user);
    }
    check_caps(c, sub("cap_add"), &task.cap_add);
    check_caps(c, sub("cap_drop"), &task.cap_drop);
    if let Some(signal) = &task.kill_signal {
        check_signal(c, sub("kill_signal"), signal);
    }
    if let Some(logs) = &task.logs {
        check_logs(c, sub("logs"), logs);
    }
    if let Some(resources) = &task.resources {
        check_resources(c, sub("resources"), resources);
    }
}

/// Why `name` cannot be a task's: a task's directory is `<group dir>/<name>`, beside the
/// group's own entries, which a task must never be given.
fn reserved_dir_name(name: &str) -> Option<&'static str> {
    GROUP_DIR_ENTRIES
        .iter()
        .find(|(entry, _)| *entry == name)
        .map(|(_, why)| *why)
}

/// Commands are exec'd without a PATH search, so they must be absolute, or start in one of
/// the task's own directories.
fn check_command(c: &mut Checker, at: Vec<Seg>, command: &str) {
    const DIR_VARS: &[&str] = &[
        "${NOMAD_TASK_DIR}/",
        "${NOMAD_ALLOC_DIR}/",
        "${NOMAD_SECRETS_DIR}/",
    ];
    if DIR_VARS.iter().any(|v| command.starts_with(v)) {
        return;
    }
    if !command.starts_with('/') {
        c.err(
            at,
            format!("command \"{command}\" must be an absolute path (tasks do not search PATH), or start with ${{NOMAD_TASK_DIR}}/"),
        );
    }
}

fn check_user(c: &mut Checker, at: Vec<Seg>, user: &str) {
    let numeric = !user.is_empty() && user.chars().all(|ch| ch.is_ascii_digit());
    let named = user.len() <= 32
        && user.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
        && user
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-');
    if !numeric && !named {
        c.err(
            at,
            format!("user \"{user}\" is neither a user name nor a numeric uid"),
        );
    }
}

fn check_caps(c: &mut Checker, at: Vec<Seg>, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        if !crate::caps::is_known(name) {
            let mut place = at.clone();
            place.push(Seg::Index(i));
            c.err(
                place,
                format!("\"{name}\" is not a Linux capability (write it as Nomad does: \"net_admin\", or \"all\")"),
            );
        }
    }
}

fn check_signal(c: &mut Checker, at: Vec<Seg>, signal: &str) {
    if !KILL_SIGNALS.contains(&signal) {
        c.err(
            at,
            format!(
                "kill_signal \"{signal}\" must be one of {}",
                KILL_SIGNALS.join(", ")
            ),
        );
    }
}

pub(super) fn check_restart(c: &mut Checker, at: Vec<Seg>, restart: &Restart) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    c.one_of(
        sub("mode"),
        "restart mode",
        &restart.mode,
        &["fail", "delay"],
    );
    let needed = restart.delay.0.saturating_mul(restart.attempts);
    if needed > restart.interval.0 {
        c.err(
            sub("interval"),
            format!(
                "Nomad can't restart the TaskGroup {} times in an interval of {} with a delay of {}",
                restart.attempts, restart.interval, restart.delay
            ),
        );
    }
}

fn check_logs(c: &mut Checker, at: Vec<Seg>, logs: &Logs) {
    let sub = |key: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(key));
        p
    };
    if logs.max_files == 0 {
        c.err(sub("max_files"), "logs max_files must be at least 1");
    }
    if logs.max_file_size == 0 {
        c.err(
            sub("max_file_size"),
            "logs max_file_size must be at least 1 (MB)",
        );
    }
}
