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
mod logfmt;
mod replay;
mod sockets;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command, LogFormat},
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
    let given: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = configfile::complete_args(given.clone()).map_err(|e| Usage(anyhow::anyhow!(e)))?;
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
        Command::Run(args) => daemon::run(args.config()?, reread(given, &cli))?,
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
        Command::Generate(args) => cli::generate::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A reload's settings (SIGHUP): the same command line completed from the `--config` file as
/// it reads now. The log flags are set up once; a file that changes them is refused.
fn reread(given: Vec<std::ffi::OsString>, first: &Cli) -> daemon::Reread {
    let (log, format) = (first.log.clone(), first.log_format);
    Box::new(move || {
        let argv = configfile::complete_args(given.clone()).map_err(|e| anyhow::anyhow!(e))?;
        let cli = <Cli as clap::Parser>::try_parse_from(argv)
            .map_err(|e| anyhow::anyhow!(first_line(&e)))?;
        if cli.log != log {
            anyhow::bail!("--log changed, which needs a restart (`systemctl restart tcpstate`)");
        }
        if cli.log_format != format {
            anyhow::bail!(
                "--log.format changed, which needs a restart (`systemctl restart tcpstate`)"
            );
        }
        match cli.command {
            Command::Run(args) => Ok(args.config()?),
            _ => anyhow::bail!("the command line is no longer `run`"),
        }
    })
}

/// clap's error message, first line only (its usage hints are for a terminal).
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

/// One subscriber for everything: the daemon's tracing events and, through tracing-log, the
/// `log` records of aya (its loader's warnings) and aya-log. Colour only on a terminal and
/// without NO_COLOR (https://no-color.org): escape codes must not reach journald or files.
fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;

    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};

    // A preflight prints one line; its progress logs would only bury it.
    let quiet = matches!(&cli.command, Command::Run(a) if a.check)
        && std::env::var_os("TCPSTATE_LOG").is_none();
    let level = if quiet { "warn" } else { cli.log.as_str() };
    // aya's object loader logs every relocation at debug (thousands of lines a start): a plain
    // `debug` or `trace` means ours; a directive (`aya_obj=debug`) still asks for them.
    let level = match level.trim().to_ascii_lowercase().as_str() {
        "debug" | "trace" => format!("{level},aya_obj=info"),
        _ => level.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // node_exporter logs logfmt; a person at a terminal reads tracing's own format better.
    let format = cli.log_format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Logfmt
    });
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        // Our own formatter (src/logfmt.rs says why not a crate's).
        LogFormat::Logfmt => tracing_subscriber::fmt::layer()
            .event_format(logfmt::Logfmt)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
    };
    // `init` also installs tracing-log's LogTracer, so `log` records reach this subscriber.
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .init();
}

/// `tcpstate leaks | head` must end quietly when head closes the pipe, as command-line tools do:
/// the default SIGPIPE action (Rust ignores SIGPIPE, so println! would panic on EPIPE). Not for
/// `run`: a scraper hanging up mid-response must not kill the daemon.
fn restore_sigpipe_for_inspection() {
    let daemon = std::env::args().skip(1).any(|a| a == "run");
    if !daemon {
        // SAFETY: setting a signal disposition to its default before any thread starts. (No
        // safe wrapper: rustix leaves signal dispositions out, nix's signal() is unsafe too.)
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
}
