//! The kernel programs' aya-log records, forwarded to tracing (target `tcpstate::kernel`).

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::warn;

/// What the kernel programs log through aya-log (rare events only: invalid segments at debug,
/// accepted RSTs at info, untracked flows at warn). The numbers are aya-log's levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// aya-log speaks the `log` crate; the daemon logs through tracing.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        match r.level() {
            log::Level::Error => tracing::error!(target: "tcpstate::kernel", "{}", r.args()),
            log::Level::Warn => tracing::warn!(target: "tcpstate::kernel", "{}", r.args()),
            log::Level::Info => tracing::info!(target: "tcpstate::kernel", "{}", r.args()),
            log::Level::Debug => tracing::debug!(target: "tcpstate::kernel", "{}", r.args()),
            log::Level::Trace => tracing::trace!(target: "tcpstate::kernel", "{}", r.args()),
        }
    }

    fn flush(&self) {}
}

/// Takes the log ring buffer out of the object.
pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<EbpfLogger<ToTracing>> {
    Ok(EbpfLogger::init_with_logger(ebpf, ToTracing)?)
}

/// Forwards records as the ring buffer fills, until the runtime stops.
pub async fn forward(logger: EbpfLogger<ToTracing>) {
    // SAFETY: the ring buffer's descriptor is owned by `logger`, which the AsyncFd owns: it stays
    // open for as long as it is registered. (tokio's only way to poll a descriptor aya-log owns.)
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => return warn!(error = %e, "cannot poll the kernel log buffer"),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => return warn!(error = %e, "kernel log buffer failed"),
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
