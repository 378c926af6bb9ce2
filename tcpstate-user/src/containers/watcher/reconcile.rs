//! Bringing the attachments in line with the links present: which veths are containers', and
//! the namespace behind each (namespace ids are reused, so each is confirmed).

use super::*;

impl Watcher {
    /// Brings the attachments in line with the links present. `full`: also rescan namespaces
    /// (names for namespaces that had no process when first seen).
    pub(super) fn reconcile(&mut self, full: bool) {
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
    pub(super) fn rescan(&mut self) {
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
    pub(super) fn resolve(&mut self, nsid: i32, rescanned: &mut bool) -> Option<Candidate> {
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

    pub(super) fn candidate_for(&self, nsid: i32) -> Option<Candidate> {
        let id = self
            .nsids
            .iter()
            .find(|(_, &n)| n == nsid)
            .map(|(id, _)| *id)?;
        self.candidates.iter().find(|c| c.id == id).cloned()
    }
}
