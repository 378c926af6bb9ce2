//! The background walk: expires flows by their state's timeout and reports its own cost. Runs on
//! its own thread at a fixed cadence; scrapes serve its latest report and never wait for it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use tcpstate_common::{flow::monotonic_ns, maps::UserCounters, FlowKey, FlowRecord};
use tracing::warn;

use crate::{
    background::{
        expiry::{self, Expired},
        ports::{self, AcceptQueue, PortEndpoint, Survey},
        seed, settle,
    },
    config::Timeouts,
    kernel::tables::{Flows, SynCookies},
    sockets::sockdiag,
};

#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub duration: Duration,
    pub visited: u64,
    pub sweeps: u64,
    pub ports: Survey,
}

/// What the walk needs besides the timeouts.
pub struct Leaks {
    pub leak_after_s: f64,
    pub port_labels: usize,
    /// Listening ports and their accept queues (host mode: from sock_diag), refreshed by the caller.
    pub listeners: BTreeMap<u16, AcceptQueue>,
    /// Ports labelled by the previous walk: they keep their label, so a leak that goes away (the
    /// process closed its sockets, or exited and stopped listening) reads 0 rather than vanishing.
    pub labelled: BTreeSet<u16>,
    /// The kernel's SYN cookie counts by port, read for the labelled ports after each walk.
    pub syn_cookies: Option<SynCookies>,
    /// Host mode: the local addresses whose endpoints are settled against the kernel's socket
    /// table ([`settle`]); `None` in tap mode, where the kernel's sockets are not the endpoints.
    pub settle: Option<seed::Scope>,
}

/// Most of one CPU the sweeper may use: after a walk that took `d`, it waits at least
/// `d * (1 / SWEEP_DUTY - 1)`.
pub const SWEEP_DUTY: f64 = 0.1;

/// The pause before the next walk: the configured interval, or longer when the last walk was slow
/// enough that the interval would let sweeping exceed [`SWEEP_DUTY`].
pub fn pause_after(interval: Duration, last_walk: Duration) -> Duration {
    interval.max(last_walk.mul_f64(1.0 / SWEEP_DUTY - 1.0))
}

/// One walk. Deletions are booked in `user`; returns how many flows were removed.
pub fn sweep(
    flows: &mut Flows,
    user: &mut UserCounters,
    t: &Timeouts,
    leaks: &mut Leaks,
    report: &mut SweepReport,
) -> usize {
    let start = Instant::now();
    let now = monotonic_ns();
    let mut expired: Vec<(FlowKey, FlowRecord, Expired)> = Vec::new();
    let mut seen: Vec<PortEndpoint> = Vec::new();
    let mut visited = 0u64;
    // Host mode: flows with a local endpoint the kernel may have dropped silently, settled below.
    let mut unsettled: Vec<(FlowKey, FlowRecord)> = Vec::new();
    let walked = flows.for_each(|key, rec| {
        visited += 1;
        // A flow this walk expires is not in the figures it serves.
        match expiry::decide(&rec, now, t) {
            Some(why) => expired.push((key, rec, why)),
            None if leaks
                .settle
                .as_ref()
                .is_some_and(|scope| settle::candidate(&key, &rec, now, scope)) =>
            {
                unsettled.push((key, rec))
            }
            None => seen.extend(ports::endpoints(&key, &rec, now)),
        }
    });
    if let Err(e) = walked {
        // A partial walk would serve partial figures: keep the last complete report instead.
        warn!(error = %e, "the sweep could not read the flow table");
        return 0;
    }
    if let (Some(scope), false) = (&leaks.settle, unsettled.is_empty()) {
        // Dumped after the walk: an endpoint the walk read that the dump lacks was let go of by
        // the kernel (the deletion below re-checks that no segment moved the flow meanwhile).
        let kernel = match sockdiag::dump_syn_recv() {
            Ok(sockets) => seed::kernel_states(&sockets, scope),
            Err(e) => {
                warn!(error = %e, "cannot read the kernel's socket table to settle half-open endpoints");
                // Unsettled this time: counted as they stand.
                for (key, rec) in unsettled.drain(..) {
                    seen.extend(ports::endpoints(&key, &rec, now));
                }
                HashMap::new()
            }
        };
        for (key, rec) in unsettled {
            if settle::gone(&key, &rec, now, &kernel, scope) {
                expired.push((key, rec, Expired::Handshake));
            } else {
                seen.extend(ports::endpoints(&key, &rec, now));
            }
        }
    }
    let candidates: BTreeSet<u16> = leaks
        .listeners
        .keys()
        .chain(&leaks.labelled)
        .copied()
        .collect();
    let labels = ports::choose_labels(&candidates, &seen, leaks.port_labels);
    report.ports = ports::survey(&seen, &labels, leaks.leak_after_s, &leaks.listeners);
    if let Some(cookies) = &leaks.syn_cookies {
        for (label, fig) in report.ports.ports.iter_mut() {
            if let Ok(port) = label.parse::<u16>() {
                fig.syn_cookies = cookies.get(port);
            }
        }
    }
    leaks.labelled = labels;
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
