//! A group's tasks: the written ones and the injected Envoys, with Nomad's environment,
//! `${…}` interpolation, user and capabilities.

use super::*;

impl Context<'_> {
    /// Variables every task of the group gets (§8.1–8.3).
    pub(super) fn group_env(
        &self,
        group: &Group,
        alloc_id: &str,
        alloc_dir: &str,
        ports: &[PortPlan],
        lease: Option<Ipv4Addr>,
    ) -> EnvMap {
        let cfg = &self.valid.config;
        let mut env = EnvMap::new();
        let job = self.node_name;
        let mut set = |k: &str, v: &str| env.insert(k.to_string(), v.to_string());
        set("NOMAD_ALLOC_DIR", &format!("{alloc_dir}/alloc"));
        set("NOMAD_ALLOC_ID", alloc_id);
        set("NOMAD_SHORT_ALLOC_ID", &alloc_id[..8]);
        set("NOMAD_ALLOC_NAME", &format!("{job}.{}[0]", group.name));
        set("NOMAD_ALLOC_INDEX", "0");
        set("NOMAD_GROUP_NAME", &group.name);
        set("NOMAD_JOB_ID", job);
        set("NOMAD_JOB_NAME", job);
        set("NOMAD_NAMESPACE", "default");
        set("NOMAD_REGION", "global");
        set(
            "NOMAD_DC",
            cfg.consul.datacenter.as_deref().unwrap_or("dc1"),
        );
        set("PATH", DEFAULT_PATH);
        for (key, value) in &group.meta {
            env.insert(format!("NOMAD_META_{key}"), value.clone());
            env.insert(format!("NOMAD_META_{}", key.to_uppercase()), value.clone());
        }
        let alloc_ip = lease.map(|ip| ip.to_string());
        for port in ports {
            env::add_port(
                &mut env,
                &env::PortVars {
                    label: &port.label,
                    host_ip: &self.advertise,
                    host_port: port.host_port,
                    netns_port: port.netns_port,
                    alloc_ip: alloc_ip.as_deref(),
                },
            );
        }
        let upstreams = group
            .services
            .iter()
            .filter_map(|s| s.connect.as_ref()?.sidecar_service.as_ref()?.proxy.as_ref())
            .flat_map(|p| p.upstreams.iter());
        for up in upstreams {
            if let Some(port) = up.local_bind_port {
                env::add_upstream(&mut env, &up.destination_name, port);
            }
        }
        env::clean_prefixed_keys(env)
    }

    pub(super) fn proxy_task<'s>(
        &self,
        gi: usize,
        si: usize,
        service: &'s Service,
        proxy: &ProxyPlan,
        restart: &Restart,
    ) -> TaskSpec<'s> {
        let envoy = &self.valid.config.envoy;
        let overrides = service
            .connect
            .as_ref()
            .and_then(|c| c.sidecar_task.as_ref());
        let builtin = !proxy.is_envoy();
        let (default_command, default_args) = if builtin {
            // This binary, whatever its path (the exec view may not show it): the kernel's
            // link to the agent's own executable, which the forked task still is.
            let args = [
                "proxy",
                "--proxy-id",
                &proxy.id,
                "--admin",
                &proxy.envoy_admin,
            ];
            (SELF_EXE.to_string(), args.map(String::from).to_vec())
        } else {
            let args = vec![
                "-c".to_string(),
                "${NOMAD_SECRETS_DIR}/envoy_bootstrap.json".into(),
                "-l".into(),
                envoy.log_level.clone(),
                "--concurrency".into(),
                envoy.concurrency.to_string(),
                "--disable-hot-restart".into(),
            ];
            (envoy.binary.clone(), args)
        };
        let cleaned = env::clean(&service.name);
        let mut extra_env = EnvMap::new();
        if !builtin {
            extra_env.insert(
                format!("NOMAD_ENVOY_ADMIN_ADDR_{cleaned}"),
                proxy.envoy_admin.clone(),
            );
            extra_env.insert(
                format!("NOMAD_ENVOY_READY_ADDR_{cleaned}"),
                proxy.envoy_ready.clone(),
            );
        }
        static NO_ENV: EnvMap = EnvMap::new();
        // A gateway is the group's main task; a sidecar starts before the group's tasks
        // and runs beside them (§1.2, §1.3).
        let (kind, lifecycle) = match &proxy.gateway {
            Some(gw) => (format!("connect-{gw}:{}", service.name), Lifecycle::Main),
            None => (
                format!("{PROXY_PREFIX}:{}", service.name),
                Lifecycle::PrestartSidecar,
            ),
        };
        TaskSpec {
            name: proxy.task.clone(),
            kind: Some(kind),
            lifecycle,
            driver: proxy.driver.task_driver().into(),
            command: overrides
                .and_then(|t| t.command.clone())
                .unwrap_or(default_command),
            args: overrides
                .and_then(|t| t.args.clone())
                .unwrap_or(default_args),
            user_env: overrides.map_or(&NO_ENV, |t| &t.env),
            extra_env,
            user: overrides.and_then(|t| t.user.clone()),
            cap_add: overrides.map_or_else(Vec::new, |t| t.cap_add.clone()),
            cap_drop: overrides.map_or_else(Vec::new, |t| t.cap_drop.clone()),
            // Envoy drains on SIGTERM; Nomad's docker driver sends the same by default.
            kill_signal: overrides
                .and_then(|t| t.kill_signal.clone())
                .unwrap_or_else(|| "SIGTERM".into()),
            kill_timeout: overrides
                .and_then(|t| t.kill_timeout)
                .unwrap_or(Dur::secs(5)),
            shutdown_delay: overrides
                .and_then(|t| t.shutdown_delay)
                .unwrap_or(Dur::secs(5)),
            logs: overrides.and_then(|t| t.logs).unwrap_or(Logs::PROXY),
            restart: restart.clone(),
            resources: overrides
                .and_then(|t| t.resources)
                .unwrap_or(Resources::PROXY),
            config_path: path!["group", gi, "service", si, "connect", "sidecar_task"],
        }
    }

    pub(super) fn task(
        &self,
        spec: TaskSpec,
        group: &str,
        alloc_dir: &str,
        group_env: &EnvMap,
        problems: &mut Vec<Problem>,
    ) -> TaskPlan {
        let dir = format!("{alloc_dir}/{}", spec.name);
        let parent = self.cgroup_parent();
        let resources = ResourcesPlan {
            cpu_mhz: spec.resources.cpu,
            memory_mb: spec.resources.memory,
            memory_max_mb: spec.resources.memory_max,
            cgroup: crate::config::naming::task_cgroup(&parent, group, &spec.name),
        };
        let (user, capabilities) = user_and_capabilities(&spec);
        let kill_signal = match spec.kill_signal.parse() {
            Ok(signal) => KillSignal(signal),
            Err(_) => {
                // validate refuses these; the plan says so rather than guess one.
                let mut at = spec.config_path.clone();
                at.push(Seg::Key("kill_signal"));
                problems.push(Problem {
                    path: at,
                    target: crate::config::locate::Target::Value,
                    message: format!("kill_signal \"{}\" is not a signal", spec.kill_signal),
                });
                KillSignal(nix::sys::signal::Signal::SIGTERM)
            }
        };
        let mut vars = group_env.clone();
        vars.insert("NOMAD_TASK_NAME".into(), spec.name.clone());
        // The exec driver's tasks see their directories at Nomad's fixed paths (`view`);
        // raw_exec tasks at the host's.
        if spec.driver == "exec" {
            vars.insert("NOMAD_ALLOC_DIR".into(), "/alloc".into());
            vars.insert("NOMAD_TASK_DIR".into(), "/local".into());
            vars.insert("NOMAD_SECRETS_DIR".into(), "/secrets".into());
        } else {
            vars.insert("NOMAD_TASK_DIR".into(), format!("{dir}/local"));
            vars.insert("NOMAD_SECRETS_DIR".into(), format!("{dir}/secrets"));
        }
        vars.insert("NOMAD_CPU_LIMIT".into(), resources.cpu_mhz.to_string());
        vars.insert("NOMAD_MEMORY_LIMIT".into(), resources.memory_mb.to_string());
        if let Some(max) = resources.memory_max_mb {
            vars.insert("NOMAD_MEMORY_MAX_LIMIT".into(), max.to_string());
        }
        vars.insert("NOMAD_PARENT_CGROUP".into(), parent);
        vars.extend(spec.extra_env);
        let node = [
            ("node.unique.name", self.node_name.to_string()),
            (
                "node.datacenter",
                vars.get("NOMAD_DC").cloned().unwrap_or_default(),
            ),
            ("node.region", "global".to_string()),
        ];
        let mut lookup = vars.clone();
        lookup.extend(node.into_iter().map(|(k, v)| (k.to_string(), v)));

        let mut report = |at: Vec<Seg>, names: Vec<String>| {
            for name in names {
                problems.push(Problem {
                    path: at.clone(),
                    target: crate::config::locate::Target::Value,
                    message: format!(
                        "${{{name}}} is not a variable task \"{}\" has (write $${{ for a literal ${{)",
                        spec.name
                    ),
                });
            }
        };
        let sub = |key: Seg| {
            let mut p = spec.config_path.clone();
            p.push(key);
            p
        };
        let mut missing = Vec::new();
        let command = env::interpolate(&spec.command, &lookup, &mut missing);
        report(sub(Seg::Key("command")), std::mem::take(&mut missing));
        let mut argv = vec![command];
        for (i, arg) in spec.args.iter().enumerate() {
            argv.push(env::interpolate(arg, &lookup, &mut missing));
            let mut at = sub(Seg::Key("args"));
            at.push(Seg::Index(i));
            report(at, std::mem::take(&mut missing));
        }
        for (key, value) in spec.user_env {
            let resolved = env::interpolate(value, &lookup, &mut missing);
            let mut at = sub(Seg::Key("env"));
            at.push(Seg::Name(key.clone()));
            report(at, std::mem::take(&mut missing));
            vars.insert(key.clone(), resolved);
        }
        TaskPlan {
            name: spec.name,
            kind: spec.kind.clone(),
            injected: spec.kind.is_some(),
            lifecycle: spec.lifecycle,
            driver: spec.driver,
            argv,
            env: vars,
            user: Some(user),
            capabilities,
            dir,
            kill_signal,
            kill_timeout: spec.kill_timeout,
            shutdown_delay: spec.shutdown_delay,
            logs: LogsPlan {
                max_files: spec.logs.max_files,
                max_file_size_mb: spec.logs.max_file_size,
            },
            restart: RestartPlan {
                attempts: spec.restart.attempts,
                interval: spec.restart.interval,
                delay: spec.restart.delay,
                mode: match spec.restart.mode.as_str() {
                    "delay" => RestartMode::Delay,
                    _ => RestartMode::Fail,
                },
            },
            resources,
        }
    }

    fn cgroup_parent(&self) -> String {
        cgroup_parent(&self.valid.config.agent)
    }
}

/// A task before interpolation: written by the user or injected.
/// Who a task runs as when the config does not say (docs/trust-model.md): Nomad's exec
/// driver's `nobody` for the group's own tasks; Envoy gets a user of its own, Nomad's
/// transparent-proxy default uid (the envoy image's user), so the group's tasks cannot read
/// its bootstrap or its memory. Then the capabilities that user keeps (`caps`).
fn user_and_capabilities(spec: &TaskSpec) -> (String, Vec<String>) {
    let default = if spec.kind.is_some() {
        ENVOY_UID
    } else {
        TASK_USER
    };
    let user = spec.user.clone().unwrap_or_else(|| default.to_string());
    let root = user == "root" || user == "0";
    let caps = crate::caps::for_task(root, &spec.cap_add, &spec.cap_drop)
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    (user, caps)
}

/// The built-in proxy's command: the running binary itself.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The user of tasks that name none.
pub const TASK_USER: &str = "nobody";
/// Envoy's uid when its task names none (Nomad's `transparent_proxy.uid` default).
pub const ENVOY_UID: &str = "101";

pub(super) struct TaskSpec<'a> {
    pub(super) name: String,
    pub(super) kind: Option<String>,
    pub(super) lifecycle: Lifecycle,
    pub(super) driver: String,
    pub(super) command: String,
    pub(super) args: Vec<String>,
    pub(super) user_env: &'a EnvMap,
    pub(super) extra_env: EnvMap,
    pub(super) user: Option<String>,
    pub(super) cap_add: Vec<String>,
    pub(super) cap_drop: Vec<String>,
    pub(super) kill_signal: String,
    pub(super) kill_timeout: Dur,
    pub(super) shutdown_delay: Dur,
    pub(super) logs: Logs,
    pub(super) restart: Restart,
    pub(super) resources: Resources,
    pub(super) config_path: Vec<Seg>,
}

/// The node's parent cgroup (`agent.cgroup_parent`, else one per run_dir).
pub(super) fn cgroup_parent(agent: &crate::config::Agent) -> String {
    match &agent.cgroup_parent {
        Some(parent) => parent.trim_start_matches('/').to_string(),
        None => crate::config::naming::default_cgroup_parent(&agent.run_dir),
    }
}
