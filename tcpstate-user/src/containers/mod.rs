//! Container mode (`--containers`): finding every container network namespace on the host,
//! attaching the container programs to the host-side end of its veths, giving it a scope and
//! naming it from the container runtime's state.
//!
//! The pipeline: link events ([`crate::bpf::links`]) and a periodic resync -> the namespace behind each veth
//! ([`netns`]) -> a scope for it ([`slots`]) -> labels ([`naming`]) -> attached, seeded and
//! published to the sweeper and the scrape ([`watcher`]).

pub mod naming;
pub mod netns;
pub mod slots;
pub mod watcher;

use std::sync::Arc;

use crate::sockets::sockdiag::Diag;

/// One watched container namespace, as the sweeper and the scrape see it.
#[derive(Clone, Debug)]
pub struct WatchedScope {
    pub scope: u32,
    pub labels: naming::Labels,
    /// A sock_diag socket opened inside the namespace: its listeners, for the per-port figures.
    pub diag: Option<Arc<Diag>>,
}

/// The watched namespaces and the bookkeeping exported about them.
#[derive(Clone, Debug, Default)]
pub struct ScopeView {
    /// Whether container mode is on: per-endpoint series carry `namespace`, `pod`, `container`.
    pub enabled: bool,
    pub level: Option<naming::LabelLevel>,
    pub scopes: Vec<WatchedScope>,
    /// Namespaces turned away because `--max-containers` were watched already.
    pub refused_total: u64,
    /// Container interfaces with the programs attached.
    pub interfaces: u64,
}

impl ScopeView {
    /// The label values of a scope's series: empty for the host, and for a scope that is not
    /// (or no longer) watched, `None` (its series are not exported).
    pub fn labels(&self, scope: u32) -> Option<(String, String, String)> {
        if scope == tcpstate_common::scope::HOST {
            return Some(Default::default());
        }
        let level = self.level.unwrap_or(naming::LabelLevel::Full);
        self.scopes
            .iter()
            .find(|s| s.scope == scope)
            .map(|s| level.collapse(&s.labels))
    }
}
