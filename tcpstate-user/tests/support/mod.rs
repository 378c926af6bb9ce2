//! Helpers shared by the test targets of this package (`cli`, `deploy` and `e2e`).
// Each target uses a different part of this module.
#![allow(dead_code)]

pub mod frames;
pub mod podman;
pub mod tun;

use std::{
    io::Write,
    process::{Command, Stdio},
};

/// `promtool check metrics` on an exposition: exit 0 and no complaints.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: run `cargo xtask setup`");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}

/// The alerts deploy/prometheus/tcpstate-rules.yml must define (checked by promtool in `deploy`,
/// loaded into a real Prometheus in the e2e suite).
#[allow(
    dead_code,
    reason = "each test target uses a different part of this module"
)]
pub const ALERTS: &[&str] = &[
    "TcpstateCloseWaitLeak",
    "TcpstateCloseWaitLeakGrowing",
    "TcpstateHalfOpenBudgetSaturated",
    "TcpstateHalfOpenSynsUntracked",
    "TcpstateSynQueueNearLimit",
    "TcpstateAcceptQueueNearLimit",
    "TcpstateSynCookiesSent",
    "TcpstateResetSpike",
    "TcpstateFlowTableNearFull",
    "TcpstateFlowsUntracked",
    "TcpstateDown",
    "TcpstateAbsent",
];
