//! The metric contract (DESIGN.md) rendered from counter totals. Nothing here walks the flow
//! table: a scrape reads per-CPU counters and the sweeper's latest report, O(1) in flows.

use prometheus::{proto::MetricFamily, Encoder, TextEncoder};

pub use super::family::Scrape;
use super::{
    families,
    family::{groups, with_ports, Family},
};
use crate::{
    background::{report::SweepReport, scopes::ScopeView},
    bpf::{attach::Attached, tables::Totals},
};

pub fn families(s: &Scrape) -> Vec<MetricFamily> {
    let groups = with_ports(groups(s.scopes), s.sweep);
    let mut out: Vec<Family> = Vec::new();
    for topic in [
        families::endpoints,
        families::segments,
        families::flows,
        families::handshakes,
        families::table,
        families::ports,
        families::stalls,
        families::durations,
        families::clients,
        families::containers,
        families::daemon,
        families::process,
    ] {
        topic(s, &groups, &mut out);
    }
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
    // One destination and a port range, so the client port families appear with their labels.
    for scope in 0..scopes {
        let mut in_use = std::collections::BTreeMap::new();
        in_use.insert("0.0.0.0:0".to_string(), 0);
        in_use.insert(crate::background::ports::OTHER.to_string(), 0);
        sweep.clients.insert(
            scope,
            crate::background::destinations::ClientPorts {
                in_use,
                range_size: Some(0),
            },
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
                port_range: None,
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
        capacity6: 0,
        half_open_budget: 0,
        sweep: &sweep,
        attached: &attached,
        scopes: &view,
    })
}
