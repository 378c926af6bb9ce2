//! Property tests of the state machine: random segment sequences on a flow opened by a SYN, and
//! random opening segments, checked against invariants that must hold whatever the traffic.
//!
//! Sequences mix the segments a real connection sends (sequence and acknowledgement numbers drawn
//! at or near what each side has actually sent) with retransmissions, duplicates, impossible flag
//! combinations and blind numbers, sent by either side in any order.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tcpstate_common::{
    commit::commit,
    counters::{for_each_delta, idx},
    durations::{self, Measure},
    flow::{flowflags, FlowRecord, FlowWord, Role, Side},
    state::{
        open, quiet, step, step_cookie_into, write, Handshake, InvalidReason, Opening, Retransmit,
        Step, TcpState,
    },
    tcp::{check_flags, flags::*, seq_ge, Segment, WSCALE_MAX, WSCALE_NONE},
};
use TcpState::*;

const NS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

/// The pairs of endpoint states the mirror can show (unordered).
///
/// The observer applies each segment to both endpoints at once, as if it arrived the moment it
/// was sent, so the transient pairs of a real connection with segments in flight (ESTABLISHED
/// facing FIN_WAIT_1 while the FIN travels) never appear. Derived from `state.rs`, each checked
/// against RFC 9293 section 3.3.2:
/// - CLOSED/CLOSED: not started, or after an accepted RST (which closes both).
/// - SYN_SENT/CLOSED: the SYN seen, nothing answered (LISTEN is not tracked).
/// - SYN_RECV/SYN_RECV: crossing SYNs (simultaneous open, RFC 9293 figure 7).
/// - SYN_RECV/ESTABLISHED: the SYN-ACK seen; the client is ESTABLISHED once the SYN-ACK acking
///   its ISN reaches it, the server waits for the final ACK. Also one SYN-ACK of a simultaneous
///   open seen.
/// - FIN_WAIT_1/CLOSE_WAIT, FIN_WAIT_2/CLOSE_WAIT: a FIN seen, then its ACK. CLOSE_WAIT faces
///   nothing else: it is left only by sending a FIN (which moves the peer too) or by RST.
/// - CLOSING/CLOSING, CLOSING/TIME_WAIT, TIME_WAIT/TIME_WAIT: crossing FINs (RFC 9293 figure 13),
///   then the ACK of each.
/// - TIME_WAIT/LAST_ACK, TIME_WAIT/CLOSED: the second FIN seen, then its ACK (and LAST_ACK again
///   when that ACK was lost and the FIN is resent).
///
/// So SYN_SENT faces only CLOSED, LAST_ACK only TIME_WAIT, FIN_WAIT_1/2 only CLOSE_WAIT, and no
/// endpoint is ever ESTABLISHED facing a closing or closed one.
fn allowed(x: TcpState, y: TcpState) -> bool {
    let (a, b) = if x <= y { (x, y) } else { (y, x) };
    matches!(
        (a, b),
        (Closed, Closed)
            | (Closed, SynSent)
            | (SynRecv, SynRecv)
            | (SynRecv, Established)
            | (Established, Established)
            | (FinWait1, CloseWait)
            | (FinWait2, CloseWait)
            | (Closing, Closing)
            | (Closing, TimeWait)
            | (TimeWait, TimeWait)
            | (LastAck, TimeWait)
            | (Closed, TimeWait)
    )
}

const ALLOWED_PAIRS: usize = 12;

const VALID_FLAGS: [u8; 10] = [
    SYN,
    SYN | ACK,
    ACK,
    ACK | PSH,
    ACK | URG,
    FIN | ACK,
    FIN | ACK | PSH,
    RST,
    RST | ACK,
    SYN | ACK | PSH,
];
const INVALID_FLAGS: [u8; 8] = [
    SYN | FIN,
    SYN | FIN | ACK,
    SYN | RST,
    0,
    PSH,
    FIN,
    FIN | PSH | URG,
    RST | FIN | ACK,
];

/// A sequence or acknowledgement number, relative to what the flow has really sent.
#[derive(Clone, Copy, Debug)]
enum Num {
    /// The next number: for `seq` what the sender sends next, for `ack` what the receiver sent
    /// next (acknowledges everything).
    Next,
    Plus(u32),
    Minus(u32),
    /// The ISN (seq) or ISN + 1 (ack) recorded for that side.
    Isn,
    /// The `end` recorded for that side (acknowledges its latest SYN or FIN).
    End,
    Blind(u32),
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        10 => Just(Num::Next),
        2 => (1u32..3).prop_map(Num::Minus),
        2 => (1u32..3).prop_map(Num::Plus),
        2 => (3u32..40_000).prop_map(Num::Plus),
        1 => (3u32..40_000).prop_map(Num::Minus),
        1 => Just(Num::Isn),
        1 => Just(Num::End),
        1 => any::<u32>().prop_map(Num::Blind),
    ]
}

#[derive(Clone, Debug)]
struct Op {
    from_b: bool,
    flags: u8,
    seq: Num,
    ack: Num,
    len: u32,
    win: u16,
    wscale: u8,
    /// Milliseconds since the previous segment.
    dt_ms: u64,
    /// Send the same segment again right after.
    twice: bool,
}

fn flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => Just(ACK),
        2 => Just(FIN | ACK),
        1 => prop::sample::select(&VALID_FLAGS[..]),
        1 => prop::sample::select(&INVALID_FLAGS[..]),
        1 => any::<u8>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    (
        any::<bool>(),
        flags(),
        num(),
        num(),
        prop_oneof![4 => Just(0u32), 1 => 1u32..3000],
        prop_oneof![4 => Just(20_000u16), 1 => Just(0u16), 1 => any::<u16>()],
        prop_oneof![Just(WSCALE_NONE), 0u8..=WSCALE_MAX],
        prop_oneof![4 => 0u64..50, 1 => 0u64..3000],
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(from_b, flags, seq, ack, len, win, wscale, dt_ms, twice)| Op {
                from_b,
                flags,
                seq,
                ack,
                len,
                win,
                wscale,
                dt_ms,
                twice,
            },
        )
}

#[derive(Clone, Debug)]
struct Scenario {
    opener: Side,
    /// Picked up midstream from a plain ACK of the opener's instead of opened by its SYN.
    midstream: bool,
    counted: u8,
    isn: [u32; 2],
    syn_wscale: u8,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<bool>(),
        1u8..=3,
        // ISNs near the wrap often, anywhere otherwise.
        prop_oneof![any::<u32>(), (u32::MAX - 5000)..=u32::MAX],
        any::<u32>(),
        prop_oneof![Just(WSCALE_NONE), 0u8..=WSCALE_MAX],
        prop::collection::vec(op(), 1..60),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(b, counted, isn0, isn1, syn_wscale, ops, midstream)| Scenario {
                opener: if b { Side::B } else { Side::A },
                midstream,
                counted,
                isn: [isn0, isn1],
                syn_wscale,
                ops,
            },
        )
}

/// Sums every counter delta of `st` into `counters`, as the kernel's per-CPU slots do.
fn add_deltas(counters: &mut BTreeMap<u32, u64>, old: FlowWord, st: &Step, sender: Side) {
    for_each_delta(old, st, sender, |slot, d| {
        let v = counters.entry(slot).or_insert(0);
        *v = v.wrapping_add(d);
    });
}

/// The key invariant: the connection gauges summed from every delta equal the counted endpoints'
/// actual states (the kernel keeps them incrementally and never walks the table).
fn check_gauges(counters: &BTreeMap<u32, u64>, w: FlowWord) {
    for role in Role::ALL {
        for state in TcpState::OPEN {
            let actual = [Side::A, Side::B]
                .into_iter()
                .filter(|&s| w.is_counted(s) && w.state(s) == state && w.role(s) == role)
                .count() as u64;
            let gauge = counters.get(&idx::conn(role, state)).copied().unwrap_or(0);
            assert_eq!(gauge, actual, "gauge {role:?} {state:?}");
        }
    }
}

fn except_last_seen(mut r: FlowRecord) -> FlowRecord {
    r.last_seen = 0;
    r
}

fn states(r: &FlowRecord) -> (TcpState, TcpState) {
    let w = r.word();
    (w.state(Side::A), w.state(Side::B))
}

/// A flow under random traffic, with the books the kernel would keep for it.
struct Flow {
    rec: FlowRecord,
    now: u64,
    /// What each side has sent so far: the next sequence number it would use.
    nxt: [u32; 2],
    counters: BTreeMap<u32, u64>,
    released: u32,
    seen: BTreeSet<(TcpState, TcpState)>,
    /// Per side, what the current connection has ended so far: (CLOSE_WAIT dwells, lifetimes).
    ended: [(u32, u32); 2],
}

impl Flow {
    fn start(sc: &Scenario) -> Flow {
        let s = sc.opener;
        let syn = Segment {
            seq: sc.isn[s.index()],
            ack: 0,
            len: 0,
            win: 20_000,
            flags: SYN,
            wscale: sc.syn_wscale,
        };
        let now = 1_000 * NS;
        let mut nxt = sc.isn;
        let st = if sc.midstream {
            // Both sides at their "ISN": the opener's data continues from there.
            let ack = Segment {
                ack: sc.isn[s.other().index()],
                flags: ACK,
                wscale: WSCALE_NONE,
                ..syn
            };
            let (opening, st) = open(s, &ack, sc.counted, now, [1000, 2000]).expect("an ACK opens");
            assert_eq!(opening, Opening::Midstream);
            assert_ne!(
                st.rec.word().pending,
                0,
                "a pickup is pending until both sides are seen"
            );
            st
        } else {
            let (opening, st) = open(s, &syn, sc.counted, now, [1000, 2000]).expect("a SYN opens");
            assert_eq!(opening, Opening::Syn);
            nxt[s.index()] = sc.isn[s.index()].wrapping_add(1);
            st
        };
        let mut f = Flow {
            rec: st.rec,
            now,
            nxt,
            counters: BTreeMap::new(),
            // A midstream pickup never holds a half-open slot: as if given back already.
            released: sc.midstream as u32,
            seen: BTreeSet::new(),
            ended: [(0, 0); 2],
        };
        let before = FlowWord {
            counted: sc.counted,
            ..FlowWord::default()
        };
        f.count(before, &st, s);
        f.check_record();
        f
    }

    fn number(&self, n: Num, side: Side, is_ack: bool) -> u32 {
        let e = &self.rec.seq[side.index()];
        match n {
            Num::Next => self.nxt[side.index()],
            Num::Plus(k) => self.nxt[side.index()].wrapping_add(k),
            Num::Minus(k) => self.nxt[side.index()].wrapping_sub(k),
            Num::Isn => e.isn.wrapping_add(is_ack as u32),
            Num::End => e.end,
            Num::Blind(v) => v,
        }
    }

    fn segment(&self, op: &Op) -> (Side, Segment) {
        let s = if op.from_b { Side::B } else { Side::A };
        let syn = op.flags & SYN != 0;
        let seg = Segment {
            seq: self.number(op.seq, s, false),
            ack: self.number(op.ack, s.other(), true),
            // One SYN or SYN-ACK in four carries data (TCP Fast Open, RFC 7413).
            len: match (syn, op.len % 4) {
                (true, 0) => op.len % 1000,
                (true, _) => 0,
                (false, _) => op.len,
            },
            win: op.win,
            flags: op.flags,
            wscale: if syn { op.wscale } else { WSCALE_NONE },
        };
        (s, seg)
    }

    fn count(&mut self, old: FlowWord, st: &Step, sender: Side) {
        add_deltas(&mut self.counters, old, st, sender);
        if st.half_open_released {
            self.released += 1;
        }
    }

    /// Steps, commits and checks one segment; returns the step.
    fn apply(&mut self, s: Side, seg: &Segment, dt: u64, cookie: bool) -> Step {
        self.now += dt;
        let old = self.rec;
        let st = if cookie {
            let mut st = Step::EMPTY;
            step_cookie_into(&mut st, &old, s, seg, self.now);
            st
        } else {
            step(&old, s, seg, self.now)
        };
        // SAFETY: a live, aligned record owned by this test.
        assert!(unsafe { commit(&mut self.rec, old.word, &st) });
        check_step(&old, &st, s, seg, self.now);
        assert_eq!(self.rec, st.rec, "write {:#x} misses a change", st.write);
        self.count(old.word(), &st, s);
        self.check_ended(&old, &st);
        if st.invalid.is_none() {
            self.advance(s, seg);
        }
        self.check_record();
        st
    }

    /// A connection ends at most once per endpoint: one lifetime, one CLOSE_WAIT dwell, however
    /// segments are lost, repeated or reordered; a SYN reopening the key starts a new one.
    fn check_ended(&mut self, old: &FlowRecord, st: &Step) {
        if st.rec.syn_ns != old.syn_ns {
            self.ended = [(0, 0); 2];
        }
        durations::ended(old.word(), &old.since_ns, st).for_each(st.rec.word(), |m, side, ns| {
            let e = &mut self.ended[side.index()];
            match m {
                Measure::CloseWait => e.0 += 1,
                _ => e.1 += 1,
            }
            assert!(ns <= self.now, "a duration longer than the flow's clock");
        });
        for (side, e) in self.ended.iter().enumerate() {
            assert!(e.0 <= 1 && e.1 <= 1, "side {side} ended twice: {e:?}");
        }
    }

    /// Keeps `nxt` at what each side has really sent.
    fn advance(&mut self, s: Side, seg: &Segment) {
        let i = s.index();
        let syn = seg.flags & SYN != 0;
        let end = seg
            .seq
            .wrapping_add(seg.len)
            .wrapping_add(syn as u32)
            .wrapping_add((seg.flags & FIN != 0) as u32);
        if syn && self.rec.seq[i].isn == seg.seq {
            self.nxt[i] = end; // a new ISN resets the sender's numbers
        } else if seq_ge(end, self.nxt[i]) {
            self.nxt[i] = end;
        }
    }

    /// Invariants of the record as it stands, and of the books kept for it.
    fn check_record(&mut self) {
        let w = self.rec.word();
        let (a, b) = (w.state(Side::A), w.state(Side::B));
        self.seen.insert((a, b));
        assert!(allowed(a, b), "impossible pair of states: A {a:?}, B {b:?}");
        check_gauges(&self.counters, w);
        // The half-open budget: a flow opened by a SYN holds one slot until it leaves the
        // handshake, and gives it back exactly once.
        assert!(self.released <= 1, "half-open slot released twice");
        assert_eq!(w.has(flowflags::HALF_OPEN), self.released == 0);
        if w.has(flowflags::HALF_OPEN) {
            assert!(
                a.is_handshake() || b.is_handshake(),
                "half-open flag on {a:?}/{b:?}"
            );
        }
        if w.has(flowflags::RESET) {
            assert_eq!((a, b), (Closed, Closed), "RESET flag on a live flow");
        }
        // A zero window stalls only an endpoint that still receives.
        for side in [Side::A, Side::B] {
            if w.zero_window(side) {
                assert!(
                    matches!(w.state(side), Established | FinWait1 | FinWait2),
                    "zero window on {side:?} in {:?}",
                    w.state(side)
                );
            }
        }
        // Only a midstream pickup is ever pending, and nothing of it is counted meanwhile.
        if w.pending != 0 {
            assert!(
                w.has(flowflags::MIDSTREAM),
                "pending without a midstream pickup"
            );
            assert!(!w.is_counted(Side::A) && !w.is_counted(Side::B));
        }
    }
}

thread_local! {
    /// How often `quiet` said yes on this test's thread (the shortcut must be exercised).
    static QUIET_SEEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What every single step must satisfy, whatever the record and the segment.
fn check_step(old: &FlowRecord, st: &Step, s: Side, seg: &Segment, now: u64) {
    // The kernel skips `step` when `quiet` says so: `step` must then change and reject nothing.
    if quiet(old, s, seg, now) {
        QUIET_SEEN.with(|n| n.set(n.get() + 1));
        assert_eq!(
            (st.write, st.invalid),
            (0, None),
            "quiet, yet step acts: {seg:?}"
        );
        assert_eq!(st.rec, *old);
        assert_eq!(st.retransmit, Retransmit::None);
    }
    // A handshake segment sent again: the client's SYN or the server's SYN-ACK, with the ISN the
    // record already holds for its sender, never rejected. A SYN sent again changes nothing.
    let ow = old.word();
    match st.retransmit {
        Retransmit::None => {}
        Retransmit::Syn => {
            assert_eq!(seg.flags & (SYN | ACK | RST), SYN);
            assert_eq!(ow.client(), s, "only the client's SYN");
            assert_eq!(old.seq[s.index()].isn, seg.seq);
            assert_eq!(st.invalid, None);
            assert_eq!(except_last_seen(st.rec), except_last_seen(*old));
        }
        Retransmit::SynAck => {
            assert_eq!(seg.flags & (SYN | ACK | RST), SYN | ACK);
            assert_ne!(ow.client(), s, "only the server's SYN-ACK");
            assert_eq!(old.seq[s.index()].isn, seg.seq);
            assert_eq!(st.invalid, None);
        }
    }
    let r = s.other();
    let (ow, nw) = (old.word(), st.rec.word());
    assert_eq!(st.rec.last_seen, FlowRecord::seen_tick(now));
    assert_eq!(
        st.write & write::LAST_SEEN != 0,
        old.last_seen != st.rec.last_seen
    );
    assert_eq!(nw.counted, ow.counted, "counted sides never change");
    if check_flags(seg.flags).is_err() {
        assert!(st.invalid.is_some(), "impossible flags accepted");
    }
    if let Some(why) = st.invalid {
        // A rejected segment never changes the record beyond last_seen.
        assert_eq!(except_last_seen(st.rec), except_last_seen(*old), "{why:?}");
        assert_eq!(st.write & !write::LAST_SEEN, 0);
        assert!(!st.rst && !st.half_open_released);
        assert_eq!(st.handshake, Handshake::None);
        return;
    }
    for side in [Side::A, Side::B] {
        let i = side.index();
        if ow.state(side) != nw.state(side) {
            assert_eq!(st.rec.since_ns[i], now, "since of {side:?} not stamped");
        } else if st.rec.since_ns[i] != old.since_ns[i] {
            // The only restart without a state change: TIME_WAIT's 2MSL when a FIN arrives.
            assert!(
                side == r && nw.state(side) == TimeWait && seg.flags & FIN != 0,
                "since of {side:?} moved without a transition"
            );
            assert_eq!(st.rec.since_ns[i], now);
        }
    }
    if st.rst {
        assert_eq!(states(&st.rec), (Closed, Closed));
        assert!(seg.flags & RST != 0);
    }
    let was_opening = ow.state(s).is_handshake() || ow.state(r).is_handshake();
    let is_opening = nw.state(s).is_handshake() || nw.state(r).is_handshake();
    // Each opening handshake has exactly one outcome, decided on the step that ends it.
    assert_eq!(st.handshake != Handshake::None, was_opening && !is_opening);
    match st.handshake {
        Handshake::Refused => {
            assert!(st.rst);
            assert_eq!((ow.state(s), ow.state(r)), (Closed, SynSent));
        }
        Handshake::Reset => assert!(st.rst),
        Handshake::Established => assert!(!st.rst),
        Handshake::None => {}
    }
    if st.half_open_released {
        assert!(ow.has(flowflags::HALF_OPEN) && !nw.has(flowflags::HALF_OPEN));
    }
}

/// The same segment twice in a row: the second time changes nothing, except that a FIN arriving
/// at an endpoint in TIME_WAIT restarts its 2MSL timer (RFC 9293 section 3.10.7.4), whatever
/// happened the first time. Rejected segments are rejected again.
fn check_repeat(first: &Step, second: &Step, s: Side, seg: &Segment, now: u64) {
    let (a, b) = (first.rec, second.rec);
    assert_eq!(b.word, a.word, "the state word changed on a repeat");
    assert_eq!(b.seq, a.seq);
    assert_eq!(b.syn_ns, a.syn_ns);
    let r = s.other();
    let mut may_write = write::LAST_SEEN;
    if seg.flags & FIN != 0 && a.word().state(r) == TimeWait {
        may_write |= write::since(r);
        assert!(b.since_ns[r.index()] == a.since_ns[r.index()] || b.since_ns[r.index()] == now);
    } else {
        assert_eq!(b.since_ns[r.index()], a.since_ns[r.index()]);
    }
    assert_eq!(b.since_ns[s.index()], a.since_ns[s.index()]);
    assert_eq!(
        second.write & !may_write,
        0,
        "repeat wrote {:#x}",
        second.write
    );
    assert!(!second.rst && !second.half_open_released);
    assert_eq!(second.handshake, Handshake::None);
    if first.invalid.is_some() {
        assert_eq!(second.invalid, first.invalid);
    }
}

fn run(sc: &Scenario) -> Flow {
    let mut f = Flow::start(sc);
    for op in &sc.ops {
        let (s, seg) = f.segment(op);
        // Some SYN-ACKs leave as SYN cookies (host mode sees them without a socket).
        let cookie = seg.flags & (SYN | ACK) == SYN | ACK && op.dt_ms % 3 == 0;
        let first = f.apply(s, &seg, op.dt_ms * MS, cookie);
        if op.twice {
            let second = f.apply(s, &seg, MS + op.dt_ms * MS, cookie);
            check_repeat(&first, &second, s, &seg, f.now);
        }
    }
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn random_traffic_keeps_every_invariant(sc in scenario()) {
        run(&sc);
    }

    #[test]
    fn open_never_panics_and_agrees_with_step(
        sender_b in any::<bool>(),
        flags in prop_oneof![prop::sample::select(&VALID_FLAGS[..]), any::<u8>()],
        seq in any::<u32>(),
        ack in any::<u32>(),
        len in 0u32..5000,
        win in any::<u16>(),
        wscale in prop_oneof![Just(WSCALE_NONE), 0u8..=WSCALE_MAX],
        counted in 0u8..=3,
        ports in any::<[u16; 2]>(),
    ) {
        let s = if sender_b { Side::B } else { Side::A };
        let seg = Segment { seq, ack, len, win, flags, wscale };
        let now = 7 * NS + 5;
        let res = open(s, &seg, counted, now, ports);
        let Ok((opening, st)) = res else {
            let why = res.unwrap_err();
            match check_flags(flags) {
                Err(bad) => prop_assert_eq!(why, InvalidReason::from(bad)),
                Ok(()) => {
                    prop_assert!(flags & (RST | FIN) != 0);
                    prop_assert_eq!(why, InvalidReason::NoFlow);
                }
            }
            return Ok(());
        };
        prop_assert!(check_flags(flags).is_ok() && flags & (RST | FIN) == 0);
        prop_assert_eq!(st.invalid, None);
        let w = st.rec.word();
        prop_assert_eq!(w.counted, counted);
        let (ss, rs) = (w.state(s), w.state(s.other()));
        match opening {
            Opening::Syn => {
                prop_assert!(flags & SYN != 0 && flags & ACK == 0);
                prop_assert_eq!((ss, rs), (SynSent, Closed));
                prop_assert_eq!(w.client(), s);
                // The same record `step` builds from an untracked (all-closed) flow.
                let mut base = FlowRecord::default();
                base.set_word(FlowWord { counted, wscale: [WSCALE_NONE; 2], ..FlowWord::default() });
                let by_step = step(&base, s, &seg, now);
                let mut expect = by_step.rec.word();
                expect.flags |= flowflags::HALF_OPEN;
                prop_assert_eq!(w, expect);
                prop_assert_eq!(st.rec.seq, by_step.rec.seq);
                prop_assert_eq!(st.rec.syn_ns, now);
            }
            Opening::SynAck => {
                prop_assert!(flags & (SYN | ACK) == SYN | ACK);
                prop_assert_eq!((ss, rs), (SynRecv, Established));
                prop_assert_eq!(w.client(), s.other());
                prop_assert_eq!(st.rec.seq[s.other().index()].end, ack);
            }
            Opening::Midstream => {
                prop_assert!(flags & SYN == 0);
                prop_assert_eq!((ss, rs), (Established, Established));
                prop_assert!(w.has(flowflags::MIDSTREAM) && w.has(flowflags::ROLE_GUESSED));
            }
        }
        prop_assert_eq!(w.has(flowflags::HALF_OPEN), opening != Opening::Midstream);
        prop_assert_eq!(st.rec.since_ns, [now, now]);
        // The gauges the kernel bumps from the all-closed word it passes for a new flow.
        let mut counters = BTreeMap::new();
        let before = FlowWord { counted, ..FlowWord::default() };
        add_deltas(&mut counters, before, &st, s);
        check_gauges(&counters, w);
        // The opening segment again is a retransmission: nothing to write.
        let again = step(&st.rec, s, &seg, now + MS);
        prop_assert_eq!(again.invalid, None);
        prop_assert_eq!(again.write, 0);
        prop_assert_eq!(again.rec, st.rec);
        // The record is one `step` can carry on from: a FIN and an RST from the other side keep
        // every invariant and the books.
        let mut rec = st.rec;
        for f in [FIN | ACK, RST | ACK] {
            let next_seg = Segment { flags: f, seq: ack, ack: seq.wrapping_add(1), len: 0, ..seg };
            let next = step(&rec, s.other(), &next_seg, now);
            check_step(&rec, &next, s.other(), &next_seg, now);
            add_deltas(&mut counters, rec.word(), &next, s.other());
            rec = next.rec;
            check_gauges(&counters, rec.word());
            prop_assert!(allowed(rec.word().state(Side::A), rec.word().state(Side::B)));
        }
    }

    /// RFC 9293 section 3.10.7.3: in SYN-SENT, an answer to the SYN is acceptable exactly when
    /// SND.UNA < SEG.ACK =< SND.NXT, i.e. ISN < ack =< ISN + 1 + len with the SYN's data (TCP Fast
    /// Open) counted; a SYN-ACK then establishes the client, an RST refuses the connection.
    /// The SYN-ACK and the RST take the same range (Linux checks both in
    /// tcp_rcv_synsent_state_process before it looks at either flag).
    #[test]
    fn an_answer_to_a_syn_is_acceptable_exactly_when_it_acknowledges_part_of_the_syn(
        client_b in any::<bool>(),
        isn in prop_oneof![any::<u32>(), (u32::MAX - 3000)..=u32::MAX],
        len in prop_oneof![Just(0u32), 1u32..1500],
        off in prop_oneof![3 => 0u32..1600, 1 => any::<u32>()],
        rst in any::<bool>(),
    ) {
        let c = if client_b { Side::B } else { Side::A };
        let syn = Segment { seq: isn, ack: 0, len, win: 20_000, flags: SYN, wscale: WSCALE_NONE };
        let (_, opened) = open(c, &syn, 0b11, NS, [40_000, 80]).expect("a SYN opens");
        let answer = Segment {
            seq: 7,
            ack: isn.wrapping_add(off),
            len: 0,
            flags: if rst { RST | ACK } else { SYN | ACK },
            ..syn
        };
        let st = step(&opened.rec, c.other(), &answer, NS + MS);
        check_step(&opened.rec, &st, c.other(), &answer, NS + MS);
        let acceptable = (1..=1 + len).contains(&off);
        prop_assert_eq!(st.invalid.is_none(), acceptable, "{:?}", st.invalid);
        let w = st.rec.word();
        if !acceptable {
            prop_assert_eq!(w.state(c), SynSent);
        } else if rst {
            prop_assert!(st.rst);
            prop_assert_eq!((w.state(c), w.state(c.other())), (Closed, Closed));
            prop_assert_eq!(st.handshake, Handshake::Refused);
        } else {
            prop_assert_eq!((w.state(c), w.state(c.other())), (Established, SynRecv));
        }
    }
}

/// The generator is only as good as the states it reaches: every pair the mirror can show is
/// reached, so every invariant above is exercised in every state.
#[test]
fn random_traffic_reaches_every_possible_pair_of_states() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = scenario();
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let sc = strategy.new_tree(&mut runner).expect("generate").current();
        seen.extend(run(&sc).seen);
    }
    let reached: Vec<_> = seen
        .iter()
        .map(|&(a, b)| if a <= b { (a, b) } else { (b, a) })
        .collect();
    let distinct: BTreeSet<_> = reached.into_iter().collect();
    assert_eq!(distinct.len(), ALLOWED_PAIRS, "reached only {distinct:?}");
    let quiet_seen = QUIET_SEEN.with(|n| n.get());
    assert!(
        quiet_seen >= 20,
        "the kernel's shortcut was checked against step only {quiet_seen} times"
    );
}
