//! `cargo xtask dist`: what gets shipped, in target/dist/:
//! - `tcpstate`: the daemon, linked statically against musl, with its kernel programs inside;
//! - `tcpstate_<version>_amd64.deb`: that binary, the systemd unit, a default config, the alert
//!   rules, the dashboard and an example web config under /usr/share/tcpstate;
//! - `tcpstate-<version>-image.tar`: the container image of deploy/kubernetes/Dockerfile (FROM
//!   scratch, the static binary only) as an OCI archive, built with podman.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, root, status};

/// A target whose std is linked statically, libc included (setup installs it and musl-gcc, which
/// ring's C code is built with).
pub const MUSL: &str = "x86_64-unknown-linux-musl";
const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn dist() -> Result<()> {
    let out = root().join("target/dist");
    fs::create_dir_all(&out)?;
    let bin = static_binary()?;
    let shipped = out.join("tcpstate");
    fs::copy(&bin, &shipped)?;
    // The release profile keeps line tables for profiling (debug = 1): a tenth of the size
    // without them. The kernel programs sit in .rodata, untouched.
    status(Command::new("strip").arg("--strip-debug").arg(&shipped))?;
    let deb = deb(&shipped, &out)?;
    println!("{}", shipped.display());
    println!("{}", deb.display());
    let image = image(&shipped, &out)?;
    println!("{}", image.display());
    Ok(())
}

fn static_binary() -> Result<PathBuf> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "tcpstate-user",
        "--target",
        MUSL,
    ])?;
    let bin = root().join(format!("target/{MUSL}/release/tcpstate"));
    let elf = fs::read(&bin).with_context(|| format!("read {}", bin.display()))?;
    ensure!(
        !has_interpreter(&elf)?,
        "{} asks for a dynamic loader (PT_INTERP): it is not static",
        bin.display()
    );
    Ok(bin)
}

/// Whether a 64-bit little-endian ELF file names a program interpreter (PT_INTERP), i.e. needs
/// the dynamic loader. A static executable, static-pie included, has none.
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(t) = elf.get(o..o + 4) else {
            bail!("program header {i} lies outside the file");
        };
        if u32::from_le_bytes(t.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where each file goes in the package, from the repository (mode, source, destination).
fn deb_files() -> Vec<(u32, PathBuf, &'static str)> {
    let d = root().join("deploy");
    vec![
        (0o644, d.join("debian/default"), "etc/default/tcpstate"),
        (
            0o644,
            d.join("debian/config.toml"),
            "etc/tcpstate/config.toml",
        ),
        (
            0o644,
            d.join("prometheus/tcpstate-rules.yml"),
            "usr/share/tcpstate/tcpstate-rules.yml",
        ),
        (
            0o644,
            d.join("grafana/tcpstate.json"),
            "usr/share/tcpstate/tcpstate.json",
        ),
        (
            0o644,
            d.join("debian/web-config.yml"),
            "usr/share/tcpstate/web-config.yml",
        ),
        (
            0o644,
            root().join("README.md"),
            "usr/share/doc/tcpstate/README.md",
        ),
    ]
}

/// The configuration dpkg keeps on `dpkg -r` and asks about on upgrades.
const CONFFILES: [&str; 2] = ["/etc/default/tcpstate", "/etc/tcpstate/config.toml"];

fn deb(bin: &Path, out: &Path) -> Result<PathBuf> {
    let name = format!("tcpstate_{VERSION}_amd64");
    let stage = out.join("deb").join(&name);
    let _ = fs::remove_dir_all(&stage);
    let put = |mode: u32, bytes: &[u8], rel: &str| -> Result<()> {
        let p = stage.join(rel);
        fs::create_dir_all(p.parent().expect("a file in a directory"))?;
        fs::write(&p, bytes)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(0o755, &fs::read(bin)?, "usr/bin/tcpstate")?;
    // The repository's unit, with the binary where the package puts it.
    let unit = fs::read_to_string(root().join("deploy/systemd/tcpstate.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/local/bin/tcpstate "),
        "deploy/systemd/tcpstate.service: ExecStart no longer names /usr/local/bin/tcpstate"
    );
    let unit = unit.replace("/usr/local/bin/tcpstate", "/usr/bin/tcpstate");
    put(
        0o644,
        unit.as_bytes(),
        "lib/systemd/system/tcpstate.service",
    )?;
    for (mode, src, dst) in deb_files() {
        let bytes = fs::read(&src).with_context(|| format!("read {}", src.display()))?;
        put(mode, &bytes, dst)?;
    }
    for script in ["postinst", "prerm", "postrm"] {
        let src = root().join("deploy/debian").join(script);
        put(0o755, &fs::read(&src)?, &format!("DEBIAN/{script}"))?;
    }
    put(
        0o644,
        format!("{}\n", CONFFILES.join("\n")).as_bytes(),
        "DEBIAN/conffiles",
    )?;
    let size_kib = dir_size(&stage)? / 1024;
    let control = format!(
        "Package: tcpstate\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: tcpstate developers <tcpstate@example.invalid>\n\
         Installed-Size: {size_kib}\nDepends: passwd\nSection: net\nPriority: optional\n\
         Homepage: https://example.invalid/tcpstate\n\
         Description: TCP connection states from eBPF (TC/XDP), exported to Prometheus\n \
         tcpstate mirrors every TCP connection's state machine in kernel maps and exports\n \
         counts, ages and rates (CLOSE_WAIT leaks, SYN backlog, resets) on :9477/metrics.\n \
         Needs Linux 6.6 or newer with BTF.\n"
    );
    put(0o644, control.as_bytes(), "DEBIAN/control")?;
    let deb = out.join(format!("{name}.deb"));
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}

/// podman settings this machine kind needs (DESIGN.md): no default nofile ulimit (there is no
/// CAP_SYS_RESOURCE to set it) and runc (crun refuses hybrid cgroups).
pub fn podman(dir: &Path) -> Result<Command> {
    let conf = dir.join("containers.conf");
    fs::write(&conf, "[containers]\ndefault_ulimits = []\n")?;
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", conf)
        .args(["--runtime", "/usr/sbin/runc"]);
    Ok(cmd)
}

fn image(bin: &Path, out: &Path) -> Result<PathBuf> {
    // The build context holds the binary only: nothing else is sent to the builder.
    let ctx = out.join("image");
    let _ = fs::remove_dir_all(&ctx);
    fs::create_dir_all(&ctx)?;
    fs::copy(bin, ctx.join("tcpstate"))?;
    let tag = format!("localhost/tcpstate:{VERSION}");
    let dockerfile = root().join("deploy/kubernetes/Dockerfile");
    status(
        podman(out)?
            .args(["build", "--quiet", "-t", &tag, "-f"])
            .arg(&dockerfile)
            .arg(&ctx),
    )?;
    let tar = out.join(format!("tcpstate-{VERSION}-image.tar"));
    let _ = fs::remove_file(&tar);
    status(
        podman(out)?
            .args(["save", "--quiet", "--format", "oci-archive", "-o"])
            .arg(&tar)
            .arg(&tag),
    )?;
    Ok(tar)
}
