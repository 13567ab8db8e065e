//! The `outpost` command line: argument parsing and dispatch only.

use argh::FromArgs;
use outpost::error::{Context, Error};
use outpost::{agent, config, net, plan, state};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(FromArgs)]
/// outpost: Nomad-style Consul service mesh for one edge device, from one TOML file.
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Validate(ValidateCmd),
    Plan(PlanCmd),
    Run(RunCmd),
    Status(StatusCmd),
    Apply(ApplyCmd),
    Teardown(TeardownCmd),
    EnvoyBootstrap(Box<outpost::envoy::command::EnvoyBootstrap>),
    Relay(outpost::relay::RelayCmd),
    Version(VersionCmd),
}

#[derive(FromArgs)]
/// Check a config file; print every problem as FILE:LINE:COL: message. Exits 0 when valid,
/// 78 when not.
#[argh(subcommand, name = "validate")]
struct ValidateCmd {
    /// the config file
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Show what outpost would set up for a config: namespaces, addresses, ports, service IDs,
/// injected sidecar tasks with their argv and environment. Reads the node state (leases,
/// dynamic ports) if present; changes nothing.
#[argh(subcommand, name = "plan")]
struct PlanCmd {
    /// the config file
    #[argh(option, short = 'c')]
    config: PathBuf,
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
    /// the config file
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Ask the running agent what it is doing: groups, tasks, pids, restarts, Consul sync.
#[argh(subcommand, name = "status")]
struct StatusCmd {
    /// the config file (for its run_dir)
    #[argh(option, short = 'c')]
    config: PathBuf,
    /// print the status as JSON
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
    /// the config file
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Remove everything outpost set up on this host: its Consul registrations and workload
/// tokens, every outpost namespace (and its veth), the nf_tables table, the bridge (unless
/// other interfaces use it), and the leases.
#[argh(subcommand, name = "teardown")]
struct TeardownCmd {
    /// the config file
    #[argh(option, short = 'c')]
    config: PathBuf,
}

#[derive(FromArgs)]
/// Print the version, the git commit and the target it was built for.
#[argh(subcommand, name = "version")]
struct VersionCmd {}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    // The one exit path: every command returns here, and its error says how to exit.
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Validate(cmd) => validate(&cmd),
        Command::Plan(cmd) => plan(&cmd),
        Command::Run(cmd) => with_agent(&cmd.config, |valid, host| {
            agent::run::run(&cmd.config, valid, host.clone())
        }),
        Command::Status(cmd) => status(&cmd),
        Command::Apply(cmd) => with_agent(&cmd.config, |valid, host| {
            agent::apply(&valid, host).map(|_| ())
        }),
        Command::Teardown(cmd) => {
            with_agent(&cmd.config, |valid, host| agent::teardown(&valid, host))
        }
        Command::EnvoyBootstrap(cmd) => envoy_bootstrap(&cmd),
        Command::Relay(cmd) => {
            start_logging(log::LevelFilter::Info);
            outpost::relay::serve(&cmd.sockets)
                .with_context(|| format!("relay {}", cmd.sockets.display()))
        }
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
    let valid = outpost::load_config(&cmd.config)?;
    let groups = valid.config.groups.len();
    let plural = if groups == 1 { "" } else { "s" };
    println!("{}: valid ({groups} group{plural})", cmd.config.display());
    Ok(())
}

fn plan(cmd: &PlanCmd) -> Result<(), Error> {
    let valid = outpost::load_config(&cmd.config)?;
    let state_path = state::path_in(&valid.config.agent.data_dir);
    let node_state = state::load(&state_path)?;
    let p = plan::build(&valid, &node_state, &net::host_facts()).context("cannot plan")?;
    match cmd.json {
        true => print!("{}", plan::render::json(&p)),
        false => print!("{}", plan::render::text(&p)),
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

fn status(cmd: &StatusCmd) -> Result<(), Error> {
    // The file may have been broken since the agent read it (a failed reload keeps the
    // running config): find its run_dir anyway.
    let run_dir = match outpost::load_config(&cmd.config) {
        Ok(valid) => valid.config.agent.run_dir.clone(),
        Err(_) => config::run_dir_hint(&cmd.config),
    };
    let status = agent::run::query_status(&run_dir)?;
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
    for g in &status.groups {
        println!("group {} ({})", g.name, g.phase);
        for t in &g.tasks {
            let pid = t.pid.map_or(String::new(), |p| format!(" pid {p}"));
            let err = t
                .last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" last: {e}"));
            println!(
                "  {:<28} {:<18} {}{pid} restarts {}{err}",
                t.name, t.lifecycle, t.state, t.restarts
            );
        }
    }
    Ok(())
}
