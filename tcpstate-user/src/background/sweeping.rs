//! The sweeper's thread: before each walk it refreshes every watched namespace's listeners (and,
//! once a minute, its ephemeral port range), then
//! walks the table ([`sweeper::sweep`]), books what the walk changed and publishes its report for
//! the scrape, and pauses so that walking stays within its share of a CPU.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use tcpstate_common::scope;
use tokio::sync::watch;
use tracing::debug;

use crate::{
    background::{
        books::Shared,
        expiry::{Expired, Timeouts},
        ports::AcceptQueue,
        report::SweepReport,
        sweeper::{self, PortInputs, Settling},
    },
    bpf::tables::Flows,
    sockets::{portrange::PortRange, sockdiag},
};

/// The sweeper and what it works with.
pub struct Sweeper {
    pub flows: Flows,
    pub timeouts: Timeouts,
    /// The pause between walks (stretched when a walk is long, see [`sweeper::pause_after`]).
    pub interval: Duration,
    pub ports: PortInputs,
    /// Whose endpoints are settled against their kernel's socket table: the host's local
    /// addresses (host mode), and each watched container namespace (kept current each walk).
    pub settling: Settling,
    /// What the scrape and the watcher share with the sweeper.
    pub shared: Arc<Mutex<Shared>>,
    /// The limits SIGHUP can change, read before each walk into `ports`.
    pub limits: watch::Receiver<Limits>,
}

/// What a reload (SIGHUP) can change in the walk: `--close-wait-leak-after` and `--port-labels`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub leak_after: Duration,
    pub port_labels: usize,
}

impl Sweeper {
    /// Walks until `stop`.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("sweeper".into())
            .spawn(move || {
                let mut report = SweepReport::default();
                let mut range_reads = RangeReads::default();
                while !stop.load(Ordering::Relaxed) {
                    let limits = *self.limits.borrow_and_update();
                    self.ports.leak_after_s = limits.leak_after.as_secs_f64();
                    self.ports.port_labels = limits.port_labels;
                    self.refresh_listeners();
                    self.refresh_port_ranges(&mut range_reads);
                    let rounds_before = report.round_ns;
                    let changes = sweeper::sweep(
                        &self.flows,
                        &self.timeouts,
                        &mut self.ports,
                        &self.settling,
                        &mut report,
                    );
                    let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                    s.report = report.clone();
                    if !changes.is_empty() {
                        s.book(|c| {
                            for (key, rec, why) in &changes.removed {
                                c.record_delete(key.scope, rec.word());
                                if *why == Expired::Handshake {
                                    c.handshake_timeout(key.scope);
                                }
                            }
                            for (key, w) in &changes.confirmed {
                                c.record_confirm(key.scope, *w);
                            }
                            for (key, w, side) in &changes.ended {
                                c.record_end(key.scope, *w, *side);
                            }
                        });
                    }
                    drop(s);
                    // A settling round spaces itself (settle::next_round_at): its CPU time is not
                    // the walk's, which alone stretches the pause.
                    let walk_cpu = if report.round_ns != rounds_before {
                        report.cpu.saturating_sub(report.round_cpu)
                    } else {
                        report.cpu
                    };
                    sleep_unless_stopped(sweeper::pause_after(self.interval, walk_cpu), &stop);
                }
            })
            .expect("spawn sweeper thread")
    }

    /// Port labels go to listening ports; each namespace's kernel knows which they are.
    fn refresh_listeners(&mut self) {
        let view = self
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .scopes
            .clone();
        let mut listening = BTreeMap::new();
        let host = if self.settling.host.is_some() {
            sockdiag::dump_listening()
                .map(|l| accept_queues(&l))
                .unwrap_or_default()
        } else {
            Default::default()
        };
        listening.insert(scope::HOST, host);
        self.settling.containers = view
            .scopes
            .iter()
            .filter_map(|s| Some((s.scope, s.diag.clone()?)))
            .collect();
        for s in &view.scopes {
            let l = s
                .diag
                .as_ref()
                .and_then(|d| d.dump_listening().ok())
                .map(|l| accept_queues(&l))
                .unwrap_or_default();
            listening.insert(s.scope, l);
        }
        self.ports.listeners = listening;
    }

    /// Each namespace's ephemeral port range (tcpstate_client_port_range_size), read when the
    /// namespace is new and then at most once every [`PORT_RANGE_EVERY`]. The host's is the
    /// daemon's own namespace's, in host mode only (a tap port's endpoints are other hosts').
    fn refresh_port_ranges(&mut self, reads: &mut RangeReads) {
        let mut scopes: Vec<(u32, Option<Arc<PortRange>>)> = Vec::new();
        if self.settling.host.is_some() {
            scopes.push((scope::HOST, None));
        }
        scopes.extend(
            self.shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .scopes
                .scopes
                .iter()
                .filter_map(|s| Some((s.scope, Some(s.port_range.clone()?)))),
        );
        let now = Instant::now();
        let live: std::collections::BTreeSet<u32> = scopes.iter().map(|(s, _)| *s).collect();
        reads.0.retain(|sc, _| live.contains(sc));
        let ranges = &mut self.ports.port_ranges;
        ranges.retain(|sc, _| live.contains(sc));
        for (sc, files) in scopes {
            if reads
                .0
                .get(&sc)
                .is_some_and(|t| now.duration_since(*t) < PORT_RANGE_EVERY)
            {
                continue;
            }
            reads.0.insert(sc, now);
            let size = match files {
                Some(f) => f.size(),
                None => PortRange::open().and_then(|f| f.size()),
            };
            match size {
                Ok(n) => {
                    ranges.insert(sc, n);
                }
                Err(e) => {
                    debug!(error = %e, scope = sc, "cannot read the ephemeral port range");
                    ranges.remove(&sc);
                }
            }
        }
    }
}

/// How often a namespace's port range is read again: it changes only when someone writes the
/// sysctl, and a walk runs every second.
const PORT_RANGE_EVERY: Duration = Duration::from_secs(60);

/// When each scope's port range was last read.
#[derive(Default)]
struct RangeReads(BTreeMap<u32, Instant>);

/// Sleeps in short steps so shutdown is prompt.
fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let mut slept = Duration::ZERO;
    while slept < pause && !stop.load(Ordering::Relaxed) {
        let step = Duration::from_millis(100).min(pause - slept);
        std::thread::sleep(step);
        slept += step;
    }
}

/// Accept queues by port, summed over a port's listeners (IPv4 and IPv6, SO_REUSEPORT groups).
fn accept_queues(sockets: &[sockdiag::Socket]) -> BTreeMap<u16, AcceptQueue> {
    let mut m = BTreeMap::new();
    for s in sockets {
        let q: &mut AcceptQueue = m.entry(s.local.1).or_default();
        q.length += s.rqueue as u64;
        q.max_length += s.wqueue as u64;
    }
    m
}
