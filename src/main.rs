//! The `outpost` command line: argument parsing and dispatch only.

use argh::FromArgs;
use outpost::error::{Context, Error};
use outpost::{agent, config, net, plan, state};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(FromArgs)]
/// outpost: Nomad-style Consul service mesh for one edge device, from one TOML file.
/// Commands read /etc/outpost/outpost.toml unless given a file (FILE, -c FILE, or
/// OUTPOST_CONFIG).
struct Cli {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

/// Where the config is read from when no file is given: where the install puts it.
const DEFAULT_CONFIG: &str = "/etc/outpost/outpost.toml";

/// The config file a command reads: `-c FILE`, else `FILE`, else `OUTPOST_CONFIG`, else
/// `/etc/outpost/outpost.toml`.
fn config_path(flag: &Option<PathBuf>, positional: &Option<PathBuf>) -> PathBuf {
    flag.clone()
        .or_else(|| positional.clone())
        .or_else(|| std::env::var_os("OUTPOST_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Validate(ValidateCmd),
    Plan(PlanCmd),
    Run(RunCmd),
    Status(StatusCmd),
    Logs(LogsCmd),
    Apply(ApplyCmd),
    Teardown(TeardownCmd),
    EnvoyBootstrap(Box<outpost::envoy::command::EnvoyBootstrap>),
    Version(VersionCmd),
}

#[derive(FromArgs)]
/// Check a config file; print every problem as FILE:LINE:COL: message. Exits 0 when valid,
/// 78 when not.
#[argh(subcommand, name = "validate")]
struct ValidateCmd {
    /// the config file (default: FILE, else $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// the config file, as with -c
    #[argh(positional)]
    file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Show what outpost would set up for a config: namespaces, addresses, ports, service IDs,
/// injected sidecar tasks with their argv and environment. Reads the node state (leases,
/// dynamic ports) if present and readable; changes nothing and needs no root.
#[argh(subcommand, name = "plan")]
struct PlanCmd {
    /// the config file (default: FILE, else $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// the config file, as with -c
    #[argh(positional)]
    file: Option<PathBuf>,
    /// print every detail as JSON
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Run the agent: set up every group (network, Consul registration, Envoy bootstraps),
/// start Envoy and the tasks in each group's namespace, and keep them running. SIGHUP
/// reloads the config; SIGTERM stops the agent and leaves the groups running (the next
/// `run` adopts them); `outpost teardown` stops everything. Needs root.
#[argh(subcommand, name = "run")]
struct RunCmd {
    /// the config file (default: FILE, else $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// the config file, as with -c
    #[argh(positional)]
    file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Print a task's output (stdout, or stderr with --stderr), the rotated files oldest first;
/// -f keeps printing what it writes. Injected tasks have their plan names, such as
/// connect-proxy-<service>.
#[argh(subcommand, name = "logs")]
struct LogsCmd {
    /// the group
    #[argh(positional)]
    group: String,
    /// the task
    #[argh(positional)]
    task: String,
    /// the config file (default: $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// stderr instead of stdout
    #[argh(switch)]
    stderr: bool,
    /// keep printing what the task writes
    #[argh(switch, short = 'f')]
    follow: bool,
}

#[derive(FromArgs)]
/// Ask the running agent what it is doing: each group's state, address and port mappings,
/// its tasks (pid, restarts, last error), Envoy's version, and the Consul sync. With a
/// group, each of its tasks' last five events too.
#[argh(subcommand, name = "status")]
struct StatusCmd {
    /// only this group, with its tasks' last events
    #[argh(positional)]
    group: Option<String>,
    /// the config file (default: $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// print the status as JSON (the same fields, every group; `events` newest last)
    #[argh(switch)]
    json: bool,
}

#[derive(FromArgs)]
/// Make the host match the plan once, then exit: bridge, each group's namespace, veth,
/// address, route and port mappings, then the group services in the local Consul agent
/// (with workload tokens per consul.acl.mode); removes outpost's namespaces, veths, rules
/// and registrations that no group owns, and writes the Envoy bootstraps. Idempotent. Needs
/// root. It starts no task: `run` does.
#[argh(subcommand, name = "apply")]
struct ApplyCmd {
    /// the config file (default: FILE, else $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// the config file, as with -c
    #[argh(positional)]
    file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Stop the running agent and every group's tasks and Envoys, then remove everything outpost
/// set up on this host: its Consul registrations and workload tokens, every outpost
/// namespace (and its veth), the nf_tables table, the bridge (unless other interfaces use
/// it), the leases and state file, and the host settings it changed (ip_forward, the
/// /run/netns mount) back to what the first run found. Needs root.
#[argh(subcommand, name = "teardown")]
struct TeardownCmd {
    /// the config file (default: FILE, else $OUTPOST_CONFIG, else /etc/outpost/outpost.toml)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// the config file, as with -c
    #[argh(positional)]
    file: Option<PathBuf>,
}

#[derive(FromArgs)]
/// Print the version, the git commit and the target it was built for.
#[argh(subcommand, name = "version")]
struct VersionCmd {}

/// A command the agent starts, not people (`relay`, `proxy`): parsed apart from the CLI and
/// kept out of its help (each still answers `--help`).
fn internal<C: FromArgs>(
    args: &[String],
    name: &str,
    run: impl FnOnce(&C) -> Result<(), Error>,
) -> ExitCode {
    let rest: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    match C::from_args(&["outpost", name], &rest) {
        Ok(cmd) => finish(run(&cmd)),
        Err(early) if early.status.is_ok() => {
            println!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(early) => {
            eprintln!("{}", early.output);
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("relay") => return internal(&args, "relay", relay),
        #[cfg(feature = "proxy")]
        Some("proxy") => {
            return internal(&args, "proxy", |cmd| {
                start_logging(log::LevelFilter::Info);
                outpost::proxy::run(cmd)
            });
        }
        _ => {}
    }
    let cli: Cli = argh::from_env();
    let command = match (cli.version, cli.command) {
        (false, Some(command)) => command,
        (true, _) => Command::Version(VersionCmd {}),
        (false, None) => {
            eprintln!("outpost: no command given; `outpost --help` lists them");
            return ExitCode::from(2);
        }
    };
    finish(dispatch(command))
}

/// The one exit path: every command's result ends here, and its error says how to exit.
fn finish(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn relay(cmd: &outpost::relay::RelayCmd) -> Result<(), Error> {
    start_logging(log::LevelFilter::Info);
    outpost::relay::serve(&cmd.sockets).with_context(|| format!("relay {}", cmd.sockets.display()))
}

fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Validate(cmd) => validate(&cmd),
        Command::Plan(cmd) => plan(&cmd),
        Command::Run(cmd) => {
            let path = config_path(&cmd.config, &cmd.file);
            with_agent(&path, |valid, host| {
                agent::run::run(&path, valid, host.clone())
            })
        }
        Command::Status(cmd) => status(&cmd),
        Command::Logs(cmd) => logs(&cmd),
        Command::Apply(cmd) => with_agent(&config_path(&cmd.config, &cmd.file), |valid, host| {
            agent::apply(&valid, host).map(|_| ())
        }),
        Command::Teardown(cmd) => {
            with_agent(&config_path(&cmd.config, &cmd.file), |valid, host| {
                agent::teardown(&valid, host)
            })
        }
        Command::EnvoyBootstrap(cmd) => envoy_bootstrap(&cmd),
        Command::Version(_) => {
            println!("{}", outpost::version_text());
            Ok(())
        }
    }
}

/// A command's error: in the log once logging runs (the agent's commands, under systemd's
/// journal), else on stderr as it is (config diagnostics already name their place).
fn report(e: &Error) {
    if log::max_level() == log::LevelFilter::Off {
        eprintln!("{e}");
    } else {
        log::error!("{e}");
    }
}

fn start_logging(level: log::LevelFilter) {
    let _ = simple_logger::SimpleLogger::new().with_level(level).init();
}

/// Loads the config, starts logging at its level, and runs one agent action.
fn with_agent(
    path: &std::path::Path,
    action: impl FnOnce(config::ValidConfig, &plan::HostFacts) -> Result<(), Error>,
) -> Result<(), Error> {
    let valid = outpost::load_config(path)?;
    let level = valid.config.agent.log_level.parse();
    start_logging(level.unwrap_or(log::LevelFilter::Info));
    action(valid, &net::host_facts())
}

fn validate(cmd: &ValidateCmd) -> Result<(), Error> {
    let path = config_path(&cmd.config, &cmd.file);
    let valid = outpost::load_config(&path)?;
    let groups = valid.config.groups.len();
    let plural = if groups == 1 { "" } else { "s" };
    println!("{}: valid ({groups} group{plural})", path.display());
    if let Some(warning) = outpost::config::envoy_warning(&valid.config) {
        eprintln!("{}: warning: {warning}", path.display());
    }
    Ok(())
}

fn plan(cmd: &PlanCmd) -> Result<(), Error> {
    let valid = outpost::load_config(&config_path(&cmd.config, &cmd.file))?;
    let state_path = state::path_in(&valid.config.agent.data_dir);
    // The state holds only leases and dynamic ports; a user who may not read it (it is
    // root's) still gets a plan, with addresses and ports chosen afresh, and is told.
    let node_state = match state::load(&state_path) {
        Err(e) if e.message().contains("Permission denied") => {
            eprintln!(
                "outpost: cannot read {} as this user; planning without it (addresses and dynamic ports may differ from the running ones)",
                state_path.display()
            );
            state::NodeState::default()
        }
        other => other?,
    };
    let p = plan::build(&valid, &node_state, &net::host_facts()).context("cannot plan")?;
    match cmd.json {
        true => print!("{}", plan::render::json(&p)),
        false => {
            let host = outpost::cgroup::host();
            let enforced = plan::render::Enforced {
                memory: host.memory() != outpost::cgroup::Enforced::No,
                cpu: host.cpu() != outpost::cgroup::Enforced::No,
            };
            print!("{}", plan::render::text(&p, enforced));
        }
    }
    Ok(())
}

/// Like `consul connect envoy -bootstrap`: warnings and errors as plain lines on stderr,
/// the JSON on stdout, exit 1 on error.
fn envoy_bootstrap(cmd: &outpost::envoy::command::EnvoyBootstrap) -> Result<(), Error> {
    let out = outpost::envoy::command::run(cmd, &|var| std::env::var(var).ok())?;
    for w in &out.warnings {
        eprintln!("{w}");
    }
    print!("{}", out.json);
    Ok(())
}

/// The run_dir of the config at `path`, for commands that only ask a running agent or
/// read its files. The file may have been broken since the agent read it (a failed reload
/// keeps the running config): the run_dir is found anyway.
fn run_dir_of(path: &std::path::Path) -> String {
    match outpost::load_config(path) {
        Ok(valid) => valid.config.agent.run_dir.clone(),
        Err(_) => config::run_dir_hint(path),
    }
}

fn logs(cmd: &LogsCmd) -> Result<(), Error> {
    let run_dir = run_dir_of(&config_path(&cmd.config, &None));
    let dir = outpost::logs::dir(&run_dir, &cmd.group, &cmd.task)?;
    let stream = if cmd.stderr { "stderr" } else { "stdout" };
    outpost::logs::show(
        &dir,
        &cmd.task,
        stream,
        cmd.follow,
        &mut std::io::stdout().lock(),
    )
}

fn status(cmd: &StatusCmd) -> Result<(), Error> {
    let run_dir = run_dir_of(&config_path(&cmd.config, &None));
    let status = agent::run::query_status(&run_dir)?;
    if let Some(name) = &cmd.group
        && !status.groups.iter().any(|g| &g.name == name)
    {
        let names: Vec<&str> = status.groups.iter().map(|g| g.name.as_str()).collect();
        return Err(Error::permanent(format!(
            "no group \"{name}\" (groups: {})",
            names.join(", ")
        )));
    }
    if cmd.json {
        println!("{}", miniserde::json::to_string(&status));
        return Ok(());
    }
    println!(
        "agent pid {}, config {}, Consul {}",
        status.pid,
        status.config,
        match (&status.consul_last_error, status.consul_synced) {
            (Some(e), _) => format!("failing: {e}"),
            (None, true) => "in sync".to_string(),
            (None, false) => "not needed or not yet synced".to_string(),
        }
    );
    for envoy in status.envoy.iter().flatten() {
        println!("envoy {} ({})", envoy.version, envoy.binary);
    }
    if let Some(pid) = status.relay_pid {
        println!("xDS relay pid {pid} (every group's consul_grpc.sock)");
    }
    let shown = status
        .groups
        .iter()
        .filter(|g| cmd.group.as_ref().is_none_or(|name| &g.name == name));
    for g in shown {
        let address: String = [&g.address, &g.address_ipv6]
            .into_iter()
            .flatten()
            .map(|a| format!(", {a}"))
            .collect();
        println!("group {} ({}{address})", g.name, g.phase);
        for port in g.ports.iter().flatten() {
            println!("  port {port}");
        }
        for t in &g.tasks {
            let pid = t.pid.map_or(String::new(), |p| format!(" pid {p}"));
            // A task that runs again has recovered: its last error is in its events.
            let err = match (&t.last_error, t.state.as_str()) {
                (Some(e), state) if state != "running" => format!(" last: {e}"),
                _ => String::new(),
            };
            println!(
                "  {:<28} {:<18} {}{pid} restarts {}{err}",
                t.name, t.lifecycle, t.state, t.restarts
            );
            if let (Some(admin), Some(ns), Some(_)) = (&t.admin, &g.netns, t.pid) {
                match agent::run::proxy_status(ns, admin) {
                    Ok(text) => text.lines().for_each(|l| println!("    proxy: {l}")),
                    Err(e) => println!("    proxy: {e}"),
                }
            }
            if cmd.group.is_some() {
                for event in t.events.iter().flatten() {
                    println!("    {event}");
                }
            }
        }
    }
    Ok(())
}
