//! A watched namespace's life: a scope and its record when first seen, the programs on each of
//! its veths (the scope map entry first, so no segment runs with an unknown scope), and at the
//! end its interfaces detached, its flows purged and its slot held before reuse.

use super::*;

impl Watcher {
    /// Gives a namespace a scope, opens it, names it and records it; `None` when it cannot be
    /// watched (the limit, or it vanished).
    pub(super) fn watch(&mut self, cand: &Candidate) -> Option<u32> {
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
                .is_some_and(crate::containers::naming::provisional_mount)
            && !self.settings.overrides.borrow().matches(
                &labels,
                cand.mount_name.as_deref(),
                cand.id.ino,
            );
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
        let port_range = match netns.run(PortRange::open) {
            Ok(Ok(r)) => Some(Arc::new(r)),
            Ok(Err(e)) | Err(e) => {
                debug!(error = %e, scope, "cannot open the namespace's port range sysctls: no tcpstate_client_port_range_size for it");
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
                port_range,
                ifaces: BTreeMap::new(),
            },
        );
        Some(scope)
    }

    pub(super) fn slots_capacity(&self) -> u32 {
        self.maps.info.len().saturating_sub(1)
    }

    pub(super) fn write_info(&mut self, scope: u32, id: NetnsId, state: u32, l: &Labels) {
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
    pub(super) fn attach(&mut self, scope: u32, link: &Link) {
        if let Err(e) = self.maps.ifaces.insert(link.ifindex, scope) {
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
                self.maps.ifaces.remove(link.ifindex);
                debug!(iface = %link.name, error, "a container veth went away while being attached");
            }
        }
    }

    pub(super) fn detach(&mut self, scope: u32, ifindex: u32) {
        if let Some(w) = self.watched.get_mut(&scope) {
            if let Some(f) = w.ifaces.remove(&ifindex) {
                debug!(iface = %f.name, scope, "detached from a container veth");
            }
        }
        self.maps.ifaces.remove(ifindex);
    }

    pub(super) fn detach_all(&mut self, scope: u32) {
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
    pub(super) fn retire(&mut self, scope: u32) {
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
        let records = seed::records_of(&self.maps.flows, scope);
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
        shared.scopes.remove(scope);
        info!(scope, container = %labels.container, pod = %labels.pod, flows = deleted.len(), "container namespace gone");
    }
}
