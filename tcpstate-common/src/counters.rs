//! The per-CPU counter array: its index layout and how a [`Step`] turns into counter deltas.
//!
//! The kernel only counts; the daemon sums the slots over CPUs at scrape time (O(CPUs), never
//! O(flows)). Connection-gauge slots hold wrapping deltas (+1 on entering a state, -1 on leaving),
//! read as `i64` after summing.

use crate::{
    flow::{FlowWord, Role, Side},
    packet::SkipReason,
    state::{Handshake, InvalidReason, Opening, Step, TcpState},
};

/// Which program saw the segment. The `hook` label of `tcpstate_segments_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Hook {
    Xdp = 0,
    Tc = 1,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
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

/// Why a flow could not be tracked. The `reason` label of `tcpstate_flows_untracked_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UntrackedReason {
    /// The flow table is at capacity.
    TableFull = 0,
    /// A SYN (or SYN-ACK) found the half-open budget spent: a SYN flood cannot crowd out the rest.
    HalfOpenBudget = 1,
    /// The map refused the insert for another reason (kernel memory).
    InsertFailed = 2,
}

impl UntrackedReason {
    pub const COUNT: usize = 3;
    pub const ALL: [UntrackedReason; Self::COUNT] = [
        UntrackedReason::TableFull,
        UntrackedReason::HalfOpenBudget,
        UntrackedReason::InsertFailed,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            UntrackedReason::TableFull => "table_full",
            UntrackedReason::HalfOpenBudget => "half_open_budget",
            UntrackedReason::InsertFailed => "insert_failed",
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
    pub const RESETS: u32 = SEGMENTS + 2;
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
    pub const COUNT: u32 = OPENED + 3;

    #[inline(always)]
    pub const fn conn(role: Role, state: TcpState) -> u32 {
        CONN + role as u32 * STATES + state as u32
    }
    #[inline(always)]
    pub const fn resets(dir: RstDirection, state: TcpState) -> u32 {
        RESETS + dir as u32 * STATES + state as u32
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

/// Calls `bump(slot, delta)` for every counter `st` moves. `old` is the word before the segment;
/// for a flow just opened, an all-closed word with the record's `counted` bits.
#[inline(always)]
pub fn for_each_delta(old: FlowWord, st: &Step, sender: Side, mut bump: impl FnMut(u32, u64)) {
    if let Some(why) = st.invalid {
        bump(idx::INVALID + why as u32, 1);
        return;
    }
    let new = st.rec.word();
    for side in [Side::A, Side::B] {
        if !new.is_counted(side) {
            continue;
        }
        let (os, ns) = (old.state(side), new.state(side));
        let (or, nr) = (old.role(side), new.role(side));
        if os != ns || or != nr {
            if os != TcpState::Closed {
                bump(idx::conn(or, os), 1u64.wrapping_neg());
            }
            if ns != TcpState::Closed {
                bump(idx::conn(nr, ns), 1);
            }
        }
        if st.rst {
            let dir = if side == sender {
                RstDirection::Sent
            } else {
                RstDirection::Received
            };
            bump(idx::resets(dir, os), 1);
        }
    }
    match st.handshake {
        Handshake::None => {}
        h => bump(idx::HANDSHAKES + h as u32 - 1, 1),
    }
}
