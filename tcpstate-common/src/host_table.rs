//! A flow table in this process's own memory: the table protocol ([`crate::table`]) on the host,
//! for the tests that drive it with threads standing in for CPUs, and for replaying an insert
//! sequence to see what it would build (what an attacker who knew the seed would get).

use core::cell::UnsafeCell;

use crate::table::{Slot, Slots};

/// Zeroed slots (all FREE) in an allocation of this process.
pub struct HostTable {
    // UnsafeCell: the protocol writes through shared references, as CPUs write the kernel's map.
    slots: Box<[UnsafeCell<Slot>]>,
}

// SAFETY: every access goes through the table protocol (atomics and volatile copies), which is made
// for concurrent users, as the kernel's map and the daemon's mapping of it are.
unsafe impl Sync for HostTable {}

impl HostTable {
    pub fn new(slots: u32) -> HostTable {
        HostTable {
            slots: (0..slots)
                .map(|_| UnsafeCell::new(Slot::default()))
                .collect(),
        }
    }

    /// A copy of slot `i`, to inspect (panics past the end).
    pub fn slot(&self, i: u32) -> Slot {
        // SAFETY: a slot of this table; a volatile copy of plain integers.
        unsafe { core::ptr::read_volatile(self.slots[i as usize].get()) }
    }
}

impl Slots for HostTable {
    fn count(&self) -> u32 {
        self.slots.len() as u32
    }
    fn get(&self, i: u32) -> Option<*mut Slot> {
        self.slots.get(i as usize).map(UnsafeCell::get)
    }
}
