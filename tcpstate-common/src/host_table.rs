//! A flow table in this process's own memory: the table protocol ([`crate::table`]) on the host,
//! for the tests that drive it with threads standing in for CPUs, and for replaying an insert
//! sequence to see what it would build (what an attacker who knew the seed would get).

use core::cell::UnsafeCell;

use crate::table::{Slot, Slots, TableKey};

/// Zeroed slots (all FREE) in an allocation of this process, keyed by `K` (the IPv4 table's key
/// or the general one).
pub struct HostTable<K> {
    // UnsafeCell: the protocol writes through shared references, as CPUs write the kernel's map.
    slots: Box<[UnsafeCell<Slot<K>>]>,
}

// SAFETY: every access goes through the table protocol (atomics and volatile copies), which is made
// for concurrent users, as the kernel's map and the daemon's mapping of it are.
unsafe impl<K> Sync for HostTable<K> {}

impl<K: TableKey> HostTable<K> {
    pub fn new(slots: u32) -> HostTable<K> {
        HostTable {
            slots: (0..slots)
                .map(|_| UnsafeCell::new(Slot::default()))
                .collect(),
        }
    }

    /// A copy of slot `i`, to inspect (panics past the end).
    pub fn slot(&self, i: u32) -> Slot<K> {
        // SAFETY: a slot of this table; a volatile copy of plain integers.
        unsafe { core::ptr::read_volatile(self.slots[i as usize].get()) }
    }
}

impl<K: TableKey> Slots for HostTable<K> {
    type Key = K;
    fn count(&self) -> u32 {
        self.slots.len() as u32
    }
    fn get(&self, i: u32) -> Option<*mut Slot<K>> {
        self.slots.get(i as usize).map(UnsafeCell::get)
    }
}
