//! One segment through a flow table, as decisions: which segments the table must write, how a
//! flow it does not hold may start, and which counters each outcome moves. The kernel programs
//! (`tcpstate-ebpf/src/track.rs`) and the offline replay (`tcpstate replay`) both follow these
//! steps; only the table itself differs between them: the slot table of [`crate::table`], claimed
//! and updated by compare-and-swap, or a process's own hash map.

use crate::{
    counters::{for_each_delta, idx, UntrackedReason},
    flow::{FlowRecord, FlowWord, Side},
    maps::Config,
    state::{
        classify_opening, cookie_synack_into, open_into, quiet, step_into, InvalidReason, Opening,
        Retransmit, Step,
    },
    tcp::Segment,
};

/// Where the segments come from, which decides whose endpoints the connection gauges count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Host mode, ingress: the receiver is the local endpoint.
    HostIngress,
    /// Host mode, egress: the sender is the local endpoint.
    HostEgress,
    /// Tap mode (a mirror port, `lo`, a capture): both directions seen, both endpoints counted.
    Tap,
}

impl View {
    /// [`FlowWord::counted`] bits for a flow whose first segment `sender` sent.
    #[inline(always)]
    pub const fn counted(self, sender: Side) -> u8 {
        match self {
            View::HostIngress => sender.other().bit(),
            View::HostEgress => sender.bit(),
            View::Tap => Side::A.bit() | Side::B.bit(),
        }
    }
}

/// Runs the state machine on a segment of a flow the table holds. `false` when there is nothing
/// to write or count: the quiet path (established data within the coarse second, decided on the
/// record itself) and steps that change nothing. A retransmitted SYN or SYN-ACK changes nothing
/// but is counted ([`Step::retransmit`]): `true`, with nothing (or only the last-seen stamp) to
/// write. On `true`, `st` holds what to write back (see
/// [`crate::commit::commit`]) and [`for_each_delta`] of the old word gives the counters.
/// `cookie`: the segment is a SYN-ACK the local stack sent from a SYN cookie (host mode's TC
/// egress knows; a capture never does).
#[inline(always)]
pub fn update_into(
    st: &mut Step,
    rec: &FlowRecord,
    sender: Side,
    seg: &Segment,
    now: u64,
    cookie: bool,
) -> bool {
    if quiet(rec, sender, seg, now) {
        return false;
    }
    // One inlined copy of the state machine: the cookie case is tried first, on its own (the
    // verifier walks each inlined copy).
    if !(cookie && cookie_synack_into(st, rec, sender, seg, now)) {
        step_into(st, rec, sender, seg, now);
    }
    st.write != 0 || st.invalid.is_some() || st.retransmit != Retransmit::None
}

/// Why a segment of an untracked flow does not start one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotOpened {
    /// Its flags cannot start a flow (FIN, RST), or the state machine rejected it.
    Invalid(InvalidReason),
    /// The admission rule refused it (table full, half-open budget spent).
    Untracked(UntrackedReason),
    /// The table's books could not be read; nothing is counted.
    NoBooks,
}

impl NotOpened {
    /// The counter slot this outcome bumps by one, if any.
    #[inline(always)]
    pub const fn slot(self) -> Option<u32> {
        match self {
            NotOpened::Invalid(why) => Some(idx::INVALID + why as u32),
            NotOpened::Untracked(why) => Some(idx::UNTRACKED + why as u32),
            NotOpened::NoBooks => None,
        }
    }
}

/// Decides whether a segment of a flow the table does not hold starts one, and builds its record
/// in `st.rec`: from the flags alone first, then the admission rule against `books` (table fill,
/// half-open flows), then the state machine. On `Ok` the caller inserts `st.rec` and, once the
/// insert succeeded, counts it with [`opened_deltas`].
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "the segment's facts, passed apart for the verifier"
)]
pub fn open_new(
    st: &mut Step,
    cfg: &Config,
    books: impl FnOnce() -> Option<(u64, u64)>,
    view: View,
    sender: Side,
    seg: &Segment,
    now: u64,
    ports: [u16; 2],
) -> Result<Opening, NotOpened> {
    let opening = classify_opening(seg).map_err(NotOpened::Invalid)?;
    let (fill, half_open) = books().ok_or(NotOpened::NoBooks)?;
    cfg.admit(opening, fill, half_open)
        .map_err(NotOpened::Untracked)?;
    // Unreachable after classify_opening, but counted rather than assumed.
    open_into(st, sender, seg, view.counted(sender), now, ports).map_err(NotOpened::Invalid)?;
    if let Some(why) = st.invalid {
        return Err(NotOpened::Invalid(why));
    }
    Ok(opening)
}

/// The counters a flow [`open_new`] built moves once it is in the table: how it opened, and its
/// endpoints entering their first states (from an all-closed word with the same counted bits).
#[inline(always)]
pub fn opened_deltas(opening: Opening, st: &Step, sender: Side, mut bump: impl FnMut(u32, u64)) {
    bump(idx::opened(opening), 1);
    let before = FlowWord {
        counted: st.rec.word().counted,
        ..FlowWord::default()
    };
    for_each_delta(before, st, sender, bump);
}

/// The word a flow takes once the host is seen only to forward it (container mode: a segment of
/// it leaves a host-mode interface without a socket after entering through another interface):
/// counted nowhere and marked transit. `bump` receives the gauge moves that take its counted
/// endpoints out, as [`for_each_delta`] would have moved them in. A flow whose first segment the
/// host received cannot be told from a local one until then: a runtime may hold a listening socket
/// on a port it forwards to a container (podman's conmon does).
#[inline(always)]
pub fn retract(old: FlowWord, mut bump: impl FnMut(u32, u64)) -> FlowWord {
    // Both sides spelled out: a constant side keeps the verifier's indices constant.
    retract_side(old, Side::A, &mut bump);
    retract_side(old, Side::B, &mut bump);
    let mut w = old;
    w.counted = 0;
    w.flags |= crate::flow::flowflags::TRANSIT;
    w
}

#[inline(always)]
fn retract_side(old: FlowWord, side: Side, bump: &mut impl FnMut(u32, u64)) {
    let state = old.state(side);
    if old.is_counted(side) && state != crate::state::TcpState::Closed {
        bump(idx::conn(old.role(side), state), 1u64.wrapping_neg());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow::Role,
        state::TcpState,
        tcp::{flags::*, WSCALE_NONE},
    };
    use std::vec::Vec;

    const CFG: Config = Config {
        capacity: 10,
        half_open_budget: 2,
        log_events: 0,
        scopes: 1,
        transit_check: 0,
        slots4: 0,
        slots6: 0,
        seed: [0; 5],
    };

    fn seg(flags: u8, seq: u32, ack: u32) -> Segment {
        Segment {
            seq,
            ack,
            len: 0,
            win: 1000,
            flags,
            wscale: WSCALE_NONE,
        }
    }

    fn deltas(opening: Opening, st: &Step, sender: Side) -> Vec<(u32, u64)> {
        let mut v = Vec::new();
        opened_deltas(opening, st, sender, |i, d| v.push((i, d)));
        v
    }

    #[test]
    fn a_retracted_flow_leaves_the_gauges_it_entered() {
        // A SYN received for what looked like a local listener, its server endpoint counted in
        // SYN_RECV; then its SYN-ACK leaves forwarded: not the host's after all.
        let mut w = FlowWord {
            counted: Side::B.bit(),
            ..FlowWord::default()
        };
        w.set_client(Side::A);
        w.set_state(Side::A, TcpState::SynSent);
        w.set_state(Side::B, TcpState::SynRecv);
        let mut left = Vec::new();
        let r = retract(w, |i, d| left.push((i, d)));
        assert_eq!(r.counted, 0);
        assert!(r.has(crate::flow::flowflags::TRANSIT));
        assert_eq!(
            left,
            [(
                idx::conn(Role::Server, TcpState::SynRecv),
                1u64.wrapping_neg()
            )],
            "exactly the counted endpoint leaves its gauge"
        );
        // Retracting again moves nothing; a pending pickup was never in the gauges.
        let mut again = Vec::new();
        retract(r, |i, d| again.push((i, d)));
        assert!(again.is_empty());
        let pending = FlowWord { pending: 1, ..w };
        retract(pending, |i, d| again.push((i, d)));
        assert!(again.is_empty());
    }

    #[test]
    fn each_view_counts_its_endpoints() {
        assert_eq!(View::HostIngress.counted(Side::A), Side::B.bit());
        assert_eq!(View::HostEgress.counted(Side::A), Side::A.bit());
        assert_eq!(View::Tap.counted(Side::B), 0b11);
    }

    #[test]
    fn a_syn_opens_a_flow_and_counts_the_client_in_syn_sent() {
        let mut st = Step::EMPTY;
        let syn = seg(SYN, 100, 0);
        let o = open_new(
            &mut st,
            &CFG,
            || Some((0, 0)),
            View::Tap,
            Side::A,
            &syn,
            5,
            [1, 2],
        );
        assert_eq!(o, Ok(Opening::Syn));
        assert_eq!(st.rec.word().state(Side::A), TcpState::SynSent);
        assert_eq!(
            deltas(Opening::Syn, &st, Side::A),
            [
                (idx::opened(Opening::Syn), 1),
                (idx::conn(Role::Client, TcpState::SynSent), 1)
            ]
        );
    }

    #[test]
    fn openings_the_rules_refuse_name_their_counter() {
        let mut st = Step::EMPTY;
        let mut open = |s: Segment, books: (u64, u64)| {
            open_new(
                &mut st,
                &CFG,
                || Some(books),
                View::Tap,
                Side::A,
                &s,
                5,
                [1, 2],
            )
        };
        let fin = open(seg(FIN | ACK, 1, 1), (0, 0));
        assert_eq!(fin, Err(NotOpened::Invalid(InvalidReason::NoFlow)));
        assert_eq!(
            fin.unwrap_err().slot(),
            Some(idx::INVALID + InvalidReason::NoFlow as u32)
        );
        let full = open(seg(ACK, 1, 1), (10, 0));
        assert_eq!(full, Err(NotOpened::Untracked(UntrackedReason::TableFull)));
        let flood = open(seg(SYN, 1, 0), (3, 2));
        assert_eq!(
            flood.unwrap_err().slot(),
            Some(idx::UNTRACKED + UntrackedReason::HalfOpenBudget as u32)
        );
        // Midstream pickup needs no half-open budget.
        assert_eq!(open(seg(ACK, 1, 1), (3, 2)), Ok(Opening::Midstream));
        let mut st = Step::EMPTY;
        let none = open_new(
            &mut st,
            &CFG,
            || None,
            View::Tap,
            Side::A,
            &seg(SYN, 1, 0),
            5,
            [1, 2],
        );
        assert_eq!(none, Err(NotOpened::NoBooks));
        assert_eq!(NotOpened::NoBooks.slot(), None);
    }

    /// The record a flow opened by side A's `first` segment (tap mode, at 5 ns) starts with.
    fn opened_by(first: &Segment) -> FlowRecord {
        let mut st = Step::EMPTY;
        open_new(
            &mut st,
            &CFG,
            || Some((0, 0)),
            View::Tap,
            Side::A,
            first,
            5,
            [1, 2],
        )
        .expect("the segment opens a flow");
        st.rec
    }

    #[test]
    fn quiet_segments_need_no_write_and_transitions_do() {
        let ack = seg(ACK, 1, 1);
        let rec = opened_by(&ack);
        let mut st = Step::EMPTY;
        // The same data segment again within the coarse second: nothing to do.
        assert!(!update_into(&mut st, &rec, Side::A, &ack, 6, false));
        // A FIN moves both endpoints.
        assert!(update_into(
            &mut st,
            &rec,
            Side::A,
            &seg(FIN | ACK, 1, 1),
            6,
            false
        ));
        assert_eq!(st.rec.word().state(Side::A), TcpState::FinWait1);
    }

    #[test]
    fn a_retransmitted_syn_is_reported_with_nothing_to_write() {
        let syn = seg(SYN, 100, 0);
        let rec = opened_by(&syn);
        let mut st = Step::EMPTY;
        // The same SYN again within the coarse second: no write, but an event to count.
        assert!(update_into(&mut st, &rec, Side::A, &syn, 6, false));
        assert_eq!(st.write, 0);
        assert_eq!(st.retransmit, Retransmit::Syn);
        let mut v = Vec::new();
        for_each_delta(rec.word(), &st, Side::A, |i, d| v.push((i, d)));
        assert_eq!(v, [(idx::retransmits(Retransmit::Syn), 1)]);
    }
}
