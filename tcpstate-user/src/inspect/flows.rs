//! `tcpstate flows` and `tcpstate cleanup`: reading (or removing) a daemon's pinned maps.

use std::{fs, path::Path};
use tcpstate_common::flow::monotonic_ns;

use serde_json::json;
use tcpstate_common::{
    flow::{flowflags, known, Side},
    maps, FlowKey, FlowRecord, TcpState,
};

use crate::{cli::FlowsArgs, kernel::tables};

/// One tracked flow, decoded for people and scripts.
struct FlowView {
    key: FlowKey,
    rec: FlowRecord,
}

impl FlowView {
    fn endpoint(&self, side: Side) -> String {
        let ip = FlowKey::words_addr(self.key.addr[side.index()]);
        match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", self.key.port[side.index()]),
            v4 => format!("{v4}:{}", self.key.port[side.index()]),
        }
    }

    fn age_s(&self, side: Side, now: u64) -> f64 {
        now.saturating_sub(self.rec.since_ns[side.index()]) as f64 / 1e9
    }

    fn json(&self, now: u64) -> serde_json::Value {
        let w = self.rec.word();
        let side = |s: Side| {
            json!({
                "endpoint": self.endpoint(s),
                "state": w.state(s).name(),
                "role": w.role(s).name(),
                "local": w.counted & s.bit() != 0,
                "age_seconds": self.age_s(s, now),
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
            "syn_cookie": w.has(flowflags::SYN_COOKIE),
            "pending": w.pending != 0,
        })
    }
}

pub fn flows(args: &FlowsArgs) -> anyhow::Result<()> {
    let (flows, _) = tables::from_pins(&args.pins.pin_dir)?;
    let now = monotonic_ns();
    let state_filter = match &args.state {
        Some(s) => Some(
            std::iter::once(TcpState::Closed)
                .chain(TcpState::OPEN)
                .find(|t| t.name() == s)
                .ok_or_else(|| anyhow::anyhow!("unknown state {s:?}: use one of syn_sent, syn_recv, established, fin_wait1, fin_wait2, close_wait, closing, last_ack, time_wait, closed"))?,
        ),
        None => None,
    };
    let mut all = Vec::new();
    flows.for_each(|key, rec| all.push(FlowView { key, rec }))?;
    let mut views: Vec<FlowView> = all
        .into_iter()
        .filter(|v| {
            let w = v.rec.word();
            state_filter.is_none_or(|s| w.state(Side::A) == s || w.state(Side::B) == s)
                && args.port.is_none_or(|p| v.key.port.contains(&p))
                && args
                    .address
                    .is_none_or(|a| v.key.addr.contains(&FlowKey::addr_words(a)))
                && args.older_than.is_none_or(|d| {
                    [Side::A, Side::B]
                        .iter()
                        .any(|&s| v.age_s(s, now) > d.0.as_secs_f64())
                })
        })
        .collect();
    views.sort_by_key(|v| (v.key.port, v.key.addr));
    if args.json {
        let all: Vec<_> = views.iter().map(|v| v.json(now)).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
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
            (flowflags::SYN_COOKIE, "syn_cookie"),
        ] {
            if w.has(bit) {
                flags.push(name);
            }
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

pub fn cleanup(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        println!("nothing to clean: {} does not exist", dir.display());
        return Ok(());
    }
    remove_pins(dir)?;
    println!("removed {}", dir.display());
    Ok(())
}

/// Removes tcpstate's pinned maps and their directory (only ours: a stranger's file stops it).
pub fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    for name in [
        maps::FLOWS,
        maps::COUNTERS,
        maps::TABLE,
        maps::USER,
        maps::SETTINGS,
        maps::SYN_COOKIES,
    ] {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", p.display()))?;
        }
    }
    fs::remove_dir(dir)
        .map_err(|e| anyhow::anyhow!("removed tcpstate's maps but not {}: {e}", dir.display()))
}
