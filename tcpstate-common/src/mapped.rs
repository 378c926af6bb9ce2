//! The kernel's flow table, mapped into a userspace process ([`crate::table`]): the daemon's
//! walks, deletes, inserts and rewrites go through the mapping, with no system call per flow; the
//! inspection commands, tests and benchmarks read and fill it the same way.

use std::{
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use crate::{
    commit::load,
    flow::{FlowKey, FlowKey4, FlowRecord},
    table::{self, slot_size, status, Inserted, Seed, Slot, Slots, TableKey},
};
use aya::maps::MapData;
use memmap2::{MmapOptions, MmapRaw};

/// One flow table, mapped read-write.
pub struct Region<K> {
    // Field order: the mapping goes before the map's descriptor (either keeps the table alive).
    mem: MmapRaw,
    map: MapData,
    slots: u32,
    seed: Seed,
    _key: core::marker::PhantomData<K>,
}

// SAFETY: the mapping is shared memory every CPU writes with atomics; a region only hands out
// copies and acts through the table protocol, which is made for concurrent users.
unsafe impl<K> Send for Region<K> {}
// SAFETY: as above.
unsafe impl<K> Sync for Region<K> {}

impl<K: TableKey> Slots for Region<K> {
    type Key = K;
    fn count(&self) -> u32 {
        self.slots
    }
    fn get(&self, i: u32) -> Option<*mut Slot<K>> {
        // SAFETY: in bounds of the mapping (checked), which is page-aligned and a whole number of
        // slots.
        (i < self.slots).then(|| unsafe { self.mem.as_mut_ptr().cast::<Slot<K>>().add(i as usize) })
    }
}

/// The flow tables, mapped read-write: IPv4 flows in one, every other flow in the other
/// ([`crate::table`]). Every method takes and gives the general [`FlowKey`] and picks the table.
pub struct Flows {
    v4: Region<FlowKey4>,
    v6: Region<FlowKey>,
    seed: Seed,
}

/// Why [`Flows::insert`] did not insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    Exists,
    Full,
    Contended,
}

impl core::fmt::Display for InsertError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            InsertError::Exists => "the flow is in the table already",
            InsertError::Full => {
                "no free slot in the flow's neighbourhood (the table is full there)"
            }
            InsertError::Contended => "another inserter held the flow's home slot",
        })
    }
}

impl std::error::Error for InsertError {}

/// The pinned map `name` in `dir`.
fn open_pin(dir: &std::path::Path, name: &str) -> std::io::Result<MapData> {
    MapData::from_pin(dir.join(name)).map_err(|e| {
        std::io::Error::other(format!("cannot open {}: {e}", dir.join(name).display()))
    })
}

/// The flow tables' hash key, from the map pinned beside the tables in `dir`.
pub fn seed_from_pins(dir: &std::path::Path) -> std::io::Result<Seed> {
    use aya::maps::{Array, Map};
    let seeds: Array<MapData, Seed> =
        Array::try_from(Map::Array(open_pin(dir, crate::maps::FLOW_SEED)?))
            .map_err(std::io::Error::other)?;
    seeds.get(&0, 0).map_err(std::io::Error::other)
}

/// Where a flow sits: its slot ([`Place::index`]), and the slot's `ctrl` (the occupant's
/// generation, and which home links it) when it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The slot's index in its table, with [`GENERAL`] set for the table of non-IPv4 flows: one
    /// number names a slot of either table (what the sweeper collects to free).
    pub index: u32,
    pub ctrl: u32,
}

/// In a [`Place::index`]: the slot is in the table of non-IPv4 flows. Neither table has 2^31
/// slots (a slot is at least 96 bytes, and an array map at most 2^32 entries of at most 4 GiB
/// in all... the daemon's --max-flows caps either far below).
pub const GENERAL: u32 = 1 << 31;

impl<K: TableKey> Region<K> {
    /// Maps the table held by `map` (an mmapable array of `Slot<K>`), hashed with `seed`.
    pub fn new(map: MapData, seed: Seed) -> std::io::Result<Region<K>> {
        let info = map.info().map_err(std::io::Error::other)?;
        let size = slot_size::<K>();
        if info.value_size() as usize != size {
            return Err(std::io::Error::other(format!(
                "the flow table has {}-byte slots where this build uses {size}",
                info.value_size()
            )));
        }
        let slots = info.max_entries();
        let len = slots as usize * size;
        let mem = MmapOptions::new()
            .len(len)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot map the flow table into memory: {e}"),
                )
            })?;
        Ok(Region {
            mem,
            map,
            slots,
            seed,
            _key: core::marker::PhantomData,
        })
    }

    /// The array map the table lives in.
    pub fn map(&self) -> &MapData {
        &self.map
    }

    /// The key's two home slots.
    pub fn homes(&self, key: &K) -> table::Homes {
        table::homes(key.hash(&self.seed), self.slots)
    }

    /// The home that links the flow in a slot whose `ctrl` is `c`.
    pub fn linking_home(&self, key: &K, c: u32) -> u32 {
        self.homes(key).linking(c)
    }

    /// Calls `f` on every flow with its slot's index and `ctrl`, collecting the slots deleted and
    /// not yet freed into `dead`. Returns the flows seen.
    fn walk(&self, dead: &mut Vec<u32>, tag: u32, mut f: impl FnMut(Place, K, FlowRecord)) -> u64 {
        let mut seen = 0;
        for i in 0..self.slots {
            // Most slots are free or live: one read of `ctrl` tells, before any copy.
            match self.status(i) {
                status::FREE => continue,
                status::DEAD => {
                    dead.push(i | tag);
                    continue;
                }
                _ => {}
            }
            if let Some((c, k, r)) = table::snapshot(self, i) {
                seen += 1;
                f(
                    Place {
                        index: i | tag,
                        ctrl: c,
                    },
                    k,
                    r,
                );
            }
        }
        seen
    }

    fn status(&self, i: u32) -> u8 {
        self.get(i).map_or(status::FREE, |s| {
            // SAFETY: a slot of the mapping.
            table::status_of(unsafe { load(&raw const (*s).ctrl) })
        })
    }

    /// The flow of `key`: its slot, that slot's `ctrl`, and its record.
    pub fn lookup(&self, key: &K) -> Option<(u32, u32, FlowRecord)> {
        let index = table::find(self, key, self.homes(key))?;
        let (c, k, r) = table::snapshot(self, index)?;
        (k == *key).then_some((index, c, r))
    }

    fn insert(&self, key: &K, rec: &FlowRecord) -> Result<(), InsertError> {
        // A program holds a home's lock for well under a microsecond: a few rounds of the spin
        // [`table::insert`] does are enough unless this thread was descheduled meanwhile.
        for _ in 0..8 {
            match table::insert(self, key, rec, self.homes(key)) {
                Inserted::Done(_) => return Ok(()),
                Inserted::Exists => return Err(InsertError::Exists),
                Inserted::Full => return Err(InsertError::Full),
                Inserted::Contended => std::thread::yield_now(),
            }
        }
        Err(InsertError::Contended)
    }

    fn kill(&self, i: u32, live: u32, word: u64) -> bool {
        table::kill(self, i, live, word, &self.seed)
    }

    fn remove_at(&self, key: &K) -> Option<(u32, FlowRecord)> {
        // A segment may move the flow between the read and the delete: read again and retry.
        for _ in 0..16 {
            let (i, c, rec) = self.lookup(key)?;
            if self.kill(i, c, rec.word) {
                return Some((i, rec));
            }
        }
        None
    }

    /// The slots holding a daemon thread's lock or claim, with their `ctrl` and `hop`.
    fn held(&self) -> Vec<(u32, u32, u32)> {
        (0..self.slots)
            .filter_map(|i| {
                let s = self.get(i)?;
                // SAFETY: a slot of the mapping; plain copies of the two words.
                let (ctrl, hop) =
                    unsafe { (load(&raw const (*s).ctrl), load(&raw const (*s).hop)) };
                let held = hop & table::LOCK != 0
                    || matches!(table::status_of(ctrl), status::CLAIMED | status::DYING);
                held.then_some((i, ctrl, hop))
            })
            .collect()
    }

    /// Whether the flow in slot `i`, keyed `k` with `ctrl` `c`, is linked from its home.
    fn linked(&self, k: &K, i: u32, c: u32) -> bool {
        let home = self.linking_home(k, c);
        self.get_hop(home) & table::link_bit(home, i, self.slots) != 0
    }

    fn get_hop(&self, i: u32) -> u32 {
        self.get(i).map_or(0, |s| {
            // SAFETY: a slot of the mapping.
            unsafe { load(&raw const (*s).hop) }
        })
    }

    /// See [`Flows::repair`], for this table.
    fn repair(&self, wait: Duration) -> usize {
        let suspicious = self.held();
        let mut released = 0;
        if !suspicious.is_empty() {
            std::thread::sleep(wait);
            for (i, ctrl, hop) in &suspicious {
                released += table::release_stale(self, *i, *ctrl, *hop) as usize;
            }
        }
        // A flow published but not linked from its home's neighbourhood word is invisible to
        // lookups: delete it (its books were never written either: the dead daemon booked an
        // insert only after it completed).
        let mut orphans = Vec::new();
        self.walk(&mut Vec::new(), 0, |p, k, r| {
            if !self.linked(&k, p.index, p.ctrl) {
                orphans.push((p, r.word));
            }
        });
        if !orphans.is_empty() {
            std::thread::sleep(wait);
            for (p, word) in orphans {
                let k = table::snapshot(self, p.index).map(|(_, k, _)| k);
                let still_unlinked = k.is_some_and(|k| !self.linked(&k, p.index, p.ctrl));
                if still_unlinked && self.kill(p.index, p.ctrl, word) {
                    released += 1;
                }
            }
        }
        released
    }
}

/// A flow's key as its table keeps it.
enum Keyed {
    V4(FlowKey4),
    Other(FlowKey),
}

impl Keyed {
    fn of(key: &FlowKey) -> Keyed {
        match FlowKey4::narrow(key) {
            Some(k) => Keyed::V4(k),
            None => Keyed::Other(*key),
        }
    }
}

impl Flows {
    /// Maps the tables held by `v4` (an mmapable array of [`table::Slot4`]) and `v6` (of
    /// [`table::Slot6`]), both hashed with `seed`.
    pub fn new(v4: MapData, v6: MapData, seed: Seed) -> std::io::Result<Flows> {
        Ok(Flows {
            v4: Region::new(v4, seed)?,
            v6: Region::new(v6, seed)?,
            seed,
        })
    }

    /// The tables a running daemon pinned in `dir`, with the hash key pinned beside them.
    pub fn from_pins(dir: &std::path::Path) -> std::io::Result<Flows> {
        Flows::new(
            open_pin(dir, crate::maps::FLOWS4)?,
            open_pin(dir, crate::maps::FLOWS6)?,
            seed_from_pins(dir)?,
        )
    }

    /// The hash key the tables were created with.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The IPv4 table.
    pub fn v4(&self) -> &Region<FlowKey4> {
        &self.v4
    }

    /// The table of every other flow.
    pub fn v6(&self) -> &Region<FlowKey> {
        &self.v6
    }

    /// Calls `f` on every flow. A flow inserted or deleted meanwhile may be seen or missed; every
    /// flow present throughout is seen once. Returns the flows seen.
    pub fn for_each(&self, mut f: impl FnMut(FlowKey, FlowRecord)) -> std::io::Result<u64> {
        Ok(self.for_each_slot(|_, k, r| f(k, r)))
    }

    /// As [`Flows::for_each`], with each flow's place.
    pub fn for_each_slot(&self, f: impl FnMut(Place, FlowKey, FlowRecord)) -> u64 {
        self.walk(&mut Vec::new(), f)
    }

    /// As [`Flows::for_each_slot`], also collecting the slots deleted and not yet freed into
    /// `dead` (for [`Flows::reclaim`]).
    pub fn walk(&self, dead: &mut Vec<u32>, mut f: impl FnMut(Place, FlowKey, FlowRecord)) -> u64 {
        self.v4.walk(dead, 0, |p, k, r| f(p, k.widen(), r)) + self.v6.walk(dead, GENERAL, f)
    }

    /// The flow of `key`, where it sits and what it holds.
    pub fn lookup(&self, key: &FlowKey) -> Option<(Place, FlowRecord)> {
        let (index, ctrl, rec) = match Keyed::of(key) {
            Keyed::V4(k) => self.v4.lookup(&k)?,
            Keyed::Other(k) => {
                let (i, c, r) = self.v6.lookup(&k)?;
                (i | GENERAL, c, r)
            }
        };
        Some((Place { index, ctrl }, rec))
    }

    /// Inserts a flow the table does not hold (seeding, carrying a table over).
    pub fn insert(&self, key: &FlowKey, rec: &FlowRecord) -> Result<(), InsertError> {
        match Keyed::of(key) {
            Keyed::V4(k) => self.v4.insert(&k, rec),
            Keyed::Other(k) => self.v6.insert(&k, rec),
        }
    }

    /// Deletes the flow at `p` if its slot still holds that occupant and its state word is still
    /// `word`. Returns whether it did.
    fn kill(&self, p: Place, word: u64) -> bool {
        if p.index & GENERAL != 0 {
            self.v6.kill(p.index & !GENERAL, p.ctrl, word)
        } else {
            self.v4.kill(p.index, p.ctrl, word)
        }
    }

    /// Deletes the flow of `key` if its state word is still `word` (no segment moved it since the
    /// caller decided). Returns whether it did.
    pub fn remove_if(&self, key: &FlowKey, word: u64) -> bool {
        self.lookup(key).is_some_and(|(p, _)| self.kill(p, word))
    }

    /// Deletes the flow of `key` whatever its state, returning the record it had when deleted.
    pub fn remove(&self, key: &FlowKey) -> Option<FlowRecord> {
        self.remove_at(key).map(|(_, r)| r)
    }

    /// As [`Flows::remove`], also saying which slot it freed (to [`Flows::reclaim`]).
    pub fn remove_at(&self, key: &FlowKey) -> Option<(u32, FlowRecord)> {
        match Keyed::of(key) {
            Keyed::V4(k) => self.v4.remove_at(&k),
            Keyed::Other(k) => self.v6.remove_at(&k).map(|(i, r)| (i | GENERAL, r)),
        }
    }

    /// Replaces the record of `key` with `new` if its state word is still `old_word`.
    pub fn rewrite(&self, key: &FlowKey, old_word: u64, new: &FlowRecord) -> bool {
        self.lookup(key).is_some_and(|(p, _)| {
            if p.index & GENERAL != 0 {
                table::rewrite(&self.v6, p.index & !GENERAL, p.ctrl, old_word, new)
            } else {
                table::rewrite(&self.v4, p.index, p.ctrl, old_word, new)
            }
        })
    }

    /// Frees deleted slots for reuse, after an RCU grace period: every program run that could
    /// have read one of them before it was deleted has then finished. Returns how many it freed.
    pub fn reclaim(&self, dead: &[u32]) -> usize {
        if dead.is_empty() {
            return 0;
        }
        grace_period();
        self.free(dead)
    }

    /// Frees deleted slots at once, without waiting for a grace period.
    ///
    /// # Safety
    /// No program may be running on the table: only for a caller that runs the programs itself,
    /// synchronously (a benchmark through BPF_PROG_TEST_RUN).
    pub unsafe fn reclaim_now(&self, dead: &[u32]) -> usize {
        self.free(dead)
    }

    fn free(&self, dead: &[u32]) -> usize {
        dead.iter()
            .filter(|&&i| {
                if i & GENERAL != 0 {
                    table::free(&self.v6, i & !GENERAL)
                } else {
                    table::free(&self.v4, i)
                }
            })
            .count()
    }

    /// Releases what a daemon that died mid-operation left held (a home's insert lock, a slot
    /// claimed or being deleted), and deletes a published flow it died before linking to its
    /// home. Call before this process's own threads use the table; programs may run meanwhile
    /// (they never hold any of these across a run, so what lasts `wait` is stale). Returns how
    /// many it released.
    pub fn repair(&self, wait: Duration) -> usize {
        self.v4.repair(wait) + self.v6.repair(wait)
    }
}

/// A slot of the one table of earlier builds: 64-bit control words, then the general key and the
/// record, in 128 bytes. `ctrl` held the slot's status in its low seven bits (the eighth marked a
/// second home) and the generation above them. Read by [`read_old_table`]; written by the test
/// that carries such a table over.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct OldSlot {
    pub ctrl: u64,
    pub hop: u64,
    pub key: FlowKey,
    pub rec: FlowRecord,
}
const _: () = assert!(core::mem::size_of::<OldSlot>() == table::OLD_SLOT_SIZE);

impl OldSlot {
    /// A flow as an earlier build held it: LIVE in its home, generation 1.
    pub fn live(key: FlowKey, rec: FlowRecord) -> OldSlot {
        OldSlot {
            ctrl: 1 << 8 | u64::from(table::status::LIVE),
            hop: 0,
            key,
            rec,
        }
    }

    /// The slot's status ([`table::status`]).
    pub fn status(&self) -> u8 {
        self.ctrl as u8 & 0x7f
    }
}

/// Every flow of the one table of earlier builds, read through a read-only mapping. No program
/// writes it any more (the programs of this run use the new tables, and the earlier run's went
/// with it), so plain copies of LIVE and DYING slots are the flows it held.
pub fn read_old_table(
    data: &MapData,
    slots: u32,
    flows: &mut Vec<(FlowKey, FlowRecord)>,
) -> std::io::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    let len = slots as usize * table::OLD_SLOT_SIZE;
    let mem = MmapOptions::new()
        .len(len)
        .map_raw_read_only(data.fd().as_fd().as_raw_fd())?;
    for i in 0..slots as usize {
        // SAFETY: in bounds of a page-aligned mapping of `slots` 128-byte slots; plain integers,
        // valid for every bit pattern; nothing writes the table any more.
        let s = unsafe { std::ptr::read_volatile(mem.as_ptr().cast::<OldSlot>().add(i)) };
        let status = s.status();
        let held = status == table::status::LIVE || status == table::status::DYING;
        if held && s.rec.word != table::DEAD_WORD {
            flows.push((s.key, s.rec));
        }
    }
    Ok(())
}

/// `membarrier(2)` command that waits for an RCU grace period (synchronize_rcu) on every CPU.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Waits until every program run that started before the call has finished: BPF programs run
/// inside RCU read-side sections, and `membarrier(MEMBARRIER_CMD_GLOBAL)` returns after an RCU
/// grace period (kernel/sched/membarrier.c). Kernels booted with nohz_full refuse the command;
/// there a pause far longer than any program run stands in for it.
fn grace_period() {
    // SAFETY: no pointers; flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The histogram rows of [`crate::durations::DURATIONS`], mapped read-write: the kernel adds to
/// them atomically, and so does the daemon for the endings it decides; a read is a memory read
/// per row, no system call. [`Words`] of 16 to a row.
pub struct Durations {
    words: Words,
}

/// `u64` words in a [`crate::durations::DurationRow`].
const ROW_WORDS: u32 = (core::mem::size_of::<crate::durations::DurationRow>() / 8) as u32;

impl Durations {
    /// Maps the rows held by `map` (an mmapable array of [`crate::durations::DurationRow`]).
    pub fn new(map: MapData) -> std::io::Result<Durations> {
        Ok(Durations {
            words: Words::new(map, ROW_WORDS, "the duration histograms")?,
        })
    }

    /// Rows in the array.
    pub fn rows(&self) -> u32 {
        self.words.len() / ROW_WORDS
    }

    /// The scopes the array was sized for ([`crate::durations::entries`]).
    pub fn scopes(&self) -> u32 {
        use crate::durations::{Measure, HOST_ROWS};
        (self.rows() / Measure::COUNT).saturating_sub(HOST_ROWS)
    }

    /// The index of `measure`'s `row`.
    pub fn index(&self, measure: crate::durations::Measure, row: u32) -> u32 {
        crate::durations::index(measure, row, self.scopes())
    }

    /// Word `k` of row `i`: [`Words`] index, past the end for a row past the end.
    fn at(&self, i: u32, k: usize) -> u32 {
        i.saturating_mul(ROW_WORDS).saturating_add(k as u32)
    }

    /// Row `i` as it is now (each word read atomically; a row being added to may show the
    /// bucket before the sum, which the next read completes). Zero past the end.
    pub fn get(&self, i: u32) -> crate::durations::DurationRow {
        let mut row = crate::durations::DurationRow::default();
        for (k, b) in row.buckets.iter_mut().enumerate() {
            *b = self.words.get(self.at(i, k));
        }
        row.sum_us = self.words.get(self.at(i, crate::durations::BUCKETS));
        row
    }

    /// Adds one observation of `ns` to row `i`, as the kernel does.
    pub fn observe(&self, i: u32, ns: u64) {
        if i < self.rows() {
            let (b, us) = crate::durations::observation(ns);
            self.words.add(self.at(i, b), 1);
            self.words.add(self.at(i, crate::durations::BUCKETS), us);
        }
    }

    /// Zeroes row `i` (a scope given to a new namespace starts from nothing).
    pub fn clear(&self, i: u32) {
        if i < self.rows() {
            for k in 0..ROW_WORDS as usize {
                self.words.set(self.at(i, k), 0);
            }
        }
    }
}

/// An array map's values as `u64` words the kernel updates atomically
/// ([`crate::maps::SCOPE_COUNTERS`], and the rows of [`Durations`]), mapped read-write: read as
/// memory, one load a word.
pub struct Words {
    mem: MmapRaw,
    _map: MapData,
    len: u32,
}

// SAFETY: shared memory updated only with atomic operations.
unsafe impl Send for Words {}
// SAFETY: as above.
unsafe impl Sync for Words {}

impl Words {
    /// Maps the values held by `map`, an mmapable array whose values are `value_words` `u64`s;
    /// `what` names it in errors.
    pub fn new(map: MapData, value_words: u32, what: &str) -> std::io::Result<Words> {
        let info = map.info().map_err(std::io::Error::other)?;
        if info.value_size() != 8 * value_words {
            return Err(std::io::Error::other(format!(
                "{what} have {}-byte values where this build uses {}",
                info.value_size(),
                8 * value_words
            )));
        }
        let len = info.max_entries() * value_words;
        let mem = MmapOptions::new()
            .len(len as usize * 8)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot map {what} into memory: {e}"))
            })?;
        Ok(Words {
            mem,
            _map: map,
            len,
        })
    }

    /// Words in the array.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn word(&self, i: u32) -> Option<&core::sync::atomic::AtomicU64> {
        // SAFETY: in bounds (checked) of a page-aligned mapping of 8-byte words, which every
        // writer updates atomically.
        (i < self.len).then(|| unsafe {
            &*self
                .mem
                .as_mut_ptr()
                .cast::<core::sync::atomic::AtomicU64>()
                .add(i as usize)
        })
    }

    /// Words `start..start + out.len()` into `out` (0 past the end): one pass over the mapping,
    /// for a reader of thousands of words (the scrape reads every watched scope's counters).
    pub fn read(&self, start: u32, out: &mut [u64]) {
        let end = (start as usize)
            .saturating_add(out.len())
            .min(self.len as usize);
        let have = end.saturating_sub(start as usize);
        let (mapped, past) = out.split_at_mut(have);
        if have > 0 {
            // SAFETY: `start..end` is in bounds of a page-aligned mapping of 8-byte words, which
            // every writer updates atomically.
            let words = unsafe {
                core::slice::from_raw_parts(
                    self.mem
                        .as_mut_ptr()
                        .cast::<core::sync::atomic::AtomicU64>()
                        .add(start as usize),
                    have,
                )
            };
            for (o, w) in mapped.iter_mut().zip(words) {
                *o = w.load(core::sync::atomic::Ordering::Relaxed);
            }
        }
        past.fill(0);
    }

    /// Word `i` (0 past the end).
    pub fn get(&self, i: u32) -> u64 {
        self.word(i)
            .map_or(0, |w| w.load(core::sync::atomic::Ordering::Relaxed))
    }

    /// Sets word `i` (a scope given to a new namespace starts from zero).
    pub fn set(&self, i: u32, v: u64) {
        if let Some(w) = self.word(i) {
            w.store(v, core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Adds `v` to word `i`, atomically, as the programs do.
    pub fn add(&self, i: u32, v: u64) {
        if let Some(w) = self.word(i) {
            w.fetch_add(v, core::sync::atomic::Ordering::Relaxed);
        }
    }
}
