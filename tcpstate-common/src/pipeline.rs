//! One segment through a flow table, as decisions: which segments the table must write, how a
//! flow it does not hold may start, and which counters each outcome moves. The kernel programs
//! (`tcpstate-ebpf/src/track.rs`) and the offline replay (`tcpstate replay`) both follow these
//! steps; only the table itself (a BPF hash map with compare-and-swap, or a process's own map)
//! differs between them.

use crate::{
    counters::{for_each_delta, idx, UntrackedReason},
    flow::{FlowRecord, FlowWord, Side},
    maps::Config,
    state::{classify_opening, open_into, quiet, step_into, InvalidReason, Opening, Step},
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
/// record itself) and steps that change nothing. On `true`, `st` holds what to write back (see
/// [`crate::commit::commit`]) and [`for_each_delta`] of the old word gives the counters.
#[inline(always)]
pub fn update_into(st: &mut Step, rec: &FlowRecord, sender: Side, seg: &Segment, now: u64) -> bool {
    if quiet(rec, sender, seg, now) {
        return false;
    }
    step_into(st, rec, sender, seg, now);
    st.write != 0 || st.invalid.is_some()
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
