//! Builds the kernel programs (tcpstate-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, through aya-build; `loader.rs` embeds the object. `cargo xtask setup` installs both.
//! Also records the build's facts for `tcpstate_build_info` and `tcpstate --version`.
use std::{path::Path, process::Command};

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    build_facts();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tcpstate-ebpf");
    // The object also contains tcpstate-common (state machine, parser): rebuild when it changes.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tcpstate-common/src")
    );
    aya_build::build_ebpf(
        [Package {
            name: "tcpstate-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// TCPSTATE_REVISION (the git commit, `unknown` outside a git checkout), TCPSTATE_RUSTC (the
/// compiler's version) and TCPSTATE_AYA (the aya version in Cargo.lock).
fn build_facts() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // A commit or a checkout moves HEAD or appends to its reflog: only then run again.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "logs/HEAD"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let lock = Path::new(manifest).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let aya = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| {
            let mut lines = text.lines();
            lines.find(|l| l.trim() == "name = \"aya\"")?;
            let v = lines.next()?.trim().strip_prefix("version = \"")?;
            Some(v.trim_end_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TCPSTATE_REVISION={revision}");
    println!("cargo:rustc-env=TCPSTATE_RUSTC={rustc}");
    println!("cargo:rustc-env=TCPSTATE_AYA={aya}");
}
