//! `tcpstate run`: preflight, load, attach, seed, then serve /metrics while the sweeper walks the
//! table (and, in container mode, the watcher follows container namespaces), until SIGINT or
//! SIGTERM. SIGHUP reloads what can change without re-attaching (see [`RunConfig::reload`]).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tcpstate_common::{
    flow::{monotonic_ns, FlowKey, FlowRecord},
    scope,
};
use tracing::{info, warn};

use crate::{
    background::{
        books::{DaemonCounters, Shared},
        durations::Histograms,
        interfaces::Interfaces,
        report::SweepReport,
        scopes::ScopeView,
        seed,
        sweeper::{PortInputs, Settling},
        sweeping::{Limits, Sweeper},
    },
    bpf::{
        attach::Attached,
        kernellog, loader,
        tables::{self, Flows},
    },
    config::{ConfigError, RunConfig},
    containers::{
        naming::{Overrides, Runtimes},
        watcher::{Maps, Settings, Watcher},
    },
    error::Preflight,
    exporter::{collector::Collector, server, webconfig},
    sockets::sockdiag,
};

/// `tcpstate run --check`: everything `run` does up to serving, then undone. Uses a private pin
/// directory so a running daemon's maps are never touched.
pub fn check(mut cfg: RunConfig) -> anyhow::Result<String> {
    loader::preflight(&cfg.pin_dir, &cfg.ifaces)?;
    cfg.pin_dir = cfg
        .pin_dir
        .with_file_name(format!("tcpstate-check-{}", std::process::id()));
    let attempt = || -> anyhow::Result<Vec<Attached>> {
        let loader::Loaded { ebpf, seed, .. } = loader::load(&cfg.loading())?;
        let ebpf = Arc::new(Mutex::new(ebpf));
        // Attached before the maps are taken out of the object: a program loads against the
        // descriptors of the maps it uses, which must still be open.
        let mut interfaces = Interfaces::new(ebpf.clone(), cfg.selection());
        interfaces.start()?;
        let attached = interfaces.published();
        let list = attached.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (_, books, _) =
            tables::from_ebpf(&mut ebpf.lock().unwrap_or_else(|e| e.into_inner()), seed)?;
        books.totals()?;
        drop(interfaces);
        Ok(list)
    };
    let result = attempt();
    if cfg.pin_dir.exists() {
        crate::bpf::pins::remove(&cfg.pin_dir)?;
    }
    let attached: Vec<String> = result?
        .iter()
        .map(|a| format!("{} {} ({})", a.iface, a.hook, a.mode))
        .collect();
    // Container mode works with fewer capabilities, doing less: say what, on the same line.
    let limits = if cfg.containers.is_some() {
        loader::container_mode_limits()
            .iter()
            .map(|l| format!("; container mode: {l}"))
            .collect::<String>()
    } else {
        String::new()
    };
    Ok(format!(
        "ok: loaded, attached and detached: {}{limits}",
        attached.join(", ")
    ))
}

/// Reads the settings again for a reload (SIGHUP): the command line, environment and `--config`
/// file as at start, or the one line saying why they cannot be used.
pub type Reread = Box<dyn Fn() -> anyhow::Result<RunConfig> + Send>;

pub fn run(cfg: RunConfig, reread: Reread) -> anyhow::Result<()> {
    // A reload asked for while the programs load would kill the daemon (SIGHUP's default): ignored
    // until the handler that reloads replaces this, once serving.
    // SAFETY: setting a signal disposition, before any other thread starts.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    loader::preflight(&cfg.pin_dir, &cfg.ifaces)?;
    // Bind first: a busy port is reported before anything is attached.
    let listener = cfg
        .listen
        .bind()
        .map_err(|(addr, source)| Preflight::Listen { addr, source })?;
    let overrides = container_names(&cfg).map_err(ConfigError::Invalid)?;
    let (limits, limits_rx) = tokio::sync::watch::channel(limits_of(&cfg));
    let (names, names_rx) = tokio::sync::watch::channel(overrides);
    let loader::Loaded {
        mut ebpf,
        seed,
        carried,
    } = loader::load(&cfg.loading())?;
    let kernel_log = match cfg.kernel_log {
        kernellog::Level::Off => None,
        _ => Some(kernellog::take(&mut ebpf)?),
    };
    tables::publish_settings(
        &mut ebpf,
        &tcpstate_common::maps::Settings {
            close_wait_leak_after_ns: cfg.close_wait_leak_after.as_nanos() as u64,
        },
    )?;
    let syn_cookies = tables::SynCookies::from_ebpf(&mut ebpf)?;
    let retransmits = tables::Retransmits::from_ebpf(&mut ebpf)?;
    let port_rows = tables::PortRows::from_ebpf(&mut ebpf)?;
    let (mut flows, books, scope_maps) = tables::from_ebpf(&mut ebpf, seed)?;
    let histograms = books.durations().map(|rows| Histograms {
        rows,
        ports: port_rows,
    });
    let released = flows.repair(Duration::from_millis(20));
    if released > 0 {
        warn!(
            released,
            "released what a daemon that died mid-operation left held in the flow table"
        );
    }
    // The daemon's side of the books survives restarts in its pinned map.
    let mut counters = DaemonCounters::new(books.users()?);
    carry_over(&flows, carried, &mut counters);
    let stop = Arc::new(AtomicBool::new(false));
    let ebpf = Arc::new(Mutex::new(ebpf));
    // Attached before seeding, so a connection that changes meanwhile is the programs' (seeding
    // never overwrites a flow they inserted).
    let mut interfaces = Interfaces::new(ebpf.clone(), cfg.selection());
    interfaces.start()?;
    let attached = interfaces.published();
    let follower = interfaces.spawn(stop.clone());
    if cfg.seed {
        sync_host(&cfg, &mut flows, &mut counters);
    }
    let shared = Arc::new(Mutex::new(Shared {
        books,
        counters,
        report: SweepReport::default(),
        scopes: ScopeView {
            enabled: cfg.containers.is_some(),
            level: cfg.containers.as_ref().map(|c| c.level),
            ..ScopeView::default()
        },
    }));
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .book(|_| {});
    let watcher = match &cfg.containers {
        Some(c) => {
            let maps = Maps {
                ifaces: scope_maps.ifaces,
                info: scope_maps.info,
                flows: tables::flows_from_pin(&cfg.pin_dir)?,
            };
            let settings = Settings {
                exclude: cfg.ifaces.iter().cloned().collect(),
                resync: c.resync,
                seed: cfg.seed,
                level: c.level,
                runtimes: Runtimes {
                    root: c.host_root.clone(),
                },
                overrides: names_rx,
                timeouts: cfg.timeouts,
            };
            let w = Watcher::new(ebpf.clone(), maps, shared.clone(), settings)?;
            info!(max = c.max, "container mode: watching container namespaces");
            Some(w.spawn(stop.clone()))
        }
        None => None,
    };
    let sweeper = Sweeper {
        flows,
        timeouts: cfg.timeouts,
        interval: cfg.sweep_interval,
        ports: PortInputs {
            leak_after_s: cfg.close_wait_leak_after.as_secs_f64(),
            port_labels: cfg.port_labels,
            listeners: Default::default(),
            labelled: Default::default(),
            syn_cookies: Some(syn_cookies),
            retransmits: Some(retransmits),
            destinations: Default::default(),
            port_ranges: Default::default(),
            histograms,
        },
        settling: Settling {
            // Loopback is tap mode: both ends counted from the wire, nothing to settle.
            host: cfg.host_mode().then(|| seed::Locals {
                loopback: false,
                ..cfg.host_locals()
            }),
            containers: Default::default(),
        },
        shared: shared.clone(),
        limits: limits_rx,
    }
    .spawn(stop.clone());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        if let Some(logger) = kernel_log {
            tokio::spawn(kernellog::forward(logger));
        }
        let reloads = Reloads {
            running: cfg.clone(),
            reread,
            limits,
            names,
        };
        // Installed before serving starts, so a SIGHUP after "serving" is never missed.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => drop(tokio::spawn(reloads.on_sighup(hup))),
            Err(e) => warn!(error = %e, "cannot install the SIGHUP handler: no reloads"),
        }
        serve(listener, shared, attached, &cfg).await
    });
    stop.store(true, Ordering::Relaxed);
    let _ = sweeper.join();
    let _ = follower.join();
    if let Some(w) = watcher {
        let _ = w.join();
    }
    // Dropping the object closes the link and program descriptors: the kernel detaches them.
    drop(ebpf);
    info!(
        "detached; flow table stays pinned in {}",
        cfg.pin_dir.display()
    );
    result
}

/// `--container-names`, read (container mode), or the one line saying why it cannot be.
fn container_names(cfg: &RunConfig) -> Result<Overrides, String> {
    match cfg.containers.as_ref().and_then(|c| c.names.as_ref()) {
        Some(f) => Overrides::load(f),
        None => Ok(Overrides::default()),
    }
}

fn limits_of(cfg: &RunConfig) -> Limits {
    Limits {
        leak_after: cfg.close_wait_leak_after,
        port_labels: cfg.port_labels,
    }
}

/// What a reload reads and whom it tells.
struct Reloads {
    /// The settings in force.
    running: RunConfig,
    reread: Reread,
    /// Read by the sweeper before each walk.
    limits: tokio::sync::watch::Sender<Limits>,
    /// Read by the container watcher.
    names: tokio::sync::watch::Sender<Overrides>,
}

impl Reloads {
    async fn on_sighup(mut self, mut hup: tokio::signal::unix::Signal) {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading");
            if let Err(why) = self.reload() {
                warn!("reload refused, the running settings are kept: {why}");
            }
        }
    }

    /// Reads everything again, then applies all of it or nothing.
    fn reload(&mut self) -> Result<(), String> {
        let new = (self.reread)().map_err(|e| format!("{e:#}"))?;
        let changed = self.running.reload(&new).map_err(|flag| {
            format!("{flag} changed, which needs a restart (`systemctl restart tcpstate`)")
        })?;
        // The overrides file is read again even under the same name: its content may be new.
        let names = container_names(&new)?;
        let names_changed = format!("{names:?}") != format!("{:?}", *self.names.borrow());
        if new.close_wait_leak_after != self.running.close_wait_leak_after {
            // `tcpstate leaks` takes its default threshold from the pins.
            tables::republish_settings(
                &new.pin_dir,
                &tcpstate_common::maps::Settings {
                    close_wait_leak_after_ns: new.close_wait_leak_after.as_nanos() as u64,
                },
            )
            .map_err(|e| format!("cannot publish the new threshold in the pinned maps: {e:#}"))?;
        }
        self.limits.send_replace(limits_of(&new));
        if names_changed {
            self.names.send_replace(names);
        }
        for c in &changed {
            info!("reloaded {} {} -> {}", c.name, c.from, c.to);
        }
        if names_changed && !changed.iter().any(|c| c.name == "container_names") {
            info!("reloaded container_names: the file's entries changed");
        }
        if changed.is_empty() && !names_changed {
            info!("reloaded: nothing changed");
        }
        self.running = new;
        Ok(())
    }
}

/// Inserts the flows of a pinned table this run could not map as it was (see
/// [`crate::bpf::carry`]). A flow the new table has no room for is booked as deleted, so the
/// gauges (kept across the restart) lose exactly it.
fn carry_over(flows: &Flows, carried: Vec<(FlowKey, FlowRecord)>, counters: &mut DaemonCounters) {
    if carried.is_empty() {
        return;
    }
    let (mut kept, mut dropped) = (0usize, 0usize);
    for (key, rec) in &carried {
        match flows.insert(key, rec) {
            // The programs, attached already, may have inserted it from a segment first: theirs
            // is newer, and the old record's endpoints were booked when it was created.
            Ok(()) => kept += 1,
            Err(tcpstate_common::mapped::InsertError::Exists) => {
                counters.record_delete(key.scope, rec.word());
                dropped += 1;
            }
            Err(_) => {
                counters.record_delete(key.scope, rec.word());
                dropped += 1;
            }
        }
    }
    info!(kept, dropped, "carried the earlier flow table's flows over");
}

/// Brings the host scope's records in line with the host's socket table (see [`seed::sync`]).
fn sync_host(cfg: &RunConfig, flows: &mut Flows, counters: &mut DaemonCounters) {
    let sockets = match sockdiag::dump_tcp() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the kernel's socket table; counts fill in as segments arrive");
            return;
        }
    };
    let existing = seed::records_of(flows, scope::HOST);
    let synced = seed::sync(
        flows,
        scope::HOST,
        &sockets,
        &cfg.host_locals(),
        &existing,
        seed::Timing {
            now_ns: monotonic_ns(),
            timeouts: Some(cfg.timeouts),
        },
    );
    synced.book(scope::HOST, counters);
    info!(
        kept = synced.kept,
        dropped_stale = synced.deleted.len(),
        seeded = synced.inserted.len(),
        sockets = sockets.len(),
        "flow table in line with the kernel's socket table"
    );
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<Shared>>,
    attached: Arc<Mutex<Vec<Attached>>>,
    cfg: &RunConfig,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(listen = %cfg.listen, %local, path = %cfg.metrics_path, "serving /metrics");
    let render = Collector {
        shared: state,
        attached,
        capacity: cfg.capacity,
        capacity6: cfg.capacity6,
        half_open_budget: cfg.half_open_budget,
        layout: Default::default(),
    }
    .into_render();
    // Validated by RunConfig already; read again here for the values in force from now on.
    let web = match &cfg.web_config {
        Some(path) => {
            let first = webconfig::load(path).map_err(crate::config::ConfigError::Invalid)?;
            info!(file = %path.display(), tls = first.tls.is_some(), basic_auth = !first.users.is_empty(), "web config");
            Some(Arc::new(webconfig::Reloader::new(path.clone(), first)))
        }
        None => None,
    };
    server::serve(
        listener,
        render,
        web,
        cfg.metrics_path.clone(),
        shutdown_signal(),
    )
    .await;
    Ok(())
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
