//! What the latest walk of the flow table found and cost: the scrape's per-port figures and the
//! walk's own figures. The sweeper writes it, the books hold it, the exporter reads it.

use std::{collections::BTreeMap, time::Duration};

use crate::background::{
    destinations::ClientPorts,
    ports::{PortFigures, Survey},
};

/// The latest walk's report.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub duration: Duration,
    /// CPU time the sweep took on its thread (the walk, the socket dumps, the deletes), which
    /// [`crate::background::sweeper::pause_after`] bounds.
    pub cpu: Duration,
    pub visited: u64,
    /// Of them, flows in the table of flows that are not IPv4 at both ends (IPv6).
    pub visited_v6: u64,
    pub sweeps: u64,
    /// The last settling round ([`crate::background::settle::Round::Quiet`]): when (CLOCK_MONOTONIC, 0: none yet)
    /// and the CPU time its dumps and verdicts took, which spaces the next one
    /// ([`crate::background::settle::next_round_at`]).
    pub round_ns: u64,
    pub round_cpu: Duration,
    /// Per-port figures of each scope (the host's is scope 0).
    pub ports: BTreeMap<u32, Survey>,
    /// Client endpoints per destination, and the port range, of each scope.
    pub clients: BTreeMap<u32, ClientPorts>,
    /// [`SweepReport::scopes_with_figures`], found at its first read. A report is complete
    /// when it is published and not changed after: every scrape until the next walk reads the
    /// same answer, which with hundreds of scopes is a thousand map entries not looked at again.
    pub(crate) with_figures: std::sync::OnceLock<Vec<u32>>,
}

impl SweepReport {
    /// The scopes with a per-port figure or client ports in use that is not zero: the ones
    /// whose series the report gives something to show.
    pub fn scopes_with_figures(&self) -> &[u32] {
        self.with_figures.get_or_init(|| {
            let ports = self
                .ports
                .iter()
                .filter(|(_, s)| s.ports.values().any(|f| *f != PortFigures::default()))
                .map(|(&sc, _)| sc);
            let clients = self
                .clients
                .iter()
                .filter(|(_, c)| c.in_use.values().any(|&n| n != 0))
                .map(|(&sc, _)| sc);
            ports.chain(clients).collect()
        })
    }
}
