//! Errors a user can act on. Each message is one line that says what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Preflight {
    #[error("tcpstate needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON (and CAP_SYS_ADMIN while bpffs is not mounted) to load eBPF programs: run it with sudo")]
    NotPrivileged,
    #[error(
        "interface {0:?} does not exist: list interfaces with `ip link` and pass one with --iface"
    )]
    NoSuchInterface(String),
    #[error("interface {0:?} is down: bring it up with `ip link set {0} up`")]
    InterfaceDown(String),
    #[error("interface {iface:?} has link type {arphrd} (ARPHRD), which has neither an Ethernet header nor none: tcpstate cannot parse it; watch the device above or below it instead")]
    LinkType { iface: String, arphrd: u16 },
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux missing): tcpstate needs a kernel built with CONFIG_DEBUG_INFO_BTF")]
    NoBtf,
    #[error("kernel {0} is too old: tcpstate needs Linux 6.6 or newer (TCX, bpf memory allocator, BPF atomics)")]
    KernelTooOld(String),
    #[error("cannot mount bpffs on {path}: {source}; mount it with `mount -t bpf bpf {path}`", path = .path.display())]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the pin directory {path}: {source}; check that bpffs is mounted there and writable by this user", path = .path.display())]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the pinned maps in {dir} ({source}): they belong to another user; run as that user or `chown -R` the directory to this one", dir = .dir.display())]
    PinsUnreadable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("pinned maps in {dir} are from another tcpstate build or --max-containers ({what}): run `tcpstate cleanup` first", dir = .dir.display())]
    IncompatiblePins { dir: PathBuf, what: String },
    #[error("interface {iface:?} already has an XDP program attached (another tool, or a tcpstate still running): detach it with `ip link set {iface} xdp off`, or stop the other tcpstate")]
    XdpBusy { iface: String },
    #[error("interface {iface:?} is already watched by another tcpstate (its TC programs are attached): stop that daemon first, or watch another interface")]
    AlreadyWatched { iface: String },
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("no tcpstate daemon is running (no pinned maps in {dir}): start one with `tcpstate run`", dir = .dir.display())]
    NotRunning { dir: PathBuf },
}
