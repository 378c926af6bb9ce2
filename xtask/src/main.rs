//! `cargo xtask`: one entry point for the things a developer or CI does with tcpstate.
//!
//! Every command first runs `setup`, which installs only what is missing and costs about a second
//! when everything is there.

mod dist;
mod msrv;
mod prometheusrule;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (Debian packages, bpf-linker, rust-src, bpffs).
    Setup,
    /// Build the daemon (and the kernel programs it embeds) in release mode.
    Build,
    /// Build and run the daemon as root; arguments after `--` go to `tcpstate run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: host unit and property tests, then the privileged end-to-end suite.
    Test {
        /// Only the host tests (no root needed).
        #[arg(long)]
        host_only: bool,
        /// Filter passed to the end-to-end suite (test name substring).
        filter: Option<String>,
    },
    /// Build what is shipped into target/dist: the static (musl) binary with the kernel programs
    /// inside, a .deb, and the FROM-scratch container image (podman) as an OCI archive.
    Dist,
    /// rustfmt and clippy (-D warnings) on the host crates, and clippy on the eBPF crate with nightly.
    Lint,
    /// Write deploy/kubernetes/prometheusrule.yaml (a prometheus-operator PrometheusRule) from
    /// deploy/prometheus/tcpstate-rules.yml: run it after changing the rules (a host test fails
    /// while the two differ).
    PrometheusRule,
    /// Benchmarks (not tests, as root): per-packet cost by BPF_PROG_TEST_RUN against pass-only
    /// programs from the same object and kernel memory per flow (`kernel`); veth throughput and
    /// connection rate with and without the tracker, scrape latency and the daemon's cost against
    /// table size, and node_exporter side by side (`system`); `tcpstate replay`'s packets/s
    /// beside tshark and its memory (`replay`). Writes target/bench/report.json.
    Bench {
        /// Run one part only: kernel, system or replay.
        part: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    // Rendering a YAML file needs nothing installed.
    if !matches!(cmd, Cmd::PrometheusRule) {
        setup::ensure()?;
    }
    match cmd {
        Cmd::Setup => Ok(()),
        Cmd::Build => cargo(&["build", "--release", "-p", "tcpstate-user"]),
        Cmd::Run { args } => {
            require_root("tcpstate run")?;
            cargo(&["build", "--release", "-p", "tcpstate-user"])?;
            let bin = root().join("target/release/tcpstate");
            let mut cmd = Command::new(bin);
            cmd.arg("run").args(args);
            status(&mut cmd)
        }
        Cmd::Test { host_only, filter } => test(host_only, filter),
        Cmd::Lint => lint(),
        Cmd::Dist => dist::dist(),
        Cmd::PrometheusRule => prometheus_rule(),
        Cmd::Bench { part } => bench(part.as_deref()),
    }
}

const BENCH_PARTS: [&str; 3] = ["kernel", "system", "replay"];

/// Runs the benchmark parts, then joins their figures into target/bench/report.json.
fn bench(only: Option<&str>) -> Result<()> {
    require_root("the benchmarks (they load the kernel programs and make network namespaces)")?;
    if let Some(p) = only {
        anyhow::ensure!(
            BENCH_PARTS.contains(&p),
            "unknown benchmark part {p:?}: use one of {BENCH_PARTS:?}"
        );
    }
    let dir = root().join("target/bench");
    let mut figures = Vec::new();
    for part in BENCH_PARTS {
        let file = dir.join(format!("{part}.json"));
        if only.is_none_or(|p| p == part) {
            let _ = std::fs::remove_file(&file);
            cargo(&["bench", "-p", "tcpstate-user", "--bench", part])?;
        }
        // Each part writes a JSON array, one object per line; a part not run this time keeps
        // its last figures.
        if let Ok(text) = std::fs::read_to_string(&file) {
            figures.extend(
                text.lines()
                    .filter(|l| l.trim_start().starts_with('{'))
                    .map(|l| l.trim_end_matches(',').to_string()),
            );
        }
    }
    let report = dir.join("report.json");
    std::fs::write(&report, format!("[\n{}\n]\n", figures.join(",\n")))?;
    let failed = figures
        .iter()
        .filter(|f| f.contains("\"pass\": false"))
        .count();
    println!(
        "{} figures, {failed} missing their target: {}",
        figures.len(),
        report.display()
    );
    Ok(())
}

fn test(host_only: bool, filter: Option<String>) -> Result<()> {
    // Host tests: the state machine, parser and daemon logic. The eBPF crate cannot build for the
    // host and the e2e suite needs root, so both stay out of default-members.
    cargo(&["test"])?;
    if host_only {
        return Ok(());
    }
    require_root("the end-to-end tests (network namespaces, XDP, TC, bpffs)")?;
    // One thread: the tests share bpffs and the kernel's XDP/TC attach points.
    let mut args = vec![
        "test",
        "-p",
        "tcpstate-user",
        "--features",
        "e2e",
        "--test",
        "e2e",
        "--",
    ];
    if let Some(f) = filter.as_deref() {
        args.push(f);
    }
    args.push("--test-threads=1");
    cargo(&args)
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // Cargo.toml's rust-version against every locked dependency's.
    msrv::check()?;
    cargo(&[
        "clippy",
        "--all-targets",
        "--features",
        "tcpstate-user/e2e",
        "--",
        "-D",
        "warnings",
    ])?;
    // The kernel crate: nightly, for the BPF target, as aya-build compiles it.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("tcpstate-ebpf")).args([
        "+nightly",
        "clippy",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);
    status(&mut cmd)
}

fn prometheus_rule() -> Result<()> {
    let rules = std::fs::read_to_string(root().join(prometheusrule::RULES))?;
    let object = prometheusrule::render(&rules).map_err(anyhow::Error::msg)?;
    let path = root().join(prometheusrule::OBJECT);
    std::fs::write(&path, object)?;
    println!("{}", path.display());
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY-free: reading the effective uid through /proc keeps xtask free of libc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        bail!("{what} need root: run `sudo -E cargo xtask ...` (or as root)");
    }
    Ok(())
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(args);
    status(&mut cmd)
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}
