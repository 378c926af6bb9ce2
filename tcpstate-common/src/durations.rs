//! How long endpoints take: the time an endpoint stayed in CLOSE_WAIT before its application
//! closed (`tcpstate_close_wait_duration_seconds`), and how long a connection lived, from its SYN
//! to the endpoint's close (`tcpstate_connection_duration_seconds`): its last FIN exchanged
//! (LAST_ACK, TIME_WAIT, CLOSED) or an RST.
//!
//! Both are measured where the endpoint's state changes, from stamps the record already holds
//! (the CLOSE_WAIT entry in `since_ns`, the SYN in `syn_ns`), so the record grows by nothing and
//! the established fast path pays nothing: a connection adds one or two observations when it
//! closes. The kernel adds them to [`DURATIONS`], an array of histogram rows the daemon maps into
//! its memory; the daemon adds the endings it decides itself (a socket that went away, a timeout)
//! to the same rows, and reads them at its background walk, never at a scrape.
//!
//! Rows: a host server endpoint is counted under its local port when the daemon gave the port a
//! row ([`PORT_ROWS`], the ports it labels), under row 0 (`port="other"`) otherwise; client
//! endpoints (ephemeral local ports) always under row 0. A container's endpoints are counted
//! under one row of their scope (`port="other"` with the scope's labels).

use crate::{
    flow::{flowflags, FlowWord, Role, Side},
    state::{Step, TcpState},
};

/// Map name: `[Measure][row]` histogram rows ([`DurationRow`]), `BPF_F_MMAPABLE`, updated with
/// atomic adds by the programs and the daemon.
pub const DURATIONS: &str = "TCPSTATE_DURATIONS";
/// Map name: the host's local port -> its row in [`DURATIONS`] (0: none, counted as "other").
/// Written by the daemon when it labels a port, kept across restarts with the rows.
pub const PORT_ROWS: &str = "TCPSTATE_PORT_ROWS";
/// Slots of [`PORT_ROWS`]: one per port.
pub const PORT_ROW_SLOTS: u32 = 1 << 16;
/// Rows reserved for the host in each [`Measure`]: row 0 for "other", and up to 255 labelled
/// ports. A port labelled past that is counted as "other".
pub const HOST_ROWS: u32 = 256;

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Measure {
    /// Time from the peer's FIN to the local application's close (its FIN or RST), or to its
    /// socket going away.
    CloseWait = 0,
    /// SYN to close, of a client endpoint.
    ClientLifetime = 1,
    /// SYN to close, of a server endpoint.
    ServerLifetime = 2,
}

impl Measure {
    pub const COUNT: u32 = 3;
    pub const ALL: [Measure; 3] = [
        Measure::CloseWait,
        Measure::ClientLifetime,
        Measure::ServerLifetime,
    ];
    #[inline(always)]
    pub const fn lifetime(role: Role) -> Measure {
        match role {
            Role::Client => Measure::ClientLifetime,
            Role::Server => Measure::ServerLifetime,
        }
    }
}

/// Upper bounds of the buckets, nanoseconds: 1 ms (an application closing as soon as it reads the
/// FIN, a request/response on one host) to a day (long-lived connections, slow leaks); above
/// that, +Inf. One set for both histograms, so a dashboard compares them bucket by bucket.
/// Closing stamps come from the coarse clock (the kernel's tick, 4 ms at HZ=250), so a close
/// within a tick reads 0 or one tick: the first two buckets say "within a tick or two".
pub const BOUNDS_NS: [u64; 13] = [
    1_000_000,
    5_000_000,
    25_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    30_000_000_000,
    120_000_000_000,
    600_000_000_000,
    3_600_000_000_000,
    21_600_000_000_000,
    86_400_000_000_000,
];
/// Buckets per row, +Inf included.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// The bucket a duration falls in: the number of bounds below it (an unrolled comparison each,
/// no loop for the verifier).
#[inline(always)]
pub fn bucket(ns: u64) -> u32 {
    let mut i = 0u32;
    for b in BOUNDS_NS {
        i += (ns > b) as u32;
    }
    i
}

/// One histogram: non-cumulative bucket counts and the sum of the observations. 128 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct DurationRow {
    pub buckets: [u64; BUCKETS],
    /// Sum of the observations, microseconds (nanoseconds would wrap after 2e5 day-long
    /// connections).
    pub sum_us: u64,
    pub _spare: u64,
}
const _: () = assert!(core::mem::size_of::<DurationRow>() == 128);

impl DurationRow {
    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }
    /// Adds `other`'s observations to this row's.
    pub fn add(&mut self, other: &DurationRow) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.sum_us = self.sum_us.wrapping_add(other.sum_us);
    }
    /// Counts one observation (the daemon's and the replay's way; the kernel adds atomically).
    pub fn observe(&mut self, ns: u64) {
        let (b, us) = observation(ns);
        self.buckets[b] = self.buckets[b].wrapping_add(1);
        self.sum_us = self.sum_us.wrapping_add(us);
    }
}

/// Rows per [`Measure`] for a counter array sized for `scopes` scopes: the host's, then one per
/// container scope.
#[inline(always)]
pub const fn rows_per_measure(scopes: u32) -> u32 {
    HOST_ROWS + scopes
}

/// Entries of [`DURATIONS`] for `scopes` scopes.
pub const fn entries(scopes: u32) -> u32 {
    Measure::COUNT * rows_per_measure(scopes)
}

/// The row of an endpoint in `scope` with `role`; `port_row` gives a host server port's row from
/// [`PORT_ROWS`] (asked only then). The host's rows are below [`HOST_ROWS`], a container scope's
/// its own.
#[inline(always)]
pub fn row(scope: u32, role: Role, port_row: impl FnOnce() -> u32) -> u32 {
    if scope != crate::scope::HOST {
        return HOST_ROWS + scope;
    }
    match role {
        Role::Server => {
            let r = port_row();
            if r < HOST_ROWS {
                r
            } else {
                0
            }
        }
        Role::Client => 0,
    }
}

/// The index in [`DURATIONS`] of `measure`'s `row`, for an array sized for `scopes`.
#[inline(always)]
pub const fn index(measure: Measure, row: u32, scopes: u32) -> u32 {
    measure as u32 * rows_per_measure(scopes) + row
}

/// No observation.
pub const NONE: u64 = u64::MAX;

/// What one step ended, per side: how long the side stayed in CLOSE_WAIT, and how long its
/// connection lived ([`NONE`] where nothing ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub close_wait_ns: [u64; 2],
    pub lifetime_ns: [u64; 2],
}

impl Ended {
    pub const NOTHING: Ended = Ended {
        close_wait_ns: [NONE; 2],
        lifetime_ns: [NONE; 2],
    };
    #[inline(always)]
    pub fn any(&self) -> bool {
        (self.close_wait_ns[0] & self.close_wait_ns[1] & self.lifetime_ns[0] & self.lifetime_ns[1])
            != NONE
    }
    /// Calls `f(measure, side, ns)` for each observation.
    #[inline(always)]
    pub fn for_each(&self, word: FlowWord, mut f: impl FnMut(Measure, Side, u64)) {
        for side in [Side::A, Side::B] {
            let cw = self.close_wait_ns[side.index()];
            if cw != NONE {
                f(Measure::CloseWait, side, cw);
            }
            let life = self.lifetime_ns[side.index()];
            if life != NONE {
                f(Measure::lifetime(word.role(side)), side, life);
            }
        }
    }
}

/// A state an endpoint holds a connection in. Its lifetime ends when it leaves them for LAST_ACK,
/// TIME_WAIT or CLOSED: both FINs are out (or an RST came), and what is left is the kernel's
/// wait for the last ACK. LAST_ACK counts as the end so that a final ACK lost beyond the
/// observer, which brings a CLOSED mirror back to LAST_ACK when the peer resends its FIN, cannot
/// end the same connection twice.
#[inline(always)]
const fn is_open(s: TcpState) -> bool {
    matches!(
        s,
        TcpState::Established
            | TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::CloseWait
            | TcpState::Closing
    )
}

/// Where a connection's lifetime ends ([`is_open`]).
#[inline(always)]
const fn is_over(s: TcpState) -> bool {
    matches!(s, TcpState::LastAck | TcpState::TimeWait | TcpState::Closed)
}

/// Whether a step from `old` to `new` can end anything measured here: a side moved into LAST_ACK,
/// TIME_WAIT or CLOSED (out of CLOSE_WAIT, or out of its connection). The kernel asks this before
/// [`ended_into`], so a FIN from ESTABLISHED or an ACK moving FIN_WAIT_1 on pays two compares.
#[inline(always)]
pub fn may_end(old: FlowWord, new: FlowWord) -> bool {
    let moved = |side: Side| {
        let (o, n) = (old.state(side), new.state(side));
        o != n && is_over(n)
    };
    moved(Side::A) || moved(Side::B)
}

/// What `st`, computed from a record whose word was `old` and whose state stamps were
/// `old_since`, ended for the counted endpoints. The new stamps are `st.rec.since_ns` (the step
/// stamps a side whose state changed). An endpoint seeded from the kernel's socket table has no
/// known CLOSE_WAIT entry (its stamp is when the daemon found it) and no SYN stamp: its figures
/// would be lower bounds, and are left out, like its handshake.
#[inline(always)]
pub fn ended(old: FlowWord, old_since: &[u64; 2], st: &Step) -> Ended {
    let mut e = Ended::NOTHING;
    ended_into(&mut e, old, old_since, st);
    e
}

/// [`ended`] writing into `e` (the kernel's lives in its per-CPU scratch, not on the stack).
#[inline(always)]
pub fn ended_into(e: &mut Ended, old: FlowWord, old_since: &[u64; 2], st: &Step) {
    *e = Ended::NOTHING;
    if st.invalid.is_some() {
        return;
    }
    let new = st.rec.word();
    // Spelled out per side: constant indexes for the verifier (see counters::for_each_delta).
    side_ended(e, old, new, old_since, st, Side::A);
    side_ended(e, old, new, old_since, st, Side::B);
}

#[inline(always)]
fn side_ended(
    e: &mut Ended,
    old: FlowWord,
    new: FlowWord,
    old_since: &[u64; 2],
    st: &Step,
    side: Side,
) {
    let (os, ns) = (old.state(side), new.state(side));
    // Into LAST_ACK, TIME_WAIT or CLOSED: out of CLOSE_WAIT by the application's FIN or an RST
    // (not to CLOSING: that is the mirror correcting a simultaneous close, the endpoint never
    // waited), or out of the connection.
    if os == ns || !old.is_counted(side) || !is_over(ns) {
        return;
    }
    let since = old_since[side.index()];
    end_of(
        e,
        old,
        side,
        os,
        since,
        st.rec.syn_ns,
        st.rec.since_ns[side.index()],
    );
}

/// What `side`, in state `from` since `since`, ends at `now`: its CLOSE_WAIT dwell and its
/// connection's lifetime, where they are known. The one rule for the kernel's steps
/// ([`ended`]) and the daemon's endings ([`ended_by_daemon`]).
#[inline(always)]
fn end_of(
    e: &mut Ended,
    word: FlowWord,
    side: Side,
    from: TcpState,
    since: u64,
    syn_ns: u64,
    now: u64,
) {
    if from == TcpState::CloseWait && !word.has(flowflags::SEEDED) {
        e.close_wait_ns[side.index()] = now.saturating_sub(since);
    }
    if is_open(from) && syn_ns != 0 {
        e.lifetime_ns[side.index()] = now.saturating_sub(syn_ns);
    }
}

/// What the daemon ends when it removes a flow, or ends an endpoint alone, at `now_ns`: the same
/// observations the kernel makes when a segment ends the endpoint.
pub fn ended_by_daemon(rec: &crate::FlowRecord, side: Side, now_ns: u64) -> Ended {
    let mut e = Ended::NOTHING;
    let w = rec.word();
    if w.is_counted(side) {
        let since = rec.since_ns[side.index()];
        end_of(&mut e, w, side, w.state(side), since, rec.syn_ns, now_ns);
    }
    e
}

/// The row words one observation of `ns` adds to: its bucket's index, and what it adds to the
/// sum (microseconds). The kernel, the daemon and the replay each add it their way.
#[inline(always)]
pub fn observation(ns: u64) -> (usize, u64) {
    let b = bucket(ns) as usize;
    (if b < BUCKETS { b } else { BUCKETS - 1 }, ns / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_bucket_whose_bound_is_not_below_them() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1_000_000), 0, "bounds are inclusive, like le");
        assert_eq!(bucket(1_000_001), 1);
        assert_eq!(bucket(86_400_000_000_000), 12);
        assert_eq!(bucket(u64::MAX), 13, "+Inf");
    }

    #[test]
    fn host_servers_get_their_port_row_clients_and_containers_do_not() {
        assert_eq!(row(0, Role::Server, || 7), 7);
        assert_eq!(
            row(0, Role::Server, || HOST_ROWS),
            0,
            "past the rows: other"
        );
        assert_eq!(row(0, Role::Client, || unreachable!()), 0);
        assert_eq!(row(3, Role::Server, || unreachable!()), HOST_ROWS + 3);
        assert_eq!(
            index(Measure::ServerLifetime, 5, 4),
            2 * (HOST_ROWS + 4) + 5
        );
        assert!(index(Measure::ServerLifetime, HOST_ROWS + 3, 4) < entries(4));
    }

    #[test]
    fn only_moves_into_a_closing_state_may_end_anything() {
        let word = |a: TcpState, b: TcpState| {
            let mut w = FlowWord::default();
            w.set_state(Side::A, a);
            w.set_state(Side::B, b);
            w
        };
        use TcpState::*;
        let est = word(Established, Established);
        assert!(
            !may_end(est, word(FinWait1, CloseWait)),
            "a FIN ends nothing yet"
        );
        assert!(may_end(word(FinWait2, CloseWait), word(TimeWait, LastAck)));
        assert!(may_end(est, word(Closed, Closed)), "an RST");
        assert!(!may_end(word(TimeWait, Closed), word(TimeWait, Closed)));
        assert!(
            !may_end(word(Closed, Closed), word(SynSent, Closed)),
            "a SYN reopening the key"
        );
    }

    #[test]
    fn a_row_sums_its_observations() {
        let mut r = DurationRow::default();
        r.observe(2_000_000);
        r.observe(3_000_000_000);
        assert_eq!(r.count(), 2);
        assert_eq!(r.sum_us, 3_002_000);
        assert_eq!((r.buckets[1], r.buckets[6]), (1, 1));
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), u64 fields and arrays only (128 bytes, asserted): no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::DurationRow {}
}
