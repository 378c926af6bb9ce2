//! Which scope each watched namespace has: the allocation rule, kept apart from the maps it is
//! mirrored into so it is tested on its own.
//!
//! Scope 0 is the host's and never given out. A namespace keeps its scope for as long as it is
//! watched, and across daemon restarts (the slots are restored from the pinned info array). A
//! namespace that goes away leaves its slot retired for [`HOLD`] before it is reused, so that no
//! program still running with the old scope writes into the new namespace's counters.

use std::time::Duration;

use tcpstate_common::scope::{self, ScopeInfo};

use super::netns::NetnsId;

/// How long a retired slot waits before it is given to another namespace.
pub const HOLD: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Free,
    Active(NetnsId),
    /// Gone since this CLOCK_MONOTONIC time (ns).
    Retired(u64),
}

/// Why a namespace got no scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

#[derive(Debug)]
pub struct Slots {
    slots: Vec<Slot>,
}

impl Slots {
    /// `scopes` counts the host's slot: a daemon with `--max-containers N` has N + 1.
    pub fn new(scopes: u32) -> Slots {
        Slots {
            slots: vec![Slot::Free; scopes.max(1) as usize],
        }
    }

    /// From the pinned info array of an earlier run.
    pub fn restore(infos: &[ScopeInfo]) -> Slots {
        let mut s = Slots::new(infos.len() as u32);
        for (i, info) in infos.iter().enumerate().skip(1) {
            s.slots[i] = match info.state {
                scope::state::ACTIVE | scope::state::PENDING => Slot::Active(NetnsId {
                    dev: info.netns_dev,
                    ino: info.netns_ino,
                }),
                scope::state::RETIRED => Slot::Retired(info.since_ns),
                _ => Slot::Free,
            };
        }
        s
    }

    pub fn find(&self, id: NetnsId) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| *s == Slot::Active(id))
            .map(|i| i as u32)
    }

    /// The scope for `id`: the one it has, else a free slot, else a retired one past its hold.
    /// Returns the scope and whether the slot held another namespace's counters (to be zeroed).
    pub fn allocate(&mut self, id: NetnsId, now_ns: u64) -> Result<(u32, bool), Full> {
        if let Some(s) = self.find(id) {
            return Ok((s, false));
        }
        let hold = HOLD.as_nanos() as u64;
        let pick = self
            .slots
            .iter()
            .skip(1)
            .position(|s| *s == Slot::Free)
            .map(|i| (i + 1, false))
            .or_else(|| {
                self.slots.iter().skip(1).position(
                    |s| matches!(s, Slot::Retired(since) if now_ns.saturating_sub(*since) >= hold),
                )
                .map(|i| (i + 1, true))
            });
        let (i, reused) = pick.ok_or(Full)?;
        self.slots[i] = Slot::Active(id);
        Ok((i as u32, reused))
    }

    pub fn retire(&mut self, scope: u32, now_ns: u64) {
        if let Some(s) = self.slots.get_mut(scope as usize).filter(|_| scope != 0) {
            *s = Slot::Retired(now_ns);
        }
    }

    #[cfg(test)]
    pub fn get(&self, scope: u32) -> Slot {
        self.slots
            .get(scope as usize)
            .copied()
            .unwrap_or(Slot::Free)
    }

    /// Scopes in use, with their namespaces.
    pub fn active(&self) -> impl Iterator<Item = (u32, NetnsId)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Active(id) => Some((i as u32, *id)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(ino: u64) -> NetnsId {
        NetnsId { dev: 4, ino }
    }
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn namespaces_keep_their_scope_and_the_host_slot_is_never_given() {
        let mut s = Slots::new(3);
        assert_eq!(s.allocate(ns(10), 0), Ok((1, false)));
        assert_eq!(s.allocate(ns(11), 0), Ok((2, false)));
        assert_eq!(
            s.allocate(ns(10), 5),
            Ok((1, false)),
            "same namespace, same scope"
        );
        assert_eq!(
            s.allocate(ns(12), 0),
            Err(Full),
            "two containers fit, the host has 0"
        );
        assert_eq!(s.find(ns(11)), Some(2));
    }

    #[test]
    fn a_retired_slot_is_reused_only_after_its_hold_and_says_so() {
        let mut s = Slots::new(2);
        assert_eq!(s.allocate(ns(10), 0), Ok((1, false)));
        s.retire(1, 100 * SEC);
        assert_eq!(s.find(ns(10)), None);
        assert_eq!(s.allocate(ns(11), 105 * SEC), Err(Full), "still on hold");
        assert_eq!(
            s.allocate(ns(11), 110 * SEC),
            Ok((1, true)),
            "counters to zero"
        );
        s.retire(0, 0);
        assert_eq!(s.get(0), Slot::Free, "the host's slot cannot be retired");
    }

    #[test]
    fn restored_slots_keep_active_and_retired_namespaces() {
        let mut infos = vec![ScopeInfo::default(); 4];
        infos[1].state = scope::state::ACTIVE;
        infos[1].netns_dev = 4;
        infos[1].netns_ino = 77;
        infos[2].state = scope::state::RETIRED;
        infos[2].since_ns = 9;
        let s = Slots::restore(&infos);
        assert_eq!(s.find(ns(77)), Some(1));
        assert_eq!(s.get(2), Slot::Retired(9));
        assert_eq!(s.get(3), Slot::Free);
        assert_eq!(s.active().count(), 1);
    }
}
