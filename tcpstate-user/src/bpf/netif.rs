//! Network interfaces: existence and link state, local addresses, whether the namespace forwards.

use std::net::IpAddr;

// Existence and flags are asked of the kernel through calls that answer for the caller's network
// namespace: /sys/class/net shows the namespace that mounted sysfs, which `nsenter --net` keeps.

pub fn exists(iface: &str) -> bool {
    index(iface).is_some()
}

/// The interface's index in the caller's namespace.
pub fn index(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// IFF_UP, from SIOCGIFFLAGS.
pub fn is_up(iface: &str) -> bool {
    if iface.len() >= libc::IFNAMSIZ {
        return false;
    }
    // SAFETY: a datagram socket only used for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: ifreq is plain data; the name is copied in with room for the NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    // The request argument is c_ulong in glibc and c_int in musl (the static build): libc::Ioctl
    // names whichever this target has.
    #[allow(clippy::unnecessary_cast, reason = "a no-op on glibc, needed on musl")]
    let request = libc::SIOCGIFFLAGS as libc::Ioctl;
    // SAFETY: fd is valid; req is a valid ifreq for SIOCGIFFLAGS.
    let ok = unsafe { libc::ioctl(fd, request, &mut req) } == 0;
    // SAFETY: the union member SIOCGIFFLAGS fills.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    ok && flags as i32 & libc::IFF_UP != 0
}

/// Whether this namespace forwards IPv4 or IPv6 (`/proc/sys/net` answers for the reader's
/// namespace).
pub fn forwarding() -> bool {
    ["ipv4/ip_forward", "ipv6/conf/all/forwarding"]
        .iter()
        .any(|k| {
            std::fs::read_to_string(format!("/proc/sys/net/{k}")).is_ok_and(|v| v.trim() != "0")
        })
}

/// Every address of this namespace, with its interface's name (getifaddrs).
pub fn all_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is.
        unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes());
                    out.push((name, ip));
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    out.push((name, IpAddr::from(sa.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}
