//! `tcpstate run`: preflight, load, attach, seed, then serve /metrics while the sweeper walks the
//! table (and, in container mode, the watcher follows container namespaces), until SIGINT or
//! SIGTERM.

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
        interfaces::Interfaces,
        report::SweepReport,
        scopes::ScopeView,
        seed,
        sweeper::{PortInputs, Settling},
        sweeping::Sweeper,
    },
    bpf::{
        attach::Attached,
        kernellog, loader,
        tables::{self, Flows},
    },
    config::RunConfig,
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

pub fn run(cfg: RunConfig) -> anyhow::Result<()> {
    loader::preflight(&cfg.pin_dir, &cfg.ifaces)?;
    // Bind first: a busy port is reported before anything is attached.
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| Preflight::Listen {
        addr: cfg.listen,
        source,
    })?;
    listener.set_nonblocking(true)?;
    let overrides = match &cfg.containers {
        Some(c) => match &c.names {
            Some(f) => Overrides::load(f).map_err(crate::config::ConfigError::Invalid)?,
            None => Overrides::default(),
        },
        None => Overrides::default(),
    };
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
    let (mut flows, books, scope_maps) = tables::from_ebpf(&mut ebpf, seed)?;
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
                overrides,
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
    }
    .spawn(stop.clone());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        if let Some(logger) = kernel_log {
            tokio::spawn(kernellog::forward(logger));
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
    let listener = tokio::net::TcpListener::from_std(listener)?;
    info!(listen = %cfg.listen, "serving /metrics");
    let render = Collector {
        shared: state,
        attached,
        capacity: cfg.capacity,
        half_open_budget: cfg.half_open_budget,
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
    server::serve(listener, render, web, shutdown_signal()).await;
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
