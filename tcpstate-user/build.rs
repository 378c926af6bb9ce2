//! Builds the kernel programs (tcpstate-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, through aya-build; `loader.rs` embeds the object. `cargo xtask setup` installs both.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
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
