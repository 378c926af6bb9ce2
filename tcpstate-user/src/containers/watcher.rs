//! The container watcher: a thread that follows link events (with a periodic resync as backstop),
//! attaches the container programs to the host-side end of every container veth, gives each
//! namespace behind them a scope, seeds it from its own socket table, and retires it (purging its
//! flows) when its last veth goes.
//!
//! Order matters at both ends. Attaching: the scope map entry first, then the programs, so no
//! segment runs with an unknown scope; then seeding, so a connection that changes meanwhile is
//! the programs' (BPF_NOEXIST). Detaching: the programs first (dropping the links), then the map
//! entry.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    Ebpf,
};
use tcpstate_common::{
    flow::monotonic_ns,
    scope::{self, ScopeInfo},
    FlowKey, FlowRecord,
};
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
    sockets::sockdiag::{self, Diag},
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

/// How long one wait for link events lasts before the loop checks for shutdown and the resync.
const EVENT_WAIT: Duration = Duration::from_millis(250);
/// After a first event, how long the watcher lets more arrive before reconciling once for all.
const BURST: Duration = Duration::from_millis(5);

pub struct Settings {
    /// Interfaces watched in host or tap mode (`--iface`): never taken for a container's veth,
    /// even when their peer is in another namespace.
    pub exclude: BTreeSet<String>,
    pub resync: Duration,
    pub seed: bool,
    pub level: LabelLevel,
    pub runtimes: Runtimes,
    pub overrides: Overrides,
    /// The sweeper's timeouts, against which seeded timer states are back-dated.
    pub timeouts: crate::background::expiry::Timeouts,
}

/// The maps the watcher writes.
pub struct Maps {
    /// ifindex -> scope, read by the container programs.
    pub ifaces: BpfHashMap<MapData, u32, u32>,
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
        let stale: Vec<u32> = maps.ifaces.keys().filter_map(Result::ok).collect();
        for ifindex in stale {
            let _ = maps.ifaces.remove(&ifindex);
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
                let events = match links::Events::subscribe(EVENT_WAIT) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        warn!(error = %e, "no link events; containers are found by the periodic resync only");
                        None
                    }
                };
                self.reconcile(true);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let changed = match &events {
                        Some(ev) => match ev.next() {
                            Ok(mut evs) if !evs.is_empty() => {
                                // Let a burst finish arriving, then take it as one batch.
                                std::thread::sleep(BURST);
                                evs.extend(ev.drain().unwrap_or_default());
                                evs.iter().any(|e| self.concerns(e))
                            }
                            Ok(_) => false,
                            Err(e) => {
                                debug!(error = %e, "link events");
                                std::thread::sleep(EVENT_WAIT);
                                false
                            }
                        },
                        None => {
                            std::thread::sleep(EVENT_WAIT);
                            false
                        }
                    };
                    // Namespaces waiting for their first process are looked at after every
                    // wait (a quarter second at most): the process names the container, not the
                    // next resync.
                    if !changed && self.watched.values().any(|w| w.pending_since.is_some()) {
                        self.name_pending();
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

    /// Brings the attachments in line with the links present. `full`: also rescan namespaces
    /// (names for namespaces that had no process when first seen).
    fn reconcile(&mut self, full: bool) {
        let links = match links::list() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot list interfaces");
                return;
            }
        };
        if !self.warned_netkit && links.iter().any(|l| l.kind == "netkit") {
            self.warned_netkit = true;
            warn!("netkit devices found: pods behind netkit (Cilium's datapath) are not veths and are not watched; their traffic is seen only where it crosses the host's own interfaces");
        }
        let wanted: BTreeMap<u32, &Link> = links
            .iter()
            .filter(|l| l.is_container_veth() && !self.settings.exclude.contains(&l.name))
            .map(|l| (l.ifindex, l))
            .collect();
        // Interfaces gone (or renamed: attachments are by name).
        let gone: Vec<(u32, u32)> = self
            .watched
            .iter()
            .flat_map(|(&s, w)| w.ifaces.iter().map(move |(&i, f)| (s, i, &f.name)))
            .filter(|(_, i, name)| wanted.get(i).is_none_or(|l| &l.name != *name))
            .map(|(s, i, _)| (s, i))
            .collect();
        for (scope, ifindex) in gone {
            self.detach(scope, ifindex);
        }
        let mut rescanned = false;
        if full {
            self.rescan();
            rescanned = true;
            // A namespace that no process and no bind mount holds any more is kept alive only by
            // the watcher's own descriptors (and with it the veth): the runtime is done with it.
            let live: BTreeSet<NetnsId> = self.candidates.iter().map(|c| c.id).collect();
            let abandoned: Vec<u32> = self
                .watched
                .iter()
                .filter(|(_, w)| !live.contains(&w.netns.id))
                .map(|(&s, _)| s)
                .collect();
            for scope in abandoned {
                self.retire(scope);
            }
        }
        let mut fresh = Vec::new();
        for link in wanted.values() {
            if self.is_attached(link.ifindex) {
                continue;
            }
            let Some(nsid) = link.peer_netnsid else {
                continue;
            };
            let Some(cand) = self.resolve(nsid, &mut rescanned) else {
                let seen_before = self.unresolved.contains_key(&nsid);
                let warned = self.unresolved.entry(nsid).or_insert(false);
                if full && seen_before && !*warned {
                    *warned = true;
                    warn!(iface = %link.name, nsid, "the namespace behind this veth was not found (no bind mount and no process in it); retried at every resync");
                } else {
                    debug!(iface = %link.name, nsid, "the namespace behind this veth was not found yet");
                }
                continue;
            };
            let scope = match self.slots.find(cand.id) {
                Some(s) if self.watched.contains_key(&s) => s,
                _ => match self.watch(&cand) {
                    Some(s) => {
                        fresh.push(s);
                        s
                    }
                    None => continue,
                },
            };
            self.attach(scope, link);
        }
        for scope in fresh {
            self.seed_scope(scope);
        }
        if full {
            let live: BTreeSet<i32> = wanted.values().filter_map(|l| l.peer_netnsid).collect();
            self.unresolved.retain(|nsid, _| live.contains(nsid));
        }
        if full {
            self.rename_unnamed();
        }
        // Namespaces whose last veth went: their flows go with them.
        let empty: Vec<u32> = self
            .watched
            .iter()
            .filter(|(_, w)| w.ifaces.is_empty())
            .map(|(&s, _)| s)
            .collect();
        for scope in empty {
            self.retire(scope);
        }
        // Scopes an earlier run watched whose namespaces are gone.
        for scope in std::mem::take(&mut self.restored) {
            if !self.watched.contains_key(&scope) {
                self.retire(scope);
            }
        }
        self.publish();
    }

    /// Reads the host's namespaces again and learns the ids of those joined to this one.
    fn rescan(&mut self) {
        self.candidates = netns::candidates(self.own);
        for c in &self.candidates {
            if self.nsids.contains_key(&c.id) {
                continue;
            }
            let Ok(f) = std::fs::File::open(&c.path) else {
                continue;
            };
            if let Ok(Some(id)) = netns::nsid_of(&f) {
                self.nsids.insert(c.id, id);
            }
        }
        let live: BTreeSet<NetnsId> = self.candidates.iter().map(|c| c.id).collect();
        self.nsids.retain(|id, _| live.contains(id));
    }

    /// The namespace a veth's peer lives in, checked: namespace ids are reused once a namespace
    /// is gone, so the cached id is confirmed against the namespace itself, and a miss rescans
    /// the host's namespaces once per reconcile.
    fn resolve(&mut self, nsid: i32, rescanned: &mut bool) -> Option<Candidate> {
        loop {
            if let Some(c) = self.candidate_for(nsid) {
                let confirmed = std::fs::File::open(&c.path).ok().is_some_and(|f| {
                    NetnsId::of(&c.path).ok() == Some(c.id)
                        && netns::nsid_of(&f).ok().flatten() == Some(nsid)
                });
                if confirmed {
                    return Some(c);
                }
                self.nsids.remove(&c.id);
            }
            if *rescanned {
                return None;
            }
            self.rescan();
            *rescanned = true;
        }
    }

    fn candidate_for(&self, nsid: i32) -> Option<Candidate> {
        let id = self
            .nsids
            .iter()
            .find(|(_, &n)| n == nsid)
            .map(|(id, _)| *id)?;
        self.candidates.iter().find(|c| c.id == id).cloned()
    }

    /// Gives a namespace a scope, opens it, names it and records it; `None` when it cannot be
    /// watched (the limit, or it vanished).
    fn watch(&mut self, cand: &Candidate) -> Option<u32> {
        let netns = match Netns::open(&cand.path, cand.id) {
            Ok(n) => n,
            Err(e) => {
                debug!(path = %cand.path.display(), error = %e, "namespace vanished before it could be watched");
                return None;
            }
        };
        let (scope, reused) = match self.slots.allocate(cand.id, monotonic_ns()) {
            Ok(s) => s,
            Err(Full) => {
                if self.refused.insert(cand.id) {
                    self.refused_total += 1;
                    warn!(
                        netns = cand.id.ino,
                        limit = self.slots_capacity(),
                        "a container namespace is not watched: --max-containers are watched already"
                    );
                }
                return None;
            }
        };
        if reused {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = shared.books.zero_scope(scope) {
                warn!(error = %e, scope, "could not zero a reused scope's counters");
            }
            shared.book(|c| c.reset_scope(scope));
        }
        let (labels, named) = self.label(cand);
        // A runtime's namespace seen before its first process: counted from now, shown once named.
        let pending = !named
            && cand
                .mount_name
                .as_deref()
                .is_some_and(super::naming::provisional_mount)
            && !self
                .settings
                .overrides
                .matches(&labels, cand.mount_name.as_deref(), cand.id.ino);
        let diag = match netns.run(Diag::open) {
            Ok(Ok(d)) => Some(Arc::new(d)),
            Ok(Err(e)) | Err(e) => {
                if self.degraded {
                    debug!(error = %e, scope, "no sock_diag socket in the namespace");
                } else {
                    warn!(error = %e, scope, "no sock_diag socket in the namespace: no listener figures for it");
                }
                None
            }
        };
        let state = if pending {
            scope::state::PENDING
        } else {
            scope::state::ACTIVE
        };
        self.write_info(scope, cand.id, state, &labels);
        info!(
            scope,
            pending,
            netns = cand.id.ino,
            namespace = %labels.namespace,
            pod = %labels.pod,
            container = %labels.container,
            "watching a container namespace"
        );
        self.watched.insert(
            scope,
            Watched {
                netns,
                labels,
                mount_name: cand.mount_name.clone(),
                named,
                pending_since: pending.then(Instant::now),
                diag,
                ifaces: BTreeMap::new(),
            },
        );
        Some(scope)
    }

    fn slots_capacity(&self) -> u32 {
        self.maps.info.len().saturating_sub(1)
    }

    fn label(&self, cand: &Candidate) -> (Labels, bool) {
        let labels =
            self.settings
                .runtimes
                .label(&cand.pids, cand.mount_name.as_deref(), cand.id.ino);
        let named = !labels.container_id.is_empty();
        let labels = self
            .settings
            .overrides
            .apply(labels, cand.mount_name.as_deref(), cand.id.ino);
        (labels, named)
    }

    /// Names the namespaces waiting for their first process ([`PENDING_LIMIT`]): each one whose
    /// process is there now gets the runtime's name and its series appear; one that waited too
    /// long appears under its mount name.
    fn name_pending(&mut self) {
        self.candidates = netns::candidates(self.own);
        let pending: Vec<u32> = self
            .watched
            .iter()
            .filter(|(_, w)| w.pending_since.is_some())
            .map(|(&s, _)| s)
            .collect();
        let mut changed = false;
        for scope in pending {
            let w = &self.watched[&scope];
            let (id, waited) = (w.netns.id, w.pending_since.map(|t| t.elapsed()));
            let cand = self.candidates.iter().find(|c| c.id == id).cloned();
            let (labels, named) = match &cand {
                Some(c) => self.label(c),
                None => (w.labels.clone(), false),
            };
            if !named && waited.is_some_and(|t| t < PENDING_LIMIT) {
                continue;
            }
            self.write_info(scope, id, scope::state::ACTIVE, &labels);
            let w = self.watched.get_mut(&scope).expect("listed above");
            if named {
                info!(scope, container = %labels.container, pod = %labels.pod, waited_ms = waited.unwrap_or_default().as_millis() as u64, "container namespace named by its first process");
            } else {
                info!(scope, container = %labels.container, "no process appeared in a container runtime's namespace within {}s: shown under its mount name", PENDING_LIMIT.as_secs());
            }
            w.labels = labels;
            w.named = named;
            w.pending_since = None;
            changed = true;
        }
        if changed {
            self.publish();
        }
    }

    /// Namespaces first seen before any process ran in them are labelled by their mount name;
    /// once a process is there, the runtime's name replaces it.
    fn rename_unnamed(&mut self) {
        let unnamed: Vec<u32> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.named && w.pending_since.is_none())
            .map(|(&s, _)| s)
            .collect();
        for scope in unnamed {
            let id = self.watched[&scope].netns.id;
            let Some(cand) = self.candidates.iter().find(|c| c.id == id).cloned() else {
                continue;
            };
            let (labels, named) = self.label(&cand);
            if !named {
                continue;
            }
            self.write_info(scope, id, scope::state::ACTIVE, &labels);
            let w = self.watched.get_mut(&scope).expect("listed above");
            info!(scope, container = %labels.container, pod = %labels.pod, "container namespace named");
            w.labels = labels;
            w.named = true;
            w.mount_name = cand.mount_name.clone();
        }
    }

    fn write_info(&mut self, scope: u32, id: NetnsId, state: u32, l: &Labels) {
        let mut info = ScopeInfo {
            netns_dev: id.dev,
            netns_ino: id.ino,
            state,
            since_ns: monotonic_ns(),
            ..ScopeInfo::default()
        };
        scope::put_str(&mut info.namespace, &l.namespace);
        scope::put_str(&mut info.pod, &l.pod);
        scope::put_str(&mut info.container, &l.container);
        scope::put_str(&mut info.container_id, &l.container_id);
        if let Err(e) = self.maps.info.set(scope, info, 0) {
            warn!(error = %e, scope, "could not record a scope");
        }
    }

    /// The scope map entry, then both programs. A veth deleted or renamed meanwhile leaves no
    /// attachment and no entry behind; the next event or resync sees it gone.
    fn attach(&mut self, scope: u32, link: &Link) {
        if let Err(e) = self.maps.ifaces.insert(link.ifindex, scope, 0) {
            warn!(error = %e, iface = %link.name, "cannot give the interface its scope (is the scope map full?)");
            return;
        }
        let started = Instant::now();
        let result = {
            let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
            attach::attach(&mut ebpf, &link.name, PLAN)
        };
        // By name: aya resolves it to an index; checked against the event's.
        let same = crate::bpf::netif::index(&link.name) == Some(link.ifindex);
        match result {
            Ok(attachment) if same => {
                debug!(iface = %link.name, scope, took_us = started.elapsed().as_micros() as u64, "attached to a container veth");
                if let Some(w) = self.watched.get_mut(&scope) {
                    w.ifaces.insert(
                        link.ifindex,
                        Iface {
                            name: link.name.clone(),
                            _attachment: attachment,
                        },
                    );
                }
            }
            outcome => {
                let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
                let _ = self.maps.ifaces.remove(&link.ifindex);
                debug!(iface = %link.name, error, "a container veth went away while being attached");
            }
        }
    }

    fn detach(&mut self, scope: u32, ifindex: u32) {
        if let Some(w) = self.watched.get_mut(&scope) {
            if let Some(f) = w.ifaces.remove(&ifindex) {
                debug!(iface = %f.name, scope, "detached from a container veth");
            }
        }
        let _ = self.maps.ifaces.remove(&ifindex);
    }

    fn detach_all(&mut self, scope: u32) {
        let ifaces: Vec<u32> = self
            .watched
            .get(&scope)
            .map(|w| w.ifaces.keys().copied().collect())
            .unwrap_or_default();
        for i in ifaces {
            self.detach(scope, i);
        }
    }

    /// The namespace is gone: its interfaces are detached, its flows deleted (booked in its scope,
    /// whose gauges return to zero), and its slot held before reuse.
    fn retire(&mut self, scope: u32) {
        self.detach_all(scope);
        let labels = self
            .watched
            .remove(&scope)
            .map(|w| w.labels)
            .unwrap_or_default();
        self.slots.retire(scope, monotonic_ns());
        self.write_info(
            scope,
            NetnsId { dev: 0, ino: 0 },
            scope::state::RETIRED,
            &Labels::default(),
        );
        let records = self.records_of(scope);
        let mut deleted = Vec::new();
        for (key, _) in &records {
            if let Some(rec) = self.maps.flows.remove(key) {
                deleted.push(rec.word());
            }
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.book(|c| {
            for w in &deleted {
                c.record_delete(scope, *w);
            }
        });
        shared.scopes.scopes.retain(|s| s.scope != scope);
        info!(scope, container = %labels.container, pod = %labels.pod, flows = deleted.len(), "container namespace gone");
    }

    fn records_of(&self, scope: u32) -> Vec<(FlowKey, FlowRecord)> {
        let mut out = Vec::new();
        if let Err(e) = self.maps.flows.for_each(|k, r| {
            if k.scope == scope {
                out.push((k, r))
            }
        }) {
            warn!(error = %e, scope, "cannot read the flow table");
        }
        out
    }

    /// Seeds a newly watched namespace from its own socket table (and, for a scope an earlier run
    /// watched, drops what changed while no daemon ran).
    fn seed_scope(&mut self, scope: u32) {
        if !self.settings.seed {
            return;
        }
        let Some(w) = self.watched.get(&scope) else {
            return;
        };
        let sockets = match w.netns.run(sockdiag::dump_tcp) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) | Err(e) => {
                if self.degraded {
                    debug!(error = %e, scope, "cannot read a container's socket table");
                } else {
                    warn!(error = %e, scope, "cannot read a container's socket table; its counts fill in as segments arrive");
                }
                return;
            }
        };
        // Only a scope an earlier run watched can have records already; a new one's walk of the
        // whole table would find nothing.
        let existing = if self.restored.contains(&scope) {
            self.records_of(scope)
        } else {
            Vec::new()
        };
        let synced = seed::sync(
            &self.maps.flows,
            scope,
            &sockets,
            &seed::Scope::container(),
            &existing,
            seed::Timing {
                now_ns: monotonic_ns(),
                timeouts: Some(self.settings.timeouts),
            },
        );
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.book(|c| {
            for w in &synced.deleted {
                c.record_delete(scope, *w);
            }
            for w in &synced.inserted {
                c.record_insert(scope, *w);
            }
        });
        info!(
            scope,
            kept = synced.kept,
            dropped_stale = synced.deleted.len(),
            seeded = synced.inserted.len(),
            sockets = sockets.len(),
            "container namespace in line with its socket table"
        );
    }

    fn publish(&self) {
        // A namespace waiting for its first process is counted but not shown: its series appear
        // once, under the name its runtime gives it.
        let scopes = self
            .watched
            .iter()
            .filter(|(_, w)| w.pending_since.is_none())
            .map(|(&scope, w)| WatchedScope {
                scope,
                labels: w.labels.clone(),
                diag: w.diag.clone(),
            })
            .collect();
        let interfaces = self.watched.values().map(|w| w.ifaces.len() as u64).sum();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.scopes = ScopeView {
            enabled: true,
            level: Some(self.settings.level),
            scopes,
            refused_total: self.refused_total,
            interfaces,
        };
    }
}
