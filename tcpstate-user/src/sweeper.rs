//! The background walk: expires flows by their state's timeout and reports its own cost. Runs on
//! its own thread at a fixed cadence; scrapes serve its latest report and never wait for it.

use std::time::{Duration, Instant};

use tcpstate_common::{maps::UserCounters, FlowKey, FlowRecord};
use tracing::warn;

use crate::{
    config::Timeouts,
    expiry::{self, Expired},
    tables::Flows,
};

#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub duration: Duration,
    pub visited: u64,
    pub sweeps: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns and bpf_ktime_get_coarse_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One walk. Deletions are booked in `user`; returns how many flows were removed.
pub fn sweep(
    flows: &mut Flows,
    user: &mut UserCounters,
    t: &Timeouts,
    report: &mut SweepReport,
) -> usize {
    let start = Instant::now();
    let now = monotonic_ns();
    let mut expired: Vec<(FlowKey, FlowRecord, Expired)> = Vec::new();
    let mut visited = 0u64;
    for item in flows.0.iter() {
        let Ok((key, rec)) = item else { continue };
        visited += 1;
        if let Some(why) = expiry::decide(&rec, now, t) {
            expired.push((key, rec, why));
        }
    }
    let mut removed = 0;
    for (key, rec, why) in expired {
        // A segment may have moved the flow since the walk read it: re-read, and leave it for the
        // next walk if its state word changed.
        match flows.0.get(&key, 0) {
            Ok(now_rec) if now_rec.word == rec.word => {}
            _ => continue,
        }
        if let Err(e) = flows.0.remove(&key) {
            warn!(error = %e, "could not delete an expired flow");
            continue;
        }
        user.record_delete(rec.word());
        if why == Expired::Handshake {
            user.handshake_timeouts += 1;
        }
        removed += 1;
    }
    report.duration = start.elapsed();
    report.visited = visited;
    report.sweeps += 1;
    removed
}
