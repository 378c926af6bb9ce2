//! Loading the kernel programs and pinning their maps ([`crate::bpf::attach`] puts the programs on
//! interfaces). The maps are pinned so that the flows (and their ages) outlive a restart.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{maps::MapInfo, Ebpf, EbpfLoader};
use tcpstate_common::{
    counters::idx,
    durations,
    flow::{FlowKey, FlowRecord},
    maps::{self, Config},
    scope,
    table::Seed,
};
use tracing::info;

use crate::{
    bpf::{attach, carry, kernellog, links, netif},
    error::Preflight,
};

/// What loading the object needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the maps are pinned (under bpffs).
    pub pin_dir: PathBuf,
    /// Flows the tables hold at most, of them flows that are not IPv4 at both ends (their own
    /// table's size), and half-open ones.
    pub capacity: u32,
    pub capacity6: u32,
    pub half_open_budget: u32,
    /// Counter scopes: the host's, and one per container namespace watched at most.
    pub scopes: u32,
    pub kernel_log: kernellog::Level,
    /// Container mode is on (the transit check is then on, whatever the namespace does).
    pub containers: bool,
}

/// The object tcpstate-user's build.rs built with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Checks what loading needs and says in one line what is missing.
/// `ifaces`: the interfaces named with `--iface` (none: every interface is watched).
pub fn preflight(pin_dir: &Path, ifaces: &[String]) -> Result<(), Preflight> {
    if !rustix::process::geteuid().is_root() && !has_bpf_capabilities(pin_dir) {
        return Err(Preflight::NotPrivileged);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Preflight::NoBtf);
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    if let (Some(major), Some(minor)) = (parts.next(), parts.next()) {
        if (major, minor) < (6, 6) {
            return Err(Preflight::KernelTooOld(release.trim().to_string()));
        }
    }
    // Interfaces named with --iface must be there, up, parseable and not another daemon's; with
    // every interface watched, such ones are logged and left out instead.
    let listed = if ifaces.is_empty() {
        Vec::new()
    } else {
        links::list().unwrap_or_default()
    };
    for iface in ifaces {
        if !netif::exists(iface) {
            return Err(Preflight::NoSuchInterface(iface.clone()));
        }
        if !netif::is_up(iface) {
            return Err(Preflight::InterfaceDown(iface.clone()));
        }
        if let Some(l) = listed.iter().find(|l| &l.name == iface) {
            if attach::link_layer(l.link_type).is_none() {
                return Err(Preflight::LinkType {
                    iface: iface.clone(),
                    arphrd: l.link_type,
                });
            }
        }
        if attach::watched_by_tcpstate(iface) {
            return Err(Preflight::AlreadyWatched {
                iface: iface.clone(),
            });
        }
    }
    Ok(())
}

/// The capabilities the kernel needs, measured (deploy/README.md): CAP_BPF (39) for maps and
/// programs, CAP_NET_ADMIN (12) to attach XDP and TC, CAP_PERFMON (38) for the verifier to allow
/// packet-pointer arithmetic; CAP_SYS_ADMIN (21) only to mount bpffs when it is missing.
fn has_bpf_capabilities(pin_dir: &Path) -> bool {
    let eff = effective_capabilities();
    let bpffs_mounted = is_bpffs(pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf")));
    let needed: &[u32] = if bpffs_mounted {
        &[39, 12, 38]
    } else {
        &[39, 12, 38, 21]
    };
    needed.iter().all(|bit| eff & (1 << bit) != 0)
}

/// The effective capability set (CapEff of /proc/self/status), one bit per CAP_* number.
pub fn effective_capabilities() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// What container mode cannot do with the capabilities this process has, in one line each
/// (measured: deploy/README.md). Container mode still counts and attaches without them.
pub fn container_mode_limits() -> Vec<&'static str> {
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    let eff = effective_capabilities();
    let mut out = Vec::new();
    if eff & (1 << CAP_SYS_ADMIN) == 0 {
        out.push("without CAP_SYS_ADMIN container namespaces cannot be entered (setns): they are not seeded at start-up and have no listener or accept-queue figures; grant it to fix");
    }
    if eff & (1 << CAP_SYS_PTRACE) == 0 {
        out.push("without CAP_SYS_PTRACE other processes' /proc/PID/ns/net cannot be opened: containers are found only through namespace bind mounts and named by them, not by their runtime; grant it to fix");
    }
    out
}

/// Mounts bpffs on the pin directory's parent when nothing is mounted there yet (it is not by
/// default on this machine kind), then creates the pin directory.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), Preflight> {
    let root = pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    let err = |source| Preflight::Bpffs {
        path: root.to_path_buf(),
        source,
    };
    if !is_bpffs(root) {
        fs::create_dir_all(root).map_err(err)?;
        rustix::mount::mount("bpf", root, "bpf", rustix::mount::MountFlags::empty(), None)
            .map_err(|e| err(e.into()))?;
        info!(path = %root.display(), "mounted bpffs");
    }
    fs::create_dir_all(pin_dir).map_err(|source| Preflight::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })
}

fn is_bpffs(p: &Path) -> bool {
    // f_type is the kernel's long: i64 on 64-bit targets, narrower elsewhere.
    #[allow(clippy::unnecessary_cast, reason = "a no-op on 64-bit targets")]
    rustix::fs::statfs(p).is_ok_and(|st| st.f_type as i64 == BPF_FS_MAGIC)
}

/// Refuses pinned counter maps whose size differs from what this run would create: the kernel
/// would otherwise run the new programs against the old layout. (The flow table is looked at by
/// [`carry::inspect`], which carries its flows over when the size differs.)
fn check_pins(cfg: &Settings) -> Result<(), Preflight> {
    let sized = |name: &str, want: u32, what: &str| -> Result<(), Preflight> {
        match MapInfo::from_pin(cfg.pin_dir.join(name)) {
            Ok(info) if info.max_entries() != want => Err(Preflight::IncompatiblePins {
                dir: cfg.pin_dir.clone(),
                what: format!(
                    "{} {what} where this build and --containers/--max-containers need {want}",
                    info.max_entries(),
                ),
            }),
            _ => Ok(()),
        }
    };
    sized(maps::COUNTERS, idx::COUNT, "per-CPU counter slots")?;
    sized(
        maps::SCOPE_COUNTERS,
        idx::COUNT * cfg.scopes,
        "scope counter slots",
    )?;
    // Pinned by a build that kept every scope's counters per CPU: counters of another size.
    let counters = cfg.pin_dir.join(maps::COUNTERS);
    if counters.exists() && !cfg.pin_dir.join(maps::SCOPE_COUNTERS).exists() {
        return Err(Preflight::IncompatiblePins {
            dir: cfg.pin_dir.clone(),
            what: "per-scope counters in the per-CPU array, which this build keeps apart".into(),
        });
    }
    Ok(())
}

/// Whether segments on host-mode interfaces are checked for being the host's own (see
/// `Config::transit_check`): when the host forwards (a router, a NAT gateway, a container or VM
/// host: its interfaces carry traffic that is nobody's here), or containers are watched.
///
/// Read once, at load: turning forwarding on later (a container runtime starting after the
/// daemon) takes a restart of the daemon to be seen. On, a flow first seen arriving is the host's
/// when a socket owns it or its destination is a local address (the kernel programs ask the socket
/// and routing tables), transit otherwise.
fn transit_check(cfg: &Settings) -> bool {
    let forwarding = netif::forwarding();
    if forwarding {
        info!("this namespace forwards IP: segments that reach no local socket are not counted");
    }
    cfg.containers || forwarding
}

/// A loaded object and what it was loaded with.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// The flow table's hash key.
    pub seed: Seed,
    /// Flows of an earlier run's table this run could not map as it was, to insert into the new
    /// one ([`carry::Pinned::Carry`]).
    pub carried: Vec<(FlowKey, FlowRecord)>,
}

/// Loads the object with this run's configuration, reusing maps pinned by an earlier run.
pub fn load(cfg: &Settings) -> anyhow::Result<Loaded> {
    ensure_bpffs(&cfg.pin_dir)?;
    check_pins(cfg)?;
    let slots = carry::Sizes::for_capacity(cfg.capacity, cfg.capacity6);
    let (seed, carried) = match carry::inspect(&cfg.pin_dir, slots)? {
        carry::Pinned::Reuse { seed } => (seed, Vec::new()),
        carry::Pinned::Nothing => (carry::new_seed()?, Vec::new()),
        carry::Pinned::Carry { flows } => (carry::new_seed()?, flows),
    };
    let scopes = cfg.scopes;
    let config = Config {
        capacity: cfg.capacity as u64,
        slots4: slots.v4 as u64,
        slots6: slots.v6 as u64,
        seed,
        half_open_budget: cfg.half_open_budget as u64,
        log_events: u64::from(cfg.kernel_log != kernellog::Level::Off),
        scopes: scopes as u64,
        transit_check: u64::from(transit_check(cfg)),
    };
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&cfg.pin_dir)
        .map_max_entries(maps::FLOWS4, slots.v4)
        .map_max_entries(maps::FLOWS6, slots.v6)
        // Counters and the daemon's books per scope; a container may have several veths.
        .map_max_entries(maps::COUNTERS, idx::COUNT)
        .map_max_entries(maps::SCOPE_COUNTERS, idx::COUNT * scopes)
        .map_max_entries(maps::USER, scopes)
        .map_max_entries(durations::DURATIONS, durations::entries(scopes))
        .map_max_entries(scope::SCOPE_INFO, scopes)
        .map_max_entries(scope::SCOPES, (4 * scopes).max(64))
        .override_global(maps::CONFIG, &config, true)
        // aya-log's gate in every kernel log site; 0 (off) lets the verifier drop them all.
        .override_global(aya_log::LEVEL, &(cfg.kernel_log as u8), true)
        .load(OBJECT)?;
    let mut ebpf = ebpf;
    crate::bpf::tables::publish_seed(&mut ebpf, &seed)?;
    Ok(Loaded {
        ebpf,
        seed,
        carried,
    })
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    /// A bounds check the compiler could not remove leaves a call into core::panicking, which the
    /// verifier refuses as "last insn is not an exit or jmp" when the program is loaded: on the
    /// first interface of that kind, at run time. Caught here, on the host, instead. (It happened:
    /// an uninlined `array::map` in the IPv6 step once the parser had a second caller.)
    #[test]
    fn the_kernel_object_has_no_panic_paths() {
        let file = object::File::parse(super::OBJECT).expect("the embedded object is an ELF file");
        let panics: Vec<String> = file
            .symbols()
            .filter_map(|s| s.name().ok().map(str::to_string))
            .filter(|n| n.contains("panicking") || n.contains("panic_"))
            .collect();
        assert!(
            panics.is_empty(),
            "the kernel object calls panic paths the verifier will refuse: {panics:?}"
        );
        assert!(
            file.symbols()
                .any(|s| s.name() == Ok("tcpstate_tc_ingress_l3")),
            "the object's symbols are readable (the check above saw them)"
        );
    }

    /// aya-ebpf's `memcpy`, `memmove` and `memset` copy one byte per loop iteration, about seven
    /// instructions a byte, and a struct copy or a run of adjacent stores can compile to a call
    /// of one (see `tcpstate_common::words`). Only kernel logging, off unless asked for, may call
    /// them: a call anywhere else is on a packet's path.
    #[test]
    fn only_kernel_logging_calls_the_byte_at_a_time_copies() {
        const BYTEWISE: [&str; 3] = ["memcpy", "memmove", "memset"];
        let file = object::File::parse(super::OBJECT).expect("the embedded object is an ELF file");
        let mut callers = Vec::new();
        let mut seen = 0;
        for section in file.sections() {
            // The functions of this section, to name the one each call sits in.
            let functions: Vec<(u64, u64, String)> = file
                .symbols()
                .filter(|s| s.section_index() == Some(section.index()) && s.size() > 0)
                .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
                .collect();
            for (offset, reloc) in section.relocations() {
                let RelocationTarget::Symbol(i) = reloc.target() else {
                    continue;
                };
                let Ok(target) = file
                    .symbol_by_index(i)
                    .and_then(|s| s.name().map(str::to_string))
                else {
                    continue;
                };
                if !BYTEWISE.contains(&target.as_str()) {
                    continue;
                }
                seen += 1;
                let caller = functions
                    .iter()
                    .find(|(at, size, _)| (*at..at + size).contains(&offset))
                    .map_or("?", |(_, _, name)| name.as_str());
                if !caller.contains("log_event") {
                    callers.push(format!("{target} in {caller}"));
                }
            }
        }
        assert!(
            callers.is_empty(),
            "byte-at-a-time copies on a packet's path (copy a word at a time with \
             tcpstate_common::words): {callers:?}"
        );
        assert!(
            seen > 0,
            "the object's calls are readable (kernel logging's copies were not found)"
        );
    }
}
