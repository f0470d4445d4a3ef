//! The `host` binary: parse the command line, start the runtime, call
//! [`host::run`], and turn a startup error into one line and exit code 2.

use std::process::ExitCode;

use clap::Parser as _;
use host::Config;

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet (the log writer and the runtime
    // start below); this unsets the LISTEN_* variables of socket activation.
    unsafe { host::systemd::adopt_listen_fds() };
    let config = match Config::try_parse() {
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
    // Log lines go through a bounded queue to a thread that writes them to
    // stderr, so that a worker thread never blocks on a slow or full stderr;
    // when the queue is full, lines are dropped (lossy). Dropping the guard
    // writes out the queue: it lives until the end of `main`, and is dropped
    // before an error is printed so that the error comes last.
    let (writer, log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("host-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.unwrap_or_else(host::default_workers))
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
