//! The scrape's collection: at each scrape, the kernel's per-CPU counters of the scopes in use,
//! the daemon's own books and the background walk's latest report, rendered in the format asked
//! for. Like ebpf_exporter's collector, it decodes maps at scrape time and walks no table: its cost
//! does not grow with the number of flows.

use std::sync::{Arc, Mutex, PoisonError};

use tracing::warn;

use crate::{
    background::{books::Shared, scopes::ScopeView},
    bpf::attach::Attached,
    exporter::{
        layout::Layout,
        metrics::{self, Scrape},
        server::{Format, Render},
    },
};

/// What a scrape reads.
pub struct Collector {
    /// The books, the walk's report and the watched scopes (shared with the sweeper and watchers).
    pub shared: Arc<Mutex<Shared>>,
    /// What is attached now (kept by the interface follower).
    pub attached: Arc<Mutex<Vec<Attached>>>,
    /// The tables' size (both, and the IPv6 one's) and half-open budget, as loaded.
    pub capacity: u32,
    pub capacity6: u32,
    pub half_open_budget: u32,
    /// What the exposition derives from the watched scopes, for the latest generation seen.
    pub layout: Mutex<Option<Arc<Layout>>>,
}

impl Collector {
    /// One scrape's body, or one line saying why there is none.
    pub fn render(&self, format: Format) -> Result<Vec<u8>, String> {
        let attached = self
            .attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let layout = self.layout_of(&s.scopes);
        // Scopes past the highest one watched hold nothing to export.
        let in_use = s
            .scopes
            .scopes
            .iter()
            .map(|w| w.scope + 1)
            .max()
            .unwrap_or(1);
        let started = std::time::Instant::now();
        let mut totals = s.books.kernel_totals_of(in_use).map_err(|e| {
            warn!(error = %e, "cannot read counters");
            format!("cannot read the kernel counters: {e}")
        })?;
        // The daemon's books from memory: the pinned copy is what a restart reads back.
        totals.user = s
            .counters
            .all()
            .iter()
            .take(in_use as usize)
            .copied()
            .collect();
        let scrape = Scrape {
            totals: &totals,
            capacity: self.capacity,
            capacity6: self.capacity6,
            half_open_budget: self.half_open_budget,
            sweep: &s.report,
            attached: &attached,
            scopes: &s.scopes,
            layout: &layout,
        };
        let read = started.elapsed();
        let body = match format {
            Format::OpenMetrics => Ok(metrics::render_openmetrics(&scrape)),
            Format::Text => metrics::render(&scrape).map_err(|e| {
                warn!(error = %e, "cannot encode metrics");
                format!("cannot encode metrics: {e}")
            }),
        };
        tracing::debug!(
            read_us = read.as_micros() as u64,
            render_us = (started.elapsed() - read).as_micros() as u64,
            scopes = in_use,
            "scrape"
        );
        body
    }

    /// The layout of `view`: the one built before while the watched set is unchanged.
    fn layout_of(&self, view: &ScopeView) -> Arc<Layout> {
        let mut cached = self.layout.lock().unwrap_or_else(PoisonError::into_inner);
        match &*cached {
            Some(l) if l.generation == view.generation => l.clone(),
            _ => cached.insert(Arc::new(Layout::of(view))).clone(),
        }
    }

    /// The collector as the HTTP server calls it.
    pub fn into_render(self) -> Render {
        Arc::new(move |format| self.render(format))
    }
}
