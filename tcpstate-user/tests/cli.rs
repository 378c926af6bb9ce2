//! Black-box tests of the command line that need no privileges: bad input gets one line that says
//! what to do, and the right exit code (2 for usage and preflight errors).

mod support;

use std::process::{Command, Output};

use support::{is_root, promtool_check};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TCPSTATE_LOG")
        .output()
        .expect("run tcpstate")
}

fn stderr_line(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(
        e.lines().count(),
        1,
        "expected exactly one line of error, got:\n{e}"
    );
    e
}

#[test]
fn invalid_max_flows_names_the_option() {
    let o = run(&["run", "--iface", "lo", "--max-flows", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_line(&o);
    assert!(e.contains("--max-flows must be between 1 and"), "{e}");
}

/// What is sized within the table (the half-open budget, the IPv6 table) cannot exceed it.
#[test]
fn sizes_above_the_flow_table_are_rejected() {
    for flag in ["--half-open-budget", "--max-ipv6-flows"] {
        let o = run(&["run", "--iface", "lo", "--max-flows", "100", flag, "101"]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        let e = stderr_line(&o);
        assert!(
            e.contains(&format!("{flag} must be between 1 and --max-flows (100)")),
            "{e}"
        );
    }
}

#[test]
fn duration_without_unit_says_how_to_write_it() {
    let o = run(&["run", "--time-wait", "60"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--time-wait") && e.contains("has no unit: write it like 60s or 60m"),
        "{e}"
    );
}

#[test]
fn zero_duration_is_rejected() {
    let o = run(&["run", "--iface", "lo", "--sweep-interval", "0s"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--sweep-interval must be longer than 0s"));
}

#[test]
fn missing_interface_or_privilege_is_one_actionable_line() {
    let o = run(&["run", "--iface", "nosuchif0", "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_line(&o);
    if is_root() {
        assert!(
            e.contains("interface \"nosuchif0\" does not exist") && e.contains("--iface"),
            "{e}"
        );
    } else {
        assert!(e.contains("needs root") && e.contains("sudo"), "{e}");
    }
}

#[test]
fn inspecting_without_a_daemon_says_none_is_running() {
    let o = run(&["flows", "--pin-dir", "/nonexistent/tcpstate-test"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_line(&o);
    assert!(
        e.contains("no tcpstate daemon is running") && e.contains("tcpstate run"),
        "{e}"
    );
}

#[test]
fn cleanup_of_nothing_succeeds() {
    let o = run(&["cleanup", "--pin-dir", "/nonexistent/tcpstate-test"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to clean"));
}

#[test]
fn describe_metrics_lists_the_contract_and_passes_promtool() {
    let o = run(&["describe-metrics"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for name in [
        "tcpstate_connections",
        "tcpstate_resets_total",
        "tcpstate_segments_total",
        "tcpstate_invalid_segments_total",
        "tcpstate_flow_table_entries",
        "tcpstate_flow_table_capacity",
        "tcpstate_flows_untracked_total",
        "tcpstate_handshakes_total",
        "tcpstate_fastopen_total",
        "tcpstate_close_wait_leaked",
        "tcpstate_close_wait_oldest_seconds",
        "tcpstate_client_ports_in_use",
        "tcpstate_client_port_range_size",
        "tcpstate_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    let build = text
        .lines()
        .find(|l| l.starts_with("tcpstate_build_info{"))
        .expect("a tcpstate_build_info sample");
    for label in ["version=", "revision=", "rustc_version=", "aya_version="] {
        assert!(build.contains(label), "{label} missing: {build}");
    }
    promtool_check(&text);
}

/// `--version` says what tcpstate_build_info says.
#[test]
fn version_names_the_revision_compiler_and_aya() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let version = String::from_utf8_lossy(&o.stdout).to_string();
    let metrics = String::from_utf8_lossy(&run(&["describe-metrics"]).stdout).to_string();
    let build = metrics
        .lines()
        .find(|l| l.starts_with("tcpstate_build_info{"))
        .expect("a tcpstate_build_info sample");
    for (line, label) in [
        ("revision: ", "revision"),
        ("rustc: ", "rustc_version"),
        ("aya: ", "aya_version"),
    ] {
        let value = version
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line:?} line in {version}"));
        assert!(!value.is_empty());
        assert!(
            build.contains(&format!("{label}=\"{value}\"")),
            "{build} vs {version}"
        );
    }
}

/// ss's and conntrack's state spellings are accepted; anything else is refused listing ours.
#[test]
fn state_filters_take_ss_and_conntrack_spellings() {
    for spelling in [
        "close-wait",
        "CLOSE_WAIT",
        "closewait",
        "SYN-RECV",
        "fin-wait-1",
    ] {
        let o = run(&[
            "flows",
            "--state",
            spelling,
            "--pin-dir",
            "/nonexistent/tcpstate-test",
        ]);
        let e = stderr_line(&o);
        assert!(
            e.contains("no tcpstate daemon is running"),
            "{spelling}: {e}"
        );
    }
    let o = run(&["flows", "--state", "listening", "--pin-dir", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("'listening'") && e.contains("close_wait"), "{e}");
    let help = String::from_utf8_lossy(&run(&["flows", "--help"]).stdout).to_string();
    assert!(
        help.contains("possible values: syn_sent, syn_recv"),
        "{help}"
    );
}

/// A telemetry path that would hide another endpoint is refused before anything loads.
#[test]
fn a_telemetry_path_over_a_probe_is_refused() {
    let o = run(&["run", "--iface", "lo", "--web.telemetry-path", "/-/ready"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--web.telemetry-path"));
}

#[test]
fn describe_metrics_in_container_mode_labels_every_per_endpoint_family() {
    let o = run(&["describe-metrics", "--containers"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for name in [
        "tcpstate_connections",
        "tcpstate_resets_total",
        "tcpstate_handshakes_total",
        "tcpstate_handshake_duration_seconds_bucket",
        "tcpstate_close_wait_leaked",
        "tcpstate_close_wait_oldest_seconds",
        "tcpstate_syn_backlog",
        "tcpstate_accept_queue_length",
        "tcpstate_zero_window_endpoints",
        "tcpstate_zero_window_stalls_total",
        "tcpstate_close_wait_duration_seconds_bucket",
        "tcpstate_connection_duration_seconds_bucket",
    ] {
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect();
        assert!(!samples.is_empty(), "{name} missing from:\n{text}");
        for s in &samples {
            assert!(
                s.contains("namespace=\"") && s.contains("pod=\"") && s.contains("container=\""),
                "{s} lacks the scope labels"
            );
        }
        // The host's series, all of them, with empty scope labels.
        assert!(
            samples
                .iter()
                .any(|s| s.contains("namespace=\"\",pod=\"\",container=\"\"")),
            "{name} has no host series"
        );
        // The idle container: its listening port's figures are there (a listening port keeps
        // its series); its transition counts, durations and stalls are left out while zero.
        let of_web = samples.iter().any(|s| s.contains("container=\"web\""));
        let listening_port_figure = ["leaked", "oldest", "queue", "backlog"]
            .iter()
            .any(|f| name.contains(f));
        assert_eq!(of_web, listening_port_figure, "{name}");
    }
    assert!(text.contains("tcpstate_container_info{namespace=\"\",pod=\"\",container=\"web\""));
    // Client ports by destination, and the port range, carry the scope labels too.
    assert!(text.contains(
        "tcpstate_client_ports_in_use{destination=\"0.0.0.0:0\",namespace=\"\",pod=\"\",container=\"\"} 0"
    ));
    assert!(
        text.contains("tcpstate_client_port_range_size{namespace=\"\",pod=\"\",container=\"\"} 0")
    );
    // An idle container's range appears once it has client ports to compare with it.
    assert!(!text
        .contains("tcpstate_client_port_range_size{namespace=\"\",pod=\"\",container=\"web\"}"));
    // Tracker-wide families carry no scope labels.
    assert!(text
        .lines()
        .filter(|l| l.starts_with("tcpstate_segments_total{"))
        .all(|l| !l.contains("container=")));
    assert!(text.contains("# TYPE tcpstate_containers_refused_total counter"));
    promtool_check(&text);
}

/// A config file in the temp directory, removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn to_str(&self) -> Option<&str> {
        self.0.to_str()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config_file(name: &str, body: &str) -> ConfigFile {
    let p = std::env::temp_dir().join(format!("tcpstate-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, body).unwrap();
    ConfigFile(p)
}

#[test]
fn config_file_values_are_validated_like_flags() {
    let f = config_file("bad", "iface = [\"lo\"]\nmax-flows = 0\n");
    let o = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--max-flows must be between 1 and"));
    let f = config_file("unit", "time-wait = \"5\"\n");
    let o = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--time-wait"));
}

#[test]
fn config_file_rejects_unknown_options_by_name() {
    let f = config_file("unknown", "interface = \"eth0\"\n");
    let o = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_line(&o);
    assert!(
        e.contains("unknown option \"interface\"") && e.contains("long names"),
        "{e}"
    );
}

#[test]
fn flags_and_environment_take_precedence_over_the_file() {
    // The file's max-flows = 0 would be rejected; a flag or variable overriding it gets past
    // validation to the interface check (or, unprivileged, the privilege check).
    let f = config_file("prec", "max-flows = 0\niface = [\"nosuchif1\"]\n");
    let past_validation = |o: &Output| {
        let e = stderr_line(o);
        assert!(!e.contains("--max-flows"), "{e}");
        if is_root() {
            assert!(e.contains("interface \"nosuchif1\" does not exist"), "{e}");
        }
    };
    let o = run(&[
        "run",
        "--config",
        f.to_str().unwrap(),
        "--max-flows",
        "5",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    past_validation(&o);
    let o = Command::new(BIN)
        .args([
            "run",
            "--config",
            f.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("TCPSTATE_MAX_FLOWS", "5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    past_validation(&o);
}

#[test]
fn container_mode_options_come_from_flags_env_or_the_file_and_are_checked() {
    // From the file: `containers = true` turns the mode on, so its options are checked.
    let f = config_file(
        "containers",
        "iface = [\"lo\"]\ncontainers = true\nmax-containers = 0\n",
    );
    let o = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--max-containers must be between 1 and"));
    // From the environment.
    let o = Command::new(BIN)
        .args(["run", "--iface", "lo", "--max-containers", "0"])
        .env("TCPSTATE_CONTAINERS", "true")
        .env_remove("TCPSTATE_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("--max-containers"));
    // Off, the container options are not in play.
    let o = run(&["run", "--check", "--iface", "lo", "--max-containers", "0"]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("--max-containers"),
        "checked only in container mode"
    );
    // A bad names file is one line naming it.
    let names = config_file("names", "[[container]]\nmatch = \"\"\ncontainer = \"x\"\n");
    let o = run(&[
        "run",
        "--iface",
        "lo",
        "--containers",
        "--container-names",
        names.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_line(&o);
    assert!(
        e.contains("--container-names") && e.contains("empty match"),
        "{e}"
    );
}

#[test]
fn a_bad_web_config_is_one_line_and_exit_2_at_start_and_in_check() {
    let f = config_file(
        "web-bad.yml",
        "tls_server_config:\n  cert_file: nowhere.pem\n",
    );
    let path = f.to_str().unwrap();
    for check in [false, true] {
        let mut args = vec!["run", "--iface", "lo", "--web-config", path];
        if check {
            args.push("--check");
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr_line(&o);
        assert!(
            e.contains(path) && e.contains("key_file"),
            "names the file and the missing key: {e}"
        );
    }
    let f = config_file("web-typo.yml", "basic_auth_user:\n  a: b\n");
    let o = run(&["run", "--iface", "lo", "--web-config", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("basic_auth_user"));
}

#[test]
fn the_web_config_comes_from_the_environment_and_the_toml_file_too() {
    let bad = config_file("web-env.yml", "basic_auth_users:\n  a: plaintext\n");
    let o = Command::new(BIN)
        .args(["run", "--iface", "lo", "--check"])
        .env("TCPSTATE_WEB_CONFIG", bad.to_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("not a bcrypt hash"));
    let toml = config_file(
        "web.toml",
        &format!("web-config = {:?}\n", bad.to_str().unwrap()),
    );
    let o = run(&["run", "--iface", "lo", "--config", toml.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("not a bcrypt hash"));
}
