//! What the benchmarks share: the report's figures and files, and flow records built by the real
//! state machine.
#![allow(
    dead_code,
    reason = "each benchmark uses a different part of this module"
)]

use std::{fs, path::PathBuf};

use tcpstate_common::{
    state::{open, step},
    tcp::{flags::*, Segment, WSCALE_NONE},
    FlowKey, FlowRecord,
};

/// How a figure is judged against its target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// `value - baseline <= target` (a cost added to the baseline).
    DeltaAtMost,
    /// `value / baseline >= target` (a rate kept with the tracker).
    RatioAtLeast,
    /// `value / baseline <= target` (a cost that must not grow).
    RatioAtMost,
    /// `value <= target`; the baseline is shown for context.
    ValueAtMost,
}

/// One line of the report: a value measured in the same run as its baseline.
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub baseline: f64,
    pub value: f64,
    pub goal: Goal,
    pub target: Option<f64>,
}

impl Figure {
    /// A per-packet cost against its pass-only baseline.
    pub fn ns(name: &str, baseline: f64, value: f64, target: Option<f64>) -> Figure {
        Figure {
            name: name.into(),
            unit: "ns/packet",
            baseline,
            value,
            goal: Goal::DeltaAtMost,
            target,
        }
    }

    pub fn delta(&self) -> f64 {
        self.value - self.baseline
    }

    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            f64::NAN
        } else {
            self.value / self.baseline
        }
    }

    /// The number the target applies to.
    fn judged(&self) -> f64 {
        match self.goal {
            Goal::DeltaAtMost => self.delta(),
            Goal::RatioAtLeast | Goal::RatioAtMost => self.ratio(),
            Goal::ValueAtMost => self.value,
        }
    }

    pub fn pass(&self) -> Option<bool> {
        let t = self.target?;
        let v = self.judged();
        Some(match self.goal {
            Goal::RatioAtLeast => v >= t,
            _ => v <= t,
        })
    }

    fn target_text(&self) -> String {
        let Some(t) = self.target else {
            return "-".into();
        };
        match self.goal {
            Goal::DeltaAtMost => format!("delta <= +{t}"),
            Goal::RatioAtLeast => format!("ratio >= {t}"),
            Goal::RatioAtMost => format!("ratio <= {t}"),
            Goal::ValueAtMost => format!("value <= {t}"),
        }
    }

    fn json(&self) -> String {
        let num = |v: f64| {
            if v.is_finite() {
                format!("{v:.3}")
            } else {
                "null".into()
            }
        };
        let compared = match self.goal {
            Goal::DeltaAtMost => format!("\"delta\": {}", num(self.delta())),
            _ => format!("\"ratio\": {}", num(self.ratio())),
        };
        format!(
            "  {{\"name\": {:?}, \"unit\": {:?}, \"baseline\": {}, \"value\": {}, {compared}, \"target\": {}, \"goal\": {:?}, \"pass\": {}}}",
            self.name,
            self.unit,
            num(self.baseline),
            num(self.value),
            self.target.map_or("null".into(), num),
            self.target_text(),
            self.pass().map_or("null".into(), |p| p.to_string())
        )
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
pub fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Prints the figures and writes them to `target/bench/<part>.json`; `cargo xtask bench` joins the
/// parts into `report.json`.
pub fn report(part: &str, figures: &[Figure]) {
    println!(
        "{:<62} {:>11} {:>11} {:>10}  {:<16} result",
        "figure", "baseline", "value", "compared", "target"
    );
    for f in figures {
        let compared = match f.goal {
            Goal::DeltaAtMost => format!("{:+.1}", f.delta()),
            _ => format!("x{:.3}", f.ratio()),
        };
        let result = match f.pass() {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "(no target)",
        };
        println!(
            "{:<62} {:>11.3} {:>11.3} {:>10}  {:<16} {result} ({})",
            f.name,
            f.baseline,
            f.value,
            compared,
            f.target_text(),
            f.unit
        );
    }
    let json: Vec<String> = figures.iter().map(Figure::json).collect();
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench"));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{part}.json"));
    fs::write(&path, format!("[\n{}\n]\n", json.join(",\n"))).unwrap();
    println!("wrote {}", path.display());
}

pub const CLIENT_ISN: u32 = 1_000;
pub const SERVER_ISN: u32 = 9_000_000;

/// A segment without payload or options, as the fixtures' endpoints send them.
fn seg(flags: u8, seq: u32, ack: u32) -> Segment {
    Segment {
        seq,
        ack,
        len: 0,
        win: 65_000,
        flags,
        wscale: WSCALE_NONE,
    }
}

/// The record of an established connection, built by the real state machine from a handshake
/// seen by host-mode XDP on the server (the server is the counted side) at `now_ns`.
pub fn established(
    client: [u32; 4],
    cport: u16,
    server: [u32; 4],
    sport: u16,
    now_ns: u64,
) -> (FlowKey, FlowRecord) {
    let (key, c) = FlowKey::canonical(client, cport, server, sport);
    let s = c.other();
    let (_, st) =
        open(c, &seg(SYN, CLIENT_ISN, 0), s.bit(), now_ns, key.port).expect("a SYN opens");
    let st = step(
        &st.rec,
        s,
        &seg(SYN | ACK, SERVER_ISN, CLIENT_ISN + 1),
        now_ns,
    );
    let st = step(
        &st.rec,
        c,
        &seg(ACK, CLIENT_ISN + 1, SERVER_ISN + 1),
        now_ns,
    );
    (key, st.rec)
}

/// The same connection after the client closed first: the server in CLOSE_WAIT.
pub fn close_wait(
    client: [u32; 4],
    cport: u16,
    server: [u32; 4],
    sport: u16,
    now_ns: u64,
) -> (FlowKey, FlowRecord) {
    let (key, rec) = established(client, cport, server, sport, now_ns);
    let c = FlowKey::canonical(client, cport, server, sport).1;
    let fin = seg(FIN | ACK, CLIENT_ISN + 1, SERVER_ISN + 1);
    (key, step(&rec, c, &fin, now_ns).rec)
}

pub use tcpstate_common::flow::monotonic_ns;
