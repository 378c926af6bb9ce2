//! The background walk: expires flows by their state's timeout, settles host endpoints against
//! the kernel's socket table, and reports per-port figures and its own cost. Runs on its own thread
//! at a fixed cadence; scrapes serve its latest report and never wait for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tcpstate_common::{
    flow::{monotonic_ns, Side},
    mapped::GENERAL,
    scope,
    state::Retransmit,
    FlowKey, FlowRecord, FlowWord, TcpState,
};
use tracing::warn;

use crate::{
    background::{
        destinations::{self, ClientPorts, Destination, Tally},
        durations::Histograms,
        expiry::{self, Expired, Timeouts},
        ports::{self, AcceptQueue, PortEndpoint},
        report::SweepReport,
        seed,
        settle::{self, Settled},
    },
    bpf::tables::{Flows, Retransmits, SynCookies},
    sockets::sockdiag::{self, Diag},
};

/// What the per-port figures need besides the walk: the leak threshold, how many ports get a label,
/// each scope's listeners and the labels they had, and the host's SYN cookie counts.
pub struct PortInputs {
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
    /// The kernel's SYN cookie counts by port (the host's), read for the labelled ports.
    pub syn_cookies: Option<SynCookies>,
    /// The kernel's retransmitted SYN and SYN-ACK counts by server port (the host's), read for
    /// the labelled ports.
    pub retransmits: Option<Retransmits>,
    /// Destinations labelled by the previous walk, per scope: they keep their label while they
    /// stay among the busiest `port_labels` (the same bound as ports), reading 0 once idle.
    pub destinations: BTreeMap<u32, BTreeSet<Destination>>,
    /// Each scope's ephemeral port range less its reserved ports, refreshed by the caller (at
    /// most once a minute); a scope absent here has no known range.
    pub port_ranges: BTreeMap<u32, u32>,
    /// The CLOSE_WAIT dwell and lifetime histograms: read into the figures, given the endings
    /// the daemon decides.
    pub histograms: Option<Histograms>,
}

/// Where endpoints are settled against a kernel's socket table: the host's (host mode: its local
/// addresses; `None` in tap mode, where the kernel's sockets are not the endpoints), and each
/// watched container namespace that has a sock_diag socket of its own (every endpoint there but
/// loopback crosses its veth).
#[derive(Debug, Default)]
pub struct Settling {
    pub host: Option<seed::Locals>,
    pub containers: BTreeMap<u32, Arc<Diag>>,
}

impl Settling {
    /// The scope's socket table, asked for the sockets in `states`.
    fn dump(&self, scope: u32, states: u32) -> std::io::Result<Vec<sockdiag::Socket>> {
        match self.containers.get(&scope) {
            Some(diag) => diag.dump(states),
            None => sockdiag::dump(states),
        }
    }
}

/// What a walk changed, for the caller to book in each flow's scope.
#[derive(Debug, Default)]
pub struct Changes {
    /// Flows deleted, and why.
    pub removed: Vec<(FlowKey, FlowRecord, Expired)>,
    /// Pending pickups the kernel confirmed: the word written (pending cleared).
    pub confirmed: Vec<(FlowKey, FlowWord)>,
    /// Tap mode: endpoints ended alone (the word before, and the side).
    pub ended: Vec<(FlowKey, FlowWord, Side)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.confirmed.is_empty() && self.ended.is_empty()
    }
}

/// Most of one CPU the sweeper may use: after a walk that took `d`, it waits at least
/// `d * (1 / SWEEP_DUTY - 1)`.
/// One eightieth: at most 0.75 CPU-seconds a minute, whatever the table's size (a walk of a
/// million flows, about 35 ms, then runs every 3 s; smaller tables keep the configured cadence).
/// The daemon's budget is one CPU-second a minute; the rest is for scrapes and the container
/// watcher (with a sixtieth, the sweeper alone took the whole budget at 1M flows).
pub const SWEEP_DUTY: f64 = 1.0 / 80.0;

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The pause before the next walk: the configured interval, or longer when the last walk took
/// enough CPU that the interval would let sweeping exceed [`SWEEP_DUTY`].
pub fn pause_after(interval: Duration, last_walk: Duration) -> Duration {
    interval.max(last_walk.mul_f64(1.0 / SWEEP_DUTY - 1.0))
}

/// One walk. Returns what it changed in the table, for the caller to book.
///
/// `settling`: whose endpoints are settled against their kernel's socket table ([`settle`]).
pub fn sweep(
    flows: &Flows,
    t: &Timeouts,
    inputs: &mut PortInputs,
    settling: &Settling,
    report: &mut SweepReport,
) -> Changes {
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let now = monotonic_ns();
    let mut expired: Vec<(FlowKey, FlowRecord, Expired)> = Vec::new();
    let mut seen: Vec<PortEndpoint> = Vec::new();
    // Client endpoints per destination: every flow `seen` takes, whatever its state.
    let mut clients = Tally::default();
    let (mut visited, mut visited_v6) = (0u64, 0u64);
    // Flows with a local endpoint the kernel may have let go of silently, or a pending midstream
    // pickup, settled against their namespace's socket table below, by scope.
    let mut unsettled: BTreeMap<u32, Vec<(FlowKey, FlowRecord)>> = BTreeMap::new();
    // Tap mode: endpoints whose own timeout ran out while their peer's did not.
    let mut ended: Vec<(FlowKey, FlowRecord, Side)> = Vec::new();
    let mut confirmed: Vec<(FlowKey, FlowRecord)> = Vec::new();
    // Deleted slots the walk passes (by an earlier walk, the container watcher, or a daemon that
    // died mid-sweep): freed at the end, after a grace period.
    let mut dead = Vec::new();
    let round = if now >= settle::next_round_at(report.round_ns, report.round_cpu) {
        settle::Round::Quiet
    } else {
        settle::Round::Due
    };
    let container_locals = seed::Locals::container();
    let rule_for = |locals| settle::Rule {
        locals,
        fin_wait2: t.fin_wait2,
        round,
    };
    let host_rule = settling.host.as_ref().map(rule_for);
    let container_rule = rule_for(&container_locals);
    let rule_of = |scope: u32| {
        if scope == scope::HOST {
            host_rule.as_ref()
        } else if settling.containers.contains_key(&scope) {
            Some(&container_rule)
        } else {
            None
        }
    };
    flows.walk(&mut dead, |place, key, rec| {
        visited += 1;
        visited_v6 += u64::from(place.index & GENERAL != 0);
        let settles = rule_of(key.scope);
        // A flow this walk expires is not in the figures it serves.
        if let Some(why) = expiry::decide_with(&rec, now, t, settles.is_some()) {
            return expired.push((key, rec, why));
        }
        if let Some(rule) = settles {
            if settle::candidate(&key, &rec, now, rule) {
                return unsettled.entry(key.scope).or_default().push((key, rec));
            }
        }
        if let Some(side) = expiry::ended_side(&rec, now, t) {
            ended.push((key, rec, side));
        }
        seen.extend(ports::endpoints(&key, &rec, now));
        clients.add(&key, &rec);
    });
    let settle_started = thread_cpu();
    for (scope, flows_of) in unsettled {
        let Some(rule) = rule_of(scope) else {
            continue;
        };
        // Dumped after the walk: an endpoint the walk read that the dump lacks was let go of by
        // the kernel (every change below re-checks that no segment moved the flow meanwhile).
        let states = flows_of.iter().fold(0, |m, (key, rec)| {
            m | settle::states_needed(key, rec, now, rule)
        });
        match settling.dump(scope, states) {
            Ok(sockets) => {
                let kernel = seed::kernel_states(&sockets, rule.locals);
                let mut gone = Vec::new();
                for (key, rec) in flows_of {
                    // The kernel's table knows no scopes: a container's keys are compared as the
                    // host's (seed::kernel_states keys them so).
                    let unscoped = key.in_scope(scope::HOST);
                    match settle::verdict(&unscoped, &rec, now, &kernel, rule) {
                        Settled::Keep => {
                            seen.extend(ports::endpoints(&key, &rec, now));
                            clients.add(&key, &rec);
                        }
                        Settled::Gone(why) => gone.push((key, rec, why)),
                        Settled::Confirm => confirmed.push((key, rec)),
                    }
                }
                let again = |states| settling.dump(scope, states);
                settle_gone(
                    gone,
                    now,
                    rule,
                    again,
                    &mut expired,
                    &mut seen,
                    &mut clients,
                );
            }
            Err(e) => {
                warn!(error = %e, scope, "cannot read the kernel's socket table to settle endpoints");
                // Unsettled this time: counted as they stand.
                for (key, rec) in flows_of {
                    seen.extend(ports::endpoints(&key, &rec, now));
                    clients.add(&key, &rec);
                }
            }
        }
    }
    let settles_any = settling.host.is_some() || !settling.containers.is_empty();
    if settles_any && round == settle::Round::Quiet {
        report.round_ns = now;
        report.round_cpu = thread_cpu().saturating_sub(settle_started);
    }
    let mut changes = Changes::default();
    // Written back only when the word is still the one the walk read (compare-and-swap), so a
    // segment that moved the flow meanwhile wins. Confirmed before the survey, so their endpoints
    // are in this walk's per-port figures.
    for (key, rec) in confirmed {
        let mut new = rec;
        let mut w = new.word();
        w.pending = 0;
        new.set_word(w);
        if flows.rewrite(&key, rec.word, &new) {
            changes.confirmed.push((key, w));
            seen.extend(ports::endpoints(&key, &new, now));
            clients.add(&key, &new);
        }
    }
    survey(inputs, report, seen);
    survey_clients(inputs, report, clients);
    for (key, rec, why) in expired {
        // A segment may have moved the flow since the walk read it: then it stays for the next
        // walk to judge again.
        if let Some((place, _)) = flows.lookup(&key) {
            if flows.remove_if(&key, rec.word) {
                dead.push(place.index);
                if let Some(h) = &inputs.histograms {
                    h.book_end(&key, &rec, Side::A, now);
                    h.book_end(&key, &rec, Side::B, now);
                }
                changes.removed.push((key, rec, why));
            }
        }
    }
    for (key, rec, side) in ended {
        let mut new = rec;
        let mut w = new.word();
        w.set_state(side, TcpState::Closed);
        new.set_word(w);
        new.since_ns[side.index()] = now;
        if flows.rewrite(&key, rec.word, &new) {
            if let Some(h) = &inputs.histograms {
                h.book_end(&key, &rec, side, now);
            }
            changes.ended.push((key, rec.word(), side));
        }
    }
    report.duration = start.elapsed();
    // Waits for a grace period (sleeping, not computing): not part of the walk's time.
    flows.reclaim(&dead);
    report.cpu = thread_cpu().saturating_sub(cpu_start);
    report.visited = visited;
    report.visited_v6 = visited_v6;
    report.sweeps += 1;
    changes
}

/// Ends the flows the first dump found gone only if a second dump lacks them too: a dump that
/// raced sockets closing may skip a live one (inet_diag_dump_icsk resumes a hash bucket by
/// position, so a socket removed ahead of the resume point shifts the next one past it). The
/// rest stay, counted as they stand. A second dump only when the kernel let something go.
fn settle_gone(
    gone: Vec<(FlowKey, FlowRecord, Expired)>,
    now: u64,
    rule: &settle::Rule,
    dump: impl FnOnce(u32) -> std::io::Result<Vec<sockdiag::Socket>>,
    expired: &mut Vec<(FlowKey, FlowRecord, Expired)>,
    seen: &mut Vec<PortEndpoint>,
    clients: &mut Tally,
) {
    if gone.is_empty() {
        return;
    }
    let states = gone.iter().fold(0, |m, (key, rec, _)| {
        m | settle::states_needed(key, rec, now, rule)
    });
    let again = match dump(states) {
        Ok(sockets) => seed::kernel_states(&sockets, rule.locals),
        Err(e) => {
            warn!(error = %e, "cannot read the kernel's socket table again to settle endpoints");
            for (key, rec, _) in &gone {
                clients.add(key, rec);
            }
            return seen.extend(
                gone.iter()
                    .flat_map(|(key, rec, _)| ports::endpoints(key, rec, now)),
            );
        }
    };
    for (key, rec, why) in gone {
        match settle::verdict(&key.in_scope(scope::HOST), &rec, now, &again, rule) {
            Settled::Gone(_) => expired.push((key, rec, why)),
            Settled::Keep | Settled::Confirm => {
                seen.extend(ports::endpoints(&key, &rec, now));
                clients.add(&key, &rec);
            }
        }
    }
}

/// The per-port figures of every watched scope, from the endpoints the walk counted.
fn survey(inputs: &mut PortInputs, report: &mut SweepReport, seen: Vec<PortEndpoint>) {
    let mut by_scope: BTreeMap<u32, Vec<PortEndpoint>> = BTreeMap::new();
    for e in seen {
        by_scope.entry(e.scope).or_default().push(e);
    }
    let mut surveys = BTreeMap::new();
    let mut labelled = BTreeMap::new();
    for (&sc, listeners) in &inputs.listeners {
        let seen = by_scope.remove(&sc).unwrap_or_default();
        let candidates: BTreeSet<u16> = listeners
            .keys()
            .chain(inputs.labelled.get(&sc).into_iter().flatten())
            .copied()
            .collect();
        let labels = ports::choose_labels(&candidates, &seen, inputs.port_labels);
        let mut survey = ports::survey(&seen, &labels, inputs.leak_after_s, listeners);
        if let (scope::HOST, Some(cookies)) = (sc, &inputs.syn_cookies) {
            for (label, fig) in survey.ports.iter_mut() {
                if let Ok(port) = label.parse::<u16>() {
                    fig.syn_cookies = cookies.get(port);
                }
            }
        }
        if let (scope::HOST, Some(counts)) = (sc, &inputs.retransmits) {
            for (label, fig) in survey.ports.iter_mut() {
                if let Ok(port) = label.parse::<u16>() {
                    fig.syn_retransmits = counts.get(Retransmit::Syn, port);
                    fig.synack_retransmits = counts.get(Retransmit::SynAck, port);
                }
            }
        }
        if let Some(h) = &mut inputs.histograms {
            h.fill(sc, &mut survey);
        }
        surveys.insert(sc, survey);
        labelled.insert(sc, labels);
    }
    report.ports = surveys;
    inputs.labelled = labelled;
}

/// Client endpoints per destination of every watched scope, with its port range.
fn survey_clients(inputs: &mut PortInputs, report: &mut SweepReport, clients: Tally) {
    let mut clients = clients.by_scope();
    let mut out = BTreeMap::new();
    let mut labelled = BTreeMap::new();
    for &sc in inputs.listeners.keys() {
        let counts = clients.remove(&sc).unwrap_or_default();
        let kept = inputs.destinations.remove(&sc).unwrap_or_default();
        let labels = destinations::choose_labels(&kept, &counts, inputs.port_labels);
        out.insert(
            sc,
            ClientPorts {
                in_use: destinations::in_use(&counts, &labels),
                range_size: inputs.port_ranges.get(&sc).copied(),
            },
        );
        labelled.insert(sc, labels);
    }
    report.clients = out;
    inputs.destinations = labelled;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_walks_stretch_the_pause_to_bound_the_duty_cycle() {
        let s = Duration::from_secs;
        // Quick walks: the configured cadence.
        assert_eq!(pause_after(s(1), Duration::from_millis(10)), s(1));
        // A 500 ms walk: 39.5 s of rest, so walking is an eightieth of the time.
        let pause = pause_after(s(1), Duration::from_millis(500));
        assert_eq!(pause, Duration::from_millis(39_500));
        let duty = 0.5 / (0.5 + pause.as_secs_f64());
        assert!((duty - SWEEP_DUTY).abs() < 1e-9, "{duty}");
    }
}
