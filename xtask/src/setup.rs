//! `cargo xtask setup`: installs, idempotently and only what is missing, what a fresh machine of
//! this project's kind needs. Checks are cheap (dpkg-query, rustup, a statfs); installs run only
//! when a check fails.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::status;

/// Debian packages: LLVM 22 to build bpf-linker against (it must match rustc's LLVM), and the
/// tools the tests drive: promtool (prometheus), nft (nftables), hping3, scapy, ss/ip (iproute2),
/// curl for the README's check, util-linux for nsenter; and for `cargo xtask bench`, node_exporter
/// (compared side by side) and procps (sysctl in the benchmark's namespaces); podman and runc for
/// the container tests (crun refuses this machine kind's hybrid cgroups, so runc is named); tcpdump
/// for the captures the e2e suite replays, and tshark, the peer `cargo xtask bench replay` is
/// measured beside; sockperf, whose 64-byte ping-pong and throughput give `cargo xtask bench` a
/// packet rate that GRO cannot batch away; musl-tools (musl-gcc) for ring's C code in the static
/// build of `cargo xtask dist`; lintian, which the e2e test of the .deb runs on it, and groff and
/// man-db, with which the host tests render the man pages `tcpstate generate man` writes; nginx
/// and apache2-utils (ab), the real server and client of the benchmark's loopback figure (the
/// bench runs its own nginx in a namespace: Debian's service is stopped and disabled right after
/// the install, see [`quiet_nginx`]).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "prometheus",
    "nftables",
    "hping3",
    "python3-scapy",
    "iproute2",
    "curl",
    "util-linux",
    "prometheus-node-exporter",
    "procps",
    "podman",
    "runc",
    "tcpdump",
    "tshark",
    "sockperf",
    "musl-tools",
    "lintian",
    "groff-base",
    "man-db",
    "nginx",
    "apache2-utils",
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// The bpf-linker release known to build against LLVM 22 with this machine's rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    musl_target()?;
    bpffs();
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )?;
    if missing.contains(&"nginx") {
        quiet_nginx()?;
    }
    Ok(())
}

/// Debian's nginx postinst enables the service and starts it (unless a policy-rc.d forbids it),
/// which would leave a web server listening on the machine's port 80 that nothing here uses: the
/// benchmark starts its own nginx in a namespace with a configuration of its own. Stops it and
/// keeps it from starting at boot (systemd where it runs, the init script's links otherwise), then
/// checks that nothing listens on port 80 any more.
fn quiet_nginx() -> Result<()> {
    eprintln!(
        "xtask setup: stopping and disabling Debian's nginx service (the bench runs its own)"
    );
    if Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "nginx"])
            .status();
    } else {
        let _ = Command::new("invoke-rc.d").args(["nginx", "stop"]).status();
        let _ = Command::new("update-rc.d")
            .args(["nginx", "disable"])
            .status();
    }
    let out = Command::new("ss")
        .args(["-Htln", "sport = :80"])
        .output()
        .context("ss (iproute2) to check port 80")?;
    let listening = String::from_utf8_lossy(&out.stdout);
    if !listening.trim().is_empty() {
        bail!("something still listens on port 80 after stopping nginx:\n{listening}");
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn nightly_rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is needed to manage the nightly toolchain")?;
    if !out.status.success() {
        bail!("no nightly toolchain: install one with `rustup toolchain install nightly --component rust-src`");
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to nightly (for -Z build-std=core)");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask setup: building bpf-linker against LLVM 22 (a few minutes, once)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    // The release known to build here; no --locked: its lockfile may name crates newer than this
    // machine's rustc, while a fresh resolution picks compatible ones.
    status(Command::new("cargo").env("PATH", path).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

/// The Rust standard library for the static build (`cargo xtask dist`).
fn musl_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the musl target")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l == crate::dist::MUSL)
    {
        return Ok(());
    }
    eprintln!("xtask setup: adding the {} target", crate::dist::MUSL);
    status(Command::new("rustup").args(["target", "add", crate::dist::MUSL]))
}

/// bpffs on /sys/fs/bpf, for pinned maps. The daemon mounts it itself when missing; doing it here
/// too lets unprivileged inspection and the tests find it. Failure is not fatal (not root).
fn bpffs() {
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    });
    if !mounted && is_root() && Path::new("/sys/fs/bpf").exists() {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
    }
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}
