//! The duration histograms as the background walk keeps them: CLOSE_WAIT dwell and connection
//! lifetimes ([`tcpstate_common::durations`]). The kernel adds the endings segments make; this
//! adds the ones the daemon decides (a socket the kernel let go of, a timeout), gives the ports
//! it labels a row of their own, and reads every row into the walk's per-port figures.

use std::sync::Arc;

use tcpstate_common::{
    durations::{self, Measure, HOST_ROWS},
    flow::Side,
    mapped::Durations,
    scope, FlowKey, FlowRecord, Role,
};

use crate::{
    background::ports::{Survey, OTHER},
    bpf::tables::PortRows,
};

pub struct Histograms {
    pub rows: Arc<Durations>,
    pub ports: PortRows,
}

impl Histograms {
    /// Adds what the daemon ends of `side`'s endpoint at `now_ns` (its flow removed, or the
    /// endpoint ended alone): the same observations a closing segment makes in the kernel.
    pub fn book_end(&self, key: &FlowKey, rec: &FlowRecord, side: Side, now_ns: u64) {
        let word = rec.word();
        let row = durations::row(key.scope, word.role(side), || {
            self.ports.get(key.port[side.index()])
        });
        durations::ended_by_daemon(rec, side, now_ns).for_each(word, |measure, _, ns| {
            self.rows.observe(self.rows.index(measure, row), ns)
        });
    }

    /// Gives the survey's numbered labels a row (the host's), and fills in every label's
    /// histograms: a labelled port's from its row; `other`'s from row 0 (client endpoints, and
    /// servers on ports without a row) plus the rows of ports not labelled this walk (an earlier
    /// run's). A container's endpoints are all under its `other`.
    pub fn fill(&mut self, scope: u32, survey: &mut Survey) {
        let get = |m: Measure, row: u32| self.rows.get(self.rows.index(m, row));
        if scope != scope::HOST {
            let row = HOST_ROWS + scope;
            let other = survey.ports.entry(OTHER.to_string()).or_default();
            other.close_wait_durations = get(Measure::CloseWait, row);
            other.lifetimes = [
                get(Measure::ClientLifetime, row),
                get(Measure::ServerLifetime, row),
            ];
            return;
        }
        for label in survey.ports.keys() {
            if let Ok(port) = label.parse::<u16>() {
                if let Err(e) = self.ports.assign(port) {
                    tracing::warn!(error = %e, port, "cannot give a port its own duration histograms");
                }
            }
        }
        let mut other_close_wait = get(Measure::CloseWait, 0);
        let mut other_server = get(Measure::ServerLifetime, 0);
        for (&port, &row) in self.ports.rows() {
            let (close_wait, server) = (
                get(Measure::CloseWait, row),
                get(Measure::ServerLifetime, row),
            );
            match survey.ports.get_mut(&port.to_string()) {
                Some(fig) => {
                    fig.close_wait_durations = close_wait;
                    fig.lifetimes[Role::Server as usize] = server;
                }
                None => {
                    other_close_wait.add(&close_wait);
                    other_server.add(&server);
                }
            }
        }
        let other = survey.ports.entry(OTHER.to_string()).or_default();
        other.close_wait_durations = other_close_wait;
        other.lifetimes = [get(Measure::ClientLifetime, 0), other_server];
    }
}
