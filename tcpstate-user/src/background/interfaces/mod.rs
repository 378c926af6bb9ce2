//! Which interfaces of the daemon's namespace get which programs, kept in line with the links
//! present: every interface by default (`lo` included), following link events as interfaces come,
//! go, or join a bridge; or only those named with `--iface`.
//!
//! The rule ([`rule::decide`]) says which interface gets which programs; this module keeps the
//! attachments in line with it as links come and go.

mod rule;

pub use rule::{decide, Decision, Selection, Skip};

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use tcpstate_common::packet::LinkLayer;
use tracing::{debug, info, warn};

use crate::bpf::{
    attach::{self, Attached, Attachment},
    links::{self, Link},
};

/// How often the links are listed again besides following events (a backstop for missed ones).
const RESYNC: Duration = Duration::from_secs(30);

/// The interfaces watched in host or tap mode, and their programs.
pub struct Interfaces {
    ebpf: Arc<Mutex<Ebpf>>,
    selection: Selection,
    watched: BTreeMap<u32, (String, Attachment)>,
    /// What is attached, for the scrape (`tcpstate_attachment_info`).
    published: Arc<Mutex<Vec<Attached>>>,
    /// Interfaces whose skip was logged, with the reason (logged again only when it changes).
    told: BTreeMap<u32, Skip>,
    /// Whether the hint about container veths without container mode was given.
    hinted_containers: bool,
}

impl Interfaces {
    pub fn new(ebpf: Arc<Mutex<Ebpf>>, selection: Selection) -> Interfaces {
        Interfaces {
            ebpf,
            selection,
            watched: BTreeMap::new(),
            published: Arc::default(),
            told: BTreeMap::new(),
            hinted_containers: false,
        }
    }

    /// What is attached now, kept current by the follower.
    pub fn published(&self) -> Arc<Mutex<Vec<Attached>>> {
        self.published.clone()
    }

    /// Attaches what the selection wants now. Interfaces named with `--iface` must all attach;
    /// with every interface watched, one that fails is logged and retried at the next change.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.reconcile(true)
    }

    /// Follows link events (and a periodic resync) until `stop`, then detaches everything.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("interfaces".into())
            .spawn(move || {
                let events = links::Batches::subscribe(&format!(
                    "new interfaces are found every {}s only",
                    RESYNC.as_secs()
                ));
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let changed = !events.next().is_empty();
                    if changed || last.elapsed() >= RESYNC {
                        if let Err(e) = self.reconcile(false) {
                            warn!(error = %e, "cannot bring the attachments in line with the interfaces");
                        }
                        last = Instant::now();
                    }
                }
                self.watched.clear();
                self.publish();
            })
            .expect("spawn the interface follower thread")
    }

    /// Brings the attachments in line with the links present. `strict`: a named interface that
    /// cannot be attached is an error (at start); otherwise it is logged.
    fn reconcile(&mut self, strict: bool) -> anyhow::Result<()> {
        let all: BTreeMap<u32, Link> = links::list()?.into_iter().map(|l| (l.ifindex, l)).collect();
        let mut wanted = BTreeMap::new();
        for link in all.values() {
            match decide(link, &all, &self.selection) {
                Decision::Watch(plan) => {
                    wanted.insert(link.ifindex, (link, plan));
                    self.told.remove(&link.ifindex);
                }
                Decision::Skip(Skip::NotListed) => {}
                Decision::Skip(why) => self.tell(link, why),
            }
        }
        if strict {
            for name in &self.selection.only {
                let found = wanted.values().any(|(l, _)| &l.name == name);
                if !found && !self.selection.excludes(name) {
                    if let Some(l) = all.values().find(|l| &l.name == name) {
                        if let Decision::Skip(why) = decide(l, &all, &self.selection) {
                            anyhow::bail!("interface {name:?} cannot be watched: {}", why.why());
                        }
                    }
                    return Err(crate::error::Preflight::NoSuchInterface(name.clone()).into());
                }
            }
        }
        // Gone, or to be watched another way (joined a bridge, changed link type).
        let stale: Vec<u32> = self
            .watched
            .iter()
            .filter(|(i, (name, a))| {
                wanted
                    .get(i)
                    .is_none_or(|(l, plan)| *plan != a.plan || &l.name != name)
            })
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            if let Some((name, _)) = self.watched.remove(&i) {
                info!(iface = %name, "detached");
            }
        }
        let object = self.ebpf.clone();
        let mut ebpf = object.lock().unwrap_or_else(|e| e.into_inner());
        for (ifindex, (link, plan)) in wanted {
            if self.watched.contains_key(&ifindex) {
                continue;
            }
            if !strict && attach::watched_by_tcpstate(&link.name) {
                warn!(iface = %link.name, "another tcpstate watches this interface already: left to it");
                continue;
            }
            match attach::attach(&mut ebpf, &link.name, plan) {
                // Attached by name: the index confirms it is still the interface listed.
                Ok(a) if crate::bpf::netif::index(&link.name) == Some(ifindex) => {
                    if plan.link == LinkLayer::Ip {
                        info!(iface = %link.name, "no link-layer header: parsed from the IP header");
                    }
                    if link.is_container_veth() && !self.selection.containers {
                        self.hint_containers(&link.name);
                    }
                    self.watched.insert(ifindex, (link.name.clone(), a));
                }
                Ok(_) => debug!(iface = %link.name, "renamed or replaced while being attached"),
                Err(e) if strict => {
                    return Err(e.context(format!("cannot attach to {}", link.name)))
                }
                Err(e) => {
                    if crate::bpf::netif::index(&link.name) == Some(ifindex) {
                        warn!(iface = %link.name, error = %e, "cannot attach; retried at the next change");
                    } else {
                        debug!(iface = %link.name, error = %e, "went away while being attached");
                    }
                }
            }
        }
        drop(ebpf);
        self.told.retain(|i, _| all.contains_key(i));
        self.publish();
        Ok(())
    }

    fn tell(&mut self, link: &Link, why: Skip) {
        if self.told.get(&link.ifindex) == Some(&why) {
            return;
        }
        match &why {
            Skip::LinkType(_) => warn!(iface = %link.name, "not watched: {}", why.why()),
            _ => info!(iface = %link.name, "not watched: {}", why.why()),
        }
        self.told.insert(link.ifindex, why);
    }

    fn hint_containers(&mut self, iface: &str) {
        if !self.hinted_containers {
            self.hinted_containers = true;
            info!(iface, "a container's veth: its traffic to and from this host's sockets is counted here; the container's own endpoints are not (run with --containers to count them in the container's scope)");
        }
    }

    fn publish(&self) {
        let list = self
            .watched
            .values()
            .flat_map(|(_, a)| a.attached.iter().cloned())
            .collect();
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }
}
