//! CLOSE_WAIT ages per local port: the figures behind `tcpstate_close_wait_leaked` and
//! `tcpstate_close_wait_oldest_seconds`, computed from the flow table by the sweeper's walk (never
//! by a scrape). Port labels are bounded: listening ports, the busiest first, up to a limit; every
//! other port is reported as `port="other"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tcpstate_common::{flow::Side, FlowKey, FlowRecord, Role, TcpState};

/// One counted endpoint in CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stuck {
    pub local_port: u16,
    pub role: Role,
    pub age_s: f64,
}

/// The counted CLOSE_WAIT endpoints of a flow (at most two, in tap mode).
pub fn stuck_endpoints(
    key: &FlowKey,
    rec: &FlowRecord,
    now_ns: u64,
) -> impl Iterator<Item = Stuck> {
    let w = rec.word();
    let key = *key;
    let since = rec.since_ns;
    [Side::A, Side::B]
        .into_iter()
        .filter(move |&side| w.is_counted(side) && w.state(side) == TcpState::CloseWait)
        .map(move |side| Stuck {
            local_port: key.port[side.index()],
            role: w.role(side),
            age_s: now_ns.saturating_sub(since[side.index()]) as f64 / 1e9,
        })
}

/// The figures for one port label.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PortFigures {
    /// Endpoints in CLOSE_WAIT for longer than the leak threshold.
    pub leaked: u64,
    /// Age of the oldest CLOSE_WAIT endpoint, 0 when there is none.
    pub oldest_s: f64,
}

/// Label of a port: its number, or "other".
pub type Label = String;
pub const OTHER: &str = "other";

/// Per-label figures, every chosen label present (0 when quiet) so a leak going away reads as 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Survey {
    pub ports: BTreeMap<Label, PortFigures>,
}

/// Which ports get a label of their own: listening ports (server endpoints' local ports count as
/// listening, for tap mode), those with the most CLOSE_WAIT endpoints first, then by port number,
/// at most `limit`. Client endpoints' local ports are ephemeral and always fold into "other".
pub fn choose_labels(listening: &BTreeSet<u16>, stuck: &[Stuck], limit: usize) -> BTreeSet<u16> {
    let mut candidates: HashMap<u16, u64> = listening.iter().map(|&p| (p, 0)).collect();
    for s in stuck.iter().filter(|s| s.role == Role::Server) {
        *candidates.entry(s.local_port).or_insert(0) += 1;
    }
    let mut ranked: Vec<(u16, u64)> = candidates.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(limit).map(|(p, _)| p).collect()
}

pub fn survey(stuck: &[Stuck], labels: &BTreeSet<u16>, leak_after_s: f64) -> Survey {
    let mut ports: BTreeMap<Label, PortFigures> = labels
        .iter()
        .map(|p| (p.to_string(), PortFigures::default()))
        .collect();
    ports.insert(OTHER.to_string(), PortFigures::default());
    for s in stuck {
        let label = if s.role == Role::Server && labels.contains(&s.local_port) {
            s.local_port.to_string()
        } else {
            OTHER.to_string()
        };
        let f = ports.entry(label).or_default();
        if s.age_s > leak_after_s {
            f.leaked += 1;
        }
        f.oldest_s = f.oldest_s.max(s.age_s);
    }
    Survey { ports }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck(port: u16, role: Role, age_s: f64) -> Stuck {
        Stuck {
            local_port: port,
            role,
            age_s,
        }
    }

    #[test]
    fn leaks_are_counted_past_the_threshold_on_their_port_only() {
        let s = [
            stuck(8080, Role::Server, 90.0),
            stuck(8080, Role::Server, 61.0),
            stuck(8080, Role::Server, 5.0),
        ];
        let labels = choose_labels(&[8080, 9090].into(), &s, 32);
        let v = survey(&s, &labels, 60.0);
        assert_eq!(
            v.ports["8080"],
            PortFigures {
                leaked: 2,
                oldest_s: 90.0
            }
        );
        assert_eq!(
            v.ports["9090"],
            PortFigures {
                leaked: 0,
                oldest_s: 0.0
            },
            "a quiet listening port reads 0"
        );
        assert_eq!(v.ports[OTHER], PortFigures::default());
    }

    #[test]
    fn client_side_close_wait_folds_into_other() {
        let s = [stuck(51234, Role::Client, 120.0)];
        let labels = choose_labels(&[80].into(), &s, 32);
        assert!(!labels.contains(&51234));
        let v = survey(&s, &labels, 60.0);
        assert_eq!(
            v.ports[OTHER],
            PortFigures {
                leaked: 1,
                oldest_s: 120.0
            }
        );
    }

    #[test]
    fn labels_are_bounded_busiest_ports_first() {
        let listening: BTreeSet<u16> = (1000..1100).collect();
        let mut s = vec![
            stuck(1099, Role::Server, 1.0),
            stuck(1099, Role::Server, 1.0),
            stuck(1050, Role::Server, 1.0),
        ];
        s.push(stuck(7, Role::Server, 1.0)); // not listening (tap mode): still a server port
        let labels = choose_labels(&listening, &s, 3);
        // 1099 has two, 7 and 1050 one each (ties by port number); the quiet listeners lose out.
        assert_eq!(labels, BTreeSet::from([7, 1050, 1099]));
        let v = survey(&s, &labels, 0.5);
        let total: u64 = v.ports.values().map(|f| f.leaked).sum();
        assert_eq!(total, 4, "nothing is lost by folding into other");
    }
}
