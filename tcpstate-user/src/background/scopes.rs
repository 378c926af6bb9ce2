//! What the sweeper and the scrape know of each scope (the host's, and each watched container
//! namespace's): the labels its series carry and a socket to ask its kernel. The container
//! watcher writes it; the sweeper and the exporter read it. Kept here, below both, so neither
//! imports the other.

use std::sync::Arc;

use crate::sockets::{portrange::PortRange, sockdiag::Diag};

/// The labels a scope's series carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels {
    /// Kubernetes namespace, empty for standalone containers.
    pub namespace: String,
    /// Kubernetes pod name, empty for standalone containers.
    pub pod: String,
    /// Standalone container's name (or 12-hex short id), empty for pods.
    pub container: String,
    /// Full container id when known (the pod's sandbox for Kubernetes), for `flows`/`leaks`.
    pub container_id: String,
}

/// How much of the naming the series keep (`--container-labels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelLevel {
    /// namespace, pod and container.
    Full,
    /// Kubernetes pods folded into their namespace (pod=""); standalone containers keep their
    /// container label.
    Namespace,
}

impl LabelLevel {
    /// The label values a scope's series carry at this level.
    pub fn collapse(self, l: &Labels) -> (String, String, String) {
        match self {
            LabelLevel::Full => (l.namespace.clone(), l.pod.clone(), l.container.clone()),
            LabelLevel::Namespace => (l.namespace.clone(), String::new(), l.container.clone()),
        }
    }
}

/// One watched container namespace, as the sweeper and the scrape see it.
#[derive(Clone, Debug)]
pub struct WatchedScope {
    pub scope: u32,
    pub labels: Labels,
    /// A sock_diag socket opened inside the namespace: its listeners, for the per-port figures.
    pub diag: Option<Arc<Diag>>,
    /// Its ephemeral port range's sysctl files, opened inside the namespace.
    pub port_range: Option<Arc<PortRange>>,
}

/// The watched namespaces and the bookkeeping exported about them.
#[derive(Clone, Debug, Default)]
pub struct ScopeView {
    /// Whether container mode is on: per-endpoint series carry `namespace`, `pod`, `container`.
    pub enabled: bool,
    pub level: Option<LabelLevel>,
    pub scopes: Vec<WatchedScope>,
    /// Namespaces turned away because `--max-containers` were watched already.
    pub refused_total: u64,
    /// Container interfaces with the programs attached.
    pub interfaces: u64,
    /// Which version of the watched set this is: a new one for every change of `scopes` (see
    /// [`ScopeView::next_generation`]), so the exporter rebuilds what it derives from the labels
    /// (the scopes' groups, the `tcpstate_container_info` lines) only when they changed.
    pub generation: u64,
}

impl ScopeView {
    /// A generation no view has had yet (never 0, the empty default view's).
    pub fn next_generation() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops showing `scope` (its namespace is gone).
    pub fn remove(&mut self, scope: u32) {
        self.scopes.retain(|s| s.scope != scope);
        self.generation = Self::next_generation();
    }

    /// The label values of a watched scope's series.
    pub fn labels_of(&self, w: &WatchedScope) -> (String, String, String) {
        self.level.unwrap_or(LabelLevel::Full).collapse(&w.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_level_folds_pods_but_keeps_standalone_containers() {
        let pod = Labels {
            namespace: "shop".into(),
            pod: "web-0".into(),
            ..Labels::default()
        };
        let standalone = Labels {
            container: "leaky".into(),
            ..Labels::default()
        };
        assert_eq!(
            LabelLevel::Namespace.collapse(&pod),
            ("shop".into(), String::new(), String::new())
        );
        assert_eq!(
            LabelLevel::Namespace.collapse(&standalone),
            (String::new(), String::new(), "leaky".into())
        );
        assert_eq!(
            LabelLevel::Full.collapse(&pod),
            ("shop".into(), "web-0".into(), String::new())
        );
    }
}
