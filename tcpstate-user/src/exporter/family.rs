//! The building blocks of the exposition: what a scrape reads, a metric family being filled, and
//! the groups of scopes whose figures one series sums.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use std::sync::Arc;

use tcpstate_common::{counters::idx, maps::UserCounters, Role, TcpState};

use super::layout::{GroupPlan, Layout};
use crate::{
    background::{
        ports::{PortFigures, Survey},
        report::SweepReport,
        scopes::ScopeView,
    },
    bpf::{attach::Attached, tables::Totals},
};

/// A group of scopes one series sums ([`GroupPlan`]) with something to show at this scrape, and
/// its merged per-port figures.
pub struct Group {
    /// `namespace`, `pod`, `container` values; `None` outside container mode (no such labels).
    pub labels: Option<Arc<[String; 3]>>,
    pub scopes: Vec<u32>,
    /// The group's per-port figures, its scopes' merged ([`merged_ports`]).
    pub ports: Survey,
}

impl Group {
    /// The group of `plan`, with its scopes' per-port figures merged.
    fn of(plan: &GroupPlan, sweep: &SweepReport) -> Group {
        let mut g = Group {
            labels: plan.labels.clone(),
            scopes: plan.scopes.clone(),
            ports: Survey::default(),
        };
        g.ports = merged_ports(sweep, &g);
        g
    }

    /// Whether a zero sample of this group is left out. The host's series are always all there
    /// (and host mode's exposition is exactly what it was); a container's per-endpoint series
    /// appear once they are non-zero, so hundreds of idle containers do not add tens of
    /// thousands of zero series to every scrape (measured: 4.4 MiB at 500 namespaces with them).
    pub fn sparse(&self) -> bool {
        self.scopes.first() != Some(&tcpstate_common::scope::HOST)
    }

    /// `base` plus this group's scope labels.
    pub fn with<'a>(&'a self, base: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = base.to_vec();
        if let Some(labels) = &self.labels {
            let [ns, pod, ctr] = &**labels;
            v.extend([
                ("namespace", ns.as_str()),
                ("pod", pod.as_str()),
                ("container", ctr.as_str()),
            ]);
        }
        v
    }

    /// Sum of a per-scope value over the group.
    pub fn sum(&self, f: impl Fn(u32) -> u64) -> u64 {
        self.scopes.iter().fold(0u64, |a, &s| a.wrapping_add(f(s)))
    }
}

/// The groups with something to show at this scrape, in the layout's order, each with its
/// per-port figures: the host's always, a container group once one of its scopes has a non-zero
/// input ([`quiet`]). A quiet group's series would all be left out as zero ([`Group::sparse`]),
/// so skipping it changes nothing in the exposition (a test renders both ways) and keeps the
/// per-scrape work to the namespaces that have had traffic.
pub fn active_groups(layout: &Layout, t: &Totals, sweep: &SweepReport) -> Vec<Group> {
    let active = active_scopes(t, sweep);
    let is_active = |sc: u32| active.get(sc as usize).copied().unwrap_or(false);
    layout
        .groups
        .iter()
        .filter(|g| {
            g.scopes.first() == Some(&tcpstate_common::scope::HOST)
                || g.scopes.iter().any(|&sc| is_active(sc))
        })
        .map(|plan| Group::of(plan, sweep))
        .collect()
}

/// Every group of the layout, quiet or not: what [`active_groups`] must render the same as.
#[cfg(test)]
pub fn all_groups(layout: &Layout, sweep: &SweepReport) -> Vec<Group> {
    layout
        .groups
        .iter()
        .map(|plan| Group::of(plan, sweep))
        .collect()
}

/// A scope's own slots ([`idx::per_scope`]) as runs of consecutive indices, found once: a
/// scrape checks every watched scope's, and a few slices are quicker to scan than a test a slot.
fn own_runs() -> &'static [std::ops::Range<usize>] {
    static RUNS: std::sync::OnceLock<Vec<std::ops::Range<usize>>> = std::sync::OnceLock::new();
    RUNS.get_or_init(|| {
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for i in (0..idx::COUNT).filter(|&i| idx::per_scope(i)) {
            let i = i as usize;
            match runs.last_mut() {
                Some(run) if run.end == i => run.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    })
}

/// Which scopes, by index, have something a series of theirs would show: a non-zero counter slot
/// of their own, daemon counters, a port figure or client ports in use. One pass over the counter
/// slots and one over the walk's report: the scrape makes it for hundreds of scopes.
fn active_scopes(t: &Totals, sweep: &SweepReport) -> Vec<bool> {
    let count = idx::COUNT as usize;
    let runs = own_runs();
    let mut active: Vec<bool> = t
        .slots
        .chunks(count)
        .map(|words| {
            // An OR over each run rather than a test a word: a loop the compiler vectorizes.
            words.len() == count
                && runs
                    .iter()
                    .any(|run| words[run.clone()].iter().fold(0, |a, &v| a | v) != 0)
        })
        .collect();
    let mut mark = |sc: u32| {
        if active.len() <= sc as usize {
            active.resize(sc as usize + 1, false);
        }
        active[sc as usize] = true;
    };
    for &sc in sweep.scopes_with_figures() {
        mark(sc);
    }
    for (sc, u) in t.user.iter().enumerate() {
        if *u != UserCounters::default() {
            mark(sc as u32);
        }
    }
    active
}

/// The per-port figures of a group: its scopes' surveys merged by port label (leaks, backlogs and
/// queues add up; the oldest age is the oldest of any).
pub fn merged_ports(sweep: &SweepReport, g: &Group) -> Survey {
    let mut out = Survey::default();
    for scope in &g.scopes {
        let Some(survey) = sweep.ports.get(scope) else {
            continue;
        };
        for (port, fig) in &survey.ports {
            let m: &mut PortFigures = out.ports.entry(port.clone()).or_default();
            m.leaked += fig.leaked;
            m.oldest_s = m.oldest_s.max(fig.oldest_s);
            m.syn_backlog += fig.syn_backlog;
            m.syn_cookies += fig.syn_cookies;
            m.syn_retransmits += fig.syn_retransmits;
            m.synack_retransmits += fig.synack_retransmits;
            for (a, b) in m.zero_window.iter_mut().zip(fig.zero_window) {
                *a += b;
            }
            m.close_wait_durations.add(&fig.close_wait_durations);
            for (a, b) in m.lifetimes.iter_mut().zip(fig.lifetimes.iter()) {
                a.add(b);
            }
            m.accept = match (m.accept, fig.accept) {
                (Some(a), Some(b)) => Some(crate::background::ports::AcceptQueue {
                    length: a.length + b.length,
                    max_length: a.max_length + b.max_length,
                }),
                (a, b) => a.or(b),
            };
        }
    }
    out
}

/// The client endpoints per destination of a group, summed by destination label, and its port
/// range: the sum of its scopes' known ranges (each pod has its own source address and range, so
/// a group's capacity towards one destination is their sum), `None` when none is known.
pub fn merged_clients(
    sweep: &SweepReport,
    g: &Group,
) -> (std::collections::BTreeMap<String, u64>, Option<u64>) {
    let mut in_use = std::collections::BTreeMap::new();
    let mut range: Option<u64> = None;
    for c in g.scopes.iter().filter_map(|sc| sweep.clients.get(sc)) {
        for (dest, n) in &c.in_use {
            *in_use.entry(dest.clone()).or_insert(0) += n;
        }
        if let Some(size) = c.range_size {
            range = Some(range.unwrap_or(0) + u64::from(size));
        }
    }
    (in_use, range)
}

/// A metric family being filled: samples in the `prometheus` crate's protos, or a gauge's sample
/// lines written beforehand ([`Layout::info_lines`]).
pub struct Family {
    pub proto: MetricFamily,
    pub lines: Option<Arc<str>>,
}

impl From<MetricFamily> for Family {
    fn from(proto: MetricFamily) -> Family {
        Family { proto, lines: None }
    }
}

impl Family {
    pub fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        f.into()
    }

    /// A gauge family whose samples are `lines`, already in exposition form.
    pub fn written(name: &str, help: &str, lines: Arc<str>) -> Family {
        Family {
            lines: Some(lines),
            ..gauge(name, help)
        }
    }

    /// A family with no samples: not valid exposition, left out.
    pub fn is_empty(&self) -> bool {
        match &self.lines {
            Some(lines) => lines.is_empty(),
            None => self.proto.get_metric().is_empty(),
        }
    }

    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        match self.proto.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.proto.mut_metric().push(m);
    }
}

impl Family {
    /// The family with one unlabelled sample: a figure of the daemon or the table.
    pub fn of(mut self, value: f64) -> Family {
        self.sample(&[], value);
        self
    }

    /// A per-endpoint sample of a scope group: `labels` plus the group's scope labels, left out
    /// when it is zero in a sparse (container) group.
    pub fn scoped_sample(&mut self, g: &Group, labels: &[(&str, &str)], value: f64) {
        if value == 0.0 && g.sparse() {
            return;
        }
        self.sample(&g.with(labels), value);
    }

    /// A histogram of a scope group (see [`Family::histogram`]): `labels` plus the group's scope
    /// labels, left out when it has no observation in a sparse (container) group, as
    /// [`Family::scoped_sample`] leaves out a zero.
    pub fn scoped_histogram(
        &mut self,
        g: &Group,
        labels: &[(&str, &str)],
        bounds_s: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        if g.sparse() && counts.iter().all(|&c| c == 0) {
            return;
        }
        self.histogram(&g.with(labels), bounds_s, counts, sum);
    }

    /// A histogram sample from per-bucket (non-cumulative) counts whose last entry is +Inf.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds_s: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let mut h = Histogram::default();
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(bounds_s.len());
        for (&le, &n) in bounds_s.iter().zip(counts) {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(le);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        // +Inf is the total, which the encoder writes from the sample count.
        h.set_sample_count(counts.iter().sum());
        h.set_sample_sum(sum);
        h.set_bucket(buckets);
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        m.set_histogram(h);
        self.proto.mut_metric().push(m);
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

pub fn gauge(name: &str, help: &str) -> Family {
    Family::new(name, help, MetricType::GAUGE)
}

pub fn counter(name: &str, help: &str) -> Family {
    Family::new(name, help, MetricType::COUNTER)
}

/// A counter family with one series per reason, each read from its own slot: the shape of every
/// "why" counter (invalid segments, skipped packets, untracked flows).
pub fn per_reason(
    name: &str,
    help: &str,
    reasons: impl IntoIterator<Item = (&'static str, u64)>,
) -> Family {
    let mut f = counter(name, help);
    for (why, n) in reasons {
        f.sample(&[("reason", why)], n as f64);
    }
    f
}

/// Everything one scrape renders.
pub struct Scrape<'a> {
    pub totals: &'a Totals,
    pub capacity: u32,
    /// Of `capacity`, the size of the table of flows that are not IPv4 at both ends.
    pub capacity6: u32,
    pub half_open_budget: u32,
    pub sweep: &'a SweepReport,
    pub attached: &'a [Attached],
    /// The watched container namespaces; in container mode every per-endpoint family carries
    /// `namespace`, `pod` and `container` (empty for the host).
    pub scopes: &'a ScopeView,
    /// What the exposition derives from `scopes`, built when they last changed.
    pub layout: &'a Layout,
}

/// Connection gauge for one (role, state) of a scope: the kernel's deltas plus the daemon's
/// (seeding, expiry), read as signed.
pub fn connections(t: &Totals, scope: u32, role: Role, state: TcpState) -> i64 {
    let slot = idx::conn(role, state);
    let user = t.user(scope).conn[(slot - idx::CONN) as usize];
    t.scoped(scope, slot).wrapping_add(user) as i64
}
