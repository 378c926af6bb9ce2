//! Map names, the load-time configuration and the table-fill counters both sides use.

/// Map names as they appear in the object file and under the pin directory.
pub const FLOWS: &str = "TCPSTATE_FLOWS";
pub const COUNTERS: &str = "TCPSTATE_COUNTERS";
pub const TABLE: &str = "TCPSTATE_TABLE";
pub const USER: &str = "TCPSTATE_USER";
/// Name of the [`Config`] global.
pub const CONFIG: &str = "TCPSTATE_CONFIG";

/// Extra map slots above the configured capacity. The fill check and the insert are not one atomic
/// step, so CPUs racing past the check may overshoot by at most one insert each; the slack keeps
/// those inserts from failing (a failed insert into a full hash costs ~0.7 us).
pub const CAPACITY_SLACK: u32 = 256;

/// Load-time configuration, a read-only global in the object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// Flows the table may hold (the map has `capacity + CAPACITY_SLACK` slots).
    pub capacity: u64,
    /// Half-open flows (created by a SYN or SYN-ACK, not yet out of the handshake) allowed at once.
    pub half_open_budget: u64,
    /// Non-zero when the entry points hand rare events to aya-log (`--kernel-log`). A read-only
    /// constant: at 0 the verifier removes the event bookkeeping from every path.
    pub log_events: u64,
}

impl Config {
    /// Whether a segment with these TCP `flags` is turned away before the table is searched: a
    /// bare SYN (no ACK, RST or FIN) while the table is full or the half-open budget is spent.
    /// Such a SYN could only start a flow, and it may not; answering without the lookup keeps a
    /// SYN flood against a full table at the cost of a parse (the lookup alone costs more than
    /// the target for this case). The price: under that overload, a SYN reusing the key of a
    /// flow still in TIME-WAIT is not tracked either (the old record expires on its own).
    #[inline(always)]
    pub fn turn_away_syn(
        &self,
        flags: u8,
        fill: u64,
        half_open: u64,
    ) -> Option<crate::counters::UntrackedReason> {
        use crate::{counters::UntrackedReason, tcp::flags::*};
        if flags & (SYN | ACK | RST | FIN) != SYN {
            return None;
        }
        if fill >= self.capacity {
            Some(UntrackedReason::TableFull)
        } else if half_open >= self.half_open_budget {
            Some(UntrackedReason::HalfOpenBudget)
        } else {
            None
        }
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
        self.inserted = self.inserted.wrapping_add(1);
        self.shift_gauges(w, 1);
    }

    /// Books a flow the daemon deleted: its counted endpoints leave the connection gauges, and a
    /// half-open flow gives back its budget slot.
    pub fn record_delete(&mut self, w: crate::flow::FlowWord) {
        self.deleted = self.deleted.wrapping_add(1);
        self.shift_gauges(w, 1u64.wrapping_neg());
        if w.has(crate::flow::flowflags::HALF_OPEN) {
            self.half_open_released = self.half_open_released.wrapping_add(1);
        }
    }

    fn shift_gauges(&mut self, w: crate::flow::FlowWord, delta: u64) {
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), u64 fields and arrays only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TableCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UserCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{counters::UntrackedReason, tcp::flags::*};

    #[test]
    fn only_bare_syns_are_turned_away_and_only_under_overload() {
        let cfg = Config {
            capacity: 100,
            half_open_budget: 25,
            log_events: 0,
        };
        // Room in the table and in the budget: searched as usual.
        assert_eq!(cfg.turn_away_syn(SYN, 99, 24), None);
        // Full table, spent budget; the table's limit is named first.
        assert_eq!(
            cfg.turn_away_syn(SYN, 100, 0),
            Some(UntrackedReason::TableFull)
        );
        assert_eq!(
            cfg.turn_away_syn(SYN, 100, 25),
            Some(UntrackedReason::TableFull)
        );
        assert_eq!(
            cfg.turn_away_syn(SYN, 10, 25),
            Some(UntrackedReason::HalfOpenBudget)
        );
        // Anything else may belong to a tracked flow: it is always looked up.
        for flags in [SYN | ACK, SYN | RST, SYN | FIN, ACK, FIN | ACK, RST, 0] {
            assert_eq!(cfg.turn_away_syn(flags, 1_000, 1_000), None, "{flags:#x}");
        }
    }
}
