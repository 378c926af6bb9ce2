//! Per-port figures: CLOSE_WAIT ages (`tcpstate_close_wait_leaked`,
//! `tcpstate_close_wait_oldest_seconds`), the SYN_RECV backlog (`tcpstate_syn_backlog`),
//! zero-window stalls (`tcpstate_zero_window_endpoints`) and the kernel's accept queues
//! (`tcpstate_accept_queue_length`, `_max_length`). Computed by the sweeper's walk and a
//! sock_diag dump of listeners, never by a scrape; the duration histograms are filled in from
//! their rows ([`crate::background::durations`]).
//!
//! Port labels are bounded: listening ports (and server endpoints' ports, for tap mode), the
//! busiest first, up to a limit; a port keeps its label once given, so a figure that goes away
//! reads 0 rather than vanishing; every other port is reported as `port="other"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tcpstate_common::{
    counters::Stall, durations::DurationRow, flow::Side, FlowKey, FlowRecord, Role, TcpState,
};

/// One counted endpoint the per-port figures follow: in CLOSE_WAIT or SYN_RECV, or stalled by a
/// zero window (its own or its peer's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PortEndpoint {
    /// The scope (namespace) the endpoint lives in.
    pub scope: u32,
    pub local_port: u16,
    pub role: Role,
    pub state: TcpState,
    pub age_s: f64,
    /// `[Stall]`: the endpoint advertises a zero window (local), its peer does (remote).
    pub zero_window: [bool; 2],
}

/// The counted endpoints of a flow the per-port figures follow (at most two, in tap mode).
pub fn endpoints(
    key: &FlowKey,
    rec: &FlowRecord,
    now_ns: u64,
) -> impl Iterator<Item = PortEndpoint> {
    let w = rec.word();
    let key = *key;
    let since = rec.since_ns;
    [Side::A, Side::B]
        .into_iter()
        .filter(move |&side| {
            w.is_counted(side)
                && (matches!(w.state(side), TcpState::CloseWait | TcpState::SynRecv)
                    || w.zero_window(side)
                    || w.zero_window(side.other()))
        })
        .map(move |side| PortEndpoint {
            scope: key.scope,
            local_port: key.port[side.index()],
            role: w.role(side),
            state: w.state(side),
            age_s: now_ns.saturating_sub(since[side.index()]) as f64 / 1e9,
            zero_window: [w.zero_window(side), w.zero_window(side.other())],
        })
}

/// The kernel's accept queue of a listening port (summed over its listeners: IPv4 and IPv6,
/// SO_REUSEPORT groups).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptQueue {
    /// Connections completed and waiting for accept().
    pub length: u64,
    /// The queue's limit (listen() backlog capped by somaxconn).
    pub max_length: u64,
}

/// The figures for one port label.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PortFigures {
    /// CLOSE_WAIT endpoints older than the leak threshold.
    pub leaked: u64,
    /// Age of the oldest CLOSE_WAIT endpoint, 0 when there is none.
    pub oldest_s: f64,
    /// Server endpoints in SYN_RECV: the half-open backlog, as seen on the wire.
    pub syn_backlog: u64,
    /// The accept queue, for listening ports (host mode).
    pub accept: Option<AcceptQueue>,
    /// SYN-ACKs sent from SYN cookies since the maps were created (host mode), for numbered
    /// labels; `other`'s is the total less these, computed at scrape time.
    pub syn_cookies: u64,
    /// SYNs sent again to a local server on this port with no SYN-ACK between, and SYN-ACKs it
    /// sent again, since the maps were created (the host's, for numbered labels; `other`'s is
    /// the total less these, computed at scrape time, as for `syn_cookies`).
    pub syn_retransmits: u64,
    pub synack_retransmits: u64,
    /// `[Stall]`: endpoints advertising a zero window (local), endpoints whose peer does
    /// (remote).
    pub zero_window: [u64; 2],
    /// Time endpoints spent in CLOSE_WAIT, since the rows were created.
    pub close_wait_durations: DurationRow,
    /// `[Role]`: connection lifetimes, SYN to close, since the rows were created.
    pub lifetimes: [DurationRow; 2],
}

/// Label of a port: its number, or "other".
pub type Label = String;
pub const OTHER: &str = "other";

/// Per-label figures, every chosen label present.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Survey {
    pub ports: BTreeMap<Label, PortFigures>,
}

/// Which ports get a label of their own: candidates (listening or previously labelled) and server
/// endpoints' local ports, those with the most followed endpoints first, then by port number, at
/// most `limit`. Client endpoints' local ports are ephemeral and always fold into "other".
pub fn choose_labels(
    candidates: &BTreeSet<u16>,
    seen: &[PortEndpoint],
    limit: usize,
) -> BTreeSet<u16> {
    let mut counts: HashMap<u16, u64> = candidates.iter().map(|&p| (p, 0)).collect();
    for e in seen.iter().filter(|e| e.role == Role::Server) {
        *counts.entry(e.local_port).or_insert(0) += 1;
    }
    let mut ranked: Vec<(u16, u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(limit).map(|(p, _)| p).collect()
}

pub fn survey(
    seen: &[PortEndpoint],
    labels: &BTreeSet<u16>,
    leak_after_s: f64,
    listeners: &BTreeMap<u16, AcceptQueue>,
) -> Survey {
    let mut ports: BTreeMap<Label, PortFigures> = labels
        .iter()
        .map(|p| {
            (
                p.to_string(),
                PortFigures {
                    accept: listeners.get(p).copied(),
                    ..PortFigures::default()
                },
            )
        })
        .collect();
    ports.insert(OTHER.to_string(), PortFigures::default());
    for e in seen {
        let label = if e.role == Role::Server && labels.contains(&e.local_port) {
            e.local_port.to_string()
        } else {
            OTHER.to_string()
        };
        let f = ports.entry(label).or_default();
        for stall in Stall::ALL {
            if e.zero_window[stall as usize] {
                f.zero_window[stall as usize] += 1;
            }
        }
        match e.state {
            TcpState::CloseWait => {
                if e.age_s > leak_after_s {
                    f.leaked += 1;
                }
                f.oldest_s = f.oldest_s.max(e.age_s);
            }
            TcpState::SynRecv if e.role == Role::Server => f.syn_backlog += 1,
            _ => {}
        }
    }
    Survey { ports }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cw(port: u16, role: Role, age_s: f64) -> PortEndpoint {
        PortEndpoint {
            scope: 0,
            local_port: port,
            role,
            state: TcpState::CloseWait,
            age_s,
            zero_window: [false; 2],
        }
    }

    fn half_open(port: u16) -> PortEndpoint {
        PortEndpoint {
            scope: 0,
            local_port: port,
            role: Role::Server,
            state: TcpState::SynRecv,
            age_s: 0.1,
            zero_window: [false; 2],
        }
    }

    #[test]
    fn stalled_readers_are_counted_by_whose_window_is_zero() {
        let stalled = |port, role, zero_window| PortEndpoint {
            scope: 0,
            local_port: port,
            role,
            state: TcpState::Established,
            age_s: 3.0,
            zero_window,
        };
        let s = [
            stalled(8080, Role::Server, [true, false]),
            stalled(8080, Role::Server, [true, false]),
            stalled(8080, Role::Server, [false, true]),
            stalled(40000, Role::Client, [false, true]),
        ];
        let labels = choose_labels(&[8080].into(), &s, 32);
        let survey = survey(&s, &labels, 60.0, &BTreeMap::new());
        assert_eq!(survey.ports["8080"].zero_window, [2, 1]);
        assert_eq!(
            survey.ports[OTHER].zero_window,
            [0, 1],
            "clients fold into other"
        );
        assert_eq!(
            survey.ports["8080"].leaked, 0,
            "an ESTABLISHED stall is no leak"
        );
    }

    #[test]
    fn leaks_are_counted_past_the_threshold_on_their_port_only() {
        let s = [
            cw(8080, Role::Server, 90.0),
            cw(8080, Role::Server, 61.0),
            cw(8080, Role::Server, 5.0),
        ];
        let labels = choose_labels(&[8080, 9090].into(), &s, 32);
        let v = survey(&s, &labels, 60.0, &BTreeMap::new());
        assert_eq!(
            (v.ports["8080"].leaked, v.ports["8080"].oldest_s),
            (2, 90.0)
        );
        assert_eq!(
            v.ports["9090"],
            PortFigures::default(),
            "a quiet listening port reads 0"
        );
        assert_eq!(v.ports[OTHER], PortFigures::default());
    }

    #[test]
    fn client_side_close_wait_folds_into_other() {
        let s = [cw(51234, Role::Client, 120.0)];
        let labels = choose_labels(&[80].into(), &s, 32);
        assert!(!labels.contains(&51234));
        let v = survey(&s, &labels, 60.0, &BTreeMap::new());
        assert_eq!((v.ports[OTHER].leaked, v.ports[OTHER].oldest_s), (1, 120.0));
    }

    #[test]
    fn labels_are_bounded_busiest_ports_first() {
        let listening: BTreeSet<u16> = (1000..1100).collect();
        let s = vec![
            cw(1099, Role::Server, 1.0),
            cw(1099, Role::Server, 1.0),
            cw(1050, Role::Server, 1.0),
            cw(7, Role::Server, 1.0),
        ];
        let labels = choose_labels(&listening, &s, 3);
        // 1099 has two, 7 and 1050 one each (ties by port number); the quiet listeners lose out.
        assert_eq!(labels, BTreeSet::from([7, 1050, 1099]));
        let v = survey(&s, &labels, 0.5, &BTreeMap::new());
        let total: u64 = v.ports.values().map(|f| f.leaked).sum();
        assert_eq!(total, 4, "nothing is lost by folding into other");
    }

    #[test]
    fn syn_backlog_and_accept_queue_are_per_listening_port() {
        let s = [
            half_open(443),
            half_open(443),
            half_open(443),
            cw(443, Role::Server, 1.0),
        ];
        let listeners = BTreeMap::from([
            (
                443,
                AcceptQueue {
                    length: 5,
                    max_length: 4096,
                },
            ),
            (
                22,
                AcceptQueue {
                    length: 0,
                    max_length: 128,
                },
            ),
        ]);
        let labels = choose_labels(&listeners.keys().copied().collect(), &s, 32);
        let v = survey(&s, &labels, 60.0, &listeners);
        assert_eq!(v.ports["443"].syn_backlog, 3);
        assert_eq!(
            v.ports["443"].accept,
            Some(AcceptQueue {
                length: 5,
                max_length: 4096
            })
        );
        assert_eq!(v.ports["22"].syn_backlog, 0);
        assert_eq!(
            v.ports["22"].accept,
            Some(AcceptQueue {
                length: 0,
                max_length: 128
            })
        );
        assert_eq!(v.ports[OTHER].accept, None, "other has no queue of its own");
    }
}
