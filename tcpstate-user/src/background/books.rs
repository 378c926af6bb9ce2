//! The daemon's side of the counters, and the state the scrape, the sweeper and the container
//! watcher share.
//!
//! The kernel counts what segments do; the daemon books what it does itself (flows it seeds from
//! the kernel's socket table, flows it expires or purges, handshakes it times out) in the pinned
//! `TCPSTATE_USER` array, one slot per scope: each slot's connection deltas and handshake
//! timeouts belong to that scope, and the host scope's slot also holds the table-fill books the
//! kernel reads before admitting a flow.

use std::collections::BTreeSet;

use tcpstate_common::{flow::FlowWord, maps::UserCounters, scope};

use crate::{
    background::{report::SweepReport, scopes::ScopeView},
    bpf::tables::Books,
};

/// What the scrape, the sweeper and the container watcher share. Each holds the lock only for a
/// read or a booking, never across a walk of the table.
pub struct Shared {
    pub books: Books,
    pub counters: DaemonCounters,
    pub report: SweepReport,
    /// The watched container namespaces (empty unless `--containers`).
    pub scopes: ScopeView,
}

impl Shared {
    /// Books a batch of changes and stores the touched slots; a failed store is logged, the
    /// in-memory books stay right and are stored with the next change.
    pub fn book(&mut self, f: impl FnOnce(&mut DaemonCounters)) {
        f(&mut self.counters);
        if let Err(e) = self.counters.store(&mut self.books) {
            tracing::warn!(error = %e, "could not store the daemon's counters");
        }
    }
}

/// The daemon's counters of every scope, as kept in memory and stored to the pinned array.
pub struct DaemonCounters {
    slots: Vec<UserCounters>,
    dirty: BTreeSet<u32>,
}

impl DaemonCounters {
    /// From the pinned array (a restarted daemon continues its predecessor's books).
    pub fn new(slots: Vec<UserCounters>) -> DaemonCounters {
        DaemonCounters {
            slots: if slots.is_empty() {
                vec![UserCounters::default()]
            } else {
                slots
            },
            dirty: BTreeSet::new(),
        }
    }

    /// A flow the daemon inserted into `scope`.
    pub fn record_insert(&mut self, scope: u32, w: FlowWord) {
        self.slot(scope::HOST).book_insert();
        self.slot(scope).shift_gauges(w, 1);
    }

    /// A flow the daemon deleted from `scope`.
    pub fn record_delete(&mut self, scope: u32, w: FlowWord) {
        self.slot(scope::HOST).book_delete(w);
        self.slot(scope).shift_gauges(w, 1u64.wrapping_neg());
    }

    /// A pending pickup the daemon confirmed in `scope`: `w`, the word written, enters the gauges.
    pub fn record_confirm(&mut self, scope: u32, w: FlowWord) {
        self.slot(scope).record_confirm(w);
    }

    /// An endpoint of `scope` the daemon ended alone (tap mode); `w` is the word before.
    pub fn record_end(&mut self, scope: u32, w: FlowWord, side: tcpstate_common::flow::Side) {
        self.slot(scope).record_end(w, side);
    }

    /// A handshake the sweeper gave up on, in `scope`.
    pub fn handshake_timeout(&mut self, scope: u32) {
        let s = self.slot(scope);
        s.handshake_timeouts = s.handshake_timeouts.wrapping_add(1);
    }

    /// Forgets a scope's counters before it is given to a new namespace (never the host's).
    pub fn reset_scope(&mut self, scope: u32) {
        if scope != scope::HOST {
            *self.slot(scope) = UserCounters::default();
        }
    }

    pub fn get(&self, scope: u32) -> UserCounters {
        self.slots.get(scope as usize).copied().unwrap_or_default()
    }

    pub fn all(&self) -> &[UserCounters] {
        &self.slots
    }

    fn slot(&mut self, scope: u32) -> &mut UserCounters {
        let i = scope as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, UserCounters::default());
        }
        self.dirty.insert(scope);
        &mut self.slots[i]
    }

    /// Writes the slots changed since the last store.
    pub fn store(&mut self, books: &mut Books) -> anyhow::Result<()> {
        while let Some(&scope) = self.dirty.first() {
            books.set_user(scope, &self.get(scope))?;
            self.dirty.remove(&scope);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpstate_common::{
        counters::idx,
        flow::{flowflags, Side},
        Role, TcpState,
    };

    fn word(state: TcpState) -> FlowWord {
        let mut w = FlowWord {
            counted: Side::A.bit(),
            flags: flowflags::HALF_OPEN,
            ..FlowWord::default()
        };
        w.set_state(Side::A, state);
        w
    }

    #[test]
    fn fill_books_live_in_the_host_slot_and_gauges_in_the_flows_scope() {
        let mut c = DaemonCounters::new(vec![UserCounters::default(); 3]);
        c.record_insert(2, word(TcpState::CloseWait));
        c.record_insert(0, word(TcpState::Established));
        c.record_delete(2, word(TcpState::CloseWait));
        let conn = |c: &DaemonCounters, scope, state| {
            c.get(scope).conn[(idx::conn(Role::Client, state) - idx::CONN) as usize] as i64
        };
        assert_eq!((c.get(0).inserted, c.get(0).deleted), (2, 1));
        assert_eq!(c.get(0).half_open_released, 1);
        assert_eq!(c.get(2).inserted, 0, "books are not kept per scope");
        assert_eq!(conn(&c, 2, TcpState::CloseWait), 0);
        assert_eq!(conn(&c, 0, TcpState::Established), 1);
        c.handshake_timeout(2);
        c.reset_scope(2);
        assert_eq!(c.get(2), UserCounters::default());
        c.reset_scope(0);
        assert_eq!(c.get(0).inserted, 2, "the host's books are never reset");
    }
}
