//! One segment through the flow table: look up, run the shared state machine, write back, count.
//! All decisions are tcpstate-common's; this file only touches maps.

use crate::packet::ParseStatus;
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
    Global,
};
use tcpstate_common::{
    commit::{atomic_add, commit, compare_and_swap},
    counters::{for_each_delta, idx, retransmitted, Hook, UntrackedReason},
    durations::{self, DurationRow},
    flow::{flowflags, FlowKey, FlowKey4, FlowRecord, FlowWord, Side},
    maps::{
        retransmit_slot, Config, Settings, TableCounters, UserCounters, RETRANSMIT_SLOTS,
        SYN_COOKIE_PORTS,
    },
    packet::TcpPacket,
    pipeline::{open_new, opened_deltas, retract, update_into, NotOpened},
    scope::{self, ScopeInfo},
    state::{write, InvalidReason, Retransmit, Step},
    table::{self, find, insert, Homes, Inserted, Seed, Slot4, Slot6, Slots, TableKey, DEAD_WORD},
    tcp::flags::{ACK, FIN, RST, SYN},
};

/// One field of the load-time configuration, read where it lives: a volatile read of that field
/// alone (the compiler must not fold the object's default values in), where `Global::load`
/// copies the whole struct onto the 512-byte stack of every function that reads one field.
macro_rules! config {
    ($field:ident) => {
        config!(@ $field)
    };
    ($field:ident [$i:expr]) => {
        // SAFETY: as below; one word of the array field.
        unsafe {
            core::ptr::read_volatile(
                &raw const (*(&raw const TCPSTATE_CONFIG).cast::<Config>()).$field[$i],
            )
        }
    };
    (@ $field:ident) => {
        // SAFETY: `Global<T>` is `repr(transparent)` over a `MaybeUninit<T>` the object
        // initializes; a read of one plain field of the read-only configuration.
        unsafe {
            core::ptr::read_volatile(
                &raw const (*(&raw const TCPSTATE_CONFIG).cast::<Config>()).$field,
            )
        }
    };
}

/// Default capacity compiled into the object; the daemon sets the real one at load time.
const DEFAULT_CAPACITY: u32 = 131_072;
const DEFAULT_SLOTS4: u32 = table::slots_for(DEFAULT_CAPACITY, table::SLOT4_SIZE);
const DEFAULT_SLOTS6: u32 = table::slots_for(DEFAULT_CAPACITY / 8, table::SLOT6_SIZE);
/// Container interfaces the scope map holds by default; the daemon sets the real size at load time.
const DEFAULT_SCOPE_IFACES: u32 = 1024;

/// The flow tables' slots ([`tcpstate_common::table`]): arrays the programs index themselves and
/// the daemon maps into its memory, one for IPv4 flows (16-byte keys, 96-byte slots) and one for
/// every other flow. Nothing is ever evicted: a full neighbourhood is counted, and only the
/// daemon deletes (incrementally kept gauges would drift otherwise).
#[map(name = "TCPSTATE_FLOWS4")]
static FLOWS4: Array<Slot4> = Array::pinned(DEFAULT_SLOTS4, BPF_F_MMAPABLE);
#[map(name = "TCPSTATE_FLOWS6")]
static FLOWS6: Array<Slot6> = Array::pinned(DEFAULT_SLOTS6, BPF_F_MMAPABLE);

/// The table's hash key, kept with the table so a restarted daemon hashes as the one that filled
/// it. The programs read the copy in [`Config::seed`], a load-time constant.
#[map(name = "TCPSTATE_FLOW_SEED")]
static FLOW_SEED: Array<Seed> = Array::pinned(1, 0);

/// A flow table as the programs see it: its slot count from the configuration, its map.
macro_rules! table_view {
    ($(#[$doc:meta])* $name:ident, $key:ty, $slot:ty, $count:ident, $map:ident) => {
        $(#[$doc])*
        struct $name;

        impl Slots for $name {
            type Key = $key;
            #[inline(always)]
            fn count(&self) -> u32 {
                config!($count) as u32
            }
            #[inline(always)]
            fn get(&self, i: u32) -> Option<*mut $slot> {
                $map.get_ptr_mut(i)
            }
            #[inline(always)]
            fn forget(&self, v: u32) -> u32 {
                forget(v)
            }
        }
    };
}

table_view!(
    /// The IPv4 table.
    Table4, FlowKey4, Slot4, slots4, FLOWS4
);
table_view!(
    /// The other table.
    Table6, FlowKey, Slot6, slots6, FLOWS6
);

/// [`Slots::forget`]: through this CPU's scratch word, since the verifier does not track what map
/// memory holds.
#[inline(always)]
fn forget(v: u32) -> u32 {
    let Some(p) = FORGET.get_ptr_mut(0) else {
        return v;
    };
    // SAFETY: a per-CPU array value, this program's alone for the run.
    unsafe {
        core::ptr::write_volatile(p, v);
        core::ptr::read_volatile(p)
    }
}

/// One word per CPU for [`Table::forget`].
#[map(name = "TCPSTATE_FORGET")]
static FORGET: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The host scope's and the global counter slots, per CPU ([`tcpstate_common::maps::COUNTERS`]).
#[map(name = "TCPSTATE_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(idx::COUNT, 0);

/// Container scopes' slots, `idx::COUNT` per scope, added to atomically ([`tcpstate_common::maps::SCOPE_COUNTERS`];
/// the daemon sizes it for its scopes at load time and maps it into its memory).
#[map(name = "TCPSTATE_SCOPE_COUNTERS")]
static SCOPE_COUNTERS: Array<u64> = Array::pinned(idx::COUNT, BPF_F_MMAPABLE);

/// ifindex -> scope, for the host-side ends of container veths. Filled by the daemon before it
/// attaches the container programs to an interface, emptied after it detaches them. The programs
/// read it for ifindexes past [`scope::DIRECT_IFINDEXES`] only.
#[map(name = "TCPSTATE_SCOPES")]
static SCOPES: HashMap<u32, u32> = HashMap::pinned(DEFAULT_SCOPE_IFACES, 0);

/// The same scopes by ifindex, for the ifindexes below [`scope::DIRECT_IFINDEXES`]; 0 for none.
#[map(name = "TCPSTATE_IFACE_SCOPES")]
static IFACE_SCOPES: Array<u32> = Array::pinned(scope::DIRECT_IFINDEXES, 0);

/// What each scope is, written and read by the daemon and the inspection commands only; declared
/// here so it is created and pinned with the maps it describes.
#[map(name = "TCPSTATE_SCOPE_INFO")]
static SCOPE_INFO: Array<ScopeInfo> = Array::pinned(1, 0);

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
    /// The segment's scope ([`scope`]) and the first counter slot of that scope.
    pub scope: u32,
    pub base: u32,
    /// The segment is a SYN-ACK the local stack sent from a SYN cookie ([`mark_syn_cookie`]).
    /// False unless the TC egress program sets it for this packet.
    pub cookie: bool,
    /// The flow's key (in the segment's scope), which side sent the segment, and the key's home
    /// slots: worked out once per segment ([`Scratch::locate`]).
    pub key: FlowKey,
    /// The key as the IPv4 table keeps it, when [`Scratch::v4`].
    pub key4: FlowKey4,
    /// Non-zero when both endpoints are IPv4: the flow is the IPv4 table's.
    pub v4: u8,
    /// The sending [`Side`] as its index (see [`Scratch::sender`]).
    sender: u8,
    /// The key's homes in its table.
    pub homes: Homes,
    /// The word and state stamps the record had before a step that may end something
    /// ([`durations::may_end`]), for [`record_durations`] after `update` returns: computed there,
    /// in a function of its own, the observation adds no stack to `update`'s call chain.
    pub old_word: u64,
    pub old_since: [u64; 2],
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

/// The host's retransmitted SYNs and SYN-ACKs by server port ([`count_retransmit`]).
#[map(name = "TCPSTATE_RETRANSMITS")]
static RETRANSMITS: Array<u64> = Array::pinned(RETRANSMIT_SLOTS, 0);

/// Histograms of CLOSE_WAIT dwell and connection lifetimes ([`durations`]), which the daemon
/// maps into its memory and adds its own endings to (sized for the scopes at load time).
#[map(name = "TCPSTATE_DURATIONS")]
static DURATIONS: Array<DurationRow> = Array::pinned(durations::entries(1), BPF_F_MMAPABLE);

/// The host's local port -> its row in [`DURATIONS`], written by the daemon as it labels ports.
#[map(name = "TCPSTATE_PORT_ROWS")]
static PORT_ROWS: Array<u32> = Array::pinned(durations::PORT_ROW_SLOTS, 0);

#[map(name = "TCPSTATE_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Whether rare events go to aya-log (`--kernel-log`): a load-time constant, so with logging off
/// the verifier drops every use of [`Scratch::event`].
#[inline(always)]
pub fn logging() -> bool {
    config!(log_events) != 0
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
    slots4: DEFAULT_SLOTS4 as u64,
    slots6: DEFAULT_SLOTS6 as u64,
    seed: [0; 5],
    half_open_budget: DEFAULT_CAPACITY as u64 / 4,
    scopes: 1,
    transit_check: 0,
});

/// Whether container mode's transit check runs (a load-time constant, see [`Config`]).
#[inline(always)]
pub fn transit_check() -> bool {
    config!(transit_check) != 0
}

/// The scope of a container interface, `None` when the daemon has not (or no longer) given it one,
/// or gave one the counter array has no room for.
#[inline(always)]
pub fn scope_of(ifindex: u32) -> Option<u32> {
    // SAFETY: map value pointers, valid for this program run; plain u32s.
    let scope = match scope::direct_index(ifindex) {
        Some(i) => unsafe { *IFACE_SCOPES.get_ptr(i)? },
        None => unsafe { *SCOPES.get_ptr(ifindex)? },
    };
    (scope != scope::HOST && (scope as u64) < config!(scopes)).then_some(scope)
}

impl Scratch {
    /// Points the segment at its scope's counters and flows.
    #[inline(always)]
    pub fn set_scope(&mut self, scope: u32) {
        self.scope = scope;
        self.base = scope.wrapping_mul(idx::COUNT);
    }

    /// Which side sent the segment. Stored as a byte and masked on the way out: a `Side` read
    /// back from memory would let the compiler drop the bounds checks of `[_; 2]` indexing that
    /// the verifier, which sees a byte of 0..=255, needs.
    #[inline(always)]
    fn sender(&self) -> Side {
        if self.sender & 1 == 0 {
            Side::A
        } else {
            Side::B
        }
    }

    /// The parsed segment's key, sender and home slot.
    #[inline(always)]
    fn locate(&mut self) {
        let tcp = &self.pkt;
        let (key, sender) = FlowKey::canonical(tcp.src, tcp.sport, tcp.dst, tcp.dport);
        self.key = key.in_scope(self.scope);
        self.sender = sender as u8;
        let seed = |i: usize| config!(seed[i]);
        if FlowKey4::narrow_into(&self.key, &mut self.key4) {
            self.v4 = 1;
            self.homes = table::homes(self.key4.hash_with(seed), config!(slots4) as u32);
        } else {
            self.v4 = 0;
            self.homes = table::homes(self.key.hash_with(seed), config!(slots6) as u32);
        }
    }
}

/// Where the program sits, which decides who is local (shared with the offline replay).
pub use tcpstate_common::pipeline::View;

/// Racing CPUs rarely collide more than once; after this many lost compare-and-swaps the segment is
/// dropped from tracking rather than spinning (the verifier also wants a bound).
const MAX_ATTEMPTS: u32 = 4;

#[inline(always)]
pub fn count(slot: u32) {
    bump(slot, 1);
}

/// Adds `delta` to a per-CPU counter slot: a global one, or one of the host's scope.
#[inline(always)]
fn bump(slot: u32, delta: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot; XDP runs in softirq and TC egress with bottom halves disabled, so
        // nothing else updates this CPU's copy concurrently.
        unsafe { *p = (*p).wrapping_add(delta) };
    }
}

/// Adds `delta` to counter slot `slot`, an index [`idx::in_scope`] gave for the segment's scope:
/// per CPU for the host's and the global slots, an atomic add in [`SCOPE_COUNTERS`] for a
/// container scope's own. `owner` is a literal at each entry point, so a host program has only
/// the per-CPU path: a branch on the slot in every bump multiplied the paths the verifier walks,
/// and the host's TC ingress program with the transit check and kernel logging went past its
/// million instructions.
#[inline(always)]
fn bump_in(owner: Owner, slot: u32, delta: u64) {
    match owner {
        Owner::Host => bump(slot, delta),
        Owner::Container => {
            if slot < idx::COUNT {
                bump(slot, delta)
            } else if let Some(p) = SCOPE_COUNTERS.get_ptr_mut(slot) {
                // SAFETY: an array value pointer, valid and 8-byte aligned.
                unsafe { atomic_add(p, delta) };
            }
        }
    }
}

#[inline(always)]
fn table_add(field: fn(*mut TableCounters) -> *mut u64) {
    if let Some(t) = TABLE.get_ptr_mut(0) {
        // SAFETY: array value pointers are valid and 8-byte aligned; fields are u64.
        unsafe { atomic_add(field(t), 1) };
    }
}

/// Whose endpoints an interface carries: a literal at each entry point, so a container veth's
/// program carries none of the host's transit logic (the verifier walks every path a program has,
/// and the container programs are the largest).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A host- or tap-mode interface: the host's scope.
    Host,
    /// The host-side end of a container's veth: the scope the daemon gave its namespace.
    Container,
}

impl Owner {
    /// The owner of a function monomorphized for one (`CONTAINER` true: a container's veth).
    #[inline(always)]
    const fn of(container: bool) -> Owner {
        if container {
            Owner::Container
        } else {
            Owner::Host
        }
    }
}

/// Tracks one parsed frame. Never fails the packet: every outcome is a counter.
///
/// `forwarded`: host egress with the transit check on, and the segment leaves forwarded
/// ([`egress_origin`]). `local_socket` answers, for a flow about to be created
/// on a host-mode interface with the transit check on, whether a socket of this host owns the
/// local end (see [`Config::transit_check`]); it is not called otherwise.
#[inline(always)]
pub fn track(
    status: ParseStatus,
    scratch: &mut Scratch,
    hook: Hook,
    view: View,
    owner: Owner,
    forwarded: bool,
    local_socket: impl FnOnce(&TcpPacket, View) -> bool,
) {
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
    scratch.locate();
    // Asked at most once, and only when a flow would be created: the lookup is a hash probe of
    // the kernel's socket tables, too dear for every segment.
    let mut local_socket = Some(local_socket);
    // SAFETY: helper without arguments. The coarse clock (jiffies resolution) is enough for
    // last-seen stamps; transitions re-stamp with the precise clock (`precise_stamps`).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut attempt = 0;
    while attempt < MAX_ATTEMPTS {
        attempt += 1;
        // One copy of `update` and `insert_new` per owner (a constant, not an argument held
        // across their calls): a program has only its owner's, and no stack for the argument.
        let found = match owner {
            Owner::Host => update::<false>(scratch, now, forwarded),
            Owner::Container => update::<true>(scratch, now, forwarded),
        };
        match found {
            Found::Done => return,
            Found::Ended => return record_durations(scratch),
            Found::Raced => continue,
            Found::Missing => {
                // Only host-mode interfaces carry traffic the host forwards: a container's veth
                // carries that container's own endpoints.
                let transit = owner == Owner::Host
                    && view != View::Tap
                    && transit_check()
                    && !local_socket.take().is_some_and(|f| f(&scratch.pkt, view));
                let inserted = match owner {
                    Owner::Host => insert_new::<false>(scratch, view, now, transit),
                    Owner::Container => insert_new::<true>(scratch, view, now, transit),
                };
                if inserted {
                    return;
                }
                // Another CPU inserted the key first: update theirs.
            }
        }
    }
}

/// Marks a SYN-ACK a local endpoint sends without a socket as a SYN cookie, and counts it in its
/// scope (the host's also for its local port). Linux attaches the request socket to every SYN-ACK
/// it sends from its SYN queue (and the listener to a Fast Open one), but none to a cookie's,
/// which it keeps no state for (net/ipv4/tcp_output.c, tcp_make_synack: TCP_SYNACK_COOKIE).
///
/// Host mode: on TC egress. Container mode: on the ingress of the container's veth, which carries
/// what the container sends with its socket still attached (a veth hands the skb over whole;
/// only the IP layer orphans it, ip_rcv_core, after this hook).
#[inline(always)]
pub fn mark_syn_cookie(ctx: &TcContext, scratch: &mut Scratch, status: ParseStatus, owner: Owner) {
    if status != ParseStatus::Tcp || scratch.pkt.seg.flags & (SYN | ACK | RST | FIN) != SYN | ACK {
        return;
    }
    let cookie = match owner {
        // A SYN-ACK the host forwards (a container's, through NAT) has no socket either: only
        // one the local stack built without a socket is a cookie.
        Owner::Host => egress_origin(ctx) == Origin::LocalWithoutSocket,
        // Whatever the container sends arrives here; none of it is forwarded by this host yet.
        Owner::Container => !has_socket(ctx),
    };
    if !cookie {
        return;
    }
    scratch.cookie = true;
    bump_in(owner, idx::in_scope(scratch.base, idx::SYN_COOKIES), 1);
    if owner == Owner::Host {
        if let Some(c) = SYN_COOKIES.get_ptr_mut(scratch.pkt.sport as u32) {
            // SAFETY: array value pointers are valid and 8-byte aligned.
            unsafe { atomic_add(c, 1) };
        }
    }
}

/// Whether the skb carries a socket.
#[inline(always)]
fn has_socket(ctx: &TcContext) -> bool {
    // SAFETY: the program's own context; `sk` is only compared with NULL.
    unsafe { !(*ctx.skb.skb).__bindgen_anon_2.sk.is_null() }
}

/// Where a segment leaving a host-mode interface comes from, as the skb tells it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A local socket sent it.
    Socket,
    /// The local stack built it without a socket: RSTs it answers with, SYN-ACKs from a SYN
    /// cookie.
    LocalWithoutSocket,
    /// The host only forwards it: no socket (the IP layer orphans what it receives,
    /// ip_rcv_core) and it came in through an interface (skb_iif, 0 for what the stack builds).
    Forwarded,
}

/// [`Origin`] of the segment on TC egress. Read only where it decides something (a SYN-ACK,
/// container mode): two context loads.
#[inline(always)]
pub fn egress_origin(ctx: &TcContext) -> Origin {
    // SAFETY: the program's own context; the verifier allows TC programs to read `sk` (a socket
    // pointer or NULL), which is only compared with NULL here.
    unsafe {
        let skb = ctx.skb.skb;
        if has_socket(ctx) {
            Origin::Socket
        } else if (*skb).ingress_ifindex == 0 {
            Origin::LocalWithoutSocket
        } else {
            Origin::Forwarded
        }
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
#[repr(u32)]
enum Found {
    Done,
    /// Done, and the segment ended a CLOSE_WAIT or a connection ([`Scratch::ended`]).
    Ended,
    /// Another CPU changed the record between our read and our write.
    Raced,
    Missing,
}

/// Looks the flow up and advances it, working on the scratch copy of the segment, never on packet
/// memory. Inlined: the lookup and the advance are functions of their own, and a frame here
/// would add to the deepest call chain (entry, advance, the state machine's handlers), which the
/// verifier holds to 512 bytes of stack.
#[inline(always)]
fn update<const CONTAINER: bool>(scratch: &mut Scratch, now: u64, forwarded: bool) -> Found {
    let ptr = find_flow(scratch);
    if ptr.is_null() {
        return Found::Missing;
    }
    // The record is in one of two maps: past this call the verifier would walk everything below
    // once for each (a pointer into one map is never "the same state" as one into another), and
    // the attempt loop around `update` multiplies that. As a global function it is checked
    // once, on its own, with the record as 72 bytes of memory.
    let found = if CONTAINER {
        tcpstate_advance_container(scratch, ptr, now, u32::from(forwarded))
    } else {
        tcpstate_advance_host(scratch, ptr, now, u32::from(forwarded))
    };
    match found {
        x if x == Found::Done as u32 => Found::Done,
        x if x == Found::Ended as u32 => Found::Ended,
        x if x == Found::Missing as u32 => Found::Missing,
        _ => Found::Raced,
    }
}

/// [`advance`] of a host-mode program, as a global BPF function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_advance_host(
    scratch: *mut Scratch,
    rec: *mut FlowRecord,
    now: u64,
    forwarded: u32,
) -> u32 {
    advance_checked::<false>(scratch, rec, now, forwarded)
}

/// [`advance`] of a container interface's program, as a global BPF function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_advance_container(
    scratch: *mut Scratch,
    rec: *mut FlowRecord,
    now: u64,
    forwarded: u32,
) -> u32 {
    advance_checked::<true>(scratch, rec, now, forwarded)
}

/// The body of both: [`advance`] once the pointers are known not null.
#[inline(always)]
fn advance_checked<const CONTAINER: bool>(
    scratch: *mut Scratch,
    rec: *mut FlowRecord,
    now: u64,
    forwarded: u32,
) -> u32 {
    // SAFETY: the verifier checks each pointer as memory of its type's size, or null.
    match unsafe { scratch.as_mut() } {
        Some(scratch) if !rec.is_null() => {
            advance::<CONTAINER>(scratch, rec, now, forwarded != 0) as u32
        }
        _ => Found::Raced as u32,
    }
}

/// Advances the flow whose record `ptr` is by the scratch segment.
#[inline(always)]
fn advance<const CONTAINER: bool>(
    scratch: &mut Scratch,
    ptr: *mut FlowRecord,
    now: u64,
    forwarded: bool,
) -> Found {
    let owner = Owner::of(CONTAINER);
    let sender = scratch.sender();
    // SAFETY: a record in a slot of a table, valid for the program run; it cannot be reused
    // before the run ends (the daemon frees deleted slots only after a grace period). The record
    // is read in place; the word it was computed from is re-checked by `commit`.
    let rec = unsafe { &*ptr };
    // Read once: the word the step is computed from and `commit` expects.
    // SAFETY: the record's first field, 8-byte aligned.
    let word = unsafe { tcpstate_common::commit::load(&raw const (*ptr).word) };
    if word == DEAD_WORD {
        // Deleted since `find`: the next attempt does not find it.
        return Found::Raced;
    }
    // Container mode: a flow counted as the host's whose segments the host turns out to forward.
    if forwarded && FlowWord::from_bits(word).counted != 0 {
        retract_flow(ptr, scratch.base);
        // Looked up again by the caller's next attempt, which finds it counted nowhere: the
        // verifier then walks the state machine below once, not once more after a retraction.
        return Found::Raced;
    }
    let st = &mut scratch.step;
    // The hot path: established data and ACKs within a coarse second change nothing, which the
    // map value itself tells (`quiet`, inside): no copy of the record, no write.
    if !update_into(st, rec, sender, &scratch.pkt.seg, now, scratch.cookie) {
        return Found::Done;
    }
    precise_stamps(st, FlowWord::from_bits(word));
    // Only a move into LAST_ACK, TIME_WAIT or CLOSED ends anything; the stamps it is measured
    // from are kept before `commit` overwrites them.
    let ends = durations::may_end(FlowWord::from_bits(word), st.rec.word());
    if ends {
        scratch.old_word = word;
        // SAFETY: the record's field, 8-byte aligned.
        scratch.old_since = unsafe { tcpstate_common::words::read(&raw const (*ptr).since_ns) };
    }
    // SAFETY: as above; map values are 8-byte aligned.
    if !unsafe { commit(ptr, word, st) } {
        return Found::Raced;
    }
    scratch.event = match (st.invalid, st.rst) {
        (Some(why), _) => Event::Invalid(why),
        (None, true) => Event::ResetAccepted,
        _ => Event::None,
    };
    account(FlowWord::from_bits(word), st, sender, scratch.base, owner);
    count_retransmit(scratch);
    if ends {
        Found::Ended
    } else {
        Found::Done
    }
}

/// Adds what the segment ended ([`durations::ended`]) to the histogram rows
/// ([`durations::row`]): two atomic adds per observation, a connection's close at most three.
/// Called by `track` after `update` returned.
#[inline(always)]
fn record_durations(scratch: &Scratch) {
    let ports = u32::from(scratch.key.port[0]) | u32::from(scratch.key.port[1]) << 16;
    tcpstate_record_durations(
        &scratch.step,
        &scratch.old_since,
        scratch.old_word,
        scratch.scope,
        ports,
    );
}

/// [`record_durations`] as a global BPF function, verified once on its own (see
/// [`tcpstate_find`]) and not under `update`: the TC programs with the transit check and kernel
/// logging are near the verifier's limits (a million instructions, 512 bytes of stack over a
/// call chain). `ports`: side A's port in the low half, side B's in the high half.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_record_durations(
    st: *const Step,
    old_since: *const [u64; 2],
    old_word: u64,
    scope: u32,
    ports: u32,
) -> u32 {
    // SAFETY: the verifier checks each pointer as memory of its type's size, or null.
    let (Some(st), Some(old_since)) = (unsafe { st.as_ref() }, unsafe { old_since.as_ref() })
    else {
        return 0;
    };
    let ended = durations::ended(FlowWord::from_bits(old_word), old_since, st);
    let scopes = config!(scopes) as u32;
    let word = st.rec.word();
    ended.for_each(word, |measure, side, ns| {
        let port = (ports >> (16 * side as u32)) & 0xffff;
        let row = durations::row(scope, word.role(side), || {
            PORT_ROWS.get(port).copied().unwrap_or(0)
        });
        let Some(r) = DURATIONS.get_ptr_mut(durations::index(measure, row, scopes)) else {
            return;
        };
        let (b, us) = durations::observation(ns);
        // SAFETY: an array value pointer, valid and 8-byte aligned; `b` is in bounds.
        unsafe {
            atomic_add(&raw mut (*r).buckets[b], 1);
            atomic_add(&raw mut (*r).sum_us, us);
        }
    });
    0
}

/// A SYN or SYN-ACK sent again to or by a counted server endpoint of the host: its port's count,
/// by atomic add (the scope's total is a counter slot, bumped by [`account`]). A container's
/// have no per-port map: its total is its `port="other"`. The server's port without indexing by
/// side: the receiver's of a SYN, the sender's of a SYN-ACK.
#[inline(always)]
fn count_retransmit(scratch: &Scratch) {
    if scratch.scope != scope::HOST {
        return;
    }
    let (kind, port) = match retransmitted(&scratch.step) {
        Some(k @ Retransmit::Syn) => (k, scratch.pkt.dport),
        Some(k @ Retransmit::SynAck) => (k, scratch.pkt.sport),
        None | Some(Retransmit::None) => return,
    };
    if let Some(c) = RETRANSMITS.get_ptr_mut(retransmit_slot(kind, port)) {
        // SAFETY: array value pointers are valid and 8-byte aligned.
        unsafe { atomic_add(c, 1) };
    }
}

/// The record of the scratch key's flow, or null: [`find`] in its table.
#[inline(always)]
fn find_flow(scratch: &Scratch) -> *mut FlowRecord {
    let (first, second) = (scratch.homes.first, scratch.homes.second);
    let rec = if scratch.v4 != 0 {
        let i = tcpstate_find4(&scratch.key4, first, second);
        if i < 0 {
            return core::ptr::null_mut();
        }
        // SAFETY: a slot pointer of the array, valid for the program run.
        FLOWS4
            .get_ptr_mut(i as u32)
            .map(|s| unsafe { &raw mut (*s).rec })
    } else {
        let i = tcpstate_find6(&scratch.key, first, second);
        if i < 0 {
            return core::ptr::null_mut();
        }
        // SAFETY: as above.
        FLOWS6
            .get_ptr_mut(i as u32)
            .map(|s| unsafe { &raw mut (*s).rec })
    };
    rec.unwrap_or(core::ptr::null_mut())
}

/// [`find`] in the IPv4 table as a global BPF function: the verifier checks it once, on its own,
/// instead of once per path that reaches a lookup (its two neighbourhood loops are most of what
/// it would walk). The slot's index, or -1.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_find4(key: *const FlowKey4, first: u32, second: u32) -> i64 {
    find_in(&Table4, key, first, second)
}

/// [`tcpstate_find4`] in the other table.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_find6(key: *const FlowKey, first: u32, second: u32) -> i64 {
    find_in(&Table6, key, first, second)
}

/// The body of both lookups.
#[inline(always)]
fn find_in<T: Slots>(t: &T, key: *const T::Key, first: u32, second: u32) -> i64 {
    // SAFETY: the verifier checks the pointer as readable memory of the key's size, or null.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return -1;
    };
    find(t, key, Homes { first, second }).map_or(-1, i64::from)
}

/// What [`tcpstate_insert4`] did (a global function returns a scalar).
const INSERTED: u32 = 0;
const EXISTS: u32 = 1;
const FULL: u32 = 2;
const CONTENDED: u32 = 3;

/// [`insert`] of the scratch record under the scratch key, in its table.
#[inline(always)]
fn insert_flow(scratch: &Scratch) -> u32 {
    let (first, second) = (scratch.homes.first, scratch.homes.second);
    if scratch.v4 != 0 {
        tcpstate_insert4(&scratch.key4, &scratch.step.rec, first, second)
    } else {
        tcpstate_insert6(&scratch.key, &scratch.step.rec, first, second)
    }
}

/// The body of both inserts: what it did, as a global function returns it.
#[inline(always)]
fn insert_into<T: Slots>(
    t: &T,
    key: *const T::Key,
    rec: *const FlowRecord,
    first: u32,
    second: u32,
) -> u32 {
    // SAFETY: the verifier checks each pointer as readable memory of its type's size, or null.
    let (Some(key), Some(rec)) = (unsafe { key.as_ref() }, unsafe { rec.as_ref() }) else {
        return CONTENDED;
    };
    match insert(t, key, rec, Homes { first, second }) {
        Inserted::Done(_) => INSERTED,
        Inserted::Exists => EXISTS,
        Inserted::Full => FULL,
        Inserted::Contended => CONTENDED,
    }
}

/// [`insert`] into the IPv4 table as a global BPF function, verified once on its own (see
/// [`tcpstate_find4`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_insert4(
    key: *const FlowKey4,
    rec: *const FlowRecord,
    first: u32,
    second: u32,
) -> u32 {
    insert_into(&Table4, key, rec, first, second)
}

/// [`tcpstate_insert4`] into the other table.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_insert6(
    key: *const FlowKey,
    rec: *const FlowRecord,
    first: u32,
    second: u32,
) -> u32 {
    insert_into(&Table6, key, rec, first, second)
}

/// Takes a forwarded flow out of the host's gauges ([`retract`]), once: by compare-and-swap of the
/// state word, so two CPUs retracting it cannot both move the gauges. Inlined into `update`: as a
/// BPF function of its own it would add a frame to the deepest call chain, past the verifier's
/// 512 bytes for the chain.
#[inline(always)]
fn retract_flow(ptr: *mut FlowRecord, base: u32) {
    // SAFETY: a live map value pointer (see `update`); the word is 8-byte aligned.
    unsafe {
        let word = core::ptr::addr_of_mut!((*ptr).word);
        let old = *word;
        let new = retract(FlowWord::from_bits(old), |_, _| {});
        if compare_and_swap(word, old, new.to_bits()) {
            retract(FlowWord::from_bits(old), |slot, d| {
                bump(idx::in_scope(base, slot), d)
            });
        }
    }
}

/// The lookup `update` starts with, alone (for `tcpstate_xdp_lookup_floor`). Writes whether the
/// flow was found into the scratch slot so the lookup cannot be optimized away.
#[inline(never)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference: no copy of the key on the stack"
)]
pub fn lookup_only(scratch: &mut Scratch) {
    scratch.locate();
    let found = !find_flow(scratch).is_null();
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

/// The transition's counter deltas. A BPF function of its own: inlined, its loops' locals grew
/// `advance`'s frame, which is on the deepest call chain (entry, advance, the state machine's
/// handlers) the verifier holds to 512 bytes.
#[inline(never)]
fn account(old: FlowWord, st: &Step, sender: Side, base: u32, owner: Owner) {
    for_each_delta(old, st, sender, |slot, d| {
        bump_in(owner, idx::in_scope(base, slot), d)
    });
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
fn insert_new<const CONTAINER: bool>(
    scratch: &mut Scratch,
    view: View,
    now: u64,
    transit: bool,
) -> bool {
    let owner = Owner::of(CONTAINER);
    // A SYN cookie's SYN-ACK whose SYN was not tracked: the server keeps no state, so neither do
    // we; the ACK returning the cookie is picked up midstream.
    if scratch.cookie {
        return true;
    }
    let base = scratch.base;
    let sender = scratch.sender();
    let port = scratch.key.port;
    let st = &mut scratch.step;
    // From the flags alone, then the fill and the half-open budget (a SYN against a full table or
    // a spent budget is turned away before the state machine or the map are touched), then the
    // state machine: the same decisions the offline replay makes.
    let cfg = TCPSTATE_CONFIG.load();
    let opening = match open_new(st, &cfg, books, view, sender, &scratch.pkt.seg, now, port) {
        Ok(o) => o,
        Err(why) => {
            if let Some(slot) = why.slot() {
                bump(slot, 1);
            }
            scratch.event = match why {
                NotOpened::Invalid(w) => Event::Invalid(w),
                NotOpened::Untracked(w) => Event::Untracked(w),
                NotOpened::NoBooks => Event::None,
            };
            return true;
        }
    };
    if transit {
        // Forwarded or NATed on its way to a container: no endpoint here to count.
        let mut w = st.rec.word();
        w.counted = 0;
        w.flags |= flowflags::TRANSIT;
        st.rec.set_word(w);
    }
    // SAFETY: helper without arguments.
    let precise = unsafe { bpf_ktime_get_ns() };
    st.rec.since_ns = [precise, precise];
    if st.rec.syn_ns != 0 {
        st.rec.syn_ns = precise;
    }
    let refused = match insert_flow(scratch) {
        INSERTED => None,
        // Lost the race to another CPU: update theirs.
        EXISTS => return false,
        FULL => Some(UntrackedReason::TableFull),
        _ => Some(UntrackedReason::InsertFailed),
    };
    if let Some(why) = refused {
        bump(idx::UNTRACKED + why as u32, 1);
        scratch.event = Event::Untracked(why);
        return true;
    }
    let st = &scratch.step;
    table_add(|t| unsafe { core::ptr::addr_of_mut!((*t).inserted) });
    if st.rec.word().has(flowflags::HALF_OPEN) {
        table_add(|t| unsafe { core::ptr::addr_of_mut!((*t).half_open_inserted) });
    }
    opened_deltas(opening, st, sender, |slot, d| {
        bump_in(owner, idx::in_scope(base, slot), d)
    });
    true
}
