//! When the sweeper drops a flow. The kernel programs never expire anything; this is the one
//! place that decides, as a pure function so it is tested without a kernel.

use tcpstate_common::{flow::Side, FlowRecord, TcpState};

use crate::config::Timeouts;

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

/// `Some` when every endpoint of `rec` is done by its state's rule. State ages count from when the
/// endpoint entered the state (`since_ns`), idle times from the last segment (`last_seen`).
/// CLOSE_WAIT never expires: a socket stuck there is exactly what users need to see.
pub fn decide(rec: &FlowRecord, now_ns: u64, t: &Timeouts) -> Option<Expired> {
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
    let mut why = Expired::Other;
    for side in [Side::A, Side::B] {
        let age = now_ns.saturating_sub(rec.since_ns[side.index()]);
        let state = w.state(side);
        let done = match state {
            TcpState::Closed => age >= t.closed_linger.as_nanos() as u64,
            TcpState::TimeWait => age >= t.time_wait.as_nanos() as u64,
            TcpState::SynSent => age >= t.syn_sent.as_nanos() as u64,
            TcpState::SynRecv => age >= t.syn_recv.as_nanos() as u64,
            TcpState::FinWait2 => age >= t.fin_wait2.as_nanos() as u64,
            TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => {
                idle >= t.closing_idle.as_nanos() as u64
            }
            TcpState::Established => idle >= t.established_idle.as_nanos() as u64,
            TcpState::CloseWait => false,
        };
        if !done {
            return None;
        }
        why = match (why, state) {
            (_, TcpState::SynSent | TcpState::SynRecv) | (Expired::Handshake, _) => {
                Expired::Handshake
            }
            (_, TcpState::TimeWait) => Expired::TimeWait,
            (w, _) => w,
        };
    }
    Some(why)
}

/// The first instant at which [`decide`] drops `rec`, if nothing changes it meanwhile (`u64::MAX`:
/// never, a CLOSE_WAIT). `decide` is monotone in time, so a walk in capture time (`tcpstate
/// replay`) asks it only from then on: most flows of a busy capture are not due at a given sweep,
/// and checking them is most of a sweep's cost. `decide` stays the one rule.
pub fn not_before(rec: &FlowRecord, t: &Timeouts) -> u64 {
    let w = rec.word();
    let at = |base: u64, d: std::time::Duration| base.saturating_add(d.as_nanos() as u64);
    let mut handshake = u64::MAX;
    let mut all_done = 0u64;
    for side in [Side::A, Side::B] {
        let since = rec.since_ns[side.index()];
        let done = match w.state(side) {
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
        };
        if w.state(side).is_handshake() {
            handshake = handshake.min(done);
        }
        all_done = all_done.max(done);
    }
    handshake.min(all_done)
}

#[cfg(test)]
mod tests {
    const NS: u64 = 1_000_000_000;
    use std::time::Duration;

    use tcpstate_common::FlowWord;

    use super::*;

    fn timeouts() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            time_wait: s(60),
            syn_sent: s(130),
            syn_recv: s(65),
            fin_wait2: s(60),
            closing_idle: s(120),
            established_idle: s(3600),
            closed_linger: s(10),
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
        /// `not_before` is exactly where `decide` starts dropping a flow.
        #[test]
        fn not_before_is_the_first_instant_decide_drops(
            a in 0u8..10, b in 0u8..10,
            since_a in 0u64..400, since_b in 0u64..400, seen in 0u64..400, now in 0u64..1000,
        ) {
            let mut r = rec(TcpState::from_u8_lossy(a), TcpState::from_u8_lossy(b), 0, seen);
            r.since_ns = [since_a * NS, since_b * NS];
            let t = timeouts();
            let first = not_before(&r, &t);
            let now = now * NS;
            proptest::prop_assert_eq!(decide(&r, now, &t).is_some(), now >= first, "first {}", first);
        }
    }

    #[test]
    fn reset_flows_linger_briefly() {
        let r = rec(TcpState::Closed, TcpState::Closed, 50, 50);
        assert_eq!(decide(&r, 59 * NS, &timeouts()), None);
        assert_eq!(decide(&r, 60 * NS, &timeouts()), Some(Expired::Other));
    }
}
