//! The per-CPU counter array: its index layout and how a [`Step`] turns into counter deltas.
//!
//! The kernel only counts; the daemon sums the slots over CPUs at scrape time (O(CPUs), never
//! O(flows)). Connection-gauge slots hold wrapping deltas (+1 on entering a state, -1 on leaving),
//! read as `i64` after summing.

use crate::{
    flow::{FlowWord, Role, Side},
    packet::SkipReason,
    state::{FastOpen, Handshake, InvalidReason, Opening, Retransmit, Step, TcpState},
};

/// Which program saw the segment. The `hook` label of `tcpstate_segments_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Hook {
    /// XDP on ingress (`--ingress-hook xdp`).
    Xdp = 0,
    /// TC (TCX) on egress: host mode's segments sent by local endpoints.
    TcEgress = 1,
    /// TC (TCX) on ingress, the default ingress hook.
    TcIngress = 2,
}

impl Hook {
    pub const COUNT: usize = 3;
    pub const ALL: [Hook; Self::COUNT] = [Hook::Xdp, Hook::TcEgress, Hook::TcIngress];
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcEgress => "tc_egress",
            Hook::TcIngress => "tc_ingress",
        }
    }
}

/// Direction of an accepted RST relative to the counted endpoint. The `direction` label of
/// `tcpstate_resets_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RstDirection {
    Received = 0,
    Sent = 1,
}

impl RstDirection {
    pub const ALL: [RstDirection; 2] = [RstDirection::Received, RstDirection::Sent];
    pub const fn name(self) -> &'static str {
        match self {
            RstDirection::Received => "received",
            RstDirection::Sent => "sent",
        }
    }
}

/// Whose receive window is zero, seen from a counted endpoint: its own (its application stopped
/// reading) or its peer's (its sends wait on the peer's reader). The `side` label of
/// `tcpstate_zero_window_endpoints` and `tcpstate_zero_window_stalls_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stall {
    Local = 0,
    Remote = 1,
}

impl Stall {
    pub const ALL: [Stall; 2] = [Stall::Local, Stall::Remote];
    pub const fn name(self) -> &'static str {
        match self {
            Stall::Local => "local",
            Stall::Remote => "remote",
        }
    }
    /// The stall of `stalled`'s window as `endpoint` sees it.
    #[inline(always)]
    pub fn seen_by(endpoint: Side, stalled: Side) -> Stall {
        if endpoint as u8 == stalled as u8 {
            Stall::Local
        } else {
            Stall::Remote
        }
    }
}

/// Why a flow could not be tracked. The `reason` label of `tcpstate_flows_untracked_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UntrackedReason {
    /// The flow table is at capacity, or both of the flow's neighbourhoods are full.
    TableFull = 0,
    /// A SYN (or SYN-ACK) found the half-open budget spent: a SYN flood cannot crowd out the rest.
    HalfOpenBudget = 1,
    /// Another CPU held the flow's home slot (its insert lock) through every try: a burst of new
    /// flows on one slot. The flow's next segment tries again.
    InsertFailed = 2,
    /// A segment on a container interface the daemon has not given a scope (yet, or any more):
    /// the moment between attaching and the scope map entry, or a veth being torn down.
    NoScope = 3,
}

impl UntrackedReason {
    pub const COUNT: usize = 4;
    pub const ALL: [UntrackedReason; Self::COUNT] = [
        UntrackedReason::TableFull,
        UntrackedReason::HalfOpenBudget,
        UntrackedReason::InsertFailed,
        UntrackedReason::NoScope,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            UntrackedReason::TableFull => "table_full",
            UntrackedReason::HalfOpenBudget => "half_open_budget",
            UntrackedReason::InsertFailed => "insert_failed",
            UntrackedReason::NoScope => "no_scope",
        }
    }
}

/// Slot offsets. Every range is laid out from the enums above so neither side hard-codes a number.
pub mod idx {
    use super::*;
    pub const STATES: u32 = TcpState::COUNT as u32;
    /// `[role][state]`: connection gauge deltas.
    pub const CONN: u32 = 0;
    /// `[hook]`: TCP segments examined.
    pub const SEGMENTS: u32 = CONN + 2 * STATES;
    /// `[direction][state]`: accepted RSTs by the counted endpoint's state before it.
    pub const RESETS: u32 = SEGMENTS + Hook::COUNT as u32;
    /// `[InvalidReason]`.
    pub const INVALID: u32 = RESETS + 2 * STATES;
    /// `[SkipReason]`: frames the parser could not take as a TCP segment.
    pub const SKIPPED: u32 = INVALID + InvalidReason::COUNT as u32;
    /// `[UntrackedReason]`.
    pub const UNTRACKED: u32 = SKIPPED + SkipReason::COUNT as u32;
    /// `[Handshake - 1]`: established, refused, reset.
    pub const HANDSHAKES: u32 = UNTRACKED + UntrackedReason::COUNT as u32;
    /// `[Opening]`: flows the kernel started tracking, by how.
    pub const OPENED: u32 = HANDSHAKES + 3;
    /// `[role][bucket]`: handshake durations, non-cumulative; the last bucket is +Inf.
    pub const HANDSHAKE_BUCKETS: u32 = OPENED + 3;
    /// Buckets per role, +Inf included.
    pub const HANDSHAKE_BUCKETS_PER_ROLE: u32 = super::HANDSHAKE_BOUNDS_NS.len() as u32 + 1;
    /// `[role]`: sum of handshake durations, nanoseconds.
    pub const HANDSHAKE_SUM_NS: u32 = HANDSHAKE_BUCKETS + 2 * HANDSHAKE_BUCKETS_PER_ROLE;
    /// `[FastOpen - 1]`: accepted, declined. (Appended: slots above keep their numbers.)
    pub const FASTOPEN: u32 = HANDSHAKE_SUM_NS + 2;
    /// SYN-ACKs local listeners sent from SYN cookies, all ports (host mode, TC egress); the
    /// per-port counts are in their own map (`maps::SYN_COOKIES`).
    pub const SYN_COOKIES: u32 = FASTOPEN + 2;
    /// `[Retransmit - 1]`: SYNs sent again to, and SYN-ACKs sent again by, a counted server
    /// endpoint (listener drops, [`retransmitted`]), all ports; the host's per-port counts are
    /// in their own map (`maps::RETRANSMITS`). (Appended: slots above keep their numbers.)
    pub const RETRANSMITS: u32 = SYN_COOKIES + 1;
    /// `[Stall]`: zero-window stalls begun, seen by a counted endpoint: its own (local) or its
    /// peer's (remote). (Appended: slots above keep their numbers.)
    pub const ZERO_WINDOW_STALLS: u32 = RETRANSMITS + 2;
    pub const COUNT: u32 = ZERO_WINDOW_STALLS + 2;

    /// Whether a slot belongs to a scope's own set (per-endpoint figures: connection gauges,
    /// RSTs, handshakes and their durations) or to the one global set that lives in the host
    /// scope's slots (segments, invalid, skipped, untracked, opened: figures of the tracker, not
    /// of an endpoint, which a recycled scope must never take back).
    #[inline(always)]
    pub const fn per_scope(slot: u32) -> bool {
        slot < SEGMENTS
            || (slot >= RESETS && slot < INVALID)
            || (slot >= HANDSHAKES && slot < OPENED)
            || slot >= HANDSHAKE_BUCKETS
    }

    /// The array index of `slot` for a segment whose scope's first slot is `base`.
    #[inline(always)]
    pub const fn in_scope(base: u32, slot: u32) -> u32 {
        if per_scope(slot) {
            base + slot
        } else {
            slot
        }
    }

    #[inline(always)]
    pub const fn conn(role: Role, state: TcpState) -> u32 {
        CONN + role as u32 * STATES + state as u32
    }
    #[inline(always)]
    pub const fn resets(dir: RstDirection, state: TcpState) -> u32 {
        RESETS + dir as u32 * STATES + state as u32
    }
    #[inline(always)]
    pub const fn retransmits(r: Retransmit) -> u32 {
        RETRANSMITS + r as u32 - 1
    }
    #[inline(always)]
    pub const fn opened(o: Opening) -> u32 {
        OPENED
            + match o {
                Opening::Syn => 0,
                Opening::SynAck => 1,
                Opening::Midstream => 2,
            }
    }
}

/// Upper bounds of the handshake-duration buckets (`tcpstate_handshake_duration_seconds`): 50 us
/// (two hosts on one switch) to 10 s (SYN retransmissions); above that, +Inf.
pub const HANDSHAKE_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Index of the bucket a duration falls in (`HANDSHAKE_BOUNDS_NS.len()` for +Inf): the number of
/// bounds below it. A fixed array the compiler unrolls: no loop for the verifier to walk.
#[inline(always)]
pub fn handshake_bucket(ns: u64) -> u32 {
    let mut i = 0u32;
    for b in HANDSHAKE_BOUNDS_NS {
        i += (ns > b) as u32;
    }
    i
}

/// Calls `bump(slot, delta)` for every counter `st` moves. `old` is the word before the segment;
/// for a flow just opened, an all-closed word with the record's `counted` bits.
#[inline(always)]
pub fn for_each_delta(old: FlowWord, st: &Step, sender: Side, mut bump: impl FnMut(u32, u64)) {
    if let Some(why) = st.invalid {
        bump(idx::INVALID + why as u32, 1);
        return;
    }
    // A flow no endpoint of which is counted (traffic the host only forwards to a container) moves
    // no gauge, RST or handshake figure: nothing of it happens on this host.
    if st.rec.word().counted == 0 {
        return;
    }
    // The two sides spelled out rather than looped over: with a constant side every index into
    // the words' arrays is constant. (A loop let LLVM address the stack copy as `fp | side`, a
    // pointer OR the verifier rejects.)
    side_deltas(old, st, sender, Side::A, &mut bump);
    side_deltas(old, st, sender, Side::B, &mut bump);
    match st.handshake {
        Handshake::None => {}
        h => bump(idx::HANDSHAKES + h as u32 - 1, 1),
    }
    match st.fastopen {
        FastOpen::None => {}
        f => bump(idx::FASTOPEN + f as u32 - 1, 1),
    }
    if let Some(r) = retransmitted(st) {
        bump(idx::retransmits(r), 1);
    }
    if st.stalled {
        // The sender's window closed: a local stall for it, a remote one for its peer, for
        // whichever of the two is counted here.
        let new = st.rec.word();
        if new.is_counted(Side::A) {
            bump(
                idx::ZERO_WINDOW_STALLS + Stall::seen_by(Side::A, sender) as u32,
                1,
            );
        }
        if new.is_counted(Side::B) {
            bump(
                idx::ZERO_WINDOW_STALLS + Stall::seen_by(Side::B, sender) as u32,
                1,
            );
        }
    }
}

/// The retransmission [`Step::retransmit`] reports, when the server's endpoint is counted here:
/// host mode counts only local servers (a local client's SYN sent again to a remote listener is
/// that listener's drop, not ours), tap mode every server. The server is the side that did not
/// send the first SYN ([`FlowWord::client`]): the receiver of a SYN, the sender of a SYN-ACK.
/// Its port is the `port` label of the per-port counts.
#[inline(always)]
pub fn retransmitted(st: &Step) -> Option<Retransmit> {
    let w = st.rec.word();
    match st.retransmit {
        Retransmit::None => None,
        r if w.is_counted(w.client().other()) => Some(r),
        _ => None,
    }
}

/// [`for_each_delta`] for one side: its gauge move, its RST, its handshake duration.
#[inline(always)]
fn side_deltas(
    old: FlowWord,
    st: &Step,
    sender: Side,
    side: Side,
    bump: &mut impl FnMut(u32, u64),
) {
    let new = st.rec.word();
    // A midstream pickup confirmed by this step enters the gauges (was not counted, is now).
    let (was, is) = (old.is_counted(side), new.is_counted(side));
    let (os, ns) = (old.state(side), new.state(side));
    let (or, nr) = (old.role(side), new.role(side));
    if was != is || os != ns || or != nr {
        if was && os != TcpState::Closed {
            bump(idx::conn(or, os), 1u64.wrapping_neg());
        }
        if is && ns != TcpState::Closed {
            bump(idx::conn(nr, ns), 1);
        }
    }
    if !is {
        return;
    }
    if st.rst {
        let dir = if side == sender {
            RstDirection::Sent
        } else {
            RstDirection::Received
        };
        bump(idx::resets(dir, os), 1);
    }
    // Handshake duration, as seen on this host: from the SYN to this endpoint leaving the
    // handshake for an open state (the client on the SYN-ACK, the server on the final ACK).
    // Unknown when the SYN was not seen (syn_ns 0: seeded, midstream, SYN-ACK pickup).
    if os.is_handshake() && !ns.is_handshake() && ns != TcpState::Closed && st.rec.syn_ns != 0 {
        let d = st.rec.since_ns[side.index()].saturating_sub(st.rec.syn_ns);
        let bucket = nr as u32 * idx::HANDSHAKE_BUCKETS_PER_ROLE + handshake_bucket(d);
        bump(idx::HANDSHAKE_BUCKETS + bucket, 1);
        bump(idx::HANDSHAKE_SUM_NS + nr as u32, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_endpoint_slots_are_scoped_and_tracker_slots_are_global() {
        use crate::{flow::Role, state::TcpState};
        let base = 7 * idx::COUNT;
        for slot in [
            idx::conn(Role::Server, TcpState::CloseWait),
            idx::resets(RstDirection::Sent, TcpState::Established),
            idx::HANDSHAKES,
            idx::HANDSHAKE_BUCKETS,
            idx::HANDSHAKE_SUM_NS + 1,
        ] {
            assert_eq!(idx::in_scope(base, slot), base + slot, "slot {slot}");
        }
        for slot in [
            idx::SEGMENTS,
            idx::INVALID,
            idx::SKIPPED,
            idx::UNTRACKED,
            idx::opened(Opening::Midstream),
        ] {
            assert_eq!(idx::in_scope(base, slot), slot, "slot {slot}");
        }
        // The host's scope is the plain layout.
        for slot in 0..idx::COUNT {
            assert_eq!(idx::in_scope(0, slot), slot);
        }
    }

    #[test]
    fn durations_fall_in_the_first_bucket_whose_bound_is_not_below_them() {
        assert_eq!(handshake_bucket(0), 0);
        assert_eq!(
            handshake_bucket(50_000),
            0,
            "bounds are inclusive, like Prometheus' le"
        );
        assert_eq!(handshake_bucket(50_001), 1);
        assert_eq!(handshake_bucket(1_000_000_000), 13);
        assert_eq!(handshake_bucket(1_000_000_001), 14);
        assert_eq!(handshake_bucket(10_000_000_000), 16);
        assert_eq!(handshake_bucket(u64::MAX), 17, "+Inf");
    }
}
