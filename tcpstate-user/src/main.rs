//! `tcpstate`: the daemon (`run`) and the inspection commands.

mod cli;
mod closewait;
mod config;
mod daemon;
mod error;
mod expiry;
mod http;
mod inspect;
mod leaks;
mod loader;
mod metrics;
mod netif;
mod owners;
mod seed;
mod sockdiag;
mod sweeper;
mod tables;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    config::{ConfigError, RunConfig},
    error::Preflight,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Command::Leaks(args) = &cli.command {
        // 0: no leak, 1: leaks, 2: could not tell.
        return match leaks::run(args) {
            Ok(false) => ExitCode::SUCCESS,
            Ok(true) => ExitCode::from(1),
            Err(e) => {
                eprintln!("tcpstate: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let result = match &cli.command {
        Command::Run(args) => RunConfig::from_args(args)
            .map_err(anyhow::Error::from)
            .and_then(daemon::run),
        Command::Flows(args) => inspect::flows(args),
        Command::Cleanup(args) => inspect::cleanup(&args.pin_dir),
        Command::Leaks(_) => unreachable!("handled above"),
        Command::DescribeMetrics => metrics::describe()
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
