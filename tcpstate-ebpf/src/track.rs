//! One segment through the flow table: look up, run the shared state machine, write back, count.
//! All decisions are tcpstate-common's; this file only touches maps.

use crate::packet::ParseStatus;
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
    Global,
};
use tcpstate_common::{
    commit::{atomic_add, commit},
    counters::{for_each_delta, idx, Hook, UntrackedReason},
    flow::{flowflags, FlowKey, FlowRecord, FlowWord, Side},
    maps::{Config, Settings, TableCounters, UserCounters, CAPACITY_SLACK, SYN_COOKIE_PORTS},
    packet::TcpPacket,
    state::{
        classify_opening, cookie_synack_into, open_into, quiet, step_into, write, InvalidReason,
        Step,
    },
    tcp::flags::{ACK, FIN, RST, SYN},
};

/// Default capacity compiled into the object; the daemon sets the real one at load time.
const DEFAULT_CAPACITY: u32 = 131_072;

// No preallocation: elements are allocated on insert and freed after an RCU grace period, so a
// record the daemon deletes can never be reused under a program still holding its pointer. LRU is
// avoided on purpose: it evicts silently and incrementally kept gauges would drift.
#[map(name = "TCPSTATE_FLOWS")]
static FLOWS: HashMap<FlowKey, FlowRecord> =
    HashMap::pinned(DEFAULT_CAPACITY + CAPACITY_SLACK, BPF_F_NO_PREALLOC);

#[map(name = "TCPSTATE_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(idx::COUNT, 0);

#[map(name = "TCPSTATE_TABLE")]
static TABLE: Array<TableCounters> = Array::pinned(1, 0);

#[map(name = "TCPSTATE_USER")]
static USER: Array<UserCounters> = Array::pinned(1, 0);

/// Written by the daemon for the inspection commands; the programs never read it. Declared here
/// so the loader creates and pins it with the others.
#[map(name = "TCPSTATE_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Working space for one segment: the parsed packet and the state machine's [`Step`]. Both are too
/// big for the 512-byte stack, which the verifier sums over a call chain.
pub struct Scratch {
    pub pkt: TcpPacket,
    pub step: Step,
    /// The rare event this segment caused, for the entry point to log ([`Event`]).
    pub event: Event,
    /// The segment is a SYN-ACK the local stack sent from a SYN cookie ([`mark_syn_cookie`]).
    /// False unless the TC egress program sets it for this packet.
    pub cookie: bool,
}

/// A rare event worth a kernel log line (aya-log, when `--kernel-log` enables it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    Invalid(InvalidReason),
    Untracked(UntrackedReason),
    ResetAccepted,
}

#[map(name = "TCPSTATE_SYN_COOKIES")]
static SYN_COOKIES: Array<u64> = Array::pinned(SYN_COOKIE_PORTS, 0);

#[map(name = "TCPSTATE_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Whether rare events go to aya-log (`--kernel-log`): a load-time constant, so with logging off
/// the verifier drops every use of [`Scratch::event`].
#[inline(always)]
pub fn logging() -> bool {
    TCPSTATE_CONFIG.load().log_events != 0
}

impl Scratch {
    /// This CPU's slot. Nothing else runs on this CPU while a program does (see `bump`), and each
    /// program run overwrites what it reads before reading it.
    #[inline(always)]
    pub fn get() -> Option<&'static mut Scratch> {
        // SAFETY: per-CPU array value, valid for the program run, exclusively ours (above).
        let s = SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })?;
        s.cookie = false;
        Some(s)
    }
}

#[unsafe(no_mangle)]
static TCPSTATE_CONFIG: Global<Config> = Global::new(Config {
    log_events: 0,
    capacity: DEFAULT_CAPACITY as u64,
    half_open_budget: DEFAULT_CAPACITY as u64 / 4,
});

/// Where the program sits, which decides who is local.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Host mode, XDP: the receiver is the local endpoint.
    HostIngress,
    /// Host mode, TC egress: the sender is the local endpoint.
    HostEgress,
    /// Tap mode: both directions on one port; both endpoints counted.
    Tap,
}

/// Racing CPUs rarely collide more than once; after this many lost compare-and-swaps the segment is
/// dropped from tracking rather than spinning (the verifier also wants a bound).
const MAX_ATTEMPTS: u32 = 4;

#[inline(always)]
pub fn count(slot: u32) {
    bump(slot, 1);
}

#[inline(always)]
fn bump(slot: u32, delta: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot; XDP runs in softirq and TC egress with bottom halves disabled, so
        // nothing else updates this CPU's copy concurrently.
        unsafe { *p = (*p).wrapping_add(delta) };
    }
}

#[inline(always)]
fn table_add(field: fn(*mut TableCounters) -> *mut u64) {
    if let Some(t) = TABLE.get_ptr_mut(0) {
        // SAFETY: array value pointers are valid and 8-byte aligned; fields are u64.
        unsafe { atomic_add(field(t), 1) };
    }
}

/// Tracks one parsed frame. Never fails the packet: every outcome is a counter.
#[inline(always)]
pub fn track(status: ParseStatus, scratch: &mut Scratch, hook: Hook, view: View) {
    match status {
        ParseStatus::NotTcp => return,
        ParseStatus::Skip(why) => return count(idx::SKIPPED + why as u32),
        ParseStatus::Tcp => {}
    }
    bump(idx::SEGMENTS + hook as u32, 1);
    if let Some(why) = turned_away(&scratch.pkt) {
        bump(idx::UNTRACKED + why as u32, 1);
        scratch.event = Event::Untracked(why);
        return;
    }
    // SAFETY: helper without arguments. The coarse clock (jiffies resolution) is enough for
    // last-seen stamps; transitions re-stamp with the precise clock (`precise_stamps`).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut attempt = 0;
    while attempt < MAX_ATTEMPTS {
        attempt += 1;
        match update(scratch, now) {
            Found::Done => return,
            Found::Raced => continue,
            Found::Missing => {
                if insert_new(scratch, view, now) {
                    return;
                }
                // Another CPU inserted the key first: update theirs.
            }
        }
    }
}

/// Host mode, TC egress: marks a SYN-ACK that leaves without a socket as a SYN cookie, and counts
/// it for its local port. Linux attaches the request socket to every SYN-ACK it sends from its SYN
/// queue (and the listener to a Fast Open one), but none to a cookie's, which it keeps no state
/// for (net/ipv4/tcp_output.c, tcp_make_synack: TCP_SYNACK_COOKIE).
#[inline(always)]
pub fn mark_syn_cookie(ctx: &TcContext, scratch: &mut Scratch, status: ParseStatus) {
    if status != ParseStatus::Tcp || scratch.pkt.seg.flags & (SYN | ACK | RST | FIN) != SYN | ACK {
        return;
    }
    // SAFETY: the program's own context; the verifier allows TC programs to read `sk` (a socket
    // pointer or NULL), which is only compared with NULL here.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if !sk.is_null() {
        return;
    }
    scratch.cookie = true;
    count(idx::SYN_COOKIES);
    if let Some(c) = SYN_COOKIES.get_ptr_mut(scratch.pkt.sport as u32) {
        // SAFETY: array value pointers are valid and 8-byte aligned.
        unsafe { atomic_add(c, 1) };
    }
}

/// [`Config::turn_away_before_lookup`]: a bare SYN meeting a full table or a spent half-open
/// budget is answered before the lookup; other segments do not read the books.
#[inline(always)]
fn turned_away(pkt: &TcpPacket) -> Option<UntrackedReason> {
    TCPSTATE_CONFIG
        .load()
        .turn_away_before_lookup(&pkt.seg, books)
}

/// Table fill and half-open flows from the kernel's and the daemon's books.
#[inline(always)]
fn books() -> Option<(u64, u64)> {
    Some(TABLE.get(0)?.fill(USER.get(0)?))
}

/// What [`update`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    Done,
    /// Another CPU changed the record between our read and our write.
    Raced,
    Missing,
}

/// Looks the flow up and advances it. A BPF function of its own, working on the scratch copy of
/// the segment, never on packet memory.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: no copies of the key on the 512-byte stack"
)]
fn update(scratch: &mut Scratch, now: u64) -> Found {
    let tcp = &scratch.pkt;
    let (key, sender) = FlowKey::canonical(tcp.src, tcp.sport, tcp.dst, tcp.dport);
    let Some(ptr) = FLOWS.get_ptr_mut(&key) else {
        return Found::Missing;
    };
    // SAFETY: a value pointer returned by lookup stays valid for this program run (RCU). The
    // record is read in place; the word it was computed from is re-checked by `commit`.
    let rec = unsafe { &*ptr };
    // The hot path: established data and ACKs within a coarse second change nothing, which the
    // map value itself tells; no copy of the record, no write.
    if quiet(rec, sender, &tcp.seg, now) {
        return Found::Done;
    }
    let word = rec.word;
    let st = &mut scratch.step;
    // One inlined copy of the state machine: the cookie case is tried first, on its own.
    if !(scratch.cookie && cookie_synack_into(st, rec, sender, &scratch.pkt.seg, now)) {
        step_into(st, rec, sender, &scratch.pkt.seg, now);
    }
    if st.write == 0 && st.invalid.is_none() {
        return Found::Done;
    }
    precise_stamps(st, FlowWord::from_bits(word));
    // SAFETY: as above; map values are 8-byte aligned.
    if !unsafe { commit(ptr, word, st) } {
        return Found::Raced;
    }
    scratch.event = match (st.invalid, st.rst) {
        (Some(why), _) => Event::Invalid(why),
        (None, true) => Event::ResetAccepted,
        _ => Event::None,
    };
    account(FlowWord::from_bits(word), st, sender);
    Found::Done
}

/// The lookup `update` starts with, alone (for `tcpstate_xdp_lookup_floor`). Writes whether the
/// flow was found into the scratch slot so the lookup cannot be optimized away.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: no copy of the key on the stack"
)]
pub fn lookup_only(scratch: &mut Scratch) {
    let tcp = &scratch.pkt;
    let (key, _) = FlowKey::canonical(tcp.src, tcp.sport, tcp.dst, tcp.dport);
    let found = FLOWS.get_ptr_mut(&key).is_some();
    scratch.event = if found {
        Event::None
    } else {
        Event::Untracked(UntrackedReason::InsertFailed)
    };
}

/// Stamps that measure handshakes are redone with the precise clock (see
/// [`Step::needs_precise_clock`]); only they pay for it.
#[inline(always)]
fn precise_stamps(st: &mut Step, old: FlowWord) {
    if !st.needs_precise_clock(old) {
        return;
    }
    // SAFETY: helper without arguments.
    let precise = unsafe { bpf_ktime_get_ns() };
    for side in [Side::A, Side::B] {
        if st.write & write::since(side) != 0 {
            st.rec.since_ns[side.index()] = precise;
        }
    }
    if st.write & write::SYN_NS != 0 {
        st.rec.syn_ns = precise;
    }
}

#[inline(always)]
fn account(old: FlowWord, st: &Step, sender: Side) {
    for_each_delta(old, st, sender, bump);
    if st.half_open_released {
        table_add(|t| unsafe { core::ptr::addr_of_mut!((*t).half_open_released) });
    }
}

/// Starts tracking a flow the table does not hold. Returns `false` only when another CPU inserted
/// the same key meanwhile. A separate BPF function: its frame (the opening record and its step)
/// does not add to the lookup path's stack.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: no copies of the key or record on the 512-byte stack"
)]
fn insert_new(scratch: &mut Scratch, view: View, now: u64) -> bool {
    // A SYN cookie's SYN-ACK whose SYN was not tracked: the server keeps no state, so neither do
    // we; the ACK returning the cookie is picked up midstream.
    if scratch.cookie {
        return true;
    }
    let tcp = &scratch.pkt;
    let (key, sender) = FlowKey::canonical(tcp.src, tcp.sport, tcp.dst, tcp.dport);
    let counted = match view {
        View::HostIngress => sender.other().bit(),
        View::HostEgress => sender.bit(),
        View::Tap => Side::A.bit() | Side::B.bit(),
    };
    // Decide from the flags alone, then check the fill and the half-open budget: a SYN against a
    // full table or a spent budget is turned away before the state machine or the map are touched.
    let opening = match classify_opening(&scratch.pkt.seg) {
        Ok(o) => o,
        Err(why) => {
            bump(idx::INVALID + why as u32, 1);
            scratch.event = Event::Invalid(why);
            return true;
        }
    };
    let Some((fill, half_open)) = books() else {
        return true;
    };
    if let Err(why) = TCPSTATE_CONFIG.load().admit(opening, fill, half_open) {
        bump(idx::UNTRACKED + why as u32, 1);
        scratch.event = Event::Untracked(why);
        return true;
    }
    let st = &mut scratch.step;
    if let Err(why) = open_into(st, sender, &scratch.pkt.seg, counted, now, key.port) {
        // Unreachable after classify_opening, but counted rather than assumed.
        bump(idx::INVALID + why as u32, 1);
        return true;
    }
    if let Some(why) = st.invalid {
        bump(idx::INVALID + why as u32, 1);
        scratch.event = Event::Invalid(why);
        return true;
    }
    // SAFETY: helper without arguments.
    let precise = unsafe { bpf_ktime_get_ns() };
    st.rec.since_ns = [precise, precise];
    if st.rec.syn_ns != 0 {
        st.rec.syn_ns = precise;
    }
    match FLOWS.insert(&key, &st.rec, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // -EEXIST: lost the race to another CPU.
        Err(-17) => return false,
        Err(_) => {
            bump(idx::UNTRACKED + UntrackedReason::InsertFailed as u32, 1);
            scratch.event = Event::Untracked(UntrackedReason::InsertFailed);
            return true;
        }
    }
    table_add(|t| unsafe { core::ptr::addr_of_mut!((*t).inserted) });
    if st.rec.word().has(flowflags::HALF_OPEN) {
        table_add(|t| unsafe { core::ptr::addr_of_mut!((*t).half_open_inserted) });
    }
    bump(idx::opened(opening), 1);
    let before = FlowWord {
        counted,
        ..FlowWord::default()
    };
    for_each_delta(before, st, sender, bump);
    true
}
