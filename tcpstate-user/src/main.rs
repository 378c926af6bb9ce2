//! `tcpstate`: the daemon (`run`) and the inspection commands.
//!
//! ```text
//! tcpstate-user/src, in layers that import only downward:
//!
//!   main.rs, daemon.rs          wiring only: parse, decide the exit code, start and own the pieces
//!   cli/                        flags (clap) -> settings (cli/settings.rs); nothing below sees a flag
//!   config.rs                   the validated settings of `run`
//!   replay/  inspect/  exporter/   what users read: offline replay, flows/leaks, /metrics
//!   containers/                 container mode: veths -> namespaces -> scopes -> names
//!   background/                 behind the scrape: the sweeper's walk, seeding, settling, the
//!                               interface follower, the scope view the watcher writes and the
//!                               exporter reads
//!   bpf/  sockets/              the kernel's interfaces: load, attach, maps, links; sock_diag, /proc
//! ```

mod background;
mod bpf;
mod cli;
mod config;
mod configfile;
mod containers;
mod daemon;
mod error;
mod exporter;
mod inspect;
mod replay;
mod sockets;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    config::ConfigError,
    error::Preflight,
};

fn main() -> ExitCode {
    restore_sigpipe_for_inspection();
    match run() {
        Ok(code) => code,
        Err(e) => {
            // One line that says what to do; causes joined with ": ".
            eprintln!("tcpstate: {e:#}");
            ExitCode::from(failure_code(&e))
        }
    }
}

/// The one place that decides the exit codes: 0 done (or, for `leaks`, no leak), 1 leaks found
/// or a failure while running, 2 a usage error or a preflight that failed (bad flags or
/// configuration, missing privilege, an unreadable capture: what the caller must change).
fn failure_code(e: &anyhow::Error) -> u8 {
    let usage = e.downcast_ref::<Preflight>().is_some()
        || e.downcast_ref::<ConfigError>().is_some()
        || e.downcast_ref::<replay::ReplayError>().is_some()
        || e.downcast_ref::<replay::capture::CaptureError>().is_some()
        || e.downcast_ref::<Usage>().is_some();
    if usage {
        2
    } else {
        1
    }
}

/// An error that is the caller's to fix (exit code 2), whatever its cause.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Usage(anyhow::Error);

fn run() -> anyhow::Result<ExitCode> {
    let argv = configfile::complete_args(std::env::args_os().collect())
        .map_err(|e| Usage(anyhow::anyhow!(e)))?;
    let cli = Cli::parse_from(argv);
    init_logging(&cli);
    match &cli.command {
        // A preflight for deployment scripts: any failure is a usage error (2), one line.
        Command::Run(args) if args.check => {
            let summary = args
                .config()
                .map_err(anyhow::Error::from)
                .and_then(daemon::check)
                .map_err(Usage)?;
            println!("{summary}");
        }
        Command::Run(args) => daemon::run(args.config()?)?,
        // 0: no leak, 1: leaks, 2: could not tell (no daemon running, say).
        Command::Leaks(args) => {
            let leaking = inspect::leaks::run(&args.query()).map_err(Usage)?;
            return Ok(ExitCode::from(u8::from(leaking)));
        }
        Command::Replay(args) => replay::run(&args.request()?)?,
        Command::Flows(args) => inspect::flows::flows(&args.query())?,
        Command::Cleanup(args) => inspect::flows::cleanup(&args.pin_dir)?,
        Command::DescribeMetrics(args) => {
            let body = exporter::metrics::describe_with(args.containers)?;
            std::io::Write::write_all(&mut std::io::stdout(), &body)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(cli: &Cli) {
    // A preflight prints one line; its progress logs would only bury it.
    let quiet = matches!(&cli.command, Command::Run(a) if a.check)
        && std::env::var_os("TCPSTATE_LOG").is_none();
    let level = if quiet { "warn" } else { cli.log.as_str() };
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `tcpstate leaks | head` must end quietly when head closes the pipe, as command-line tools do:
/// the default SIGPIPE action (Rust ignores SIGPIPE, so println! would panic on EPIPE). Not for
/// `run`: a scraper hanging up mid-response must not kill the daemon.
fn restore_sigpipe_for_inspection() {
    let daemon = std::env::args().skip(1).any(|a| a == "run");
    if !daemon {
        // SAFETY: setting a signal disposition to its default before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
}
