//! Network interfaces: the default-route interface, existence and link state, local addresses.

use std::{fs, net::IpAddr};

/// The interface of the IPv4 default route, else of the IPv6 one.
pub fn default_route_interface() -> Option<String> {
    // /proc/net/route: Iface Destination Gateway Flags ...; destination 00000000 is the default.
    if let Ok(t) = fs::read_to_string("/proc/net/route") {
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3
                && f[1] == "00000000"
                && u32::from_str_radix(f[3], 16).is_ok_and(|fl| fl & 1 != 0)
            {
                return Some(f[0].to_string());
            }
        }
    }
    // /proc/net/ipv6_route: dest, dest_len, ..., device last; ::/0 is the default.
    let t = fs::read_to_string("/proc/net/ipv6_route").ok()?;
    t.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() == 10 && f[0].chars().all(|c| c == '0') && f[1] == "00" && f[9] != "lo")
            .then(|| f[9].to_string())
    })
}

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

/// Addresses configured on `iface` (getifaddrs).
pub fn addresses(iface: &str) -> Vec<IpAddr> {
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
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family says which sockaddr it is.
        unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}
