//! A namespace's ephemeral port range: `net.ipv4.ip_local_port_range` less
//! `net.ipv4.ip_local_reserved_ports`, the source ports connect() picks from (for IPv6 too:
//! Linux has no ipv6 range of its own, `inet_sk_get_local_port_range` serves both families).
//!
//! The files under /proc/sys/net answer for the network namespace of the thread that opened them
//! (the sysctl table a lookup finds is the opener's namespace's copy, whose data is that
//! namespace's `struct net`), so, like a [`super::sockdiag::Diag`], a [`PortRange`] opened once
//! on a thread inside a container's namespace keeps reading that namespace's values from any
//! thread.

use std::{fs::File, io, os::unix::fs::FileExt};

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The two sysctl files of one namespace, held open.
#[derive(Debug)]
pub struct PortRange {
    range: File,
    reserved: File,
}

impl PortRange {
    /// Opens the calling thread's namespace's files.
    pub fn open() -> io::Result<PortRange> {
        Ok(PortRange {
            range: File::open(RANGE)?,
            reserved: File::open(RESERVED)?,
        })
    }

    /// How many source ports connect() may pick from now.
    pub fn size(&self) -> io::Result<u32> {
        let range = read_all(&self.range)?;
        let reserved = read_all(&self.reserved)?;
        let (lo, hi) = parse_range(&range).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{RANGE}: unexpected {range:?}"),
            )
        })?;
        Ok(usable(lo, hi, &parse_reserved(&reserved)))
    }
}

/// A sysctl file's whole text, from its start (pread: the descriptor is shared by threads).
fn read_all(f: &File) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            // ip_local_reserved_ports can list many ranges.
            buf.resize(buf.len() * 2, 0);
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `ip_local_port_range`: two numbers, low and high, inclusive ("32768\t60999").
pub fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
    match (it.next()??, it.next()??, it.next()) {
        (lo, hi, None) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// `ip_local_reserved_ports`: a comma-separated list of ports and inclusive ranges ("8080,9000-9010"),
/// empty when none. Entries that do not parse are skipped.
pub fn parse_reserved(s: &str) -> Vec<(u16, u16)> {
    s.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .filter(|(a, b)| a <= b)
        .collect()
}

/// Ports in `lo..=hi` that no reserved range covers (reserved ranges may overlap).
pub fn usable(lo: u16, hi: u16, reserved: &[(u16, u16)]) -> u32 {
    let mut taken: Vec<(u16, u16)> = reserved
        .iter()
        .map(|&(a, b)| (a.max(lo), b.min(hi)))
        .filter(|(a, b)| a <= b)
        .collect();
    taken.sort_unstable();
    let mut reserved_in = 0u32;
    let mut covered_to: Option<u16> = None;
    for (a, b) in taken {
        let start = match covered_to {
            Some(c) if c >= b => continue,
            Some(c) if c >= a => c + 1,
            _ => a,
        };
        reserved_in += u32::from(b - start) + 1;
        covered_to = Some(b);
    }
    (u32::from(hi - lo) + 1).saturating_sub(reserved_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_reads_as_the_kernel_writes_it() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("40000 40499"), Some((40000, 40499)));
        assert_eq!(parse_range("60999 32768"), None, "inverted");
        assert_eq!(parse_range("1 2 3"), None);
        assert_eq!(parse_range(""), None);
    }

    #[test]
    fn reserved_ports_are_ports_and_ranges() {
        assert_eq!(parse_reserved("\n"), vec![]);
        assert_eq!(
            parse_reserved("8080,9000-9010\n"),
            vec![(8080, 8080), (9000, 9010)]
        );
    }

    #[test]
    fn reserved_ports_inside_the_range_are_taken_out_once() {
        assert_eq!(usable(40000, 40499, &[]), 500);
        // 40010-40019 and 40015-40024 overlap: 15 ports; 40100 one more; 39000 is outside.
        let r = [
            (40010, 40019),
            (40015, 40024),
            (40100, 40100),
            (39000, 39000),
        ];
        assert_eq!(usable(40000, 40499, &r), 500 - 16);
        // A reserved range straddling the edge counts only its inside part.
        assert_eq!(usable(40000, 40499, &[(39990, 40009)]), 490);
        assert_eq!(usable(40000, 40000, &[(40000, 40000)]), 0);
        assert_eq!(usable(0, 65535, &[]), 65536);
    }
}
