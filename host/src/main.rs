//! The `host` binary: parse the command line, set up the log, then serve
//! ([`host::run`] on a multi-threaded runtime) or run a subcommand
//! ([`host::cli`]); a startup error is one line and exit code 2.

use std::process::ExitCode;

use host::cli::{Cli, Command};
use host::config::LogFormat;

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet (the log writer and the runtime
    // start below); this unsets the LISTEN_* variables of socket activation.
    unsafe { host::systemd::adopt_listen_fds() };
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // Clap's first paragraph names the bad flag or value (over one or
            // more lines); the usage block after it is noise in a one-line error.
            let msg = e.to_string();
            let first: Vec<&str> = msg.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            eprintln!("{} (see host --help)", first.join(" "));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(), // --help, --version
    };
    let Cli { serve: config, command } = cli;
    let (host_level, extra) = host::cli::default_log_level(command.as_ref());
    let Some(command) = command else {
        // What can be checked before anything starts is checked first:
        // flag combinations, and the services file with each service.
        let settings = match host::cli::settings(&config) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
        let log = init_logging(settings.log_format, host_level, extra);
        return serve(config, &settings, log);
    };
    let log_format = match &command {
        Command::Check(args) => args.config.log_format,
        Command::Invoke(args) => args.config.log_format,
        Command::Rollback(_) => host::config::LogFormat::Text,
    };
    let log = init_logging(log_format, host_level, extra);
    // One thread is plenty for one plugin; compiling uses the blocking
    // pool (and every core, through wasmtime's parallel compilation).
    let runtime = tokio::runtime::Builder::new_current_thread().thread_stack_size(WORKER_STACK).enable_all().build();
    let finished = match runtime {
        Ok(rt) => {
            let finished = rt.block_on(host::cli::run(command));
            rt.shutdown_background();
            finished
        }
        Err(e) => {
            drop(log);
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    drop(log);
    finished.print()
}

/// Serve until SIGTERM or SIGINT; `settings` are the host-wide ones.
fn serve(
    config: host::Config,
    settings: &host::Config,
    log_guard: tracing_appender::non_blocking::WorkerGuard,
) -> ExitCode {
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers.unwrap_or_else(host::default_workers))
        // Plugins called synchronously run on these threads' stacks: room for
        // the wasm stack (`MAX_WASM_STACK`) plus the host frames below it.
        .thread_stack_size(WORKER_STACK)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => {
            let result = rt.block_on(async {
                // The handlers exist before the host says it is ready, so a
                // SIGTERM sent right after `ready` drains instead of killing.
                let shutdown = shutdown_signal()?;
                host::run(config, shutdown).await
            });
            // Requests past the drain timeout, or a reload still compiling,
            // are abandoned rather than waited for.
            rt.shutdown_background();
            result
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    drop(log_guard);
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Log to stderr in `format`, filtered by `RUST_LOG` as
/// [`host::cli::log_directives`] reads it.
///
/// Log lines go through a bounded queue to a thread that writes them to
/// stderr, so that a worker thread never blocks on a slow or full stderr;
/// when the queue is full, lines are dropped (lossy). Dropping the guard
/// writes out the queue: it lives until the end of `main`, and is dropped
/// before an error is printed so that the error comes last.
fn init_logging(
    format: LogFormat,
    host_level: tracing_subscriber::filter::LevelFilter,
    extra: &[&str],
) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("host-log")
        .finish(std::io::stderr());
    let rust_log = std::env::var("RUST_LOG").ok();
    let directives = host::cli::log_directives(rust_log.as_deref(), host_level, extra);
    let (filter, bad) = match EnvFilter::builder().parse(&directives) {
        Ok(filter) => (filter, None),
        Err(e) => {
            let fallback = host::cli::log_directives(None, host_level, extra);
            (EnvFilter::new(fallback), Some(e))
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // One object per line: `timestamp`, `level`, `target`, the event's
        // `fields` (`message` among them) and `spans`, the fields of the
        // spans it happened in (`service`), outermost first.
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(true).init(),
    }
    if let Some(e) = bad {
        tracing::warn!("RUST_LOG={:?} ignored: {e}", rust_log.unwrap_or_default());
    }
    guard
}

/// Log lines waiting to be written to stderr, at most. Lines are short but
/// may carry a plugin's message (up to 4 KiB): this bounds the queue to a
/// few MiB, 32 MiB in the worst case (tracing-appender's default, 128,000
/// lines, would allow 500 MiB).
const LOG_QUEUE_LINES: usize = 8 << 10;

/// Native stack of each worker thread.
const WORKER_STACK: usize = host::plugin::engine::MAX_WASM_STACK + (4 << 20);

/// Every TCP connection is a file descriptor: raise the soft limit to the
/// hard limit (as Go and nginx do), so `--max-connections` is not capped by
/// a default soft limit of 1024. Failure only means the default stays.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open files limit from {soft} to {hard}: {e}");
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes on
/// the first of them.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
