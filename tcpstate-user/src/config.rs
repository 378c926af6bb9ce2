//! Validated configuration: what `tcpstate run` does, decided once (by `cli::settings`, from the
//! flags) and handed down to the pieces that do it, each as the settings it understands. Nothing
//! here knows of clap.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, time};

use crate::{
    background::scopes::LabelLevel,
    background::{interfaces::Selection, seed},
    bpf::{
        attach::{IngressHook, Role, XdpMode},
        kernellog, loader, netif,
    },
    error::Preflight,
};

pub use crate::background::expiry::Timeouts;

#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `--iface`: only these interfaces. Empty: every interface of the namespace, followed as
    /// they come and go.
    pub ifaces: Vec<String>,
    /// `--exclude-iface`: globs of interface names never watched.
    pub exclude_ifaces: Vec<glob::Pattern>,
    /// Host or tap mode for every watched interface but `lo` (always tap).
    pub mode: Role,
    pub ingress_hook: IngressHook,
    pub xdp_mode: XdpMode,
    pub listen: SocketAddr,
    /// Validated at start (a bad file is a preflight error); the server re-reads it on changes.
    pub web_config: Option<PathBuf>,
    pub capacity: u32,
    pub half_open_budget: u32,
    pub timeouts: Timeouts,
    pub close_wait_leak_after: time::Duration,
    pub port_labels: usize,
    pub sweep_interval: time::Duration,
    pub seed: bool,
    pub kernel_log: kernellog::Level,
    pub pin_dir: PathBuf,
    /// Container mode, when on.
    pub containers: Option<Containers>,
}

/// Container mode's settings.
#[derive(Clone, Debug)]
pub struct Containers {
    pub max: u32,
    pub names: Option<PathBuf>,
    pub level: LabelLevel,
    pub resync: time::Duration,
    pub host_root: PathBuf,
}

impl RunConfig {
    /// What the interface follower watches.
    pub fn selection(&self) -> Selection {
        Selection {
            only: self.ifaces.clone(),
            exclude: self.exclude_ifaces.clone(),
            role: self.mode,
            ingress: self.ingress_hook,
            xdp_mode: self.xdp_mode,
            containers: self.containers.is_some(),
        }
    }

    /// Whether any interface but `lo` is watched in host mode (whose endpoints the kernel's socket
    /// table can settle).
    pub fn host_mode(&self) -> bool {
        self.mode == Role::Host && (self.ifaces.is_empty() || self.ifaces.iter().any(|i| i != "lo"))
    }

    /// Scopes the counters have room for: the host's, and one per watched container namespace.
    pub fn scopes(&self) -> u32 {
        1 + self.containers.as_ref().map_or(0, |c| c.max)
    }

    /// The local addresses whose sockets the tracker sees: those of the interfaces watched in host
    /// mode (every interface's but excluded ones' by default), and loopback when `lo` is watched.
    pub fn host_locals(&self) -> seed::Locals {
        let sel = self.selection();
        let watched = |name: &str| {
            name != "lo"
                && self.mode == Role::Host
                && !sel.excludes(name)
                && (sel.everything() || self.ifaces.iter().any(|i| i == name))
        };
        seed::Locals {
            host: netif::all_addresses()
                .into_iter()
                .filter(|(name, ip)| watched(name) && !ip.is_loopback())
                .map(|(_, ip)| ip)
                .collect::<HashSet<_>>(),
            loopback: !sel.excludes("lo")
                && (sel.everything() || self.ifaces.iter().any(|i| i == "lo")),
            all_but_loopback: false,
        }
    }

    /// What loading the kernel object needs.
    pub fn loading(&self) -> loader::Settings {
        loader::Settings {
            pin_dir: self.pin_dir.clone(),
            capacity: self.capacity,
            half_open_budget: self.half_open_budget,
            scopes: self.scopes(),
            kernel_log: self.kernel_log,
            containers: self.containers.is_some(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Preflight(#[from] Preflight),
    #[error("{0}")]
    Invalid(String),
}
