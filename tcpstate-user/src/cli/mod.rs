//! Command-line surface (clap): the raw arguments, and ([`settings`]) what they become.

pub mod generate;
pub mod settings;

use std::{ffi::OsStr, path::PathBuf};

use clap::{
    builder::{PossibleValue, TypedValueParser},
    error::{ContextKind, ContextValue, ErrorKind},
    Args, Parser, Subcommand, ValueEnum,
};

pub use settings::Duration;

use crate::exporter::server::Listen;

/// `tcpstate --version`: the facts `tcpstate_build_info` carries.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nrevision: ",
    env!("TCPSTATE_REVISION"),
    "\nrustc: ",
    env!("TCPSTATE_RUSTC"),
    "\naya: ",
    env!("TCPSTATE_AYA"),
);

#[derive(Debug, Parser)]
#[command(
    name = "tcpstate",
    version,
    long_version = LONG_VERSION,
    about = "Mirror every TCP connection's state in the kernel (XDP + TC) and export it to Prometheus"
)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace), or a tracing directive.
    #[arg(
        long,
        visible_alias = "log.level",
        global = true,
        env = "TCPSTATE_LOG",
        default_value = "info"
    )]
    pub log: String,
    /// Log line format: logfmt (node_exporter's), json (one object a line) or text (tracing's
    /// human format, coloured on a terminal). Default: text when stderr is a terminal, logfmt
    /// otherwise (journald, files). Colour only on a terminal and without NO_COLOR.
    #[arg(
        long = "log.format",
        global = true,
        env = "TCPSTATE_LOG_FORMAT",
        value_enum
    )]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing RunArgs would only add noise"
)]
pub enum Command {
    /// Load and attach the kernel programs and serve /metrics until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// List the tracked flows of a running daemon, with both endpoints' states and ages.
    Flows(FlowsArgs),
    /// CLOSE_WAIT endpoints stuck past a threshold, by port and owning process. Exit code 1 when
    /// there are leaks, 0 when none (for scripts and cron), 2 on errors.
    Leaks(LeaksArgs),
    /// Remove the pinned maps a daemon left behind (programs detach when the daemon exits).
    Cleanup(PinArgs),
    /// Print every metric the daemon exports (an idle daemon's /metrics), without loading anything.
    DescribeMetrics(DescribeArgs),
    /// Run the state machine over a capture file (pcap or pcapng) as tap mode would, offline and
    /// without privileges: each flow's final states, handshake, resets and history.
    Replay(ReplayArgs),
    /// The man page or shell completions, from these definitions (what the .deb ships).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `ts=... level=info target=... msg="..." key=value`.
    Logfmt,
    /// One JSON object a line.
    Json,
    /// tracing's human format.
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A program on ingress and TC on egress: counts local endpoints (comparable to `ss -tan`).
    Host,
    /// Ingress only, on a port that sees both directions (mirror port, lo): counts both endpoints.
    Tap,
}

/// The hook that sees arriving segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IngressHook {
    /// TC (TCX) ingress: sees the packet after the driver built its skb, GRO aggregates as one,
    /// and changes nothing about the datapath. Measured on veth: bulk TCP keeps its throughput,
    /// where attaching any XDP program costs three quarters of it (the driver copies every
    /// multi-buffer packet for XDP).
    Tc,
    /// XDP: runs before the skb exists, on every wire packet (see --xdp-mode).
    Xdp,
}

/// What the kernel programs log through aya-log (rare events only: invalid segments at debug,
/// accepted RSTs at info, untracked flows at warn). Printed if `--log` lets the target
/// `tcpstate::kernel` through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum KernelLog {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// How much of a container's naming the series keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelLevelArg {
    /// namespace, pod and container.
    Full,
    /// Kubernetes pods folded into their namespace (pod=""); standalone containers keep their
    /// container label.
    Namespace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode where the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// As exported in container mode (`run --containers`): per-endpoint families carry
    /// namespace, pod and container, and the container families appear.
    #[arg(long)]
    pub containers: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory under bpffs where the daemon pins its maps.
    #[arg(long, env = "TCPSTATE_PIN_DIR", default_value = "/sys/fs/bpf/tcpstate")]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to watch; repeat for several. Default: every interface of the namespace, `lo`
    /// included, followed as interfaces come and go (a bridge's ports, a bond's members and a
    /// VLAN or macvlan on a watched device are left to the device that sees their segments once).
    #[arg(
        long = "iface",
        short = 'i',
        env = "TCPSTATE_IFACE",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,
    /// Interfaces never watched, as shell globs (`veth*`, `cali?*`); repeat for several. For hosts
    /// with thousands of interfaces, or links whose traffic is not wanted.
    #[arg(
        long = "exclude-iface",
        env = "TCPSTATE_EXCLUDE_IFACE",
        value_delimiter = ','
    )]
    pub exclude_ifaces: Vec<String>,
    /// host: ingress + TC egress; tap: ingress only, both directions on one port. `lo` is always tap.
    #[arg(long, env = "TCPSTATE_MODE", value_enum, default_value = "host")]
    pub mode: Mode,
    /// Hook for arriving segments.
    #[arg(long, env = "TCPSTATE_INGRESS_HOOK", value_enum, default_value = "tc")]
    pub ingress_hook: IngressHook,
    /// XDP attach mode, with --ingress-hook xdp.
    #[arg(long, env = "TCPSTATE_XDP_MODE", value_enum, default_value = "auto")]
    pub xdp_mode: XdpModeArg,
    /// Address the metrics endpoint listens on: `:PORT` (every address, IPv4 and IPv6),
    /// `HOST:PORT` or `[IPV6]:PORT`.
    #[arg(
        long,
        visible_alias = "web.listen-address",
        env = "TCPSTATE_LISTEN",
        default_value = ":9477"
    )]
    pub listen: Listen,
    /// Path the metrics are served at (the probes /-/healthy and /-/ready and the landing page /
    /// keep theirs).
    #[arg(
        long = "web.telemetry-path",
        env = "TCPSTATE_TELEMETRY_PATH",
        default_value = "/metrics"
    )]
    pub telemetry_path: String,
    /// Prometheus exporter-toolkit web config (YAML, as node_exporter's --web.config.file): TLS,
    /// client certificates, basic auth users with bcrypt hashes, response headers. Re-read when
    /// it or a certificate it names changes.
    #[arg(long, visible_alias = "web.config.file", env = "TCPSTATE_WEB_CONFIG")]
    pub web_config: Option<PathBuf>,
    /// Flows the kernel tables hold at most. IPv4 flows live in a table sized for this many
    /// (128 bytes of kernel memory a flow), the others in one of their own (--max-ipv6-flows).
    #[arg(long, env = "TCPSTATE_MAX_FLOWS", default_value_t = 131_072)]
    pub max_flows: u32,
    /// Of those, IPv6 flows (and any other that is not IPv4 at both ends) at most: the size of
    /// their own table (171 bytes a flow). Default: an eighth of --max-flows, at least 1024.
    #[arg(long, env = "TCPSTATE_MAX_IPV6_FLOWS")]
    pub max_ipv6_flows: Option<u32>,
    /// Flows in the handshake (SYN seen, not yet established) the table holds at most, so a SYN
    /// flood cannot crowd out established flows. Default: a quarter of --max-flows.
    #[arg(long, env = "TCPSTATE_HALF_OPEN_BUDGET")]
    pub half_open_budget: Option<u32>,
    /// CLOSE_WAIT age past which an endpoint counts as leaked (tcpstate_close_wait_leaked).
    /// Reloaded on SIGHUP.
    #[arg(long, env = "TCPSTATE_CLOSE_WAIT_LEAK_AFTER", default_value = "60s")]
    pub close_wait_leak_after: Duration,
    /// Most ports given their own `port` label, and most destinations their own `destination`
    /// label (per namespace); the others are reported as port="other" / destination="other".
    /// Reloaded on SIGHUP.
    #[arg(long, env = "TCPSTATE_PORT_LABELS", default_value_t = 32)]
    pub port_labels: usize,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// How often the background walk expires flows and refreshes ages. A walk that takes long (a
    /// huge table) stretches the pause so the walk uses at most an eightieth of one CPU (0.75 s a
    /// minute).
    #[arg(long, env = "TCPSTATE_SWEEP_INTERVAL", default_value = "1s")]
    pub sweep_interval: Duration,
    /// Kernel-side log level (aya-log). Off costs nothing: the verifier prunes the log code.
    #[arg(long, env = "TCPSTATE_KERNEL_LOG", value_enum, default_value = "off")]
    pub kernel_log: KernelLog,
    /// Do not seed the table from the kernel's socket table at start-up.
    #[arg(long, env = "TCPSTATE_NO_SEED")]
    pub no_seed: bool,
    /// Container mode: besides the interfaces above, watch every container network namespace on
    /// the host (Docker, podman, Kubernetes pods) through the host-side end of its veths, and label
    /// per-endpoint series with namespace, pod and container.
    #[arg(long, env = "TCPSTATE_CONTAINERS")]
    pub containers: bool,
    /// Container namespaces watched at most (container mode); more are refused and counted in
    /// tcpstate_containers_refused_total.
    #[arg(long, env = "TCPSTATE_MAX_CONTAINERS", default_value_t = 256)]
    pub max_containers: u32,
    /// TOML file of labels that win over the runtime's names (container mode):
    /// `[[container]]` entries with `match` (container id prefix, netns mount name or
    /// netns-INODE) and `namespace`/`pod`/`container`. Re-read on SIGHUP.
    #[arg(long, env = "TCPSTATE_CONTAINER_NAMES")]
    pub container_names: Option<PathBuf>,
    /// How much of a container's naming the series keep: full (namespace, pod, container) or
    /// namespace (pods folded into their Kubernetes namespace).
    #[arg(
        long,
        env = "TCPSTATE_CONTAINER_LABELS",
        value_enum,
        default_value = "full"
    )]
    pub container_labels: LabelLevelArg,
    /// How often container mode rereads the host's interfaces and namespaces, besides following
    /// link events (a backstop for missed events, and names for namespaces that had no process yet).
    #[arg(long, env = "TCPSTATE_CONTAINER_RESYNC", default_value = "10s")]
    pub container_resync: Duration,
    /// Where the host's filesystem is, for container runtimes' state (/run/containerd,
    /// /var/lib/docker, /var/lib/containers, /run/containers): `/` on the host, the mount point of
    /// the host's root when tcpstate itself runs in a container.
    #[arg(long, env = "TCPSTATE_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// Preflight: load, attach, verify and detach, then exit 0; or print one line naming what is
    /// missing and exit 2. Serves nothing and pins nothing.
    #[arg(long)]
    pub check: bool,
    /// TOML file with any of these options by their long names or aliases (`iface = ["eth0"]`,
    /// `time-wait = "60s"`, `"web.listen-address" = ":9477"`). Flags and TCPSTATE_* variables take
    /// precedence over it. Re-read on SIGHUP: --close-wait-leak-after, --port-labels and
    /// --container-names apply at once; a change to anything else is refused (restart for it).
    #[arg(long, env = "TCPSTATE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// The sweeper's timeouts: one declaration for `run` and `replay`, so a replay expires flows
/// exactly as the daemon would.
#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// TIME_WAIT lifetime (2*MSL; Linux uses 60s).
    #[arg(long, env = "TCPSTATE_TIME_WAIT", default_value = "60s")]
    pub time_wait: Duration,
    /// SYN_SENT lifetime without an answer (Linux gives up after 127s with tcp_syn_retries=6).
    #[arg(long, env = "TCPSTATE_SYN_SENT_TIMEOUT", default_value = "130s")]
    pub syn_sent_timeout: Duration,
    /// SYN_RECV lifetime without the final ACK (Linux gives up after 63s with tcp_synack_retries=5).
    #[arg(long, env = "TCPSTATE_SYN_RECV_TIMEOUT", default_value = "65s")]
    pub syn_recv_timeout: Duration,
    /// FIN_WAIT_2 lifetime (Linux tcp_fin_timeout: 60s).
    #[arg(long, env = "TCPSTATE_FIN_WAIT2_TIMEOUT", default_value = "60s")]
    pub fin_wait2_timeout: Duration,
    /// Idle time after which FIN_WAIT_1, CLOSING and LAST_ACK are given up.
    #[arg(long, env = "TCPSTATE_CLOSING_TIMEOUT", default_value = "2m")]
    pub closing_timeout: Duration,
    /// Idle time after which an ESTABLISHED flow is dropped (the kernel keeps idle connections
    /// forever; 5 days is conntrack's default).
    #[arg(long, env = "TCPSTATE_ESTABLISHED_IDLE_TIMEOUT", default_value = "5d")]
    pub established_idle_timeout: Duration,
    /// How long a flow whose endpoints are both closed is kept, so late segments are recognized.
    #[arg(long, env = "TCPSTATE_CLOSED_LINGER", default_value = "10s")]
    pub closed_linger: Duration,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Print JSON, one array of flows.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub filter: FlowFilter,
    #[command(flatten)]
    pub containers: ContainerFilter,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// Which flows `flows` and `replay` list.
#[derive(Debug, Args)]
pub struct FlowFilter {
    /// Only flows with an endpoint in this state. ss's and conntrack's spellings work too, in any
    /// case, with `-`, `_` or nothing between the words (close-wait, CLOSE_WAIT, closewait,
    /// syn-recv, fin-wait-1).
    #[arg(long, value_parser = StateParser)]
    pub state: Option<String>,
    /// Only flows with an endpoint on this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only flows with an endpoint at this address.
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,
    /// Only flows with an endpoint in its state for longer than this (e.g. 5m).
    #[arg(long)]
    pub older_than: Option<Duration>,
    /// Only flows whose client connects to this address, and port if given (ADDR, ADDR:PORT,
    /// [IPV6]:PORT): the connections behind one tcpstate_client_ports_in_use series.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub destination: Option<crate::inspect::flows::Destination>,
}

/// `--state`: any spelling [`settings::state_name`] knows, to our name (`close_wait`); `--help`
/// lists our names.
#[derive(Clone, Debug)]
struct StateParser;

impl TypedValueParser for StateParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let text = value.to_string_lossy();
        settings::state_name(&text)
            .map(str::to_string)
            .ok_or_else(|| {
                // clap's own "invalid value" error, with the accepted values.
                let mut e = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
                let arg = arg.map_or_else(|| "--state".to_string(), ToString::to_string);
                e.insert(ContextKind::InvalidArg, ContextValue::String(arg));
                e.insert(ContextKind::InvalidValue, ContextValue::String(text.into()));
                let valid = settings::STATE_NAMES.iter().map(|n| n.to_string());
                e.insert(
                    ContextKind::ValidValue,
                    ContextValue::Strings(valid.collect()),
                );
                e
            })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            settings::STATE_NAMES.iter().map(|n| PossibleValue::new(*n)),
        ))
    }
}

/// Filters by container or pod (container mode).
#[derive(Debug, Args)]
pub struct ContainerFilter {
    /// Only endpoints in this container (its name, or 12+ hex digits of its id).
    #[arg(long)]
    pub container: Option<String>,
    /// Only endpoints in this Kubernetes pod (`NAME` or `NAMESPACE/NAME`).
    #[arg(long)]
    pub pod: Option<String>,
}

#[derive(Debug, Args)]
pub struct LeaksArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// CLOSE_WAIT age past which an endpoint counts as leaked. Default: the running daemon's
    /// --close-wait-leak-after (published in its pinned maps), so this agrees with
    /// tcpstate_close_wait_leaked; 60s if the daemon did not publish one.
    #[arg(long)]
    pub older_than: Option<Duration>,
    #[command(flatten)]
    pub containers: ContainerFilter,
    #[command(flatten)]
    pub pins: PinArgs,
}

/// `tcpstate replay`: the flows filters, the output choice, and the daemon's table and timeout
/// options (same names and defaults as `run`, applied in capture time).
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Capture file (pcap or pcapng, as written by tcpdump -w, dumpcap or tshark); `-` for stdin.
    pub file: PathBuf,
    /// Print the flows as JSON: the objects `tcpstate flows --json` prints, with the replay's
    /// fields added (history, handshake, resets, connections, first_seen, last_seen, segments).
    #[arg(long, conflicts_with = "metrics")]
    pub json: bool,
    /// Print the Prometheus exposition the daemon would have exported at the end of the capture.
    #[arg(long)]
    pub metrics: bool,
    /// The instant the result describes: Unix seconds (1764655200.5), or +DURATION after the last
    /// frame (+2m, to let timeouts run). Frames after it are not replayed. Default: the last frame.
    #[arg(long)]
    pub at: Option<String>,
    #[command(flatten)]
    pub filter: FlowFilter,
    /// Flows the table holds at most (as `run --max-flows`).
    #[arg(long, default_value_t = 131_072)]
    pub max_flows: u32,
    /// Half-open flows the table holds at most. Default: a quarter of --max-flows.
    #[arg(long)]
    pub half_open_budget: Option<u32>,
    /// CLOSE_WAIT age past which an endpoint counts as leaked (in --metrics).
    #[arg(long, default_value = "60s")]
    pub close_wait_leak_after: Duration,
    /// Most ports (and destinations) given their own label (in --metrics).
    #[arg(long, default_value_t = 32)]
    pub port_labels: usize,
    /// The daemon's timeouts, applied in capture time (same names and defaults as `run`).
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Capture time between two expiry sweeps (the daemon's walk cadence).
    #[arg(long, default_value = "1s")]
    pub sweep_interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults are the sweeper's named defaults (what tests and the fuzzer use).
    #[test]
    fn timeout_flag_defaults_are_the_sweepers_defaults() {
        let Command::Run(run) = Cli::try_parse_from(["tcpstate", "run"]).unwrap().command else {
            panic!("not run")
        };
        let t = run.timeouts.timeouts().unwrap();
        let d = crate::background::expiry::Timeouts::DEFAULTS;
        assert_eq!(
            [t.time_wait, t.syn_sent, t.syn_recv, t.fin_wait2],
            [d.time_wait, d.syn_sent, d.syn_recv, d.fin_wait2]
        );
        assert_eq!(
            [t.closing_idle, t.established_idle, t.closed_linger],
            [d.closing_idle, d.established_idle, d.closed_linger]
        );
    }

    /// A replay must expire flows as the daemon does: its timeout defaults are `run`'s.
    #[test]
    fn replay_timeout_defaults_are_the_daemons() {
        // The timeouts themselves are one flattened struct; what each command declares apart must
        // still default alike.
        let Command::Run(run) = Cli::try_parse_from(["tcpstate", "run"]).unwrap().command else {
            panic!("not run")
        };
        let Command::Replay(rp) = Cli::try_parse_from(["tcpstate", "replay", "x.pcap"])
            .unwrap()
            .command
        else {
            panic!("not replay")
        };
        assert_eq!(
            [rp.sweep_interval, rp.close_wait_leak_after],
            [run.sweep_interval, run.close_wait_leak_after]
        );
        assert_eq!(
            (rp.max_flows, rp.port_labels),
            (run.max_flows, run.port_labels)
        );
    }
}
