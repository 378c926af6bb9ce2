//! Real podman containers for the tests, the way this machine kind runs them (../shared/DESIGN.md,
//! "Ground already checked"): runc (crun refuses the hybrid cgroups here), a containers.conf with
//! no default ulimits (there is no CAP_SYS_RESOURCE to raise nofile), and no registry: the image is
//! an empty root file system imported from a tarball, run with the host's /usr mounted read-only
//! for python3.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// The image every test container runs.
pub const IMAGE: &str = "localhost/tcpstate-e2e-base";

fn check(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| {
        panic!("{what}: cannot run podman ({e}): install podman and runc with `cargo xtask setup`")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// podman with this machine's settings.
pub struct Podman {
    conf: PathBuf,
}

impl Podman {
    /// Checks the tools (failing loudly, naming what is missing) and makes sure the base image
    /// exists.
    pub fn new() -> Podman {
        for tool in ["/usr/bin/podman", "/usr/sbin/runc"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: the container tests need podman and runc (`cargo xtask setup`)"
            );
        }
        let dir = std::env::temp_dir().join("tcpstate-e2e-podman");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").expect("containers.conf");
        let p = Podman { conf };
        if !p
            .cmd()
            .args(["image", "exists", IMAGE])
            .status()
            .is_ok_and(|s| s.success())
        {
            p.import_base(&dir);
        }
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .args(["--runtime", "/usr/sbin/runc"]);
        c
    }

    /// An empty root whose lib, lib64, bin and sbin point into usr (the host's, mounted at run).
    fn import_base(&self, dir: &std::path::Path) {
        let root = dir.join("rootfs");
        for d in ["usr", "etc", "tmp", "proc", "sys", "dev", "run"] {
            std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
        }
        for (link, target) in [
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
        ] {
            let _ = std::fs::remove_file(root.join(link));
            std::os::unix::fs::symlink(target, root.join(link)).expect("rootfs link");
        }
        let tar = dir.join("base.tar");
        check(
            "tar the base image",
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .output(),
        );
        check(
            "podman import",
            self.cmd().arg("import").arg(&tar).arg(IMAGE).output(),
        );
    }

    /// Creates (without starting) a container that will run `python3 -c script` on the default
    /// bridge network; returns its id.
    pub fn create_python(&self, name: &str, script: &str) -> String {
        let _ = self.cmd().args(["rm", "-f", "-t", "0", name]).output();
        check(
            "podman create",
            self.cmd()
                .args(["create", "--name", name, "-v", "/usr:/usr:ro", IMAGE])
                .args(["/usr/bin/python3", "-c", script])
                .output(),
        )
    }

    /// Starts a created container.
    pub fn start(&self, name: &str) -> Container {
        check("podman start", self.cmd().args(["start", name]).output());
        let inspect = |fmt: &str| {
            check(
                "podman inspect",
                self.cmd().args(["inspect", "-f", fmt, name]).output(),
            )
        };
        Container {
            name: name.to_string(),
            id: inspect("{{.Id}}"),
            pid: inspect("{{.State.Pid}}").parse().expect("a pid"),
            ip: inspect("{{.NetworkSettings.IPAddress}}"),
            podman: Podman {
                conf: self.conf.clone(),
            },
        }
    }

    /// Creates and starts a container running `python3 -c script`.
    pub fn run_python(&self, name: &str, script: &str) -> Container {
        self.create_python(name, script);
        self.start(name)
    }
}

/// A running container, removed on drop.
pub struct Container {
    pub name: String,
    pub id: String,
    /// Host pid of the container's first process.
    pub pid: u32,
    pub ip: String,
    podman: Podman,
}

impl Container {
    /// `ss -Htan` inside the container's network namespace.
    pub fn ss(&self) -> String {
        check(
            "nsenter ss",
            Command::new("nsenter")
                .args(["-t", &self.pid.to_string(), "-n", "ss", "-Htan"])
                .output(),
        )
    }

    pub fn remove(&self) {
        let _ = self
            .podman
            .cmd()
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}
