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

/// A duration as Prometheus and humantime write them: `500ms`, `60s`, `2m`, `1h30m`, `5d`, `1w`,
/// and one decimal fraction (`1.5s`, `0.5h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub time::Duration);

/// The spellings a bad duration's error names.
const DURATION_FORMS: &str = "500ms, 60s, 1.5s, 2m, 1h30m or 5d (units ms, s, m, h, d, w)";

impl FromStr for Duration {
    type Err = String;
    /// humantime parses the compound forms (`1h30m`, `1h 30m`) with the units Prometheus uses;
    /// it takes no fractions, which Prometheus does not either, but `1.5s` reads naturally, so
    /// one number with a decimal point and one unit is read here, the unit's length from
    /// humantime. (go-parse-duration has fractions but no `d`; duration-str pulls in a parser
    /// combinator library for the same result.)
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a duration: write it like {DURATION_FORMS}");
        if s.is_empty() || s.starts_with(['+', '-']) {
            return Err(bad());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{s:?} has no unit: write it like {s}s or {s}m (or 500ms, 1.5s, 1h30m, 5d)"
            ));
        }
        let digits = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(digits);
        if number.contains('.') {
            if !unit.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(bad());
            }
            let n: f64 = number.parse().map_err(|_| bad())?;
            let one = humantime::parse_duration(&format!("1{unit}")).map_err(|_| bad())?;
            return time::Duration::try_from_secs_f64(n * one.as_secs_f64())
                .map(Duration)
                .map_err(|_| bad());
        }
        humantime::parse_duration(s)
            .map(Duration)
            .map_err(|_| bad())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// What `--state` accepts, our names (tcpstate_connections' `state` label, `flows --json`), in
/// the order a connection goes through them.
pub const STATE_NAMES: [&str; 10] = [
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait1",
    "fin_wait2",
    "close_wait",
    "closing",
    "last_ack",
    "time_wait",
    "closed",
];

/// A state as any of the tools an operator has at hand writes it, to our name: ours
/// (`close_wait`), ss's (`close-wait`, `syn-recv`, `fin-wait-1`), conntrack's and the kernel's
/// (`CLOSE_WAIT`, `SYN_RECV`, `CLOSE`), RFC 9293's (`SYN-RECEIVED`); case and `-`/`_` ignored.
pub fn state_name(s: &str) -> Option<&'static str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let s = squash(s.trim());
    let s = match s.as_str() {
        "synrcvd" | "synreceived" => "synrecv",
        // How ss prints it in its State column.
        "estab" => "established",
        // conntrack's name for a closed connection.
        "close" => "closed",
        other => other,
    };
    STATE_NAMES.iter().copied().find(|n| squash(n) == s)
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
        let capacity6 = a
            .max_ipv6_flows
            .unwrap_or((a.max_flows / 8).max(1024).min(a.max_flows));
        if capacity6 == 0 || capacity6 > a.max_flows {
            return Err(ConfigError::Invalid(format!(
                "--max-ipv6-flows must be between 1 and --max-flows ({}), not {capacity6}",
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
            metrics_path: crate::exporter::server::metrics_path(&a.telemetry_path)
                .map_err(ConfigError::Invalid)?,
            web_config,
            capacity: a.max_flows,
            capacity6,
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
                // The replay keeps its flows in a process-local hash map, not the slot tables.
                slots4: 0,
                slots6: 0,
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

    fn run_config(args: &[&str]) -> RunConfig {
        let argv = ["tcpstate", "run"].iter().chain(args);
        use clap::Parser;
        let super::super::Command::Run(run) =
            super::super::Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("not run")
        };
        run.config().unwrap()
    }

    #[test]
    fn a_reload_applies_the_leak_threshold_and_port_labels() {
        let running = run_config(&[]);
        let new = run_config(&["--close-wait-leak-after", "30s", "--port-labels", "8"]);
        let changed: Vec<String> = running
            .reload(&new)
            .unwrap()
            .iter()
            .map(|c| format!("{} {} -> {}", c.name, c.from, c.to))
            .collect();
        assert_eq!(
            changed,
            ["close_wait_leak_after 60s -> 30s", "port_labels 32 -> 8"]
        );
        assert_eq!(running.reload(&run_config(&[])), Ok(vec![]));
    }

    #[test]
    fn a_reload_that_changes_anything_else_names_it() {
        let running = run_config(&["--containers"]);
        for (args, flag) in [
            (&["--containers", "--max-flows", "5"][..], "--max-flows"),
            (&["--containers", "--time-wait", "30s"], "--time-wait"),
            (&["--containers", "--listen", ":9100"], "--listen"),
            (
                &["--containers", "--web.telemetry-path", "/m"],
                "--web.telemetry-path",
            ),
            (
                &["--containers", "--container-resync", "5s"],
                "--container-resync",
            ),
            (&["--close-wait-leak-after", "30s"], "--containers"),
        ] {
            assert_eq!(running.reload(&run_config(args)), Err(flag), "{args:?}");
        }
    }

    #[test]
    fn states_parse_in_ss_conntrack_and_our_spellings() {
        for (spellings, want) in [
            (
                &[
                    "close-wait",
                    "CLOSE_WAIT",
                    "close_wait",
                    "closewait",
                    "Close-Wait",
                ][..],
                "close_wait",
            ),
            (
                &["syn-recv", "SYN_RECV", "syn_rcvd", "SYN-RECEIVED"],
                "syn_recv",
            ),
            (
                &["fin-wait-1", "fin_wait1", "FIN_WAIT_1", "finwait1"],
                "fin_wait1",
            ),
            (&["fin-wait-2", "FIN_WAIT2"], "fin_wait2"),
            (&["time-wait", "TIME_WAIT", "timewait"], "time_wait"),
            (&["syn-sent", "SYN_SENT"], "syn_sent"),
            (&["last-ack", "LAST_ACK"], "last_ack"),
            (&["ESTABLISHED", "ESTAB", "estab"], "established"),
            (&["closing", "CLOSING"], "closing"),
            (&["closed", "CLOSE", "close"], "closed"),
        ] {
            for s in spellings {
                assert_eq!(state_name(s), Some(want), "{s}");
            }
        }
        for bad in ["listen", "fin-wait", "wait", ""] {
            assert_eq!(state_name(bad), None, "{bad:?}");
        }
    }

    /// Every state the filter can match has a name here, and every name here is a state's.
    #[test]
    fn state_names_are_the_states() {
        let mut ours: Vec<&str> = std::iter::once(tcpstate_common::TcpState::Closed)
            .chain(tcpstate_common::TcpState::OPEN)
            .map(|t| t.name())
            .collect();
        let mut listed = STATE_NAMES.to_vec();
        ours.sort();
        listed.sort();
        assert_eq!(ours, listed);
    }

    fn parse(s: &str) -> Result<time::Duration, String> {
        s.parse::<Duration>().map(|d| d.0)
    }

    #[test]
    fn durations_parse_in_prometheus_and_humantime_spellings() {
        let secs = time::Duration::from_secs;
        for (text, want) in [
            ("60s", secs(60)),
            ("130s", secs(130)),
            ("65s", secs(65)),
            ("2m", secs(120)),
            ("5d", secs(432_000)),
            ("10s", secs(10)),
            ("1s", secs(1)),
            ("1h30m", secs(5400)),
            ("1h 30m", secs(5400)),
            ("1w", secs(7 * 86_400)),
            ("500ms", time::Duration::from_millis(500)),
            ("1.5s", time::Duration::from_millis(1500)),
            ("0.5h", secs(1800)),
            ("0s", secs(0)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn a_bad_duration_is_one_line_naming_the_accepted_forms() {
        for bad in [
            "90", "3x", "s", "", "1.5", "1.5.5s", "-3s", "1.5h30m", "1e3s", "abc",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
            assert!(e.contains("1h30m") && e.contains("500ms"), "{bad:?}: {e}");
        }
        assert!(parse("90").unwrap_err().contains("no unit"));
    }
}
