//! The metric families by topic, in the order the exposition lists them. Each builder reads the
//! scrape's counter totals and reports and appends its families; nothing here walks the table.

use tcpstate_common::{
    counters::{idx, Hook, RstDirection, Stall, UntrackedReason, HANDSHAKE_BOUNDS_NS},
    durations::{self, DurationRow},
    packet::SkipReason,
    state::{FastOpen, InvalidReason, Opening, Retransmit},
    Role, TcpState,
};

use super::family::{
    connections, counter, gauge, merged_clients, per_reason, Family, Group, Scrape,
};
use super::layout;
use crate::background::ports::{PortFigures, Survey, OTHER};

/// The endpoint gauges: `tcpstate_connections`.
pub fn endpoints(s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let t = s.totals;
    let mut f = gauge(
        "tcpstate_connections",
        "TCP endpoints in each state: local endpoints on host-mode interfaces (comparable to ss -tan), both ends on tap-mode interfaces.",
    );
    for g in groups {
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
}

/// What the programs examined, and the RSTs they accepted, with every reason a segment or flow was left alone.
pub fn segments(s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let t = s.totals;
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
    for g in groups {
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

    out.push(per_reason(
        "tcpstate_invalid_segments_total",
        "Well-formed TCP segments that changed no state, by reason.",
        InvalidReason::ALL.map(|why| (why.name(), t.slot(idx::INVALID + why as u32))),
    ));
    out.push(per_reason(
        "tcpstate_skipped_packets_total",
        "IP packets the parser could not take as a TCP segment (malformed headers, fragments), by reason. They pass untouched.",
        SkipReason::ALL.map(|why| (why.name(), t.slot(idx::SKIPPED + why as u32))),
    ));
    out.push(per_reason(
        "tcpstate_flows_untracked_total",
        "Flows that could not be tracked, by reason.",
        UntrackedReason::ALL.map(|why| (why.name(), t.slot(idx::UNTRACKED + why as u32))),
    ));
}

/// Flows opened and removed.
pub fn flows(s: &Scrape, _groups: &[Group], out: &mut Vec<Family>) {
    let t = s.totals;
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

    out.push(counter("tcpstate_flows_expired_total", "Flows the sweeper removed: their state's timeout ran out, or (host mode) the kernel's socket table no longer held the local endpoint.").of(t.books().deleted as f64));
}

/// Opening handshakes: outcomes, Fast Open and durations.
pub fn handshakes(s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let t = s.totals;
    let mut f = counter(
        "tcpstate_handshakes_total",
        "Outcome of each opening handshake.",
    );
    for g in groups {
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
    for g in groups {
        for fo in FastOpen::ALL {
            let v = g.sum(|sc| t.scoped(sc, idx::FASTOPEN + fo as u32 - 1));
            f.scoped_sample(g, &[("result", fo.name())], v as f64);
        }
    }
    out.push(f);

    let mut f = Family::new(
        "tcpstate_handshake_duration_seconds",
        "Opening handshakes as seen on this host, SYN to ESTABLISHED: the client's ends with the SYN-ACK, the server's with the final ACK.",
        prometheus::proto::MetricType::HISTOGRAM,
    );
    let bounds: Vec<f64> = HANDSHAKE_BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .collect();
    for g in groups {
        for role in Role::ALL {
            let first = idx::HANDSHAKE_BUCKETS + role as u32 * idx::HANDSHAKE_BUCKETS_PER_ROLE;
            let counts: Vec<u64> = (first..first + idx::HANDSHAKE_BUCKETS_PER_ROLE)
                .map(|i| g.sum(|sc| t.scoped(sc, i)))
                .collect();
            let sum = g.sum(|sc| t.scoped(sc, idx::HANDSHAKE_SUM_NS + role as u32)) as f64 / 1e9;
            f.scoped_histogram(g, &[("role", role.name())], &bounds, &counts, sum);
        }
    }
    out.push(f);
}

/// The flow table's fill against its capacity and half-open budget.
pub fn table(s: &Scrape, _groups: &[Group], out: &mut Vec<Family>) {
    let t = s.totals;
    let (fill, half_open) = t.table.fill(&t.books());
    out.push(
        gauge(
            "tcpstate_flow_table_entries",
            "Flows in the kernel flow table.",
        )
        .of(fill as f64),
    );
    out.push(
        gauge(
            "tcpstate_flow_table_capacity",
            "Flows the kernel flow table holds at most.",
        )
        .of(s.capacity as f64),
    );
    // The IPv6 table fills on its own (--max-ipv6-flows): its flows at the last walk. (A replay
    // keeps every flow in one table, and has no such figure.)
    if s.capacity6 == 0 {
        return half_open_gauges(s, half_open, out);
    }
    out.push(
        gauge(
            "tcpstate_flow_table_ipv6_entries",
            "Flows in the kernel table of flows not IPv4 at both ends, at the last walk.",
        )
        .of(s.sweep.visited_v6 as f64),
    );
    out.push(
        gauge(
            "tcpstate_flow_table_ipv6_capacity",
            "Flows the kernel table of flows not IPv4 at both ends holds (--max-ipv6-flows).",
        )
        .of(s.capacity6 as f64),
    );
    half_open_gauges(s, half_open, out);
}

/// The half-open flows against their budget.
fn half_open_gauges(s: &Scrape, half_open: u64, out: &mut Vec<Family>) {
    out.push(
        gauge(
            "tcpstate_flow_table_half_open_entries",
            "Flows in the table still in their handshake, created by a SYN.",
        )
        .of(half_open as f64),
    );
    out.push(
        gauge(
            "tcpstate_flow_table_half_open_capacity",
            "Half-open flows the table holds at most (the SYN flood budget).",
        )
        .of(s.half_open_budget as f64),
    );
}

/// Per-port figures from the background walk: leaks, backlogs, accept queues, SYN cookies,
/// handshakes sent again.
pub fn ports(s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let surveys: Vec<(&Group, &Survey)> = groups.iter().map(|g| (g, &g.ports)).collect();
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
            // A container's listening port keeps its series at 0, as the host's ports do; its
            // `other` (and a port no longer listening) appears once non-zero, so hundreds of
            // idle containers add nothing.
            if g.sparse() && fig.accept.is_none() {
                let l = [("port", port.as_str())];
                leaked.scoped_sample(g, &l, fig.leaked as f64);
                oldest.scoped_sample(g, &l, fig.oldest_s);
                backlog.scoped_sample(g, &l, fig.syn_backlog as f64);
                continue;
            }
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
        "SYN-ACKs a local listener sent from a SYN cookie (its SYN queue was full; the kernel keeps no state for these until the ACK returns the cookie), by local port (a container's as one total under port=\"other\"). Host mode and containers: told apart by the socket a cookie SYN-ACK lacks.",
    );
    kernel_per_port(&mut f, s, &surveys, idx::SYN_COOKIES, |fig| fig.syn_cookies);
    out.push(f);

    let mut f = counter(
        "tcpstate_syn_retransmits_total",
        "SYNs a client sent again (same ISN) to a local server with no SYN-ACK between: the listener dropped them (SYN queue or accept queue full) or they were lost on the way, by local port (a container's as one total under port=\"other\").",
    );
    kernel_per_port(
        &mut f,
        s,
        &surveys,
        idx::retransmits(Retransmit::Syn),
        |fig| fig.syn_retransmits,
    );
    out.push(f);
    let mut f = counter(
        "tcpstate_synack_retransmits_total",
        "SYN-ACKs a local server sent again (same ISN): the listener dropped the final ACK (accept queue full), or the SYN-ACK or the final ACK was lost, or the client resent its SYN, by local port (a container's as one total under port=\"other\").",
    );
    kernel_per_port(
        &mut f,
        s,
        &surveys,
        idx::retransmits(Retransmit::SynAck),
        |fig| fig.synack_retransmits,
    );
    out.push(f);
}

/// A counter the kernel keeps per port for the host (a per-port map, read by the walk for the
/// labelled ports) and per scope in counter `slot`: the host's labelled ports, its `other` as
/// the total less those; a container's as one total under `port="other"` (the per-port maps are
/// the host's alone).
fn kernel_per_port(
    f: &mut Family,
    s: &Scrape,
    surveys: &[(&Group, &Survey)],
    slot: u32,
    value: impl Fn(&PortFigures) -> u64,
) {
    let t = s.totals;
    if let Some((g, survey)) = surveys.iter().find(|(g, _)| g.scopes.contains(&0)) {
        let total = t.slot(slot);
        let mut labelled = 0u64;
        for (port, fig) in &survey.ports {
            if port != OTHER {
                let v = value(fig);
                labelled = labelled.saturating_add(v);
                f.sample(&g.with(&[("port", port)]), v as f64);
            }
        }
        f.sample(
            &g.with(&[("port", OTHER)]),
            total.saturating_sub(labelled) as f64,
        );
    }
    for (g, _) in surveys.iter().filter(|(g, _)| !g.scopes.contains(&0)) {
        let v = g.sum(|sc| t.scoped(sc, slot));
        f.scoped_sample(g, &[("port", OTHER)], v as f64);
    }
}

/// Readers that stopped reading: endpoints advertising a zero window now (from the walk, by
/// port) and the stalls begun (the kernel's counters, by scope).
pub fn stalls(s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let t = s.totals;
    let mut now = gauge(
        "tcpstate_zero_window_endpoints",
        "Counted endpoints stalled by a zero receive window, by local port and side: local (the endpoint advertises it: its application stopped reading, Recv-Q full) or remote (its peer does: its sends wait, Send-Q grows).",
    );
    for g in groups {
        for (port, fig) in &g.ports.ports {
            for stall in Stall::ALL {
                let v = fig.zero_window[stall as usize] as f64;
                now.scoped_sample(g, &[("port", port), ("side", stall.name())], v);
            }
        }
    }
    out.push(now);
    let mut begun = counter(
        "tcpstate_zero_window_stalls_total",
        "Zero-window stalls begun, seen by a counted endpoint: its own window closed (local) or its peer's (remote).",
    );
    for g in groups {
        for stall in Stall::ALL {
            let v = g.sum(|sc| t.scoped(sc, idx::ZERO_WINDOW_STALLS + stall as u32));
            begun.scoped_sample(g, &[("side", stall.name())], v as f64);
        }
    }
    out.push(begun);
}

/// How long endpoints took to close after their peer did, and how long connections lived: the
/// histograms the kernel and the daemon add to, read by the walk.
pub fn durations(_s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let bounds: Vec<f64> = durations::BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .collect();
    let mut close_wait = Family::new(
        "tcpstate_close_wait_duration_seconds",
        "Time counted endpoints spent in CLOSE_WAIT, from the peer's FIN to the local application's close (its FIN or RST) or its socket going away, by local port (listening ports; the rest, clients and containers' endpoints as other). A leak is the tail that never ends; a slow close shows here first.",
        prometheus::proto::MetricType::HISTOGRAM,
    );
    let mut lifetime = Family::new(
        "tcpstate_connection_duration_seconds",
        "Lifetime of connections whose SYN was seen, from the SYN to the counted endpoint's close (CLOSED or TIME_WAIT, by segments, an RST, a timeout or its socket going away), by local port (server endpoints on listening ports; the rest as other) and role.",
        prometheus::proto::MetricType::HISTOGRAM,
    );
    let sample = |f: &mut Family, g: &Group, labels: &[(&str, &str)], row: &DurationRow| {
        f.scoped_histogram(g, labels, &bounds, &row.buckets, row.sum_us as f64 / 1e6)
    };
    for g in groups {
        for (port, fig) in &g.ports.ports {
            sample(
                &mut close_wait,
                g,
                &[("port", port)],
                &fig.close_wait_durations,
            );
            for role in Role::ALL {
                let row = &fig.lifetimes[role as usize];
                // A client's local port is ephemeral: clients are only ever under `other`.
                if role == Role::Client && port != OTHER {
                    continue;
                }
                sample(
                    &mut lifetime,
                    g,
                    &[("port", port), ("role", role.name())],
                    row,
                );
            }
        }
    }
    out.extend([close_wait, lifetime]);
}

/// Ephemeral port pressure from the background walk: client endpoints per destination, and each
/// scope's port range to compare them with.
pub fn clients(s: &Scrape, groups: &[Group], out: &mut Vec<Family>) {
    let mut in_use = gauge(
        "tcpstate_client_ports_in_use",
        "Local client endpoints in any state (TIME_WAIT included), each holding a source port, by destination address and port (the busiest destinations, as many as --port-labels; the rest summed as other). connect() to a destination fails with EADDRNOTAVAIL once its count reaches tcpstate_client_port_range_size.",
    );
    let mut range = gauge(
        "tcpstate_client_port_range_size",
        "Source ports connect() picks from in the namespace: net.ipv4.ip_local_port_range less net.ipv4.ip_local_reserved_ports (IPv6 uses the same range), read at most once a minute. Host mode and container namespaces.",
    );
    for g in groups {
        let (by_destination, size) = merged_clients(s.sweep, g);
        for (dest, n) in &by_destination {
            in_use.scoped_sample(g, &[("destination", dest)], *n as f64);
        }
        // A container's range is what its client ports are compared with: shown once it has any.
        let idle = by_destination.values().all(|&n| n == 0);
        if let Some(size) = size.filter(|_| !(g.sparse() && idle)) {
            range.sample(&g.with(&[]), size as f64);
        }
    }
    out.extend([in_use, range]);
}

/// Container mode's own bookkeeping.
pub fn containers(s: &Scrape, _groups: &[Group], out: &mut Vec<Family>) {
    if s.scopes.enabled {
        out.push(Family::written(
            layout::INFO_NAME,
            layout::INFO_HELP,
            s.layout.info_lines.clone(),
        ));
        out.push(
            gauge(
                "tcpstate_containers_watched",
                "Container network namespaces watched (container mode).",
            )
            .of(s.scopes.scopes.len() as f64),
        );
        out.push(
            gauge(
                "tcpstate_container_interfaces",
                "Host-side ends of container veths with the container programs attached.",
            )
            .of(s.scopes.interfaces as f64),
        );
        out.push(
            counter(
                "tcpstate_containers_refused_total",
                "Container namespaces not watched because --max-containers were watched already.",
            )
            .of(s.scopes.refused_total as f64),
        );
    }
}

/// The daemon itself: the walk's cost, what is attached, the build.
pub fn daemon(s: &Scrape, _groups: &[Group], out: &mut Vec<Family>) {
    out.push(
        gauge(
            "tcpstate_sweep_duration_seconds",
            "Wall time of the latest background walk of the flow table.",
        )
        .of(s.sweep.duration.as_secs_f64()),
    );
    out.push(
        gauge(
            "tcpstate_sweep_flows_visited",
            "Flows the latest background walk read.",
        )
        .of(s.sweep.visited as f64),
    );
    out.push(
        counter(
            "tcpstate_sweeps_total",
            "Background walks of the flow table completed.",
        )
        .of(s.sweep.sweeps as f64),
    );

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
        "Version, git revision, compiler and aya versions of the running tcpstate (value 1).",
    );
    f.sample(
        &[
            ("aya_version", BUILD.aya),
            ("revision", BUILD.revision),
            ("rustc_version", BUILD.rustc),
            ("version", BUILD.version),
        ],
        1.0,
    );
    out.push(f);
}

/// The standard `process_*` families of Prometheus client libraries (CPU seconds, resident and
/// virtual memory, open and maximum file descriptors, start time, threads), read from /proc by
/// the prometheus crate's process collector: the same names node_exporter and Go exporters show.
pub fn process(_: &Scrape, _: &[Group], out: &mut Vec<Family>) {
    use prometheus::core::Collector;
    // Made once: the collector reads the start time when it is created.
    static COLLECTOR: std::sync::OnceLock<prometheus::process_collector::ProcessCollector> =
        std::sync::OnceLock::new();
    let collector =
        COLLECTOR.get_or_init(prometheus::process_collector::ProcessCollector::for_self);
    out.extend(collector.collect().into_iter().map(Family::from));
}

/// What this binary was built from (build.rs): `tcpstate_build_info`'s labels, and what
/// `tcpstate --version` prints.
pub struct Build {
    pub version: &'static str,
    /// The git commit, `unknown` when not built from a git checkout.
    pub revision: &'static str,
    pub rustc: &'static str,
    pub aya: &'static str,
}

pub const BUILD: Build = Build {
    version: env!("CARGO_PKG_VERSION"),
    revision: env!("TCPSTATE_REVISION"),
    rustc: env!("TCPSTATE_RUSTC"),
    aya: env!("TCPSTATE_AYA"),
};
