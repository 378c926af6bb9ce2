//! `tcpstate flows` and `tcpstate cleanup`: reading (or removing) a daemon's pinned maps.

use std::path::{Path, PathBuf};
use tcpstate_common::flow::monotonic_ns;

use serde_json::json;
use tcpstate_common::{
    flow::{flowflags, known, Side},
    FlowKey, FlowRecord, TcpState,
};

use crate::{
    bpf::tables,
    inspect::scopes::{self, ScopeName},
};

/// What `tcpstate flows` lists, and how.
pub struct Query {
    /// The daemon's pin directory.
    pub pin_dir: PathBuf,
    pub json: bool,
    /// Only flows with an endpoint in this state (its `ss`-style name), on this port, at this
    /// address, or in its state for longer than this.
    pub state: Option<String>,
    pub port: Option<u16>,
    pub address: Option<std::net::IpAddr>,
    pub older_than: Option<std::time::Duration>,
    /// Only flows whose client connects to this address (and port).
    pub destination: Option<Destination>,
    /// Only endpoints in this container or pod.
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// One tracked flow, decoded for people and scripts.
pub(crate) struct FlowView {
    pub key: FlowKey,
    pub rec: FlowRecord,
    /// The namespace its counted endpoints live in (empty names for the host).
    pub scope: ScopeName,
}

impl FlowView {
    pub fn endpoint(&self, side: Side) -> String {
        let ip = FlowKey::words_addr(self.key.addr[side.index()]);
        match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", self.key.port[side.index()]),
            v4 => format!("{v4}:{}", self.key.port[side.index()]),
        }
    }

    pub fn age_s(&self, side: Side, now: u64) -> f64 {
        now.saturating_sub(self.rec.since_ns[side.index()]) as f64 / 1e9
    }

    /// How long the endpoint has advertised a zero window (its application stopped reading),
    /// `None` when it does not. To the second: the stall is stamped in `last_seen` ticks.
    pub fn stalled_s(&self, side: Side, now: u64) -> Option<f64> {
        let begun = u64::from(self.rec.stall_tick) << tcpstate_common::flow::SEEN_TICK_SHIFT;
        self.rec
            .word()
            .zero_window(side)
            .then(|| now.saturating_sub(begun) as f64 / 1e9)
    }

    /// The object `tcpstate flows --json` prints (`tcpstate replay --json` adds fields to it).
    pub fn json(&self, now: u64) -> serde_json::Value {
        let w = self.rec.word();
        let side = |s: Side| {
            json!({
                "endpoint": self.endpoint(s),
                "state": w.state(s).name(),
                "role": w.role(s).name(),
                "local": w.counted & s.bit() != 0,
                "age_seconds": self.age_s(s, now),
                "zero_window_seconds": self.stalled_s(s, now),
                // What the tracker knows of this endpoint's sequence space (null where unknown).
                "seq": {
                    "isn": w.knows(s, known::ISN).then_some(self.rec.seq[s.index()].isn),
                    "syn_or_fin_end": w.knows(s, known::END).then_some(self.rec.seq[s.index()].end),
                    "ack": w.knows(s, known::ACK).then_some(self.rec.seq[s.index()].ack),
                    "window": w.knows(s, known::ACK).then_some(self.rec.seq[s.index()].win),
                },
            })
        };
        json!({
            "a": side(Side::A),
            "b": side(Side::B),
            "midstream": w.has(flowflags::MIDSTREAM),
            "seeded": w.has(flowflags::SEEDED),
            "age_is_lower_bound": w.has(flowflags::SEEDED),
            "reset": w.has(flowflags::RESET),
            "transit": w.has(flowflags::TRANSIT),
            "namespace": self.scope.namespace,
            "pod": self.scope.pod,
            "container": self.scope.container,
            "container_id": self.scope.container_id,
            "syn_cookie": w.has(flowflags::SYN_COOKIE),
            "pending": w.pending != 0,
        })
    }
}

pub fn flows(args: &Query) -> anyhow::Result<()> {
    let pinned = tables::from_pins(&args.pin_dir)?;
    let names = scopes::names(&pinned.info);
    let flows = pinned.flows;
    let now = monotonic_ns();
    let filter = Filter::new(
        args.state.as_deref(),
        args.port,
        args.address,
        args.older_than,
        args.destination,
    )?;
    let mut all = Vec::new();
    flows.for_each(|key, rec| {
        // A scope the daemon has retired: its flows are being removed.
        if let Some(scope) = names.get(&key.scope) {
            all.push(FlowView {
                key,
                rec,
                scope: scope.clone(),
            })
        }
    })?;
    let (container, pod) = (args.container.as_deref(), args.pod.as_deref());
    let mut views: Vec<FlowView> = all
        .into_iter()
        .filter(|v| filter.keeps(v, now) && v.scope.matches(container, pod))
        .collect();
    views.sort_by_key(|v| (v.key.scope, v.key.port, v.key.addr));
    if args.json {
        let all: Vec<_> = views.iter().map(|v| v.json(now)).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    // The container column only when some flow lives in one.
    let in_containers = views.iter().any(|v| v.key.scope != 0);
    if in_containers {
        print!("{:<24} ", "CONTAINER/POD");
    }
    println!(
        "{:<46} {:<12} {:>9}   {:<46} {:<12} {:>9}  FLAGS",
        "ENDPOINT A", "STATE", "AGE", "ENDPOINT B", "STATE", "AGE"
    );
    for v in &views {
        let w = v.rec.word();
        let mark = |s: Side| if w.counted & s.bit() != 0 { "*" } else { "" };
        let mut flags = Vec::new();
        for (bit, name) in [
            (flowflags::MIDSTREAM, "midstream"),
            (flowflags::SEEDED, "seeded"),
            (flowflags::RESET, "reset"),
            (flowflags::TRANSIT, "transit"),
            (flowflags::SYN_COOKIE, "syn_cookie"),
        ] {
            if w.has(bit) {
                flags.push(name);
            }
        }
        let stalls: Vec<String> = [(Side::A, "a"), (Side::B, "b")]
            .into_iter()
            .filter_map(|(s, n)| {
                v.stalled_s(s, now)
                    .map(|t| format!("zero_window:{n}={t:.0}s"))
            })
            .collect();
        let flags: Vec<&str> = flags
            .into_iter()
            .chain(stalls.iter().map(String::as_str))
            .collect();
        if in_containers {
            let name = v.scope.short();
            print!("{:<24} ", if name.is_empty() { "(host)" } else { &name });
        }
        println!(
            "{:<46} {:<12} {:>8.1}s   {:<46} {:<12} {:>8.1}s  {}",
            format!("{}{}", v.endpoint(Side::A), mark(Side::A)),
            w.state(Side::A).name(),
            v.age_s(Side::A, now),
            format!("{}{}", v.endpoint(Side::B), mark(Side::B)),
            w.state(Side::B).name(),
            v.age_s(Side::B, now),
            flags.join(",")
        );
    }
    println!(
        "{} flows (* marks counted endpoints: local in host mode, both in tap mode)",
        views.len()
    );
    Ok(())
}

/// `--destination ADDR[:PORT]`: where a flow's client connects to (the server's end), as
/// `tcpstate_client_ports_in_use` labels it. IPv6 with a port in brackets: `[2001:db8::1]:443`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: std::net::IpAddr,
    pub port: Option<u16>,
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Destination, String> {
        let bad = || format!("{s:?} is not ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT)");
        // A bare address (IPv6 has colons of its own), then [v6] or [v6]:port, then v4:port.
        if let Ok(addr) = s.parse() {
            return Ok(Destination { addr, port: None });
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
            let addr = addr.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(bad)?,
                ),
            };
            return Ok(Destination {
                addr: addr.into(),
                port,
            });
        }
        let (addr, port) = s.rsplit_once(':').ok_or_else(bad)?;
        Ok(Destination {
            addr: std::net::IpAddr::V4(addr.parse().map_err(|_| bad())?),
            port: Some(port.parse().map_err(|_| bad())?),
        })
    }
}

/// The `--state/--port/--address/--older-than/--destination` filters of `tcpstate flows` (and
/// `replay`).
pub(crate) struct Filter {
    state: Option<TcpState>,
    port: Option<u16>,
    address: Option<[u32; 4]>,
    older_than_s: Option<f64>,
    /// The server end's address words and port, if given.
    destination: Option<([u32; 4], Option<u16>)>,
}

impl Filter {
    pub fn new(
        state: Option<&str>,
        port: Option<u16>,
        address: Option<std::net::IpAddr>,
        older_than: Option<std::time::Duration>,
        destination: Option<Destination>,
    ) -> anyhow::Result<Filter> {
        let state = match state {
            Some(s) => Some(
                std::iter::once(TcpState::Closed)
                    .chain(TcpState::OPEN)
                    .find(|t| t.name() == s)
                    .ok_or_else(|| anyhow::anyhow!("unknown state {s:?}: use one of syn_sent, syn_recv, established, fin_wait1, fin_wait2, close_wait, closing, last_ack, time_wait, closed"))?,
            ),
            None => None,
        };
        Ok(Filter {
            state,
            port,
            address: address.map(FlowKey::addr_words),
            older_than_s: older_than.map(|d| d.as_secs_f64()),
            destination: destination.map(|d| (FlowKey::addr_words(d.addr), d.port)),
        })
    }

    /// Whether a flow passes every filter given, its ages counted at `now`.
    pub fn keeps(&self, v: &FlowView, now: u64) -> bool {
        let w = v.rec.word();
        self.state
            .is_none_or(|s| w.state(Side::A) == s || w.state(Side::B) == s)
            && self.port.is_none_or(|p| v.key.port.contains(&p))
            && self.address.is_none_or(|a| v.key.addr.contains(&a))
            && self
                .older_than_s
                .is_none_or(|d| [Side::A, Side::B].iter().any(|&s| v.age_s(s, now) > d))
            && self.destination.is_none_or(|(addr, port)| {
                let server = w.client().other().index();
                v.key.addr[server] == addr && port.is_none_or(|p| v.key.port[server] == p)
            })
    }
}

pub fn cleanup(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        println!("nothing to clean: {} does not exist", dir.display());
        return Ok(());
    }
    crate::bpf::pins::remove(dir)?;
    println!("removed {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_read_as_the_client_ports_labels_write_them() {
        let d = |s: &str| s.parse::<Destination>();
        let v4: std::net::IpAddr = "10.96.0.10".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            d("10.96.0.10:443"),
            Ok(Destination {
                addr: v4,
                port: Some(443)
            })
        );
        assert_eq!(
            d("10.96.0.10"),
            Ok(Destination {
                addr: v4,
                port: None
            })
        );
        assert_eq!(
            d("[2001:db8::1]:443"),
            Ok(Destination {
                addr: v6,
                port: Some(443)
            })
        );
        // A bare IPv6 address has colons of its own: no port.
        for s in ["2001:db8::1", "[2001:db8::1]"] {
            assert_eq!(
                d(s),
                Ok(Destination {
                    addr: v6,
                    port: None
                }),
                "{s}"
            );
        }
        for bad in [
            "",
            "10.96.0.10:",
            "10.96.0.10:70000",
            "[2001:db8::1]443",
            "host:80",
            "[10.0.0.1]:80",
        ] {
            assert!(d(bad).is_err(), "{bad:?} accepted");
        }
    }
}
