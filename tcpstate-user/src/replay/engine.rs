//! The replay's flow table: the kernel programs' per-segment steps (tcpstate-common's parser,
//! state machine and [`pipeline`]) over a map in this process, with capture time as the clock and
//! the sweeper's expiry rules applied as that clock advances.

use tcpstate_common::{
    counters::{for_each_delta, idx, retransmitted, Hook},
    durations::{self, DurationRow, Measure},
    flow::{flowflags, FlowKey, FlowRecord, Side},
    maps::{Config, TableCounters, UserCounters},
    packet::{Parsed, TcpPacket},
    pipeline::{open_new, opened_deltas, update_into, NotOpened, View},
    state::{Handshake, Retransmit, Step},
    tcp::{flags::*, Segment},
    Role,
};

use crate::{
    background::expiry::{self, Expired, Timeouts},
    bpf::tables::Totals,
};

/// The hook a replayed segment is counted under: tap mode's, as the daemon attaches by default.
pub const HOOK: Hook = Hook::TcIngress;

/// A compact history of one connection in the spirit of Zeek's `history` field: each letter once
/// per direction, in order of first occurrence, upper case for what the client (originator) sent,
/// lower case for the server. S a SYN, H a SYN-ACK, A a pure ACK, D data, F a FIN, R an accepted
/// RST, I a segment the state machine rejected (out of window, impossible flags, unexpected SYN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct History {
    letters: [u8; 14],
    len: u8,
    /// Letters already recorded: bit `i` for client letters, `i + 7` for server ones.
    seen: u16,
}

const LETTERS: [u8; 7] = *b"SHADFRI";

impl History {
    fn add(&mut self, letter: usize, role: Role) {
        let bit = 1u16 << (letter + 7 * role as usize);
        if self.seen & bit != 0 || self.len as usize >= self.letters.len() {
            return;
        }
        self.seen |= bit;
        let c = LETTERS[letter];
        self.letters[self.len as usize] = match role {
            Role::Client => c,
            Role::Server => c.to_ascii_lowercase(),
        };
        self.len += 1;
    }

    /// Records a segment's letters. `accepted` is false for a segment the state machine rejected.
    fn segment(&mut self, seg: &Segment, role: Role, accepted: bool) {
        if !accepted {
            return self.add(6, role);
        }
        if seg.has(RST) {
            return self.add(5, role);
        }
        if seg.has(SYN) {
            return self.add(if seg.has(ACK) { 1 } else { 0 }, role);
        }
        if seg.len > 0 {
            self.add(3, role);
        } else if !seg.has(FIN) {
            self.add(2, role);
        }
        if seg.has(FIN) {
            self.add(4, role);
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.letters[..self.len as usize]).unwrap_or("")
    }
}

/// What the replay keeps of a flow besides the kernel's record.
#[derive(Clone, Debug)]
pub struct Entry {
    pub rec: FlowRecord,
    /// The current connection's history (restarted when a SYN reuses the key).
    pub history: History,
    /// The current connection's handshake outcome, `None` while it is open or was not seen.
    pub handshake: Handshake,
    /// RSTs accepted on the current connection.
    pub resets: u32,
    /// Connections seen on this key: 1, plus one for each port reuse.
    pub connections: u32,
    /// Capture time of the key's first and latest segments.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Segments of this key the state machine saw.
    pub segments: u64,
    /// [`expiry::due`] of `rec`: sweeps before it skip the flow.
    due_ns: u64,
}

/// What the replay counts beyond the kernel's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extra {
    /// Frames read from the capture.
    pub frames: u64,
    /// Flows removed by the sweep rules, by why.
    pub expired_time_wait: u64,
    pub expired_handshake: u64,
    pub expired_other: u64,
    /// Sweeps run, in capture time.
    pub sweeps: u64,
    /// Most flows held at once.
    pub peak_flows: u64,
}

/// Retransmitted handshake segments of one server port ([`Table::retransmits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRetransmits {
    pub syn: u64,
    pub synack: u64,
}

/// The duration histograms as the kernel's rows hold them, before labels are chosen: per
/// [`Measure`], by server port (`None`: client endpoints, whose local port is ephemeral).
#[derive(Clone, Debug, Default)]
pub struct Durations(pub [std::collections::BTreeMap<Option<u16>, DurationRow>; 3]);

impl Durations {
    fn observe(
        &mut self,
        key: &FlowKey,
        w: tcpstate_common::FlowWord,
        m: Measure,
        side: Side,
        ns: u64,
    ) {
        let port = (w.role(side) == Role::Server).then_some(key.port[side.index()]);
        self.0[m as usize].entry(port).or_default().observe(ns);
    }

    /// What the daemon ends of `side` when it removes the flow or ends the endpoint at `now`.
    fn book_end(&mut self, key: &FlowKey, rec: &FlowRecord, side: Side, now: u64) {
        let w = rec.word();
        durations::ended_by_daemon(rec, side, now)
            .for_each(w, |m, side, ns| self.observe(key, w, m, side, ns));
    }
}

/// The table, its counters and its clock.
pub struct Table {
    pub flows: foldhash::HashMap<FlowKey, Entry>,
    /// The kernel's counter slots, summed (one CPU).
    pub slots: Vec<u64>,
    /// Retransmitted SYNs and SYN-ACKs by server port, as the kernel's per-port map counts them
    /// for the host (`maps::RETRANSMITS`).
    pub retransmits: std::collections::BTreeMap<u16, PortRetransmits>,
    /// CLOSE_WAIT dwell and lifetimes, as the kernel's and the daemon's rows count them.
    pub durations: Durations,
    pub table: TableCounters,
    pub user: UserCounters,
    pub extra: Extra,
    cfg: Config,
    timeouts: Timeouts,
    sweep_every_ns: u64,
    next_sweep_ns: u64,
    /// The clock: the latest capture time seen (it never goes back, as CLOCK_MONOTONIC).
    pub now_ns: u64,
    st: Step,
}

impl Table {
    pub fn new(cfg: Config, timeouts: Timeouts, sweep_every: std::time::Duration) -> Table {
        Table {
            flows: foldhash::HashMap::default(),
            slots: vec![0; idx::COUNT as usize],
            retransmits: Default::default(),
            durations: Durations::default(),
            table: TableCounters::default(),
            user: UserCounters::default(),
            extra: Extra::default(),
            cfg,
            timeouts,
            sweep_every_ns: (sweep_every.as_nanos() as u64).max(1),
            next_sweep_ns: 0,
            now_ns: 0,
            st: Step::EMPTY,
        }
    }

    /// Moves the clock to `ts_ns` (never back), running every sweep due before it.
    pub fn advance(&mut self, ts_ns: u64) {
        if ts_ns <= self.now_ns {
            return;
        }
        if self.next_sweep_ns == 0 {
            // The first sweep is one interval after the first frame, like a daemon's first walk.
            self.next_sweep_ns = ts_ns.saturating_add(self.sweep_every_ns);
        }
        while self.next_sweep_ns <= ts_ns {
            let at = self.next_sweep_ns;
            self.now_ns = at;
            self.sweep(at);
            // A long silence in the capture: one sweep at its end does what the skipped ones would.
            let next = if ts_ns - at > self.sweep_every_ns {
                ts_ns
            } else {
                at.saturating_add(self.sweep_every_ns)
            };
            self.next_sweep_ns = next;
            if next <= at {
                // The end of time (a corrupt timestamp): nothing is ever due again.
                break;
            }
        }
        self.now_ns = ts_ns;
    }

    /// One frame, as parsed by tcpstate-common, at the current clock.
    #[inline]
    pub fn frame(&mut self, parsed: Parsed) {
        self.extra.frames += 1;
        match parsed {
            Parsed::NotTcp => {}
            Parsed::Skip(why) => self.slots[(idx::SKIPPED + why as u32) as usize] += 1,
            Parsed::Tcp(pkt) => self.segment(&pkt),
        }
    }

    /// The kernel's `track` for one segment: turned away before the lookup, or looked up and
    /// advanced, or opened.
    #[inline]
    fn segment(&mut self, pkt: &TcpPacket) {
        let now = self.now_ns;
        let slots = &mut self.slots;
        slots[(idx::SEGMENTS + HOOK as u32) as usize] += 1;
        let books = self.table.fill(&self.user);
        if let Some(why) = self.cfg.turn_away_before_lookup(&pkt.seg, || Some(books)) {
            slots[(idx::UNTRACKED + why as u32) as usize] += 1;
            return;
        }
        let (key, sender) = FlowKey::canonical(pkt.src, pkt.sport, pkt.dst, pkt.dport);
        let bump = |slots: &mut Vec<u64>, i: u32, d: u64| {
            let s = &mut slots[i as usize];
            *s = s.wrapping_add(d);
        };
        if let Some(e) = self.flows.get_mut(&key) {
            e.segments += 1;
            e.last_ns = now;
            let st = &mut self.st;
            // A capture cannot tell a SYN cookie's SYN-ACK (no socket to look at).
            if !update_into(st, &e.rec, sender, &pkt.seg, now, false) {
                // Quiet: established data, the record unchanged.
                e.history.segment(&pkt.seg, e.rec.word().role(sender), true);
                return;
            }
            let old = e.rec.word();
            let ended = durations::ended(old, &e.rec.since_ns, st);
            // `Step::rec` equals the record wherever `write` has no bit: taking it whole is what
            // `commit` does field by field, with no other CPU to race here.
            e.rec = st.rec;
            let dur = &mut self.durations;
            ended.for_each(st.rec.word(), |m, side, ns| {
                dur.observe(&key, st.rec.word(), m, side, ns)
            });
            e.due_ns = expiry::due(&e.rec, &self.timeouts);
            let new = e.rec.word();
            if st.invalid.is_none()
                && old.state(sender).is_finished()
                && old.state(sender.other()).is_finished()
                && new.state(sender) == tcpstate_common::TcpState::SynSent
            {
                // Port reuse: a SYN opened a new connection on a finished key.
                e.connections += 1;
                e.history = History::default();
                e.handshake = Handshake::None;
                e.resets = 0;
            }
            e.history
                .segment(&pkt.seg, new.role(sender), st.invalid.is_none());
            if st.rst {
                e.resets += 1;
            }
            if st.handshake != Handshake::None {
                e.handshake = st.handshake;
            }
            for_each_delta(old, st, sender, |i, d| bump(slots, i, d));
            if let Some(kind) = retransmitted(st) {
                // The server's port: the side that did not send the first SYN.
                let port = key.port[new.client().other().index()];
                let n = self.retransmits.entry(port).or_default();
                match kind {
                    Retransmit::Syn => n.syn += 1,
                    Retransmit::SynAck => n.synack += 1,
                    Retransmit::None => {}
                }
            }
            if st.half_open_released {
                self.table.half_open_released += 1;
            }
            return;
        }
        let st = &mut self.st;
        let opening = match open_new(
            st,
            &self.cfg,
            || Some(books),
            View::Tap,
            sender,
            &pkt.seg,
            now,
            key.port,
        ) {
            Ok(o) => o,
            Err(why) => {
                if let Some(slot) = why.slot() {
                    bump(slots, slot, 1);
                }
                debug_assert!(why != NotOpened::NoBooks);
                return;
            }
        };
        let mut history = History::default();
        let w = st.rec.word();
        history.segment(&pkt.seg, w.role(sender), true);
        self.flows.insert(
            key,
            Entry {
                rec: st.rec,
                history,
                handshake: st.handshake,
                resets: st.rst as u32,
                connections: 1,
                first_ns: now,
                last_ns: now,
                segments: 1,
                due_ns: expiry::due(&st.rec, &self.timeouts),
            },
        );
        self.table.inserted += 1;
        if w.has(flowflags::HALF_OPEN) {
            self.table.half_open_inserted += 1;
        }
        opened_deltas(opening, st, sender, |i, d| bump(slots, i, d));
        self.extra.peak_flows = self.extra.peak_flows.max(self.flows.len() as u64);
    }

    /// The sweeper's walk at capture time `now`: flows done by their state's rule are removed and
    /// booked as the daemon books them.
    pub fn sweep(&mut self, now: u64) {
        let (t, user, extra) = (&self.timeouts, &mut self.user, &mut self.extra);
        let dur = &mut self.durations;
        self.flows.retain(|key, e| {
            if now < e.due_ns {
                return true;
            }
            // Tap mode: no kernel socket table to settle against.
            let Some(why) = expiry::decide_with(&e.rec, now, t, false) else {
                // An endpoint whose own timeout ran out while its peer's did not ends alone, and
                // the flow stays for the peer, as the daemon's sweeper does it.
                if let Some(side) = expiry::ended_side(&e.rec, now, t) {
                    dur.book_end(key, &e.rec, side, now);
                    let mut w = e.rec.word();
                    user.record_end(w, side);
                    w.set_state(side, tcpstate_common::TcpState::Closed);
                    e.rec.set_word(w);
                    e.rec.since_ns[side.index()] = now;
                }
                e.due_ns = expiry::due(&e.rec, t).max(now.saturating_add(1));
                return true;
            };
            user.record_delete(e.rec.word());
            dur.book_end(key, &e.rec, Side::A, now);
            dur.book_end(key, &e.rec, Side::B, now);
            match why {
                Expired::Handshake => {
                    user.handshake_timeouts += 1;
                    extra.expired_handshake += 1;
                }
                Expired::TimeWait => extra.expired_time_wait += 1,
                Expired::Other => extra.expired_other += 1,
            }
            false
        });
        extra.sweeps += 1;
    }

    /// The counters as a scrape would read them.
    pub fn totals(&self) -> Totals {
        Totals {
            slots: self.slots.clone(),
            table: self.table,
            // A capture is one scope, the host's.
            user: vec![self.user],
        }
    }

    /// The table's limits, as `tcpstate_flow_table_capacity` and `_half_open_capacity` show them.
    pub fn capacity(&self) -> u32 {
        self.cfg.capacity as u32
    }
    pub fn half_open_budget(&self) -> u32 {
        self.cfg.half_open_budget as u32
    }
}
