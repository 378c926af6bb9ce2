//! The flow tables: arrays of slots that the kernel programs index themselves and the daemon maps
//! into its memory (`BPF_F_MMAPABLE` array maps), in place of a kernel hash map. Two of them, one
//! per key: flows between two IPv4 endpoints in 96-byte slots with a 16-byte key ([`FlowKey4`]),
//! every other flow (IPv6, or mixed) in 128-byte slots with the 40-byte [`FlowKey`]. The protocol
//! below is the same for both, generic over the key ([`TableKey`]).
//!
//! Why not the kernel's hash map: at a million flows its lookup is two dependent cache misses
//! (bucket, then element), each element carries ~72 bytes of allocator and list overhead, and every
//! walk or delete by the daemon is a system call. Here a lookup is one slot (usually one cache
//! line: the control words, the key and the state word share a 64-byte line), an IPv4 flow's slot
//! is 96 bytes (128 B a flow at three quarters full), and the daemon walks, deletes and inserts
//! through its own mapping of the arrays.
//!
//! **Layout.** Hopscotch-style open addressing with two choices. A key has two *home* slots, both
//! from one keyed hash ([`TableKey::hash`], [`homes`]); it lives in one of the [`NEIGHBOURHOOD`] slots from
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
//! - *Claim* (kernel, or the daemon seeding): under the first home's insert lock (bit 31 of its
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
//! remote peer cannot choose addresses and ports that pile up on one home ([`TableKey::hash`]).

use crate::{
    commit::{compare_and_swap, load},
    flow::{FlowKey, FlowKey4, FlowRecord},
};

/// A key a table is built on: hashed with the table's secret seed, compared as whole words.
pub trait TableKey: Copy + Default + PartialEq + core::fmt::Debug {
    /// The key's hash: NH with the table's seed, then a finalizer (see the note above `nh`).
    #[inline(always)]
    fn hash(&self, seed: &Seed) -> u64 {
        self.hash_with(|i| seed[i])
    }
    /// The same hash with the seed's words read by `seed(i)`: the kernel reads them one at a
    /// time from its read-only configuration, with no copy of the seed on its stack.
    fn hash_with(&self, seed: impl Fn(usize) -> u64) -> u64;
    /// Whether two keys are the same, compared as 8-byte words.
    fn same(&self, other: &Self) -> bool;
}

/// [`TableKey`] for a key of plain integers, `$u32s` 4-byte words for the hash and the words
/// `$i` (8-byte) compared. The comparison is spelled word by word: a loop or a slice compare
/// may become a `bcmp` call, which BPF programs cannot make.
macro_rules! word_key {
    ($key:ty, $u32s:literal, [$($i:literal),+]) => {
        impl TableKey for $key {
            #[inline(always)]
            fn hash_with(&self, seed: impl Fn(usize) -> u64) -> u64 {
                // SAFETY: the key is plain integers, 8-byte aligned, of this many 4-byte words.
                let m: &[u32; $u32s] = unsafe { &*(self as *const $key).cast::<[u32; $u32s]>() };
                finish(nh(m, seed))
            }
            #[inline(always)]
            fn same(&self, other: &Self) -> bool {
                const WORDS: usize = [$($i),+].len();
                // SAFETY: as above, read as 8-byte words.
                let (a, b) = unsafe {
                    (
                        &*(self as *const $key).cast::<[u64; WORDS]>(),
                        &*(other as *const $key).cast::<[u64; WORDS]>(),
                    )
                };
                $(a[$i] == b[$i])&&+
            }
        }
        const _: () = assert!(core::mem::size_of::<$key>() == 4 * $u32s);
        const _: () = assert!(core::mem::size_of::<$key>() == 8 * [$($i),+].len());
    };
}

word_key!(FlowKey, 10, [0, 1, 2, 3, 4]);
word_key!(FlowKey4, 4, [0, 1]);

/// One slot: the control words, the key and the record. 96 bytes with the IPv4 key, 128 with the
/// general one; 32-byte aligned, so `ctrl`, `hop`, the key and the record's state word (the first
/// 32 bytes of an IPv4 slot, the first 56 of the other) sit in one cache line and a lookup that
/// finds its flow at home touches one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Slot<K> {
    /// Generation (high 24 bits) and [`status`] (low 8 bits) of the slot's occupant.
    pub ctrl: u32,
    /// Bits 0..[`NEIGHBOURHOOD`]: which slots from this one on hold a live key homed here;
    /// [`LOCK`]: an insert of a key homed here is under way.
    pub hop: u32,
    pub key: K,
    pub rec: FlowRecord,
}
/// A slot of the IPv4 table.
pub type Slot4 = Slot<FlowKey4>;
/// A slot of the table of every other flow.
pub type Slot6 = Slot<FlowKey>;
const _: () = assert!(core::mem::size_of::<Slot4>() == SLOT4_SIZE);
const _: () = assert!(core::mem::size_of::<Slot6>() == SLOT6_SIZE);
const _: () = assert!(core::mem::offset_of!(Slot4, rec) == 24);
const _: () = assert!(core::mem::offset_of!(Slot6, rec) == 48);

/// The two control words as one 8-byte word, `ctrl` in the low half and `hop` in the high one
/// (both targets are little-endian): every atomic operation on either is a 64-bit one on the
/// pair. The BPF object is built for the base instruction set, whose atomics are 64-bit only
/// (32-bit ones need alu32 code generation, which moved the programs' stacks past the verifier's
/// 512 bytes); OR, AND and XOR of one half leave the other alone, a compare-and-swap of `ctrl`
/// retries when only `hop` moved, and the owner of a claimed or held slot changes its `ctrl` by
/// XOR, which no concurrent change of `hop` can disturb.
mod pair {
    use super::Slot;
    use crate::commit::{compare_and_swap, fetch_and, fetch_or, fetch_xor, load};

    const _: () = assert!(cfg!(target_endian = "little"));
    const HOP_SHIFT: u32 = 32;
    const CTRL_MASK: u64 = 0xffff_ffff;

    /// Times a compare-and-swap of `ctrl` is retried when only `hop` changed under it.
    const CAS_TRIES: u32 = 8;

    #[inline(always)]
    fn of<K>(s: *mut Slot<K>) -> *mut u64 {
        // The slot is 32-byte aligned and begins with `ctrl`, then `hop`.
        s.cast::<u64>()
    }

    /// `hop |= v`, returning the old `hop`.
    ///
    /// # Safety
    /// `s` must point to a slot.
    #[inline(always)]
    pub unsafe fn hop_or<K>(s: *mut Slot<K>, v: u32) -> u32 {
        // SAFETY: forwarded; the pair is 8-byte aligned.
        (unsafe { fetch_or(of(s), (v as u64) << HOP_SHIFT) } >> HOP_SHIFT) as u32
    }

    /// `hop &= v`, returning the old `hop`.
    ///
    /// # Safety
    /// As [`hop_or`].
    #[inline(always)]
    pub unsafe fn hop_and<K>(s: *mut Slot<K>, v: u32) -> u32 {
        // SAFETY: as above.
        (unsafe { fetch_and(of(s), ((v as u64) << HOP_SHIFT) | CTRL_MASK) } >> HOP_SHIFT) as u32
    }

    /// `hop ^= v`, returning the old `hop`.
    ///
    /// # Safety
    /// As [`hop_or`].
    #[inline(always)]
    pub unsafe fn hop_xor<K>(s: *mut Slot<K>, v: u32) -> u32 {
        // SAFETY: as above.
        (unsafe { fetch_xor(of(s), (v as u64) << HOP_SHIFT) } >> HOP_SHIFT) as u32
    }

    /// Compare-and-swap of `ctrl`, whatever `hop` does meanwhile (bounded: a `hop` that moved
    /// [`CAS_TRIES`] times in a row is a failure, which every caller handles as a lost race).
    ///
    /// # Safety
    /// As [`hop_or`].
    #[inline(always)]
    pub unsafe fn ctrl_cas<K>(s: *mut Slot<K>, old: u32, new: u32) -> bool {
        let p = of(s);
        let mut i = 0;
        while i < CAS_TRIES {
            // SAFETY: as above.
            let seen = unsafe { load(p) };
            if seen as u32 != old {
                return false;
            }
            let swapped = (seen & !CTRL_MASK) | new as u64;
            // SAFETY: as above.
            if unsafe { compare_and_swap(p, seen, swapped) } {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Moves `ctrl` from `from`, its value, to `to`, with a full barrier: for the thread or
    /// program that owns the slot's `ctrl` (it claimed or holds the slot, and no one else changes
    /// `ctrl` then), so an XOR of the difference is exact.
    ///
    /// # Safety
    /// As [`hop_or`]; `ctrl` must be `from` and stay so but for this call.
    #[inline(always)]
    pub unsafe fn ctrl_publish<K>(s: *mut Slot<K>, from: u32, to: u32) {
        // SAFETY: as above.
        unsafe { fetch_xor(of(s), (from ^ to) as u64) };
    }
}

/// Bytes per slot of the IPv4 table.
pub const SLOT4_SIZE: usize = 96;
/// Bytes per slot of the other table.
pub const SLOT6_SIZE: usize = 128;
/// Bytes per slot of the layout before the IPv4 table (64-bit control words, one table): a
/// pinned table of that layout is carried over, never mapped as it is.
pub const OLD_SLOT_SIZE: usize = 128;

/// Bytes per slot of a table keyed by `K`.
pub const fn slot_size<K>() -> usize {
    core::mem::size_of::<Slot<K>>()
}

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
pub const NEIGHBOURHOOD: u32 = 31;
/// The home's insert lock, in `hop`.
pub const LOCK: u32 = 1 << 31;
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

/// Slots for a table of `capacity` flows in slots of `slot_size` bytes (rounded up to fill whole
/// 4 KiB pages: 128 slots of 96 bytes fill three).
pub const fn slots_for(capacity: u32, slot_size: usize) -> u32 {
    let slots = (capacity as u64 * MAX_LOAD_DEN).div_ceil(MAX_LOAD_NUM);
    let mut g = (4096u64, slot_size as u64);
    while g.1 != 0 {
        g = (g.1, g.0 % g.1);
    }
    let per_pages = 4096 / g.0;
    let slots = slots.div_ceil(per_pages) * per_pages;
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

/// A `ctrl` word. The generation counts the slot's occupants modulo 2^24: a daemon thread that
/// decided about one occupant acts on the slot only if it still holds that one, and sixteen
/// million occupants passing through one slot between its read and its compare-and-swap (a few
/// microseconds) cannot happen.
#[inline(always)]
pub const fn ctrl(generation: u32, st: u8) -> u32 {
    (generation << 8) | st as u32
}
#[inline(always)]
pub const fn status_of(c: u32) -> u8 {
    c as u8 & !SECOND_HOME
}
/// Whether the slot's flow is linked from its second home.
#[inline(always)]
pub const fn in_second_home(c: u32) -> bool {
    c as u8 & SECOND_HOME != 0
}
/// `c` with another status, its generation and home kept.
#[inline(always)]
pub const fn with_status(c: u32, st: u8) -> u32 {
    (c & !0x7f) | st as u32
}
#[inline(always)]
pub const fn generation_of(c: u32) -> u32 {
    c >> 8
}
/// Whether a slot in this state holds a flow (DYING ones still do).
#[inline(always)]
pub const fn holds_flow(c: u32) -> bool {
    let s = status_of(c);
    s == status::LIVE || s == status::DYING
}

// The keys' hash ([`TableKey::hash`]): NH, the universal hash of UMAC (RFC 4418), over the key's
// 32-bit words (ten for the general key, four for the IPv4 one) with a secret 320-bit seed, then
// a 64-bit finalizer to spread NH's bits over the range. For two different keys fixed without
// knowledge of the seed, NH collides with probability at most 2^-32, so an attacker choosing
// tuples cannot aim them at one home; it costs five multiplications (two for the IPv4 key).

/// NH over `N` 32-bit words (`N` even, at most ten) with the seed's first `N` 32-bit words.
#[inline(always)]
fn nh<const N: usize>(m: &[u32; N], seed: impl Fn(usize) -> u64) -> u64 {
    let mut nh = 0u64;
    let mut i = 0;
    while i < N / 2 {
        let k = seed(i);
        let a = m[2 * i].wrapping_add(k as u32) as u64;
        let b = m[2 * i + 1].wrapping_add((k >> 32) as u32) as u64;
        nh = nh.wrapping_add(a.wrapping_mul(b));
        i += 1;
    }
    nh
}

/// MurmurHash3's fmix64: a bijection, so it keeps NH's collision bound.
#[inline(always)]
fn finish(mut h: u64) -> u64 {
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
    pub const fn linking(&self, c: u32) -> u32 {
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
/// neighbourhood's reach (an orphan no bit can name). Never [`LOCK`]: a slot 31 places on is
/// past the reach, and clearing "its" bit must not release another inserter's lock.
#[inline(always)]
pub const fn link_bit(home: u32, i: u32, slots: u32) -> u32 {
    let d = distance(home, i, slots);
    if d < NEIGHBOURHOOD {
        1 << d
    } else {
        0
    }
}

/// The memory a table lives in: the kernel's array map, or the daemon's mapping of it.
pub trait Slots {
    /// The key the table is built on.
    type Key: TableKey;
    /// Slots in the table.
    fn count(&self) -> u32;
    /// Slot `i`, `None` past the end.
    fn get(&self, i: u32) -> Option<*mut Slot<Self::Key>>;
    /// `v`, unchanged, with the verifier's knowledge of it dropped (the kernel's table passes it
    /// through memory). After a loop that stops at one of many slots, this makes the code that
    /// follows one path for the verifier to walk, not one per slot the loop could stop at.
    #[inline(always)]
    fn forget(&self, v: u32) -> u32 {
        v
    }
}

/// Whether the slot holds the flow of `key`: LIVE or DYING, the key, and not a deleted record.
///
/// # Safety
/// `s` must point to a slot of the table.
#[inline(always)]
unsafe fn holds<K: TableKey>(s: *mut Slot<K>, key: &K) -> bool {
    // SAFETY: forwarded; fields of a valid slot, aligned.
    unsafe {
        holds_flow(load(&raw const (*s).ctrl))
            && (*s).key.same(key)
            && load(&raw const (*s).rec.word) != DEAD_WORD
    }
}

/// The index of the slot holding `key`, whose homes are `homes`, without taking any lock.
#[inline(always)]
pub fn find<T: Slots>(t: &T, key: &T::Key, homes: Homes) -> Option<u32> {
    if let Some(i) = find_near(t, key, homes.first) {
        return Some(i);
    }
    find_near(t, key, homes.second)
}

/// The slot holding `key` among those `home` links.
#[inline(always)]
fn find_near<T: Slots>(t: &T, key: &T::Key, home: u32) -> Option<u32> {
    let n = t.count();
    let h = t.get(home)?;
    // SAFETY: a slot of the table.
    let mut bits = unsafe { load(&raw const (*h).hop) } & !LOCK;
    let mut d = 0;
    while bits != 0 && d < NEIGHBOURHOOD {
        if bits & 1 != 0 {
            let i = nth(home, d, n);
            if let Some(s) = t.get(i) {
                // SAFETY: a slot of the table.
                if unsafe { holds(s, key) } {
                    return Some(i);
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
    /// The flow is in the slot of this index, published.
    Done(u32),
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
/// `home` must point to a slot.
#[inline(always)]
unsafe fn lock<K>(home: *mut Slot<K>) -> bool {
    let mut i = 0;
    while i < LOCK_SPINS {
        // SAFETY: forwarded. Read first, so waiting CPUs do not keep the line bouncing.
        if unsafe { load(&raw const (*home).hop) } & LOCK == 0
            && unsafe { pair::hop_or(home, LOCK) } & LOCK == 0
        {
            return true;
        }
        i += 1;
    }
    false
}

/// Inserts `key` (with homes `homes`) with record `rec`, unless present. See the module comment
/// for the protocol; the kernel programs and the daemon's seeding both insert through here.
#[inline(always)]
pub fn insert<T: Slots>(t: &T, key: &T::Key, rec: &FlowRecord, homes: Homes) -> Inserted {
    let n = t.count();
    let (Some(h1), Some(h2)) = (t.get(homes.first), t.get(homes.second)) else {
        return Inserted::Full;
    };
    // SAFETY: slots of the table, aligned; see the module comment for who writes what.
    unsafe {
        // Every insert of a key takes its first home's lock, so two of the same key serialize.
        if !lock(h1) {
            return Inserted::Contended;
        }
        if find(t, key, homes).is_some() {
            pair::hop_and(h1, !LOCK);
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
            let i = nth(home, d, n);
            if claim(t, i, key, rec, flag) {
                if second {
                    // Linked from the second home, whose lock another inserter may hold.
                    pair::hop_or(h2, 1 << d);
                    pair::hop_and(h1, !LOCK);
                } else {
                    // The slot was FREE, so its bit is clear: one XOR sets it and releases the
                    // lock.
                    pair::hop_xor(h1, LOCK | (1 << d));
                }
                return Inserted::Done(i);
            }
            tries += 1;
        }
        pair::hop_and(h1, !LOCK);
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
/// quarters: 2.5% of them went to their second home and 15 found no slot in either 31-slot
/// neighbourhood (a head start of 4: 5.4% and fewer failures, but every second-home flow costs
/// its lookups a second random access; 63-slot neighbourhoods, before the control words were
/// halved: 2.6% and none; a single home: 326 failures).
pub const FIRST_HOME_REACH: u32 = 8;

/// Claims slot `i` if it is FREE, writes the flow into it and publishes it LIVE (`home` says which
/// home will link it). The caller holds the key's insert lock and links the slot.
///
/// # Safety
/// See the module comment.
#[inline(always)]
unsafe fn claim<T: Slots>(t: &T, i: u32, key: &T::Key, rec: &FlowRecord, home: u8) -> bool {
    let Some(s) = t.get(i) else {
        return false;
    };
    // SAFETY: a slot of the table.
    unsafe {
        let c = load(&raw const (*s).ctrl);
        let claimed = ctrl(generation_of(c).wrapping_add(1), status::CLAIMED | home);
        if status_of(c) != status::FREE || !pair::ctrl_cas(s, c, claimed) {
            return false;
        }
        (*s).key = *key;
        (*s).rec = *rec;
        pair::ctrl_publish(s, claimed, with_status(claimed, status::LIVE));
    }
    true
}

/// Takes slot `i` for a daemon thread (LIVE -> DYING) if its `ctrl` is still `live`: the occupant
/// of that generation, whose word the caller judged. Programs still update a DYING flow; the
/// caller's compare-and-swap of the word then fails and it gives the slot back with `live`.
#[inline(always)]
fn hold<T: Slots>(t: &T, i: u32, live: u32) -> Option<*mut Slot<T::Key>> {
    let s = t.get(i)?;
    // SAFETY: a slot of the table; see the module comment for who writes what.
    let held = status_of(live) == status::LIVE
        && unsafe { pair::ctrl_cas(s, live, with_status(live, status::DYING)) };
    held.then_some(s)
}

/// Deletes the flow in slot `i` if its `ctrl` is still `live` (the occupant of that generation,
/// LIVE) and its state word is still `word`; the daemon's only way to delete. Returns whether it
/// did. The slot is DEAD until [`free`] after a grace period.
pub fn kill<T: Slots>(t: &T, i: u32, live: u32, word: u64, seed: &Seed) -> bool {
    let Some(s) = hold(t, i, live) else {
        return false;
    };
    // SAFETY: a slot this thread holds; see the module comment for who writes what.
    unsafe {
        let dying = with_status(live, status::DYING);
        if !compare_and_swap(&raw mut (*s).rec.word, word, DEAD_WORD) {
            pair::ctrl_publish(s, dying, live);
            return false;
        }
        pair::ctrl_publish(s, dying, with_status(live, status::DEAD));
        let n = t.count();
        let home = homes((*s).key.hash(seed), n).linking(live);
        if let Some(h) = t.get(home) {
            pair::hop_and(h, !link_bit(home, i, n));
        }
    }
    true
}

/// Replaces the record in slot `i` (whose `ctrl` is still `live`) with `new` if its state word is
/// still `word`. The daemon's way to write a flow it decided about (confirming a pickup, ending an
/// endpoint): programs may update it meanwhile, and then win.
pub fn rewrite<T: Slots>(t: &T, i: u32, live: u32, word: u64, new: &FlowRecord) -> bool {
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
        pair::ctrl_publish(s, with_status(live, status::DYING), live);
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
        let old = load(&raw const (*s).ctrl);
        status_of(old) == status::DEAD
            && pair::ctrl_cas(s, old, ctrl(generation_of(old), status::FREE))
    }
}

/// A consistent copy of slot `i`: its `ctrl` and the flow it holds, or `None` when it holds none.
/// Read twice around the copy: a slot claimed, deleted or reused meanwhile changes `ctrl`.
pub fn snapshot<T: Slots>(t: &T, i: u32) -> Option<(u32, T::Key, FlowRecord)> {
    let s = t.get(i)?;
    for _ in 0..4 {
        // SAFETY: a slot of the table; volatile copies of plain integers, which any bit pattern is.
        unsafe {
            let before = load(&raw const (*s).ctrl);
            if !holds_flow(before) {
                return None;
            }
            let (key, rec) = copy_body(s);
            if load(&raw const (*s).ctrl) == before {
                return (rec.word != DEAD_WORD).then_some((before, key, rec));
            }
        }
    }
    None
}

/// A slot's key and record, copied 8 bytes at a time: they follow the two control words, 8-byte
/// aligned and a whole number of words long. A volatile copy field by field is some forty narrow
/// loads and register spills, the larger part of a walk's time per flow.
///
/// # Safety
/// `s` must point to a slot.
#[inline(always)]
unsafe fn copy_body<K: TableKey>(s: *const Slot<K>) -> (K, FlowRecord) {
    #[repr(C)]
    struct Body<K> {
        key: K,
        rec: FlowRecord,
    }
    let mut out = core::mem::MaybeUninit::<Body<K>>::uninit();
    let words = core::mem::size_of::<Body<K>>() / 8;
    // SAFETY: the key starts 8 bytes into the slot and the record follows it as in `Body` (both
    // are repr(C) with the same fields in the same order, asserted for the two slot types);
    // every bit pattern is a valid key and record.
    unsafe {
        let from = (&raw const (*s).key).cast::<u64>();
        let to = out.as_mut_ptr().cast::<u64>();
        for w in 0..words {
            to.add(w).write(core::ptr::read_volatile(from.add(w)));
        }
        let Body { key, rec } = out.assume_init();
        (key, rec)
    }
}
const _: () = assert!(
    core::mem::offset_of!(Slot4, key) == 8
        && core::mem::offset_of!(Slot6, key) == 8
        && core::mem::size_of::<FlowKey4>().is_multiple_of(8)
        && core::mem::size_of::<FlowKey>().is_multiple_of(8)
        && SLOT4_SIZE >= 8 + 16 + core::mem::size_of::<FlowRecord>()
        && SLOT6_SIZE >= 8 + 40 + core::mem::size_of::<FlowRecord>()
);

/// Clears what a daemon that died mid-operation left: a home lock, a CLAIMED slot, a DYING slot.
/// Call on a table no daemon thread is using, for state that programs never hold across a
/// program run, so `was` (the slot's `ctrl` and `hop`, read at least a few milliseconds earlier)
/// still being there means it is stale. Returns how many it released.
pub fn release_stale<T: Slots>(t: &T, i: u32, was_ctrl: u32, was_hop: u32) -> u32 {
    let Some(s) = t.get(i) else {
        return 0;
    };
    let mut released = 0;
    // SAFETY: a slot of the table.
    unsafe {
        if was_hop & LOCK != 0 && load(&raw const (*s).hop) & LOCK != 0 {
            pair::hop_and(s, !LOCK);
            released += 1;
        }
        let now = load(&raw const (*s).ctrl);
        if now == was_ctrl {
            let to = match status_of(now) {
                // Never published: no hop bit names it.
                status::CLAIMED => Some(ctrl(generation_of(now), status::FREE)),
                status::DYING => Some(with_status(now, status::LIVE)),
                _ => None,
            };
            if let Some(to) = to {
                if pair::ctrl_cas(s, now, to) {
                    released += 1;
                }
            }
        }
    }
    released
}
