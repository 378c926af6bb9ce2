//! What `cargo xtask dist` ships, used the way users use it: the static binary, the .deb
//! installed on this machine and removed again, and the FROM-scratch image run with podman as
//! the DaemonSet runs it (host network, only the DaemonSet's capabilities, not privileged).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

use crate::harness::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// A tool the test drives; missing, it fails naming the tool and where it comes from.
fn tool(name: &str, package: &str) -> &'static str {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is missing: run `cargo xtask setup` (Debian package {package})"
    );
    Box::leak(name.to_string().into_boxed_str())
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// target/dist, built once per test run by `cargo xtask dist` (quick when nothing changed).
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        run(Command::new("cargo")
            .current_dir(workspace())
            .args(["xtask", "dist"]));
        workspace().join("target/dist")
    })
}

/// Debian's name of this machine's architecture, the one `cargo xtask dist` builds for.
fn deb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Debian architecture known for {other}"),
    }
}

/// The package's version: upstream's and the Debian revision xtask gives it.
fn deb_version() -> String {
    format!("{}-1", env!("CARGO_PKG_VERSION"))
}

fn deb() -> PathBuf {
    dist().join(format!("tcpstate_{}_{}.deb", deb_version(), deb_arch()))
}

#[test]
fn the_shipped_binary_is_static_and_carries_its_kernel_programs() {
    require_privileges();
    let bin = dist().join("tcpstate");
    let file = tool("file", "file");
    let o = run(Command::new(file).arg(&bin));
    let desc = String::from_utf8_lossy(&o.stdout);
    assert!(
        desc.contains("statically linked") || desc.contains("static-pie linked"),
        "{desc}"
    );
    let o = Command::new(tool("ldd", "libc-bin"))
        .arg(&bin)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    // Loads, verifies, attaches and detaches the embedded programs: nothing else is needed.
    let ns = Netns::new("dist");
    ns.ip(&["link", "set", "lo", "up"]);
    let o = run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg(&bin)
        .args(["run", "--check", "--iface", "lo"]));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: loaded, attached"));
}

/// dpkg, retried while another process holds its lock (apt runs elsewhere on this machine).
fn dpkg(args: &[&str]) -> Output {
    let dpkg = tool("dpkg", "dpkg");
    try_eventually(Duration::from_secs(300), || {
        let o = Command::new(dpkg).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.success() {
            return Ok(o);
        }
        assert!(err.contains("lock"), "dpkg {args:?} failed:\n{err}");
        // Looked at every 2 s, not hammered, while the other holder works.
        std::thread::sleep(Duration::from_secs(2));
        Err(err)
    })
    .unwrap_or_else(|err| panic!("dpkg {args:?} failed:\n{err}"))
}

/// Purges the package if a test stops half-way, so the machine is left as it was.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "tcpstate"]).output();
    }
}

const CONFFILES: [&str; 2] = ["/etc/default/tcpstate", "/etc/tcpstate/config.toml"];

#[test]
fn the_deb_installs_every_file_runs_and_leaves_only_config_when_removed() {
    require_privileges();
    let analyze = tool("systemd-analyze", "systemd");
    let deb = deb();
    let _guard = Installed;
    dpkg(&["--install", deb.to_str().unwrap()]);

    let listed = String::from_utf8(dpkg(&["--listfiles", "tcpstate"]).stdout).unwrap();
    let files: Vec<&str> = listed.lines().filter(|p| Path::new(p).is_file()).collect();
    let share = |f: &str| format!("/usr/share/tcpstate/{f}");
    let mut want = vec![
        "/usr/bin/tcpstate".to_string(),
        "/lib/systemd/system/tcpstate.service".into(),
        share("tcpstate-rules.yml"),
        share("tcpstate.json"),
        share("web-config.yml"),
        share("containers.conf"),
        "/usr/share/man/man1/tcpstate.1.gz".into(),
        "/usr/share/bash-completion/completions/tcpstate".into(),
        "/usr/share/doc/tcpstate/copyright".into(),
    ];
    want.extend(CONFFILES.iter().map(|c| c.to_string()));
    for w in &want {
        assert!(files.contains(&w.as_str()), "{w} not installed:\n{listed}");
    }
    // The rules and dashboard are the repository's, byte for byte.
    for (installed, repo) in [
        (
            share("tcpstate-rules.yml"),
            "deploy/prometheus/tcpstate-rules.yml",
        ),
        (share("tcpstate.json"), "deploy/grafana/tcpstate.json"),
    ] {
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(workspace().join(repo)).unwrap(),
            "{installed}"
        );
    }
    let o = run(Command::new("getent").args(["passwd", "tcpstate"]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("/usr/sbin/nologin"));

    // The installed unit, as systemd would load it (it checks ExecStart's binary exists).
    run(Command::new(analyze).args(["verify", "/lib/systemd/system/tcpstate.service"]));
    let unit = std::fs::read_to_string("/lib/systemd/system/tcpstate.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tcpstate run"), "{unit}");

    // The installed binary with the installed default config.
    let ns = Netns::new("deb");
    ns.ip(&["link", "set", "lo", "up"]);
    let o = run(Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["/usr/bin/tcpstate", "run", "--check", "--iface", "lo"])
        .args(["--config", "/etc/tcpstate/config.toml"]));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: loaded, attached"));

    dpkg(&["--remove", "tcpstate"]);
    for f in &files {
        let kept = Path::new(f).exists();
        assert_eq!(
            kept,
            CONFFILES.contains(f),
            "{f} after dpkg -r: {}",
            if kept {
                "left behind"
            } else {
                "config removed"
            }
        );
    }
    dpkg(&["--purge", "tcpstate"]);
    for c in CONFFILES {
        assert!(!Path::new(c).exists(), "{c} survived the purge");
    }
    assert!(!Path::new("/etc/tcpstate").exists());
    let user = Command::new("getent")
        .args(["passwd", "tcpstate"])
        .output()
        .unwrap();
    assert!(
        !user.status.success(),
        "the tcpstate user survived the purge"
    );
}

/// The man pages, completions, copyright and changelog the package documents itself with, as
/// `dpkg -x` unpacks them, and lintian's verdict on the package (errors and warnings fail it,
/// but for deploy/debian/lintian-overrides, each of which must still be needed).
#[test]
fn the_deb_documents_itself_and_lintian_finds_nothing() {
    require_privileges();
    let deb = deb();
    let deb_s = deb.to_str().unwrap();
    let dpkg_deb = tool("dpkg-deb", "dpkg");
    let field = |f: &str| {
        let o = run(Command::new(dpkg_deb).args(["--field", deb_s, f]));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Architecture"), deb_arch());
    assert_eq!(field("Version"), deb_version());

    let root = std::env::temp_dir().join(format!("tcpstate-deb-x-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new(dpkg_deb).args(["-x", deb_s]).arg(&root));
    let at = |rel: &str| root.join(rel.trim_start_matches('/'));
    for f in [
        "/usr/share/man/man1/tcpstate.1.gz",
        "/usr/share/man/man1/tcpstate-run.1.gz",
        "/usr/share/bash-completion/completions/tcpstate",
        "/usr/share/zsh/vendor-completions/_tcpstate",
        "/usr/share/fish/vendor_completions.d/tcpstate.fish",
        "/usr/share/doc/tcpstate/copyright",
        "/usr/share/doc/tcpstate/changelog.Debian.gz",
        "/usr/share/lintian/overrides/tcpstate",
        "/usr/share/tcpstate/containers.conf",
    ] {
        assert!(at(f).is_file(), "{f} is not in {}", deb.display());
    }

    // Every man page: groff parses it without a warning; man renders the main one.
    let man_dir = at("/usr/share/man/man1");
    let mut pages = 0;
    for e in std::fs::read_dir(&man_dir).unwrap() {
        let page = e.unwrap().path();
        let roff = run(Command::new(tool("zcat", "gzip")).arg(&page)).stdout;
        let groff = Command::new(tool("groff", "groff-base"))
            .args(["-man", "-z", "-ww", "-Tutf8"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        groff.stdin.as_ref().unwrap().write_all(&roff).unwrap();
        let o = groff.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && said.trim().is_empty(),
            "{}: {said}",
            page.display()
        );
        pages += 1;
    }
    assert!(pages >= 7, "{pages} man pages");
    let o = run(Command::new(tool("man", "man-db"))
        .arg("-l")
        .arg(at("/usr/share/man/man1/tcpstate.1.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"));
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains("tcpstate-describe-metrics(1)"), "{page}");

    // The completions: bash parses its script; each names the subcommands.
    run(Command::new("bash")
        .arg("-n")
        .arg(at("/usr/share/bash-completion/completions/tcpstate")));
    for f in [
        "/usr/share/bash-completion/completions/tcpstate",
        "/usr/share/zsh/vendor-completions/_tcpstate",
        "/usr/share/fish/vendor_completions.d/tcpstate.fish",
    ] {
        let script = std::fs::read_to_string(at(f)).unwrap();
        assert!(script.contains("describe-metrics"), "{f}");
        assert!(
            !script.contains("generate"),
            "{f} offers the hidden subcommand"
        );
    }

    // DEP-5 copyright with Cargo.toml's license; a changelog entry of this version.
    let copyright = std::fs::read_to_string(at("/usr/share/doc/tcpstate/copyright")).unwrap();
    let cargo_toml = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let license = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("license = "))
        .expect("license in Cargo.toml")
        .trim_matches('"')
        .replace(" OR ", " or ");
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        ),
        "{copyright}"
    );
    assert!(
        copyright.contains("\nFiles: *\nCopyright: 20")
            && copyright.contains(&format!(" tcpstate developers\nLicense: {license}\n")),
        "{copyright}"
    );
    let o =
        run(Command::new(tool("zcat", "gzip"))
            .arg(at("/usr/share/doc/tcpstate/changelog.Debian.gz")));
    let changelog = String::from_utf8_lossy(&o.stdout);
    assert!(
        changelog.starts_with(&format!(
            "tcpstate ({}) unstable; urgency=medium\n",
            deb_version()
        )),
        "{changelog}"
    );
    let _ = std::fs::remove_dir_all(&root);

    // lintian: no error or warning but the overridden ones, and no override left unused.
    let o = Command::new(tool("lintian", "lintian"))
        .args([
            "--no-cfg",
            "--info",
            "--display-info",
            "--fail-on",
            "error,warning",
        ])
        .arg(&deb)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    let tags: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: ") || l.contains("unused-override"))
        .collect();
    assert!(
        o.status.success() && tags.is_empty(),
        "lintian {}:\n{said}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

const LEAK_PORT: u16 = 7171;

/// The image and the container, removed when the test ends however it ends.
struct Container {
    name: String,
    image: String,
    conf: PathBuf,
    pin_dir: PathBuf,
}

impl Container {
    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "/usr/sbin/runc"]);
        c
    }

    fn logs(&self) -> String {
        let o = self.podman().args(["logs", &self.name]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .podman()
            .args(["rm", "--force", "--time", "5", &self.name])
            .output();
        let _ = self.podman().args(["rmi", "--force", &self.image]).output();
        let _ = Command::new(BIN)
            .args(["cleanup", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
    }
}

/// GET /metrics from inside `ns`; the body of a 200 answer.
fn scrape(ns: &Netns, addr: SocketAddr) -> Option<String> {
    ns.enter(move || crate::support::http::get_ok(addr, "e2e", "/metrics"))
}

/// The runtime's default seccomp profile as containerd 1.7 and Docker 23 have it: bpf(2) allowed
/// with CAP_BPF and perf_event_open(2) with CAP_PERFMON. This machine's podman (4.3) still allows
/// them only with CAP_SYS_ADMIN; daemonset.yaml says to use such a Localhost profile there.
fn runtime_default_seccomp_with_bpf() -> String {
    const PROFILE: &str = "/usr/share/containers/seccomp.json";
    let text = std::fs::read_to_string(PROFILE).unwrap_or_else(|e| {
        panic!("{PROFILE}: {e}: run `cargo xtask setup` (Debian package podman)")
    });
    let mut p: serde_json::Value = serde_json::from_str(&text).expect("a JSON seccomp profile");
    let gated = ["bpf", "perf_event_open"];
    let rules = p["syscalls"].as_array_mut().expect("syscalls");
    // Out of the rules that gate them on CAP_SYS_ADMIN (allow with it, deny without it) ...
    for r in rules.iter_mut() {
        if let Some(names) = r["names"].as_array_mut() {
            names.retain(|n| !gated.contains(&n.as_str().unwrap_or("")));
        }
    }
    // ... into rules of their own.
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}
        }));
    }
    p.to_string()
}

/// The capabilities daemonset.yaml grants (its `add: [...]` line), by name, and their numbers
/// (linux/capability.h).
fn daemonset_capabilities() -> Vec<(String, u32)> {
    let ds = std::fs::read_to_string(workspace().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let line = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("add:"))
        .expect("daemonset.yaml has an `add: [...]` capability list");
    line.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|c| {
            let c = c.trim().to_string();
            let n = match c.as_str() {
                "DAC_READ_SEARCH" => 2,
                "NET_ADMIN" => 12,
                "SYS_PTRACE" => 19,
                "SYS_ADMIN" => 21,
                "PERFMON" => 38,
                "BPF" => 39,
                other => panic!("capability {other} in daemonset.yaml: add its number here"),
            };
            (c, n)
        })
        .collect()
}

#[test]
fn the_image_runs_as_the_daemonset_runs_it_and_sees_a_leak() {
    require_privileges();
    tool("podman", "podman");
    assert!(
        Path::new("/usr/sbin/runc").is_file(),
        "/usr/sbin/runc is missing: run `cargo xtask setup` (Debian package runc)"
    );
    let dist = dist();
    let p = Pair::new();
    let work = std::env::temp_dir().join(format!("tcpstate-image-{}", p.srv.name));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("ctx")).unwrap();
    let conf = work.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    std::fs::copy(dist.join("tcpstate"), work.join("ctx/tcpstate")).unwrap();
    let seccomp = work.join("seccomp.json");
    std::fs::write(&seccomp, runtime_default_seccomp_with_bpf()).unwrap();
    let c = Container {
        name: format!("tcpstate-{}", p.srv.name),
        image: format!("localhost/tcpstate-e2e:{}", p.srv.name),
        conf,
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/{}-image", p.srv.name)),
    };
    // The image, built from the repository's Dockerfile (FROM scratch: nothing to pull).
    run(c
        .podman()
        .args(["build", "--quiet", "-t", &c.image, "-f"])
        .arg(workspace().join("deploy/kubernetes/Dockerfile"))
        .arg(work.join("ctx")));
    // As daemonset.yaml: the node's network namespace (here the test's server namespace) and
    // PID namespace, uid 0 with only the DaemonSet's capabilities, container mode, no privilege
    // escalation, a read-only root, the node's bpffs and BTF mounted in.
    let caps = daemonset_capabilities();
    let names: Vec<&str> = caps.iter().map(|(n, _)| n.as_str()).collect();
    let listen = "127.0.0.1:9477";
    run(c
        .podman()
        .args(["run", "--detach", "--name", &c.name])
        .arg(format!("--network=ns:/run/netns/{}", p.srv.name))
        .args(["--user", "0:0", "--cap-drop", "all", "--pid", "host"])
        .args(["--cap-add", &names.join(",")])
        .args(["--security-opt", "no-new-privileges", "--read-only"])
        .arg(format!("--security-opt=seccomp={}", seccomp.display()))
        .args(["-v", "/sys/fs/bpf:/sys/fs/bpf"])
        .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
        .arg(&c.image)
        .args(["run", "--iface", &p.srv_if, "--listen", listen, "--pin-dir"])
        .arg(&c.pin_dir)
        .args(["--close-wait-leak-after", "1s", "--sweep-interval", "100ms"])
        .args(["--containers", "--host-root", "/host"]));

    let addr: SocketAddr = listen.parse().unwrap();
    if try_eventually(Duration::from_secs(60), || scrape(&p.srv, addr).ok_or(())).is_err() {
        panic!(
            "the container did not serve /metrics within 60s:\n{}",
            c.logs()
        );
    }

    // The daemon in the container holds exactly the granted capabilities.
    let o = run(c
        .podman()
        .args(["inspect", "--format", "{{.State.Pid}}", &c.name]));
    let pid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let granted = caps.iter().fold(0u64, |m, (_, n)| m | (1u64 << n));
    assert_eq!(cap_eff, granted, "CapEff {cap_eff:x}");

    // A server that never closes what its peer closed.
    let listener = p.listen(SERVER_V4, LEAK_PORT);
    let client = p.connect(SERVER_V4, LEAK_PORT);
    let (_leaked, _) = listener.accept().unwrap();
    drop(client);
    let leaked = try_eventually(Duration::from_secs(30), || {
        let m = Metrics::parse(&scrape(&p.srv, addr).expect("/metrics from the container"));
        let port = LEAK_PORT.to_string();
        // Container mode, as the DaemonSet runs it: the host's series carry empty scope labels.
        let labels = [
            ("port", port.as_str()),
            ("namespace", ""),
            ("pod", ""),
            ("container", ""),
        ];
        if m.try_get("tcpstate_close_wait_leaked", &labels) == Some(1.0) {
            Ok(())
        } else {
            Err(m.text)
        }
    });
    if let Err(text) = leaked {
        panic!(
            "no leak on port {LEAK_PORT} within 30s:\n{text}\n{}",
            c.logs()
        );
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&work);
}
