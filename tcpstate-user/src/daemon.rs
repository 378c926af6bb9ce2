//! `tcpstate run`: preflight, load, attach, seed, then serve /metrics while the sweeper walks the
//! table, until SIGINT or SIGTERM.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tcpstate_common::flow::monotonic_ns;

use aya::maps::MapError;
use tcpstate_common::maps::UserCounters;
use tracing::{info, warn};

use crate::{
    background::{
        ports, seed,
        sweeper::{self, SweepReport},
    },
    cli::{KernelLog, Mode},
    config::RunConfig,
    error::Preflight,
    exporter::{
        metrics::{self, Scrape},
        server::{self, Format},
        webconfig,
    },
    inspect,
    kernel::{
        kernellog, loader, netif,
        tables::{self, Books, Flows},
    },
    sockets::sockdiag,
};

/// `bpf(2)` update flag: insert only if the key is absent (include/uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// What the scrape and the sweeper share. Scrapes hold the lock for one read of the counters.
struct State {
    books: Books,
    user: UserCounters,
    report: SweepReport,
}

/// `tcpstate run --check`: everything `run` does up to serving, then undone. Uses a private pin
/// directory so a running daemon's maps are never touched.
pub fn check(mut cfg: RunConfig) -> anyhow::Result<String> {
    loader::preflight(&cfg)?;
    cfg.pin_dir = cfg
        .pin_dir
        .with_file_name(format!("tcpstate-check-{}", std::process::id()));
    let attempt = || -> anyhow::Result<Vec<loader::Attached>> {
        let mut ebpf = loader::load(&cfg)?;
        let attached = loader::attach(&mut ebpf, &cfg)?;
        let (_, books) = tables::from_ebpf(&mut ebpf)?;
        books.totals()?;
        Ok(attached)
    };
    let result = attempt();
    if cfg.pin_dir.exists() {
        inspect::flows::remove_pins(&cfg.pin_dir)?;
    }
    let attached: Vec<String> = result?
        .iter()
        .map(|a| format!("{} {} ({})", a.iface, a.hook, a.mode))
        .collect();
    Ok(format!(
        "ok: loaded, attached and detached: {}",
        attached.join(", ")
    ))
}

pub fn run(cfg: RunConfig) -> anyhow::Result<()> {
    loader::preflight(&cfg)?;
    // Bind first: a busy port is reported before anything is attached.
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| Preflight::Listen {
        addr: cfg.listen,
        source,
    })?;
    listener.set_nonblocking(true)?;
    let mut ebpf = loader::load(&cfg)?;
    let attached = loader::attach(&mut ebpf, &cfg)?;
    let kernel_log = match cfg.kernel_log {
        KernelLog::Off => None,
        _ => Some(kernellog::take(&mut ebpf)?),
    };
    let (mut flows, mut books) = tables::from_ebpf(&mut ebpf)?;
    // The daemon's side of the books survives restarts in its pinned map.
    let mut user = books.user()?;
    if cfg.seed {
        sync_with_kernel(&cfg, &mut flows, &mut user);
        books.set_user(&user)?;
    }
    let state = Arc::new(Mutex::new(State {
        books,
        user,
        report: SweepReport::default(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = spawn_sweeper(flows, state.clone(), stop.clone(), &cfg);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        if let Some(logger) = kernel_log {
            tokio::spawn(kernellog::forward(logger));
        }
        serve(listener, state, attached, &cfg).await
    });
    stop.store(true, Ordering::Relaxed);
    let _ = sweeper.join();
    // Dropping the object closes the link and program descriptors: the kernel detaches them.
    drop(ebpf);
    info!(
        "detached; flow table stays pinned in {}",
        cfg.pin_dir.display()
    );
    result
}

/// Brings the table in line with the kernel's socket table: drops records a reused (pinned) table
/// kept for connections that changed or ended while no daemon ran, then seeds every socket the
/// table lacks. Runs after attaching, so nothing that happens meanwhile is missed; records the
/// programs create first win (BPF_NOEXIST).
fn sync_with_kernel(cfg: &RunConfig, flows: &mut Flows, user: &mut UserCounters) {
    let sockets = match sockdiag::dump_tcp() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the kernel's socket table; counts fill in as segments arrive");
            return;
        }
    };
    let scope = seed::Scope {
        host: cfg
            .attachments
            .iter()
            .filter(|a| a.mode == Mode::Host)
            .flat_map(|a| netif::addresses(&a.iface))
            .collect::<HashSet<_>>(),
        loopback: cfg.attachments.iter().any(|a| a.iface == "lo"),
    };
    let kernel = seed::kernel_states(&sockets, &scope);
    let stale: Vec<_> = flows
        .0
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, rec)| seed::is_stale(key, rec, &kernel, &scope))
        .collect();
    let mut kept = flows.0.keys().count();
    for (key, rec) in &stale {
        if flows.0.remove(key).is_ok() {
            user.record_delete(rec.word());
            kept -= 1;
        }
    }
    let mut seeded = 0;
    for (key, rec) in seed::records(&sockets, &scope, monotonic_ns()) {
        match flows.0.insert(key, rec, BPF_NOEXIST) {
            Ok(()) => {
                user.record_insert(rec.word());
                seeded += 1;
            }
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => warn!(error = %e, "could not seed a flow"),
        }
    }
    info!(
        kept,
        dropped_stale = stale.len(),
        seeded,
        sockets = sockets.len(),
        "flow table in line with the kernel's socket table"
    );
}

fn spawn_sweeper(
    mut flows: Flows,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    cfg: &RunConfig,
) -> std::thread::JoinHandle<()> {
    let (interval, timeouts) = (cfg.sweep_interval, cfg.timeouts);
    let host_mode = cfg.attachments.iter().any(|a| a.mode == Mode::Host);
    let mut leaks = sweeper::Leaks {
        leak_after_s: cfg.close_wait_leak_after.as_secs_f64(),
        port_labels: cfg.port_labels,
        listeners: Default::default(),
        labelled: Default::default(),
    };
    std::thread::Builder::new()
        .name("sweeper".into())
        .spawn(move || {
            let mut report = SweepReport::default();
            while !stop.load(Ordering::Relaxed) {
                if host_mode {
                    // Port labels go to listening ports; the kernel knows which they are.
                    if let Ok(l) = sockdiag::dump_listening() {
                        leaks.listeners = listeners(&l);
                    }
                }
                let mut user = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .user;
                let removed =
                    sweeper::sweep(&mut flows, &mut user, &timeouts, &mut leaks, &mut report);
                {
                    let mut s = state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    s.report = report.clone();
                    if removed > 0 {
                        s.user = user;
                        if let Err(e) = s.books.set_user(&user) {
                            warn!(error = %e, "could not store the daemon's counters");
                        }
                    }
                }
                // Sleep in short steps so shutdown is prompt. A walk that took long (a huge table)
                // stretches the pause, so sweeping never takes more than a tenth of one CPU.
                let pause = sweeper::pause_after(interval, report.duration);
                let mut slept = Duration::ZERO;
                while slept < pause && !stop.load(Ordering::Relaxed) {
                    let step = Duration::from_millis(100).min(pause - slept);
                    std::thread::sleep(step);
                    slept += step;
                }
            }
        })
        .expect("spawn sweeper thread")
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    attached: Vec<loader::Attached>,
    cfg: &RunConfig,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(listen = %cfg.listen, "serving /metrics");
    let (capacity, half_open_budget) = (cfg.capacity, cfg.half_open_budget);
    let render: server::Render = Arc::new(move |format: Format| {
        let s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut totals = s.books.totals().map_err(|e| {
            warn!(error = %e, "cannot read counters");
            format!("cannot read the kernel counters: {e}")
        })?;
        totals.user = s.user;
        let scrape = Scrape {
            totals: &totals,
            capacity,
            half_open_budget,
            sweep: &s.report,
            attached: &attached,
        };
        match format {
            Format::OpenMetrics => Ok(metrics::render_openmetrics(&scrape)),
            Format::Text => metrics::render(&scrape).map_err(|e| {
                warn!(error = %e, "cannot encode metrics");
                format!("cannot encode metrics: {e}")
            }),
        }
    });
    // Validated by RunConfig already; read again here for the values in force from now on.
    let web = match &cfg.web_config {
        Some(path) => {
            let first = webconfig::load(path).map_err(crate::config::ConfigError::Invalid)?;
            info!(file = %path.display(), tls = first.tls.is_some(), basic_auth = !first.users.is_empty(), "web config");
            Some(Arc::new(webconfig::Reloader::new(path.clone(), first)))
        }
        None => None,
    };
    server::serve(listener, render, web, shutdown_signal()).await;
    Ok(())
}

/// Accept queues by port, summed over a port's listeners (IPv4 and IPv6, SO_REUSEPORT groups).
fn listeners(sockets: &[sockdiag::Socket]) -> std::collections::BTreeMap<u16, ports::AcceptQueue> {
    let mut m = std::collections::BTreeMap::new();
    for s in sockets {
        let q: &mut ports::AcceptQueue = m.entry(s.local.1).or_default();
        q.length += s.rqueue as u64;
        q.max_length += s.wqueue as u64;
    }
    m
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: detaching"),
        _ = int.recv() => info!("SIGINT: detaching"),
    }
}
