//! The config structs read from TOML, one function per struct, defaults from `schema`.
//! Key names follow Nomad's job specification; every table reports unknown keys.

use super::Dur;
use super::read::Table;
use super::schema::*;

fn done(t: Table, keys: &[&str]) {
    t.done(keys);
}

pub fn config(t: Table) -> Config {
    let c = Config {
        agent: t.table("agent").map(agent).unwrap_or_default(),
        consul: t.table("consul").map(consul).unwrap_or_default(),
        network: t.table("network").map(network).unwrap_or_default(),
        envoy: t.table("envoy").map(envoy).unwrap_or_default(),
        connect: t.table("connect").map(connect_defaults).unwrap_or_default(),
        groups: t.tables("group").into_iter().map(group).collect(),
    };
    done(
        t,
        &["agent", "consul", "network", "envoy", "connect", "group"],
    );
    c
}

fn connect_defaults(t: Table) -> ConnectDefaults {
    let c = ConnectDefaults {
        sidecar_driver: t
            .choice(
                "sidecar_driver",
                "connect.sidecar_driver",
                &SidecarDriver::CHOICES,
            )
            .unwrap_or_default(),
    };
    done(t, &["sidecar_driver"]);
    c
}

fn agent(t: Table) -> Agent {
    let d = Agent::default();
    let a = Agent {
        node_name: t.string("node_name"),
        data_dir: t.string("data_dir").unwrap_or(d.data_dir),
        run_dir: t.string("run_dir").unwrap_or(d.run_dir),
        log_level: t.string("log_level").unwrap_or(d.log_level),
        cgroup_parent: t.string("cgroup_parent"),
    };
    done(
        t,
        &[
            "node_name",
            "data_dir",
            "run_dir",
            "log_level",
            "cgroup_parent",
        ],
    );
    a
}

fn consul(t: Table) -> Consul {
    let d = Consul::default();
    let c = Consul {
        address: t.string("address").unwrap_or(d.address),
        token: t.string("token"),
        token_file: t.string("token_file"),
        ca_file: t.string("ca_file"),
        cert_file: t.string("cert_file"),
        key_file: t.string("key_file"),
        tls_server_name: t.string("tls_server_name"),
        auth: t.string("auth"),
        verify_ssl: t.bool_or("verify_ssl", true),
        grpc_address: t.string("grpc_address"),
        grpc_ca_file: t.string("grpc_ca_file"),
        dns_address: t.string("dns_address"),
        datacenter: t.string("datacenter"),
        namespace: t.string("namespace"),
        sync_interval: t.dur("sync_interval").unwrap_or(d.sync_interval),
        acl: t.table("acl").map(acl).unwrap_or_default(),
        preflight: t.table("preflight").map(preflight).unwrap_or_default(),
    };
    done(
        t,
        &[
            "address",
            "token",
            "token_file",
            "ca_file",
            "cert_file",
            "key_file",
            "tls_server_name",
            "auth",
            "verify_ssl",
            "grpc_address",
            "grpc_ca_file",
            "dns_address",
            "datacenter",
            "namespace",
            "sync_interval",
            "acl",
            "preflight",
        ],
    );
    c
}

fn acl(t: Table) -> Acl {
    let d = Acl::default();
    let a = Acl {
        mode: t
            .choice("mode", "consul.acl.mode", &AclMode::CHOICES)
            .unwrap_or(d.mode),
        auth_method: t.string("auth_method").unwrap_or(d.auth_method),
        jwt_file: t.string("jwt_file"),
    };
    done(t, &["mode", "auth_method", "jwt_file"]);
    a
}

fn preflight(t: Table) -> Preflight {
    let d = Preflight::default();
    let p = Preflight {
        token_timeout: t.dur("token_timeout").unwrap_or(d.token_timeout),
        token_base: t.dur("token_base").unwrap_or(d.token_base),
        service_timeout: t.dur("service_timeout").unwrap_or(d.service_timeout),
        service_base: t.dur("service_base").unwrap_or(d.service_base),
    };
    done(
        t,
        &[
            "token_timeout",
            "token_base",
            "service_timeout",
            "service_base",
        ],
    );
    p
}

fn network(t: Table) -> Network {
    let d = Network::default();
    let n = Network {
        bridge: t.string("bridge").unwrap_or(d.bridge),
        subnet: t.string("subnet").unwrap_or(d.subnet),
        subnet_ipv6: t.string("subnet_ipv6"),
        dynamic_ports: t.string("dynamic_ports").unwrap_or(d.dynamic_ports),
        firewall: t.string("firewall").unwrap_or(d.firewall),
        advertise_address: t.string("advertise_address"),
    };
    done(
        t,
        &[
            "bridge",
            "subnet",
            "subnet_ipv6",
            "dynamic_ports",
            "firewall",
            "advertise_address",
        ],
    );
    n
}

fn envoy(t: Table) -> Envoy {
    let d = Envoy::default();
    let e = Envoy {
        binary: t.string("binary").unwrap_or(d.binary),
        bootstrap: t
            .choice("bootstrap", "envoy.bootstrap", &BootstrapMode::CHOICES)
            .unwrap_or(d.bootstrap),
        consul_binary: t.string("consul_binary").unwrap_or(d.consul_binary),
        log_level: t.string("log_level").unwrap_or(d.log_level),
        concurrency: t.u16("concurrency").unwrap_or(d.concurrency),
    };
    done(
        t,
        &[
            "binary",
            "bootstrap",
            "consul_binary",
            "log_level",
            "concurrency",
        ],
    );
    e
}

fn group(t: Table) -> Group {
    let restart = t
        .table("restart")
        .map(|r| read_restart(r, &Restart::default()));
    // A task's own `restart` overrides its group's field by field, as Nomad merges them.
    let base = restart.clone().unwrap_or_default();
    let g = Group {
        name: t.required("name"),
        network: t.table("network").map(group_network),
        services: t.tables("service").into_iter().map(service).collect(),
        tasks: t
            .tables("task")
            .into_iter()
            .map(|t| task(t, &base))
            .collect(),
        restart,
        shutdown_delay: t.dur("shutdown_delay").unwrap_or_default(),
        reschedule: t.table("reschedule").map(reschedule).unwrap_or_default(),
        meta: t.env("meta"),
    };
    done(
        t,
        &[
            "name",
            "network",
            "service",
            "task",
            "restart",
            "shutdown_delay",
            "reschedule",
            "meta",
        ],
    );
    g
}

fn reschedule(t: Table) -> Reschedule {
    let d = Reschedule::default();
    let r = Reschedule {
        delay: t.dur("delay").unwrap_or(d.delay),
        max_delay: t.dur("max_delay").unwrap_or(d.max_delay),
    };
    done(t, &["delay", "max_delay"]);
    r
}

fn group_network(t: Table) -> GroupNetwork {
    let n = GroupNetwork {
        mode: t.string_or("mode", "host"),
        ports: t.tables("port").into_iter().map(port).collect(),
        dns: t.table("dns").map(|d| {
            let dns = Dns {
                servers: d.strings("servers"),
                searches: d.strings("searches"),
                options: d.strings("options"),
            };
            done(d, &["servers", "searches", "options"]);
            dns
        }),
    };
    done(t, &["mode", "port", "dns"]);
    n
}

fn port(t: Table) -> Port {
    let p = Port {
        label: t.required("label"),
        static_port: t.u16("static"),
        to: t.u16("to"),
    };
    done(t, &["label", "static", "to"]);
    p
}

fn service(t: Table) -> Service {
    let s = Service {
        name: t.required("name"),
        port: t.port_ref("port"),
        tags: t.strings("tags"),
        meta: t.env("meta"),
        task: t.string("task"),
        checks: t.tables("check").into_iter().map(check).collect(),
        connect: t.table("connect").map(connect),
    };
    done(
        t,
        &["name", "port", "tags", "meta", "task", "check", "connect"],
    );
    s
}

fn check(t: Table) -> Check {
    let c = Check {
        name: t.string("name"),
        check_type: t.required("type"),
        port: t.port_ref("port"),
        path: t.string("path"),
        protocol: t.string("protocol"),
        method: t.string("method"),
        header: t.string_lists("header"),
        body: t.string("body"),
        interval: t.dur("interval"),
        timeout: t.dur("timeout"),
        ttl: t.dur("ttl"),
        expose: t.bool("expose"),
        command: t.string("command"),
        args: t.strings("args"),
        task: t.string("task"),
        initial_status: t.string("initial_status"),
        tls_skip_verify: t.bool("tls_skip_verify"),
        tls_server_name: t.string("tls_server_name"),
        grpc_service: t.string("grpc_service"),
        grpc_use_tls: t.bool("grpc_use_tls"),
        success_before_passing: t.u32("success_before_passing").unwrap_or(0),
        failures_before_critical: t.u32("failures_before_critical").unwrap_or(0),
        failures_before_warning: t.u32("failures_before_warning").unwrap_or(0),
    };
    done(
        t,
        &[
            "name",
            "type",
            "port",
            "path",
            "protocol",
            "method",
            "header",
            "body",
            "interval",
            "timeout",
            "ttl",
            "expose",
            "command",
            "args",
            "task",
            "initial_status",
            "tls_skip_verify",
            "tls_server_name",
            "grpc_service",
            "grpc_use_tls",
            "success_before_passing",
            "failures_before_critical",
            "failures_before_warning",
        ],
    );
    c
}

fn connect(t: Table) -> Connect {
    let c = Connect {
        native: t.bool("native"),
        sidecar_service: t.table("sidecar_service").map(sidecar_service),
        sidecar_task: t.table("sidecar_task").map(sidecar_task),
        gateway: t.table("gateway").map(gateway),
    };
    done(t, &["native", "sidecar_service", "sidecar_task", "gateway"]);
    c
}

fn sidecar_service(t: Table) -> SidecarService {
    let s = SidecarService {
        port: t.string("port"),
        tags: t.strings("tags"),
        meta: t.env("meta"),
        disable_default_tcp_check: t.bool("disable_default_tcp_check"),
        proxy: t.table("proxy").map(proxy),
    };
    done(
        t,
        &["port", "tags", "meta", "disable_default_tcp_check", "proxy"],
    );
    s
}

fn proxy(t: Table) -> Proxy {
    let p = Proxy {
        local_service_address: t.string("local_service_address"),
        local_service_port: t.u16("local_service_port"),
        config: t.json_object("config", "proxy.config"),
        upstreams: t.tables("upstreams").into_iter().map(upstream).collect(),
        expose: t.table("expose").map(|e| {
            let expose = Expose {
                paths: e.tables("path").into_iter().map(expose_path).collect(),
            };
            done(e, &["path"]);
            expose
        }),
        transparent_proxy: t.table("transparent_proxy").map(transparent_proxy),
    };
    done(
        t,
        &[
            "local_service_address",
            "local_service_port",
            "config",
            "upstreams",
            "expose",
            "transparent_proxy",
        ],
    );
    p
}

fn upstream(t: Table) -> Upstream {
    let u = Upstream {
        destination_name: t.required("destination_name"),
        destination_namespace: t.string("destination_namespace"),
        destination_partition: t.string("destination_partition"),
        destination_peer: t.string("destination_peer"),
        destination_type: t.string("destination_type"),
        local_bind_port: t.u16("local_bind_port"),
        local_bind_address: t.string("local_bind_address"),
        local_bind_socket_path: t.string("local_bind_socket_path"),
        local_bind_socket_mode: t.string("local_bind_socket_mode"),
        datacenter: t.string("datacenter"),
        config: t.json_object("config", "upstream config"),
        mesh_gateway: t.table("mesh_gateway").map(|m| {
            let mode = MeshGatewayMode {
                mode: m.string("mode").unwrap_or_default(),
            };
            done(m, &["mode"]);
            mode
        }),
    };
    done(
        t,
        &[
            "destination_name",
            "destination_namespace",
            "destination_partition",
            "destination_peer",
            "destination_type",
            "local_bind_port",
            "local_bind_address",
            "local_bind_socket_path",
            "local_bind_socket_mode",
            "datacenter",
            "config",
            "mesh_gateway",
        ],
    );
    u
}

fn expose_path(t: Table) -> ExposePath {
    let local_path_port = t.u16("local_path_port");
    if local_path_port.is_none() {
        t.missing("local_path_port");
    }
    let e = ExposePath {
        path: t.required("path"),
        protocol: t.string_or("protocol", "http"),
        local_path_port: local_path_port.unwrap_or(0),
        listener_port: t.required("listener_port"),
    };
    done(t, &["path", "protocol", "local_path_port", "listener_port"]);
    e
}

fn transparent_proxy(t: Table) -> TransparentProxy {
    let p = TransparentProxy {
        uid: t.string("uid"),
        outbound_port: t.u16("outbound_port"),
        exclude_inbound_ports: t.strings("exclude_inbound_ports"),
        exclude_outbound_ports: t.u16s("exclude_outbound_ports"),
        exclude_outbound_cidrs: t.strings("exclude_outbound_cidrs"),
        exclude_uids: t.strings("exclude_uids"),
        no_dns: t.bool("no_dns"),
    };
    done(
        t,
        &[
            "uid",
            "outbound_port",
            "exclude_inbound_ports",
            "exclude_outbound_ports",
            "exclude_outbound_cidrs",
            "exclude_uids",
            "no_dns",
        ],
    );
    p
}

fn sidecar_task(t: Table) -> SidecarTask {
    let s = SidecarTask {
        name: t.string("name"),
        driver: t.choice(
            "driver",
            "connect.sidecar_task.driver",
            &SidecarDriver::CHOICES,
        ),
        command: t.string("command"),
        args: t.table_has("args").then(|| t.strings("args")),
        env: t.env("env"),
        user: t.string("user"),
        cap_add: t.strings("cap_add"),
        cap_drop: t.strings("cap_drop"),
        kill_timeout: t.dur("kill_timeout"),
        kill_signal: t.string("kill_signal"),
        shutdown_delay: t.dur("shutdown_delay"),
        logs: t.table("logs").map(logs),
        resources: t.table("resources").map(|r| resources(r, Resources::PROXY)),
    };
    done(
        t,
        &[
            "resources",
            "name",
            "driver",
            "command",
            "args",
            "env",
            "user",
            "cap_add",
            "cap_drop",
            "kill_timeout",
            "kill_signal",
            "shutdown_delay",
            "logs",
        ],
    );
    s
}

fn gateway(t: Table) -> Gateway {
    let g = Gateway {
        proxy: t.table("proxy").map(gateway_proxy),
        ingress: t.table("ingress").map(ingress),
        terminating: t.table("terminating").map(|term| {
            let tg = Terminating {
                services: term
                    .tables("service")
                    .into_iter()
                    .map(linked_service)
                    .collect(),
            };
            done(term, &["service"]);
            tg
        }),
        mesh: t.table("mesh").map(|m| {
            done(m, &[]);
            Mesh {}
        }),
    };
    done(t, &["proxy", "ingress", "terminating", "mesh"]);
    g
}

fn gateway_proxy(t: Table) -> GatewayProxy {
    let p = GatewayProxy {
        connect_timeout: t.dur("connect_timeout"),
        envoy_gateway_bind_tagged_addresses: t.bool("envoy_gateway_bind_tagged_addresses"),
        envoy_gateway_bind_addresses: t
            .named_tables("envoy_gateway_bind_addresses")
            .into_iter()
            .map(|(name, b)| {
                let port = b.u16("port");
                if port.is_none() {
                    b.missing("port");
                }
                let bind = BindAddress {
                    address: b.required("address"),
                    port: port.unwrap_or(0),
                };
                done(b, &["address", "port"]);
                (name, bind)
            })
            .collect(),
        envoy_gateway_no_default_bind: t.bool("envoy_gateway_no_default_bind"),
        envoy_dns_discovery_type: t.string("envoy_dns_discovery_type"),
        config: t.json_object("config", "gateway proxy config"),
    };
    done(
        t,
        &[
            "connect_timeout",
            "envoy_gateway_bind_tagged_addresses",
            "envoy_gateway_bind_addresses",
            "envoy_gateway_no_default_bind",
            "envoy_dns_discovery_type",
            "config",
        ],
    );
    p
}

fn ingress(t: Table) -> Ingress {
    let i = Ingress {
        tls: t.table("tls").map(|tls| {
            let v = IngressTls {
                enabled: tls.bool("enabled"),
                tls_min_version: tls.string("tls_min_version"),
                tls_max_version: tls.string("tls_max_version"),
                cipher_suites: tls.strings("cipher_suites"),
                sds: tls.table("sds").map(sds),
            };
            done(
                tls,
                &[
                    "enabled",
                    "tls_min_version",
                    "tls_max_version",
                    "cipher_suites",
                    "sds",
                ],
            );
            v
        }),
        listeners: t
            .tables("listener")
            .into_iter()
            .map(|l| {
                let port = l.u16("port");
                if port.is_none() {
                    l.missing("port");
                }
                let listener = IngressListener {
                    port: port.unwrap_or(0),
                    protocol: l.string_or("protocol", "tcp"),
                    services: l
                        .tables("service")
                        .into_iter()
                        .map(|s| {
                            let svc = IngressService {
                                name: s.required("name"),
                                hosts: s.strings("hosts"),
                                tls_sds: s.table("tls").and_then(|tls| {
                                    let sds = tls.table("sds").map(sds);
                                    done(tls, &["sds"]);
                                    sds
                                }),
                                request_headers: s.table("request_headers").map(headers),
                                response_headers: s.table("response_headers").map(headers),
                                max_connections: s.u32("max_connections"),
                                max_pending_requests: s.u32("max_pending_requests"),
                                max_concurrent_requests: s.u32("max_concurrent_requests"),
                            };
                            done(
                                s,
                                &[
                                    "name",
                                    "hosts",
                                    "tls",
                                    "request_headers",
                                    "response_headers",
                                    "max_connections",
                                    "max_pending_requests",
                                    "max_concurrent_requests",
                                ],
                            );
                            svc
                        })
                        .collect(),
                };
                done(l, &["port", "protocol", "service"]);
                listener
            })
            .collect(),
    };
    done(t, &["tls", "listener"]);
    i
}

fn sds(t: Table) -> Sds {
    let s = Sds {
        cluster_name: t.required("cluster_name"),
        cert_resource: t.required("cert_resource"),
    };
    done(t, &["cluster_name", "cert_resource"]);
    s
}

fn headers(t: Table) -> HeaderChanges {
    let h = HeaderChanges {
        add: t.env("add"),
        set: t.env("set"),
        remove: t.strings("remove"),
    };
    done(t, &["add", "set", "remove"]);
    h
}

fn linked_service(t: Table) -> LinkedService {
    let s = LinkedService {
        name: t.required("name"),
        ca_file: t.string("ca_file"),
        cert_file: t.string("cert_file"),
        key_file: t.string("key_file"),
        sni: t.string("sni"),
        disable_auto_host_rewrite: t.bool("disable_auto_host_rewrite"),
    };
    done(
        t,
        &[
            "name",
            "ca_file",
            "cert_file",
            "key_file",
            "sni",
            "disable_auto_host_rewrite",
        ],
    );
    s
}

fn task(t: Table, group_restart: &Restart) -> Task {
    let task = Task {
        name: t.required("name"),
        driver: t.string_or("driver", "exec"),
        command: t.required("command"),
        args: t.strings("args"),
        env: t.env("env"),
        user: t.string("user"),
        cap_add: t.strings("cap_add"),
        cap_drop: t.strings("cap_drop"),
        lifecycle: t.table("lifecycle").map(|l| {
            let lc = Lifecycle {
                hook: l.required("hook"),
                sidecar: l.bool("sidecar"),
            };
            done(l, &["hook", "sidecar"]);
            lc
        }),
        restart: t.table("restart").map(|r| read_restart(r, group_restart)),
        logs: t.table("logs").map(logs),
        shutdown_delay: t.dur("shutdown_delay").unwrap_or_default(),
        kill_timeout: t.dur("kill_timeout").unwrap_or(Dur::secs(5)),
        kill_signal: t.string_or("kill_signal", "SIGINT"),
        resources: t
            .table("resources")
            .map_or(Resources::TASK, |r| resources(r, Resources::TASK)),
    };
    done(
        t,
        &[
            "name",
            "driver",
            "command",
            "args",
            "env",
            "user",
            "cap_add",
            "cap_drop",
            "lifecycle",
            "restart",
            "logs",
            "shutdown_delay",
            "kill_timeout",
            "kill_signal",
            "resources",
        ],
    );
    task
}

/// A `resources` block; what it leaves out comes from `base`.
fn resources(t: Table, base: Resources) -> Resources {
    let r = Resources {
        cpu: t.u32("cpu").unwrap_or(base.cpu),
        memory: t.u32("memory").unwrap_or(base.memory),
        memory_max: t.u32("memory_max").or(base.memory_max),
    };
    done(t, &["cpu", "memory", "memory_max"]);
    r
}

/// A `restart` block; what it leaves out comes from `base` (Nomad's defaults for a group,
/// the group's block for a task).
fn read_restart(t: Table, base: &Restart) -> Restart {
    let r = Restart {
        attempts: t.u32("attempts").unwrap_or(base.attempts),
        interval: t.dur("interval").unwrap_or(base.interval),
        delay: t.dur("delay").unwrap_or(base.delay),
        mode: t.string("mode").unwrap_or_else(|| base.mode.clone()),
    };
    done(t, &["attempts", "interval", "delay", "mode"]);
    r
}

fn logs(t: Table) -> Logs {
    let d = Logs::default();
    let l = Logs {
        max_files: t.u32("max_files").unwrap_or(d.max_files),
        max_file_size: t.u32("max_file_size").unwrap_or(d.max_file_size),
    };
    done(t, &["max_files", "max_file_size"]);
    l
}
