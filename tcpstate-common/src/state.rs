//! The TCP state machine of an observer: both endpoints of a connection, advanced by every segment
//! seen in either direction (RFC 9293 section 3.3.2, with the observer's disciplines borrowed from
//! netfilter's TCP tracking: segments classified RST > SYN > SYN-ACK > FIN/ACK, windows checked,
//! retransmissions idempotent).
//!
//! [`step`] is a pure, total function of (record, sender side, segment, now). It returns the new
//! record, which parts of it changed, and what happened; the caller writes the changed parts back
//! ([`crate::commit`]) and bumps counters ([`crate::counters`]). The kernel programs, the host tests
//! and any offline replay run exactly this code.

use crate::{
    flow::{flowflags, known, EndpointSeq, FlowRecord, FlowWord, Side},
    tcp::{
        check_flags, flags::*, seq_diff, seq_ge, seq_in, BadFlags, Segment, WSCALE_MAX, WSCALE_NONE,
    },
};

pub use crate::tcp::TcpState;

/// Why a well-formed TCP segment changed no state. The `reason` label of
/// `tcpstate_invalid_segments_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InvalidReason {
    SynFin = 0,
    SynRst = 1,
    NoFlags = 2,
    BadFlags = 3,
    RstOutOfWindow = 4,
    FinOutOfWindow = 5,
    /// A SYN-ACK whose acknowledgement number is not the client's ISN + 1.
    BadSynAck = 6,
    /// A SYN or SYN-ACK on a connection that is already synchronized.
    UnexpectedSyn = 7,
    /// A non-SYN segment on a flow whose endpoints are both closed (late or after an RST).
    ClosedFlow = 8,
    /// A FIN or RST for a flow that is not tracked (midstream pickup starts only from plain ACKs).
    NoFlow = 9,
}

impl InvalidReason {
    pub const COUNT: usize = 10;
    pub const ALL: [InvalidReason; Self::COUNT] = [
        InvalidReason::SynFin,
        InvalidReason::SynRst,
        InvalidReason::NoFlags,
        InvalidReason::BadFlags,
        InvalidReason::RstOutOfWindow,
        InvalidReason::FinOutOfWindow,
        InvalidReason::BadSynAck,
        InvalidReason::UnexpectedSyn,
        InvalidReason::ClosedFlow,
        InvalidReason::NoFlow,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            InvalidReason::SynFin => "syn_fin",
            InvalidReason::SynRst => "syn_rst",
            InvalidReason::NoFlags => "no_flags",
            InvalidReason::BadFlags => "bad_flags",
            InvalidReason::RstOutOfWindow => "rst_out_of_window",
            InvalidReason::FinOutOfWindow => "fin_out_of_window",
            InvalidReason::BadSynAck => "bad_synack",
            InvalidReason::UnexpectedSyn => "unexpected_syn",
            InvalidReason::ClosedFlow => "closed_flow",
            InvalidReason::NoFlow => "no_flow",
        }
    }
}

impl From<BadFlags> for InvalidReason {
    #[inline(always)]
    fn from(b: BadFlags) -> Self {
        match b {
            BadFlags::SynFin => InvalidReason::SynFin,
            BadFlags::SynRst => InvalidReason::SynRst,
            BadFlags::NoFlags => InvalidReason::NoFlags,
            BadFlags::Other => InvalidReason::BadFlags,
        }
    }
}

/// Outcome of an opening handshake. The `result` label of `tcpstate_handshakes_total`
/// (`timeout` is decided by the daemon's sweeper, the rest by [`step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Handshake {
    None = 0,
    Established = 1,
    /// An RST answered the SYN: nothing listens on the port.
    Refused = 2,
    /// An RST aborted the handshake after the SYN was answered.
    Reset = 3,
}

/// Which parts of the record [`step`] changed, so the caller writes only those.
pub mod write {
    pub const WORD: u8 = 0x01;
    pub const SEQ_A: u8 = 0x02;
    pub const SEQ_B: u8 = 0x04;
    pub const SINCE_A: u8 = 0x08;
    pub const SINCE_B: u8 = 0x10;
    pub const SYN_NS: u8 = 0x20;
    pub const LAST_SEEN: u8 = 0x40;
    /// `stall_tick`.
    pub const STALL: u8 = 0x80;

    #[inline(always)]
    pub const fn seq(side: crate::flow::Side) -> u8 {
        SEQ_A << side as u8
    }
    #[inline(always)]
    pub const fn since(side: crate::flow::Side) -> u8 {
        SINCE_A << side as u8
    }
}

/// What [`step`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The record after the segment. Equal to the input where `write` has no bit.
    pub rec: FlowRecord,
    /// [`write`] bits.
    pub write: u8,
    /// Set when the segment was rejected; the record is then unchanged but for `last_seen`.
    pub invalid: Option<InvalidReason>,
    /// An RST was accepted (both endpoints are now closed).
    pub rst: bool,
    pub handshake: Handshake,
    /// The flow left the half-open phase and gives back its half-open budget slot.
    pub half_open_released: bool,
    /// What a SYN-ACK answered to a SYN that carried data (TCP Fast Open, RFC 7413).
    pub fastopen: FastOpen,
    /// The segment was the client's SYN or the server's SYN-ACK sent again. Reported even though
    /// a retransmission changes nothing in the record (it may come with no write at all).
    pub retransmit: Retransmit,
    /// The sender began advertising a zero window: its receive buffer is full, its application
    /// is not reading (`tcpstate_zero_window_stalls_total`).
    pub stalled: bool,
}

/// A handshake segment sent again: what a listener that drops what it receives makes its peers
/// and itself do (RFC 9293 section 3.8.1, RFC 6298 section 2.1: the SYN's and the SYN-ACK's
/// retransmission timers, 1 s at first). The kernel counts such drops host-wide only
/// (TcpExtListenOverflows, ListenDrops); counted per server port here:
/// `tcpstate_syn_retransmits_total`, `tcpstate_synack_retransmits_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Retransmit {
    None = 0,
    /// The client's SYN again (same ISN), the server having sent no SYN-ACK since: the SYN was
    /// lost on its way or dropped by the listener (SYN queue or accept queue full,
    /// net/ipv4/tcp_input.c tcp_conn_request).
    Syn = 1,
    /// The server's SYN-ACK again (same ISN): the SYN-ACK or the final ACK was lost, or the
    /// listener dropped the final ACK because its accept queue was full (tcp_check_req's
    /// listen_overflow, net/ipv4/tcp_minisocks.c: with tcp_abort_on_overflow off the request
    /// socket stays, and its timer resends the SYN-ACK, reqsk_timer_handler), or the client
    /// resent its SYN and the server answered it again (tcp_check_req, inet_rtx_syn_ack).
    SynAck = 2,
}

/// The server's answer to a SYN carrying data (TCP Fast Open, RFC 7413 section 4.2), decided by
/// the SYN-ACK's acknowledgement number. The `result` label of `tcpstate_fastopen_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FastOpen {
    None = 0,
    /// The SYN-ACK acknowledges the SYN's data: it was delivered before the handshake completed.
    Accepted = 1,
    /// The SYN-ACK acknowledges the SYN only (no or an invalid cookie, or the server has Fast Open
    /// off): the client sends the data again after the handshake.
    Declined = 2,
}

impl FastOpen {
    pub const ALL: [FastOpen; 2] = [FastOpen::Accepted, FastOpen::Declined];
    pub const fn name(self) -> &'static str {
        match self {
            FastOpen::None => "none",
            FastOpen::Accepted => "accepted",
            FastOpen::Declined => "declined",
        }
    }
}

/// Largest window an observer assumes when it cannot know one (midstream pickup): 1 GiB, the RFC 7323
/// maximum (65535 << 14).
const WIN_UNKNOWN: u32 = 1 << 30;

impl Step {
    /// Whether the stamps this step writes need the precise clock: the SYN's, and a side's that
    /// leaves the handshake (a handshake duration is the difference of the two, in microseconds).
    /// Every other stamp feeds ages, timeouts and the closing durations ([`crate::durations`]),
    /// for which the coarse clock the step already stamped with (the kernel's tick: 4 ms at
    /// HZ=250) is enough: the precise one costs about 45 ns a call in a VM (measured: a FIN or
    /// RST took that much longer when their stamps were precise).
    #[inline(always)]
    pub fn needs_precise_clock(&self, old: crate::flow::FlowWord) -> bool {
        use crate::flow::Side;
        // Both sides spelled out: constant indexes for the verifier (see for_each_delta).
        self.write & write::SYN_NS != 0
            || (self.write & write::since(Side::A) != 0 && old.state(Side::A).is_handshake())
            || (self.write & write::since(Side::B) != 0 && old.state(Side::B).is_handshake())
    }

    /// A step that has changed nothing yet.
    pub const EMPTY: Step = Step {
        rec: FlowRecord {
            word: 0,
            seq: [EndpointSeq {
                isn: 0,
                end: 0,
                ack: 0,
                win: 0,
            }; 2],
            since_ns: [0; 2],
            syn_ns: 0,
            last_seen: 0,
            stall_tick: 0,
        },
        write: 0,
        invalid: None,
        rst: false,
        handshake: Handshake::None,
        half_open_released: false,
        fastopen: FastOpen::None,
        retransmit: Retransmit::None,
        stalled: false,
    };

    /// Starts a step from `rec`, in place (the kernel keeps its `Step` in a per-CPU scratch slot,
    /// not on its 512-byte stack).
    #[inline(always)]
    fn reset(&mut self, rec: &FlowRecord, now_ns: u64) {
        self.rec = *rec;
        // Volatile, one store each: plain stores of these adjacent bytes are merged into a call
        // of the BPF object's byte-at-a-time memset (see `crate::words`).
        // SAFETY: stores of valid values into this step's own fields.
        unsafe {
            use core::ptr::write_volatile;
            write_volatile(&mut self.write, 0);
            write_volatile(&mut self.invalid, None);
            write_volatile(&mut self.rst, false);
            write_volatile(&mut self.handshake, Handshake::None);
            write_volatile(&mut self.half_open_released, false);
            write_volatile(&mut self.fastopen, FastOpen::None);
            write_volatile(&mut self.retransmit, Retransmit::None);
            write_volatile(&mut self.stalled, false);
        }
        let tick = FlowRecord::seen_tick(now_ns);
        if tick != rec.last_seen {
            self.rec.last_seen = tick;
            self.write |= write::LAST_SEEN;
        }
    }

    /// Marks the segment rejected. Nothing of the record changes but the last-seen stamp: every
    /// `on_*` function rejects before it modifies anything.
    #[inline(always)]
    fn reject(&mut self, why: InvalidReason) {
        self.invalid = Some(why);
        self.write &= write::LAST_SEEN;
    }
}

/// The window a receiver accepts, `[start, start + len)`, or `None` when it has sent nothing we could
/// learn it from. The stored ack lags the true one by less than half the window (see
/// [`EndpointSeq::ack`]), so the true window `[rcv_nxt, rcv_nxt + win)` lies inside
/// `[ack, ack + 1.5 * win)`; the extra 1 keeps a zero window able to accept an exact-match RST.
#[inline(always)]
fn receive_window(w: &FlowWord, side: Side, seq: &EndpointSeq) -> Option<(u32, u32)> {
    if !w.knows(side, known::ACK) {
        return None;
    }
    let win = if seq.win > WIN_UNKNOWN {
        WIN_UNKNOWN
    } else {
        seq.win
    };
    Some((seq.ack, win + win / 2 + 1))
}

/// The sender's advertised window in bytes. RFC 7323: the window of a SYN or SYN-ACK is never
/// scaled; after the handshake both sides' shifts are in the record (0 when either omitted it).
#[inline(always)]
fn scaled_window(w: &FlowWord, side: Side, seg: &Segment) -> u32 {
    let shift = w.wscale[side.index()];
    if seg.has(SYN) || shift > WSCALE_MAX {
        seg.win as u32
    } else {
        (seg.win as u32) << shift
    }
}

/// Records what a non-SYN segment tells about its sender's receive side. Writes only when the ack
/// moved more than half a window since the stored one or the window grew: an established bulk flow
/// costs one write per half window of data, not one per segment.
#[inline(always)]
fn learn_receive_side(st: &mut Step, w: &mut FlowWord, s: Side, seg: &Segment) {
    if !seg.has(ACK) {
        return;
    }
    if let Some(win) = receive_hint_stale(w, s, &st.rec.seq[s.index()], seg) {
        let cur = &mut st.rec.seq[s.index()];
        cur.ack = seg.ack;
        cur.win = win;
        w.learn(s, known::ACK);
        st.write |= write::seq(s);
    }
}

/// The scaled window to store when the sender's ack/window hint must be refreshed (unknown, more
/// than half a window behind, or the window grew), `None` when the stored hint still holds.
#[inline(always)]
fn receive_hint_stale(w: &FlowWord, s: Side, cur: &EndpointSeq, seg: &Segment) -> Option<u32> {
    let win = scaled_window(w, s, seg);
    let stale = !w.knows(s, known::ACK)
        || seq_diff(seg.ack, cur.ack) > (cur.win / 2) as i32
        || win > cur.win;
    stale.then_some(win)
}

/// Whether [`step`] would change nothing and reject nothing: an ACK or data segment (valid flags,
/// no SYN, RST or FIN) on a flow ESTABLISHED on both sides, whose sender's ack/window hint still
/// holds, within the coarse second of the last-seen stamp. The kernel asks this of the map value
/// itself, so the segment that arrives millions of times a second costs no copy of the record.
/// Reads the state word once; the other fields are facts a racing CPU can only move forward.
#[inline(always)]
pub fn quiet(rec: &FlowRecord, s: Side, seg: &Segment, now_ns: u64) -> bool {
    let w = rec.word();
    check_flags(seg.flags).is_ok()
        && seg.flags & (SYN | RST | FIN) == 0
        && w.pending == 0
        && w.state(s) == TcpState::Established
        && w.state(s.other()) == TcpState::Established
        && FlowRecord::seen_tick(now_ns) == rec.last_seen
        && advertises_zero_window(seg) == w.zero_window(s)
        && receive_hint_stale(&w, s, &rec.seq[s.index()], seg).is_none()
}

/// Advances a flow by one segment sent by side `s`. Pure and total.
#[inline(always)]
pub fn step(rec: &FlowRecord, s: Side, seg: &Segment, now_ns: u64) -> Step {
    let mut st = Step::EMPTY;
    step_into(&mut st, rec, s, seg, now_ns);
    st
}

/// [`step`] writing its result into `st`.
#[inline(always)]
pub fn step_into(st: &mut Step, rec: &FlowRecord, s: Side, seg: &Segment, now_ns: u64) {
    st.reset(rec, now_ns);
    step_in_place(st, s, seg, now_ns);
}

/// [`step_into`] for a SYN-ACK the sender's stack sent from a SYN cookie (RFC 4987 section 3.6):
/// Linux sends one when the listener's SYN queue is full, with no socket attached, and keeps no
/// request socket for it. The sender is therefore not SYN-RECEIVED: the mirror leaves its state
/// alone and records the cookie (its ISN, the client's receive side), so the ACK that returns the
/// cookie (ack = cookie ISN + 1) completes the handshake for both. A segment that is not such a
/// SYN-ACK answering a SYN is stepped as usual.
#[inline(always)]
pub fn step_cookie_into(st: &mut Step, rec: &FlowRecord, s: Side, seg: &Segment, now_ns: u64) {
    if !cookie_synack_into(st, rec, s, seg, now_ns) {
        step_into(st, rec, s, seg, now_ns);
    }
}

/// The SYN cookie half of [`step_cookie_into`]: steps `st` and returns true when `seg` is a
/// SYN-ACK answering the flow's SYN; returns false, `st` to be discarded, otherwise. The kernel
/// calls this and then [`step_into`] only when it returns false, so the verifier walks the state
/// machine once, not once per path.
#[inline(always)]
pub fn cookie_synack_into(
    st: &mut Step,
    rec: &FlowRecord,
    s: Side,
    seg: &Segment,
    now_ns: u64,
) -> bool {
    let old = rec.word();
    let r = s.other();
    let answers_syn = check_flags(seg.flags).is_ok()
        && seg.flags & (SYN | ACK | RST | FIN) == SYN | ACK
        && old.state(s) == TcpState::Closed
        && old.state(r) == TcpState::SynSent
        && acks_syn(&old, r, &rec.seq[r.index()], seg.ack);
    if !answers_syn {
        return false;
    }
    st.reset(rec, now_ns);
    on_cookie_syn_ack(st, old, s, seg);
    finish(st, old, s, now_ns);
    true
}

/// The cookie SYN-ACK's facts, without a transition (see [`step_cookie_into`]).
#[inline(never)]
fn on_cookie_syn_ack(st: &mut Step, old: FlowWord, s: Side, seg: &Segment) {
    let r = s.other();
    // The same cookie again (the client resent its SYN within the cookie's minute): nothing new
    // but a SYN-ACK sent again.
    if old.has(flowflags::SYN_COOKIE)
        && old.knows(s, known::ISN)
        && st.rec.seq[s.index()].isn == seg.seq
    {
        st.retransmit = Retransmit::SynAck;
        return;
    }
    let mut w = old;
    // The same facts `on_syn_ack` learns, written out again on purpose: shared through a helper
    // taking the word by reference, LLVM addressed its stack copy as `fp | side`, a pointer OR
    // the verifier rejects (tried; every TC program failed to load).
    st.rec.seq[s.index()] = EndpointSeq {
        isn: seg.seq,
        end: syn_end(seg),
        ack: seg.ack,
        win: seg.win as u32,
    };
    w.forget_side(s);
    w.learn(s, known::ISN | known::END | known::ACK);
    st.rec.seq[r.index()].ack = seg.seq.wrapping_add(1);
    w.learn(r, known::ACK);
    // Cookies carry the window scale in the timestamp option; RFC 7323 section 1.3 applies as
    // for any SYN-ACK.
    if seg.wscale > WSCALE_MAX || w.wscale[r.index()] > WSCALE_MAX {
        w.wscale = [0, 0];
    } else {
        w.wscale[s.index()] = seg.wscale;
    }
    w.flags |= flowflags::SYN_COOKIE;
    st.rec.set_word(w);
    st.write |= write::SEQ_A | write::SEQ_B;
}

#[inline(always)]
fn step_in_place(st: &mut Step, s: Side, seg: &Segment, now_ns: u64) {
    if let Err(bad) = check_flags(seg.flags) {
        return st.reject(bad.into());
    }
    let old = st.rec.word();
    let r = s.other();
    let (s0, r0) = (old.state(s), old.state(r));
    if seg.flags & (SYN | RST | FIN) == 0
        && s0 == TcpState::Established
        && r0 == TcpState::Established
    {
        // The segment that arrives millions of times a second: data or an ACK on an established
        // connection. No transition is possible; at most the sender's ack/window hint moves.
        // (Separate and inline so the kernel's hot path makes no function call.)
        let mut w = old;
        learn_receive_side(st, &mut w, s, seg);
        seen_sending(&mut w, s, seg);
        zero_window(st, &mut w, s, seg, now_ns);
        if w != old {
            st.rec.set_word(w);
            st.write |= write::WORD;
        }
        return;
    }
    if seg.has(RST) {
        on_rst(st, old, s, seg)
    } else if seg.has(SYN) && seg.has(ACK) {
        on_syn_ack(st, old, s, seg)
    } else if seg.has(SYN) {
        on_syn(st, old, s, seg, now_ns)
    } else if s0 == TcpState::Closed && r0 == TcpState::Closed {
        st.reject(InvalidReason::ClosedFlow)
    } else {
        on_ack_fin(st, old, s, seg, now_ns)
    }
    if st.invalid.is_none() {
        let mut w = st.rec.word();
        seen_sending(&mut w, s, seg);
        zero_window(st, &mut w, s, seg, now_ns);
        st.rec.set_word(w);
    }
    finish(st, old, s, now_ns)
}

/// Whether the segment advertises a zero receive window: an ACK (the window field means nothing
/// without one, RFC 9293 section 3.10.7.4) that is no SYN (never scaled, and no buffer is full
/// yet) or RST, whose raw window is 0 (0 under any scale).
#[inline(always)]
pub fn advertises_zero_window(seg: &Segment) -> bool {
    seg.flags & (ACK | SYN | RST) == ACK && seg.win == 0
}

/// States in which an endpoint still receives data, so a zero window stalls its peer.
#[inline(always)]
const fn receives(s: TcpState) -> bool {
    matches!(
        s,
        TcpState::Established | TcpState::FinWait1 | TcpState::FinWait2
    )
}

/// Follows zero-window stalls (RFC 9293 section 3.8.6.1): the sender's from its advertisement,
/// the peer's ended when the peer can no longer receive. Changes the word only when a stall
/// begins or ends, so a stalled flow's zero-window probes and their ACKs stay quiet.
#[inline(always)]
fn zero_window(st: &mut Step, w: &mut FlowWord, s: Side, seg: &Segment, now_ns: u64) {
    let r = s.other();
    let zero = receives(w.state(s)) && advertises_zero_window(seg);
    let shift = |side: Side| known::ZERO_WINDOW << (side as u8 * known::B_SHIFT);
    if zero && !w.zero_window(s) {
        if !w.zero_window(r) {
            let tick = FlowRecord::seen_tick(now_ns);
            st.rec.stall_tick = if tick == 0 { 1 } else { tick };
            st.write |= write::STALL;
        }
        w.known |= shift(s);
        st.stalled = true;
    } else if !zero && w.zero_window(s) {
        w.known &= !shift(s);
    }
    if w.zero_window(r) && !receives(w.state(r)) {
        w.known &= !shift(r);
    }
}

/// A pending midstream pickup ([`FlowWord::pending`]) has now seen `s` send; once both sides
/// have, it is a connection and earns its count. An RST does not count: it is what a host answers
/// a stray segment of a connection it no longer has.
#[inline(always)]
fn seen_sending(w: &mut FlowWord, s: Side, seg: &Segment) {
    if w.pending != 0 && !seg.has(RST) {
        w.pending |= s.bit();
        let both = Side::A.bit() | Side::B.bit();
        if w.pending & both == both {
            w.pending = 0;
        }
    }
}

/// Bookkeeping common to every accepted transition: state-entry stamps, handshake outcome, the
/// half-open budget.
#[inline(always)]
fn finish(st: &mut Step, old: FlowWord, s: Side, now_ns: u64) {
    if st.invalid.is_some() {
        return;
    }
    let mut w = st.rec.word();
    for side in [Side::A, Side::B] {
        if w.state[side.index()] != old.state[side.index()] {
            st.rec.since_ns[side.index()] = now_ns;
            st.write |= write::since(side);
        }
    }
    let r = s.other();
    let was_opening = old.state(s).is_handshake() || old.state(r).is_handshake();
    let is_opening = w.state(s).is_handshake() || w.state(r).is_handshake();
    if was_opening && !is_opening {
        st.handshake = if !st.rst {
            Handshake::Established
        } else if old.state(r) == TcpState::SynSent && old.state(s) == TcpState::Closed {
            Handshake::Refused
        } else {
            Handshake::Reset
        };
    }
    if w.has(flowflags::HALF_OPEN) && !is_opening {
        w.flags &= !flowflags::HALF_OPEN;
        st.half_open_released = true;
    }
    if w != old {
        st.rec.set_word(w);
        st.write |= write::WORD;
    }
}

/// RFC 9293 section 3.10.7.x, as an observer: in SYN-SENT an RST is acceptable if it acknowledges the
/// SYN; otherwise its sequence number must fall in the receiver's window. RFC 5961 has the receiver
/// demand an exact match and send a challenge ACK otherwise; an observer accepts the window (the
/// kernel will accept the RST that follows the challenge anyway) and counts the rest as invalid.
#[inline(never)]
fn on_rst(st: &mut Step, old: FlowWord, s: Side, seg: &Segment) {
    let r = s.other();
    let (s0, r0) = (old.state(s), old.state(r));
    if s0 == TcpState::Closed && r0 == TcpState::Closed {
        return st.reject(InvalidReason::ClosedFlow);
    }
    let rs = &st.rec.seq[r.index()];
    let acceptable = if r0 == TcpState::SynSent {
        // RFC 9293 section 3.10.7.3: SND.UNA < SEG.ACK =< SND.NXT, the same range as the SYN-ACK
        // ([`acks_syn`]). With data on the SYN (TCP Fast Open) SND.NXT is ISN + 1 + len, and
        // Linux (tcp_rcv_synsent_state_process) takes an RST acking ISN + 1 as well as one
        // acking the data. (Was ack == end alone: a client refused by an RST that acknowledged
        // only its SYN stayed SYN_SENT in the mirror.)
        seg.has(ACK) && acks_syn(&old, r, rs, seg.ack)
    } else if let Some((start, len)) = receive_window(&old, r, rs) {
        seq_in(seg.seq, start, len)
    } else {
        // The receiver has sent nothing we could learn its window from: nothing to check against.
        true
    };
    if !acceptable {
        return st.reject(InvalidReason::RstOutOfWindow);
    }
    let mut w = old;
    w.set_state(s, TcpState::Closed);
    w.set_state(r, TcpState::Closed);
    w.flags |= flowflags::RESET;
    st.rec.set_word(w);
    st.rst = true;
}

/// A SYN without ACK: a new connection, its retransmission, or the second half of a simultaneous open.
#[inline(never)]
fn on_syn(st: &mut Step, old: FlowWord, s: Side, seg: &Segment, now_ns: u64) {
    let r = s.other();
    let (s0, r0) = (old.state(s), old.state(r));
    let ss = st.rec.seq[s.index()];
    // Retransmitted SYN: the same ISN from the client of a connection not yet over. Also after the
    // mirror saw the SYN-ACK: it may have been lost beyond the observer, and the client resends.
    if old.knows(s, known::ISN)
        && seg.seq == ss.isn
        && old.client() as u8 == s as u8
        && !s0.is_finished()
    {
        // A listener drop only while the server has answered nothing: no SYN-ACK (its ISN
        // unknown, a cookie's included) between the two SYNs. A SYN the server did answer was
        // not dropped by it; Linux answers it with its SYN-ACK again (tcp_check_req), which is
        // counted as that.
        if s0 == TcpState::SynSent && r0 == TcpState::Closed && !old.knows(r, known::ISN) {
            st.retransmit = Retransmit::Syn;
        }
        return;
    }
    let mut w = old;
    // The SYN occupies one sequence number and its payload (TCP Fast Open, RFC 7413) the next
    // `len`: a server that takes the data acknowledges ISN + 1 + len.
    let fresh = EndpointSeq {
        isn: seg.seq,
        end: syn_end(seg),
        ack: 0,
        win: seg.win as u32,
    };
    if s0 == TcpState::Closed && r0 == TcpState::SynSent {
        // Simultaneous open (RFC 9293 figure 7): SYNs cross, each side receives the other's SYN in
        // SYN-SENT and moves to SYN-RECEIVED.
        st.rec.seq[s.index()] = fresh;
        w.forget_side(s);
        w.learn(s, known::ISN | known::END);
        // RFC 7323 section 1.3: scaling is in effect only when both SYNs carried the option. (Was
        // `wscale[s] = seg.wscale` alone, which left the other side's shift in effect when this
        // SYN had none.)
        if seg.wscale > WSCALE_MAX || w.wscale[r.index()] > WSCALE_MAX {
            w.wscale = [0, 0];
        } else {
            w.wscale[s.index()] = seg.wscale;
        }
        w.set_state(s, TcpState::SynRecv);
        w.set_state(r, TcpState::SynRecv);
        st.write |= write::seq(s);
    } else if s0.is_finished() && r0.is_finished() {
        // A new connection, possibly reusing the key of one in TIME_WAIT or CLOSED (RFC 9293
        // section 3.6.1 allows a SYN to reopen from TIME-WAIT).
        st.rec.seq[s.index()] = fresh;
        // SAFETY: the step's own field; all-zero facts are the unknown ones (see `crate::words`).
        unsafe { crate::words::zero(&mut st.rec.seq[r.index()]) };
        st.rec.syn_ns = now_ns;
        w.known = 0;
        w.learn(s, known::ISN | known::END);
        w.wscale = [WSCALE_NONE, WSCALE_NONE];
        w.wscale[s.index()] = seg.wscale;
        w.flags &= flowflags::HALF_OPEN;
        // A connection opened by its SYN is counted from the start, even on the key of a
        // midstream pickup that never earned its count.
        w.pending = 0;
        w.set_client(s);
        w.set_state(s, TcpState::SynSent);
        w.set_state(r, TcpState::Closed);
        st.write |= write::SEQ_A | write::SEQ_B | write::SYN_NS;
    } else if s0 == TcpState::SynSent {
        // The client gave up on its first ISN and tries again with another: same attempt.
        st.rec.seq[s.index()] = fresh;
        w.wscale[s.index()] = seg.wscale;
        st.write |= write::seq(s);
    } else {
        return st.reject(InvalidReason::UnexpectedSyn);
    }
    st.rec.set_word(w);
}

/// A SYN-ACK: the server answering (client then ESTABLISHED), a simultaneous-open SYN-ACK, or a
/// retransmission.
#[inline(never)]
fn on_syn_ack(st: &mut Step, old: FlowWord, s: Side, seg: &Segment) {
    let r = s.other();
    let (s0, r0) = (old.state(s), old.state(r));
    let ss = st.rec.seq[s.index()];
    let rs = st.rec.seq[r.index()];
    if matches!(s0, TcpState::SynRecv | TcpState::Established)
        && old.knows(s, known::ISN)
        && seg.seq == ss.isn
    {
        // Retransmitted SYN-ACK (its ACK to the client, or the client's final ACK, was lost). In a
        // simultaneous open it also completes the receiver, which is still SYN-RECEIVED, whether
        // the sender is too or was itself completed by the other side's SYN-ACK first. (Requiring
        // the sender in SYN-RECEIVED left the second side stuck there when the SYN-ACKs crossed.)
        //
        // Counted as sent again when the server sent it, and sent a SYN-ACK before (its receive
        // side is known from that one): in a simultaneous open each side's first SYN-ACK comes
        // this way too, after its own SYN.
        if old.client() as u8 != s as u8 && old.knows(s, known::ACK) {
            st.retransmit = Retransmit::SynAck;
        }
        if r0 == TcpState::SynRecv && acks_syn(&old, r, &rs, seg.ack) {
            let mut w = old;
            w.set_state(r, TcpState::Established);
            st.rec.set_word(w);
            learn_receive_side_word(st, s, seg);
        }
        return;
    }
    if !acks_syn(&old, r, &rs, seg.ack) {
        return if r0 == TcpState::SynSent || r0 == TcpState::SynRecv {
            st.reject(InvalidReason::BadSynAck)
        } else {
            st.reject(InvalidReason::UnexpectedSyn)
        };
    }
    if !(matches!(s0, TcpState::Closed | TcpState::SynSent) && r0 == TcpState::SynSent) {
        return st.reject(InvalidReason::UnexpectedSyn);
    }
    let mut w = old;
    // A SYN that carried data (the client's SYN occupies more than its one number): the server
    // took the data if it acknowledges all of it.
    if old.knows(r, known::ISN) && rs.end != rs.isn.wrapping_add(1) {
        st.fastopen = if seg.ack == rs.end {
            FastOpen::Accepted
        } else {
            FastOpen::Declined
        };
        // Declined: the client resends the data from ISN + 1.
        st.rec.seq[r.index()].end = seg.ack;
    }
    // A SYN-ACK may carry data too (RFC 7413 section 4.2.2 allows it; RFC 9293 3.10.7.3).
    st.rec.seq[s.index()] = EndpointSeq {
        isn: seg.seq,
        end: syn_end(seg),
        ack: seg.ack,
        win: seg.win as u32,
    };
    w.forget_side(s);
    w.learn(s, known::ISN | known::END | known::ACK);
    // The client's receive side is known from here: it expects seg.seq + 1, within the
    // (unscaled) window of its SYN. Without it an RST or FIN towards the client went unchecked
    // until the client's first ACK, so a blind one could tear the mirror down.
    st.rec.seq[r.index()].ack = seg.seq.wrapping_add(1);
    w.learn(r, known::ACK);
    // RFC 7323 section 1.3: scaling is in effect only when both SYNs carried the option.
    let (ws_s, ws_r) = (seg.wscale, w.wscale[r.index()]);
    if ws_s > WSCALE_MAX || ws_r > WSCALE_MAX {
        w.wscale = [0, 0];
    } else {
        w.wscale[s.index()] = ws_s;
    }
    w.set_state(s, TcpState::SynRecv);
    w.set_state(r, TcpState::Established);
    st.rec.set_word(w);
    st.write |= write::SEQ_A | write::SEQ_B;
}

/// The sequence number after a SYN or SYN-ACK: one for the SYN flag, then its payload.
#[inline(always)]
fn syn_end(seg: &Segment) -> u32 {
    seg.seq.wrapping_add(1).wrapping_add(seg.len)
}

/// Whether `ack` acknowledges side `r`'s SYN: ISN + 1 when the SYN's data (TCP Fast Open) is not
/// taken, up to the SYN's end when it is. With the ISN unknown (a SYN-ACK pickup reconstructs
/// the client's SYN from the ack), only the end is known.
#[inline(always)]
fn acks_syn(w: &FlowWord, r: Side, rs: &EndpointSeq, ack: u32) -> bool {
    if !w.knows(r, known::END) {
        return false;
    }
    if ack == rs.end {
        return true;
    }
    w.knows(r, known::ISN) && seq_ge(ack, rs.isn.wrapping_add(1)) && seq_ge(rs.end, ack)
}

#[inline(always)]
fn learn_receive_side_word(st: &mut Step, s: Side, seg: &Segment) {
    let mut w = st.rec.word();
    learn_receive_side(st, &mut w, s, seg);
    st.rec.set_word(w);
}

/// Any segment with ACK and without SYN or RST: data, pure ACKs, FINs. ACK effects on the receiver
/// are applied before the FIN's, so a FIN+ACK that acknowledges the receiver's own FIN takes it
/// from FIN-WAIT-1 straight to TIME-WAIT.
#[inline(never)]
fn on_ack_fin(st: &mut Step, old: FlowWord, s: Side, seg: &Segment, now_ns: u64) {
    let r = s.other();
    let (s0, r0) = (old.state(s), old.state(r));
    let ss = st.rec.seq[s.index()];
    let rs = st.rec.seq[r.index()];
    let fin = seg.has(FIN);
    let fin_end = seg.seq.wrapping_add(seg.len).wrapping_add(1);
    let fin_repeat = fin
        && old.knows(s, known::END)
        && fin_end == ss.end
        && !s0.is_handshake()
        && s0 != TcpState::Established;
    if fin && !fin_repeat {
        // The FIN (with any payload before it) must overlap the receiver's window, or a blind FIN
        // could tear the mirror down.
        if let Some((start, len)) = receive_window(&old, r, &rs) {
            let last = seg.seq.wrapping_add(seg.len);
            if !(seq_ge(last, start) && seq_diff(seg.seq, start) < len as i32) {
                return st.reject(InvalidReason::FinOutOfWindow);
            }
        }
    }
    let mut w = old;
    learn_receive_side(st, &mut w, s, seg);

    // What the ACK tells about the receiver's SYN or FIN. An unknown `end` (seeded or midstream
    // records) is taken as acknowledged: the observer has nothing better.
    let acks_r = !old.knows(r, known::END) || seq_ge(seg.ack, rs.end);
    // A SYN-RECEIVED endpoint is established by the ACK of its SYN (ISN + 1), even when its
    // SYN-ACK carried data (Fast Open) that this ACK does not cover yet.
    let acks_r_syn =
        acks_r || (old.knows(r, known::ISN) && seq_ge(seg.ack, rs.isn.wrapping_add(1)));
    let mut r1 = r0;
    let mut s1 = s0;
    if r0 == TcpState::Closed
        && s0 == TcpState::SynSent
        && old.has(flowflags::SYN_COOKIE)
        && old.knows(r, known::END)
        && seg.ack == rs.end
    {
        // The ACK returning a valid SYN cookie: the server's kernel creates the connection
        // ESTABLISHED from it directly (no SYN-RECEIVED in between), and the client already is.
        r1 = TcpState::Established;
        s1 = TcpState::Established;
    } else if r0 == TcpState::SynRecv && acks_r_syn {
        r1 = TcpState::Established;
        // The SYN-ACK was not seen (tap port seeing one direction late): its ACK proves it.
        if s0 == TcpState::SynSent {
            s1 = TcpState::Established;
        }
    } else if acks_r {
        r1 = match r0 {
            TcpState::FinWait1 => TcpState::FinWait2,
            TcpState::Closing => TcpState::TimeWait,
            TcpState::LastAck => TcpState::Closed,
            other => other,
        };
    }

    if fin && fin_repeat {
        if s0 == TcpState::Closed && r0 == TcpState::TimeWait {
            // The final ACK was lost: the peer in LAST-ACK resends its FIN (RFC 9293 section
            // 3.10.7.4), and TIME-WAIT restarts its 2MSL timer when it acknowledges it again.
            s1 = TcpState::LastAck;
        }
        if r1 == TcpState::TimeWait {
            st.rec.since_ns[r.index()] = now_ns;
            st.write |= write::since(r);
        }
    } else if fin {
        s1 = match s1 {
            TcpState::Established | TcpState::SynRecv => TcpState::FinWait1,
            // Simultaneous close (RFC 9293 figure 13): the mirror put the sender in CLOSE-WAIT
            // when the receiver's FIN went by, but a FIN that does not acknowledge that FIN was
            // sent before it arrived, from ESTABLISHED: the sender is in FIN-WAIT-1 and the
            // receiver's FIN takes it to CLOSING. (Was LAST-ACK, which ended CLOSED instead of
            // TIME-WAIT.)
            TcpState::CloseWait if r0 == TcpState::FinWait1 && !acks_r => TcpState::Closing,
            TcpState::CloseWait => TcpState::LastAck,
            other => other,
        };
        if s1 != s0 {
            st.rec.seq[s.index()].end = fin_end;
            w.learn(s, known::END);
            st.write |= write::seq(s);
        }
        r1 = match r1 {
            TcpState::Established | TcpState::SynRecv => TcpState::CloseWait,
            TcpState::FinWait1 => TcpState::Closing,
            TcpState::FinWait2 => TcpState::TimeWait,
            other => other,
        };
    }
    w.set_state(s, s1);
    w.set_state(r, r1);
    st.rec.set_word(w);
}

/// [`FlowWord::pending`] of a midstream pickup before its first segment is applied: a bit no
/// side uses, so the word reads "pending" while neither side has been seen.
pub const PENDING_OPENED: u8 = 0x80;

/// How a flow the table does not hold yet starts, when it may start at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A SYN: a new connection. Counts against the half-open budget.
    Syn,
    /// A SYN-ACK whose SYN was not seen. Counts against the half-open budget.
    SynAck,
    /// A plain ACK or data: picked up midstream as ESTABLISHED on both sides.
    Midstream,
}

/// Builds the record for a segment of an untracked flow: the record as it must have been just before
/// the segment, advanced by [`step`]. `counted` is [`FlowWord::counted`]. Returns the reason when
/// such a segment cannot start tracking (RST, FIN and invalid flags).
pub fn open(
    s: Side,
    seg: &Segment,
    counted: u8,
    now_ns: u64,
    ports: [u16; 2],
) -> Result<(Opening, Step), InvalidReason> {
    let mut st = Step::EMPTY;
    let opening = open_into(&mut st, s, seg, counted, now_ns, ports)?;
    Ok((opening, st))
}

/// How a segment of an untracked flow would start tracking, or why it cannot: decided from the
/// flags alone, so the kernel can check the table's fill and the half-open budget before it runs
/// the state machine (a SYN flood against a full table must stay cheap).
#[inline(always)]
pub fn classify_opening(seg: &Segment) -> Result<Opening, InvalidReason> {
    if let Err(bad) = check_flags(seg.flags) {
        return Err(bad.into());
    }
    if seg.has(RST) || seg.has(FIN) {
        Err(InvalidReason::NoFlow)
    } else if seg.has(SYN) && !seg.has(ACK) {
        Ok(Opening::Syn)
    } else if seg.has(SYN) {
        Ok(Opening::SynAck)
    } else {
        Ok(Opening::Midstream)
    }
}

/// [`open`] writing its result into `st`.
#[inline(always)]
pub fn open_into(
    st: &mut Step,
    s: Side,
    seg: &Segment,
    counted: u8,
    now_ns: u64,
    ports: [u16; 2],
) -> Result<Opening, InvalidReason> {
    let opening = classify_opening(seg)?;
    let r = s.other();
    let mut w = FlowWord {
        counted,
        wscale: [WSCALE_NONE, WSCALE_NONE],
        ..FlowWord::default()
    };
    st.reset(&Step::EMPTY.rec, now_ns);
    let rec = &mut st.rec;
    // A SYN needs nothing reconstructed: the step below opens the connection.
    if opening == Opening::SynAck {
        // The client's SYN, reconstructed from the acknowledgement number.
        let isn = seg.ack.wrapping_sub(1);
        rec.seq[r.index()] = EndpointSeq {
            isn,
            end: seg.ack,
            ack: 0,
            win: 0,
        };
        w.learn(r, known::ISN | known::END);
        // A SYN-ACK carries window scale only if the SYN did (RFC 7323 section 1.3), so scaling
        // is in effect; the client's shift is unknown, so assume the largest, as midstream pickup
        // does. (Leaving it absent turned scaling off for both sides: receive windows up to 2^14
        // times too small, and FINs after a burst of data rejected as out of window.)
        if seg.wscale <= WSCALE_MAX {
            w.wscale[r.index()] = WSCALE_MAX;
        }
        w.flags |= flowflags::MIDSTREAM;
        w.set_client(r);
        w.set_state(r, TcpState::SynSent);
        // syn_ns stays 0: the SYN was not seen, so no handshake duration can be measured.
    } else if opening == Opening::Midstream {
        // Midstream: both ESTABLISHED. The client is guessed to be the side with the higher
        // (ephemeral) port. The receiver should be acknowledging about `seg.seq`; its window and
        // both scale factors are unknown, so assume the largest.
        w.flags |= flowflags::MIDSTREAM | flowflags::ROLE_GUESSED;
        // Not counted until the other side is seen too (or the daemon confirms it): the step
        // below records the sender. (Was counted at once: a stray segment of a closed
        // connection stayed an ESTABLISHED endpoint until the 5-day idle timeout.)
        w.pending = PENDING_OPENED;
        w.set_client(if ports[1] > ports[0] {
            Side::B
        } else {
            Side::A
        });
        w.wscale = [WSCALE_MAX, WSCALE_MAX];
        w.set_state(s, TcpState::Established);
        w.set_state(r, TcpState::Established);
        rec.seq[r.index()] = EndpointSeq {
            isn: 0,
            end: 0,
            ack: seg.seq,
            win: WIN_UNKNOWN,
        };
        w.learn(r, known::ACK);
    }
    rec.since_ns = [now_ns, now_ns];
    rec.set_word(w);
    step_in_place(st, s, seg, now_ns);
    if opening != Opening::Midstream && st.invalid.is_none() {
        let mut w = st.rec.word();
        w.flags |= flowflags::HALF_OPEN;
        st.rec.set_word(w);
    }
    Ok(opening)
}
