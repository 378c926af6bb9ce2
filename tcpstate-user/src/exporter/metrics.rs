//! The metric contract (DESIGN.md) rendered from counter totals. Nothing here walks the flow
//! table: a scrape reads per-CPU counters and the sweeper's latest report, O(1) in flows.

use prometheus::{
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
    Encoder, TextEncoder,
};
use tcpstate_common::{
    counters::{idx, Hook, RstDirection, UntrackedReason, HANDSHAKE_BOUNDS_NS},
    packet::SkipReason,
    state::{FastOpen, InvalidReason, Opening},
    Role, TcpState,
};

use crate::{
    background::scopes::ScopeView,
    background::{
        ports::{PortFigures, Survey, OTHER},
        sweeper::SweepReport,
    },
    bpf::{attach::Attached, tables::Totals},
};

/// Everything one scrape renders.
pub struct Scrape<'a> {
    pub totals: &'a Totals,
    pub capacity: u32,
    pub half_open_budget: u32,
    pub sweep: &'a SweepReport,
    pub attached: &'a [Attached],
    /// The watched container namespaces; in container mode every per-endpoint family carries
    /// `namespace`, `pod` and `container` (empty for the host).
    pub scopes: &'a ScopeView,
}

/// The scopes whose figures one series sums: one per scope, or (with `--container-labels
/// namespace`) every pod of a Kubernetes namespace together.
struct Group {
    /// `namespace`, `pod`, `container` values; `None` outside container mode (no such labels).
    labels: Option<[String; 3]>,
    scopes: Vec<u32>,
}

impl Group {
    /// Whether a zero sample of this group is left out. The host's series are always all there
    /// (and host mode's exposition is exactly what it was); a container's per-endpoint series
    /// appear once they are non-zero, so hundreds of idle containers do not add tens of
    /// thousands of zero series to every scrape (measured: 4.4 MiB at 500 namespaces with them).
    fn sparse(&self) -> bool {
        self.scopes.first() != Some(&tcpstate_common::scope::HOST)
    }

    /// `base` plus this group's scope labels.
    fn with<'a>(&'a self, base: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = base.to_vec();
        if let Some([ns, pod, ctr]) = &self.labels {
            v.extend([
                ("namespace", ns.as_str()),
                ("pod", pod.as_str()),
                ("container", ctr.as_str()),
            ]);
        }
        v
    }

    /// Sum of a per-scope value over the group.
    fn sum(&self, f: impl Fn(u32) -> u64) -> u64 {
        self.scopes.iter().fold(0u64, |a, &s| a.wrapping_add(f(s)))
    }
}

/// The host's group first, then the watched namespaces' in label order.
fn groups(view: &ScopeView) -> Vec<Group> {
    let host = tcpstate_common::scope::HOST;
    if !view.enabled {
        return vec![Group {
            labels: None,
            scopes: vec![host],
        }];
    }
    let mut by_labels: std::collections::BTreeMap<[String; 3], Vec<u32>> = Default::default();
    by_labels.insert(Default::default(), vec![host]);
    for w in &view.scopes {
        if let Some((ns, pod, ctr)) = view.labels(w.scope) {
            by_labels.entry([ns, pod, ctr]).or_default().push(w.scope);
        }
    }
    by_labels
        .into_iter()
        .map(|(labels, scopes)| Group {
            labels: Some(labels),
            scopes,
        })
        .collect()
}

/// The per-port figures of a group: its scopes' surveys merged by port label (leaks, backlogs and
/// queues add up; the oldest age is the oldest of any).
fn merged_ports(sweep: &SweepReport, g: &Group) -> Survey {
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
    /// A per-endpoint sample of a scope group: `labels` plus the group's scope labels, left out
    /// when it is zero in a sparse (container) group.
    fn scoped_sample(&mut self, g: &Group, labels: &[(&str, &str)], value: f64) {
        if value == 0.0 && g.sparse() {
            return;
        }
        self.sample(&g.with(labels), value);
    }

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

/// Connection gauge for one (role, state) of a scope: the kernel's deltas plus the daemon's
/// (seeding, expiry), read as signed.
pub fn connections(t: &Totals, scope: u32, role: Role, state: TcpState) -> i64 {
    let slot = idx::conn(role, state);
    let user = t.user(scope).conn[(slot - idx::CONN) as usize];
    t.scoped(scope, slot).wrapping_add(user) as i64
}

pub fn families(s: &Scrape) -> Vec<MetricFamily> {
    let t = s.totals;
    let groups = groups(s.scopes);
    let mut out: Vec<Family> = Vec::new();

    let mut f = gauge(
        "tcpstate_connections",
        "TCP endpoints in each state: local endpoints on host-mode interfaces (comparable to ss -tan), both ends on tap-mode interfaces.",
    );
    for g in &groups {
        for role in Role::ALL {
            for state in TcpState::OPEN {
                let v = g.sum(|sc| connections(t, sc, role, state) as u64) as i64;
                f.scoped_sample(
                    g,
                    &[("role", role.name()), ("state", state.name())],
                    v as f64,
                );
            }
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
    for g in &groups {
        for dir in RstDirection::ALL {
            for state in std::iter::once(TcpState::Closed).chain(TcpState::OPEN) {
                let v = g.sum(|sc| t.scoped(sc, idx::resets(dir, state)));
                f.scoped_sample(
                    g,
                    &[("direction", dir.name()), ("state", state.name())],
                    v as f64,
                );
            }
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
    f.sample(&[("how", "seeded")], t.books().inserted as f64);
    out.push(f);

    let mut f = counter(
        "tcpstate_flows_expired_total",
        "Flows the sweeper removed: their state's timeout ran out, or (host mode) the kernel's socket table no longer held the local endpoint.",
    );
    f.sample(&[], t.books().deleted as f64);
    out.push(f);

    let mut f = counter(
        "tcpstate_handshakes_total",
        "Outcome of each opening handshake.",
    );
    for g in &groups {
        let results = ["established", "refused", "reset"]
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, g.sum(|sc| t.scoped(sc, idx::HANDSHAKES + i as u32))))
            .chain([("timeout", g.sum(|sc| t.user(sc).handshake_timeouts))]);
        for (result, v) in results {
            f.scoped_sample(g, &[("result", result)], v as f64);
        }
    }
    out.push(f);

    let mut f = counter(
        "tcpstate_fastopen_total",
        "SYN-ACKs answering a SYN that carried data (TCP Fast Open): accepted (the data acknowledged with the SYN) or declined (the SYN alone).",
    );
    for g in &groups {
        for fo in FastOpen::ALL {
            let v = g.sum(|sc| t.scoped(sc, idx::FASTOPEN + fo as u32 - 1));
            f.scoped_sample(g, &[("result", fo.name())], v as f64);
        }
    }
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
    for g in &groups {
        for role in Role::ALL {
            let first = idx::HANDSHAKE_BUCKETS + role as u32 * idx::HANDSHAKE_BUCKETS_PER_ROLE;
            let counts: Vec<u64> = (first..first + idx::HANDSHAKE_BUCKETS_PER_ROLE)
                .map(|i| g.sum(|sc| t.scoped(sc, i)))
                .collect();
            let sum = g.sum(|sc| t.scoped(sc, idx::HANDSHAKE_SUM_NS + role as u32)) as f64 / 1e9;
            if counts.iter().all(|&c| c == 0) && g.sparse() {
                continue;
            }
            f.histogram(&g.with(&[("role", role.name())]), &bounds, &counts, sum);
        }
    }
    out.push(f);

    let (fill, half_open) = t.table.fill(&t.books());
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

    let surveys: Vec<(&Group, Survey)> = groups
        .iter()
        .map(|g| (g, merged_ports(s.sweep, g)))
        .collect();
    let mut leaked = gauge(
        "tcpstate_close_wait_leaked",
        "Counted endpoints in CLOSE_WAIT for longer than --close-wait-leak-after, by local port (listening ports; the rest as other).",
    );
    let mut oldest = gauge(
        "tcpstate_close_wait_oldest_seconds",
        "Age of the oldest counted CLOSE_WAIT endpoint, by local port; 0 when none.",
    );
    let mut backlog = gauge(
        "tcpstate_syn_backlog",
        "Local server endpoints in SYN_RECV (half-open: SYN-ACK sent, final ACK not yet seen), by local port.",
    );
    let mut queue = gauge(
        "tcpstate_accept_queue_length",
        "Connections completed and waiting for accept() on a listening port (the kernel's accept queue).",
    );
    let mut queue_max = gauge(
        "tcpstate_accept_queue_max_length",
        "Limit of a listening port's accept queue (listen() backlog capped by net.core.somaxconn).",
    );
    for (g, survey) in &surveys {
        for (port, fig) in &survey.ports {
            let labels = g.with(&[("port", port)]);
            leaked.sample(&labels, fig.leaked as f64);
            oldest.sample(&labels, fig.oldest_s);
            backlog.sample(&labels, fig.syn_backlog as f64);
            if let Some(q) = fig.accept {
                queue.sample(&labels, q.length as f64);
                queue_max.sample(&labels, q.max_length as f64);
            }
        }
    }
    out.extend([leaked, oldest, backlog, queue, queue_max]);

    let mut f = counter(
        "tcpstate_syn_cookies_sent_total",
        "SYN-ACKs a local listener sent from a SYN cookie (its SYN queue was full; the kernel keeps no state for these until the ACK returns the cookie), by local port. Host mode only: told apart on TC egress by the socket a cookie SYN-ACK lacks.",
    );
    // The host's own listeners only: a container's cookies leave through its veth the other way.
    if let Some((g, survey)) = surveys.iter().find(|(g, _)| g.scopes.contains(&0)) {
        let total = t.slot(idx::SYN_COOKIES);
        let mut labelled = 0u64;
        for (port, fig) in &survey.ports {
            if port != OTHER {
                labelled = labelled.saturating_add(fig.syn_cookies);
                f.sample(&g.with(&[("port", port)]), fig.syn_cookies as f64);
            }
        }
        f.sample(
            &g.with(&[("port", OTHER)]),
            total.saturating_sub(labelled) as f64,
        );
    }
    out.push(f);

    if s.scopes.enabled {
        let mut f = gauge(
            "tcpstate_container_info",
            "Container namespaces watched, by their labels and container id (value 1).",
        );
        for w in &s.scopes.scopes {
            if let Some((ns, pod, ctr)) = s.scopes.labels(w.scope) {
                f.sample(
                    &[
                        ("namespace", ns.as_str()),
                        ("pod", pod.as_str()),
                        ("container", ctr.as_str()),
                        ("container_id", w.labels.container_id.as_str()),
                    ],
                    1.0,
                );
            }
        }
        out.push(f);
        let mut f = gauge(
            "tcpstate_containers_watched",
            "Container network namespaces watched (container mode).",
        );
        f.sample(&[], s.scopes.scopes.len() as f64);
        out.push(f);
        let mut f = gauge(
            "tcpstate_container_interfaces",
            "Host-side ends of container veths with the container programs attached.",
        );
        f.sample(&[], s.scopes.interfaces as f64);
        out.push(f);
        let mut f = counter(
            "tcpstate_containers_refused_total",
            "Container namespaces not watched because --max-containers were watched already.",
        );
        f.sample(&[], s.scopes.refused_total as f64);
        out.push(f);
    }

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
/// its labels, at zero. For `tcpstate describe-metrics`, and for checking dashboards and alert
/// rules against what is really exported. With `containers`, as in container mode: per-endpoint
/// families carry `namespace`, `pod` and `container`, for the host and one watched container.
pub fn describe_with(containers: bool) -> prometheus::Result<Vec<u8>> {
    idle(containers, render)
}

/// `f` applied to the scrape of an idle daemon (see [`describe_with`]).
pub fn idle<T>(containers: bool, f: impl FnOnce(&Scrape) -> T) -> T {
    let scopes: u32 = if containers { 2 } else { 1 };
    let totals = Totals {
        slots: vec![0; (tcpstate_common::counters::idx::COUNT * scopes) as usize],
        ..Totals::default()
    };
    // One listening port, shown as port="0", so the per-port families appear with their labels.
    let mut sweep = SweepReport::default();
    let listening = crate::background::ports::PortFigures {
        accept: Some(Default::default()),
        ..Default::default()
    };
    for scope in 0..scopes {
        let survey = sweep.ports.entry(scope).or_default();
        survey.ports.insert("0".to_string(), listening);
        survey.ports.insert(
            crate::background::ports::OTHER.to_string(),
            Default::default(),
        );
    }
    let attached = [Attached {
        iface: "eth0".into(),
        hook: "tc_ingress",
        mode: "tcx",
    }];
    let view = if containers {
        ScopeView {
            enabled: true,
            level: Some(crate::background::scopes::LabelLevel::Full),
            scopes: vec![crate::background::scopes::WatchedScope {
                scope: 1,
                labels: crate::background::scopes::Labels {
                    container: "web".into(),
                    container_id: "0".repeat(64),
                    ..Default::default()
                },
                diag: None,
            }],
            refused_total: 0,
            interfaces: 1,
        }
    } else {
        ScopeView::default()
    };
    f(&Scrape {
        totals: &totals,
        capacity: 0,
        half_open_budget: 0,
        sweep: &sweep,
        attached: &attached,
        scopes: &view,
    })
}
