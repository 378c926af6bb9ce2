//! The container watcher: a thread that follows link events (with a periodic resync as backstop),
//! attaches the container programs to the host-side end of every container veth, gives each
//! namespace behind them a scope, seeds it from its own socket table, and retires it (purging its
//! flows) when its last veth goes.
//!
//! Order matters at both ends. Attaching: the scope map entry first, then the programs, so no
//! segment runs with an unknown scope; then seeding, so a connection that changes meanwhile is
//! the programs' (BPF_NOEXIST). Detaching: the programs first (dropping the links), then the map
//! entry.

mod lifecycle;
mod names;
mod reconcile;
mod seeding;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use tcpstate_common::{
    flow::monotonic_ns,
    scope::{self, ScopeInfo},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    naming::{Overrides, Runtimes},
    netns::{self, Candidate, Netns, NetnsId},
    slots::{Full, Slots},
};
use crate::{
    background::{
        books::Shared,
        scopes::{LabelLevel, Labels, ScopeView, WatchedScope},
        seed,
    },
    bpf::tables::Flows,
    bpf::{
        attach::{self, Attachment, Plan, Role},
        links::{self, Event, Link},
    },
    sockets::{
        portrange::PortRange,
        sockdiag::{self, Diag},
    },
};

/// The programs on a container's veth (the host's ingress carries what the container sends).
const PLAN: Plan = Plan {
    role: Role::Container,
    ingress: attach::IngressHook::Tc,
    xdp_mode: attach::XdpMode::Auto,
    link: tcpstate_common::packet::LinkLayer::Ethernet,
};

/// How long a namespace with a runtime's provisional mount name waits for a process to name it
/// before its series appear under the mount name: podman, CNI and Docker start the container's
/// first process within a second of making its namespace; one that never gets a process is not a
/// container that will be named later.
const PENDING_LIMIT: Duration = Duration::from_secs(10);

pub struct Settings {
    /// Interfaces watched in host or tap mode (`--iface`): never taken for a container's veth,
    /// even when their peer is in another namespace.
    pub exclude: BTreeSet<String>,
    pub resync: Duration,
    pub seed: bool,
    pub level: LabelLevel,
    pub runtimes: Runtimes,
    /// `--container-names`, replaced when a reload (SIGHUP) reads the file again.
    pub overrides: watch::Receiver<Overrides>,
    /// The sweeper's timeouts, against which seeded timer states are back-dated.
    pub timeouts: crate::background::expiry::Timeouts,
}

/// The maps the watcher writes.
pub struct Maps {
    /// ifindex -> scope, read by the container programs.
    pub ifaces: crate::bpf::tables::IfaceScopes,
    /// What each scope is, for restarts and the inspection commands.
    pub info: Array<MapData, ScopeInfo>,
    /// Its own handle on the flow table (seeding, purging).
    pub flows: Flows,
}

struct Watched {
    netns: Netns,
    labels: Labels,
    mount_name: Option<String>,
    /// Labelled from a process's cgroup (not only from the mount name or inode).
    named: bool,
    /// Since when the namespace has waited, with a runtime's provisional mount name, for a
    /// process to name it ([`scope::state::PENDING`]); `None` once it is named (or final).
    pending_since: Option<Instant>,
    diag: Option<Arc<Diag>>,
    /// The namespace's port range sysctls, opened inside it.
    port_range: Option<Arc<PortRange>>,
    ifaces: BTreeMap<u32, Iface>,
}

struct Iface {
    name: String,
    /// Dropping it detaches the programs.
    _attachment: Attachment,
}

pub struct Watcher {
    ebpf: Arc<Mutex<Ebpf>>,
    maps: Maps,
    shared: Arc<Mutex<Shared>>,
    settings: Settings,
    own: NetnsId,
    slots: Slots,
    watched: BTreeMap<u32, Watched>,
    /// The id this namespace gives each other namespace (stable once assigned).
    nsids: HashMap<NetnsId, i32>,
    candidates: Vec<Candidate>,
    /// Namespaces refused for want of a scope (counted once each) and nsids found behind no
    /// namespace (warned once each).
    refused: BTreeSet<NetnsId>,
    refused_total: u64,
    /// Peer namespace ids no namespace was found for, and whether that was warned about. A veth
    /// whose namespace vanished already (a container that died at once) is a debug line; one still
    /// unresolved at a full resync is warned about once.
    unresolved: BTreeMap<i32, bool>,
    /// Scopes restored from the pins that the first reconcile has not found again.
    restored: BTreeSet<u32>,
    /// Whether the netkit warning was given.
    warned_netkit: bool,
    /// A missing capability was named at start: its per-namespace failures are not repeated.
    degraded: bool,
}

impl Watcher {
    /// A watcher over the pinned maps of this or an earlier run: the scopes a predecessor gave
    /// keep their namespaces; stale interface entries are cleared (their links died with it).
    pub fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        mut maps: Maps,
        shared: Arc<Mutex<Shared>>,
        settings: Settings,
    ) -> anyhow::Result<Watcher> {
        let own = NetnsId::own()?;
        // Verified now, not when the first container appears: loading takes the verifier a
        // while, and a container's first connection must not wait for it.
        {
            let mut ebpf = ebpf.lock().unwrap_or_else(|e| e.into_inner());
            for (name, _, _) in attach::programs(&PLAN) {
                attach::load(&mut ebpf, name)?;
            }
        }
        let infos: Vec<ScopeInfo> = (0..maps.info.len())
            .map(|i| maps.info.get(&i, 0).unwrap_or_default())
            .collect();
        let slots = Slots::restore(&infos);
        let restored = slots.active().map(|(s, _)| s).collect();
        for ifindex in maps.ifaces.ifindexes() {
            maps.ifaces.remove(ifindex);
        }
        Ok(Watcher {
            ebpf,
            maps,
            shared,
            settings,
            own,
            slots,
            watched: BTreeMap::new(),
            nsids: HashMap::new(),
            candidates: Vec::new(),
            refused: BTreeSet::new(),
            refused_total: 0,
            unresolved: BTreeMap::new(),
            restored,
            warned_netkit: false,
            degraded: {
                let limits = crate::bpf::loader::container_mode_limits();
                for l in &limits {
                    warn!("container mode: {l}");
                }
                !limits.is_empty()
            },
        })
    }

    /// Runs until `stop`: one reconcile at once, then one per batch of link events and one per
    /// resync interval.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || {
                let events =
                    links::Batches::subscribe("containers are found by the periodic resync only");
                self.reconcile(true);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let changed = events.next().iter().any(|e| self.concerns(e));
                    // Namespaces waiting for their first process are looked at after every
                    // wait (a quarter second at most): the process names the container, not the
                    // next resync.
                    if !changed && self.watched.values().any(|w| w.pending_since.is_some()) {
                        self.name_pending();
                    }
                    if self.settings.overrides.has_changed().unwrap_or(false) {
                        self.relabel();
                    }
                    let resync = last.elapsed() >= self.settings.resync;
                    if changed || resync {
                        self.reconcile(resync);
                        if resync {
                            last = Instant::now();
                        }
                    }
                }
                // Detach everything before the maps are dropped with the daemon.
                for scope in self.watched.keys().copied().collect::<Vec<_>>() {
                    self.detach_all(scope);
                }
            })
            .expect("spawn the container watcher thread")
    }

    /// Whether an event can change what is watched: a veth appearing, changing or going, or any
    /// deletion (a veth's peer leaving this namespace shows as its deletion here).
    fn concerns(&self, e: &Event) -> bool {
        match e {
            Event::Changed(l) => {
                let container = l.is_container_veth() && !self.settings.exclude.contains(&l.name);
                container != self.is_attached(l.ifindex)
            }
            Event::Removed(_) | Event::Overrun => true,
        }
    }

    fn is_attached(&self, ifindex: u32) -> bool {
        self.watched
            .values()
            .any(|w| w.ifaces.contains_key(&ifindex))
    }

    fn publish(&self) {
        // A namespace waiting for its first process is counted but not shown: its series appear
        // once, under the name its runtime gives it.
        let scopes: Vec<WatchedScope> = self
            .watched
            .iter()
            .filter(|(_, w)| w.pending_since.is_none())
            .map(|(&scope, w)| WatchedScope {
                scope,
                labels: w.labels.clone(),
                diag: w.diag.clone(),
                port_range: w.port_range.clone(),
            })
            .collect();
        let interfaces = self.watched.values().map(|w| w.ifaces.len() as u64).sum();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let level = Some(self.settings.level);
        // The same scopes under the same labels keep their generation: what the exporter built
        // from them still holds.
        let same = |a: &[WatchedScope], b: &[WatchedScope]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.scope == y.scope && x.labels == y.labels)
        };
        let generation = if shared.scopes.level == level && same(&shared.scopes.scopes, &scopes) {
            shared.scopes.generation
        } else {
            ScopeView::next_generation()
        };
        shared.scopes = ScopeView {
            enabled: true,
            level,
            scopes,
            refused_total: self.refused_total,
            interfaces,
            generation,
        };
    }
}
