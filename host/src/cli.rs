//! The command line: serving (the flags alone, `host --plugin p.wasm`),
//! `host check` and `host invoke`, and the log filter they share.
//!
//! `check` and `invoke` load a plugin exactly as a service does (the same
//! engine settings, limits, loader and compile cache) but bind no socket:
//! `check` stops once the plugin is validated, as `nginx -t` does, and
//! `invoke` calls it once, as `wasmtime run --invoke` does. A plugin can so
//! be tried, and a deployment checked, before anything serves it.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::LevelFilter;

use crate::config::Config;
use crate::dispatch::call_limits;
use crate::plugin::engine::{EngineLimits, EpochTicker, new_engine};
use crate::plugin::loader::Loader;
use crate::plugin::{Plugin, World, admission::Admission, one_line, services};
use crate::stats::Stats;

mod invoke;

/// The `host` command: serve with the flags alone, or run a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    about = "Serve WebAssembly component plugins over UDP and TCP",
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Serve: the flags alone.
    #[command(flatten)]
    pub serve: Config,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `host` does instead of serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and validate the plugin as the server would, then exit (like
    /// nginx -t)
    ///
    /// The plugin (or every plugin of a services file, `--config`) is
    /// read, compiled (or taken from the compile cache), linked and
    /// instantiated once with the flags the server would be given. Exit 0
    /// with `PATH: ok: implements WORLD, version V (...)` on stdout, or 2
    /// with one error line. Binds no address and opens no key-value store.
    Check(CheckArgs),
    /// Call the plugin once with PAYLOAD, without sockets, and print the
    /// reply
    ///
    /// The reply goes to stdout as the plugin returned it (before any
    /// framing, no newline added). Exit 0 on a reply, or on none (`no
    /// reply` on stderr); 1 when the plugin returns an error; 2 when it
    /// traps, runs out of time or fuel, its reply is over a limit, or it
    /// does not load. A connection-handler plugin gets PAYLOAD as one
    /// `on-data`, then `on-end`; what it writes is printed.
    Invoke(InvokeArgs),
    /// Put the previous version of a plugin file back in place
    ///
    /// Every host records each plugin version it loads (the last 5 per
    /// path, beside its compile cache). This writes the most recent one
    /// that differs from the file now at PATH back over it, atomically; a
    /// host serving PATH then reloads it like any other change. Run twice,
    /// it goes back and forth between the last two versions.
    Rollback(RollbackArgs),
}

/// `host rollback`: which plugin file, and where the host keeps its cache.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The plugin file a host serves (the path it was given).
    #[arg(long, value_name = "PATH")]
    pub plugin: std::path::PathBuf,
    /// The serving host's compile cache directory, if it was given one
    /// [default: the host's default].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
}

/// `host check`: every flag of the server.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The flags the server would be started with.
    #[command(flatten)]
    pub config: Config,
}

/// `host invoke`: the flags that shape one call, the payload, and how it
/// seems to arrive.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The plugin and its limits, as the server takes them (the flags about
    /// sockets, connections and reloads do not apply).
    #[command(flatten)]
    pub config: Config,
    /// The request's payload; `-` reads it from stdin.
    #[arg(value_name = "PAYLOAD", allow_hyphen_values = true)]
    pub payload: OsString,
    /// PAYLOAD (or stdin) is hex, and the reply is written in hex with a
    /// newline.
    #[arg(long)]
    pub hex: bool,
    /// The transport the request seems to arrive on: the plugin sees it,
    /// and a UDP reply is capped as the server would cap it
    /// (`--max-amplification`, one datagram) [default: udp; tcp for a
    /// connection-handler plugin].
    #[arg(long, value_enum, value_name = "TRANSPORT")]
    pub transport: Option<InvokeTransport>,
    /// The peer address the plugin sees.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub peer: SocketAddr,
}

/// `--transport` of `host invoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvokeTransport {
    /// As one UDP datagram.
    Udp,
    /// As one frame of a TCP connection (a connection-handler plugin: the
    /// bytes of a connection that then ends).
    Tcp,
}

/// The server's flags that mean nothing to one call without sockets:
/// `host invoke` hides them and refuses them (silently ignoring a flag
/// would let a user believe it applied).
const NOT_FOR_INVOKE: &[&str] = &[
    "config",
    "listen",
    "udp",
    "tcp",
    "tcp_isolation",
    "max_connections",
    "idle_timeout",
    "drain_timeout",
    "reload_grace",
    "instance_reuse",
    "no_watch",
    "workers",
    "metrics",
    "reuse_port",
    "user",
    "udp_source_rate",
];

impl Cli {
    /// Parse the command line (`args` includes the program name).
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Self::command().mut_subcommand("invoke", |invoke| {
            invoke.mut_args(|arg| {
                let hide = NOT_FOR_INVOKE.contains(&arg.get_id().as_str());
                arg.hide(hide)
            })
        });
        let matches = command.try_get_matches_from_mut(args)?;
        if let Some(("invoke", invoke)) = matches.subcommand() {
            for id in NOT_FOR_INVOKE {
                if invoke.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
                    let flag = id.replace('_', "-");
                    let why = if *id == "config" {
                        "host invoke calls one plugin: give it with --plugin".to_string()
                    } else {
                        format!("--{flag} has no effect on host invoke, which opens no socket: leave it out")
                    };
                    return Err(command.error(clap::error::ErrorKind::ArgumentConflict, why));
                }
            }
        }
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
    }
}

/// What a subcommand printed and how the process exits. It is written out
/// by [`Finished::print`] once the log is flushed, so that the result
/// comes after the plugin's log lines on a terminal.
#[derive(Debug)]
pub struct Finished {
    /// The exit code.
    pub code: ExitCode,
    /// For stdout, as is.
    pub stdout: Vec<u8>,
    /// One line for stderr (`error: ...`, `no reply`).
    pub stderr: Option<String>,
}

impl Finished {
    fn ok(stdout: Vec<u8>) -> Self {
        Self { code: ExitCode::SUCCESS, stdout, stderr: None }
    }

    fn error(code: u8, message: String) -> Self {
        Self { code: ExitCode::from(code), stdout: Vec::new(), stderr: Some(format!("error: {message}")) }
    }

    /// Write the output; the exit code (2 if stdout cannot be written).
    pub fn print(self) -> ExitCode {
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(&self.stdout).and_then(|()| out.flush()) {
            eprintln!("error: cannot write to stdout: {e}");
            return ExitCode::from(2);
        }
        if let Some(line) = self.stderr {
            eprintln!("{line}");
        }
        self.code
    }
}

/// Run a subcommand.
pub async fn run(command: Command) -> Finished {
    match command {
        Command::Check(args) => {
            // The services checked before one failed are still reported.
            let mut lines = String::new();
            match check(&args.config, &mut lines).await {
                Ok(()) => Finished::ok(lines.into_bytes()),
                Err(e) => Finished { stdout: lines.into_bytes(), ..Finished::error(2, one_line(&e)) },
            }
        }
        Command::Invoke(args) => invoke::invoke(&args).await.unwrap_or_else(|e| Finished::error(2, one_line(&e))),
        Command::Rollback(args) => match crate::plugin::history::rollback(&args.plugin, args.cache_dir.as_deref()) {
            Ok(done) => Finished::ok(format!("{done}\n").into_bytes()),
            Err(e) => Finished::error(2, one_line(&e)),
        },
    }
}

/// `host check`: each plugin loaded and validated, one line each in
/// `lines`.
async fn check(config: &Config, lines: &mut String) -> anyhow::Result<()> {
    match &config.config {
        // A services file: the file itself, then each service's plugin,
        // each with its own flags.
        Some(path) => {
            let file = crate::servicefile::with_command_line(crate::servicefile::load(path)?, config)?;
            // `load` validated every service's flags.
            for service in &file.services {
                let name = crate::service::service_name(service)?;
                let line = check_plugin(service).await?;
                *lines += &format!("{}: service {name}: {line}\n", path.display());
            }
        }
        None => {
            config.validate()?;
            *lines += &(check_plugin(config).await? + "\n");
        }
    }
    Ok(())
}

/// Load one service's plugin as the server would, without its store:
/// `PATH: ok: implements WORLD, version V (compiled in X ms | from cache)`.
async fn check_plugin(config: &Config) -> anyhow::Result<String> {
    let checked = crate::service::check(config, config.max_instances).await?;
    let plugin = &checked.plugin;
    if plugin.world() == World::Connection
        && (config.framing != crate::config::Framing::Lines
            || config.tcp_isolation != crate::config::TcpIsolation::Request)
    {
        // The server says so too, and serves.
        tracing::warn!(
            "--framing and --tcp-isolation have no effect: plugin {} implements the connection-handler world, \
             which frames its own protocol in one instance per connection",
            plugin.info().name
        );
    }
    let how = match checked.compiled_in {
        Some(took) => format!("compiled in {} ms", took.as_millis()),
        None => "from cache".into(),
    };
    Ok(format!(
        "{}: ok: implements {}, version {} ({how})",
        plugin.info().path.display(),
        world_name(plugin.world()),
        plugin.info().version
    ))
}

/// The world's full name, as in the contract.
fn world_name(world: World) -> &'static str {
    match world {
        World::Handler => "sockets:plugin/handler",
        World::Connection => "sockets:plugin/connection-handler@0.2.0",
    }
}

/// A plugin loaded for `host invoke`, with the engine's epoch ticker
/// (timeouts need it).
struct Loaded {
    plugin: Plugin,
    _ticker: EpochTicker,
}

/// Load `config`'s plugin with the engine, limits, loader and compile
/// cache a service would use.
async fn load(config: &Config, services: services::Services, stats: Arc<Stats>) -> anyhow::Result<Loaded> {
    let limits = EngineLimits {
        max_memory: config.max_memory,
        max_instances: config.max_instances,
        fuel: config.fuel.is_some(),
    };
    let engine = new_engine(limits).with_context(|| {
        format!(
            "--max-instances {} with --max-memory {}",
            config.max_instances,
            bytesize::ByteSize(config.max_memory as u64)
        )
    })?;
    let ticker = EpochTicker::start(&engine)?;
    let loader = Loader::new(engine, Admission::new(&limits), config.cache_dir(), stats.clone(), Arc::new(services))?
        .with_init_timeout(config.init_timeout);
    let plugin = loader.load(config.plugin_path()?, &call_limits(config)).await?;
    Ok(Loaded { plugin, _ticker: ticker })
}

/// The default log level of the host's own lines: `info` when serving;
/// for `check` and `invoke`, whose output is on stdout, `warn`, with the
/// plugin's own lines (its log calls, stdout and stderr) at `info`.
pub fn default_log_level(command: Option<&Command>) -> (LevelFilter, &'static [&'static str]) {
    match command {
        None => (LevelFilter::INFO, &[]),
        Some(Command::Check(_) | Command::Rollback(_)) => (LevelFilter::WARN, &[]),
        Some(Command::Invoke(_)) => (LevelFilter::WARN, &["host::plugin::state=info", "host::plugin::output=info"]),
    }
}

/// The log filter for `RUST_LOG` (`None`: unset): a bare level applies to
/// the host's own lines (target `host`), while the dependencies (wasmtime,
/// cranelift, ...) stay at `warn` unless named. `RUST_LOG=debug` is
/// `warn,host=debug`; `RUST_LOG=wasmtime=debug` is
/// `warn,host=info,wasmtime=debug`. `host_level` and `extra` are the
/// defaults ([`default_log_level`]); `extra` applies only without `RUST_LOG`.
pub fn log_directives(rust_log: Option<&str>, host_level: LevelFilter, extra: &[&str]) -> String {
    let given: Vec<&str> = rust_log.unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    // As in EnvFilter, the last bare level wins.
    let bare = given.iter().rev().find_map(|d| d.parse::<LevelFilter>().ok());
    let targeted: Vec<&str> = given.iter().copied().filter(|d| d.parse::<LevelFilter>().is_err()).collect();
    let level = bare.unwrap_or(host_level);
    let mut out = vec![level.min(LevelFilter::WARN).to_string().to_lowercase()];
    // A directive for exactly `host` is the user's, and would tie with ours.
    if !targeted.iter().any(|d| d.split(['=', '[']).next() == Some("host")) {
        out.push(format!("host={}", level.to_string().to_lowercase()));
    }
    if given.is_empty() {
        out.extend(extra.iter().map(|d| d.to_string()));
    }
    out.extend(targeted.iter().map(|d| d.to_string()));
    out.join(",")
}

/// The host-wide settings the server starts with (log format, workers):
/// the command line's, or a services file's with the command line over
/// them. The flags are validated here, and every service of a services
/// file, so that an error is reported before anything starts.
pub fn settings(config: &Config) -> anyhow::Result<Config> {
    match &config.config {
        Some(path) => {
            // `load` validated every service's flags.
            let file = crate::servicefile::with_command_line(crate::servicefile::load(path)?, config)?;
            Ok(file.host)
        }
        None => {
            config.validate()?;
            Ok(config.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_bare_level_is_the_hosts_and_dependencies_stay_at_warn() {
        let d = |s: Option<&str>| log_directives(s, LevelFilter::INFO, &["x=info"]);
        assert_eq!(d(None), "warn,host=info,x=info");
        assert_eq!(d(Some("")), "warn,host=info,x=info");
        assert_eq!(d(Some("debug")), "warn,host=debug");
        assert_eq!(d(Some("trace")), "warn,host=trace");
        assert_eq!(d(Some("error")), "error,host=error");
        assert_eq!(d(Some("off")), "off,host=off");
        assert_eq!(d(Some("wasmtime=debug")), "warn,host=info,wasmtime=debug");
        assert_eq!(d(Some("debug,cranelift_codegen=trace")), "warn,host=debug,cranelift_codegen=trace");
        assert_eq!(d(Some("host=trace")), "warn,host=trace");
        assert_eq!(d(Some("debug,host=info")), "warn,host=info");
        assert_eq!(d(Some("host::dispatch=debug")), "warn,host=info,host::dispatch=debug");
        assert_eq!(d(Some("info,debug")), "warn,host=debug");
        for s in ["debug", "wasmtime=debug", "host[service]=debug"] {
            let directives = d(Some(s));
            assert!(tracing_subscriber::EnvFilter::builder().parse(&directives).is_ok(), "{directives}");
        }
    }

    #[test]
    fn the_server_form_and_the_subcommands_parse() {
        let cli = Cli::try_parse_args(["host", "--plugin", "p.wasm", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.plugin.as_deref(), Some(Path::new("p.wasm")));

        let cli = Cli::try_parse_args(["host", "check", "--plugin", "p.wasm", "--max-memory", "16MiB"]).unwrap();
        let Some(Command::Check(args)) = cli.command else { panic!("{cli:?}") };
        assert_eq!(args.config.max_memory, 16 << 20);

        let cli =
            Cli::try_parse_args(["host", "invoke", "--plugin", "p.wasm", "--timeout", "2s", "--hex", "6869"]).unwrap();
        let Some(Command::Invoke(args)) = cli.command else { panic!("{cli:?}") };
        assert_eq!((args.payload.to_str(), args.hex, args.transport), (Some("6869"), true, None));
        assert_eq!(args.config.timeout, std::time::Duration::from_secs(2));

        let cli = Cli::try_parse_args(["host", "invoke", "--plugin", "p.wasm", "-"]).unwrap();
        let Some(Command::Invoke(args)) = cli.command else { panic!("{cli:?}") };
        assert_eq!(args.payload, "-");
    }

    #[test]
    fn invoke_refuses_the_flags_about_sockets() {
        for flag in [["--listen", "127.0.0.1:0"], ["--workers", "2"], ["--config", "h.toml"]] {
            let err = Cli::try_parse_args(["host", "invoke", "--plugin", "p.wasm", flag[0], flag[1], "x"])
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag[0]) || err.contains("--plugin"), "{flag:?}: {err}");
        }
        // Every name in the list is a flag of the server.
        let ids: Vec<String> = Config::command().get_arguments().map(|a| a.get_id().to_string()).collect();
        for id in NOT_FOR_INVOKE {
            assert!(ids.iter().any(|i| i == id), "{id} is not a flag");
        }
    }

    #[test]
    fn check_and_invoke_are_not_flags_of_the_server() {
        let err = Cli::try_parse_args(["host", "--plugin", "p.wasm", "check"]).unwrap_err().to_string();
        assert!(err.contains("check"), "{err}");
        assert!(Cli::try_parse_args(["host", "check"]).is_err(), "check needs --plugin or --config");
    }
}
