//! Network namespaces: finding them, holding them open, and running code inside one.
//!
//! A namespace is known by its nsfs identity (device and inode of `/proc/PID/ns/net`), never by a
//! pid, which the kernel reuses. While it is watched the daemon holds a descriptor of it, so the
//! namespace cannot be freed and its identity recycled under a scope.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// A namespace's identity: what `stat` says of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    pub fn of(path: &Path) -> io::Result<NetnsId> {
        let m = std::fs::metadata(path)?;
        Ok(NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The namespace this process (its main thread) lives in.
    pub fn own() -> io::Result<NetnsId> {
        NetnsId::of(Path::new("/proc/thread-self/ns/net"))
    }
}

/// A namespace some process or bind mount holds, as found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: NetnsId,
    /// A path that opens it: a bind mount (`/run/netns/NAME`: podman, CNI, `ip netns`) if there
    /// is one, else `/proc/PID/ns/net`.
    pub path: PathBuf,
    /// Processes inside it, lowest first (for naming: their cgroups name the container).
    pub pids: Vec<u32>,
    /// The bind mount's name, if any (`netns-3f2a...` for podman, `cni-...` for CRI).
    pub mount_name: Option<String>,
}

/// Directories where runtimes bind-mount the namespaces they create (iproute2, podman/netavark,
/// CNI plugins under containerd and CRI-O). A namespace is often created, and its veth with it,
/// before any process runs inside it: only the mount finds it that early.
pub const MOUNT_DIRS: &[&str] = &["/run/netns", "/var/run/netns", "/run/docker/netns"];

/// Every network namespace on the host other than `own`, found through bind mounts and through
/// `/proc/*/ns/net`. Entries that vanish while being read are skipped: namespaces come and go.
pub fn candidates(own: NetnsId) -> Vec<Candidate> {
    let mut found: BTreeMap<NetnsId, Candidate> = BTreeMap::new();
    let mut seen_dirs = Vec::new();
    for dir in MOUNT_DIRS {
        // /var/run is usually a link to /run: read each directory once.
        let Ok(real) = std::fs::canonicalize(dir) else {
            continue;
        };
        if seen_dirs.contains(&real) {
            continue;
        }
        seen_dirs.push(real.clone());
        let Ok(entries) = std::fs::read_dir(&real) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(id) = NetnsId::of(&path) else { continue };
            // A mount point whose namespace is gone (or a plain file) is on another filesystem.
            if id == own || !is_nsfs(&path) {
                continue;
            }
            found.entry(id).or_insert_with(|| Candidate {
                id,
                path,
                pids: Vec::new(),
                mount_name: e.file_name().to_str().map(str::to_string),
            });
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found.into_values().collect();
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(id) = NetnsId::of(&path) else { continue };
        if id == own {
            continue;
        }
        found
            .entry(id)
            .or_insert_with(|| Candidate {
                id,
                path: path.clone(),
                pids: Vec::new(),
                mount_name: None,
            })
            .pids
            .push(pid);
    }
    let mut out: Vec<Candidate> = found.into_values().collect();
    for c in &mut out {
        c.pids.sort_unstable();
    }
    out
}

fn is_nsfs(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // f_type is the kernel's long: i64 on 64-bit targets, narrower elsewhere.
    #[allow(clippy::unnecessary_cast, reason = "a no-op on 64-bit targets")]
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as i64 == NSFS_MAGIC)
}

/// An open namespace: while this descriptor lives the namespace does too.
#[derive(Debug)]
pub struct Netns {
    pub id: NetnsId,
    pub file: File,
}

impl Netns {
    /// Opens the namespace at `path` and checks it is still the one expected (a pid's namespace
    /// can change between reading and opening).
    pub fn open(path: &Path, expect: NetnsId) -> io::Result<Netns> {
        let file = File::open(path)?;
        let m = file.metadata()?;
        let id = NetnsId {
            dev: m.dev(),
            ino: m.ino(),
        };
        if id != expect {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is now another namespace", path.display()),
            ));
        }
        Ok(Netns { id, file })
    }

    /// Runs `f` on a thread that has entered this namespace (setns(2) changes only the calling
    /// thread, so the daemon's own threads stay where they are). Sockets `f` opens belong to the
    /// namespace and keep belonging to it after the thread ends.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // setns(2) on this thread only, with a namespace descriptor we hold open.
                rustix::thread::move_into_link_name_space(
                    fd,
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("a thread inside a namespace panicked"))?
        })
    }
}

/// The id this namespace (the daemon's) gives another one (`RTM_GETNSID`), the number a veth's
/// `IFLA_LINK_NETNSID` names its peer's namespace by. `None` when none is assigned: no link
/// joins the two namespaces. Asking does not assign one.
pub fn nsid_of(ns: &File) -> io::Result<Option<i32>> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::{
        nsid::{NsidAttribute, NsidMessage},
        RouteNetlinkMessage,
    };
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetNsId(msg)),
    );
    req.finalize();
    let reply = crate::bpf::links::request(&req)?;
    for m in reply {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                for a in m.attributes {
                    if let NsidAttribute::Id(id) = a {
                        return Ok((id >= 0).then_some(id));
                    }
                }
            }
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            _ => {}
        }
    }
    Ok(None)
}
