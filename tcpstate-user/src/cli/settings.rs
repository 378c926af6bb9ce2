//! From flags to settings: the raw arguments clap parsed become the validated configuration
//! (`crate::config`) and the plain settings each piece below understands. The one place that
//! knows both, as ripgrep's flags module turns its low-level arguments into high-level ones: no
//! module below imports a flag type.

use std::{fmt, str::FromStr, time};

use super::{
    FlowsArgs, IngressHook, KernelLog, LabelLevelArg, LeaksArgs, Mode, ReplayArgs, RunArgs,
    TimeoutArgs, XdpModeArg,
};
use crate::{
    background::scopes::LabelLevel,
    bpf::{attach, attach::Role, kernellog},
    config::{ConfigError, Containers, RunConfig, Timeouts},
    inspect::{flows, leaks},
    replay::{At, Options, ReplayError, Request},
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

/// A duration that must be longer than zero, or the one-line error naming its flag.
pub fn positive(name: &str, d: Duration) -> Result<time::Duration, String> {
    if d.0.is_zero() {
        Err(format!("{name} must be longer than 0s"))
    } else {
        Ok(d.0)
    }
}

impl TimeoutArgs {
    /// The sweeper's timeouts from their flags (`run` and `replay` share them).
    pub fn timeouts(&self) -> Result<Timeouts, String> {
        let a = self;
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

impl From<IngressHook> for attach::IngressHook {
    fn from(h: IngressHook) -> Self {
        match h {
            IngressHook::Tc => attach::IngressHook::Tc,
            IngressHook::Xdp => attach::IngressHook::Xdp,
        }
    }
}

impl From<XdpModeArg> for attach::XdpMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Auto => attach::XdpMode::Auto,
            XdpModeArg::Native => attach::XdpMode::Native,
            XdpModeArg::Generic => attach::XdpMode::Generic,
        }
    }
}

impl From<KernelLog> for kernellog::Level {
    fn from(l: KernelLog) -> Self {
        match l {
            KernelLog::Off => kernellog::Level::Off,
            KernelLog::Error => kernellog::Level::Error,
            KernelLog::Warn => kernellog::Level::Warn,
            KernelLog::Info => kernellog::Level::Info,
            KernelLog::Debug => kernellog::Level::Debug,
            KernelLog::Trace => kernellog::Level::Trace,
        }
    }
}

impl From<LabelLevelArg> for LabelLevel {
    fn from(l: LabelLevelArg) -> Self {
        match l {
            LabelLevelArg::Full => LabelLevel::Full,
            LabelLevelArg::Namespace => LabelLevel::Namespace,
        }
    }
}

/// Most container namespaces one daemon watches (each costs a counter slot set per CPU).
const MAX_CONTAINERS: u32 = 4096;

/// Largest table the daemon will ask for (the map's max_entries is a u32, and past this the
/// kernel memory, ~160 bytes a flow, stops being a reasonable default mistake).
const MAX_CAPACITY: u32 = 16 * 1024 * 1024;

impl RunArgs {
    /// The validated configuration these flags ask for.
    pub fn config(&self) -> Result<RunConfig, ConfigError> {
        let a = self;
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
            mode: match a.mode {
                Mode::Host => Role::Host,
                Mode::Tap => Role::Tap,
            },
            ingress_hook: a.ingress_hook.into(),
            xdp_mode: a.xdp_mode.into(),
            listen: a.listen,
            web_config,
            capacity: a.max_flows,
            half_open_budget,
            timeouts: a.timeouts.timeouts().map_err(ConfigError::Invalid)?,
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
            kernel_log: a.kernel_log.into(),
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
                    level: a.container_labels.into(),
                    resync: positive("--container-resync", a.container_resync)?,
                    host_root: a.host_root.clone(),
                })
            } else {
                None
            },
        })
    }
}

impl FlowsArgs {
    /// The listing these flags ask for.
    pub fn query(&self) -> flows::Query {
        flows::Query {
            pin_dir: self.pins.pin_dir.clone(),
            json: self.json,
            state: self.filter.state.clone(),
            port: self.filter.port,
            address: self.filter.address,
            older_than: self.filter.older_than.map(|d| d.0),
            destination: self.filter.destination,
            container: self.containers.container.clone(),
            pod: self.containers.pod.clone(),
        }
    }
}

impl LeaksArgs {
    /// The report these flags ask for.
    pub fn query(&self) -> leaks::Query {
        leaks::Query {
            pin_dir: self.pins.pin_dir.clone(),
            json: self.json,
            older_than: self.older_than.map(|d| d.0),
            container: self.containers.container.clone(),
            pod: self.containers.pod.clone(),
        }
    }
}

/// A duration as the flags write it (`500ms`, `3s`, `2m`).
pub fn parse_duration(s: &str) -> Result<time::Duration, String> {
    s.parse::<Duration>().map(|d| d.0)
}

impl ReplayArgs {
    /// The replay these flags ask for.
    pub fn request(&self) -> Result<Request, ReplayError> {
        let a = self;
        if a.max_flows == 0 {
            return Err(ReplayError::Usage("--max-flows must be at least 1".into()));
        }
        let budget = a.half_open_budget.unwrap_or((a.max_flows / 4).max(1));
        if budget == 0 || budget > a.max_flows {
            return Err(ReplayError::Usage(format!(
                "--half-open-budget must be between 1 and --max-flows ({}), not {budget}",
                a.max_flows
            )));
        }
        let positive = |name: &str, d: Duration| positive(name, d).map_err(ReplayError::Usage);
        let options = Options {
            cfg: tcpstate_common::maps::Config {
                capacity: u64::from(a.max_flows),
                half_open_budget: u64::from(budget),
                log_events: 0,
                // A capture is replayed as tap mode sees it: one scope, no container mode.
                scopes: 1,
                transit_check: 0,
                // The replay keeps its flows in a process-local hash map, not the slot table.
                slots: 0,
                seed: [0; 5],
            },
            timeouts: a.timeouts.timeouts().map_err(ReplayError::Usage)?,
            sweep_interval: positive("--sweep-interval", a.sweep_interval)?,
        };
        Ok(Request {
            file: a.file.clone(),
            options,
            at: a
                .at
                .as_deref()
                .map(parse_at)
                .transpose()?
                .unwrap_or(At::LastFrame),
            json: a.json,
            metrics: a.metrics,
            state: a.filter.state.clone(),
            port: a.filter.port,
            address: a.filter.address,
            older_than: a.filter.older_than.map(|d| d.0),
            destination: a.filter.destination,
            close_wait_leak_after: a.close_wait_leak_after.0,
            port_labels: a.port_labels,
        })
    }
}

fn parse_at(s: &str) -> Result<At, ReplayError> {
    if let Some(d) = s.strip_prefix('+') {
        let d = parse_duration(d).map_err(|e| ReplayError::Usage(format!("--at {s}: {e}")))?;
        return Ok(At::After(d.as_nanos() as u64));
    }
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(At::Absolute((secs * 1e9) as u64)),
        _ => Err(ReplayError::Usage(format!(
            "--at {s:?} is not a time: write Unix seconds (1764655200.5) or +DURATION after the last frame (+2m)"
        ))),
    }
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
