//! Validated configuration: what `tcpstate run` does, decided once from the raw arguments.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time};

use crate::{
    background::interfaces::Selection,
    bpf::attach::Role,
    cli::{IngressHook, Mode, RunArgs, XdpModeArg},
    error::Preflight,
};

/// A duration written like `500ms`, `3s`, `90s`, `2m`, `1h`, `5d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub time::Duration);

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration: write it like 3s, 90s, 2m"))?;
        let ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{s:?} has no unit: write it like {s}s or {s}m")),
            _ => {
                return Err(format!(
                    "{s:?} has an unknown unit {unit:?}: use ms, s, m, h or d"
                ))
            }
        };
        n.checked_mul(ms)
            .map(|ms| Duration(time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// Lifetimes the sweeper enforces (the kernel programs never expire anything).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub time_wait: time::Duration,
    pub syn_sent: time::Duration,
    pub syn_recv: time::Duration,
    pub fin_wait2: time::Duration,
    pub closing_idle: time::Duration,
    pub established_idle: time::Duration,
    pub closed_linger: time::Duration,
}

/// A duration that must be longer than zero, or the one-line error naming its flag.
pub fn positive(name: &str, d: Duration) -> Result<time::Duration, String> {
    if d.0.is_zero() {
        Err(format!("{name} must be longer than 0s"))
    } else {
        Ok(d.0)
    }
}

impl Timeouts {
    /// The sweeper's timeouts from their flags (`run` and `replay` share them).
    pub fn from_args(a: &crate::cli::TimeoutArgs) -> Result<Timeouts, String> {
        Ok(Timeouts {
            time_wait: positive("--time-wait", a.time_wait)?,
            syn_sent: positive("--syn-sent-timeout", a.syn_sent_timeout)?,
            syn_recv: positive("--syn-recv-timeout", a.syn_recv_timeout)?,
            fin_wait2: positive("--fin-wait2-timeout", a.fin_wait2_timeout)?,
            closing_idle: positive("--closing-timeout", a.closing_timeout)?,
            established_idle: positive("--established-idle-timeout", a.established_idle_timeout)?,
            closed_linger: positive("--closed-linger", a.closed_linger)?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `--iface`: only these interfaces. Empty: every interface of the namespace, followed as
    /// they come and go.
    pub ifaces: Vec<String>,
    /// `--exclude-iface`: globs of interface names never watched.
    pub exclude_ifaces: Vec<glob::Pattern>,
    /// Host or tap mode for every watched interface but `lo` (always tap).
    pub mode: Mode,
    pub ingress_hook: IngressHook,
    pub xdp_mode: XdpModeArg,
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
    pub kernel_log: crate::cli::KernelLog,
    pub pin_dir: PathBuf,
    /// Container mode, when on.
    pub containers: Option<Containers>,
}

/// Container mode's settings.
#[derive(Clone, Debug)]
pub struct Containers {
    pub max: u32,
    pub names: Option<PathBuf>,
    pub level: crate::containers::naming::LabelLevel,
    pub resync: time::Duration,
    pub host_root: PathBuf,
}

impl RunConfig {
    /// What the interface follower watches.
    pub fn selection(&self) -> Selection {
        Selection {
            only: self.ifaces.clone(),
            exclude: self.exclude_ifaces.clone(),
            role: match self.mode {
                Mode::Host => Role::Host,
                Mode::Tap => Role::Tap,
            },
            ingress: self.ingress_hook,
            xdp_mode: self.xdp_mode,
            containers: self.containers.is_some(),
        }
    }

    /// Whether any interface but `lo` is watched in host mode (whose endpoints the kernel's socket
    /// table can settle).
    pub fn host_mode(&self) -> bool {
        self.mode == Mode::Host && (self.ifaces.is_empty() || self.ifaces.iter().any(|i| i != "lo"))
    }

    /// Scopes the counters have room for: the host's, and one per watched container namespace.
    pub fn scopes(&self) -> u32 {
        1 + self.containers.as_ref().map_or(0, |c| c.max)
    }
}

/// Most container namespaces one daemon watches (each costs a counter slot set per CPU).
const MAX_CONTAINERS: u32 = 4096;

/// Largest table the daemon will ask for (the map's max_entries is a u32, and past this the
/// kernel memory, ~160 bytes a flow, stops being a reasonable default mistake).
const MAX_CAPACITY: u32 = 16 * 1024 * 1024;

impl RunConfig {
    pub fn from_args(a: &RunArgs) -> Result<RunConfig, ConfigError> {
        // An empty value (TCPSTATE_IFACE= in an environment file) means "not set".
        let mut ifaces: Vec<String> = a
            .ifaces
            .iter()
            .filter(|i| !i.trim().is_empty())
            .cloned()
            .collect();
        ifaces.sort();
        ifaces.dedup();
        let exclude_ifaces = a
            .exclude_ifaces
            .iter()
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                glob::Pattern::new(g).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "--exclude-iface {g:?} is not a glob ({e}): write it like veth* or cali?"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(both) = ifaces
            .iter()
            .find(|i| exclude_ifaces.iter().any(|p| p.matches(i)))
        {
            return Err(ConfigError::Invalid(format!(
                "interface {both:?} is both named with --iface and matched by --exclude-iface: drop one"
            )));
        }
        if a.max_flows == 0 || a.max_flows > MAX_CAPACITY {
            return Err(ConfigError::Invalid(format!(
                "--max-flows must be between 1 and {MAX_CAPACITY}, not {}",
                a.max_flows
            )));
        }
        let half_open_budget = a.half_open_budget.unwrap_or((a.max_flows / 4).max(1));
        if half_open_budget == 0 || half_open_budget > a.max_flows {
            return Err(ConfigError::Invalid(format!(
                "--half-open-budget must be between 1 and --max-flows ({}), not {half_open_budget}",
                a.max_flows
            )));
        }
        let positive = |name: &str, d: Duration| positive(name, d).map_err(ConfigError::Invalid);
        // An empty value (TCPSTATE_WEB_CONFIG= in an environment file) means "not set".
        let web_config = a.web_config.clone().filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = &web_config {
            crate::exporter::webconfig::load(path).map_err(ConfigError::Invalid)?;
        }
        Ok(RunConfig {
            ifaces,
            exclude_ifaces,
            mode: a.mode,
            ingress_hook: a.ingress_hook,
            xdp_mode: a.xdp_mode,
            listen: a.listen,
            web_config,
            capacity: a.max_flows,
            half_open_budget,
            timeouts: Timeouts::from_args(&a.timeouts).map_err(ConfigError::Invalid)?,
            close_wait_leak_after: positive("--close-wait-leak-after", a.close_wait_leak_after)?,
            port_labels: if (1..=1024).contains(&a.port_labels) {
                a.port_labels
            } else {
                return Err(ConfigError::Invalid(format!(
                    "--port-labels must be between 1 and 1024, not {}",
                    a.port_labels
                )));
            },
            sweep_interval: positive("--sweep-interval", a.sweep_interval)?,
            seed: !a.no_seed,
            kernel_log: a.kernel_log,
            pin_dir: a.pins.pin_dir.clone(),
            containers: if a.containers {
                if a.max_containers == 0 || a.max_containers > MAX_CONTAINERS {
                    return Err(ConfigError::Invalid(format!(
                        "--max-containers must be between 1 and {MAX_CONTAINERS}, not {}",
                        a.max_containers
                    )));
                }
                if let Some(f) = &a.container_names {
                    crate::containers::naming::Overrides::load(f).map_err(ConfigError::Invalid)?;
                }
                Some(Containers {
                    max: a.max_containers,
                    names: a.container_names.clone(),
                    level: a.container_labels,
                    resync: positive("--container-resync", a.container_resync)?,
                    host_root: a.host_root.clone(),
                })
            } else {
                None
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Preflight(#[from] Preflight),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(
            "3s".parse::<Duration>().unwrap().0,
            time::Duration::from_secs(3)
        );
        assert_eq!(
            "2m".parse::<Duration>().unwrap().0,
            time::Duration::from_secs(120)
        );
        assert_eq!(
            "500ms".parse::<Duration>().unwrap().0,
            time::Duration::from_millis(500)
        );
        assert_eq!(
            "5d".parse::<Duration>().unwrap().0,
            time::Duration::from_secs(432_000)
        );
        assert!("90".parse::<Duration>().unwrap_err().contains("no unit"));
        assert!("3x"
            .parse::<Duration>()
            .unwrap_err()
            .contains("unknown unit"));
        assert!("s".parse::<Duration>().is_err());
    }
}
