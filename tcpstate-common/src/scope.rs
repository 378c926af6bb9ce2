//! Scopes: one per watched network namespace (container mode), 0 for the host.
//!
//! The kernel learns a segment's scope from the interface it crossed: the daemon fills
//! [`SCOPES`] (ifindex -> scope) for the host-side end of each container's veth before it attaches
//! the container programs there, and the host programs use [`HOST`] without a lookup. For an
//! ifindex below [`DIRECT_IFINDEXES`] (every interface of a host that has not made tens of
//! thousands of them) the programs read the scope from [`IFACE_SCOPES`] instead, an array indexed
//! by the ifindex: the verifier turns that lookup into a bounds check and an address, where the
//! hash map's is a hash and a bucket walk, on every segment a container sends or receives. Every
//! counter has one slot per scope (`scope * idx::COUNT + slot`), so per-container gauges and
//! counters cost the scrape one batched read, whatever the number of flows.
//!
//! [`ScopeInfo`] is the daemon's record of what each scope is (the namespace's inode, its labels),
//! pinned with the table so a restarted daemon gives each namespace the scope it had, and so
//! `tcpstate flows` / `tcpstate leaks` can name a flow's container without asking the daemon.

/// The host's own namespace: host- and tap-mode interfaces.
pub const HOST: u32 = 0;

/// Map names (object file and pin directory).
pub const SCOPES: &str = "TCPSTATE_SCOPES";
pub const IFACE_SCOPES: &str = "TCPSTATE_IFACE_SCOPES";

/// Interfaces whose scope the programs read from [`IFACE_SCOPES`], by ifindex (256 KiB of map).
/// [`SCOPES`] holds every container interface, and is what the programs read for the others: a
/// host's ifindexes only grow, by one or two for each container it ever started.
pub const DIRECT_IFINDEXES: u32 = 65_536;

/// Where the programs read an interface's scope: its index in [`IFACE_SCOPES`], or `None` for an
/// ifindex they look up in [`SCOPES`]. In [`IFACE_SCOPES`], 0 ([`HOST`], never a container
/// interface's scope) means none.
#[inline(always)]
pub const fn direct_index(ifindex: u32) -> Option<u32> {
    if ifindex < DIRECT_IFINDEXES {
        Some(ifindex)
    } else {
        None
    }
}
pub const SCOPE_INFO: &str = "TCPSTATE_SCOPE_INFO";

/// Bytes for each label value in [`ScopeInfo`]. Kubernetes namespace names are at most 63 bytes;
/// pod names may be longer (253) and are cut here, which keeps the record a fixed size.
pub const LABEL_BYTES: usize = 128;
/// Bytes for the container id (64 hex digits for every runtime named in the README).
pub const ID_BYTES: usize = 64;

/// [`ScopeInfo::state`] values.
pub mod state {
    /// Never used, or released: free to give to a new namespace.
    pub const FREE: u32 = 0;
    /// A watched namespace.
    pub const ACTIVE: u32 = 1;
    /// The namespace is gone; its flows are being removed and its counters kept out of the
    /// exposition until the slot is reused.
    pub const RETIRED: u32 = 2;
    /// Watched and counted, but not named yet: a container runtime made the namespace (and its
    /// veth) before the container's first process, whose cgroup names it. Its series are held
    /// back until then, so they never appear under a provisional name that is later replaced.
    pub const PENDING: u32 = 3;
}

/// What a scope is. Written only by the daemon; byte strings are NUL-padded UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ScopeInfo {
    /// The namespace's inode number (`stat /proc/PID/ns/net`) and the nsfs device: the identity
    /// that survives restarts and never names a reused pid.
    pub netns_ino: u64,
    pub netns_dev: u64,
    /// [`state`] value.
    pub state: u32,
    /// Which labels are set: bit 0 namespace, bit 1 pod, bit 2 container.
    pub labelled: u32,
    /// CLOCK_MONOTONIC nanoseconds of the last change of `state`.
    pub since_ns: u64,
    pub namespace: [u8; LABEL_BYTES],
    pub pod: [u8; LABEL_BYTES],
    pub container: [u8; LABEL_BYTES],
    pub container_id: [u8; ID_BYTES],
}
const _: () = assert!(core::mem::size_of::<ScopeInfo>() == 8 + 8 + 4 + 4 + 8 + 3 * 128 + 64);

impl Default for ScopeInfo {
    fn default() -> Self {
        ScopeInfo {
            netns_ino: 0,
            netns_dev: 0,
            state: state::FREE,
            labelled: 0,
            since_ns: 0,
            namespace: [0; LABEL_BYTES],
            pod: [0; LABEL_BYTES],
            container: [0; LABEL_BYTES],
            container_id: [0; ID_BYTES],
        }
    }
}

/// Copies `s` into a NUL-padded field, cut at a character boundary if it is too long.
pub fn put_str<const N: usize>(field: &mut [u8; N], s: &str) {
    *field = [0; N];
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&s.as_bytes()[..end]);
}

/// The string a NUL-padded field holds (invalid UTF-8 reads as empty: the daemon never writes it).
pub fn get_str<const N: usize>(field: &[u8; N]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(N);
    core::str::from_utf8(&field[..end]).unwrap_or("")
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and byte arrays only; the size assertion above shows no implicit
    // padding (8+8+4+4+8 then byte arrays), so every bit pattern is a valid ScopeInfo.
    unsafe impl aya::Pod for super::ScopeInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_long_ones_are_cut_at_a_character_boundary() {
        let mut f = [0u8; 8];
        put_str(&mut f, "web");
        assert_eq!(get_str(&f), "web");
        put_str(&mut f, "abcdefgh-more");
        assert_eq!(get_str(&f), "abcdefgh");
        // 'é' is two bytes: seven ASCII bytes and half an 'é' would not be UTF-8.
        put_str(&mut f, "abcdefgé");
        assert_eq!(get_str(&f), "abcdefg");
        put_str(&mut f, "");
        assert_eq!(get_str(&f), "");
    }
}
