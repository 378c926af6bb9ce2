//! When the sweeper drops a flow. The kernel programs never expire anything; this is the one
//! place that decides, as a pure function so it is tested without a kernel.

use tcpstate_common::{flow::Side, FlowRecord, TcpState};

/// Lifetimes the sweeper enforces (the kernel programs never expire anything).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub time_wait: std::time::Duration,
    pub syn_sent: std::time::Duration,
    pub syn_recv: std::time::Duration,
    pub fin_wait2: std::time::Duration,
    pub closing_idle: std::time::Duration,
    pub established_idle: std::time::Duration,
    pub closed_linger: std::time::Duration,
}

#[cfg(test)]
impl Timeouts {
    /// The daemon's defaults (`tcpstate run --help`; a host test holds the flags to them), for
    /// tests: Linux's own timers where it has one.
    pub const DEFAULTS: Timeouts = Timeouts {
        time_wait: std::time::Duration::from_secs(60),
        syn_sent: std::time::Duration::from_secs(130),
        syn_recv: std::time::Duration::from_secs(65),
        fin_wait2: std::time::Duration::from_secs(60),
        closing_idle: std::time::Duration::from_secs(120),
        established_idle: std::time::Duration::from_secs(5 * 86_400),
        closed_linger: std::time::Duration::from_secs(10),
    };
}

/// Why a flow was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// An endpoint was still opening: counts as a handshake timeout.
    Handshake,
    /// TIME_WAIT ran its 2*MSL.
    TimeWait,
    /// Closed on both sides, idle, or given up while closing.
    Other,
}

/// `Some` when the flow is over by its states' rules. State ages count from when the endpoint
/// entered the state (`since_ns`), idle times from the last segment (`last_seen`). CLOSE_WAIT
/// never expires: a socket stuck there is exactly what users need to see.
///
/// Timeouts apply per endpoint: the flow is over when every endpoint is done, or when every
/// watched one is (host mode watches the local endpoint only: a local FIN_WAIT_2 the kernel
/// dropped must not wait for the peer's CLOSE_WAIT, which never ends). Where both are watched
/// (tap mode) and one is done while the other is not, [`ended_side`] says which one ends alone.
///
/// With `kernel_settles` (host mode), a watched FIN_WAIT_2 endpoint is never done by the timer:
/// it may be orphaned (the kernel drops it after tcp_fin_timeout) or only shut down for writing
/// (kept for as long as the peer keeps its end), and only the kernel's socket table can tell
/// ([`crate::background::settle`]).
pub fn decide_with(
    rec: &FlowRecord,
    now_ns: u64,
    t: &Timeouts,
    kernel_settles: bool,
) -> Option<Expired> {
    let w = rec.word();
    // A handshake that outlived its timeout ends the flow, whatever the mirror says of the peer:
    // the SYN-ACK puts the client in ESTABLISHED, but a server still in SYN_RECV past its timeout
    // has had its request dropped by the kernel (and a client still in SYN_SENT has given up).
    for side in [Side::A, Side::B] {
        let age = now_ns.saturating_sub(rec.since_ns[side.index()]);
        let limit = match w.state(side) {
            TcpState::SynSent => t.syn_sent,
            TcpState::SynRecv => t.syn_recv,
            _ => continue,
        };
        if age >= limit.as_nanos() as u64 {
            return Some(Expired::Handshake);
        }
    }
    let idle = now_ns.saturating_sub(rec.last_seen_ns());
    // A midstream pickup that never saw the other direction: a stray segment, not a connection.
    if w.pending != 0 && idle >= t.closing_idle.as_nanos() as u64 {
        return Some(Expired::Other);
    }
    let done = |side: Side| done(rec, side, now_ns, idle, t, kernel_settles);
    let verdict = |sides: &[Side]| -> Option<Expired> {
        let mut why = Expired::Other;
        for &side in sides {
            if !done(side) {
                return None;
            }
            why = match (why, w.state(side)) {
                (_, TcpState::SynSent | TcpState::SynRecv) | (Expired::Handshake, _) => {
                    Expired::Handshake
                }
                (_, TcpState::TimeWait) => Expired::TimeWait,
                (w, _) => w,
            };
        }
        Some(why)
    };
    // Host mode watches one endpoint. Matched without collecting the sides: this runs for every
    // flow of every walk, and a heap allocation per flow was a fifth of a walk's time at 1M flows.
    let only_watched = [Side::A, Side::B]
        .into_iter()
        .find(|s| w.counted & (Side::A.bit() | Side::B.bit()) == s.bit());
    verdict(&[Side::A, Side::B]).or_else(|| {
        // Every watched endpoint is done: the others are the peer's, on another host.
        only_watched.and_then(|s| verdict(&[s]))
    })
}

/// Whether one endpoint's own rule says it is done.
fn done(
    rec: &FlowRecord,
    side: Side,
    now_ns: u64,
    idle: u64,
    t: &Timeouts,
    kernel_settles: bool,
) -> bool {
    let w = rec.word();
    let age = now_ns.saturating_sub(rec.since_ns[side.index()]);
    match w.state(side) {
        TcpState::Closed => age >= t.closed_linger.as_nanos() as u64,
        TcpState::TimeWait => age >= t.time_wait.as_nanos() as u64,
        TcpState::SynSent => age >= t.syn_sent.as_nanos() as u64,
        TcpState::SynRecv => age >= t.syn_recv.as_nanos() as u64,
        TcpState::FinWait2 if kernel_settles && w.counted & side.bit() != 0 => false,
        TcpState::FinWait2 => age >= t.fin_wait2.as_nanos() as u64,
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => {
            idle >= t.closing_idle.as_nanos() as u64
        }
        TcpState::Established => idle >= t.established_idle.as_nanos() as u64,
        TcpState::CloseWait => false,
    }
}

/// Tap mode (both endpoints watched): an endpoint done by its own rule while its peer is not
/// ends alone, and the flow stays for the peer. A server's orphaned FIN_WAIT_2 is gone after
/// tcp_fin_timeout while its client, which never closes, stays in CLOSE_WAIT: the mirror must
/// show the one and not the other.
pub fn ended_side(rec: &FlowRecord, now_ns: u64, t: &Timeouts) -> Option<Side> {
    let w = rec.word();
    if w.counted != Side::A.bit() | Side::B.bit() || w.pending != 0 {
        return None;
    }
    let idle = now_ns.saturating_sub(rec.last_seen_ns());
    let done = |side| done(rec, side, now_ns, idle, t, false);
    [Side::A, Side::B]
        .into_iter()
        .find(|&side| w.state(side) != TcpState::Closed && done(side) && !done(side.other()))
}

/// The first instant at which [`decide`] drops `rec`, if nothing changes it meanwhile (`u64::MAX`:
/// never, a CLOSE_WAIT). `decide` is monotone in time, so a walk in capture time (`tcpstate
/// replay`) asks it only from then on: most flows of a busy capture are not due at a given sweep,
/// and checking them is most of a sweep's cost. `decide` stays the one rule.
pub fn not_before(rec: &FlowRecord, t: &Timeouts) -> u64 {
    let w = rec.word();
    let mut handshake = u64::MAX;
    let mut all_done = 0u64;
    let mut alone = u64::MAX;
    for side in [Side::A, Side::B] {
        let done = done_at(rec, side, t);
        if w.state(side).is_handshake() {
            handshake = handshake.min(done);
        }
        all_done = all_done.max(done);
        // Host mode: the one watched endpoint ends the flow by itself.
        if w.counted == side.bit() {
            alone = done;
        }
    }
    // A pickup still pending goes after the closing timeout without segments.
    let pending = if w.pending != 0 {
        at(rec.last_seen_ns(), t.closing_idle)
    } else {
        u64::MAX
    };
    handshake.min(all_done).min(alone).min(pending)
}

/// The first instant at which the sweeper may change `rec` at all: drop it ([`not_before`]) or,
/// in tap mode, end one endpoint alone ([`ended_side`]). A walk in capture time skips the flow
/// until then.
pub fn due(rec: &FlowRecord, t: &Timeouts) -> u64 {
    let w = rec.word();
    let mut first = not_before(rec, t);
    if w.counted == Side::A.bit() | Side::B.bit() && w.pending == 0 {
        for side in [Side::A, Side::B] {
            // An endpoint already closed has nothing left to end.
            if w.state(side) != TcpState::Closed {
                first = first.min(done_at(rec, side, t));
            }
        }
    }
    first
}

/// When one endpoint is done by its own state's rule, if nothing changes it meanwhile: the
/// instant form of [`done`] without the kernel's settling (`u64::MAX`: never, a CLOSE_WAIT).
fn done_at(rec: &FlowRecord, side: Side, t: &Timeouts) -> u64 {
    let since = rec.since_ns[side.index()];
    match rec.word().state(side) {
        TcpState::Closed => at(since, t.closed_linger),
        TcpState::TimeWait => at(since, t.time_wait),
        TcpState::SynSent => at(since, t.syn_sent),
        TcpState::SynRecv => at(since, t.syn_recv),
        TcpState::FinWait2 => at(since, t.fin_wait2),
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => {
            at(rec.last_seen_ns(), t.closing_idle)
        }
        TcpState::Established => at(rec.last_seen_ns(), t.established_idle),
        TcpState::CloseWait => u64::MAX,
    }
}

fn at(base: u64, d: std::time::Duration) -> u64 {
    base.saturating_add(d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    const NS: u64 = 1_000_000_000;
    use std::time::Duration;

    use tcpstate_common::FlowWord;

    use super::*;

    fn decide(rec: &FlowRecord, now_ns: u64, t: &Timeouts) -> Option<Expired> {
        decide_with(rec, now_ns, t, false)
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            established_idle: Duration::from_secs(3600),
            ..Timeouts::DEFAULTS
        }
    }

    fn rec(a: TcpState, b: TcpState, since_s: u64, last_seen_s: u64) -> FlowRecord {
        let mut w = FlowWord::default();
        w.set_state(Side::A, a);
        w.set_state(Side::B, b);
        let mut r = FlowRecord {
            since_ns: [since_s * NS; 2],
            last_seen: FlowRecord::seen_tick(last_seen_s * NS),
            ..Default::default()
        };
        r.set_word(w);
        r
    }

    #[test]
    fn time_wait_expires_after_two_msl_and_not_before() {
        let r = rec(TcpState::TimeWait, TcpState::Closed, 100, 100);
        assert_eq!(decide(&r, 159 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 160 * NS, &timeouts()), Some(Expired::TimeWait));
    }

    #[test]
    fn close_wait_never_expires_however_idle() {
        let r = rec(TcpState::CloseWait, TcpState::FinWait2, 0, 0);
        assert_eq!(decide(&r, 100 * 86_400 * NS, &timeouts()), None);
    }

    #[test]
    fn half_open_flows_time_out_as_handshakes() {
        let r = rec(TcpState::SynSent, TcpState::Closed, 0, 0);
        assert_eq!(decide(&r, 129 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 130 * NS, &timeouts()), Some(Expired::Handshake));
        // The server's SYN-ACK made the mirror's client ESTABLISHED; the final ACK never came.
        let r = rec(TcpState::Established, TcpState::SynRecv, 0, 0);
        assert_eq!(decide(&r, 64 * NS, &timeouts()), None);
        let why = decide(&r, 65 * NS, &timeouts());
        assert_eq!(
            why,
            Some(Expired::Handshake),
            "the peer's mirror state does not keep it"
        );
    }

    #[test]
    fn established_expires_on_idleness_not_age() {
        let r = rec(TcpState::Established, TcpState::Established, 0, 5000);
        assert_eq!(decide(&r, 8000 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 8600 * NS, &timeouts()), Some(Expired::Other));
    }

    proptest::proptest! {
        /// `not_before` is exactly where `decide` starts dropping a flow, whichever endpoints are
        /// watched and whether it is a pending pickup.
        #[test]
        fn not_before_is_the_first_instant_decide_drops(
            a in 0u8..10, b in 0u8..10, counted in 0u8..4, pending in 0u8..2,
            since_a in 0u64..400, since_b in 0u64..400, seen in 0u64..400, now in 0u64..1000,
        ) {
            let mut r = rec(TcpState::from_u8_lossy(a), TcpState::from_u8_lossy(b), 0, seen);
            r.since_ns = [since_a * NS, since_b * NS];
            let mut w = r.word();
            w.counted = counted;
            w.pending = pending;
            r.set_word(w);
            let t = timeouts();
            let first = not_before(&r, &t);
            let now = now * NS;
            proptest::prop_assert_eq!(decide(&r, now, &t).is_some(), now >= first, "first {}", first);
        }
    }

    /// `rec` with the sides in `counted` watched.
    fn watched(mut r: FlowRecord, counted: u8) -> FlowRecord {
        let mut w = r.word();
        w.counted = counted;
        r.set_word(w);
        r
    }

    #[test]
    fn a_local_fin_wait2_past_its_timeout_ends_the_flow_whatever_the_peer() {
        // Host mode, server side A closed on a client that never closes. Regression: the flow
        // waited for both endpoints, and the peer's CLOSE_WAIT never ends: FIN_WAIT_2 piled up.
        let r = watched(rec(TcpState::FinWait2, TcpState::CloseWait, 0, 0), 0b01);
        assert_eq!(decide(&r, 59 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 60 * NS, &timeouts()), Some(Expired::Other));
        // Settled by the kernel instead (host mode with sock_diag): never by the timer.
        assert_eq!(decide_with(&r, 6000 * NS, &timeouts(), true), None);
        // The local side is the CLOSE_WAIT one: it never expires.
        let r = watched(rec(TcpState::FinWait2, TcpState::CloseWait, 0, 0), 0b10);
        assert_eq!(decide(&r, 6000 * NS, &timeouts()), None);
    }

    #[test]
    fn in_tap_mode_an_endpoint_ends_alone_and_the_flow_stays_for_its_peer() {
        let r = watched(rec(TcpState::FinWait2, TcpState::CloseWait, 0, 0), 0b11);
        assert_eq!(
            decide(&r, 61 * NS, &timeouts()),
            None,
            "the CLOSE_WAIT stays"
        );
        assert_eq!(ended_side(&r, 59 * NS, &timeouts()), None);
        assert_eq!(ended_side(&r, 61 * NS, &timeouts()), Some(Side::A));
        // Once ended (Closed), nothing more to end; the CLOSE_WAIT keeps the flow.
        let r = watched(rec(TcpState::Closed, TcpState::CloseWait, 0, 0), 0b11);
        assert_eq!(ended_side(&r, 600 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 600 * NS, &timeouts()), None);
        // Host mode never ends a side alone: the whole flow goes.
        let r = watched(rec(TcpState::FinWait2, TcpState::CloseWait, 0, 0), 0b01);
        assert_eq!(ended_side(&r, 61 * NS, &timeouts()), None);
    }

    #[test]
    fn a_pending_pickup_goes_after_the_closing_idle_time() {
        let mut r = watched(
            rec(TcpState::Established, TcpState::Established, 0, 0),
            0b01,
        );
        let mut w = r.word();
        w.pending = 0x81;
        r.set_word(w);
        assert_eq!(decide(&r, 119 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 121 * NS, &timeouts()), Some(Expired::Other));
    }

    #[test]
    fn reset_flows_linger_briefly() {
        let r = rec(TcpState::Closed, TcpState::Closed, 50, 50);
        assert_eq!(decide(&r, 59 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 60 * NS, &timeouts()), Some(Expired::Other));
    }
}
