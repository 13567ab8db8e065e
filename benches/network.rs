//! `cargo bench --bench network`: per-group bring-up and teardown of bridge networking with
//! two mapped ports, outpost against Nomad's CNI chain (Debian's containernetworking-plugins
//! driven with Nomad's default conflist, reference/nomad-connect.md §7.1), side by side in
//! one run. Runs as root inside a private network and mount namespace; touches nothing else.
//!
//! netavark (Podman's Rust network stack, Debian's 1.4 package) is measured the same way
//! where it can be installed: `netavark setup`/`teardown` per group, with the address given
//! (as Podman does).
//!
//! Nomad creates the namespace in-process and then execs the chain; all sides here create
//! the namespace the same way (outpost's `netns::create`) so the difference is the plugins.
//! Nomad's extra `iptables` exec for its NOMAD-ADMIN chain before each ADD is left out, which
//! favours CNI.

use outpost::net::{self, HostNetwork, netns};
use outpost::plan::{self, HostFacts, Plan};
use outpost::state::NodeState;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CNI_BIN: &str = "/usr/lib/cni";
const NETAVARK: &str = "/usr/lib/podman/netavark";
const SIZES: [usize; 3] = [1, 10, 100];
/// Rounds are repeated until a row has at least this many samples, for a stable p50.
const MIN_SAMPLES: usize = 50;
const RATIO_AT: usize = 10;

fn main() {
    if !is_root() {
        println!("network: skipped (needs root to create namespaces)");
        return;
    }
    // Installed first: the private namespace below has no way to the package mirror.
    let cni = ensure_cni();
    let netavark = ensure_netavark();
    if let Err(e) = isolate() {
        println!("network: skipped (cannot create a private network namespace: {e})");
        return;
    }
    println!("per-group bring-up and teardown, two mapped ports (tcp+udp) per group, in ms");
    println!(
        "(N groups brought up one by one, then down; rounds repeated to >= {MIN_SAMPLES} samples per row)"
    );
    println!(
        "{:<8} {:>4} {:>9} {:>9} {:>10} {:>10}",
        "impl", "N", "up_p50", "up_p95", "down_p50", "down_p95"
    );
    let mut at_ratio = (None, None);
    for n in SIZES {
        let rounds = MIN_SAMPLES.div_ceil(n);
        let ours = repeat(rounds, || bench_outpost(n, Stack::V4));
        print_row("outpost", n, &ours);
        let theirs = match &cni {
            Ok(()) => {
                let r = repeat(rounds, || bench_cni(n, Stack::V4));
                print_row("cni", n, &r);
                Some(r)
            }
            Err(why) if n == SIZES[0] => {
                println!("cni      (not measured: {why})");
                None
            }
            Err(_) => None,
        };
        match &netavark {
            Ok(()) => print_row("netavark", n, &repeat(rounds, || bench_netavark(n))),
            Err(why) if n == SIZES[0] => println!("netavark (not measured: {why})"),
            Err(_) => {}
        }
        if n == RATIO_AT {
            at_ratio = (Some(ours), theirs);
            // The same groups on a dual-stack bridge: outpost with network.subnet_ipv6,
            // CNI with Nomad's bridge_network_subnet_ipv6 conflist (a second range, ::/0).
            let dual = repeat(rounds, || bench_outpost(n, Stack::Dual));
            print_row("outpost6", n, &dual);
            let cni_dual = cni
                .is_ok()
                .then(|| repeat(rounds, || bench_cni(n, Stack::Dual)));
            if let Some(r) = &cni_dual {
                print_row("cni6", n, r);
            }
            println!(
                "network dual-stack: outpost_up_p50_ms={:.3} cni_up_p50_ms={} outpost_down_p50_ms={:.3} cni_down_p50_ms={}",
                ms(dual.up_p50()),
                cni_dual
                    .as_ref()
                    .map_or("n/a".into(), |r| format!("{:.3}", ms(r.up_p50()))),
                ms(dual.down_p50()),
                cni_dual
                    .as_ref()
                    .map_or("n/a".into(), |r| format!("{:.3}", ms(r.down_p50()))),
            );
        }
    }
    if let (Some(ours), Some(theirs)) = at_ratio {
        println!(
            "network: outpost_up_p50_ms={:.3} cni_up_p50_ms={:.3} up_ratio={:.1} outpost_down_p50_ms={:.3} cni_down_p50_ms={:.3} down_ratio={:.1}",
            ms(ours.up_p50()),
            ms(theirs.up_p50()),
            ms(theirs.up_p50()) / ms(ours.up_p50()),
            ms(ours.down_p50()),
            ms(theirs.down_p50()),
            ms(theirs.down_p50()) / ms(ours.down_p50()),
        );
    } else if let (Some(ours), None) = at_ratio {
        println!(
            "network: outpost_up_p50_ms={:.3} cni_up_p50_ms=n/a up_ratio=n/a outpost_down_p50_ms={:.3} cni_down_p50_ms=n/a down_ratio=n/a",
            ms(ours.up_p50()),
            ms(ours.down_p50())
        );
    }
}

fn repeat(rounds: usize, mut round: impl FnMut() -> Samples) -> Samples {
    let mut all = Samples {
        up: Vec::new(),
        down: Vec::new(),
    };
    for _ in 0..rounds {
        let s = round();
        all.up.extend(s.up);
        all.down.extend(s.down);
    }
    all
}

struct Samples {
    up: Vec<Duration>,
    down: Vec<Duration>,
}

impl Samples {
    fn up_p50(&self) -> Duration {
        percentile(&self.up, 50)
    }
    fn down_p50(&self) -> Duration {
        percentile(&self.down, 50)
    }
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() * p).div_ceil(100)).saturating_sub(1);
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_row(name: &str, n: usize, s: &Samples) {
    println!(
        "{name:<8} {n:>4} {:>9.3} {:>9.3} {:>10.3} {:>10.3}",
        ms(percentile(&s.up, 50)),
        ms(percentile(&s.up, 95)),
        ms(percentile(&s.down, 50)),
        ms(percentile(&s.down, 95))
    );
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A private network and mount namespace with its own /run, so the benchmark's bridges,
/// namespaces and rules never touch the machine's network.
fn isolate() -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| e.to_string())?;
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| e.to_string())?;
    run("ip", &["link", "set", "lo", "up"])
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Installs Debian `packages` with apt if `present` says they are missing.
fn ensure_installed(present: impl Fn() -> bool, packages: &[&str]) -> Result<(), String> {
    if !present() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if present() {
        Ok(())
    } else {
        Err(format!("{} could not be installed", packages.join(" and ")))
    }
}

/// Debian's CNI plugins, and iptables, which the firewall and portmap plugins exec.
fn ensure_cni() -> Result<(), String> {
    ensure_installed(
        || {
            std::path::Path::new(CNI_BIN).join("portmap").exists()
                && Command::new("iptables").arg("-V").output().is_ok()
        },
        &["containernetworking-plugins", "iptables"],
    )
}

fn ensure_netavark() -> Result<(), String> {
    ensure_installed(
        || std::path::Path::new(NETAVARK).exists(),
        &["netavark", "iptables"],
    )
}

/// Podman's network options for one container: two ports (tcp+udp each), a fixed address.
fn netavark_options(i: usize) -> String {
    let ports: Vec<String> = [(10000 + 2 * i, 80), (10001 + 2 * i, 81)]
        .iter()
        .flat_map(|(host, container)| {
            ["tcp", "udp"].map(|proto| {
                format!(r#"{{"host_ip":"","container_port":{container},"host_port":{host},"range":1,"protocol":"{proto}"}}"#)
            })
        })
        .collect();
    format!(
        r#"{{"container_id":"{id:064x}","container_name":"c{i}","port_mappings":[{ports}],"networks":{{"bench":{{"static_ips":["10.99.{hi}.{lo}"],"interface_name":"eth0"}}}},"network_info":{{"bench":{{"name":"bench","id":"{net:064x}","driver":"bridge","network_interface":"nvbench0","subnets":[{{"subnet":"10.99.0.0/16","gateway":"10.99.0.1"}}],"ipv6_enabled":false,"internal":false,"dns_enabled":false,"ipam_options":{{"driver":"host-local"}}}}}}}}"#,
        id = i + 1,
        net = 0xbe_u64,
        ports = ports.join(","),
        hi = (i + 2) / 256,
        lo = (i + 2) % 256,
    )
}

fn netavark(command: &str, ns: &str, options: &str) {
    use std::io::Write;
    let mut child = Command::new(NETAVARK)
        .args([
            "--config",
            "/run/netavark",
            command,
            &netns::path(ns).display().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netavark");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(options.as_bytes())
        .expect("write options");
    let out = child.wait_with_output().expect("netavark");
    assert!(
        out.status.success(),
        "netavark {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bench_netavark(n: usize) -> Samples {
    let mut s = Samples {
        up: Vec::new(),
        down: Vec::new(),
    };
    netns::ensure_dir().expect("netns dir");
    let _ = std::fs::create_dir_all("/run/netavark");
    for i in 0..n {
        let t = Instant::now();
        netns::create(&format!("nv-{i}")).expect("netns");
        netavark("setup", &format!("nv-{i}"), &netavark_options(i));
        s.up.push(t.elapsed());
    }
    for i in (0..n).rev() {
        let t = Instant::now();
        netavark("teardown", &format!("nv-{i}"), &netavark_options(i));
        netns::delete(&format!("nv-{i}")).expect("netns delete");
        s.down.push(t.elapsed());
    }
    let _ = run("ip", &["link", "del", "nvbench0"]);
    wait_for_links_gone("veth");
    s
}

/// IPv4 only, or a dual-stack bridge.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stack {
    V4,
    Dual,
}

fn config_text(n: usize, stack: Stack) -> String {
    let mut text = String::from(
        "[agent]\ndata_dir = \"/run/bench-data\"\nrun_dir = \"/run/outpost\"\n[network]\nbridge = \"obench\"\nsubnet = \"10.88.0.0/16\"\n",
    );
    if stack == Stack::Dual {
        text.push_str("subnet_ipv6 = \"fd00:88::/112\"\n");
    }
    for i in 0..n {
        text.push_str(&format!(
            "[[group]]\nname = \"g{i}\"\n[group.network]\nmode = \"bridge\"\n\
             [[group.network.port]]\nlabel = \"a\"\nstatic = {}\nto = 80\n\
             [[group.network.port]]\nlabel = \"b\"\nstatic = {}\nto = 81\n\
             [[group.task]]\nname = \"t\"\ncommand = \"/bin/true\"\n",
            10000 + 2 * i,
            10001 + 2 * i
        ));
    }
    text
}

fn plan_for(n: usize, stack: Stack) -> Plan {
    let valid =
        outpost::parse_config(&config_text(n, stack), "bench.toml").expect("bench config is valid");
    let host = HostFacts {
        hostname: "bench".into(),
        default_address: Ipv4Addr::new(192, 0, 2, 1),
        default_address_source: "bench".into(),
        listening_ports: Default::default(),
    };
    plan::build(&valid, &NodeState::default(), &host).expect("plan")
}

fn bench_outpost(n: usize, stack: Stack) -> Samples {
    let plan = plan_for(n, stack);
    let mut host = HostNetwork::prepare(&plan.bridge).expect("prepare host");
    let mut s = Samples {
        up: Vec::new(),
        down: Vec::new(),
    };
    for i in 0..n {
        let t = Instant::now();
        host.ensure_group(&plan.groups[i].net()).expect("group up");
        net::sync_firewall(&plan.bridge, &plan.net_groups()[..=i]).expect("firewall");
        s.up.push(t.elapsed());
    }
    for i in (0..n).rev() {
        let t = Instant::now();
        host.remove_group(&plan.groups[i].net())
            .expect("group down");
        net::sync_firewall(&plan.bridge, &plan.net_groups()[..i]).expect("firewall");
        s.down.push(t.elapsed());
    }
    net::teardown(&plan.bridge).expect("teardown");
    wait_for_links_gone("op");
    s
}

/// The kernel deletes a removed namespace's veth asynchronously; start the next round clean.
fn wait_for_links_gone(prefix: &str) {
    for _ in 0..400 {
        let out = Command::new("ip")
            .args(["-o", "link"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !out.lines().any(|l| {
            l.split(": ")
                .nth(1)
                .is_some_and(|name| name.starts_with(prefix))
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Nomad's default conflist (§7.1), one plugin object each.
fn cni_plugins(stack: Stack) -> [(&'static str, String); 4] {
    let (ranges, routes) = match stack {
        Stack::V4 => (
            r#"[[{"subnet":"172.26.64.0/20"}]]"#,
            r#"[{"dst":"0.0.0.0/0"}]"#,
        ),
        // Nomad with bridge_network_subnet_ipv6: a second range and an IPv6 default route.
        Stack::Dual => (
            r#"[[{"subnet":"172.26.64.0/20"}],[{"subnet":"fd00:88::/112"}]]"#,
            r#"[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]"#,
        ),
    };
    [
        ("loopback", r#"{"type":"loopback"}"#.into()),
        (
            "bridge",
            format!(
                r#"{{"type":"bridge","bridge":"nomad","ipMasq":true,"isGateway":true,"forceAddress":true,"hairpinMode":false,"ipam":{{"type":"host-local","ranges":{ranges},"routes":{routes},"dataDir":"/run/cni"}}}}"#
            ),
        ),
        (
            "firewall",
            r#"{"type":"firewall","backend":"iptables","iptablesAdminChainName":"NOMAD-ADMIN"}"#
                .into(),
        ),
        (
            "portmap",
            r#"{"type":"portmap","capabilities":{"portMappings":true},"snat":true}"#.into(),
        ),
    ]
}

/// Runs one plugin as a CNI runtime does: config on stdin (with the previous result),
/// parameters in the environment. Returns its stdout (the result).
fn cni_exec(
    kind: &str,
    plugin: &str,
    command: &str,
    id: &str,
    netns_path: &str,
    ports: &str,
    prev: Option<&str>,
) -> String {
    let body = plugin.strip_suffix('}').unwrap_or(plugin);
    let mut config = format!(r#"{body},"cniVersion":"0.4.0","name":"nomad""#);
    if let Some(prev) = prev {
        config.push_str(&format!(r#","prevResult":{prev}"#));
    }
    if kind == "portmap" {
        config.push_str(&format!(r#","runtimeConfig":{{"portMappings":{ports}}}"#));
    }
    config.push('}');
    let mut child = Command::new(format!("{CNI_BIN}/{kind}"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_BIN)
        .env("CNI_ARGS", "IgnoreUnknown=true")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn CNI plugin");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(config.as_bytes())
            .expect("write CNI config");
    }
    let out = child.wait_with_output().expect("CNI plugin");
    assert!(
        out.status.success(),
        "CNI {kind} {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bench_cni(n: usize, stack: Stack) -> Samples {
    let mut s = Samples {
        up: Vec::new(),
        down: Vec::new(),
    };
    let plugins = cni_plugins(stack);
    let mut results = Vec::new();
    netns::ensure_dir().expect("netns dir");
    for i in 0..n {
        let name = format!("cni-{i}");
        let id = format!("bench-alloc-{i:04}");
        let path = netns::path(&name).display().to_string();
        let ports = format!(
            r#"[{{"hostPort":{a},"containerPort":80,"protocol":"tcp"}},{{"hostPort":{a},"containerPort":80,"protocol":"udp"}},{{"hostPort":{b},"containerPort":81,"protocol":"tcp"}},{{"hostPort":{b},"containerPort":81,"protocol":"udp"}}]"#,
            a = 10000 + 2 * i,
            b = 10001 + 2 * i
        );
        let t = Instant::now();
        netns::create(&name).expect("netns");
        let mut prev: Option<String> = None;
        for (kind, plugin) in &plugins {
            let result = cni_exec(kind, plugin, "ADD", &id, &path, &ports, prev.as_deref());
            if !result.is_empty() {
                prev = Some(result);
            }
        }
        s.up.push(t.elapsed());
        results.push((name, id, path, ports, prev));
    }
    for (name, id, path, ports, prev) in results.into_iter().rev() {
        let t = Instant::now();
        for (kind, plugin) in plugins.iter().rev() {
            cni_exec(kind, plugin, "DEL", &id, &path, &ports, prev.as_deref());
        }
        netns::delete(&name).expect("netns delete");
        s.down.push(t.elapsed());
    }
    let _ = run("ip", &["link", "del", "nomad"]);
    wait_for_links_gone("veth");
    s
}
