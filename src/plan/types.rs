//! The plan's types: what every group, service and task will be.

use super::*;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub node_name: String,
    pub advertise_address: String,
    pub advertise_address_source: String,
    pub data_dir: String,
    pub run_dir: String,
    /// Where the tasks' cgroups are (`ResourcesPlan::cgroup`).
    pub cgroup_parent: String,
    pub bridge: BridgePlan,
    pub dynamic_ports: String,
    pub groups: Vec<GroupPlan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReschedulePlan {
    pub delay: Dur,
    pub max_delay: Dur,
}

#[derive(Debug, Serialize)]
pub struct GroupPlan {
    pub name: String,
    pub alloc_id: String,
    pub mode: String,
    pub netns: Option<NetnsPlan>,
    /// Routes inside the namespace.
    pub routes: Vec<String>,
    /// The port-mapping rules this group adds (nft syntax), if the firewall is ours.
    pub firewall_rules: Vec<String>,
    pub alloc_dir: String,
    pub shutdown_delay: Dur,
    /// The back-off before the group starts again after a task failed for good.
    pub reschedule: ReschedulePlan,
    pub ports: Vec<PortPlan>,
    pub services: Vec<ServicePlan>,
    pub tasks: Vec<TaskPlan>,
    /// Transparent proxy redirection inside the namespace, if a sidecar asks for it.
    pub tproxy: Option<TproxyPlan>,
    /// The `script` checks outpost runs itself, as Nomad does, reporting to their TTL
    /// checks in Consul.
    pub script_checks: Vec<ScriptCheckPlan>,
    /// The group's resolv.conf, which its tasks see at /etc/resolv.conf: from its `dns`
    /// block, or Consul's DNS with transparent proxy (none: the host's).
    pub resolv_conf: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ScriptCheckPlan {
    /// The TTL check in Consul that the result goes to.
    pub check_id: String,
    pub name: String,
    /// The service the check belongs to (its workload token reports the result).
    pub service_id: String,
    /// The task whose namespace, user, environment and directory it runs in.
    pub task: String,
    /// Command and arguments, `${…}` resolved with the task's environment.
    pub argv: Vec<String>,
    pub interval: Dur,
    pub timeout: Dur,
}

#[derive(Debug, Serialize)]
pub struct ServicePlan {
    pub name: String,
    pub id: String,
    /// `sidecar`, `native`, `gateway` or `none`.
    pub connect: String,
    /// The port registered in Consul: the host port of a label, or the number as written.
    pub port: Option<u16>,
    /// The service's Envoy: its sidecar proxy, or the gateway itself.
    pub proxy: Option<ProxyPlan>,
    /// The task that speaks Connect itself, for a Connect native service.
    pub native_task: Option<String>,
    /// The body of `PUT /v1/agent/service/register` (null for none).
    pub registration: miniserde::json::Value,
    /// The ingress-gateway or terminating-gateway config entry outpost writes with
    /// `PUT /v1/config` (null for other services).
    pub config_entry: miniserde::json::Value,
}

impl ServicePlan {
    /// The task that speaks to Consul's HTTP API itself: a Connect native task, or a
    /// built-in proxy (they get the same environment and files).
    pub fn consul_client_task(&self) -> Option<&str> {
        let builtin = self.proxy.as_ref().filter(|p| !p.is_envoy());
        self.native_task
            .as_deref()
            .or(builtin.map(|p| p.task.as_str()))
    }
}

#[derive(Debug, Serialize)]
pub struct ProxyPlan {
    /// The proxy ID Envoy bootstraps as: the sidecar's, or the gateway service's own.
    pub id: String,
    pub name: String,
    /// The gateway's kind (`-gateway`); none for a sidecar.
    pub gateway: Option<GatewayKind>,
    /// Envoy (under `exec` or `raw_exec`) or the built-in proxy.
    pub driver: crate::config::SidecarDriver,
    /// The sidecar's public port, or the gateway's service port (its WAN port for mesh).
    pub port_label: String,
    pub host_port: u16,
    pub netns_port: u16,
    /// Envoy's admin address; the built-in proxy answers `/ready` and `/status` there.
    pub envoy_admin: String,
    pub envoy_ready: String,
    pub task: String,
}

impl ProxyPlan {
    pub fn is_envoy(&self) -> bool {
        self.driver != crate::config::SidecarDriver::Builtin
    }
}

#[derive(Debug, Serialize)]
pub struct TaskPlan {
    pub name: String,
    /// Nomad's task kind, e.g. `connect-proxy:count-api`, for injected tasks.
    pub kind: Option<String>,
    pub injected: bool,
    pub lifecycle: Lifecycle,
    pub driver: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Always set once planned: the config's, else `TASK_USER` or `ENVOY_UID`.
    pub user: Option<String>,
    /// The capabilities the task keeps (`caps::for_task`).
    pub capabilities: Vec<String>,
    pub dir: String,
    pub kill_signal: KillSignal,
    pub kill_timeout: Dur,
    pub shutdown_delay: Dur,
    pub logs: LogsPlan,
    pub restart: RestartPlan,
    pub resources: ResourcesPlan,
}

/// Nomad's `resources` of a task and the cgroup they apply to.
#[derive(Clone, Debug, Serialize)]
pub struct ResourcesPlan {
    pub cpu_mhz: u32,
    pub memory_mb: u32,
    pub memory_max_mb: Option<u32>,
    /// Relative to each cgroup hierarchy's root: `<parent>/<group>.slice/<task>.scope`.
    pub cgroup: String,
}

/// When a task runs in its group's life (Nomad's `lifecycle` block). Shown and serialized
/// as Nomad writes it: `main`, `prestart`, `prestart sidecar`, `poststart`, …
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Runs to completion (exit 0) before the main tasks start.
    Prestart,
    /// Starts first and runs beside the group (Envoy).
    PrestartSidecar,
    Main,
    /// Starts with the main tasks and may exit.
    Poststart,
    /// Starts with the main tasks and runs beside them.
    PoststartSidecar,
    /// Runs to completion once the main tasks have stopped.
    Poststop,
}

impl Lifecycle {
    pub(super) fn from_hook(hook: &str, sidecar: bool) -> Lifecycle {
        match (hook, sidecar) {
            ("prestart", true) => Lifecycle::PrestartSidecar,
            ("prestart", false) => Lifecycle::Prestart,
            ("poststart", true) => Lifecycle::PoststartSidecar,
            ("poststart", false) => Lifecycle::Poststart,
            ("poststop", _) => Lifecycle::Poststop,
            // validate refuses any other hook.
            _ => Lifecycle::Main,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Prestart => "prestart",
            Lifecycle::PrestartSidecar => "prestart sidecar",
            Lifecycle::Main => "main",
            Lifecycle::Poststart => "poststart",
            Lifecycle::PoststartSidecar => "poststart sidecar",
            Lifecycle::Poststop => "poststop",
        }
    }

    /// Runs as long as the group does, restarted even after exit 0.
    pub fn is_sidecar(self) -> bool {
        matches!(
            self,
            Lifecycle::PrestartSidecar | Lifecycle::PoststartSidecar
        )
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

serialize_as_str!(Lifecycle);

#[derive(Debug, Serialize)]
pub struct LogsPlan {
    pub max_files: u32,
    pub max_file_size_mb: u32,
}

#[derive(Debug, Serialize)]
pub struct RestartPlan {
    pub attempts: u32,
    pub interval: Dur,
    pub delay: Dur,
    pub mode: RestartMode,
}

/// What the restart policy does once `attempts` are used within `interval` (Nomad's
/// `restart.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartMode {
    /// The task fails, and with it the group (rescheduled).
    Fail,
    /// The task waits for the interval to end, then starts again.
    Delay,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Fail => "fail",
            RestartMode::Delay => "delay",
        }
    }
}

serialize_as_str!(RestartMode);

/// The signal that asks a task to stop (validated against `KILL_SIGNALS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillSignal(pub nix::sys::signal::Signal);

impl KillSignal {
    pub fn as_str(self) -> &'static str {
        self.0.as_str()
    }
}

impl std::fmt::Display for KillSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

serialize_as_str!(KillSignal);

impl GroupPlan {
    /// Where the group's resolv.conf is written, when it has one (`resolv_conf`).
    pub fn resolv_conf_path(&self) -> Option<std::path::PathBuf> {
        self.resolv_conf
            .as_ref()
            .map(|_| std::path::Path::new(&self.alloc_dir).join(crate::allocdir::RESOLV_CONF))
    }

    /// What the network makes for this group.
    pub fn net(&self) -> GroupNet<'_> {
        GroupNet {
            name: &self.name,
            netns: self.netns.as_ref(),
            ports: &self.ports,
            tproxy: self.tproxy.as_ref(),
        }
    }
}

impl Plan {
    /// Every group as the network sees it.
    pub fn net_groups(&self) -> Vec<GroupNet<'_>> {
        self.groups.iter().map(GroupPlan::net).collect()
    }

    /// The same node-level plan with no groups (what remains once everything is removed).
    pub fn without_groups(&self) -> Plan {
        Plan {
            node_name: self.node_name.clone(),
            advertise_address: self.advertise_address.clone(),
            advertise_address_source: self.advertise_address_source.clone(),
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            bridge: self.bridge.clone(),
            dynamic_ports: self.dynamic_ports.clone(),
            groups: Vec::new(),
        }
    }
}
