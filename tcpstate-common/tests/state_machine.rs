//! Behaviour tests of the observer's TCP state machine: [`state::step`], [`state::open`] and the
//! counter deltas they produce ([`counters::for_each_delta`]).
//!
//! Organised like smoltcp's `socket/tcp.rs` tests: a [`Conn`] fixture per starting state, built by
//! driving real segment sequences through `step` (never by poking fields), helpers that send one
//! segment from the client (`c2s`) or the server (`s2c`), and one `mod` per starting state.
//!
//! Every segment a test sends also goes through the checks in [`Conn::send`], which hold for any
//! segment in any state: the step is written back with `commit::commit` and must reproduce the
//! step's record exactly (so `write` names every change), a rejected segment changes nothing but
//! `last_seen`, `since_ns` is stamped for every side whose state changed, and the connection
//! gauges summed from every delta equal the counted endpoints' actual states.

use std::collections::BTreeMap;

use tcpstate_common::{
    commit::commit,
    counters::{for_each_delta, handshake_bucket, idx, retransmitted, RstDirection, Stall},
    durations::{self, Measure},
    flow::{flowflags, FlowRecord, FlowWord, Role, Side},
    state::{
        open, quiet, step, step_cookie_into, write, FastOpen, Handshake, InvalidReason, Opening,
        Retransmit, Step, TcpState,
    },
    tcp::{flags::*, Segment, WSCALE_MAX, WSCALE_NONE},
};
use TcpState::*;

const NS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// Every fixture's clock starts here (100 s) and advances 1 ms per segment, so all the segments
/// of a test fall in the same second unless a test moves to the next one.
const T0: u64 = 100 * NS;
const CISN: u32 = 1_000_000;
const SISN: u32 = 3_000_000_000;
/// Raw window every fixture segment advertises. The fixtures' SYNs carry no window scale, so this
/// is also the window in bytes: an RST or FIN is in the receiver's window when its sequence number
/// lies within `[ack, ack + 1.5 * WIN]` (see `state::receive_window`).
const WIN: u16 = 10_000;
/// The last sequence number offset (from the receiver's ack) an RST or FIN may have.
const WIN_EDGE: u32 = WIN as u32 * 3 / 2;
const CPORT: u16 = 40_000;
const SPORT: u16 = 80;
/// Tap mode: both endpoints counted.
const BOTH: u8 = 0b11;

fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
    Segment {
        seq,
        ack,
        len,
        win: WIN,
        flags,
        wscale: WSCALE_NONE,
    }
}

trait SegmentExt {
    fn ws(self, shift: u8) -> Self;
    fn win(self, win: u16) -> Self;
}

impl SegmentExt for Segment {
    fn ws(mut self, shift: u8) -> Self {
        self.wscale = shift;
        self
    }
    fn win(mut self, win: u16) -> Self {
        self.win = win;
        self
    }
}

/// Every counter slot `st` moves, in call order, with wrapping deltas read back as signed.
fn deltas(old: FlowWord, st: &Step, sender: Side) -> Vec<(u32, i64)> {
    let mut v = Vec::new();
    for_each_delta(old, st, sender, |slot, d| v.push((slot, d as i64)));
    v
}

fn except_last_seen(mut r: FlowRecord) -> FlowRecord {
    r.last_seen = 0;
    r
}

/// A tracked flow and the counters the kernel would have kept for it.
struct Conn {
    rec: FlowRecord,
    now: u64,
    /// The side that sent the connection's first SYN.
    client: Side,
    /// Every counter slot summed over all steps so far, as the per-CPU array holds them.
    counters: BTreeMap<u32, u64>,
    /// What the steps ended ([`durations::ended`]), in order: (measure, side, nanoseconds).
    ended: Vec<(Measure, Side, u64)>,
}

impl Conn {
    /// Starts tracking with the segment `sender` sent, through `state::open`, at `T0`.
    fn open(sender: Side, counted: u8, s: Segment, ports: [u16; 2]) -> (Opening, Conn) {
        let (opening, st) = open(sender, &s, counted, T0, ports).expect("segment opens a flow");
        assert_eq!(st.invalid, None, "an opening segment is never rejected");
        let mut c = Conn {
            rec: st.rec,
            now: T0,
            client: st.rec.word().client(),
            counters: BTreeMap::new(),
            ended: Vec::new(),
        };
        let before = FlowWord {
            counted,
            ..FlowWord::default()
        };
        c.count(before, &st, sender);
        (opening, c)
    }

    /// A flow opened by `client`'s SYN with initial sequence number `isn`.
    fn start(client: Side, counted: u8, isn: u32) -> Conn {
        let (opening, c) = Conn::open(client, counted, seg(SYN, isn, 0, 0), ports(client));
        assert_eq!(opening, Opening::Syn);
        c
    }

    fn server(&self) -> Side {
        self.client.other()
    }

    fn count(&mut self, old: FlowWord, st: &Step, sender: Side) {
        for_each_delta(old, st, sender, |slot, d| {
            let v = self.counters.entry(slot).or_insert(0);
            *v = v.wrapping_add(d);
        });
        self.check_gauges();
    }

    /// One segment from `from`, 1 ms after the previous one: step, commit, count, and the checks
    /// that hold for every segment.
    fn send(&mut self, from: Side, s: Segment) -> Step {
        self.send_with(from, s, false)
    }

    /// As `send`; with `cookie`, the segment left its host without a socket (host mode, TC
    /// egress), as a SYN cookie's SYN-ACK does, and goes through `state::step_cookie_into`.
    fn send_with(&mut self, from: Side, s: Segment, cookie: bool) -> Step {
        self.now += MS;
        let old = self.rec;
        let st = if cookie {
            let mut st = Step::EMPTY;
            step_cookie_into(&mut st, &old, from, &s, self.now);
            st
        } else {
            step(&old, from, &s, self.now)
        };
        // SAFETY: `self.rec` is a live, aligned FlowRecord owned by this test.
        let committed = unsafe { commit(&mut self.rec, old.word, &st) };
        assert!(
            committed,
            "nothing else writes the record: the CAS must succeed"
        );
        assert_eq!(
            self.rec, st.rec,
            "commit wrote only what `write` ({:#x}) names, and missed a change",
            st.write
        );
        if let Some(why) = st.invalid {
            assert_eq!(
                except_last_seen(st.rec),
                except_last_seen(old),
                "rejected segment ({why:?}) changed the record"
            );
            assert_eq!(st.write & !write::LAST_SEEN, 0, "rejected segment wrote");
            assert!(!st.rst && !st.half_open_released);
            assert_eq!(st.handshake, Handshake::None);
        }
        let (ow, nw) = (old.word(), st.rec.word());
        for side in [Side::A, Side::B] {
            if ow.state(side) != nw.state(side) {
                assert_eq!(st.rec.since_ns[side.index()], self.now, "since of {side:?}");
            }
        }
        self.count(ow, &st, from);
        durations::ended(ow, &old.since_ns, &st)
            .for_each(nw, |m, side, ns| self.ended.push((m, side, ns)));
        st
    }

    fn c2s(&mut self, flags: u8, seq: u32, ack: u32, len: u32) -> Step {
        self.send(self.client, seg(flags, seq, ack, len))
    }

    fn s2c(&mut self, flags: u8, seq: u32, ack: u32, len: u32) -> Step {
        self.send(self.server(), seg(flags, seq, ack, len))
    }

    fn c2s_seg(&mut self, s: Segment) -> Step {
        self.send(self.client, s)
    }

    fn s2c_seg(&mut self, s: Segment) -> Step {
        self.send(self.server(), s)
    }

    fn word(&self) -> FlowWord {
        self.rec.word()
    }

    /// (client state, server state).
    fn states(&self) -> (TcpState, TcpState) {
        let w = self.word();
        (w.state(self.client), w.state(self.server()))
    }

    fn since(&self, side: Side) -> u64 {
        self.rec.since_ns[side.index()]
    }

    fn counter(&self, slot: u32) -> u64 {
        self.counters.get(&slot).copied().unwrap_or(0)
    }

    fn gauge(&self, role: Role, state: TcpState) -> i64 {
        self.counter(idx::conn(role, state)) as i64
    }

    /// The key invariant: the gauges the kernel keeps incrementally equal the counted endpoints'
    /// actual states.
    fn check_gauges(&self) {
        let w = self.word();
        for role in Role::ALL {
            for state in TcpState::OPEN {
                let actual = [Side::A, Side::B]
                    .into_iter()
                    .filter(|&s| w.is_counted(s) && w.state(s) == state && w.role(s) == role)
                    .count() as i64;
                assert_eq!(self.gauge(role, state), actual, "gauge {role:?} {state:?}");
            }
        }
    }

    /// Moves the clock into the next second (the last-seen stamp will move).
    fn next_second(&mut self) {
        self.now = (self.now / NS + 1) * NS;
    }
}

/// The counted retransmissions so far: (SYNs, SYN-ACKs).
fn retransmits(c: &Conn) -> (u64, u64) {
    (
        c.counter(idx::retransmits(Retransmit::Syn)),
        c.counter(idx::retransmits(Retransmit::SynAck)),
    )
}

/// Ports with the client's the higher (ephemeral) one.
fn ports(client: Side) -> [u16; 2] {
    match client {
        Side::A => [CPORT, SPORT],
        Side::B => [SPORT, CPORT],
    }
}

// Fixtures. Each one is reached from the previous by real segments, and asserts where it got to.
// The `_on` forms take the client's side; the plain forms put the client on side A.

fn syn_sent_on(client: Side) -> Conn {
    let c = Conn::start(client, BOTH, CISN);
    assert_eq!(c.states(), (SynSent, Closed));
    c
}

fn syn_recv_on(client: Side) -> Conn {
    let mut c = syn_sent_on(client);
    c.s2c(SYN | ACK, SISN, CISN + 1, 0);
    assert_eq!(c.states(), (Established, SynRecv));
    c
}

fn established_on(client: Side) -> Conn {
    let mut c = syn_recv_on(client);
    c.c2s(ACK, CISN + 1, SISN + 1, 0);
    assert_eq!(c.states(), (Established, Established));
    c
}

/// The client closed first: client FIN_WAIT_1, server CLOSE_WAIT.
fn fin_wait1_on(client: Side) -> Conn {
    let mut c = established_on(client);
    c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
    assert_eq!(c.states(), (FinWait1, CloseWait));
    c
}

fn fin_wait2_on(client: Side) -> Conn {
    let mut c = fin_wait1_on(client);
    c.s2c(ACK, SISN + 1, CISN + 2, 0);
    assert_eq!(c.states(), (FinWait2, CloseWait));
    c
}

/// Client TIME_WAIT, server LAST_ACK.
fn last_ack_on(client: Side) -> Conn {
    let mut c = fin_wait2_on(client);
    c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
    assert_eq!(c.states(), (TimeWait, LastAck));
    c
}

/// Client TIME_WAIT, server CLOSED.
fn time_wait_on(client: Side) -> Conn {
    let mut c = last_ack_on(client);
    c.c2s(ACK, CISN + 2, SISN + 2, 0);
    assert_eq!(c.states(), (TimeWait, Closed));
    c
}

/// Simultaneous close: the FINs cross, neither acknowledges the other.
fn closing_on(client: Side) -> Conn {
    let mut c = fin_wait1_on(client);
    c.s2c(FIN | ACK, SISN + 1, CISN + 1, 0);
    assert_eq!(c.states(), (Closing, Closing));
    c
}

/// The server closed first: server FIN_WAIT_1, client CLOSE_WAIT.
fn server_fin_wait1_on(client: Side) -> Conn {
    let mut c = established_on(client);
    c.s2c(FIN | ACK, SISN + 1, CISN + 1, 0);
    assert_eq!(c.states(), (CloseWait, FinWait1));
    c
}

/// Simultaneous open: the SYNs cross.
fn simultaneous_syn_recv_on(client: Side) -> Conn {
    let mut c = syn_sent_on(client);
    c.s2c(SYN, SISN, 0, 0);
    assert_eq!(c.states(), (SynRecv, SynRecv));
    c
}

fn syn_sent() -> Conn {
    syn_sent_on(Side::A)
}
fn syn_recv() -> Conn {
    syn_recv_on(Side::A)
}
fn established() -> Conn {
    established_on(Side::A)
}
fn fin_wait1() -> Conn {
    fin_wait1_on(Side::A)
}
fn fin_wait2() -> Conn {
    fin_wait2_on(Side::A)
}
fn last_ack() -> Conn {
    last_ack_on(Side::A)
}
fn time_wait() -> Conn {
    time_wait_on(Side::A)
}
fn closing() -> Conn {
    closing_on(Side::A)
}
fn server_fin_wait1() -> Conn {
    server_fin_wait1_on(Side::A)
}
fn simultaneous_syn_recv() -> Conn {
    simultaneous_syn_recv_on(Side::A)
}

const SIDES: [Side; 2] = [Side::A, Side::B];

/// Asserts `st` rejected the segment for `why` and left `before` as it was.
fn assert_rejected(c: &Conn, st: &Step, before: &FlowRecord, why: InvalidReason) {
    assert_eq!(st.invalid, Some(why));
    assert_eq!(except_last_seen(c.rec), except_last_seen(*before));
}

mod open_untracked {
    use super::*;

    #[test]
    fn syn_opens_a_half_open_flow_with_the_sender_as_client_in_syn_sent() {
        for client in SIDES {
            let c = syn_sent_on(client);
            let w = c.word();
            assert_eq!(w.client(), client);
            assert_eq!(w.role(client), Role::Client);
            assert!(w.has(flowflags::HALF_OPEN));
            assert!(!w.has(flowflags::MIDSTREAM) && !w.has(flowflags::ROLE_GUESSED));
            assert_eq!(c.rec.syn_ns, T0);
            assert_eq!(c.rec.since_ns, [T0, T0]);
            assert_eq!(c.rec.seq[client.index()].isn, CISN);
            assert_eq!(c.rec.seq[client.index()].end, CISN + 1);
            assert_eq!(c.gauge(Role::Client, SynSent), 1);
            assert_eq!(c.counters.len(), 1, "only the client's gauge moved");
        }
    }

    #[test]
    fn fin_or_rst_cannot_start_tracking() {
        for flags in [FIN | ACK, FIN | ACK | PSH, RST, RST | ACK] {
            for sender in SIDES {
                let r = open(sender, &seg(flags, 5, 6, 0), BOTH, T0, [1, 2]);
                assert_eq!(r.err(), Some(InvalidReason::NoFlow), "flags {flags:#x}");
            }
        }
    }

    #[test]
    fn invalid_flags_cannot_start_tracking_and_name_the_reason() {
        for (flags, why) in [
            (SYN | FIN, InvalidReason::SynFin),
            (SYN | RST, InvalidReason::SynRst),
            (0, InvalidReason::NoFlags),
            (FIN, InvalidReason::BadFlags),
            (FIN | PSH | URG, InvalidReason::BadFlags),
        ] {
            let r = open(Side::A, &seg(flags, 5, 6, 0), BOTH, T0, [1, 2]);
            assert_eq!(r.err(), Some(why), "flags {flags:#x}");
        }
    }

    #[test]
    fn plain_ack_is_picked_up_midstream_established_on_both_sides() {
        let (opening, c) = Conn::open(Side::A, BOTH, seg(ACK | PSH, 500, 900, 100), [CPORT, SPORT]);
        assert_eq!(opening, Opening::Midstream);
        let w = c.word();
        assert_eq!(
            (w.state(Side::A), w.state(Side::B)),
            (Established, Established)
        );
        assert!(w.has(flowflags::MIDSTREAM) && w.has(flowflags::ROLE_GUESSED));
        assert!(
            !w.has(flowflags::HALF_OPEN),
            "a midstream flow is not half-open"
        );
        // The client is guessed to be the side with the higher (ephemeral) port.
        assert_eq!(w.client(), Side::A);
        assert_eq!(c.rec.syn_ns, 0, "no SYN was seen");
        assert_eq!(
            w.wscale,
            [WSCALE_MAX, WSCALE_MAX],
            "unknown scale: assume the largest"
        );
        // Not counted yet: only one direction seen.
        assert_ne!(w.pending, 0);
        assert_eq!(c.gauge(Role::Client, Established), 0);
        assert_eq!(c.gauge(Role::Server, Established), 0);

        let (_, c) = Conn::open(Side::A, BOTH, seg(ACK, 500, 900, 0), [SPORT, CPORT]);
        assert_eq!(c.word().client(), Side::B);
    }

    #[test]
    fn a_midstream_pickup_earns_its_count_when_the_other_side_is_seen() {
        let (_, mut c) = Conn::open(Side::A, BOTH, seg(ACK | PSH, 500, 900, 100), [CPORT, SPORT]);
        // More from the same side: still one direction.
        c.c2s(ACK | PSH, 600, 900, 100);
        assert_ne!(c.word().pending, 0);
        assert_eq!(c.gauge(Role::Client, Established), 0);
        let st = c.s2c(ACK, 900, 700, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.word().pending, 0, "both directions seen");
        assert_eq!(c.gauge(Role::Client, Established), 1);
        assert_eq!(c.gauge(Role::Server, Established), 1);
        assert!(st.write & write::WORD != 0);
    }

    #[test]
    fn a_stray_segment_answered_by_an_rst_is_never_counted() {
        // Regression: a stray segment of a connection that had already closed was picked up as
        // ESTABLISHED and stayed so for the 5-day idle timeout after `ss` showed nothing.
        for (sender, ports) in [(Side::A, [CPORT, SPORT]), (Side::B, [SPORT, CPORT])] {
            let (_, mut c) = Conn::open(sender, BOTH, seg(ACK, 7_000, 9_000, 0), ports);
            // The host without the connection answers RST, seq = the stray's ack.
            let st = c.send(sender.other(), seg(RST, 9_000, 0, 0));
            assert!(st.rst);
            let w = c.word();
            assert_eq!((w.state(Side::A), w.state(Side::B)), (Closed, Closed));
            assert_ne!(w.pending, 0, "an RST does not confirm the flow");
            for role in Role::ALL {
                for state in TcpState::OPEN {
                    assert_eq!(c.gauge(role, state), 0, "{role:?} {state:?}");
                }
            }
            assert_eq!(c.counter(idx::resets(RstDirection::Sent, Established)), 0);
        }
    }

    #[test]
    fn a_new_connection_on_the_key_of_a_pending_pickup_is_counted() {
        let (_, mut c) = Conn::open(Side::A, BOTH, seg(ACK, 7_000, 9_000, 0), [CPORT, SPORT]);
        c.s2c(RST, 9_000, 0, 0);
        c.c2s(SYN, CISN, 0, 0);
        assert_eq!(c.word().pending, 0);
        assert_eq!(c.gauge(Role::Client, SynSent), 1);
    }

    #[test]
    fn a_pending_pickup_is_never_quiet() {
        let (_, c) = Conn::open(Side::A, BOTH, seg(ACK, 7_000, 9_000, 0), [CPORT, SPORT]);
        assert!(!quiet(&c.rec, Side::B, &seg(ACK, 9_000, 7_000, 0), c.now));
    }

    #[test]
    fn midstream_flow_closes_through_fin_wait_and_time_wait() {
        // Side B (port 40000) is the guessed client; it closes first.
        let (_, mut c) = Conn::open(Side::B, BOTH, seg(ACK, 7_000, 9_000, 0), [SPORT, CPORT]);
        assert_eq!(c.client, Side::B);
        c.s2c(ACK | PSH, 9_000, 7_000, 50);
        let st = c.c2s(FIN | ACK, 7_000, 9_050, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (FinWait1, CloseWait));
        c.s2c(ACK, 9_050, 7_001, 0);
        assert_eq!(c.states(), (FinWait2, CloseWait));
        c.s2c(FIN | ACK, 9_050, 7_001, 0);
        assert_eq!(c.states(), (TimeWait, LastAck));
        c.c2s(ACK, 7_001, 9_051, 0);
        assert_eq!(c.states(), (TimeWait, Closed));
        assert!(
            c.word().has(flowflags::MIDSTREAM),
            "still marked as picked up"
        );
    }

    #[test]
    fn midstream_fin_far_outside_the_assumed_window_is_rejected() {
        let (_, mut c) = Conn::open(Side::A, BOTH, seg(ACK, 7_000, 9_000, 0), [CPORT, SPORT]);
        let before = c.rec;
        // Side A's receive window is known from its ACK: 9000 onwards, WIN << 14 wide.
        let st = c.s2c(FIN | ACK, 9_000u32.wrapping_add(1 << 31), 7_000, 0);
        assert_rejected(&c, &st, &before, InvalidReason::FinOutOfWindow);
    }

    #[test]
    fn synack_pickup_reconstructs_the_client_syn_and_completes_on_the_final_ack() {
        for client in SIDES {
            let (opening, mut c) = Conn::open(
                client.other(),
                BOTH,
                seg(SYN | ACK, SISN, CISN + 1, 0),
                ports(client),
            );
            assert_eq!(opening, Opening::SynAck);
            assert_eq!(c.client, client, "the SYN-ACK's receiver sent the SYN");
            assert_eq!(c.states(), (Established, SynRecv));
            let w = c.word();
            assert!(w.has(flowflags::HALF_OPEN) && w.has(flowflags::MIDSTREAM));
            assert!(
                !w.has(flowflags::ROLE_GUESSED),
                "a SYN-ACK says who the client is"
            );
            assert_eq!(c.rec.seq[client.index()].isn, CISN);
            assert_eq!(
                c.rec.syn_ns, 0,
                "the SYN was not seen: no duration to measure"
            );

            let st = c.c2s(ACK, CISN + 1, SISN + 1, 0);
            assert_eq!(c.states(), (Established, Established));
            assert_eq!(st.handshake, Handshake::Established);
            assert!(st.half_open_released);
            assert!(!c.word().has(flowflags::HALF_OPEN));
        }
    }

    #[test]
    fn synack_pickup_keeps_window_scaling_when_the_synack_carries_it() {
        // A SYN-ACK carries window scale only if the SYN did (RFC 7323 section 1.3), so scaling is
        // in effect although the SYN was not seen. Regression: the pickup used to turn scaling off,
        // shrinking the client's window 128-fold here, so the server's FIN after a 20 kB response
        // fell "outside" it and the mirror never saw the connection close.
        let (_, mut c) = Conn::open(
            Side::B,
            BOTH,
            seg(SYN | ACK, SISN, CISN + 1, 0).ws(7),
            [CPORT, SPORT],
        );
        c.c2s_seg(seg(ACK, CISN + 1, SISN + 1, 0).win(502)); // 502 << 7 = 64256 bytes
        for i in 0..20 {
            c.s2c(ACK | PSH, SISN + 1 + i * 1000, CISN + 1, 1000);
        }
        let st = c.s2c(FIN | ACK, SISN + 20_001, CISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (CloseWait, FinWait1));
    }

    #[test]
    fn the_opening_segment_again_is_a_retransmission_that_changes_nothing() {
        let cases = [
            (Side::A, seg(SYN, CISN, 0, 0)),
            (Side::B, seg(SYN | ACK, SISN, CISN + 1, 0)),
            (Side::A, seg(ACK | PSH, 500, 900, 100)),
        ];
        for (sender, s) in cases {
            let (_, mut c) = Conn::open(sender, BOTH, s, [CPORT, SPORT]);
            let before = c.rec;
            let st = c.send(sender, s);
            assert_eq!(st.invalid, None);
            assert_eq!(st.write, 0, "{s:?}");
            assert_eq!(c.rec, before);
        }
    }
}

mod syn_sent {
    use super::*;

    #[test]
    fn a_syn_sent_again_before_any_synack_is_a_syn_retransmission() {
        // The listener dropped it (its SYN queue or accept queue full) or it was lost: the
        // client's timer sends it again with the same ISN. Nothing in the record changes, within
        // the coarse second not even the last-seen stamp, and yet the step reports it.
        for client in SIDES {
            let mut c = syn_sent_on(client);
            let before = c.rec;
            let st = c.c2s(SYN, CISN, 0, 0);
            assert_eq!(st.retransmit, Retransmit::Syn);
            assert_eq!(st.invalid, None);
            assert_eq!(st.write, 0, "no flow write");
            assert_eq!(c.rec, before);
            c.next_second();
            let st = c.c2s(SYN, CISN, 0, 0);
            assert_eq!(st.write, write::LAST_SEEN);
            assert_eq!(retransmits(&c), (2, 0));
        }
    }

    #[test]
    fn a_syn_with_another_isn_is_a_new_attempt_not_a_retransmission() {
        let mut c = syn_sent();
        let st = c.c2s(SYN, CISN + 777, 0, 0);
        assert_eq!(st.retransmit, Retransmit::None);
        assert_eq!(retransmits(&c), (0, 0));
    }

    #[test]
    fn synack_acking_the_isn_establishes_the_client_and_puts_the_server_in_syn_recv() {
        for client in SIDES {
            let mut c = syn_sent_on(client);
            let server = c.server();
            let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
            assert_eq!(c.states(), (Established, SynRecv));
            assert_eq!(st.invalid, None);
            assert_eq!(st.handshake, Handshake::None, "the server is still opening");
            assert!(!st.half_open_released);
            assert!(c.word().has(flowflags::HALF_OPEN));
            // Both states changed; the server's ISN is learned, and the client's receive side
            // (it now expects SISN + 1 within its SYN's window).
            assert_eq!(
                st.write,
                write::WORD | write::SEQ_A | write::SEQ_B | write::SINCE_A | write::SINCE_B
            );
            assert_eq!(c.since(client), c.now);
            assert_eq!(c.since(server), c.now);
            assert_eq!(c.rec.seq[server.index()].isn, SISN);
            assert_eq!(c.rec.seq[server.index()].end, SISN + 1);
        }
    }

    #[test]
    fn synack_with_the_wrong_ack_is_a_bad_synack() {
        for ack in [CISN, CISN + 2, 0] {
            let mut c = syn_sent();
            let before = c.rec;
            let st = c.s2c(SYN | ACK, SISN, ack, 0);
            assert_rejected(&c, &st, &before, InvalidReason::BadSynAck);
        }
    }

    #[test]
    fn retransmitted_syn_changes_nothing_but_last_seen() {
        let mut c = syn_sent();
        c.next_second();
        let before = c.rec;
        let st = c.c2s(SYN, CISN, 0, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.write, write::LAST_SEEN);
        assert_eq!(c.rec.last_seen, FlowRecord::seen_tick(c.now));
        assert_eq!(except_last_seen(c.rec), except_last_seen(before));
    }

    #[test]
    fn syn_with_a_new_isn_replaces_the_isn_and_stays_in_syn_sent() {
        let mut c = syn_sent();
        let since = c.since(Side::A);
        let st = c.c2s(SYN, CISN + 777, 0, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(
            st.write,
            write::SEQ_A,
            "only the client's sequence facts change"
        );
        assert_eq!(c.states(), (SynSent, Closed));
        assert_eq!(c.since(Side::A), since);
        assert_eq!(c.rec.seq[0].isn, CISN + 777);
        // The SYN-ACK must now acknowledge the new ISN.
        let before = c.rec;
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_rejected(&c, &st, &before, InvalidReason::BadSynAck);
        c.s2c(SYN | ACK, SISN, CISN + 778, 0);
        assert_eq!(c.states(), (Established, SynRecv));
    }

    #[test]
    fn rst_ack_acking_the_syn_is_a_refused_connection() {
        for client in SIDES {
            let mut c = syn_sent_on(client);
            let server_since = c.since(c.server());
            // What a host with nothing listening answers: RST|ACK, seq 0, ack = ISN + 1.
            let st = c.s2c(RST | ACK, 0, CISN + 1, 0);
            assert_eq!(c.states(), (Closed, Closed));
            assert!(st.rst);
            assert_eq!(st.handshake, Handshake::Refused);
            assert!(st.half_open_released);
            let w = c.word();
            assert!(w.has(flowflags::RESET) && !w.has(flowflags::HALF_OPEN));
            assert_eq!(st.write, write::WORD | write::since(client));
            assert_eq!(c.since(c.server()), server_since);
        }
    }

    #[test]
    fn rst_that_does_not_ack_the_syn_is_rejected() {
        // RFC 9293 section 3.10.7.3: in SYN-SENT an RST is acceptable only if its ACK acknowledges
        // the SYN; without the ACK bit it is dropped.
        for (flags, ack) in [(RST | ACK, CISN), (RST | ACK, CISN + 2), (RST, CISN + 1)] {
            let mut c = syn_sent();
            let before = c.rec;
            let st = c.s2c(flags, 0, ack, 0);
            assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
        }
    }

    #[test]
    fn client_rst_abandoning_its_connect_resets_the_handshake() {
        let mut c = syn_sent();
        let st = c.c2s(RST, CISN + 1, 0, 0);
        assert_eq!(c.states(), (Closed, Closed));
        assert!(st.rst);
        assert_eq!(st.handshake, Handshake::Reset);
        assert!(st.half_open_released);
    }

    #[test]
    fn crossing_syn_is_a_simultaneous_open_with_both_sides_in_syn_recv() {
        for client in SIDES {
            let mut c = syn_sent_on(client);
            let st = c.s2c(SYN, SISN, 0, 0);
            assert_eq!(c.states(), (SynRecv, SynRecv));
            assert_eq!(st.handshake, Handshake::None);
            assert_eq!(
                c.word().client(),
                client,
                "the first SYN's sender stays the client"
            );
            assert_eq!(
                st.write,
                write::WORD | write::seq(c.server()) | write::SINCE_A | write::SINCE_B
            );
        }
    }

    #[test]
    fn synack_from_the_client_side_is_unexpected() {
        let mut c = syn_sent();
        let before = c.rec;
        let st = c.c2s(SYN | ACK, CISN, SISN + 1, 0);
        assert_rejected(&c, &st, &before, InvalidReason::UnexpectedSyn);
    }
}

mod simultaneous_open {
    use super::*;

    #[test]
    fn each_sides_first_synack_is_no_retransmission_and_the_servers_second_is_one() {
        for client in SIDES {
            for client_synack_first in [true, false] {
                let mut c = simultaneous_syn_recv_on(client);
                // Each side's first SYN-ACK comes after its own SYN, with the same ISN: sent
                // once, not again.
                let (a, b) = if client_synack_first {
                    let a = c.c2s(SYN | ACK, CISN, SISN + 1, 0);
                    (a, c.s2c(SYN | ACK, SISN, CISN + 1, 0))
                } else {
                    let b = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
                    (c.c2s(SYN | ACK, CISN, SISN + 1, 0), b)
                };
                assert_eq!(a.retransmit, Retransmit::None);
                assert_eq!(b.retransmit, Retransmit::None);
                // The side that did not send the first SYN stands as the server: only its own
                // SYN-ACK sent again counts.
                assert_eq!(
                    c.c2s(SYN | ACK, CISN, SISN + 1, 0).retransmit,
                    Retransmit::None
                );
                assert_eq!(
                    c.s2c(SYN | ACK, SISN, CISN + 1, 0).retransmit,
                    Retransmit::SynAck
                );
                assert_eq!(retransmits(&c), (0, 1));
            }
        }
    }

    #[test]
    fn both_synacks_establish_both_sides_in_either_order() {
        for client in SIDES {
            for client_synack_first in [true, false] {
                let mut c = simultaneous_syn_recv_on(client);
                // Each side answers the other's SYN with a SYN-ACK of its own ISN (RFC 9293
                // figure 7); each SYN-ACK completes its receiver.
                let first = if client_synack_first {
                    c.c2s(SYN | ACK, CISN, SISN + 1, 0)
                } else {
                    c.s2c(SYN | ACK, SISN, CISN + 1, 0)
                };
                assert_eq!(first.invalid, None);
                assert_eq!(first.handshake, Handshake::None);
                let expect = if client_synack_first {
                    (SynRecv, Established)
                } else {
                    (Established, SynRecv)
                };
                assert_eq!(c.states(), expect);

                let second = if client_synack_first {
                    c.s2c(SYN | ACK, SISN, CISN + 1, 0)
                } else {
                    c.c2s(SYN | ACK, CISN, SISN + 1, 0)
                };
                assert_eq!(second.invalid, None);
                assert_eq!(c.states(), (Established, Established));
                assert_eq!(second.handshake, Handshake::Established);
                assert!(second.half_open_released);
                assert!(!c.word().has(flowflags::HALF_OPEN));
            }
        }
    }

    #[test]
    fn an_ack_completes_the_side_still_in_syn_recv() {
        let mut c = simultaneous_syn_recv();
        c.c2s(SYN | ACK, CISN, SISN + 1, 0);
        assert_eq!(c.states(), (SynRecv, Established));
        let st = c.s2c(ACK, SISN + 1, CISN + 1, 0);
        assert_eq!(c.states(), (Established, Established));
        assert_eq!(st.handshake, Handshake::Established);
    }

    #[test]
    fn retransmitted_syn_changes_nothing() {
        let mut c = simultaneous_syn_recv();
        let before = c.rec;
        let st = c.s2c(SYN, SISN, 0, 0);
        assert_rejected(&c, &st, &before, InvalidReason::UnexpectedSyn);
    }

    #[test]
    fn window_scale_is_used_only_when_both_syns_carry_it() {
        for (client_ws, server_ws, expect) in [
            (7, 9, [7, 9]),
            (7, WSCALE_NONE, [0, 0]),
            (WSCALE_NONE, 9, [0, 0]),
            (WSCALE_NONE, WSCALE_NONE, [0, 0]),
        ] {
            let (_, mut c) = Conn::open(
                Side::A,
                BOTH,
                seg(SYN, CISN, 0, 0).ws(client_ws),
                [CPORT, SPORT],
            );
            c.s2c_seg(seg(SYN, SISN, 0, 0).ws(server_ws));
            assert_eq!(c.states(), (SynRecv, SynRecv));
            assert_eq!(
                c.word().wscale,
                expect,
                "client {client_ws}, server {server_ws}"
            );
        }
    }

    #[test]
    fn rst_in_window_resets_the_handshake() {
        let mut c = simultaneous_syn_recv();
        c.c2s(SYN | ACK, CISN, SISN + 1, 0);
        let st = c.c2s(RST, CISN + 1, 0, 0);
        assert_eq!(c.states(), (Closed, Closed));
        assert_eq!(st.handshake, Handshake::Reset);
        assert!(st.half_open_released);
    }
}

/// TCP Fast Open (RFC 7413): data in the SYN, which occupies sequence space after the SYN's own
/// number, and may be accepted (the SYN-ACK acknowledges it) or declined (only the SYN is).
mod fast_open {
    use super::*;

    /// Bytes of data in the fixtures' SYNs.
    const DATA: u32 = 100;

    /// The client's SYN with data (and a cookie, which the observer does not read).
    fn tfo_syn_sent_on(client: Side) -> Conn {
        let (opening, c) = Conn::open(client, BOTH, seg(SYN, CISN, 0, DATA), ports(client));
        assert_eq!(opening, Opening::Syn);
        assert_eq!(c.states(), (SynSent, Closed));
        assert_eq!(c.rec.seq[client.index()].end, CISN + 1 + DATA);
        c
    }

    #[test]
    fn synack_acking_the_syn_data_establishes_the_client_and_counts_an_accepted_fast_open() {
        // Regression: the SYN was taken to end at ISN + 1, so this SYN-ACK was a bad_synack and
        // the connection stayed closed / syn_sent in the mirror while `ss` showed it ESTABLISHED.
        for client in SIDES {
            let mut c = tfo_syn_sent_on(client);
            let st = c.s2c(SYN | ACK, SISN, CISN + 1 + DATA, 0);
            assert_eq!(st.invalid, None);
            assert_eq!(st.fastopen, FastOpen::Accepted);
            assert_eq!(c.states(), (Established, SynRecv));
            assert_eq!(c.counter(idx::FASTOPEN + FastOpen::Accepted as u32 - 1), 1);
            assert_eq!(c.counter(idx::FASTOPEN + FastOpen::Declined as u32 - 1), 0);
            let st = c.c2s(ACK, CISN + 1 + DATA, SISN + 1, 0);
            assert_eq!(c.states(), (Established, Established));
            assert_eq!(st.handshake, Handshake::Established);
            assert_eq!(st.fastopen, FastOpen::None, "counted once, on the SYN-ACK");
            assert_eq!(
                c.counter(idx::HANDSHAKES + Handshake::Established as u32 - 1),
                1
            );
        }
    }

    #[test]
    fn synack_acking_only_the_syn_is_a_declined_fast_open_and_the_data_comes_again() {
        let mut c = tfo_syn_sent_on(Side::A);
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.fastopen, FastOpen::Declined);
        assert_eq!(c.states(), (Established, SynRecv));
        // The client's SYN now ends at ISN + 1: the data is resent after the handshake.
        assert_eq!(c.rec.seq[0].end, CISN + 1);
        c.c2s(ACK | PSH, CISN + 1, SISN + 1, DATA);
        assert_eq!(c.states(), (Established, Established));
        c.c2s(FIN | ACK, CISN + 1 + DATA, SISN + 1, 0);
        c.s2c(ACK, SISN + 1, CISN + 2 + DATA, 0);
        assert_eq!(c.states(), (FinWait2, CloseWait));
    }

    #[test]
    fn synack_acking_past_the_syn_data_or_before_the_syn_is_a_bad_synack() {
        for ack in [CISN, CISN + 2 + DATA, CISN + 10_000] {
            let mut c = tfo_syn_sent_on(Side::A);
            let before = c.rec;
            let st = c.s2c(SYN | ACK, SISN, ack, 0);
            assert_rejected(&c, &st, &before, InvalidReason::BadSynAck);
            assert_eq!(st.fastopen, FastOpen::None);
        }
    }

    #[test]
    fn synack_with_data_ends_past_its_payload_and_the_ack_of_its_syn_establishes_the_server() {
        for client in SIDES {
            let mut c = tfo_syn_sent_on(client);
            let server = c.server();
            c.s2c(SYN | ACK, SISN, CISN + 1 + DATA, 50);
            assert_eq!(c.rec.seq[server.index()].end, SISN + 1 + 50);
            // The client acknowledges the SYN but not yet the SYN-ACK's data: the server is
            // established all the same (the kernel leaves SYN-RECEIVED on the ACK of its SYN).
            let st = c.c2s(ACK, CISN + 1 + DATA, SISN + 1, 0);
            assert_eq!(c.states(), (Established, Established));
            assert_eq!(st.handshake, Handshake::Established);
        }
    }

    #[test]
    fn an_ack_short_of_the_syn_leaves_the_server_in_syn_recv() {
        let mut c = tfo_syn_sent_on(Side::A);
        c.s2c(SYN | ACK, SISN, CISN + 1 + DATA, 50);
        c.c2s(ACK, CISN + 1 + DATA, SISN, 0);
        assert_eq!(c.states(), (Established, SynRecv));
    }

    #[test]
    fn retransmitted_syn_with_its_data_changes_nothing() {
        let mut c = tfo_syn_sent_on(Side::A);
        c.next_second();
        let before = c.rec;
        let st = c.c2s(SYN, CISN, 0, DATA);
        assert_eq!(st.write, write::LAST_SEEN);
        assert_eq!(except_last_seen(c.rec), except_last_seen(before));
    }

    #[test]
    fn rst_acking_the_syn_and_its_data_is_a_refused_connection() {
        // Linux answers a SYN to a closed port with ack = seq + 1 + payload length.
        let mut c = tfo_syn_sent_on(Side::A);
        let st = c.s2c(RST | ACK, 0, CISN + 1 + DATA, 0);
        assert!(st.rst);
        assert_eq!(st.handshake, Handshake::Refused);
        assert_eq!(c.states(), (Closed, Closed));
    }

    #[test]
    fn rst_acking_only_the_syn_of_a_syn_with_data_is_a_refused_connection() {
        // RFC 9293 section 3.10.7.3: in SYN-SENT an RST is acceptable when SND.UNA < SEG.ACK =<
        // SND.NXT; with data on the SYN, SND.NXT is ISN + 1 + len and ISN + 1 is inside. Linux
        // takes it (tcp_rcv_synsent_state_process) and the connect fails with ECONNREFUSED.
        // Regression: the mirror required ack = ISN + 1 + len and kept the client in SYN_SENT.
        for client in SIDES {
            let mut c = tfo_syn_sent_on(client);
            let st = c.s2c(RST | ACK, 0, CISN + 1, 0);
            assert_eq!(st.invalid, None);
            assert!(st.rst);
            assert_eq!(st.handshake, Handshake::Refused);
            assert!(st.half_open_released);
            assert_eq!(c.states(), (Closed, Closed));
            assert_eq!(
                c.counter(idx::HANDSHAKES + Handshake::Refused as u32 - 1),
                1
            );
        }
    }

    #[test]
    fn rst_acking_part_of_the_syn_data_is_a_refused_connection() {
        let mut c = tfo_syn_sent_on(Side::A);
        let st = c.s2c(RST | ACK, 0, CISN + 1 + DATA / 2, 0);
        assert_eq!(st.handshake, Handshake::Refused);
        assert_eq!(c.states(), (Closed, Closed));
    }

    #[test]
    fn rst_acking_the_isn_or_past_the_syn_data_is_out_of_window() {
        // SEG.ACK =< SND.UNA (the ISN) or > SND.NXT: Linux drops it, the client stays SYN_SENT.
        for ack in [CISN, CISN + 2 + DATA, CISN.wrapping_sub(DATA)] {
            let mut c = tfo_syn_sent_on(Side::A);
            let before = c.rec;
            let st = c.s2c(RST | ACK, 0, ack, 0);
            assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
            assert_eq!(c.states(), (SynSent, Closed));
        }
    }

    #[test]
    fn synack_acking_part_of_the_syn_data_establishes_the_client() {
        // RFC 7413 section 4.2.2: the client resends whatever the SYN-ACK did not acknowledge.
        let mut c = tfo_syn_sent_on(Side::A);
        let st = c.s2c(SYN | ACK, SISN, CISN + 1 + DATA / 2, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.fastopen, FastOpen::Declined);
        assert_eq!(c.states(), (Established, SynRecv));
        c.c2s(ACK | PSH, CISN + 1 + DATA / 2, SISN + 1, DATA / 2);
        assert_eq!(c.states(), (Established, Established));
    }

    #[test]
    fn a_plain_syn_retransmitted_after_a_syn_with_data_is_the_same_attempt() {
        // Linux retransmits a data SYN as a plain SYN (tcp_send_syn_data keeps the data apart in
        // its retransmission queue), and sends a plain SYN at once when the data SYN could not be
        // sent: the SYN keeps its end, the SYN-ACK to the plain SYN acknowledges ISN + 1.
        let mut c = tfo_syn_sent_on(Side::A);
        c.next_second();
        let before = c.rec;
        let st = c.c2s(SYN, CISN, 0, 0);
        assert_eq!(st.write, write::LAST_SEEN);
        assert_eq!(except_last_seen(c.rec), except_last_seen(before));
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.fastopen, FastOpen::Declined);
        assert_eq!(c.states(), (Established, SynRecv));
        // tcp_rcv_fastopen_synack marks the SYN's data lost and sends it again.
        c.c2s(ACK | PSH, CISN + 1, SISN + 1, DATA);
        c.s2c(ACK, SISN + 1, CISN + 1 + DATA, 0);
        assert_eq!(c.states(), (Established, Established));
    }

    #[test]
    fn rst_answering_the_plain_retransmission_of_a_syn_with_data_is_a_refused_connection() {
        // A host with nothing listening answers the plain retransmission with ack = ISN + 1.
        let mut c = tfo_syn_sent_on(Side::A);
        c.c2s(SYN, CISN, 0, 0);
        let st = c.s2c(RST | ACK, 0, CISN + 1, 0);
        assert_eq!(st.handshake, Handshake::Refused);
        assert_eq!(c.states(), (Closed, Closed));
    }

    #[test]
    fn synack_with_data_acking_only_the_syn_establishes_the_client_and_its_ack_the_server() {
        for client in SIDES {
            let mut c = tfo_syn_sent_on(client);
            let server = c.server();
            let st = c.s2c(SYN | ACK | PSH, SISN, CISN + 1, 50);
            assert_eq!(st.invalid, None);
            assert_eq!(st.fastopen, FastOpen::Declined);
            assert_eq!(c.states(), (Established, SynRecv));
            assert_eq!(c.rec.seq[server.index()].end, SISN + 1 + 50);
            // The client acknowledges the SYN-ACK's data and resends its own.
            let st = c.c2s(ACK | PSH, CISN + 1, SISN + 1 + 50, DATA);
            assert_eq!(st.handshake, Handshake::Established);
            assert_eq!(c.states(), (Established, Established));
            // A FIN after the payload is in the window and acknowledged past it.
            c.s2c(FIN | ACK, SISN + 1 + 50, CISN + 1 + DATA, 0);
            assert_eq!(c.states(), (CloseWait, FinWait1));
            c.c2s(ACK, CISN + 1 + DATA, SISN + 2 + 50, 0);
            assert_eq!(c.states(), (CloseWait, FinWait2));
        }
    }

    #[test]
    fn a_syn_without_data_counts_no_fast_open() {
        let mut c = syn_sent();
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(st.fastopen, FastOpen::None);
        assert_eq!(c.counter(idx::FASTOPEN), 0);
        assert_eq!(c.counter(idx::FASTOPEN + 1), 0);
    }

    #[test]
    fn simultaneous_open_with_data_in_a_syn_completes() {
        let mut c = tfo_syn_sent_on(Side::A);
        c.s2c(SYN, SISN, 0, 0);
        assert_eq!(c.states(), (SynRecv, SynRecv));
        c.s2c(SYN | ACK, SISN, CISN + 1 + DATA, 0);
        c.c2s(SYN | ACK, CISN, SISN + 1, 0);
        assert_eq!(c.states(), (Established, Established));
    }
}

/// SYN cookies (RFC 4987 section 3.6): a server whose SYN queue is full answers with a SYN-ACK it
/// keeps no state for (Linux sends it without a socket, which host mode sees on TC egress). The
/// server endpoint must not be counted SYN_RECV; the ACK returning a valid cookie completes it.
mod syn_cookies {
    use super::*;

    #[test]
    fn a_cookie_synack_sent_again_is_a_synack_retransmission_and_the_syn_before_it_is_not() {
        let mut c = flooded_server_on(Side::A);
        assert_eq!(c.c2s(SYN, CISN, 0, 0).retransmit, Retransmit::Syn);
        c.send_with(Side::B, seg(SYN | ACK, SISN, CISN + 1, 0), true);
        // The cookie SYN-ACK was lost: the client sends its SYN again, which the server did
        // answer (a SYN-ACK came between), and the stack answers it with the same cookie.
        let st = c.c2s(SYN, CISN, 0, 0);
        assert_eq!(st.retransmit, Retransmit::None);
        let st = c.send_with(Side::B, seg(SYN | ACK, SISN, CISN + 1, 0), true);
        assert_eq!(st.retransmit, Retransmit::SynAck);
        assert_eq!(retransmits(&c), (1, 1));
    }

    /// Host mode on the server: only the server's endpoint is counted.
    fn flooded_server_on(client: Side) -> Conn {
        let (_, c) = Conn::open(
            client,
            client.other().bit(),
            seg(SYN, CISN, 0, 0),
            ports(client),
        );
        c
    }

    #[test]
    fn a_cookie_synack_leaves_the_server_closed_and_out_of_the_backlog() {
        // Regression: every cookie SYN-ACK became a half-open endpoint: tcpstate_syn_backlog read
        // 1826 where the kernel's SYN queue held 17.
        for client in SIDES {
            let mut c = flooded_server_on(client);
            let server = c.server();
            let st = c.send_with(server, seg(SYN | ACK, SISN, CISN + 1, 0), true);
            assert_eq!(st.invalid, None);
            assert_eq!(c.states(), (SynSent, Closed));
            assert_eq!(c.gauge(Role::Server, SynRecv), 0);
            assert!(c.word().has(flowflags::SYN_COOKIE));
            assert_eq!(c.rec.seq[server.index()].isn, SISN);
            assert_eq!(st.handshake, Handshake::None);
        }
    }

    #[test]
    fn the_ack_returning_the_cookie_establishes_both_and_counts_the_handshake() {
        for client in SIDES {
            let mut c = flooded_server_on(client);
            c.send_with(c.server(), seg(SYN | ACK, SISN, CISN + 1, 0), true);
            let st = c.c2s(ACK, CISN + 1, SISN + 1, 0);
            assert_eq!(c.states(), (Established, Established));
            assert_eq!(st.handshake, Handshake::Established);
            assert!(st.half_open_released);
            assert_eq!(c.gauge(Role::Server, Established), 1);
            assert_eq!(
                c.counter(idx::HANDSHAKES + Handshake::Established as u32 - 1),
                1
            );
        }
    }

    #[test]
    fn an_ack_with_a_wrong_cookie_changes_no_state() {
        let mut c = flooded_server_on(Side::A);
        c.send_with(Side::B, seg(SYN | ACK, SISN, CISN + 1, 0), true);
        c.c2s(ACK, CISN + 1, SISN + 7, 0);
        assert_eq!(c.states(), (SynSent, Closed));
    }

    #[test]
    fn a_cookie_synack_that_answers_no_syn_is_stepped_as_usual() {
        // Acking the wrong number: the usual verdict.
        let mut c = flooded_server_on(Side::A);
        let before = c.rec;
        let st = c.send_with(Side::B, seg(SYN | ACK, SISN, CISN + 9, 0), true);
        assert_rejected(&c, &st, &before, InvalidReason::BadSynAck);
        // Not a SYN-ACK at all (the flag is only ever set for SYN-ACKs, but the step is total).
        let mut c = established();
        c.send_with(Side::B, seg(FIN | ACK, SISN + 1, CISN + 1, 0), true);
        assert_eq!(c.states(), (CloseWait, FinWait1));
    }

    #[test]
    fn a_normal_synack_after_a_cookie_one_still_opens_the_server() {
        // The queue had room again for the retransmitted SYN: a request socket, a real SYN-ACK.
        let mut c = flooded_server_on(Side::A);
        c.send_with(Side::B, seg(SYN | ACK, SISN, CISN + 1, 0), true);
        c.s2c(SYN | ACK, SISN + 5, CISN + 1, 0);
        assert_eq!(c.states(), (Established, SynRecv));
        assert_eq!(c.gauge(Role::Server, SynRecv), 1);
    }

    #[test]
    fn port_reuse_forgets_the_cookie() {
        let mut c = flooded_server_on(Side::A);
        c.send_with(Side::B, seg(SYN | ACK, SISN, CISN + 1, 0), true);
        c.c2s(RST, CISN + 1, 0, 0);
        c.c2s(SYN, CISN + 50_000, 0, 0);
        assert!(!c.word().has(flowflags::SYN_COOKIE));
    }
}

mod syn_recv {
    use super::*;

    #[test]
    fn a_synack_sent_again_is_a_synack_retransmission() {
        for client in SIDES {
            let mut c = syn_recv_on(client);
            let before = c.rec;
            let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
            assert_eq!(st.retransmit, Retransmit::SynAck);
            assert_eq!(st.invalid, None);
            assert_eq!(st.write, 0, "no flow write");
            assert_eq!(c.rec, before);
            assert_eq!(retransmits(&c), (0, 1));
        }
    }

    #[test]
    fn a_syn_sent_again_after_the_synack_is_not_a_syn_retransmission() {
        // "A client SYN seen again with no SYN-ACK between": here the server answered, so its
        // listener dropped nothing; the SYN-ACK was lost beyond the observer or is late. Linux
        // answers such a SYN with its SYN-ACK again (tcp_check_req: inet_rtx_syn_ack), and that
        // one counts, as a SYN-ACK retransmission.
        for client in SIDES {
            let mut c = syn_recv_on(client);
            let st = c.c2s(SYN, CISN, 0, 0);
            assert_eq!(st.retransmit, Retransmit::None);
            c.s2c(SYN | ACK, SISN, CISN + 1, 0);
            assert_eq!(retransmits(&c), (0, 1));
        }
    }

    #[test]
    fn a_synack_with_another_isn_is_not_a_retransmission() {
        let mut c = syn_recv();
        let st = c.s2c(SYN | ACK, SISN + 5, CISN + 1, 0);
        assert_eq!(st.retransmit, Retransmit::None);
        assert_eq!(retransmits(&c), (0, 0));
    }

    #[test]
    fn final_ack_establishes_the_server_and_completes_the_handshake() {
        for client in SIDES {
            let mut c = syn_recv_on(client);
            let client_since = c.since(client);
            let st = c.c2s(ACK, CISN + 1, SISN + 1, 0);
            assert_eq!(c.states(), (Established, Established));
            assert_eq!(st.handshake, Handshake::Established);
            assert!(st.half_open_released);
            assert!(!c.word().has(flowflags::HALF_OPEN));
            assert_eq!(st.write, write::WORD | write::since(c.server()));
            assert_eq!(c.since(client), client_since);
            assert_eq!(c.since(c.server()), c.now);
            assert_eq!(c.counter(idx::HANDSHAKES), 1, "one established handshake");
        }
    }

    #[test]
    fn ack_that_does_not_ack_the_synack_leaves_the_server_in_syn_recv() {
        let mut c = syn_recv();
        let st = c.c2s(ACK, CISN + 1, SISN, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (Established, SynRecv));
        assert_eq!(st.handshake, Handshake::None);
        assert!(!st.half_open_released);
    }

    #[test]
    fn retransmitted_synack_changes_nothing_but_last_seen() {
        let mut c = syn_recv();
        c.next_second();
        let before = c.rec;
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.write, write::LAST_SEEN);
        assert_eq!(except_last_seen(c.rec), except_last_seen(before));
    }

    #[test]
    fn retransmitted_syn_changes_nothing_and_is_not_invalid() {
        // The SYN-ACK was lost after the observer saw it, and the client resends its SYN: an
        // ordinary retransmission, idempotent and not counted as invalid.
        let mut c = syn_recv();
        let before = c.rec;
        let st = c.c2s(SYN, CISN, 0, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(except_last_seen(c.rec), except_last_seen(before));
    }

    #[test]
    fn a_syn_with_another_isn_from_the_established_client_is_unexpected() {
        let mut c = syn_recv();
        let before = c.rec;
        let st = c.c2s(SYN, CISN + 7, 0, 0);
        assert_rejected(&c, &st, &before, InvalidReason::UnexpectedSyn);
    }

    #[test]
    fn synack_with_another_isn_is_unexpected() {
        let mut c = syn_recv();
        let before = c.rec;
        let st = c.s2c(SYN | ACK, SISN + 5, CISN + 1, 0);
        assert_rejected(&c, &st, &before, InvalidReason::UnexpectedSyn);
    }

    #[test]
    fn client_rst_in_the_server_window_resets_the_handshake() {
        let mut c = syn_recv();
        let st = c.c2s(RST, CISN + 1, 0, 0);
        assert_eq!(c.states(), (Closed, Closed));
        assert_eq!(st.handshake, Handshake::Reset);
        assert!(st.half_open_released);
    }

    #[test]
    fn server_rst_in_the_client_window_resets_the_handshake() {
        let mut c = syn_recv();
        let st = c.s2c(RST | ACK, SISN + 1, CISN + 1, 0);
        assert_eq!(c.states(), (Closed, Closed));
        assert_eq!(st.handshake, Handshake::Reset);
    }

    #[test]
    fn blind_rst_outside_either_window_is_rejected() {
        // The client has sent nothing since its SYN, but the SYN-ACK told the observer exactly what
        // it expects next (SISN + 1) and its SYN what window it offered.
        for from_client in [true, false] {
            let mut c = syn_recv();
            let before = c.rec;
            let st = if from_client {
                c.c2s(RST, CISN + 1 + WIN_EDGE + 1, 0, 0)
            } else {
                c.s2c(RST, SISN + 1 + WIN_EDGE + 1, 0, 0)
            };
            assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
        }
    }

    #[test]
    fn fin_from_the_client_completes_the_handshake_and_starts_the_close() {
        let mut c = syn_recv();
        let st = c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
        assert_eq!(c.states(), (FinWait1, CloseWait));
        assert_eq!(st.handshake, Handshake::Established);
        assert!(st.half_open_released);
    }
}

mod established {
    use super::*;

    #[test]
    fn a_synack_sent_again_after_the_final_ack_is_a_synack_retransmission() {
        // The listener's accept queue was full: it dropped the final ACK the observer saw
        // (tcp_check_req's listen_overflow) and its request socket's timer resends the SYN-ACK.
        for client in SIDES {
            let mut c = established_on(client);
            let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
            assert_eq!(st.retransmit, Retransmit::SynAck);
            assert_eq!(c.states(), (Established, Established));
            assert_eq!(retransmits(&c), (0, 1));
        }
    }

    #[test]
    fn data_and_acks_are_never_retransmissions() {
        let mut c = established();
        assert_eq!(
            c.c2s(ACK, CISN + 1, SISN + 1, 100).retransmit,
            Retransmit::None
        );
        assert_eq!(
            c.c2s(ACK, CISN + 1, SISN + 1, 100).retransmit,
            Retransmit::None
        );
        assert_eq!(
            c.s2c(ACK, SISN + 1, CISN + 101, 0).retransmit,
            Retransmit::None
        );
        assert_eq!(retransmits(&c), (0, 0));
    }

    #[test]
    fn quiet_says_yes_exactly_for_the_kernels_shortcut_case() {
        let mut c = established();
        let (client, server) = (c.client, c.server());
        let q = |c: &Conn, from: Side, s: Segment| quiet(&c.rec, from, &s, c.now);
        // An ACK or data within the window in the same second: nothing to do.
        assert!(q(&c, client, seg(ACK, CISN + 1, SISN + 1, 0)));
        assert!(q(&c, server, seg(ACK | PSH, SISN + 1, CISN + 1, 100)));
        // Anything that may act: FIN, RST, SYN, impossible flags, an ack half a window ahead.
        assert!(!q(&c, client, seg(FIN | ACK, CISN + 1, SISN + 1, 0)));
        assert!(!q(&c, client, seg(RST | ACK, CISN + 1, SISN + 1, 0)));
        assert!(!q(&c, client, seg(SYN, CISN, 0, 0)));
        assert!(!q(&c, client, seg(PSH, CISN + 1, SISN + 1, 0)));
        assert!(!q(&c, client, seg(ACK, CISN + 1, SISN + 1 + 40_000, 0)));
        // A new second: the last-seen stamp must move.
        c.next_second();
        assert!(!q(&c, client, seg(ACK, CISN + 1, SISN + 1, 0)));
        // Not established on both sides.
        let c = syn_recv();
        assert!(!q(&c, client, seg(ACK, CISN + 1, SISN + 1, 0)));
    }

    #[test]
    fn data_and_acks_within_the_window_in_the_same_second_write_nothing() {
        let mut c = established();
        let before = c.rec;
        for st in [
            c.c2s(ACK, CISN + 1, SISN + 1, 0),
            c.s2c(ACK | PSH, SISN + 1, CISN + 1, 1000),
            c.c2s(ACK, CISN + 1, SISN + 1001, 0),
            c.c2s(ACK | PSH, CISN + 1, SISN + 1001, 1000),
            c.s2c(ACK, SISN + 1001, CISN + 1001, 0),
        ] {
            assert_eq!(st.invalid, None);
            assert_eq!(st.write, 0);
        }
        assert_eq!(c.rec, before);
    }

    #[test]
    fn data_in_a_new_second_writes_only_last_seen() {
        let mut c = established();
        c.next_second();
        let st = c.c2s(ACK | PSH, CISN + 1, SISN + 1, 100);
        assert_eq!(st.write, write::LAST_SEEN);
        assert_eq!(c.rec.last_seen, FlowRecord::seen_tick(c.now));
    }

    #[test]
    fn ack_hint_is_refreshed_only_after_half_a_window_or_a_larger_window() {
        let mut c = established();
        // Half the window is 5000 bytes: an ack 5000 ahead of the stored one is not yet stale.
        assert_eq!(c.c2s(ACK, CISN + 1, SISN + 1 + 5_000, 0).write, 0);
        assert_eq!(
            c.c2s(ACK, CISN + 1, SISN + 1 + 5_001, 0).write,
            write::SEQ_A
        );
        assert_eq!(c.rec.seq[0].ack, SISN + 1 + 5_001);
        assert_eq!(
            c.c2s_seg(seg(ACK, CISN + 1, SISN + 5_002, 0).win(WIN + 1))
                .write,
            write::SEQ_A
        );
        assert_eq!(c.rec.seq[0].win, WIN as u32 + 1);
        assert_eq!(
            c.c2s_seg(seg(ACK, CISN + 1, SISN + 5_002, 0).win(WIN - 1))
                .write,
            0,
            "a smaller window is not a reason to write"
        );
    }

    #[test]
    fn client_fin_moves_the_client_to_fin_wait1_and_the_server_to_close_wait() {
        for client in SIDES {
            let mut c = established_on(client);
            let st = c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
            assert_eq!(c.states(), (FinWait1, CloseWait));
            assert_eq!(
                st.write,
                write::WORD | write::seq(client) | write::SINCE_A | write::SINCE_B
            );
            assert_eq!(c.rec.seq[client.index()].end, CISN + 2);
            assert_eq!(st.handshake, Handshake::None);
        }
    }

    #[test]
    fn server_fin_moves_the_server_to_fin_wait1_and_the_client_to_close_wait() {
        for client in SIDES {
            let mut c = established_on(client);
            c.s2c(FIN | ACK, SISN + 1, CISN + 1, 0);
            assert_eq!(c.states(), (CloseWait, FinWait1));
        }
    }

    #[test]
    fn fin_payload_moves_the_fin_end_past_the_data() {
        let mut c = established();
        c.c2s(FIN | ACK | PSH, CISN + 1, SISN + 1, 100);
        assert_eq!(
            c.rec.seq[0].end,
            CISN + 102,
            "fin_seq = seq + len; end = fin_seq + 1"
        );
        c.s2c(ACK, SISN + 1, CISN + 101, 0);
        assert_eq!(
            c.states(),
            (FinWait1, CloseWait),
            "acks the data, not the FIN"
        );
        c.s2c(ACK, SISN + 1, CISN + 102, 0);
        assert_eq!(c.states(), (FinWait2, CloseWait));
    }

    #[test]
    fn fin_outside_the_receiver_window_is_rejected() {
        for (seq, len) in [
            (CISN + 1 + WIN_EDGE + 1, 0),
            (CISN + 1 + 1_000_000, 0),
            // Ends before the window starts: everything in it was already acknowledged.
            (CISN + 1 - 20, 10),
        ] {
            let mut c = established();
            let before = c.rec;
            let st = c.c2s(FIN | ACK, seq, SISN + 1, len);
            assert_rejected(&c, &st, &before, InvalidReason::FinOutOfWindow);
        }
    }

    #[test]
    fn fin_at_the_window_edges_is_accepted() {
        for (seq, len) in [(CISN + 1 + WIN_EDGE, 0), (CISN + 1 - 20, 20)] {
            let mut c = established();
            let st = c.c2s(FIN | ACK, seq, SISN + 1, len);
            assert_eq!(st.invalid, None, "seq {seq} len {len}");
            assert_eq!(c.states(), (FinWait1, CloseWait));
        }
    }

    #[test]
    fn rst_in_the_receiver_window_closes_both_sides() {
        for client in SIDES {
            for (from_client, offset) in [(true, 0), (true, WIN_EDGE), (false, 0), (false, 777)] {
                let mut c = established_on(client);
                let st = if from_client {
                    c.c2s(RST | ACK, CISN + 1 + offset, SISN + 1, 0)
                } else {
                    c.s2c(RST, SISN + 1 + offset, 0, 0)
                };
                assert_eq!(c.states(), (Closed, Closed));
                assert!(st.rst);
                assert!(c.word().has(flowflags::RESET));
                assert_eq!(st.handshake, Handshake::None, "no handshake in progress");
                assert!(!st.half_open_released);
                assert_eq!(st.write, write::WORD | write::SINCE_A | write::SINCE_B);
            }
        }
    }

    #[test]
    fn rst_outside_the_receiver_window_is_rejected_and_changes_nothing() {
        for from_client in [true, false] {
            for offset in [WIN_EDGE + 1, 1 << 20, 1 << 31, 0u32.wrapping_sub(1)] {
                let mut c = established();
                let before = c.rec;
                let st = if from_client {
                    c.c2s(RST | ACK, (CISN + 1).wrapping_add(offset), SISN + 1, 0)
                } else {
                    c.s2c(RST | ACK, (SISN + 1).wrapping_add(offset), CISN + 1, 0)
                };
                assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
                assert_eq!(
                    c.counter(idx::INVALID + InvalidReason::RstOutOfWindow as u32),
                    1
                );
            }
        }
    }

    #[test]
    fn syn_on_an_established_connection_is_unexpected() {
        for from_client in [true, false] {
            let mut c = established();
            let before = c.rec;
            let st = if from_client {
                c.c2s(SYN, CISN + 50, 0, 0)
            } else {
                c.s2c(SYN, SISN + 50, 0, 0)
            };
            assert_rejected(&c, &st, &before, InvalidReason::UnexpectedSyn);
        }
    }

    #[test]
    fn retransmitted_synack_after_the_final_ack_changes_nothing() {
        let mut c = established();
        let before = c.rec;
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.write, 0);
        assert_eq!(c.rec, before);
    }

    #[test]
    fn urgent_data_is_an_ordinary_segment() {
        let mut c = established();
        let st = c.c2s(ACK | URG | PSH, CISN + 1, SISN + 1, 10);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (Established, Established));
    }
}

mod invalid_flags {
    use super::*;

    const CASES: [(u8, InvalidReason); 9] = [
        (SYN | FIN, InvalidReason::SynFin),
        (SYN | FIN | ACK, InvalidReason::SynFin),
        (SYN | RST, InvalidReason::SynRst),
        (SYN | RST | ACK, InvalidReason::SynRst),
        (0, InvalidReason::NoFlags),
        (PSH, InvalidReason::NoFlags),
        (FIN, InvalidReason::BadFlags),
        (FIN | PSH | URG, InvalidReason::BadFlags),
        (RST | FIN | ACK, InvalidReason::BadFlags),
    ];

    #[test]
    fn impossible_flag_combinations_change_nothing_in_any_state_and_name_the_reason() {
        let fixtures: [fn() -> Conn; 8] = [
            syn_sent,
            syn_recv,
            established,
            fin_wait1,
            fin_wait2,
            closing,
            last_ack,
            time_wait,
        ];
        for fixture in fixtures {
            for (flags, why) in CASES {
                for from_client in [true, false] {
                    let mut c = fixture();
                    let before = c.rec;
                    // Numbers that would be acceptable with valid flags.
                    let st = if from_client {
                        c.c2s(flags, CISN + 1, SISN + 1, 0)
                    } else {
                        c.s2c(flags, SISN + 1, CISN + 1, 0)
                    };
                    assert_rejected(&c, &st, &before, why);
                    assert_eq!(c.counter(idx::INVALID + why as u32), 1, "flags {flags:#x}");
                }
            }
        }
    }
}

mod rst_in_every_state {
    use super::*;

    /// A fixture and the next sequence number its client and its server would send: an RST there
    /// is what a stack aborting the connection sends, and what RFC 5961 accepts exactly.
    type Case = (&'static str, fn() -> Conn, u32, u32);

    const CASES: [Case; 8] = [
        ("syn_recv", syn_recv, CISN + 1, SISN + 1),
        ("established", established, CISN + 1, SISN + 1),
        ("fin_wait1", fin_wait1, CISN + 2, SISN + 1),
        ("fin_wait2", fin_wait2, CISN + 2, SISN + 1),
        ("server_fin_wait1", server_fin_wait1, CISN + 1, SISN + 2),
        ("closing", closing, CISN + 2, SISN + 2),
        ("last_ack", last_ack, CISN + 2, SISN + 2),
        ("time_wait", time_wait, CISN + 2, SISN + 2),
    ];

    #[test]
    fn rst_at_the_senders_next_number_closes_both_and_counts_the_states_left() {
        for (name, fixture, client_next, server_next) in CASES {
            for from_client in [true, false] {
                let mut c = fixture();
                let (client_was, server_was) = c.states();
                let st = if from_client {
                    c.c2s(RST | ACK, client_next, server_next, 0)
                } else {
                    c.s2c(RST, server_next, 0, 0)
                };
                assert!(st.rst, "{name}, from client {from_client}");
                assert_eq!(c.states(), (Closed, Closed));
                assert!(c.word().has(flowflags::RESET));
                let (sent, received) = if from_client {
                    (client_was, server_was)
                } else {
                    (server_was, client_was)
                };
                assert_eq!(
                    c.counter(idx::resets(RstDirection::Sent, sent)),
                    1,
                    "{name}"
                );
                assert_eq!(c.counter(idx::resets(RstDirection::Received, received)), 1);
            }
        }
    }

    #[test]
    fn rst_outside_the_receivers_window_is_rejected_in_every_state() {
        for (name, fixture, client_next, server_next) in CASES {
            for from_client in [true, false] {
                let next = if from_client {
                    client_next
                } else {
                    server_next
                };
                for seq in [next + 4 * WIN as u32, next.wrapping_sub(WIN as u32)] {
                    let mut c = fixture();
                    let before = c.rec;
                    let st = if from_client {
                        c.c2s(RST | ACK, seq, server_next, 0)
                    } else {
                        c.s2c(RST, seq, 0, 0)
                    };
                    assert_eq!(
                        st.invalid,
                        Some(InvalidReason::RstOutOfWindow),
                        "{name} {seq}"
                    );
                    assert_eq!(except_last_seen(c.rec), except_last_seen(before));
                }
            }
        }
    }
}

mod fin_wait1 {
    use super::*;

    #[test]
    fn ack_of_the_fin_moves_the_closer_to_fin_wait2() {
        for client in SIDES {
            let mut c = fin_wait1_on(client);
            let server_since = c.since(c.server());
            let st = c.s2c(ACK, SISN + 1, CISN + 2, 0);
            assert_eq!(c.states(), (FinWait2, CloseWait));
            assert_eq!(st.write, write::WORD | write::since(client));
            assert_eq!(c.since(c.server()), server_since);
        }
    }

    #[test]
    fn ack_short_of_the_fin_leaves_fin_wait1() {
        let mut c = fin_wait1();
        let st = c.s2c(ACK, SISN + 1, CISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (FinWait1, CloseWait));
    }

    #[test]
    fn fin_that_acks_our_fin_goes_straight_to_time_wait() {
        for client in SIDES {
            let mut c = fin_wait1_on(client);
            let st = c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
            assert_eq!(c.states(), (TimeWait, LastAck));
            assert_eq!(
                st.write,
                write::WORD | write::seq(c.server()) | write::SINCE_A | write::SINCE_B
            );
        }
    }

    #[test]
    fn crossing_fins_are_a_simultaneous_close_with_both_sides_closing() {
        for client in SIDES {
            let mut c = fin_wait1_on(client);
            // The server's FIN does not acknowledge the client's: it was sent before the client's
            // FIN arrived, from ESTABLISHED (RFC 9293 figure 13). Both ends go to CLOSING.
            let st = c.s2c(FIN | ACK, SISN + 1, CISN + 1, 0);
            assert_eq!(st.invalid, None);
            assert_eq!(c.states(), (Closing, Closing));
            assert_eq!(c.gauge(Role::Client, Closing), 1);
            assert_eq!(c.gauge(Role::Server, Closing), 1);
            assert_eq!(c.gauge(Role::Server, LastAck), 0);
        }
    }

    #[test]
    fn retransmitted_fin_changes_nothing_but_last_seen() {
        let mut c = fin_wait1();
        c.next_second();
        let before = c.rec;
        let st = c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.write, write::LAST_SEEN);
        assert_eq!(except_last_seen(c.rec), except_last_seen(before));
    }

    #[test]
    fn close_wait_side_keeps_sending_data() {
        let mut c = fin_wait1();
        let st = c.s2c(ACK | PSH, SISN + 1, CISN + 1, 500);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (FinWait1, CloseWait));
        c.s2c(ACK | PSH, SISN + 501, CISN + 2, 500);
        assert_eq!(
            c.states(),
            (FinWait2, CloseWait),
            "the data segment acked the FIN"
        );
        c.c2s(ACK, CISN + 2, SISN + 1001, 0);
        assert_eq!(c.states(), (FinWait2, CloseWait));
    }

    #[test]
    fn rst_in_window_from_either_side_closes_both() {
        for from_client in [true, false] {
            let mut c = fin_wait1();
            let st = if from_client {
                c.c2s(RST, CISN + 2, 0, 0)
            } else {
                c.s2c(RST, SISN + 1, 0, 0)
            };
            assert!(st.rst);
            assert_eq!(c.states(), (Closed, Closed));
        }
    }
}

mod fin_wait2 {
    use super::*;

    #[test]
    fn peer_fin_moves_the_closer_to_time_wait_and_the_peer_to_last_ack() {
        for client in SIDES {
            let mut c = fin_wait2_on(client);
            c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
            assert_eq!(c.states(), (TimeWait, LastAck));
            assert_eq!(c.gauge(Role::Client, TimeWait), 1);
            assert_eq!(c.gauge(Role::Server, LastAck), 1);
        }
    }

    #[test]
    fn half_close_data_then_a_fin_with_payload_is_acked_after_the_payload() {
        let mut c = fin_wait2();
        for i in 0..3 {
            c.s2c(ACK | PSH, SISN + 1 + i * 1000, CISN + 2, 1000);
            c.c2s(ACK, CISN + 2, SISN + 1 + (i + 1) * 1000, 0);
            assert_eq!(c.states(), (FinWait2, CloseWait));
        }
        c.s2c(FIN | ACK | PSH, SISN + 3001, CISN + 2, 200);
        assert_eq!(c.states(), (TimeWait, LastAck));
        assert_eq!(c.rec.seq[1].end, SISN + 3202);
        c.c2s(ACK, CISN + 2, SISN + 3201, 0);
        assert_eq!(
            c.states(),
            (TimeWait, LastAck),
            "acks the payload, not the FIN"
        );
        c.c2s(ACK, CISN + 2, SISN + 3202, 0);
        assert_eq!(c.states(), (TimeWait, Closed));
    }

    #[test]
    fn fin_from_the_close_wait_side_outside_the_window_is_rejected() {
        let mut c = fin_wait2();
        let before = c.rec;
        let st = c.s2c(FIN | ACK, SISN + 1 + WIN_EDGE + 1, CISN + 2, 0);
        assert_rejected(&c, &st, &before, InvalidReason::FinOutOfWindow);
    }

    #[test]
    fn retransmitted_fin_changes_nothing() {
        let mut c = fin_wait2();
        let before = c.rec;
        let st = c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.write, 0);
        assert_eq!(c.rec, before);
    }
}

mod close_wait {
    use super::*;

    #[test]
    fn server_first_close_walks_every_state_on_both_ends() {
        for client in SIDES {
            let mut c = server_fin_wait1_on(client);
            c.c2s(ACK, CISN + 1, SISN + 2, 0);
            assert_eq!(c.states(), (CloseWait, FinWait2));
            // Half-close: the client, in CLOSE_WAIT, keeps sending.
            c.c2s(ACK | PSH, CISN + 1, SISN + 2, 300);
            c.s2c(ACK, SISN + 2, CISN + 301, 0);
            assert_eq!(c.states(), (CloseWait, FinWait2));
            c.c2s(FIN | ACK, CISN + 301, SISN + 2, 0);
            assert_eq!(c.states(), (LastAck, TimeWait));
            let st = c.s2c(ACK, SISN + 2, CISN + 302, 0);
            assert_eq!(c.states(), (Closed, TimeWait));
            assert_eq!(st.write, write::WORD | write::since(client));
            assert_eq!(c.gauge(Role::Server, TimeWait), 1);
            assert_eq!(c.gauge(Role::Client, LastAck), 0);
        }
    }
}

mod closing {
    use super::*;

    #[test]
    fn acks_of_both_fins_take_both_sides_to_time_wait() {
        for client in SIDES {
            let mut c = closing_on(client);
            c.c2s(ACK, CISN + 2, SISN + 2, 0);
            assert_eq!(c.states(), (Closing, TimeWait));
            c.s2c(ACK, SISN + 2, CISN + 2, 0);
            assert_eq!(c.states(), (TimeWait, TimeWait));
            assert_eq!(c.gauge(Role::Client, TimeWait), 1);
            assert_eq!(c.gauge(Role::Server, TimeWait), 1);
        }
    }

    #[test]
    fn retransmitted_fins_change_nothing() {
        let mut c = closing();
        let before = c.rec;
        assert_eq!(c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0).write, 0);
        assert_eq!(c.s2c(FIN | ACK, SISN + 1, CISN + 1, 0).write, 0);
        assert_eq!(c.rec, before);
    }

    #[test]
    fn syn_on_both_time_wait_starts_a_new_connection() {
        let mut c = closing();
        c.c2s(ACK, CISN + 2, SISN + 2, 0);
        c.s2c(ACK, SISN + 2, CISN + 2, 0);
        c.c2s(SYN, CISN + 100_000, 0, 0);
        assert_eq!(c.states(), (SynSent, Closed));
    }

    #[test]
    fn rst_in_window_closes_both() {
        let mut c = closing();
        let st = c.s2c(RST, SISN + 2, 0, 0);
        assert!(st.rst);
        assert_eq!(c.states(), (Closed, Closed));
    }
}

mod last_ack {
    use super::*;

    #[test]
    fn final_ack_closes_the_last_ack_side() {
        for client in SIDES {
            let mut c = last_ack_on(client);
            let client_since = c.since(client);
            let st = c.c2s(ACK, CISN + 2, SISN + 2, 0);
            assert_eq!(c.states(), (TimeWait, Closed));
            assert_eq!(st.write, write::WORD | write::since(c.server()));
            assert_eq!(c.since(client), client_since);
            assert_eq!(c.gauge(Role::Server, LastAck), 0);
        }
    }

    #[test]
    fn ack_short_of_the_fin_leaves_last_ack() {
        let mut c = last_ack();
        c.c2s(ACK, CISN + 2, SISN + 1, 0);
        assert_eq!(c.states(), (TimeWait, LastAck));
    }

    #[test]
    fn retransmitted_fin_restarts_time_wait_and_changes_nothing_else() {
        let mut c = last_ack();
        let before = c.rec;
        let st = c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (TimeWait, LastAck));
        assert_eq!(
            st.write,
            write::SINCE_A,
            "only the TIME_WAIT side's 2MSL restarts"
        );
        assert_eq!(c.since(Side::A), c.now);
        let mut expect = before;
        expect.since_ns[0] = c.now;
        assert_eq!(c.rec, expect);
    }

    #[test]
    fn rst_in_window_closes_both_and_out_of_window_is_rejected() {
        let mut c = last_ack();
        let before = c.rec;
        let st = c.s2c(RST, SISN + 2 + 4 * WIN as u32, 0, 0);
        assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
        let st = c.s2c(RST, SISN + 2, 0, 0);
        assert!(st.rst);
        assert_eq!(c.states(), (Closed, Closed));
    }
}

mod time_wait {
    use super::*;

    #[test]
    fn a_syn_reusing_the_port_is_a_new_connection_not_a_retransmission() {
        for isn in [CISN + 100_000, CISN] {
            let mut c = time_wait();
            let st = c.c2s(SYN, isn, 0, 0);
            assert_eq!(c.states(), (SynSent, Closed));
            assert_eq!(st.retransmit, Retransmit::None, "ISN {isn}");
            // The new connection's own SYN sent again is one.
            assert_eq!(c.c2s(SYN, isn, 0, 0).retransmit, Retransmit::Syn);
            assert_eq!(retransmits(&c), (1, 0));
        }
    }

    #[test]
    fn fin_resent_after_a_lost_final_ack_revives_last_ack_and_restarts_time_wait() {
        for client in SIDES {
            let mut c = time_wait_on(client);
            let st = c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
            assert_eq!(st.invalid, None);
            assert_eq!(c.states(), (TimeWait, LastAck));
            assert_eq!(st.write, write::WORD | write::SINCE_A | write::SINCE_B);
            assert_eq!(c.since(client), c.now, "TIME_WAIT restarts its 2MSL timer");
            assert_eq!(c.gauge(Role::Server, LastAck), 1);
            // The new final ACK gets through.
            c.c2s(ACK, CISN + 2, SISN + 2, 0);
            assert_eq!(c.states(), (TimeWait, Closed));
            assert_eq!(c.gauge(Role::Server, LastAck), 0);
        }
    }

    #[test]
    fn syn_from_the_client_reuses_the_port_for_a_new_connection() {
        let mut c = time_wait();
        let server_since = c.since(Side::B);
        let st = c.c2s(SYN, CISN + 100_000, 0, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(c.states(), (SynSent, Closed));
        assert_eq!(
            st.write,
            write::WORD | write::SEQ_A | write::SEQ_B | write::SINCE_A | write::SYN_NS
        );
        assert_eq!(c.rec.syn_ns, c.now);
        assert_eq!(c.since(Side::B), server_since);
        assert_eq!(c.rec.seq[0].isn, CISN + 100_000);
        assert_eq!(
            c.rec.seq[1],
            Default::default(),
            "the old server's facts are gone"
        );
        assert_eq!(c.gauge(Role::Client, TimeWait), 0);
        assert_eq!(c.gauge(Role::Client, SynSent), 1);
        // The new connection runs its own handshake; the old numbers mean nothing any more.
        let before = c.rec;
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_rejected(&c, &st, &before, InvalidReason::BadSynAck);
        c.s2c(SYN | ACK, 77, CISN + 100_001, 0);
        c.c2s(ACK, CISN + 100_001, 78, 0);
        assert_eq!(c.states(), (Established, Established));
    }

    #[test]
    fn syn_from_the_former_server_reuses_the_port_with_the_roles_swapped() {
        for client in SIDES {
            let mut c = time_wait_on(client);
            let server = c.server();
            let st = c.s2c(SYN, SISN + 100_000, 0, 0);
            assert_eq!(st.invalid, None);
            let w = c.word();
            assert_eq!(w.client(), server, "the new SYN's sender is the client");
            assert_eq!(w.state(server), SynSent);
            assert_eq!(w.state(client), Closed);
            assert_eq!(c.gauge(Role::Client, TimeWait), 0);
            assert_eq!(c.gauge(Role::Client, SynSent), 1);
            assert_eq!(c.gauge(Role::Server, SynSent), 0);
            // And the old client answers as the new server.
            c.c2s(SYN | ACK, 4242, SISN + 100_001, 0);
            assert_eq!(w.role(client), Role::Server);
            assert_eq!(c.word().state(client), SynRecv);
            assert_eq!(c.word().state(server), Established);
        }
    }

    #[test]
    fn late_ack_from_the_time_wait_side_changes_nothing() {
        let mut c = time_wait();
        let before = c.rec;
        let st = c.c2s(ACK, CISN + 2, SISN + 2, 0);
        assert_eq!(st.invalid, None);
        assert_eq!(st.write, 0);
        assert_eq!(c.rec, before);
    }

    #[test]
    fn rst_in_window_closes_both_and_out_of_window_is_rejected() {
        for from_client in [true, false] {
            let mut c = time_wait();
            let before = c.rec;
            let (seq_in, seq_out) = if from_client {
                (CISN + 2, CISN + 2 + 4 * WIN as u32)
            } else {
                (SISN + 2, SISN + 2 + 4 * WIN as u32)
            };
            let sender = if from_client { Side::A } else { Side::B };
            let st = c.send(sender, seg(RST, seq_out, 0, 0));
            assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
            let st = c.send(sender, seg(RST, seq_in, 0, 0));
            assert!(st.rst);
            assert_eq!(c.states(), (Closed, Closed));
        }
    }

    #[test]
    fn anything_but_a_syn_on_a_closed_flow_is_rejected() {
        let mut c = established();
        c.c2s(RST, CISN + 1, 0, 0);
        for (from_client, flags) in [
            (true, ACK),
            (false, FIN | ACK),
            (false, RST),
            (true, SYN | ACK),
        ] {
            let before = c.rec;
            let st = if from_client {
                c.c2s(flags, CISN + 1, SISN + 1, 0)
            } else {
                c.s2c(flags, SISN + 1, CISN + 1, 0)
            };
            let why = if flags & SYN != 0 {
                InvalidReason::UnexpectedSyn
            } else {
                InvalidReason::ClosedFlow
            };
            assert_rejected(&c, &st, &before, why);
        }
    }

    #[test]
    fn syn_on_a_reset_flow_starts_a_new_connection() {
        for from_client in [true, false] {
            let mut c = established();
            c.c2s(RST, CISN + 1, 0, 0);
            assert!(c.word().has(flowflags::RESET));
            let st = if from_client {
                c.c2s(SYN, 5, 0, 0)
            } else {
                c.s2c(SYN, 5, 0, 0)
            };
            assert_eq!(st.invalid, None);
            let w = c.word();
            let sender = if from_client { Side::A } else { Side::B };
            assert_eq!(w.client(), sender);
            assert_eq!(w.state(sender), SynSent);
            assert_eq!(w.state(sender.other()), Closed);
            assert!(!w.has(flowflags::RESET), "the new connection was not reset");
        }
    }
}

mod wraparound {
    use super::*;

    #[test]
    fn handshake_data_and_close_across_the_2_32_boundary() {
        let cisn = u32::MAX - 1; // the SYN's end is u32::MAX
        let sisn = u32::MAX; // the SYN-ACK's end is 0
        let mut c = Conn::start(Side::A, BOTH, cisn);
        c.s2c(SYN | ACK, sisn, u32::MAX, 0);
        assert_eq!(c.states(), (Established, SynRecv));
        c.c2s(ACK, u32::MAX, 0, 0);
        assert_eq!(c.states(), (Established, Established));
        // 100 bytes at u32::MAX..=98, then a FIN at 99 with 10 more bytes: end = 110.
        c.c2s(ACK | PSH, u32::MAX, 0, 100);
        c.s2c(ACK, 0, 99, 0);
        let st = c.c2s(FIN | ACK, 99, 0, 10);
        assert_eq!(st.invalid, None);
        assert_eq!(c.rec.seq[0].end, 110);
        c.s2c(ACK, 0, 109, 0);
        assert_eq!(c.states(), (FinWait1, CloseWait));
        c.s2c(ACK, 0, 110, 0);
        assert_eq!(c.states(), (FinWait2, CloseWait));
        c.s2c(FIN | ACK, 0, 110, 0);
        c.c2s(ACK, 110, 1, 0);
        assert_eq!(c.states(), (TimeWait, Closed));
    }

    #[test]
    fn fin_payload_straddling_the_boundary_wraps_its_end() {
        let mut c = Conn::start(Side::A, BOTH, u32::MAX - 100);
        c.s2c(SYN | ACK, SISN, u32::MAX - 99, 0);
        c.c2s(ACK, u32::MAX - 99, SISN + 1, 0);
        c.c2s(FIN | ACK, u32::MAX - 9, SISN + 1, 20);
        assert_eq!(c.rec.seq[0].end, 11);
        c.s2c(ACK, SISN + 1, 10, 0);
        assert_eq!(c.states(), (FinWait1, CloseWait));
        c.s2c(ACK, SISN + 1, 11, 0);
        assert_eq!(c.states(), (FinWait2, CloseWait));
    }

    #[test]
    fn rst_window_spans_the_boundary() {
        // The client's receive window starts at u32::MAX - 100 and is WIN_EDGE long.
        let sisn = u32::MAX - 101;
        let build = || {
            let mut c = Conn::start(Side::A, BOTH, CISN);
            c.s2c(SYN | ACK, sisn, CISN + 1, 0);
            c.c2s(ACK, CISN + 1, sisn + 1, 0);
            c
        };
        let last_in = (sisn + 1).wrapping_add(WIN_EDGE);
        assert!(last_in < 20_000, "the window's end wrapped");
        let mut c = build();
        let before = c.rec;
        let st = c.s2c(RST, last_in + 1, 0, 0);
        assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
        let st = c.s2c(RST, last_in, 0, 0);
        assert!(st.rst);
        let mut c = build();
        let st = c.s2c(RST, 5, 0, 0);
        assert!(st.rst, "wrapped sequence number inside the window");
    }
}

mod window_scale {
    use super::*;

    /// Handshake with the given shifts, then the server advertises a raw window of 1000.
    fn scaled(client_ws: u8, server_ws: u8) -> Conn {
        let (_, mut c) = Conn::open(
            Side::A,
            BOTH,
            seg(SYN, CISN, 0, 0).ws(client_ws),
            [CPORT, SPORT],
        );
        c.s2c_seg(seg(SYN | ACK, SISN, CISN + 1, 0).ws(server_ws));
        c.c2s(ACK, CISN + 1, SISN + 1, 0);
        c.s2c_seg(seg(ACK, SISN + 1, CISN + 1, 0).win(1000));
        c
    }

    #[test]
    fn both_syns_carrying_window_scale_put_it_in_effect() {
        let mut c = scaled(7, 9);
        assert_eq!(c.word().wscale, [7, 9]);
        // 1000 << 9 = 512000 bytes: 100 kB ahead of the server's ack is inside.
        let st = c.c2s(RST, CISN + 1 + 100_000, 0, 0);
        assert!(st.rst);
    }

    #[test]
    fn one_syn_without_window_scale_turns_scaling_off() {
        for (client_ws, server_ws) in [(7, WSCALE_NONE), (WSCALE_NONE, 9)] {
            let mut c = scaled(client_ws, server_ws);
            assert_eq!(c.word().wscale, [0, 0]);
            let before = c.rec;
            // Unscaled the server's window is at most WIN bytes.
            let st = c.c2s(RST, CISN + 1 + 100_000, 0, 0);
            assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
        }
    }

    #[test]
    fn syn_and_synack_windows_are_never_scaled() {
        // RFC 7323 section 2.2: the window field of a SYN or SYN-ACK is not scaled.
        let (_, mut c) = Conn::open(Side::A, BOTH, seg(SYN, CISN, 0, 0).ws(7), [CPORT, SPORT]);
        c.s2c_seg(seg(SYN | ACK, SISN, CISN + 1, 0).ws(9));
        assert_eq!(c.rec.seq[1].win, WIN as u32);
        let before = c.rec;
        let st = c.c2s(RST, CISN + 1 + WIN_EDGE + 1, 0, 0);
        assert_rejected(&c, &st, &before, InvalidReason::RstOutOfWindow);
        let st = c.c2s(RST, CISN + 1 + WIN_EDGE, 0, 0);
        assert!(st.rst);
    }
}

mod counters {
    use super::*;

    #[test]
    fn only_a_counted_server_counts_its_handshakes_sent_again() {
        // Host mode on the client: its SYN sent again to a remote listener, and that listener's
        // SYN-ACK sent again, are the remote server's drops, not a local listener's.
        let (_, mut c) = Conn::open(Side::A, Side::A.bit(), seg(SYN, CISN, 0, 0), ports(Side::A));
        let st = c.c2s(SYN, CISN, 0, 0);
        assert_eq!(
            st.retransmit,
            Retransmit::Syn,
            "the state machine reports it"
        );
        assert_eq!(retransmitted(&st), None, "the counters leave it out");
        c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(retransmits(&c), (0, 0));
        // Host mode on the server counts both.
        let (_, mut c) = Conn::open(Side::A, Side::B.bit(), seg(SYN, CISN, 0, 0), ports(Side::A));
        c.c2s(SYN, CISN, 0, 0);
        c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(retransmitted(&st), Some(Retransmit::SynAck));
        assert_eq!(retransmits(&c), (1, 1));
    }

    fn conn(role: Role, state: TcpState, d: i64) -> (u32, i64) {
        (idx::conn(role, state), d)
    }

    fn resets(dir: RstDirection, state: TcpState) -> (u32, i64) {
        (idx::resets(dir, state), 1)
    }

    fn handshake(h: Handshake) -> (u32, i64) {
        (idx::HANDSHAKES + h as u32 - 1, 1)
    }

    /// The histogram bucket and the sum a handshake of `ns` nanoseconds moves for `role`.
    fn duration(role: Role, ns: u64) -> [(u32, i64); 2] {
        let bucket = role as u32 * idx::HANDSHAKE_BUCKETS_PER_ROLE + handshake_bucket(ns);
        [
            (idx::HANDSHAKE_BUCKETS + bucket, 1),
            (idx::HANDSHAKE_SUM_NS + role as u32, ns as i64),
        ]
    }

    #[test]
    fn opening_counts_from_an_all_closed_word() {
        let s = seg(SYN, CISN, 0, 0);
        let (_, st) = open(Side::B, &s, BOTH, T0, [SPORT, CPORT]).unwrap();
        let before = FlowWord {
            counted: BOTH,
            ..FlowWord::default()
        };
        assert_eq!(
            deltas(before, &st, Side::B),
            [conn(Role::Client, SynSent, 1)]
        );

        // Picked up midstream: nothing counted until the other side is seen.
        let s = seg(ACK, 1, 2, 0);
        let (_, st) = open(Side::A, &s, BOTH, T0, [SPORT, CPORT]).unwrap();
        assert_eq!(deltas(before, &st, Side::A), []);
    }

    #[test]
    fn tap_mode_moves_every_endpoint_whose_state_changed() {
        let mut c = syn_sent();
        let old = c.word();
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        // The client's handshake ends here, one segment (1 ms of fixture time) after its SYN.
        let mut want = vec![
            conn(Role::Client, SynSent, -1),
            conn(Role::Client, Established, 1),
        ];
        want.extend(duration(Role::Client, 1_000_000));
        want.push(conn(Role::Server, SynRecv, 1));
        assert_eq!(deltas(old, &st, Side::B), want);
    }

    #[test]
    fn host_mode_counts_only_the_local_endpoint() {
        // Host mode on the server: only side B is counted.
        let mut c = Conn::start(Side::A, Side::B.bit(), CISN);
        assert!(c.counters.is_empty(), "the client is not ours");
        let old = c.word();
        let st = c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        assert_eq!(deltas(old, &st, Side::B), [conn(Role::Server, SynRecv, 1)]);
        let old = c.word();
        let st = c.c2s(ACK, CISN + 1, SISN + 1, 0);
        // The server's handshake: SYN to final ACK, two segments of fixture time.
        let mut want = vec![
            conn(Role::Server, SynRecv, -1),
            conn(Role::Server, Established, 1),
        ];
        want.extend(duration(Role::Server, 2_000_000));
        want.push(handshake(Handshake::Established));
        assert_eq!(deltas(old, &st, Side::A), want);
        // The client's own transitions move nothing.
        let old = c.word();
        let st = c.s2c(FIN | ACK, SISN + 1, CISN + 1, 0);
        assert_eq!(
            deltas(old, &st, Side::B),
            [
                conn(Role::Server, Established, -1),
                conn(Role::Server, FinWait1, 1)
            ]
        );
        let old = c.word();
        let st = c.c2s(ACK, CISN + 1, SISN + 1, 0);
        assert_eq!(st.write, 0);
        assert_eq!(deltas(old, &st, Side::A), []);
        assert_eq!(c.gauge(Role::Client, CloseWait), 0);
    }

    #[test]
    fn rst_counts_once_per_counted_side_with_its_direction_and_prior_state() {
        let mut c = fin_wait2();
        let old = c.word();
        let st = c.c2s(RST, CISN + 2, 0, 0);
        assert_eq!(
            deltas(old, &st, Side::A),
            [
                conn(Role::Client, FinWait2, -1),
                resets(RstDirection::Sent, FinWait2),
                conn(Role::Server, CloseWait, -1),
                resets(RstDirection::Received, CloseWait),
            ]
        );

        // Host mode on the server: only the server's view, as received.
        let mut c = Conn::start(Side::A, Side::B.bit(), CISN);
        c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        c.c2s(ACK, CISN + 1, SISN + 1, 0);
        let old = c.word();
        let st = c.c2s(RST | ACK, CISN + 1, SISN + 1, 0);
        assert_eq!(
            deltas(old, &st, Side::A),
            [
                conn(Role::Server, Established, -1),
                resets(RstDirection::Received, Established)
            ]
        );
    }

    #[test]
    fn refused_connection_counts_the_rst_and_the_refused_handshake() {
        // On the client's host: the client received the RST in SYN_SENT.
        let mut c = Conn::start(Side::A, Side::A.bit(), CISN);
        let old = c.word();
        let st = c.s2c(RST | ACK, 0, CISN + 1, 0);
        assert_eq!(
            deltas(old, &st, Side::B),
            [
                conn(Role::Client, SynSent, -1),
                resets(RstDirection::Received, SynSent),
                handshake(Handshake::Refused),
            ]
        );
        // On the server's host: nothing listened, the RST left from a closed endpoint.
        let mut c = Conn::start(Side::A, Side::B.bit(), CISN);
        let old = c.word();
        let st = c.s2c(RST | ACK, 0, CISN + 1, 0);
        assert_eq!(
            deltas(old, &st, Side::B),
            [
                resets(RstDirection::Sent, Closed),
                handshake(Handshake::Refused)
            ]
        );
    }

    #[test]
    fn rejected_segment_counts_only_its_reason() {
        let mut c = established();
        let old = c.word();
        let st = c.c2s(RST, CISN + 1 + 4 * WIN as u32, 0, 0);
        assert_eq!(
            deltas(old, &st, Side::A),
            [(idx::INVALID + InvalidReason::RstOutOfWindow as u32, 1)]
        );
    }

    #[test]
    fn port_reuse_by_the_former_server_moves_the_gauges_to_the_new_roles() {
        let mut c = time_wait();
        let old = c.word();
        let st = c.s2c(SYN, 5, 0, 0);
        assert_eq!(
            deltas(old, &st, Side::B),
            [
                conn(Role::Client, TimeWait, -1),
                conn(Role::Client, SynSent, 1)
            ]
        );
    }

    #[test]
    fn revived_last_ack_is_counted_again() {
        let mut c = time_wait();
        let old = c.word();
        let st = c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
        assert_eq!(deltas(old, &st, Side::B), [conn(Role::Server, LastAck, 1)]);
    }

    #[test]
    fn a_full_connection_leaves_only_the_time_wait_gauge() {
        let c = time_wait();
        let nonzero: Vec<_> = c
            .counters
            .iter()
            .filter(|(&slot, &v)| slot < idx::SEGMENTS && v != 0)
            .map(|(&slot, &v)| (slot, v as i64))
            .collect();
        assert_eq!(nonzero, [conn(Role::Client, TimeWait, 1)]);
        assert_eq!(c.counter(idx::HANDSHAKES), 1);
    }
}

/// Which stamps the kernel redoes with its precise (and costlier) clock.
mod clocks {
    use super::*;

    #[test]
    fn only_handshake_stamps_need_the_precise_clock() {
        let (c, s) = (Side::A, Side::B);
        let (_, syn) = open(c, &seg(SYN, CISN, 0, 0), BOTH, T0, [CPORT, SPORT]).expect("opens");
        assert!(
            syn.needs_precise_clock(FlowWord::default()),
            "the SYN's time"
        );
        let old = syn.rec.word();
        let synack = step(&syn.rec, s, &seg(SYN | ACK, SISN, CISN + 1, 0), T0 + MS);
        assert!(
            synack.needs_precise_clock(old),
            "the client leaves SYN_SENT"
        );
        let old = synack.rec.word();
        let ack = step(
            &synack.rec,
            c,
            &seg(ACK, CISN + 1, SISN + 1, 0),
            T0 + 2 * MS,
        );
        assert!(ack.needs_precise_clock(old), "the server leaves SYN_RECV");
        let old = ack.rec.word();
        let fin = step(
            &ack.rec,
            c,
            &seg(FIN | ACK, CISN + 1, SISN + 1, 0),
            T0 + 3 * MS,
        );
        assert_ne!(fin.write & write::since(c), 0, "the FIN moved the client");
        assert!(
            !fin.needs_precise_clock(old),
            "closing stamps (ages, CLOSE_WAIT dwell, lifetimes) take the tick's resolution"
        );
        let old = fin.rec.word();
        let rst = step(&fin.rec, s, &seg(RST, SISN + 1, 0, 0), T0 + 4 * MS);
        assert!(rst.rst, "an exact RST is accepted");
        assert!(!rst.needs_precise_clock(old));
    }
}

/// Zero-window stalls (RFC 9293 section 3.8.6.1): an endpoint whose receive buffer is full
/// advertises a window of 0 until its application reads.
mod zero_window {
    use super::*;

    fn stalls(c: &Conn) -> (u64, u64) {
        (
            c.counter(idx::ZERO_WINDOW_STALLS + Stall::Local as u32),
            c.counter(idx::ZERO_WINDOW_STALLS + Stall::Remote as u32),
        )
    }

    #[test]
    fn a_zero_window_begins_a_stall_once_and_an_open_one_ends_it() {
        let mut c = established_on(Side::A);
        let (client, server) = (c.client, c.server());
        // The server's application stops reading: its buffer fills, it advertises 0.
        let st = c.s2c_seg(seg(ACK, SISN + 1, CISN + 1 + 5000, 0).win(0));
        assert!(st.stalled);
        assert!(c.word().zero_window(server) && !c.word().zero_window(client));
        assert_ne!(st.write & write::STALL, 0);
        assert_eq!(c.rec.stall_tick, FlowRecord::seen_tick(c.now));
        // Tap mode counts both ends: the server's own stall, and its peer's view of it.
        assert_eq!(stalls(&c), (1, 1));
        // The client probes the zero window; the server answers with 0 again: no change.
        c.c2s(ACK, CISN + 1 + 5000, SISN + 1, 1);
        let probe_ack = seg(ACK, SISN + 1, CISN + 1 + 5000, 0).win(0);
        let st = c.s2c_seg(probe_ack);
        assert!(!st.stalled);
        assert_eq!(
            st.write & !write::LAST_SEEN,
            0,
            "a stall going on writes nothing"
        );
        assert!(
            quiet(&c.rec, server, &probe_ack, c.now),
            "the stalled flow's probes take the quiet path"
        );
        assert_eq!(stalls(&c), (1, 1));
        // The application reads: the window opens.
        let st = c.s2c(ACK, SISN + 1, CISN + 1 + 5000, 0);
        assert!(!st.stalled);
        assert_ne!(st.write & write::WORD, 0);
        assert!(!c.word().zero_window(server));
        assert_eq!(stalls(&c), (1, 1), "only stalls begun are counted");
    }

    #[test]
    fn the_quiet_path_notices_a_window_closing_or_opening() {
        let mut c = established_on(Side::A);
        c.next_second();
        c.s2c(ACK, SISN + 1, CISN + 1, 0);
        let zero = seg(ACK, SISN + 1, CISN + 1, 0).win(0);
        assert!(quiet(
            &c.rec,
            c.server(),
            &seg(ACK, SISN + 1, CISN + 1, 0),
            c.now
        ));
        assert!(
            !quiet(&c.rec, c.server(), &zero, c.now),
            "a closing window is news"
        );
        c.s2c_seg(zero);
        assert!(quiet(&c.rec, c.server(), &zero, c.now));
        assert!(
            !quiet(&c.rec, c.server(), &seg(ACK, SISN + 1, CISN + 1, 0), c.now),
            "an opening window is news"
        );
    }

    #[test]
    fn only_an_ack_from_an_endpoint_that_still_receives_stalls() {
        // A SYN's window of 0 is no full buffer.
        let mut c = syn_sent_on(Side::A);
        let st = c.s2c_seg(seg(SYN | ACK, SISN, CISN + 1, 0).win(0));
        assert!(!st.stalled);
        // A server that closed (LAST_ACK) receives nothing more.
        let mut c = last_ack_on(Side::A);
        let st = c.s2c_seg(seg(ACK, SISN + 2, CISN + 2, 0).win(0));
        assert!(!st.stalled && !c.word().zero_window(c.server()));
        // An RST's window means nothing.
        let mut c = established_on(Side::A);
        let st = c.s2c_seg(seg(RST | ACK, SISN + 1, CISN + 1, 0).win(0));
        assert!(st.rst && !st.stalled);
    }

    #[test]
    fn a_stall_ends_with_the_connection() {
        let mut c = established_on(Side::A);
        let server = c.server();
        c.s2c_seg(seg(ACK, SISN + 1, CISN + 1, 0).win(0));
        assert!(c.word().zero_window(server));
        // The client gives up on the stalled server and resets the connection.
        let st = c.c2s(RST, CISN + 1, 0, 0);
        assert!(st.rst);
        assert!(
            !c.word().zero_window(server),
            "a closed endpoint stalls nobody"
        );
    }

    #[test]
    fn a_half_closed_reader_can_still_stall() {
        // The client sent its FIN (FIN_WAIT_2) and still receives the server's data.
        let mut c = fin_wait2_on(Side::A);
        let client = c.client;
        let st = c.c2s_seg(seg(ACK, CISN + 2, SISN + 1 + 9000, 0).win(0));
        assert!(st.stalled && c.word().zero_window(client));
        // Host mode counting only the server: it sees a remote stall.
        let mut host = Conn::start(Side::A, Side::B.bit(), CISN);
        host.s2c(SYN | ACK, SISN, CISN + 1, 0);
        host.c2s(ACK, CISN + 1, SISN + 1, 0);
        host.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
        host.s2c(ACK, SISN + 1, CISN + 2, 0);
        assert_eq!(host.states(), (FinWait2, CloseWait));
        let st = host.c2s_seg(seg(ACK, CISN + 2, SISN + 1 + 9000, 0).win(0));
        let mut v = Vec::new();
        for_each_delta(st.rec.word(), &st, client, |slot, d| v.push((slot, d)));
        assert!(v.contains(&(idx::ZERO_WINDOW_STALLS + Stall::Remote as u32, 1)));
        assert!(!v
            .iter()
            .any(|&(s, _)| s == idx::ZERO_WINDOW_STALLS + Stall::Local as u32));
    }
}

/// What a connection's close measures: how long the endpoint that received the first FIN stayed
/// in CLOSE_WAIT, and every counted endpoint's lifetime from the SYN.
mod durations_ended {
    use super::*;

    fn ended(c: &Conn, m: Measure, side: Side) -> Vec<u64> {
        c.ended
            .iter()
            .filter(|&&(mm, s, _)| mm == m && s == side)
            .map(|&(_, _, ns)| ns)
            .collect()
    }

    #[test]
    fn the_passive_closer_is_timed_from_the_peers_fin_to_its_own() {
        let mut c = fin_wait2_on(Side::A);
        let server = c.server();
        let entered = c.since(server);
        // The application takes 5 s to close.
        c.now += 5 * NS;
        c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
        assert_eq!(c.states(), (TimeWait, LastAck));
        assert_eq!(
            ended(&c, Measure::CloseWait, server),
            vec![5 * NS + MS + (c.now - 5 * NS - MS - entered)]
        );
        assert_eq!(ended(&c, Measure::CloseWait, server), vec![c.now - entered]);
        // Both FINs are out: the client's lifetime ends in TIME_WAIT, the server's in LAST_ACK.
        assert_eq!(
            ended(&c, Measure::ClientLifetime, c.client),
            vec![c.now - T0]
        );
        assert_eq!(ended(&c, Measure::ServerLifetime, server), vec![c.now - T0]);
        c.c2s(ACK, CISN + 2, SISN + 2, 0);
        assert_eq!(c.ended.len(), 3, "one dwell, two lifetimes: {:?}", c.ended);
    }

    #[test]
    fn an_rst_ends_a_close_wait_and_both_lifetimes() {
        let mut c = fin_wait1_on(Side::A);
        let server = c.server();
        let entered = c.since(server);
        c.s2c(RST, SISN + 1, 0, 0);
        assert_eq!(ended(&c, Measure::CloseWait, server), vec![c.now - entered]);
        assert_eq!(ended(&c, Measure::ServerLifetime, server), vec![c.now - T0]);
        assert_eq!(
            ended(&c, Measure::ClientLifetime, c.client),
            vec![c.now - T0]
        );
    }

    #[test]
    fn a_simultaneous_close_waits_in_no_close_wait() {
        let mut c = closing_on(Side::A);
        c.c2s(ACK, CISN + 2, SISN + 2, 0);
        c.s2c(ACK, SISN + 2, CISN + 2, 0);
        assert_eq!(c.states(), (TimeWait, TimeWait));
        assert!(ended(&c, Measure::CloseWait, Side::A).is_empty());
        assert!(ended(&c, Measure::CloseWait, Side::B).is_empty());
        assert_eq!(ended(&c, Measure::ClientLifetime, c.client).len(), 1);
        assert_eq!(ended(&c, Measure::ServerLifetime, c.server()).len(), 1);
    }

    #[test]
    fn a_handshake_that_fails_is_no_connection() {
        let mut c = syn_sent_on(Side::A);
        c.s2c(RST | ACK, 0, CISN + 1, 0);
        assert!(c.ended.is_empty(), "refused: {:?}", c.ended);
        let mut c = syn_recv_on(Side::A);
        c.c2s(RST, CISN + 1, 0, 0);
        // The client was ESTABLISHED (it had the SYN-ACK): its connection lived and ended.
        assert!(ended(&c, Measure::ServerLifetime, c.server()).is_empty());
        assert_eq!(ended(&c, Measure::ClientLifetime, c.client).len(), 1);
    }

    #[test]
    fn retransmitted_fins_and_late_acks_end_nothing_twice() {
        let mut c = time_wait_on(Side::A);
        let before = c.ended.len();
        // The client's final ACK again, a late FIN of the server again.
        c.c2s(ACK, CISN + 2, SISN + 2, 0);
        c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
        c.c2s(ACK, CISN + 2, SISN + 2, 0);
        assert_eq!(c.ended.len(), before);
    }

    #[test]
    fn uncounted_and_seeded_endpoints_are_not_measured() {
        // Host mode watching the client only: the server's CLOSE_WAIT is not ours to time.
        let mut c = Conn::start(Side::A, Side::A.bit(), CISN);
        c.s2c(SYN | ACK, SISN, CISN + 1, 0);
        c.c2s(ACK, CISN + 1, SISN + 1, 0);
        c.c2s(FIN | ACK, CISN + 1, SISN + 1, 0);
        c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
        assert!(ended(&c, Measure::CloseWait, Side::B).is_empty());
        assert_eq!(ended(&c, Measure::ClientLifetime, Side::A).len(), 1);
        // A CLOSE_WAIT the daemon seeded: its stamp is when the daemon found it.
        let mut c = fin_wait2_on(Side::A);
        let mut w = c.word();
        w.flags |= flowflags::SEEDED;
        c.rec.set_word(w);
        c.rec.syn_ns = 0;
        c.s2c(FIN | ACK, SISN + 1, CISN + 2, 0);
        assert!(c.ended.iter().all(|&(m, _, _)| m != Measure::CloseWait));
        assert!(
            c.ended.is_empty(),
            "no SYN seen, no lifetime: {:?}",
            c.ended
        );
    }

    #[test]
    fn the_daemon_ends_what_the_kernel_let_go_of_as_a_segment_would() {
        let c = fin_wait2_on(Side::A);
        let server = c.server();
        let later = c.now + 7 * NS;
        let e = durations::ended_by_daemon(&c.rec, server, later);
        assert_eq!(e.close_wait_ns[server.index()], later - c.since(server));
        assert_eq!(e.lifetime_ns[server.index()], later - T0);
        let mut seen = Vec::new();
        e.for_each(c.word(), |m, side, ns| seen.push((m, side, ns)));
        assert_eq!(seen.len(), 2, "the server's alone: {seen:?}");
        // A finished endpoint ended nothing when its record goes.
        let t = time_wait_on(Side::A);
        assert_eq!(
            durations::ended_by_daemon(&t.rec, t.client, later),
            durations::Ended::NOTHING
        );
        // Nor an endpoint that is not counted here (host mode's remote end).
        let mut host = fin_wait2_on(Side::A);
        host.rec.set_word(FlowWord {
            counted: host.client.bit(),
            ..host.word()
        });
        assert_eq!(
            durations::ended_by_daemon(&host.rec, server, later),
            durations::Ended::NOTHING
        );
    }
}
