//! Map names, the load-time configuration and the table-fill counters both sides use.

use crate::{
    counters::UntrackedReason,
    state::{classify_opening, Opening, Retransmit},
    tcp::Segment,
};

/// Map names as they appear in the object file and under the pin directory.
///
/// The flow table of IPv4 flows ([`crate::table::Slot4`]).
pub const FLOWS4: &str = "TCPSTATE_FLOWS4";
/// The flow table of every other flow ([`crate::table::Slot6`]).
pub const FLOWS6: &str = "TCPSTATE_FLOWS6";
/// The one flow table of earlier builds (a kernel hash map, then an array of 128-byte slots with
/// 64-bit control words): found pinned, its flows are carried into the two tables.
pub const OLD_FLOWS: &str = "TCPSTATE_FLOWS";
/// The host scope's counter slots and the global ones: `idx::COUNT` per-CPU slots, summed at
/// scrape time (the hot ones, bumped by every segment, must not share a cache line between CPUs).
pub const COUNTERS: &str = "TCPSTATE_COUNTERS";
/// Every container scope's own slots ([`crate::counters::idx::per_scope`]): `idx::COUNT` `u64`
/// slots per scope, indexed like the per-CPU array would be (scope 0's row unused), in one
/// array the daemon maps into its memory and reads without a system call, updated with atomic
/// adds. A container's slots change on its own transitions only, so the adds rarely meet another
/// CPU's; and a scrape reads hundreds of scopes as memory instead of copying every CPU's copy of
/// every slot through BPF_MAP_LOOKUP_BATCH.
pub const SCOPE_COUNTERS: &str = "TCPSTATE_SCOPE_COUNTERS";
pub const TABLE: &str = "TCPSTATE_TABLE";
pub const USER: &str = "TCPSTATE_USER";
/// The running daemon's settings that the inspection commands must agree with ([`Settings`]).
pub const SETTINGS: &str = "TCPSTATE_SETTINGS";
/// SYN cookies sent, by local port: 65536 `u64` slots (512 KiB whatever the CPU count, where a
/// per-CPU array would take that per CPU), updated with atomic adds.
pub const SYN_COOKIES: &str = "TCPSTATE_SYN_COOKIES";
/// Slots of [`SYN_COOKIES`]: one per port.
pub const SYN_COOKIE_PORTS: u32 = 1 << 16;
/// SYNs and SYN-ACKs sent again to and by local servers, by server port
/// ([`crate::counters::retransmitted`]): `u64` slots, one per port for each
/// [`Retransmit`] kind ([`retransmit_slot`]), 1 MiB, updated with atomic adds. The host's only;
/// a container's are in its scope's counter slots.
pub const RETRANSMITS: &str = "TCPSTATE_RETRANSMITS";
/// Slots of [`RETRANSMITS`].
pub const RETRANSMIT_SLOTS: u32 = 2 << 16;

/// The slot of [`RETRANSMITS`] counting `kind` for server port `port`.
#[inline(always)]
pub const fn retransmit_slot(kind: Retransmit, port: u16) -> u32 {
    ((kind as u32).wrapping_sub(1) & 1) << 16 | port as u32
}

/// Name of the [`Config`] global.
pub const CONFIG: &str = "TCPSTATE_CONFIG";
/// The flow table's hash key ([`crate::table::Seed`]), pinned with the table.
pub const FLOW_SEED: &str = "TCPSTATE_FLOW_SEED";

/// Load-time configuration, a read-only global in the object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// Flows the two tables may hold together (the admission rule's bound).
    pub capacity: u64,
    /// Slots in the IPv4 flow table ([`crate::table::slots_for`] its capacity, or what a pinned
    /// table kept from an earlier run has).
    pub slots4: u64,
    /// Slots in the table of every other flow, likewise.
    pub slots6: u64,
    /// The flow table's hash key ([`crate::table::TableKey::hash`]), chosen when the table was created.
    pub seed: crate::table::Seed,
    /// Half-open flows (created by a SYN or SYN-ACK, not yet out of the handshake) allowed at once.
    pub half_open_budget: u64,
    /// Non-zero when the entry points hand rare events to aya-log (`--kernel-log`). A read-only
    /// constant: at 0 the verifier removes the event bookkeeping from every path.
    pub log_events: u64,
    /// Scopes the counter array has room for ([`crate::scope`]): 1 (the host) unless container
    /// mode watches namespaces. A scope at or past it is never counted.
    pub scopes: u64,
    /// Non-zero in container mode: a flow first seen on a host-mode interface is counted as a
    /// host endpoint only if a local socket owns it, since the host also forwards and NATs its
    /// containers' traffic through those interfaces. A read-only constant: off, the verifier
    /// removes the socket lookup.
    pub transit_check: u64,
}

impl Config {
    /// The admission rule: whether a flow opening this way may enter the table. It needs room in
    /// the table, and an opening in the handshake (SYN, SYN-ACK) also room in the half-open
    /// budget, so a SYN flood cannot crowd out established flows.
    #[inline(always)]
    pub fn admit(
        &self,
        opening: Opening,
        fill: u64,
        half_open: u64,
    ) -> Result<(), UntrackedReason> {
        if fill >= self.capacity {
            Err(UntrackedReason::TableFull)
        } else if opening != Opening::Midstream && half_open >= self.half_open_budget {
            Err(UntrackedReason::HalfOpenBudget)
        } else {
            Ok(())
        }
    }

    /// Why a segment is turned away before the table is even searched, if it is: a bare SYN the
    /// admission rule refuses. Such a SYN could only start a flow, and it may not; answering it
    /// without the lookup keeps a SYN flood against a full table at the cost of a parse (the
    /// lookup alone costs more than that). The price: under that overload, a SYN reusing the key
    /// of a flow still in TIME-WAIT is not tracked either (the old record expires on its own).
    /// `books` (fill, half-open) is read only for a bare SYN, so other segments pay nothing.
    #[inline(always)]
    pub fn turn_away_before_lookup(
        &self,
        seg: &Segment,
        books: impl FnOnce() -> Option<(u64, u64)>,
    ) -> Option<UntrackedReason> {
        if classify_opening(seg) != Ok(Opening::Syn) {
            return None;
        }
        let (fill, half_open) = books()?;
        self.admit(Opening::Syn, fill, half_open).err()
    }
}

/// Kernel-owned fill counters (one array slot, updated with atomic adds; inserts are rare).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TableCounters {
    /// Flows the kernel inserted.
    pub inserted: u64,
    /// Of those, inserted as half-open.
    pub half_open_inserted: u64,
    /// Half-open flows the kernel saw leave the handshake.
    pub half_open_released: u64,
}

/// Daemon-owned counters (one array slot, written only by the daemon, read by the kernel). Pinned
/// with the table so a restarted daemon keeps the books of the one before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UserCounters {
    /// Flows the daemon inserted (seeding from the kernel's socket table).
    pub inserted: u64,
    /// Flows the daemon deleted (timeouts).
    pub deleted: u64,
    /// Half-open flows the daemon deleted (handshake timeouts).
    pub half_open_released: u64,
    /// Handshakes the daemon timed out.
    pub handshake_timeouts: u64,
    /// Connection-gauge deltas for what the daemon inserted and deleted, laid out like the kernel's
    /// `[role][state]` slots.
    pub conn: [u64; 2 * crate::state::TcpState::COUNT],
}

impl TableCounters {
    /// Flows in the table and of those half-open, given the daemon's side of the books.
    #[inline(always)]
    pub fn fill(&self, user: &UserCounters) -> (u64, u64) {
        let fill = self
            .inserted
            .wrapping_add(user.inserted)
            .wrapping_sub(user.deleted);
        let half_open = self
            .half_open_inserted
            .wrapping_sub(self.half_open_released)
            .wrapping_sub(user.half_open_released);
        (fill, half_open)
    }
}

impl UserCounters {
    /// Books a flow the daemon inserted: its counted endpoints enter the connection gauges.
    pub fn record_insert(&mut self, w: crate::flow::FlowWord) {
        self.book_insert();
        self.shift_gauges(w, 1);
    }

    /// Books a flow the daemon deleted: its counted endpoints leave the connection gauges, and a
    /// half-open flow gives back its budget slot.
    pub fn record_delete(&mut self, w: crate::flow::FlowWord) {
        self.book_delete(w);
        self.shift_gauges(w, 1u64.wrapping_neg());
    }

    /// The table-fill half of [`UserCounters::record_insert`]: kept in the host scope's slot,
    /// the one the kernel reads, whatever scope the flow is in.
    pub fn book_insert(&mut self) {
        self.inserted = self.inserted.wrapping_add(1);
    }

    /// The table-fill half of [`UserCounters::record_delete`].
    pub fn book_delete(&mut self, w: crate::flow::FlowWord) {
        self.deleted = self.deleted.wrapping_add(1);
        if w.has(crate::flow::flowflags::HALF_OPEN) {
            self.half_open_released = self.half_open_released.wrapping_add(1);
        }
    }

    /// Books a pending midstream pickup the daemon confirmed against the kernel's socket table:
    /// `w`, the word it wrote (pending cleared), enters the gauges.
    pub fn record_confirm(&mut self, w: crate::flow::FlowWord) {
        self.shift_gauges(w, 1);
    }

    /// Books an endpoint the daemon ended while its flow stays (tap mode: its own timeout ran
    /// out while the peer's did not): it leaves the gauges. `w` is the word before.
    pub fn record_end(&mut self, w: crate::flow::FlowWord, side: crate::flow::Side) {
        use crate::{counters::idx, state::TcpState};
        let state = w.state(side);
        if w.is_counted(side) && state != TcpState::Closed {
            let slot = (idx::conn(w.role(side), state) - idx::CONN) as usize;
            self.conn[slot] = self.conn[slot].wrapping_sub(1);
        }
    }

    /// Moves the connection gauges of `w`'s counted endpoints by `delta` (1 or -1 as wrapping):
    /// the gauge half, kept in the slot of the flow's own scope.
    pub fn shift_gauges(&mut self, w: crate::flow::FlowWord, delta: u64) {
        use crate::{counters::idx, flow::Side, state::TcpState};
        for side in [Side::A, Side::B] {
            let state = w.state(side);
            if w.is_counted(side) && state != TcpState::Closed {
                let slot = (idx::conn(w.role(side), state) - idx::CONN) as usize;
                self.conn[slot] = self.conn[slot].wrapping_add(delta);
            }
        }
    }
}

/// What a running daemon publishes for the inspection commands (one array slot, written by the
/// daemon at start-up, never read by the programs), so `tcpstate leaks` judges a leak by the same
/// threshold as `tcpstate_close_wait_leaked`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Settings {
    /// `--close-wait-leak-after`, in nanoseconds; 0 until a daemon has published it.
    pub close_wait_leak_after_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), u64 fields and arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TableCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UserCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{flags::*, WSCALE_NONE};

    const CFG: Config = Config {
        capacity: 100,
        half_open_budget: 25,
        log_events: 0,
        scopes: 1,
        transit_check: 0,
        slots4: 0,
        slots6: 0,
        seed: [0; 5],
    };

    fn seg(flags: u8) -> Segment {
        Segment {
            seq: 1,
            ack: 0,
            len: 0,
            win: 1000,
            flags,
            wscale: WSCALE_NONE,
        }
    }

    #[test]
    fn admission_needs_room_and_handshakes_need_budget() {
        use UntrackedReason::*;
        for o in [Opening::Syn, Opening::SynAck, Opening::Midstream] {
            assert_eq!(CFG.admit(o, 99, 24), Ok(()), "{o:?}");
            // A full table is named first.
            assert_eq!(CFG.admit(o, 100, 25), Err(TableFull), "{o:?}");
        }
        assert_eq!(CFG.admit(Opening::Syn, 10, 25), Err(HalfOpenBudget));
        assert_eq!(CFG.admit(Opening::SynAck, 10, 25), Err(HalfOpenBudget));
        // Picked up midstream: established, not half-open.
        assert_eq!(CFG.admit(Opening::Midstream, 10, 25), Ok(()));
    }

    #[test]
    fn only_refused_bare_syns_are_turned_away_before_the_lookup() {
        use UntrackedReason::*;
        let books = |fill, half_open| move || Some((fill, half_open));
        assert_eq!(CFG.turn_away_before_lookup(&seg(SYN), books(99, 24)), None);
        assert_eq!(
            CFG.turn_away_before_lookup(&seg(SYN), books(100, 0)),
            Some(TableFull)
        );
        assert_eq!(
            CFG.turn_away_before_lookup(&seg(SYN), books(10, 25)),
            Some(HalfOpenBudget)
        );
        // No books: searched as usual.
        assert_eq!(CFG.turn_away_before_lookup(&seg(SYN), || None), None);
        // Anything else may belong to a tracked flow: looked up, and the books are not read.
        for flags in [
            SYN | ACK,
            SYN | RST,
            SYN | FIN,
            ACK,
            ACK | PSH,
            FIN | ACK,
            RST,
            0,
        ] {
            let unread = || -> Option<(u64, u64)> { panic!("books read for {flags:#x}") };
            assert_eq!(CFG.turn_away_before_lookup(&seg(flags), unread), None);
        }
    }
}
