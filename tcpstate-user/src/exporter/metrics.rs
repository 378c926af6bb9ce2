//! The metric contract (DESIGN.md) rendered from counter totals. Nothing here walks the flow
//! table: a scrape reads per-CPU counters and the sweeper's latest report, O(1) in flows.

use prometheus::{
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
    Encoder, TextEncoder,
};
use tcpstate_common::{
    counters::{idx, Hook, RstDirection, UntrackedReason, HANDSHAKE_BOUNDS_NS},
    packet::SkipReason,
    state::{InvalidReason, Opening},
    Role, TcpState,
};

use crate::{
    background::sweeper::SweepReport,
    kernel::{loader::Attached, tables::Totals},
};

/// Everything one scrape renders.
pub struct Scrape<'a> {
    pub totals: &'a Totals,
    pub capacity: u32,
    pub half_open_budget: u32,
    pub sweep: &'a SweepReport,
    pub attached: &'a [Attached],
}

struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        Family(f)
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        match self.0.get_field_type() {
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
        self.0.mut_metric().push(m);
    }
}

impl Family {
    /// A histogram sample from per-bucket (non-cumulative) counts whose last entry is +Inf.
    fn histogram(&mut self, labels: &[(&str, &str)], bounds_s: &[f64], counts: &[u64], sum: f64) {
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
        self.0.mut_metric().push(m);
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

fn gauge(name: &str, help: &str) -> Family {
    Family::new(name, help, MetricType::GAUGE)
}

fn counter(name: &str, help: &str) -> Family {
    Family::new(name, help, MetricType::COUNTER)
}

/// Connection gauge for one (role, state): the kernel's deltas plus the daemon's (seeding,
/// expiry), read as signed.
pub fn connections(t: &Totals, role: Role, state: TcpState) -> i64 {
    let slot = idx::conn(role, state);
    let user = t.user.conn[(slot - idx::CONN) as usize];
    t.slot(slot).wrapping_add(user) as i64
}

pub fn families(s: &Scrape) -> Vec<MetricFamily> {
    let t = s.totals;
    let mut out: Vec<Family> = Vec::new();

    let mut f = gauge(
        "tcpstate_connections",
        "TCP endpoints in each state: local endpoints on host-mode interfaces (comparable to ss -tan), both ends on tap-mode interfaces.",
    );
    for role in Role::ALL {
        for state in TcpState::OPEN {
            f.sample(
                &[("role", role.name()), ("state", state.name())],
                connections(t, role, state) as f64,
            );
        }
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_segments_total",
        "TCP segments examined, by the program that saw them.",
    );
    for hook in Hook::ALL {
        f.sample(
            &[("hook", hook.name())],
            t.slot(idx::SEGMENTS + hook as u32) as f64,
        );
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_resets_total",
        "RST segments accepted, by direction relative to the counted endpoint and that endpoint's state before the RST.",
    );
    for dir in RstDirection::ALL {
        for state in std::iter::once(TcpState::Closed).chain(TcpState::OPEN) {
            f.sample(
                &[("direction", dir.name()), ("state", state.name())],
                t.slot(idx::resets(dir, state)) as f64,
            );
        }
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_invalid_segments_total",
        "Well-formed TCP segments that changed no state, by reason.",
    );
    for why in InvalidReason::ALL {
        f.sample(
            &[("reason", why.name())],
            t.slot(idx::INVALID + why as u32) as f64,
        );
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_skipped_packets_total",
        "IP packets the parser could not take as a TCP segment (malformed headers, fragments), by reason. They pass untouched.",
    );
    for why in SkipReason::ALL {
        f.sample(
            &[("reason", why.name())],
            t.slot(idx::SKIPPED + why as u32) as f64,
        );
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_flows_untracked_total",
        "Flows that could not be tracked, by reason.",
    );
    for why in UntrackedReason::ALL {
        f.sample(
            &[("reason", why.name())],
            t.slot(idx::UNTRACKED + why as u32) as f64,
        );
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_flows_opened_total",
        "Flows that started being tracked, by how: syn, synack (SYN not seen), midstream (no SYN seen), seeded (from the kernel's socket table).",
    );
    for (how, o) in [
        ("syn", Opening::Syn),
        ("synack", Opening::SynAck),
        ("midstream", Opening::Midstream),
    ] {
        f.sample(&[("how", how)], t.slot(idx::opened(o)) as f64);
    }
    f.sample(&[("how", "seeded")], t.user.inserted as f64);
    out.push(f);

    let mut f = counter(
        "tcpstate_flows_expired_total",
        "Flows the sweeper removed after their state's timeout.",
    );
    f.sample(&[], t.user.deleted as f64);
    out.push(f);

    let mut f = counter(
        "tcpstate_handshakes_total",
        "Outcome of each opening handshake.",
    );
    for (i, result) in ["established", "refused", "reset"].iter().enumerate() {
        f.sample(
            &[("result", result)],
            t.slot(idx::HANDSHAKES + i as u32) as f64,
        );
    }
    f.sample(&[("result", "timeout")], t.user.handshake_timeouts as f64);
    out.push(f);

    let mut f = Family::new(
        "tcpstate_handshake_duration_seconds",
        "Opening handshakes as seen on this host, SYN to ESTABLISHED: the client's ends with the SYN-ACK, the server's with the final ACK.",
        MetricType::HISTOGRAM,
    );
    let bounds: Vec<f64> = HANDSHAKE_BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .collect();
    for role in Role::ALL {
        let first = idx::HANDSHAKE_BUCKETS + role as u32 * idx::HANDSHAKE_BUCKETS_PER_ROLE;
        let counts: Vec<u64> = (first..first + idx::HANDSHAKE_BUCKETS_PER_ROLE)
            .map(|i| t.slot(i))
            .collect();
        let sum = t.slot(idx::HANDSHAKE_SUM_NS + role as u32) as f64 / 1e9;
        f.histogram(&[("role", role.name())], &bounds, &counts, sum);
    }
    out.push(f);

    let (fill, half_open) = t.table.fill(&t.user);
    let mut f = gauge(
        "tcpstate_flow_table_entries",
        "Flows in the kernel flow table.",
    );
    f.sample(&[], fill as f64);
    out.push(f);
    let mut f = gauge(
        "tcpstate_flow_table_capacity",
        "Flows the kernel flow table holds at most.",
    );
    f.sample(&[], s.capacity as f64);
    out.push(f);
    let mut f = gauge(
        "tcpstate_flow_table_half_open_entries",
        "Flows in the table still in their handshake, created by a SYN.",
    );
    f.sample(&[], half_open as f64);
    out.push(f);
    let mut f = gauge(
        "tcpstate_flow_table_half_open_capacity",
        "Half-open flows the table holds at most (the SYN flood budget).",
    );
    f.sample(&[], s.half_open_budget as f64);
    out.push(f);

    let mut f = gauge(
        "tcpstate_close_wait_leaked",
        "Counted endpoints in CLOSE_WAIT for longer than --close-wait-leak-after, by local port (listening ports; the rest as other).",
    );
    for (port, fig) in &s.sweep.ports.ports {
        f.sample(&[("port", port)], fig.leaked as f64);
    }
    out.push(f);
    let mut f = gauge(
        "tcpstate_close_wait_oldest_seconds",
        "Age of the oldest counted CLOSE_WAIT endpoint, by local port; 0 when none.",
    );
    for (port, fig) in &s.sweep.ports.ports {
        f.sample(&[("port", port)], fig.oldest_s);
    }
    out.push(f);

    let mut f = gauge(
        "tcpstate_syn_backlog",
        "Local server endpoints in SYN_RECV (half-open: SYN-ACK sent, final ACK not yet seen), by local port.",
    );
    for (port, fig) in &s.sweep.ports.ports {
        f.sample(&[("port", port)], fig.syn_backlog as f64);
    }
    out.push(f);
    let mut f = gauge(
        "tcpstate_accept_queue_length",
        "Connections completed and waiting for accept() on a listening port (the kernel's accept queue).",
    );
    let mut g = gauge(
        "tcpstate_accept_queue_max_length",
        "Limit of a listening port's accept queue (listen() backlog capped by net.core.somaxconn).",
    );
    for (port, fig) in &s.sweep.ports.ports {
        if let Some(q) = fig.accept {
            f.sample(&[("port", port)], q.length as f64);
            g.sample(&[("port", port)], q.max_length as f64);
        }
    }
    out.push(f);
    out.push(g);

    let mut f = gauge(
        "tcpstate_sweep_duration_seconds",
        "Wall time of the latest background walk of the flow table.",
    );
    f.sample(&[], s.sweep.duration.as_secs_f64());
    out.push(f);
    let mut f = gauge(
        "tcpstate_sweep_flows_visited",
        "Flows the latest background walk read.",
    );
    f.sample(&[], s.sweep.visited as f64);
    out.push(f);
    let mut f = counter(
        "tcpstate_sweeps_total",
        "Background walks of the flow table completed.",
    );
    f.sample(&[], s.sweep.sweeps as f64);
    out.push(f);

    let mut f = gauge(
        "tcpstate_attachment_info",
        "Programs attached, by interface, hook and attach mode (value 1).",
    );
    for a in s.attached {
        f.sample(
            &[("hook", a.hook), ("iface", &a.iface), ("mode", a.mode)],
            1.0,
        );
    }
    out.push(f);

    let mut f = gauge(
        "tcpstate_build_info",
        "Version of the running tcpstate (value 1).",
    );
    f.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    out.push(f);
    // A family with no samples (no attachment yet, no sweep yet) is not valid exposition.
    out.into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect()
}

/// Prometheus text exposition format 0.0.4.
pub fn render(s: &Scrape) -> prometheus::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(16 * 1024);
    TextEncoder::new().encode(&families(s), &mut buf)?;
    Ok(buf)
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The same families in the OpenMetrics 1.0 text format (for scrapers that ask for it).
pub fn render_openmetrics(s: &Scrape) -> Vec<u8> {
    super::openmetrics::encode(&families(s))
}

/// The exposition of a daemon that has seen nothing (but one listening port): every family, with
/// its labels, at zero. For
/// `tcpstate describe-metrics`, and for checking dashboards and alert rules against what is
/// really exported.
pub fn describe() -> prometheus::Result<Vec<u8>> {
    idle(render)
}

/// `f` applied to the scrape of an idle daemon (see `describe`).
pub fn idle<T>(f: impl FnOnce(&Scrape) -> T) -> T {
    let totals = Totals {
        slots: vec![0; tcpstate_common::counters::idx::COUNT as usize],
        ..Totals::default()
    };
    // One listening port, shown as port="0", so the per-port families appear with their labels.
    let mut sweep = SweepReport::default();
    let listening = crate::background::ports::PortFigures {
        accept: Some(Default::default()),
        ..Default::default()
    };
    sweep.ports.ports.insert("0".to_string(), listening);
    sweep.ports.ports.insert(
        crate::background::ports::OTHER.to_string(),
        Default::default(),
    );
    let attached = [Attached {
        iface: "eth0".into(),
        hook: "tc_ingress",
        mode: "tcx",
    }];
    f(&Scrape {
        totals: &totals,
        capacity: 0,
        half_open_budget: 0,
        sweep: &sweep,
        attached: &attached,
    })
}
