//! `tcpstate`: the daemon (`run`) and the inspection commands.

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
    let argv = match configfile::complete_args(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tcpstate: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
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
    if let Command::Leaks(args) = &cli.command {
        // 0: no leak, 1: leaks, 2: could not tell.
        return match inspect::leaks::run(args) {
            Ok(false) => ExitCode::SUCCESS,
            Ok(true) => ExitCode::from(1),
            Err(e) => {
                eprintln!("tcpstate: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Replay(args) = &cli.command {
        // A capture that cannot be read, or bad options: one line, exit 2.
        return match replay::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tcpstate: {e:#}");
                let usage = e.downcast_ref::<replay::ReplayError>().is_some()
                    || e.downcast_ref::<replay::capture::CaptureError>().is_some();
                ExitCode::from(if usage { 2 } else { 1 })
            }
        };
    }
    let result = match &cli.command {
        Command::Run(args) if args.check => {
            // Preflight for deployment scripts: any failure is exit 2, one line.
            return match args
                .config()
                .map_err(anyhow::Error::from)
                .and_then(daemon::check)
            {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tcpstate: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Run(args) => args
            .config()
            .map_err(anyhow::Error::from)
            .and_then(daemon::run),
        Command::Flows(args) => inspect::flows::flows(args),
        Command::Cleanup(args) => inspect::flows::cleanup(&args.pin_dir),
        Command::Leaks(_) | Command::Replay(_) => unreachable!("handled above"),
        Command::DescribeMetrics(args) => exporter::metrics::describe_with(args.containers)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(std::io::Write::write_all(&mut std::io::stdout(), &b)?)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what to do; causes joined with ": ".
            eprintln!("tcpstate: {e:#}");
            let usage = e.downcast_ref::<Preflight>().is_some()
                || e.downcast_ref::<ConfigError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
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
