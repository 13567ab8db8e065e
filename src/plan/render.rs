//! `outpost plan` output: readable text (injected tasks marked as `nomad job inspect` shows
//! their kind) and indented JSON with every detail.

use super::{GroupPlan, Plan, TaskPlan};
use miniserde::json::{Number, Value};
use std::fmt::Write;

/// Pretty JSON (2-space indent, keys sorted: miniserde objects are ordered maps), ending
/// with a newline.
pub fn json(plan: &Plan) -> String {
    let value: Value = match miniserde::json::from_str(&miniserde::json::to_string(plan)) {
        Ok(v) => v,
        // Our own serialisation always parses back; keep the compact form if it ever did not.
        Err(_) => return miniserde::json::to_string(plan) + "\n",
    };
    let mut out = String::new();
    write_value(&mut out, &value, 0);
    out.push('\n');
    out
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    let pad = |n: usize| "  ".repeat(n);
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(Number::U64(n)) => out.push_str(&n.to_string()),
        Value::Number(Number::I64(n)) => out.push_str(&n.to_string()),
        Value::Number(Number::F64(n)) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&miniserde::json::to_string(s)),
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                write_value(out, item, depth + 1);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (key, item)) in map.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(&miniserde::json::to_string(key));
                out.push_str(": ");
                write_value(out, item, depth + 1);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

/// Variables shown in the text view; the rest are counted (`--json` lists all).
fn is_notable(key: &str) -> bool {
    key.starts_with("NOMAD_UPSTREAM_ADDR_")
        || key.starts_with("NOMAD_ENVOY_")
        || !(key.starts_with("NOMAD_") || key == "PATH")
}

/// Which limits this host enforces (`cgroup::Host`), for the marks `text` puts on them.
#[derive(Clone, Copy, Debug)]
pub struct Enforced {
    pub memory: bool,
    pub cpu: bool,
}

pub fn text(plan: &Plan, enforced: Enforced) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node \"{}\", advertise address {} ({})",
        plan.node_name, plan.advertise_address, plan.advertise_address_source
    );
    let ipv6 = match (&plan.bridge.address_ipv6, plan.bridge.subnet_ipv6) {
        (Some(address), Some(subnet)) => format!(" and {address} (subnet_ipv6 {subnet})"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "bridge {} {} (subnet {}){ipv6}, dynamic ports {}, firewall {}",
        plan.bridge.name,
        plan.bridge.address,
        plan.bridge.subnet,
        plan.dynamic_ports,
        plan.bridge.firewall.as_str()
    );
    let _ = writeln!(
        out,
        "state {}/state.json, run dir {}",
        plan.data_dir, plan.run_dir
    );
    if plan.groups.is_empty() {
        out.push_str("\nno groups\n");
    }
    for group in &plan.groups {
        out.push('\n');
        group_text(&mut out, group, enforced);
    }
    out
}

fn group_text(out: &mut String, group: &GroupPlan, enforced: Enforced) {
    let _ = writeln!(out, "+ Group \"{}\" ({} network)", group.name, group.mode);
    if let Some(ns) = &group.netns {
        let _ = writeln!(
            out,
            "    netns    {} ({}), host veth {}",
            ns.name, ns.path, ns.host_veth
        );
        let _ = writeln!(
            out,
            "    address  {} on {}, default via {}",
            ns.address, ns.interface, ns.gateway
        );
        if let (Some(address), Some(gateway)) = (&ns.address_ipv6, &ns.gateway_ipv6) {
            let _ = writeln!(
                out,
                "    address  {address} on {}, default via {gateway}",
                ns.interface
            );
        }
    }
    let _ = writeln!(
        out,
        "    stop     deregister, wait shutdown_delay {}; a task failed for good restarts the group after {} doubling to {}",
        group.shutdown_delay, group.reschedule.delay, group.reschedule.max_delay
    );
    for port in &group.ports {
        let how = match (port.dynamic, port.injected) {
            (true, true) => " (dynamic, injected)",
            (true, false) => " (dynamic)",
            (false, _) => "",
        };
        let _ = writeln!(
            out,
            "    port     {:<28} host {} -> {}{how}",
            port.label, port.host_port, port.netns_port
        );
    }
    for service in &group.services {
        let port = service.port.map_or("-".to_string(), |p| p.to_string());
        let _ = writeln!(
            out,
            "    service  {} (id {}, port {port}, connect {})",
            service.name, service.id, service.connect
        );
        match &service.proxy {
            Some(s) if s.gateway.is_some() => {
                let kind = s.gateway.map_or("", |g| g.as_str());
                let _ = writeln!(
                    out,
                    "      {kind} gateway {} on port {} (host {} -> {}), envoy admin {} ready {}",
                    s.id, s.port_label, s.host_port, s.netns_port, s.envoy_admin, s.envoy_ready
                );
                let config = registration_field(&service.registration, "Proxy");
                let _ = writeln!(out, "      proxy  {config}");
            }
            Some(s) if s.is_envoy() => {
                let _ = writeln!(
                    out,
                    "      sidecar {} on port {} (host {} -> {}), envoy ({}) admin {} ready {}",
                    s.id,
                    s.port_label,
                    s.host_port,
                    s.netns_port,
                    s.driver.as_str(),
                    s.envoy_admin,
                    s.envoy_ready
                );
                if let Some(local) = sidecar_local_port(&service.registration) {
                    let _ = writeln!(out, "      sidecar dials the app on port {local}");
                }
            }
            Some(s) => {
                let _ = writeln!(
                    out,
                    "      sidecar {} on port {} (host {} -> {}), built-in proxy, admin {}",
                    s.id, s.port_label, s.host_port, s.netns_port, s.envoy_admin
                );
                if let Some(local) = sidecar_local_port(&service.registration) {
                    let _ = writeln!(out, "      sidecar dials the app on port {local}");
                }
            }
            None => {}
        }
        if !matches!(service.config_entry, Value::Null) {
            let _ = writeln!(
                out,
                "      config entry (PUT /v1/config) {}",
                miniserde::json::to_string(&service.config_entry)
            );
        }
    }
    if let Some(resolv) = &group.resolv_conf {
        let lines: Vec<&str> = resolv.lines().collect();
        let _ = writeln!(
            out,
            "    dns      /etc/resolv.conf for its tasks: {}",
            lines.join("; ")
        );
    }
    for check in &group.script_checks {
        let _ = writeln!(
            out,
            "    script   check {:?} every {} (timeout {}) in task {}, reported to TTL check {}: {}",
            check.name,
            check.interval,
            check.timeout,
            check.task,
            check.check_id,
            check.argv.join(" ")
        );
    }
    if let Some(t) = &group.tproxy {
        let _ = writeln!(
            out,
            "    tproxy   envoy uid {}, inbound :{}, outbound :{}, DNS {}; nft table ip {} in the namespace:",
            t.proxy_uid,
            t.inbound_port,
            t.outbound_port,
            t.dns.as_deref().unwrap_or("not redirected"),
            crate::net::tproxy::TABLE
        );
        for rule in &t.rules {
            let _ = writeln!(out, "      {rule}");
        }
    }
    for task in &group.tasks {
        task_text(out, task, enforced);
    }
}

fn task_text(out: &mut String, task: &TaskPlan, enforced: Enforced) {
    let what = match &task.kind {
        Some(kind) => format!("injected {kind}, {}", task.lifecycle),
        None => task.lifecycle.to_string(),
    };
    let _ = writeln!(out, "  + Task \"{}\" ({what})", task.name);
    let _ = writeln!(out, "      argv   {}", task.argv.join(" "));
    let view = match task.driver.as_str() {
        "exec" => "its own view: /alloc, /local, /secrets, a private /tmp",
        _ => "the host's paths",
    };
    let _ = writeln!(out, "      driver {} ({view})", task.driver);
    if let Some(user) = &task.user {
        let caps = if task.capabilities.is_empty() {
            "none".to_string()
        } else {
            task.capabilities.join(" ")
        };
        let _ = writeln!(out, "      user   {user}; capabilities {caps}");
    }
    let _ = writeln!(
        out,
        "      stop   {} after shutdown_delay {}, SIGKILL after {}; logs {} x {} MB; restart {} in {} delay {} mode {}",
        task.kill_signal,
        task.shutdown_delay,
        task.kill_timeout,
        task.logs.max_files,
        task.logs.max_file_size_mb,
        task.restart.attempts,
        task.restart.interval,
        task.restart.delay,
        task.restart.mode.as_str()
    );
    let r = &task.resources;
    let mark = |on: bool| if on { "" } else { " (not enforced here)" };
    let memory = match r.memory_max_mb {
        Some(max) => format!("memory {max} MB, {} MB kept", r.memory_mb),
        None => format!("memory {} MB", r.memory_mb),
    };
    let _ = writeln!(
        out,
        "      limits cpu {} MHz{}, {memory}{}; cgroup {}",
        r.cpu_mhz,
        mark(enforced.cpu),
        mark(enforced.memory),
        r.cgroup
    );
    let mut hidden = 0;
    for (key, value) in &task.env {
        if is_notable(key) {
            let _ = writeln!(out, "      env    {key}={value}");
        } else {
            hidden += 1;
        }
    }
    let _ = writeln!(
        out,
        "      env    (+{hidden} NOMAD_* and PATH; plan --json lists all)"
    );
}

/// One field of a registration body as compact JSON (`null` when absent).
/// `LocalServicePort` of the sidecar's proxy, when the registration sets it (else Consul
/// dials the registered port).
fn sidecar_local_port(body: &Value) -> Option<String> {
    let mut at = body;
    for key in ["Connect", "SidecarService", "Proxy", "LocalServicePort"] {
        at = match at {
            Value::Object(o) => o.get(key)?,
            _ => return None,
        };
    }
    Some(miniserde::json::to_string(at))
}

fn registration_field(body: &Value, key: &str) -> String {
    match body {
        Value::Object(o) => miniserde::json::to_string(o.get(key).unwrap_or(&Value::Null)),
        _ => "null".into(),
    }
}
