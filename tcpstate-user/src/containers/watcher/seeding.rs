//! Seeding a newly watched namespace from its own socket table.

use super::*;

impl Watcher {
    /// Seeds a newly watched namespace from its own socket table (and, for a scope an earlier run
    /// watched, drops what changed while no daemon ran).
    pub(super) fn seed_scope(&mut self, scope: u32) {
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
            seed::records_of(&self.maps.flows, scope)
        } else {
            Vec::new()
        };
        let synced = seed::sync(
            &self.maps.flows,
            scope,
            &sockets,
            &seed::Locals::container(),
            &existing,
            seed::Timing {
                now_ns: monotonic_ns(),
                timeouts: Some(self.settings.timeouts),
            },
        );
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.book(|c| synced.book(scope, c));
        info!(
            scope,
            kept = synced.kept,
            dropped_stale = synced.deleted.len(),
            seeded = synced.inserted.len(),
            sockets = sockets.len(),
            "container namespace in line with its socket table"
        );
    }
}
