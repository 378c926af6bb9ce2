//! The metric contract (DESIGN.md) rendered from counter totals. Nothing here walks the flow
//! table: a scrape reads per-CPU counters and the sweeper's latest report, O(1) in flows.

use prometheus::{Encoder, TextEncoder};

pub use super::family::Scrape;
use super::{
    families,
    family::{active_groups, Family, Group},
    layout::Layout,
};
use crate::{
    background::{report::SweepReport, scopes::ScopeView},
    bpf::{attach::Attached, tables::Totals},
};

pub fn families(s: &Scrape) -> Vec<Family> {
    families_of(s, &active_groups(s.layout, s.totals, s.sweep))
}

fn families_of(s: &Scrape, groups: &[Group]) -> Vec<Family> {
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
        topic(s, groups, &mut out);
    }
    // A family with no samples (no attachment yet, no sweep yet) is not valid exposition.
    out.retain(|f| !f.is_empty());
    out
}

/// Prometheus text exposition format 0.0.4.
pub fn render(s: &Scrape) -> prometheus::Result<Vec<u8>> {
    text(&families(s))
}

pub(super) fn text(families: &[Family]) -> prometheus::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(16 * 1024 + families.iter().map(written_len).sum::<usize>());
    let encoder = TextEncoder::new();
    for f in families {
        match &f.lines {
            Some(lines) => {
                let name = f.proto.name();
                let help = f.proto.help().replace('\\', "\\\\").replace('\n', "\\n");
                buf.extend_from_slice(
                    format!("# HELP {name} {help}\n# TYPE {name} gauge\n").as_bytes(),
                );
                buf.extend_from_slice(lines.as_bytes());
            }
            None => encoder.encode(std::slice::from_ref(&f.proto), &mut buf)?,
        }
    }
    Ok(buf)
}

fn written_len(f: &Family) -> usize {
    f.lines.as_ref().map_or(0, |l| l.len())
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
            generation: ScopeView::next_generation(),
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
        layout: &Layout::of(&view),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use tcpstate_common::{counters::idx, maps::UserCounters};

    use super::*;
    use crate::background::{
        destinations::ClientPorts,
        ports::{AcceptQueue, PortFigures, Survey, OTHER},
        scopes::{LabelLevel, Labels, WatchedScope},
    };

    /// What one watched scope has at a scrape, from nothing to each kind of input a series reads.
    #[derive(Clone, Copy, Debug)]
    enum Input {
        Nothing,
        /// One of its own counter slots (the index picks among them).
        Slot(u32, u64),
        /// A word of its range that belongs to the global set: never read for a scope.
        GlobalWord(u32, u64),
        Daemon(u64),
        /// A port of its survey with all figures zero: nothing to show.
        QuietPort,
        LeakedPort(u64),
        ListeningPort,
        /// Client ports known with none in use: nothing to show.
        QuietClients,
        Clients(u64),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Nothing),
            (any::<u32>(), 1..1000u64).prop_map(|(i, v)| Input::Slot(i, v)),
            (any::<u32>(), 1..1000u64).prop_map(|(i, v)| Input::GlobalWord(i, v)),
            (1..1000u64).prop_map(Input::Daemon),
            Just(Input::QuietPort),
            (1..1000u64).prop_map(Input::LeakedPort),
            Just(Input::ListeningPort),
            Just(Input::QuietClients),
            (1..1000u64).prop_map(Input::Clients),
        ]
    }

    /// The exposition with quiet groups skipped is the one with every group rendered, whatever
    /// the scopes hold and however they group: skipping is only ever a saving.
    fn rendered_both_ways(inputs: &[(Input, u8)], host_value: u64, level: LabelLevel) {
        let scopes = inputs.len() as u32 + 1;
        let count = idx::COUNT as usize;
        let own: Vec<u32> = (0..idx::COUNT).filter(|&i| idx::per_scope(i)).collect();
        let global: Vec<u32> = (0..idx::COUNT).filter(|&i| !idx::per_scope(i)).collect();
        let mut totals = Totals {
            slots: vec![0; count * scopes as usize],
            user: vec![UserCounters::default(); scopes as usize],
            ..Totals::default()
        };
        // The host's every slot set: global figures are read for every group.
        for (i, v) in totals.slots.iter_mut().take(count).enumerate() {
            *v = host_value.wrapping_add(i as u64);
        }
        let mut sweep = SweepReport::default();
        let mut watched = Vec::new();
        for (n, &(input, pod)) in inputs.iter().enumerate() {
            let scope = n as u32 + 1;
            let base = scope as usize * count;
            match input {
                Input::Nothing => {}
                Input::Slot(i, v) => totals.slots[base + own[i as usize % own.len()] as usize] = v,
                Input::GlobalWord(i, v) => {
                    totals.slots[base + global[i as usize % global.len()] as usize] = v
                }
                Input::Daemon(v) => totals.user[scope as usize].conn[3] = v,
                Input::QuietPort | Input::LeakedPort(_) | Input::ListeningPort => {
                    let fig = match input {
                        Input::LeakedPort(v) => PortFigures {
                            leaked: v,
                            oldest_s: v as f64,
                            ..PortFigures::default()
                        },
                        Input::ListeningPort => PortFigures {
                            accept: Some(AcceptQueue {
                                length: 0,
                                max_length: 128,
                            }),
                            ..PortFigures::default()
                        },
                        _ => PortFigures::default(),
                    };
                    let port = if matches!(input, Input::ListeningPort) {
                        "8080"
                    } else {
                        OTHER
                    };
                    let mut survey = Survey::default();
                    survey.ports.insert(port.to_string(), fig);
                    sweep.ports.insert(scope, survey);
                }
                Input::QuietClients | Input::Clients(_) => {
                    let n = if let Input::Clients(n) = input { n } else { 0 };
                    sweep.clients.insert(
                        scope,
                        ClientPorts {
                            in_use: BTreeMap::from([(OTHER.to_string(), n)]),
                            range_size: Some(28232),
                        },
                    );
                }
            }
            // Few pod names, so that some scopes share a group.
            watched.push(WatchedScope {
                scope,
                labels: Labels {
                    namespace: "shop".into(),
                    pod: format!("web-{}", pod % 4),
                    container_id: format!("{scope:064x}"),
                    ..Labels::default()
                },
                diag: None,
                port_range: None,
            });
        }
        let view = ScopeView {
            enabled: true,
            level: Some(level),
            scopes: watched,
            generation: ScopeView::next_generation(),
            ..ScopeView::default()
        };
        let layout = Layout::of(&view);
        let scrape = Scrape {
            totals: &totals,
            capacity: 1000,
            capacity6: 100,
            half_open_budget: 10,
            sweep: &sweep,
            attached: &[],
            scopes: &view,
            layout: &layout,
        };
        let every = text(&families_of(
            &scrape,
            &super::super::family::all_groups(&layout, &sweep),
        ));
        let skipping = render(&scrape).unwrap();
        // The daemon's own process figures (memory, CPU) move between two renders.
        let ours = |body: Vec<u8>| -> String {
            String::from_utf8(body)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("process_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(ours(skipping), ours(every.unwrap()));
    }

    proptest! {
        #[test]
        fn skipping_quiet_groups_changes_nothing(
            inputs in proptest::collection::vec((input(), any::<u8>()), 1..24),
            host_value in 0..1_000_000_000u64,
            namespace_level in any::<bool>(),
        ) {
            let level = if namespace_level { LabelLevel::Namespace } else { LabelLevel::Full };
            rendered_both_ways(&inputs, host_value, level);
        }
    }

    /// The comparison can tell: a scope's non-zero slot shows in the exposition, and a watched
    /// set of quiet scopes renders only the host's group.
    #[test]
    fn active_and_quiet_scopes_are_told_apart() {
        let quiet = [
            (Input::Nothing, 1),
            (Input::QuietPort, 2),
            (Input::QuietClients, 3),
        ];
        let layout = Layout::of(&ScopeView {
            enabled: true,
            level: Some(LabelLevel::Full),
            scopes: (1..=3)
                .map(|scope| WatchedScope {
                    scope,
                    labels: Labels {
                        container: format!("c{scope}"),
                        ..Labels::default()
                    },
                    diag: None,
                    port_range: None,
                })
                .collect(),
            generation: ScopeView::next_generation(),
            ..ScopeView::default()
        });
        let mut totals = Totals {
            slots: vec![0; idx::COUNT as usize * 4],
            user: vec![UserCounters::default(); 4],
            ..Totals::default()
        };
        let sweep = SweepReport::default();
        assert_eq!(active_groups(&layout, &totals, &sweep).len(), 1);
        totals.slots[2 * idx::COUNT as usize + idx::HANDSHAKES as usize] = 1;
        let active = active_groups(&layout, &totals, &sweep);
        assert_eq!(active.len(), 2);
        assert_eq!(active[1].scopes, [2]);
        rendered_both_ways(&quiet, 7, LabelLevel::Full);
    }
}
