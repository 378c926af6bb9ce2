//! Naming a watched namespace from its runtime: at once when a process is in it, as soon as one
//! is for a namespace its runtime made first (pending), and at a resync for the rest.

use super::*;

impl Watcher {
    pub(super) fn label(&self, cand: &Candidate) -> (Labels, bool) {
        let labels =
            self.settings
                .runtimes
                .label(&cand.pids, cand.mount_name.as_deref(), cand.id.ino);
        let named = !labels.container_id.is_empty();
        let labels =
            self.settings
                .overrides
                .borrow()
                .apply(labels, cand.mount_name.as_deref(), cand.id.ino);
        (labels, named)
    }

    /// `--container-names` was reloaded (SIGHUP): every shown namespace is labelled again from its
    /// runtime and the new overrides.
    pub(super) fn relabel(&mut self) {
        self.settings.overrides.mark_unchanged();
        self.candidates = netns::candidates(self.own);
        let shown: Vec<u32> = self
            .watched
            .iter()
            .filter(|(_, w)| w.pending_since.is_none())
            .map(|(&s, _)| s)
            .collect();
        let mut changed = false;
        for scope in shown {
            let id = self.watched[&scope].netns.id;
            let Some(cand) = self.candidates.iter().find(|c| c.id == id).cloned() else {
                continue;
            };
            let (labels, named) = self.label(&cand);
            if labels == self.watched[&scope].labels {
                continue;
            }
            self.write_info(scope, id, scope::state::ACTIVE, &labels);
            let w = self.watched.get_mut(&scope).expect("listed above");
            info!(scope, container = %labels.container, pod = %labels.pod, namespace = %labels.namespace, "container namespace labelled again after a reload of --container-names");
            w.labels = labels;
            w.named |= named;
            changed = true;
        }
        if changed {
            self.publish();
        }
    }

    /// Names the namespaces waiting for their first process ([`PENDING_LIMIT`]): each one whose
    /// process is there now gets the runtime's name and its series appear; one that waited too
    /// long appears under its mount name.
    pub(super) fn name_pending(&mut self) {
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
    pub(super) fn rename_unnamed(&mut self) {
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
}
