//! The flow table: an array of 128-byte slots that the kernel programs index themselves and the
//! daemon maps into its memory (a `BPF_F_MMAPABLE` array map), in place of a kernel hash map.
//!
//! Why not the kernel's hash map: at a million flows its lookup is two dependent cache misses
//! (bucket, then element), each element carries ~72 bytes of allocator and list overhead, and every
//! walk or delete by the daemon is a system call. Here a lookup is one slot (usually one cache
//! line: the key and the state word share the slot's first 64 bytes), a slot is 128 bytes, and the
//! daemon walks, deletes and inserts through its own mapping of the array.
//!
//! **Layout.** Hopscotch-style open addressing with two choices. A key has two *home* slots, both
//! from one keyed hash ([`hash`], [`homes`]); it lives in one of the [`NEIGHBOURHOOD`] slots from
//! either home on, and that home's `hop` word has bit `d` set when a live key homed there sits `d`
//! slots further. A lookup reads the first home's `hop`, then the second's, and visits only the
//! slots they name (for a flow the table does not hold, the two home slots alone). An insert takes
//! a free slot near the first home, and one near the second only when the first's nearest slots
//! are taken ([`FIRST_HOME_REACH`]): with the second home as an overflow, running out of room is
//! rare (no insert of a million filling a table to three quarters, where one home left 326). One
//! that finds no free slot near either home is "table full", counted by the caller, and never
//! evicts anything.
//!
//! **Who may do what** (the `ctrl` word: a generation and a [`status`]):
//! - *Claim* (kernel, or the daemon seeding): under the first home's insert lock (bit 63 of its
//!   `hop`, taken with an atomic OR, held for a few hundred nanoseconds by a program that cannot
//!   sleep), check that the key is still absent, compare-and-swap a FREE slot to CLAIMED with the
//!   next generation, write key and record, then publish LIVE with a full barrier (the status byte
//!   also says which home links it) and set that home's `hop` bit. Readers follow `hop` bits,
//!   which are set only after publication, and check LIVE before the key: no reader ever acts on
//!   a half-written key. The lock makes two CPUs that pick up the same flow at once (its two
//!   directions on two CPUs) produce one slot, not two.
//! - *Update* (kernel): compare-and-swap of the record's state word, as before ([`crate::commit`]).
//! - *Delete* (daemon only): LIVE(g) -> DYING(g) by compare-and-swap, so the deleter holds exactly
//!   the occupant of generation `g` it decided about; then the state word from the value it decided
//!   on to [`DEAD_WORD`] by compare-and-swap (a segment that moved the flow meanwhile wins, and the
//!   slot goes back to LIVE); then DEAD, and the home's `hop` bit cleared.
//! - *Free* (the daemon's sweeper only): DEAD -> FREE after an RCU grace period
//!   (`membarrier(MEMBARRIER_CMD_GLOBAL)` waits for one), so no program run that read the slot
//!   before its deletion is still running when another CPU claims it: a program's compare-and-swap
//!   can never land on the next occupant. Every program run is an RCU read-side section, as it is
//!   for the kernel's own hash map, whose elements are freed the same way.
//!
//! The hash is keyed with a secret seed chosen when the table is created and kept with it, so a
//! remote peer cannot choose addresses and ports that pile up on one home ([`hash`]).

use crate::{
    commit::{compare_and_swap, fetch_and, fetch_or, fetch_xor, load, publish},
    flow::{FlowKey, FlowRecord},
};

/// One slot: 128 bytes, two cache lines; `ctrl`, `hop`, the key and the record's state word fill
/// the first line, so a lookup that finds its flow at home touches one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Slot {
    /// Generation (high 56 bits) and [`status`] (low 8 bits) of the slot's occupant.
    pub ctrl: u64,
    /// Bits 0..[`NEIGHBOURHOOD`]: which slots from this one on hold a live key homed here;
    /// [`LOCK`]: an insert of a key homed here is under way.
    pub hop: u64,
    pub key: FlowKey,
    pub rec: FlowRecord,
}
const _: () = assert!(core::mem::size_of::<Slot>() == SLOT_SIZE);
const _: () = assert!(core::mem::offset_of!(Slot, rec) == 56);

/// A slot's key and record, laid out as in [`Slot`], where they follow each other.
#[repr(C)]
struct Body {
    key: FlowKey,
    rec: FlowRecord,
}
/// [`Body`] in 8-byte words.
const BODY_WORDS: usize = core::mem::size_of::<Body>() / 8;
const _: () = assert!(
    core::mem::offset_of!(Slot, rec) - core::mem::offset_of!(Slot, key)
        == core::mem::offset_of!(Body, rec)
        && core::mem::offset_of!(Slot, key) + core::mem::size_of::<Body>() == SLOT_SIZE
        && core::mem::size_of::<Body>() == BODY_WORDS * 8
        && core::mem::offset_of!(Slot, key) % 8 == 0
);

/// Bytes per slot.
pub const SLOT_SIZE: usize = 128;

/// Slot states, the low seven bits of `ctrl` ([`SECOND_HOME`] is the eighth). A zeroed table is all
/// FREE.
pub mod status {
    pub const FREE: u8 = 0;
    /// Taken by an inserter writing key and record; not yet visible.
    pub const CLAIMED: u8 = 1;
    pub const LIVE: u8 = 2;
    /// LIVE, held by a daemon thread deciding to delete or rewrite it; programs still update it.
    pub const DYING: u8 = 3;
    /// Deleted; freed by the sweeper after a grace period.
    pub const DEAD: u8 = 4;
}

/// In `ctrl`'s low byte: the flow is linked from its second home.
pub const SECOND_HOME: u8 = 0x80;

/// Slots a key may sit from its home, counting the home itself.
pub const NEIGHBOURHOOD: u32 = 63;
/// The home's insert lock, in `hop`.
pub const LOCK: u64 = 1 << 63;
/// The state word of a deleted record: no live flow has it (its state bytes are no `TcpState`),
/// so a program that read the slot just before it was deleted fails its compare-and-swap, and
/// one that reads it after skips the slot.
pub const DEAD_WORD: u64 = u64::MAX;
/// Times an inserter finds the home's lock taken before giving up (the caller counts the segment
/// untracked): the holder is a program a few hundred instructions from releasing it.
pub const LOCK_SPINS: u32 = 64;

/// Load factor at full capacity: the table has `capacity / MAX_LOAD` slots.
pub const MAX_LOAD_NUM: u64 = 3;
pub const MAX_LOAD_DEN: u64 = 4;

/// Slots for a table of `capacity` flows (rounded up to a whole number of 4 KiB pages).
pub const fn slots_for(capacity: u32) -> u32 {
    let slots = (capacity as u64 * MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM);
    let per_page = 4096 / SLOT_SIZE as u64;
    let slots = slots.div_ceil(per_page) * per_page;
    // At least a neighbourhood, so a key's neighbourhood never wraps onto itself.
    let min = NEIGHBOURHOOD as u64 + 1;
    (if slots < min { min } else { slots }) as u32
}

/// The hash key: 10 32-bit words, one per key word, chosen at random when the table is created.
pub type Seed = [u64; 5];

/// A fixed seed the tests and benchmarks use as an attacker's guess at a table's secret one (an
/// all-zero guess would be degenerate: NH then multiplies the port word by the zero scope word and
/// ignores ports).
pub const GUESSED_SEED: Seed = [
    0x0123_4567_89ab_cdef,
    0xfedc_ba98_7654_3210,
    0x0f1e_2d3c_4b5a_6978,
    0x8796_a5b4_c3d2_e1f0,
    0x1357_9bdf_0246_8ace,
];

#[inline(always)]
pub const fn ctrl(generation: u64, st: u8) -> u64 {
    (generation << 8) | st as u64
}
#[inline(always)]
pub const fn status_of(c: u64) -> u8 {
    c as u8 & !SECOND_HOME
}
/// Whether the slot's flow is linked from its second home.
#[inline(always)]
pub const fn in_second_home(c: u64) -> bool {
    c as u8 & SECOND_HOME != 0
}
/// `c` with another status, its generation and home kept.
#[inline(always)]
pub const fn with_status(c: u64, st: u8) -> u64 {
    (c & !0x7f) | st as u64
}
#[inline(always)]
pub const fn generation_of(c: u64) -> u64 {
    c >> 8
}
/// Whether a slot in this state holds a flow (DYING ones still do).
#[inline(always)]
pub const fn holds_flow(c: u64) -> bool {
    let s = status_of(c);
    s == status::LIVE || s == status::DYING
}

/// The key's hash: NH, the universal hash of UMAC (RFC 4418), over the key's ten 32-bit words
/// with a secret 320-bit seed, then a 64-bit finalizer to spread NH's bits over the range. For two
/// different keys fixed without knowledge of the seed, NH collides with probability at most 2^-32,
/// so an attacker choosing tuples cannot aim them at one home; it costs five multiplications.
#[inline(always)]
pub fn hash(key: &FlowKey, seed: &Seed) -> u64 {
    // SAFETY: FlowKey is 40 bytes of plain integers, 8-byte aligned.
    let m: &[u32; 10] = unsafe { &*(key as *const FlowKey).cast::<[u32; 10]>() };
    let mut nh = 0u64;
    let mut i = 0;
    while i < 5 {
        let k = seed[i];
        let a = m[2 * i].wrapping_add(k as u32) as u64;
        let b = m[2 * i + 1].wrapping_add((k >> 32) as u32) as u64;
        nh = nh.wrapping_add(a.wrapping_mul(b));
        i += 1;
    }
    // MurmurHash3's fmix64: a bijection, so it keeps NH's collision bound.
    let mut h = nh;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The first home slot of a hash in a table of `slots` slots (the multiply-shift range reduction:
/// no division, no power-of-two size).
#[inline(always)]
pub const fn home(hash: u64, slots: u32) -> u32 {
    (((hash >> 32) * slots as u64) >> 32) as u32
}

/// A key's two homes: from the high and the low half of its hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Homes {
    pub first: u32,
    pub second: u32,
}

/// Both homes of a hash.
#[inline(always)]
pub const fn homes(hash: u64, slots: u32) -> Homes {
    Homes {
        first: home(hash, slots),
        second: (((hash & 0xffff_ffff) * slots as u64) >> 32) as u32,
    }
}

impl Homes {
    /// The home that links a slot whose `ctrl` is `c`.
    #[inline(always)]
    pub const fn linking(&self, c: u64) -> u32 {
        if in_second_home(c) {
            self.second
        } else {
            self.first
        }
    }
}

/// The slot `d` places after `home`, wrapping at the end of the table.
#[inline(always)]
pub const fn nth(home: u32, d: u32, slots: u32) -> u32 {
    let i = home + d;
    if i >= slots {
        i - slots
    } else {
        i
    }
}

/// How far slot `i` is from `home`.
#[inline(always)]
pub const fn distance(home: u32, i: u32, slots: u32) -> u32 {
    if i >= home {
        i - home
    } else {
        i + slots - home
    }
}

/// The bit of `home`'s `hop` word that links slot `i`, or 0 when the slot lies past the
/// neighbourhood's reach (an orphan no bit can name). Never [`LOCK`]: a slot 63 places on is
/// past the reach, and clearing "its" bit must not release another inserter's lock.
#[inline(always)]
pub const fn link_bit(home: u32, i: u32, slots: u32) -> u64 {
    let d = distance(home, i, slots);
    if d < NEIGHBOURHOOD {
        1 << d
    } else {
        0
    }
}

/// The memory a table lives in: the kernel's array map, or the daemon's mapping of it.
pub trait Slots {
    /// Slots in the table.
    fn count(&self) -> u32;
    /// Slot `i`, `None` past the end.
    fn get(&self, i: u32) -> Option<*mut Slot>;
    /// `v`, unchanged, with the verifier's knowledge of it dropped (the kernel's table passes it
    /// through memory). After a loop that stops at one of many slots, this makes the code that
    /// follows one path for the verifier to walk, not one per slot the loop could stop at.
    #[inline(always)]
    fn forget(&self, v: u32) -> u32 {
        v
    }
    /// The index of `s`, a slot of this table.
    #[inline(always)]
    fn index_of(&self, s: *mut Slot) -> u32 {
        self.get(0)
            .map_or(0, |base| ((s as usize - base as usize) / SLOT_SIZE) as u32)
    }
}

/// Compares keys as five 8-byte words.
#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: FlowKey is 40 bytes of plain integers, 8-byte aligned.
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey).cast::<[u64; 5]>(),
            &*(b as *const FlowKey).cast::<[u64; 5]>(),
        )
    };
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// Whether the slot holds the flow of `key`: LIVE or DYING, the key, and not a deleted record.
///
/// # Safety
/// `s` must point to a slot of the table.
#[inline(always)]
unsafe fn holds(s: *mut Slot, key: &FlowKey) -> bool {
    // SAFETY: forwarded; fields of a valid slot, 8-byte aligned.
    unsafe {
        holds_flow(load(&raw const (*s).ctrl))
            && same_key(&(*s).key, key)
            && load(&raw const (*s).rec.word) != DEAD_WORD
    }
}

/// The slot holding `key`, whose homes are `homes`, without taking any lock.
#[inline(always)]
pub fn find<T: Slots>(t: &T, key: &FlowKey, homes: Homes) -> Option<*mut Slot> {
    if let Some(s) = find_near(t, key, homes.first) {
        return Some(s);
    }
    find_near(t, key, homes.second)
}

/// The slot holding `key` among those `home` links.
#[inline(always)]
fn find_near<T: Slots>(t: &T, key: &FlowKey, home: u32) -> Option<*mut Slot> {
    let n = t.count();
    let h = t.get(home)?;
    // SAFETY: a slot of the table.
    let mut bits = unsafe { load(&raw const (*h).hop) } & !LOCK;
    let mut d = 0;
    while bits != 0 && d < NEIGHBOURHOOD {
        if bits & 1 != 0 {
            if let Some(s) = t.get(nth(home, d, n)) {
                // SAFETY: a slot of the table.
                if unsafe { holds(s, key) } {
                    return Some(s);
                }
            }
        }
        bits >>= 1;
        d += 1;
    }
    None
}

/// What [`insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The flow is in this slot, published.
    Done(*mut Slot),
    /// Another CPU or thread inserted the key first.
    Exists,
    /// The home's insert lock stayed taken for [`LOCK_SPINS`] tries.
    Contended,
    /// No free slot in the key's neighbourhood: the table is full there.
    Full,
}

/// Takes the home's insert lock.
///
/// # Safety
/// `hop` must point to a slot's `hop` word.
#[inline(always)]
unsafe fn lock(hop: *mut u64) -> bool {
    let mut i = 0;
    while i < LOCK_SPINS {
        // SAFETY: forwarded. Read first, so waiting CPUs do not keep the line bouncing.
        if unsafe { load(hop) } & LOCK == 0 && unsafe { fetch_or(hop, LOCK) } & LOCK == 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// Inserts `key` (with homes `homes`) with record `rec`, unless present. See the module comment
/// for the protocol; the kernel programs and the daemon's seeding both insert through here.
#[inline(always)]
pub fn insert<T: Slots>(t: &T, key: &FlowKey, rec: &FlowRecord, homes: Homes) -> Inserted {
    let n = t.count();
    let (Some(h1), Some(h2)) = (t.get(homes.first), t.get(homes.second)) else {
        return Inserted::Full;
    };
    // SAFETY: slots of the table, 8-byte aligned; see the module comment for who writes what.
    unsafe {
        // Every insert of a key takes its first home's lock, so two of the same key serialize.
        let lock_word = &raw mut (*h1).hop;
        if !lock(lock_word) {
            return Inserted::Contended;
        }
        if find(t, key, homes).is_some() {
            fetch_and(lock_word, !LOCK);
            return Inserted::Exists;
        }
        // The free slot nearest to either home; claimed by compare-and-swap, so another inserter
        // (of a key with other homes) may take it first: then the next nearest.
        let mut tries = 0;
        while tries < CLAIM_TRIES {
            let Some(near) = nearest_free(t, homes) else {
                break;
            };
            let near = t.forget(near);
            let (d, second) = (near & 0x3f, near & 0x40 != 0);
            let home = if second { homes.second } else { homes.first };
            let flag = if second { SECOND_HOME } else { 0 };
            if let Some(s) = claim(t, nth(home, d, n), key, rec, flag) {
                if second {
                    // Linked from the second home, whose lock another inserter may hold.
                    fetch_or(&raw mut (*h2).hop, 1 << d);
                    fetch_and(lock_word, !LOCK);
                } else {
                    // The slot was FREE, so its bit is clear: one XOR sets it and releases the
                    // lock.
                    fetch_xor(lock_word, LOCK | (1 << d));
                }
                return Inserted::Done(s);
            }
            tries += 1;
        }
        fetch_and(lock_word, !LOCK);
    }
    Inserted::Full
}

/// Times [`insert`] tries to claim the nearest free slot before calling the table full there.
const CLAIM_TRIES: u32 = 4;

/// A FREE slot for a new flow, as its distance from its home (low six bits) and `0x40` for the
/// second home: the nearest to the first home, the second's counted [`FIRST_HOME_REACH`] places
/// further than they are. The first home is preferred: a flow linked from its second home costs
/// every lookup a read of the first home's word too, a second random access to memory (and its
/// page's TLB entry), where a slot a few places from the first home shares its page.
#[inline(always)]
fn nearest_free<T: Slots>(t: &T, homes: Homes) -> Option<u32> {
    let n = t.count();
    let free = |i: u32| {
        t.get(i).is_some_and(|s| {
            // SAFETY: a slot of the table.
            status_of(unsafe { load(&raw const (*s).ctrl) }) == status::FREE
        })
    };
    // One loop (the verifier walks each iteration): the first home's slot `i` and, once the first
    // home's head start is used up, the second home's slot `i - FIRST_HOME_REACH`.
    let mut i = 0;
    while i < NEIGHBOURHOOD + FIRST_HOME_REACH {
        if i < NEIGHBOURHOOD && free(nth(homes.first, i, n)) {
            return Some(i);
        }
        if i >= FIRST_HOME_REACH {
            let d = i - FIRST_HOME_REACH;
            if free(nth(homes.second, d, n)) {
                return Some(d | 0x40);
            }
        }
        i += 1;
    }
    None
}

/// The head start of the first home. Measured on a million random flows filling a table to three
/// quarters: 2.6% of them went to their second home and every insert found a slot (with a single
/// home, 326 did not).
pub const FIRST_HOME_REACH: u32 = 8;

/// Claims slot `i` if it is FREE, writes the flow into it and publishes it LIVE (`home` says which
/// home will link it). The caller holds the key's insert lock and links the slot.
///
/// # Safety
/// See the module comment.
#[inline(always)]
unsafe fn claim<T: Slots>(
    t: &T,
    i: u32,
    key: &FlowKey,
    rec: &FlowRecord,
    home: u8,
) -> Option<*mut Slot> {
    let s = t.get(i)?;
    // SAFETY: a slot of the table.
    unsafe {
        let c = load(&raw const (*s).ctrl);
        let claimed = ctrl(generation_of(c).wrapping_add(1), status::CLAIMED | home);
        if status_of(c) != status::FREE || !compare_and_swap(&raw mut (*s).ctrl, c, claimed) {
            return None;
        }
        (*s).key = *key;
        (*s).rec = *rec;
        publish(&raw mut (*s).ctrl, with_status(claimed, status::LIVE));
    }
    Some(s)
}

/// Takes slot `i` for a daemon thread (LIVE -> DYING) if its `ctrl` is still `live`: the occupant
/// of that generation, whose word the caller judged. Programs still update a DYING flow; the
/// caller's compare-and-swap of the word then fails and it gives the slot back with `live`.
#[inline(always)]
fn hold<T: Slots>(t: &T, i: u32, live: u64) -> Option<*mut Slot> {
    let s = t.get(i)?;
    // SAFETY: a slot of the table; see the module comment for who writes what.
    let held = status_of(live) == status::LIVE
        && unsafe { compare_and_swap(&raw mut (*s).ctrl, live, with_status(live, status::DYING)) };
    held.then_some(s)
}

/// Deletes the flow in slot `i` if its `ctrl` is still `live` (the occupant of that generation,
/// LIVE) and its state word is still `word`; the daemon's only way to delete. Returns whether it
/// did. The slot is DEAD until [`free`] after a grace period.
pub fn kill<T: Slots>(t: &T, i: u32, live: u64, word: u64, seed: &Seed) -> bool {
    let Some(s) = hold(t, i, live) else {
        return false;
    };
    // SAFETY: a slot this thread holds; see the module comment for who writes what.
    unsafe {
        let c = &raw mut (*s).ctrl;
        if !compare_and_swap(&raw mut (*s).rec.word, word, DEAD_WORD) {
            publish(c, live);
            return false;
        }
        publish(c, with_status(live, status::DEAD));
        let n = t.count();
        let home = homes(hash(&(*s).key, seed), n).linking(live);
        if let Some(h) = t.get(home) {
            fetch_and(&raw mut (*h).hop, !link_bit(home, i, n));
        }
    }
    true
}

/// Replaces the record in slot `i` (whose `ctrl` is still `live`) with `new` if its state word is
/// still `word`. The daemon's way to write a flow it decided about (confirming a pickup, ending an
/// endpoint): programs may update it meanwhile, and then win.
pub fn rewrite<T: Slots>(t: &T, i: u32, live: u64, word: u64, new: &FlowRecord) -> bool {
    let Some(s) = hold(t, i, live) else {
        return false;
    };
    // SAFETY: a slot this thread holds; see the module comment for who writes what.
    unsafe {
        let ok = compare_and_swap(&raw mut (*s).rec.word, word, new.word);
        if ok {
            (*s).rec.seq = new.seq;
            (*s).rec.since_ns = new.since_ns;
            (*s).rec.syn_ns = new.syn_ns;
            (*s).rec.last_seen = new.last_seen;
        }
        publish(&raw mut (*s).ctrl, live);
        ok
    }
}

/// Frees a DEAD slot for reuse. Only once no program run that could have read it before its
/// deletion is still running (an RCU grace period after [`kill`]).
pub fn free<T: Slots>(t: &T, i: u32) -> bool {
    let Some(s) = t.get(i) else {
        return false;
    };
    // SAFETY: a slot of the table.
    unsafe {
        let c = &raw mut (*s).ctrl;
        let old = load(c);
        status_of(old) == status::DEAD
            && compare_and_swap(c, old, ctrl(generation_of(old), status::FREE))
    }
}

/// A consistent copy of slot `i`: its `ctrl` and the flow it holds, or `None` when it holds none.
/// Read twice around the copy: a slot claimed, deleted or reused meanwhile changes `ctrl`.
pub fn snapshot<T: Slots>(t: &T, i: u32) -> Option<(u64, FlowKey, FlowRecord)> {
    let s = t.get(i)?;
    for _ in 0..4 {
        // SAFETY: a slot of the table; volatile copies of plain integers, which any bit pattern is.
        unsafe {
            let before = load(&raw const (*s).ctrl);
            if !holds_flow(before) {
                return None;
            }
            // Key and record are contiguous and 8-byte aligned: copied as fourteen 8-byte words.
            // A volatile copy field by field is some forty narrow loads and register spills, the
            // larger part of a walk's time per flow.
            let words: [u64; BODY_WORDS] = core::ptr::read_volatile((&raw const (*s).key).cast());
            let Body { key, rec } = core::mem::transmute::<[u64; BODY_WORDS], Body>(words);
            if load(&raw const (*s).ctrl) == before {
                return (rec.word != DEAD_WORD).then_some((before, key, rec));
            }
        }
    }
    None
}

/// Clears what a daemon that died mid-operation left: a home lock, a CLAIMED slot, a DYING slot.
/// Call on a table no daemon thread is using, for state that programs never hold across a
/// program run, so `was` (read at least a few milliseconds earlier) still being there means it
/// is stale. Returns how many it released.
pub fn release_stale<T: Slots>(t: &T, i: u32, was: &Slot) -> u32 {
    let Some(s) = t.get(i) else {
        return 0;
    };
    let mut released = 0;
    // SAFETY: a slot of the table.
    unsafe {
        let hop = &raw mut (*s).hop;
        if was.hop & LOCK != 0 && load(hop) & LOCK != 0 {
            fetch_and(hop, !LOCK);
            released += 1;
        }
        let c = &raw mut (*s).ctrl;
        let now = load(c);
        if now == was.ctrl {
            let to = match status_of(now) {
                // Never published: no hop bit names it.
                status::CLAIMED => Some(ctrl(generation_of(now), status::FREE)),
                status::DYING => Some(with_status(now, status::LIVE)),
                _ => None,
            };
            if let Some(to) = to {
                if compare_and_swap(c, now, to) {
                    released += 1;
                }
            }
        }
    }
    released
}
