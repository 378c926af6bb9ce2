//! The background walk: expires flows by their state's timeout and reports its own cost. Runs on
//! its own thread at a fixed cadence; scrapes serve its latest report and never wait for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tcpstate_common::{
    flow::{monotonic_ns, Side},
    maps::UserCounters,
    FlowKey, FlowRecord, TcpState,
};
use tracing::warn;

use crate::{
    background::{
        expiry::{self, Expired},
        ports::{self, AcceptQueue, PortEndpoint, Survey},
        seed,
        settle::{self, Settled},
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

/// One walk. Deletions and rewrites are booked in `user`; returns how many flows were removed or
/// rewritten (so the caller stores `user` when it changed).
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
    // Host mode: flows with a local endpoint the kernel may have let go of silently, or a pending
    // midstream pickup, settled against the kernel's socket table below.
    let mut unsettled: Vec<(FlowKey, FlowRecord)> = Vec::new();
    // Tap mode: endpoints whose own timeout ran out while their peer's did not.
    let mut ended: Vec<(FlowKey, FlowRecord, Side)> = Vec::new();
    let mut confirmed: Vec<(FlowKey, FlowRecord)> = Vec::new();
    let kernel_settles = leaks.settle.is_some();
    let walked = flows.for_each(|key, rec| {
        visited += 1;
        // A flow this walk expires is not in the figures it serves.
        if let Some(why) = expiry::decide_with(&rec, now, t, kernel_settles) {
            return expired.push((key, rec, why));
        }
        if let Some(scope) = &leaks.settle {
            if settle::candidate(&key, &rec, now, scope, t.fin_wait2) {
                return unsettled.push((key, rec));
            }
        }
        if let Some(side) = expiry::ended_side(&rec, now, t) {
            ended.push((key, rec, side));
        }
        seen.extend(ports::endpoints(&key, &rec, now));
    });
    if let Err(e) = walked {
        // A partial walk would serve partial figures: keep the last complete report instead.
        warn!(error = %e, "the sweep could not read the flow table");
        return 0;
    }
    if let (Some(scope), false) = (&leaks.settle, unsettled.is_empty()) {
        // Dumped after the walk: an endpoint the walk read that the dump lacks was let go of by
        // the kernel (every change below re-checks that no segment moved the flow meanwhile).
        let states = unsettled
            .iter()
            .fold(0, |m, (_, rec)| m | settle::states_needed(rec));
        match sockdiag::dump(states) {
            Ok(sockets) => {
                let kernel = seed::kernel_states(&sockets, scope);
                for (key, rec) in unsettled {
                    match settle::verdict(&key, &rec, now, &kernel, scope, t.fin_wait2) {
                        Settled::Keep => seen.extend(ports::endpoints(&key, &rec, now)),
                        Settled::Gone(why) => expired.push((key, rec, why)),
                        Settled::Confirm => confirmed.push((key, rec)),
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the kernel's socket table to settle endpoints");
                // Unsettled this time: counted as they stand.
                for (key, rec) in unsettled {
                    seen.extend(ports::endpoints(&key, &rec, now));
                }
            }
        }
    }
    // Written back whole (userspace cannot compare-and-swap a map value): only when the word is
    // still the one the walk read, so a segment that moved the flow meanwhile wins. Confirmed
    // before the survey, so their endpoints are in this walk's per-port figures.
    let mut confirms = 0;
    for (key, rec) in confirmed {
        let mut new = rec;
        let mut w = new.word();
        w.pending = 0;
        new.set_word(w);
        if rewrite(flows, &key, &rec, &new) {
            user.record_confirm(w);
            seen.extend(ports::endpoints(&key, &new, now));
            confirms += 1;
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
    let mut changed = 0;
    for (key, rec, side) in ended {
        let mut new = rec;
        let mut w = new.word();
        w.set_state(side, TcpState::Closed);
        new.set_word(w);
        new.since_ns[side.index()] = now;
        if rewrite(flows, &key, &rec, &new) {
            user.record_end(rec.word(), side);
            changed += 1;
        }
    }
    report.duration = start.elapsed();
    report.visited = visited;
    report.sweeps += 1;
    removed + confirms + changed
}

/// `bpf(2)` update flag: replace an existing element only (include/uapi/linux/bpf.h).
const BPF_EXIST: u64 = 2;

/// Replaces `old` with `new` if the flow's state word is still `old`'s.
fn rewrite(flows: &mut Flows, key: &FlowKey, old: &FlowRecord, new: &FlowRecord) -> bool {
    match flows.0.get(key, 0) {
        Ok(cur) if cur.word == old.word => {}
        _ => return false,
    }
    match flows.0.insert(key, new, BPF_EXIST) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "could not update a flow");
            false
        }
    }
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
