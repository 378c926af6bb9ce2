//! The background walk: expires flows by their state's timeout and reports its own cost. Runs on
//! its own thread at a fixed cadence; scrapes serve its latest report and never wait for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tcpstate_common::{flow::monotonic_ns, FlowKey, FlowRecord};
use tracing::warn;

use crate::{
    background::{
        expiry::{self, Expired},
        ports::{self, AcceptQueue, PortEndpoint, Survey},
    },
    bpf::tables::Flows,
    config::Timeouts,
};

#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub duration: Duration,
    pub visited: u64,
    pub sweeps: u64,
    /// Per-port figures of each scope (the host's is scope 0).
    pub ports: BTreeMap<u32, Survey>,
}

/// What the walk needs besides the timeouts.
pub struct Leaks {
    pub leak_after_s: f64,
    /// Port labels per scope at most.
    pub port_labels: usize,
    /// Listening ports and their accept queues, per scope (from each namespace's sock_diag),
    /// refreshed by the caller. A scope absent here is not watched: its flows are left out of the
    /// figures (a namespace being retired).
    pub listeners: BTreeMap<u32, BTreeMap<u16, AcceptQueue>>,
    /// Ports labelled by the previous walk, per scope: they keep their label, so a leak that goes
    /// away (the process closed its sockets, or exited and stopped listening) reads 0 rather than
    /// vanishing.
    pub labelled: BTreeMap<u32, BTreeSet<u16>>,
}

/// Most of one CPU the sweeper may use: after a walk that took `d`, it waits at least
/// `d * (1 / SWEEP_DUTY - 1)`.
pub const SWEEP_DUTY: f64 = 0.1;

/// The pause before the next walk: the configured interval, or longer when the last walk was slow
/// enough that the interval would let sweeping exceed [`SWEEP_DUTY`].
pub fn pause_after(interval: Duration, last_walk: Duration) -> Duration {
    interval.max(last_walk.mul_f64(1.0 / SWEEP_DUTY - 1.0))
}

/// One walk. Returns the flows it removed, for the caller to book in their scopes.
pub fn sweep(
    flows: &mut Flows,
    t: &Timeouts,
    leaks: &mut Leaks,
    report: &mut SweepReport,
) -> Vec<(FlowKey, FlowRecord, Expired)> {
    let start = Instant::now();
    let now = monotonic_ns();
    let mut expired: Vec<(FlowKey, FlowRecord, Expired)> = Vec::new();
    let mut seen: Vec<PortEndpoint> = Vec::new();
    let mut visited = 0u64;
    let walked = flows.for_each(|key, rec| {
        visited += 1;
        // A flow this walk expires is not in the figures it serves.
        match expiry::decide(&rec, now, t) {
            Some(why) => expired.push((key, rec, why)),
            None => seen.extend(ports::endpoints(&key, &rec, now)),
        }
    });
    if let Err(e) = walked {
        // A partial walk would serve partial figures: keep the last complete report instead.
        warn!(error = %e, "the sweep could not read the flow table");
        return Vec::new();
    }
    let mut by_scope: BTreeMap<u32, Vec<PortEndpoint>> = BTreeMap::new();
    for e in seen {
        by_scope.entry(e.scope).or_default().push(e);
    }
    let mut surveys = BTreeMap::new();
    let mut labelled = BTreeMap::new();
    for (&scope, listeners) in &leaks.listeners {
        let seen = by_scope.remove(&scope).unwrap_or_default();
        let candidates: BTreeSet<u16> = listeners
            .keys()
            .chain(leaks.labelled.get(&scope).into_iter().flatten())
            .copied()
            .collect();
        let labels = ports::choose_labels(&candidates, &seen, leaks.port_labels);
        surveys.insert(
            scope,
            ports::survey(&seen, &labels, leaks.leak_after_s, listeners),
        );
        labelled.insert(scope, labels);
    }
    report.ports = surveys;
    leaks.labelled = labelled;
    let mut removed = Vec::new();
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
        removed.push((key, rec, why));
    }
    report.duration = start.elapsed();
    report.visited = visited;
    report.sweeps += 1;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_walks_stretch_the_pause_to_bound_the_duty_cycle() {
        let s = Duration::from_secs;
        // Quick walks: the configured cadence.
        assert_eq!(pause_after(s(1), Duration::from_millis(20)), s(1));
        // A 500 ms walk: 4.5 s of rest, so walking is 10% of the time.
        let pause = pause_after(s(1), Duration::from_millis(500));
        assert_eq!(pause, Duration::from_millis(4500));
        let duty = 0.5 / (0.5 + pause.as_secs_f64());
        assert!((duty - SWEEP_DUTY).abs() < 1e-9, "{duty}");
    }
}
