//! Network interfaces: existence and link state, local addresses, whether the namespace forwards.

use std::net::IpAddr;

// Existence and flags are asked of the kernel through calls that answer for the caller's network
// namespace: /sys/class/net shows the namespace that mounted sysfs, which `nsenter --net` keeps.

pub fn exists(iface: &str) -> bool {
    index(iface).is_some()
}

/// The interface's index in the caller's namespace.
pub fn index(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface)
        .ok()
        .filter(|&i| i != 0)
}

/// IFF_UP (getifaddrs reports every interface, with or without addresses, with its flags).
pub fn is_up(iface: &str) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut all| {
        all.any(|a| {
            a.interface_name == iface && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
        })
    })
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
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter_map(|a| {
        let addr = a.address?;
        let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::from(v4.ip()),
            (_, Some(v6)) => IpAddr::from(v6.ip()),
            _ => return None,
        };
        Some((a.interface_name, ip))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_there_up_and_holds_its_addresses() {
        assert_eq!(index("lo"), Some(1));
        assert!(exists("lo") && is_up("lo"));
        assert!(!exists("no-such-if0") && !is_up("no-such-if0"));
        assert_eq!(index("a\0b"), None);
        let lo = all_addresses();
        assert!(
            lo.contains(&("lo".to_string(), "127.0.0.1".parse().unwrap())),
            "{lo:?}"
        );
    }
}
