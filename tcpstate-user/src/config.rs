//! Validated configuration: what `tcpstate run` does, decided once (by `cli::settings`, from the
//! flags) and handed down to the pieces that do it, each as the settings it understands. Nothing
//! here knows of clap.

use std::{collections::HashSet, path::PathBuf, time};

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
    pub listen: crate::exporter::server::Listen,
    /// `--web.telemetry-path`: where the metrics are served.
    pub metrics_path: String,
    /// Validated at start (a bad file is a preflight error); the server re-reads it on changes.
    pub web_config: Option<PathBuf>,
    pub capacity: u32,
    /// Of `capacity`, flows that are not IPv4 at both ends (the size of their own table).
    pub capacity6: u32,
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
            capacity6: self.capacity6,
            half_open_budget: self.half_open_budget,
            scopes: self.scopes(),
            kernel_log: self.kernel_log,
            containers: self.containers.is_some(),
        }
    }
}

/// One setting a reload changed, for its log line: `reloaded close_wait_leak_after 60s -> 30s`.
#[derive(Debug, PartialEq, Eq)]
pub struct Changed {
    pub name: &'static str,
    pub from: String,
    pub to: String,
}

impl RunConfig {
    /// What a reload (SIGHUP) from `self` to `new` changes: the settings that apply without
    /// re-attaching anything (`--close-wait-leak-after`, `--port-labels`, the `--container-names`
    /// file's name; its content is re-read regardless), or the flag of the first other setting
    /// that differs, which needs a restart.
    pub fn reload(&self, new: &RunConfig) -> Result<Vec<Changed>, &'static str> {
        // Destructured whole, so a setting added later must be sorted here into one kind or the
        // other.
        let RunConfig {
            ifaces,
            exclude_ifaces,
            mode,
            ingress_hook,
            xdp_mode,
            listen,
            metrics_path,
            web_config,
            capacity,
            capacity6,
            half_open_budget,
            timeouts,
            close_wait_leak_after,
            port_labels,
            sweep_interval,
            seed,
            kernel_log,
            pin_dir,
            containers,
        } = self;
        let Timeouts {
            time_wait,
            syn_sent,
            syn_recv,
            fin_wait2,
            closing_idle,
            established_idle,
            closed_linger,
        } = timeouts;
        let t = &new.timeouts;
        let mut fixed: Vec<(&'static str, bool)> = vec![
            ("--iface", *ifaces == new.ifaces),
            ("--exclude-iface", *exclude_ifaces == new.exclude_ifaces),
            ("--mode", *mode == new.mode),
            ("--ingress-hook", *ingress_hook == new.ingress_hook),
            ("--xdp-mode", *xdp_mode == new.xdp_mode),
            ("--listen", *listen == new.listen),
            ("--web.telemetry-path", *metrics_path == new.metrics_path),
            // The file itself is re-read whenever it changes (exporter::webconfig).
            ("--web-config", *web_config == new.web_config),
            ("--max-flows", *capacity == new.capacity),
            ("--max-ipv6-flows", *capacity6 == new.capacity6),
            (
                "--half-open-budget",
                *half_open_budget == new.half_open_budget,
            ),
            ("--time-wait", *time_wait == t.time_wait),
            ("--syn-sent-timeout", *syn_sent == t.syn_sent),
            ("--syn-recv-timeout", *syn_recv == t.syn_recv),
            ("--fin-wait2-timeout", *fin_wait2 == t.fin_wait2),
            ("--closing-timeout", *closing_idle == t.closing_idle),
            (
                "--established-idle-timeout",
                *established_idle == t.established_idle,
            ),
            ("--closed-linger", *closed_linger == t.closed_linger),
            ("--sweep-interval", *sweep_interval == new.sweep_interval),
            ("--no-seed", *seed == new.seed),
            ("--kernel-log", *kernel_log == new.kernel_log),
            ("--pin-dir", *pin_dir == new.pin_dir),
            (
                "--containers",
                containers.is_some() == new.containers.is_some(),
            ),
        ];
        let mut changed = Vec::new();
        if let (Some(old), Some(new)) = (containers, &new.containers) {
            let Containers {
                max,
                names,
                level,
                resync,
                host_root,
            } = old;
            fixed.extend([
                ("--max-containers", *max == new.max),
                ("--container-labels", *level == new.level),
                ("--container-resync", *resync == new.resync),
                ("--host-root", *host_root == new.host_root),
            ]);
            if *names != new.names {
                let shown = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map_or_else(|| "none".to_string(), |p| p.display().to_string())
                };
                changed.push(Changed {
                    name: "container_names",
                    from: shown(names),
                    to: shown(&new.names),
                });
            }
        }
        if let Some((flag, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(flag);
        }
        let secs = |d: &time::Duration| format!("{}s", d.as_secs_f64());
        if *close_wait_leak_after != new.close_wait_leak_after {
            changed.push(Changed {
                name: "close_wait_leak_after",
                from: secs(close_wait_leak_after),
                to: secs(&new.close_wait_leak_after),
            });
        }
        if *port_labels != new.port_labels {
            changed.push(Changed {
                name: "port_labels",
                from: port_labels.to_string(),
                to: new.port_labels.to_string(),
            });
        }
        Ok(changed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Preflight(#[from] Preflight),
    #[error("{0}")]
    Invalid(String),
}
