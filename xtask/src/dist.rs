//! `cargo xtask dist`: what gets shipped, in target/dist/:
//! - `tcpstate`: the daemon, linked statically against musl, with its kernel programs inside;
//! - `tcpstate_<version>-1_<arch>.deb` (arch from the build target: amd64, arm64): that binary,
//!   the systemd unit and the container-mode drop-in (an example), a default config, the alert
//!   rules, the dashboard and an example web config under /usr/share/tcpstate, the man pages and
//!   bash/zsh/fish completions the binary generates from its clap definitions (`tcpstate
//!   generate`, hidden), a DEP-5 copyright with the workspace's license, a changelog, and the
//!   lintian overrides of deploy/debian/lintian-overrides;
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
/// ring's C code is built with): this machine's architecture, so that `tcpstate generate` runs
/// on the built binary.
#[cfg(target_arch = "x86_64")]
pub const MUSL: &str = "x86_64-unknown-linux-musl";
#[cfg(target_arch = "aarch64")]
pub const MUSL: &str = "aarch64-unknown-linux-musl";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The package's version: upstream's and a Debian revision, so that its changelog is
/// changelog.Debian.gz (a native version would want changelog.gz).
const DEB_REVISION: &str = "1";
const MAINTAINER: &str = "tcpstate developers <tcpstate@example.invalid>";

/// Debian's name of a Rust target's architecture.
fn deb_arch(target: &str) -> Result<&'static str> {
    Ok(match target.split('-').next().unwrap_or_default() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no Debian architecture known for {other} ({target})"),
    })
}

pub fn dist() -> Result<()> {
    let out = root().join("target/dist");
    fs::create_dir_all(&out)?;
    let bin = static_binary()?;
    let shipped = out.join("tcpstate");
    fs::copy(&bin, &shipped)?;
    // The release profile keeps line tables for profiling (debug = 1): a tenth of the size
    // without them. The symbol table goes too (Debian policy 10.1, lintian's
    // unstripped-binary-or-object). The kernel programs sit in .rodata, untouched.
    status(
        Command::new("strip")
            .args(["--strip-all", "--remove-section=.comment"])
            .arg(&shipped),
    )?;
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
            d.join("systemd/tcpstate.service.d/containers.conf"),
            "usr/share/tcpstate/containers.conf",
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
    let arch = deb_arch(MUSL)?;
    let version = format!("{VERSION}-{DEB_REVISION}");
    let name = format!("tcpstate_{version}_{arch}");
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
    generated_docs(bin, &stage, &version)?;
    for script in ["postinst", "prerm", "postrm"] {
        let src = root().join("deploy/debian").join(script);
        put(0o755, &fs::read(&src)?, &format!("DEBIAN/{script}"))?;
    }
    put(
        0o644,
        format!("{}\n", CONFFILES.join("\n")).as_bytes(),
        "DEBIAN/conffiles",
    )?;
    // What `dpkg --verify` checks installed files against (dpkg keeps the conffiles' own).
    let md5sums = Command::new("sh")
        .current_dir(&stage)
        .args([
            "-c",
            "find . -type f ! -path './DEBIAN/*' ! -path './etc/*' | sed 's|^[.]/||' \
             | LC_ALL=C sort | xargs md5sum",
        ])
        .output()?;
    ensure!(
        md5sums.status.success() && !md5sums.stdout.is_empty(),
        "md5sum of the package's files: {}",
        String::from_utf8_lossy(&md5sums.stderr)
    );
    put(0o644, &md5sums.stdout, "DEBIAN/md5sums")?;
    let size_kib = dir_size(&stage)? / 1024;
    let control = format!(
        "Package: tcpstate\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {size_kib}\nDepends: passwd\nSection: net\nPriority: optional\n\
         Homepage: https://example.invalid/tcpstate\n\
         Description: TCP connection states from eBPF (TC/XDP), exported to Prometheus\n \
         tcpstate mirrors every TCP connection's state machine in kernel maps and\n \
         exports counts, ages and rates (CLOSE_WAIT leaks, SYN backlog, resets) on\n \
         :9477/metrics. Needs Linux 6.6 or newer with BTF.\n"
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

/// What the package documents: the man pages and shell completions the binary generates from
/// its clap definitions, the copyright (DEP-5, the workspace's license), the changelog and the
/// lintian overrides.
fn generated_docs(bin: &Path, stage: &Path, version: &str) -> Result<()> {
    let put = |bytes: &[u8], rel: &str| -> Result<()> {
        let p = stage.join(rel);
        fs::create_dir_all(p.parent().expect("a file in a directory"))?;
        fs::write(&p, bytes)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    let man = stage.join("usr/share/man/man1");
    let _ = fs::remove_dir_all(&man);
    fs::create_dir_all(&man)?;
    status(Command::new(bin).args(["generate", "man"]).arg(&man))?;
    let mut pages = 0;
    for e in fs::read_dir(&man)? {
        let page = e?.path();
        fs::set_permissions(&page, fs::Permissions::from_mode(0o644))?;
        // -n: no name or time stamp in the header (reproducible, as dh_compress does).
        status(Command::new("gzip").args(["-9nf"]).arg(&page))?;
        pages += 1;
    }
    ensure!(
        man.join("tcpstate.1.gz").is_file(),
        "`tcpstate generate man` wrote no tcpstate.1"
    );
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/tcpstate"),
        ("zsh", "usr/share/zsh/vendor-completions/_tcpstate"),
        ("fish", "usr/share/fish/vendor_completions.d/tcpstate.fish"),
    ] {
        let o = Command::new(bin)
            .args(["generate", "completions", shell])
            .output()?;
        ensure!(
            o.status.success() && !o.stdout.is_empty(),
            "tcpstate generate completions {shell}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        put(&o.stdout, rel)?;
    }
    let date = commit_date()?;
    let year = date
        .split_whitespace()
        .nth(3)
        .context("a year in the commit's date")?;
    put(
        copyright(&workspace_license()?, year)?.as_bytes(),
        "usr/share/doc/tcpstate/copyright",
    )?;
    let changelog = stage.join("usr/share/doc/tcpstate/changelog.Debian");
    put(
        changelog_entry(version, &date).as_bytes(),
        "usr/share/doc/tcpstate/changelog.Debian",
    )?;
    status(Command::new("gzip").args(["-9nf"]).arg(&changelog))?;
    put(
        &fs::read(root().join("deploy/debian/lintian-overrides"))?,
        "usr/share/lintian/overrides/tcpstate",
    )?;
    eprintln!("xtask dist: {pages} man pages, 3 completions");
    Ok(())
}

/// `license` of [workspace.package] in the root Cargo.toml (an SPDX expression).
fn workspace_license() -> Result<String> {
    let toml = fs::read_to_string(root().join("Cargo.toml"))?;
    let mut section = "";
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[workspace.package]" {
            if let Some(v) = line.strip_prefix("license") {
                let v = v.trim_start().trim_start_matches('=').trim();
                return Ok(v.trim_matches('"').to_string());
            }
        }
    }
    bail!("Cargo.toml: no license in [workspace.package]")
}

/// The machine-readable copyright (DEP-5) of an SPDX license expression made of MIT and
/// Apache-2.0 joined by OR: Debian spells the disjunction "or", Apache-2.0's text is in
/// /usr/share/common-licenses, MIT's is not and goes in whole.
fn copyright(spdx: &str, year: &str) -> Result<String> {
    let ids: Vec<&str> = spdx.split(" OR ").map(str::trim).collect();
    let mut out = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: tcpstate\n\
         Upstream-Contact: {MAINTAINER}\n\
         Source: https://example.invalid/tcpstate\n\
         \n\
         Files: *\n\
         Copyright: {year} tcpstate developers\n\
         License: {}\n\
         Comment: /usr/bin/tcpstate is linked statically with the Rust crates it depends on\n \
         (Cargo.lock in the source), each under its own license, and with musl (MIT).\n",
        ids.join(" or ")
    );
    for id in ids {
        let text = match id {
            "MIT" => MIT,
            "Apache-2.0" => {
                " On Debian systems, the complete text of the Apache License, Version 2.0\n \
                 can be found in /usr/share/common-licenses/Apache-2.0.\n"
            }
            other => bail!("Cargo.toml's license names {other}: add its DEP-5 paragraph to xtask"),
        };
        out.push_str(&format!("\nLicense: {id}\n{text}"));
    }
    Ok(out)
}

const MIT: &str =
    " Permission is hereby granted, free of charge, to any person obtaining a copy\n \
 of this software and associated documentation files (the \"Software\"), to deal\n \
 in the Software without restriction, including without limitation the rights\n \
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n \
 copies of the Software, and to permit persons to whom the Software is\n \
 furnished to do so, subject to the following conditions:\n \
 .\n \
 The above copyright notice and this permission notice shall be included in\n \
 all copies or substantial portions of the Software.\n \
 .\n \
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n \
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n \
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n \
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n \
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n \
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN\n \
 THE SOFTWARE.\n";

/// The date of the commit being packaged, as Debian's changelog writes dates: the same package
/// from the same commit, byte for byte.
fn commit_date() -> Result<String> {
    Command::new("git")
        .current_dir(root())
        .args([
            "log",
            "-1",
            "--date=format:%a, %d %b %Y %H:%M:%S %z",
            "--format=%cd",
        ])
        .env("LC_ALL", "C")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .context("git log: the date of the commit being packaged")
}

/// The changelog's one entry, for this version.
fn changelog_entry(version: &str, date: &str) -> String {
    format!(
        "tcpstate ({version}) unstable; urgency=medium\n\n  \
         * Release {VERSION}: see /usr/share/doc/tcpstate/README.md.\n\n \
         -- {MAINTAINER}  {date}\n"
    )
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
