//! The test kit: helpers shared by the test targets and benches of this package (`cli`,
//! `deploy`, `replay`, `e2e`, the system bench): one exposition parser, one HTTP client, one
//! deadline loop ([`eventually`]), promtool, captures, podman, tun devices, raw frames sent with AF_PACKET.
// Each target uses a different part of this module.
#![allow(dead_code)]

pub mod exposition;
pub mod frames;
pub mod http;
pub mod packet;
pub mod podman;
pub mod tun;

use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Polls `check` until it gives a value, for at most `within`, and returns it; panics naming
/// `what` and what the last look saw when time runs out. The one deadline loop of the tests and
/// benches.
pub fn eventually<T, L: std::fmt::Display>(
    what: &str,
    within: Duration,
    check: impl FnMut() -> Result<T, L>,
) -> T {
    try_eventually(within, check).unwrap_or_else(|last| {
        panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
    })
}

/// [`eventually`] that hands the last look back instead of panicking, for a caller that has more
/// to say (a daemon's log).
pub fn try_eventually<T, L>(
    within: Duration,
    mut check: impl FnMut() -> Result<T, L>,
) -> Result<T, L> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() > deadline => return Err(last),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

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
    "TcpstateListenerDrops",
    "TcpstateClientPortsNearExhaustion",
    "TcpstateSlowCloses",
    "TcpstateReaderStalled",
    "TcpstateResetSpike",
    "TcpstateFlowTableNearFull",
    "TcpstateFlowsUntracked",
    "TcpstateDown",
    "TcpstateAbsent",
];
