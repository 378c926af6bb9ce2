//! `tcpstate replay FILE`: the kernel programs' parser and state machine over a capture file, as
//! tap mode sees it, offline and without privileges. Capture time is the clock: it stamps the
//! records, drives the sweeper's timeouts, and the ages reported are as of the last frame (or
//! `--at`).

pub mod capture;
pub mod engine;
pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod progress;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    ops::ControlFlow,
};

use serde_json::json;
use tcpstate_common::{
    counters::{idx, UntrackedReason},
    flow::{flowflags, Side},
    maps::Config,
    packet::{parse, Parsed, SkipReason},
    state::{Handshake, InvalidReason},
    TcpState,
};

use crate::{
    background::{destinations, expiry::Timeouts, ports, report::SweepReport},
    exporter::{
        layout::Layout,
        metrics::{self, Scrape},
    },
    inspect::flows::{Destination, Filter, FlowView},
};

use self::{
    capture::{for_each_frame, CaptureError},
    engine::{Entry, Table},
    frame::CapturedFrame,
    progress::Progress,
};

/// Why a replay could not run: a bad capture or bad options. Exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("{0}")]
    Usage(String),
}

/// The instant the result describes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum At {
    LastFrame,
    /// Unix nanoseconds: frames after it are not replayed.
    Absolute(u64),
    /// Nanoseconds after the last frame.
    After(u64),
}

/// Validated replay options: the daemon's table limits and timeouts.
pub struct Options {
    pub cfg: Config,
    pub timeouts: Timeouts,
    pub sweep_interval: std::time::Duration,
}

/// What `tcpstate replay` does: the capture, the options the daemon would run with, the
/// instant the result describes, which flows it shows and in which form.
pub struct Request {
    /// The capture file; `-` for standard input.
    pub file: std::path::PathBuf,
    pub options: Options,
    /// The instant the result describes.
    pub at: At,
    pub json: bool,
    pub metrics: bool,
    /// Only flows with an endpoint in this state, on this port, at this address, or in its
    /// state for longer than this.
    pub state: Option<String>,
    pub port: Option<u16>,
    pub address: Option<std::net::IpAddr>,
    pub older_than: Option<std::time::Duration>,
    pub destination: Option<Destination>,
    /// For `--metrics`: the leak threshold and how many ports get their own label.
    pub close_wait_leak_after: std::time::Duration,
    pub port_labels: usize,
}

/// Replays a capture into `table`: every frame, or those up to `stop_after` (Unix ns; the rest
/// of the file is not read), telling `progress` of each frame and of the bytes read.
pub fn replay(
    what: &str,
    input: impl std::io::Read + Send,
    table: &mut Table,
    stop_after: Option<u64>,
    progress: &mut Progress,
) -> Result<(), CaptureError> {
    let input = progress.reader(input);
    for_each_frame(what, input, |f| {
        progress.frame();
        if stop_after.is_some_and(|at| f.ts_ns > at) {
            return ControlFlow::Break(());
        }
        table.advance(f.ts_ns);
        let parsed = match CapturedFrame::new(f.link, f.data, f.orig_len) {
            Some(frame) => parse(&frame),
            // Cut inside its link-layer header, or not IP: nothing the kernel would track.
            None => Parsed::NotTcp,
        };
        table.frame(parsed);
        ControlFlow::Continue(())
    })?;
    Ok(())
}

pub fn run(args: &Request) -> anyhow::Result<()> {
    let opts = &args.options;
    let at = args.at;
    let filter = Filter::new(
        args.state.as_deref(),
        args.port,
        args.address,
        args.older_than,
        args.destination,
    )
    .map_err(|e| ReplayError::Usage(e.to_string()))?;
    let what = args.file.display().to_string();
    let mut table = Table::new(opts.cfg, opts.timeouts, opts.sweep_interval);
    let stop_after = match at {
        At::Absolute(ns) => Some(ns),
        _ => None,
    };
    if what == "-" {
        let mut progress = Progress::stderr(None);
        let r = replay(
            "standard input",
            std::io::stdin(),
            &mut table,
            stop_after,
            &mut progress,
        );
        progress.finish();
        r?;
    } else {
        let file = File::open(&args.file).map_err(|source| CaptureError::Io {
            what: what.clone(),
            source,
        })?;
        // The size, for the percent done: none for a pipe or a device.
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let mut progress = Progress::stderr(size);
        let r = replay(&what, file, &mut table, stop_after, &mut progress);
        progress.finish();
        r?;
    }
    match at {
        At::LastFrame => {}
        At::Absolute(ns) => table.advance(ns),
        At::After(d) => table.advance(table.now_ns.saturating_add(d)),
    }
    let now = table.now_ns;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.metrics {
        out.write_all(&exposition(
            &table,
            args.close_wait_leak_after,
            args.port_labels,
        )?)?;
        out.flush()?;
        return Ok(());
    }
    let mut shown: Vec<(FlowView, &Entry)> = table
        .flows
        .iter()
        .map(|(k, e)| {
            (
                FlowView {
                    key: *k,
                    rec: e.rec,
                    scope: Default::default(),
                },
                e,
            )
        })
        .filter(|(v, _)| filter.keeps(v, now))
        .collect();
    shown.sort_by_key(|(v, _)| (v.key.port, v.key.addr));
    if args.json {
        let all: Vec<_> = shown.iter().map(|(v, e)| flow_json(v, e, now)).collect();
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
    } else {
        text(&mut out, &table, &shown, now)?;
    }
    out.flush()?;
    Ok(())
}

/// Unix nanoseconds as seconds, for JSON.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The handshake as the replay saw it.
fn handshake(e: &Entry) -> &'static str {
    let w = e.rec.word();
    match e.handshake {
        Handshake::Established => "established",
        Handshake::Refused => "refused",
        Handshake::Reset => "reset",
        Handshake::None if w.state(Side::A).is_handshake() || w.state(Side::B).is_handshake() => {
            "in_progress"
        }
        Handshake::None => "not_seen",
    }
}

/// `tcpstate flows --json`'s object with the replay's fields added (none renamed).
pub fn flow_json(v: &FlowView, e: &Entry, now: u64) -> serde_json::Value {
    let mut o = v.json(now);
    let extra = json!({
        "handshake": handshake(e),
        "resets": e.resets,
        "history": e.history.as_str(),
        "connections": e.connections,
        "segments": e.segments,
        "first_seen": secs(e.first_ns),
        "last_seen": secs(e.last_ns),
    });
    if let (Some(o), serde_json::Value::Object(extra)) = (o.as_object_mut(), extra) {
        o.extend(extra);
    }
    o
}

fn text(
    out: &mut impl Write,
    table: &Table,
    shown: &[(FlowView, &Entry)],
    now: u64,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<46} {:<11} {:<46} {:<11} {:<11} {:>6} {:>9}  HISTORY",
        "CLIENT", "STATE", "SERVER", "STATE", "HANDSHAKE", "RESETS", "AGE"
    )?;
    let mut by_state: BTreeMap<TcpState, u64> = BTreeMap::new();
    for (v, e) in shown {
        let w = v.rec.word();
        let (c, s) = (w.client(), w.client().other());
        let mut history = e.history.as_str().to_string();
        if w.has(flowflags::ROLE_GUESSED) {
            // Zeek's mark for a direction the analyzer had to guess.
            history.insert(0, '^');
        }
        if e.connections > 1 {
            history.push_str(&format!(" (key reused, {} connections)", e.connections));
        }
        writeln!(
            out,
            "{:<46} {:<11} {:<46} {:<11} {:<11} {:>6} {:>8.1}s  {}",
            v.endpoint(c),
            w.state(c).name(),
            v.endpoint(s),
            w.state(s).name(),
            handshake(e),
            e.resets,
            v.age_s(c, now).min(v.age_s(s, now)),
            history
        )?;
        for side in [Side::A, Side::B] {
            *by_state.entry(w.state(side)).or_default() += 1;
        }
    }
    writeln!(out)?;
    let states: Vec<String> = by_state
        .iter()
        .map(|(s, n)| format!("{} {n}", s.name()))
        .collect();
    writeln!(
        out,
        "{} flows shown, endpoints by state: {}",
        shown.len(),
        if states.is_empty() {
            "none".to_string()
        } else {
            states.join(", ")
        }
    )?;
    let t = &table.slots;
    let sum = |first: u32, n: usize| {
        (first..first + n as u32)
            .map(|i| t[i as usize])
            .sum::<u64>()
    };
    let x = &table.extra;
    writeln!(
        out,
        "{} frames, {} TCP segments, {} skipped (malformed or fragments), {} invalid, {} untracked; {} flows held at the end (peak {}), {} expired (time_wait {}, handshake timeout {}, other {})",
        x.frames,
        t[(idx::SEGMENTS + engine::HOOK as u32) as usize],
        sum(idx::SKIPPED, SkipReason::COUNT),
        sum(idx::INVALID, InvalidReason::COUNT),
        sum(idx::UNTRACKED, UntrackedReason::COUNT),
        table.flows.len(),
        x.peak_flows,
        x.expired_time_wait + x.expired_handshake + x.expired_other,
        x.expired_time_wait,
        x.expired_handshake,
        x.expired_other,
    )?;
    Ok(())
}

/// Each label's duration histograms, as a daemon's rows would hold them: a labelled port's own,
/// everything else (clients, other servers) under `other`.
fn fill_durations(survey: &mut ports::Survey, d: &engine::Durations) {
    use tcpstate_common::{durations::Measure, Role};
    for m in Measure::ALL {
        for (port, row) in &d.0[m as usize] {
            let label = port
                .map(|p| p.to_string())
                .filter(|l| survey.ports.contains_key(l))
                .unwrap_or_else(|| ports::OTHER.to_string());
            let fig = survey.ports.entry(label).or_default();
            match m {
                Measure::CloseWait => fig.close_wait_durations.add(row),
                Measure::ClientLifetime => fig.lifetimes[Role::Client as usize].add(row),
                Measure::ServerLifetime => fig.lifetimes[Role::Server as usize].add(row),
            }
        }
    }
}

/// The exposition a tap-mode daemon would have served at the end of the capture.
pub fn exposition(
    table: &Table,
    leak_after: std::time::Duration,
    port_labels: usize,
) -> anyhow::Result<Vec<u8>> {
    let now = table.now_ns;
    let seen: Vec<ports::PortEndpoint> = table
        .flows
        .iter()
        .flat_map(|(k, e)| ports::endpoints(k, &e.rec, now))
        .collect();
    // A capture has no listeners to ask: the server ports whose handshakes were sent again or
    // whose connections closed stand in for them, so they get a label of their own as a
    // daemon's listening ports do.
    let candidates = table
        .retransmits
        .keys()
        .copied()
        .chain(
            table
                .durations
                .0
                .iter()
                .flat_map(|m| m.keys().flatten().copied()),
        )
        .collect();
    let labels = ports::choose_labels(&candidates, &seen, port_labels);
    let mut survey = ports::survey(&seen, &labels, leak_after.as_secs_f64(), &BTreeMap::new());
    for (label, fig) in survey.ports.iter_mut() {
        if let Some(n) = label
            .parse::<u16>()
            .ok()
            .and_then(|p| table.retransmits.get(&p))
        {
            fig.syn_retransmits = n.syn;
            fig.synack_retransmits = n.synack;
        }
    }
    fill_durations(&mut survey, &table.durations);
    let mut clients = destinations::Tally::default();
    for (k, e) in &table.flows {
        clients.add(k, &e.rec);
    }
    let counts = clients
        .by_scope()
        .remove(&tcpstate_common::scope::HOST)
        .unwrap_or_default();
    let chosen = destinations::choose_labels(&Default::default(), &counts, port_labels);
    let sweep = SweepReport {
        duration: std::time::Duration::ZERO,
        cpu: std::time::Duration::ZERO,
        visited: table.flows.len() as u64,
        sweeps: table.extra.sweeps,
        ports: BTreeMap::from([(tcpstate_common::scope::HOST, survey)]),
        // The capturing host's port range is unknown: no tcpstate_client_port_range_size.
        clients: BTreeMap::from([(
            tcpstate_common::scope::HOST,
            destinations::ClientPorts {
                in_use: destinations::in_use(&counts, &chosen),
                range_size: None,
            },
        )]),
        // A replay settles nothing: no settling rounds.
        ..SweepReport::default()
    };
    let totals = table.totals();
    let scopes = Default::default();
    Ok(metrics::render(&Scrape {
        totals: &totals,
        capacity: table.capacity(),
        // One table for every flow: the replay has no IPv6 table of its own to report.
        capacity6: 0,
        half_open_budget: table.half_open_budget(),
        sweep: &sweep,
        attached: &[],
        scopes: &scopes,
        layout: &Layout::of(&scopes),
    })?)
}
