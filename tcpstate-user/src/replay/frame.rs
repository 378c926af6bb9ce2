//! A captured frame as the shared parser reads it: an Ethernet-shaped [`Packet`] whose total
//! length is the frame's length on the wire, not what the capture kept.
//!
//! The parser (tcpstate-common) starts at an Ethernet header and takes the payload length from
//! the IP header, checked against the packet's total length, as the kernel does for GSO packets
//! whose payload is not all readable. A capture cut at its snaplen is the same situation: the
//! headers are there, the payload is not. Reporting the original length as the total lets the
//! parser take such a frame as the segment it was, while a frame whose IP length exceeds even its
//! wire length is still refused as truncated, exactly as in the kernel. The other link types
//! (Linux cooked captures, raw IP, BSD loopback) are presented behind a synthetic Ethernet header
//! carrying their EtherType, so the parser is not touched.

use tcpstate_common::packet::Packet;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The link-layer header a capture's frames start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Linux cooked capture v1 (`tcpdump -i any` before libpcap 1.10): 16 bytes, protocol last.
    Sll,
    /// Linux cooked capture v2: 20 bytes, protocol first.
    Sll2,
    /// Raw IP: the frame starts with an IPv4 or IPv6 header (the version nibble says which).
    RawIp,
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// OpenBSD loopback: the same family in network byte order.
    Loop,
}

impl Link {
    /// The link type of a pcap header or pcapng interface (tcpdump.org/linktypes.html), if it is
    /// one the replay reads. 12 and 14 are DLT_RAW on some BSDs, 228 and 229 raw IPv4 and IPv6.
    pub fn from_linktype(lt: i32) -> Option<Link> {
        Some(match lt {
            1 => Link::Ethernet,
            113 => Link::Sll,
            276 => Link::Sll2,
            101 | 12 | 14 | 228 | 229 => Link::RawIp,
            0 => Link::Null,
            108 => Link::Loop,
            _ => return None,
        })
    }
}

/// An Ethernet-shaped view of one captured frame: a 14-byte head (the real Ethernet header, or a
/// synthetic one holding only the EtherType) followed by the bytes from the network layer on.
pub struct CapturedFrame<'a> {
    head: [u8; ETH_HLEN],
    /// Readable bytes of `head` (fewer than 14 only for an Ethernet frame cut inside its header).
    head_len: usize,
    body: &'a [u8],
    /// The frame's length on the wire, in this view's terms (synthetic head included).
    wire_len: usize,
}

impl<'a> CapturedFrame<'a> {
    /// `data` is what the capture kept of a frame whose wire length was `orig_len`. `None` when
    /// the link-layer header itself is cut off or names no EtherType this view can carry: such a
    /// frame cannot be TCP over IP as far as the kernel would know either.
    pub fn new(link: Link, data: &'a [u8], orig_len: usize) -> Option<CapturedFrame<'a>> {
        let (ethertype, l2) = match link {
            Link::Ethernet => {
                let head_len = data.len().min(ETH_HLEN);
                let mut head = [0u8; ETH_HLEN];
                head[..head_len].copy_from_slice(&data[..head_len]);
                return Some(CapturedFrame {
                    head,
                    head_len,
                    body: data.get(ETH_HLEN..).unwrap_or(&[]),
                    wire_len: orig_len.max(data.len()),
                });
            }
            // Both cooked headers give the EtherType (ARPHRD_ETHER framing); VLAN tags, when
            // libpcap reinserted them, follow in the payload exactly as after an Ethernet header.
            Link::Sll => (u16::from_be_bytes([*data.get(14)?, *data.get(15)?]), 16),
            Link::Sll2 => (u16::from_be_bytes([*data.first()?, *data.get(1)?]), 20),
            Link::RawIp => (ip_ethertype(*data.first()?)?, 0),
            Link::Null | Link::Loop => {
                let af: [u8; 4] = data.get(..4)?.try_into().ok()?;
                // The family is in the capturing host's byte order for NULL; either order is
                // unambiguous since every family value is below 256.
                let af = if link == Link::Loop || af[0] == 0 {
                    u32::from_be_bytes(af)
                } else {
                    u32::from_le_bytes(af)
                };
                let ethertype = match af {
                    2 => ETH_P_IP,
                    // AF_INET6 is 10 on Linux, 24 on NetBSD/OpenBSD, 28 on FreeBSD, 30 on macOS.
                    10 | 24 | 28 | 30 => ETH_P_IPV6,
                    _ => return None,
                };
                (ethertype, 4)
            }
        };
        let body = data.get(l2..)?;
        let mut head = [0u8; ETH_HLEN];
        head[12..].copy_from_slice(&ethertype.to_be_bytes());
        Some(CapturedFrame {
            head,
            head_len: ETH_HLEN,
            body,
            wire_len: (orig_len.max(data.len()) - l2) + ETH_HLEN,
        })
    }

    fn readable(&self) -> usize {
        if self.head_len < ETH_HLEN {
            self.head_len
        } else {
            ETH_HLEN + self.body.len()
        }
    }
}

/// The EtherType of a raw IP packet, from its version nibble.
fn ip_ethertype(first: u8) -> Option<u16> {
    match first >> 4 {
        4 => Some(ETH_P_IP),
        6 => Some(ETH_P_IPV6),
        _ => None,
    }
}

/// The largest read the parser makes (an IPv6 header, 40 bytes), with room to spare.
const MAX_READ: usize = 64;

impl Packet for CapturedFrame<'_> {
    #[inline]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let size = core::mem::size_of::<T>();
        let end = off.checked_add(size)?;
        if end > self.readable() {
            return None;
        }
        let src: &[u8] = if off >= ETH_HLEN {
            &self.body[off - ETH_HLEN..end - ETH_HLEN]
        } else if end <= ETH_HLEN {
            &self.head[off..end]
        } else {
            // A read across the end of the head (the parser makes none; kept total): gathered.
            if size > MAX_READ {
                return None;
            }
            let mut buf = [0u8; MAX_READ];
            for (i, b) in buf[..size].iter_mut().enumerate() {
                let at = off + i;
                *b = if at < ETH_HLEN {
                    self.head[at]
                } else {
                    self.body[at - ETH_HLEN]
                };
            }
            // SAFETY: `size` bytes initialized above; read_unaligned has no alignment
            // requirement and T is a plain integer type valid for every bit pattern.
            return Some(unsafe { core::ptr::read_unaligned(buf.as_ptr() as *const T) });
        };
        // SAFETY: `src` holds exactly size_of::<T>() bytes (sliced above); T is a plain integer
        // type valid for every bit pattern, read without alignment. Unsafe because the Packet
        // trait (tcpstate-common, shared with the kernel side) bounds T by Copy only; a
        // zerocopy FromBytes bound there would let both reads here be safe.
        Some(unsafe { core::ptr::read_unaligned(src.as_ptr() as *const T) })
    }

    fn total_len(&self) -> usize {
        self.wire_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpstate_common::packet::{parse, Parsed, SkipReason};

    /// IPv4 + TCP (SYN-free ACK with `payload` bytes claimed by the IP length), from 10.0.0.1:1000
    /// to 10.0.0.2:80.
    fn ipv4_tcp(payload: usize) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let tot = (20 + 20 + payload) as u16;
        p[2..4].copy_from_slice(&tot.to_be_bytes());
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x10;
        tcp[14..16].copy_from_slice(&1000u16.to_be_bytes());
        p.extend(tcp);
        p.extend(std::iter::repeat_n(0xab, payload));
        p
    }

    fn ether(l3: &[u8], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend(ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn seg_len(p: Parsed) -> u32 {
        match p {
            Parsed::Tcp(t) => t.seg.len,
            other => panic!("not a segment: {other:?}"),
        }
    }

    #[test]
    fn a_frame_cut_at_the_snaplen_keeps_its_ip_payload_length() {
        let full = ether(&ipv4_tcp(1000), ETH_P_IP);
        let cut = &full[..54 + 10];
        let f = CapturedFrame::new(Link::Ethernet, cut, full.len()).unwrap();
        assert_eq!(seg_len(parse(&f)), 1000);
    }

    #[test]
    fn a_frame_shorter_on_the_wire_than_its_ip_length_is_still_truncated() {
        // The kernel's check is not weakened: the wire length, not the captured one, must hold
        // the IP length.
        let full = ether(&ipv4_tcp(1000), ETH_P_IP);
        let f = CapturedFrame::new(Link::Ethernet, &full[..100], 100).unwrap();
        assert_eq!(parse(&f), Parsed::Skip(SkipReason::Truncated));
    }

    #[test]
    fn headers_cut_by_the_snaplen_are_truncated() {
        let full = ether(&ipv4_tcp(0), ETH_P_IP);
        let f = CapturedFrame::new(Link::Ethernet, &full[..40], full.len()).unwrap();
        assert_eq!(parse(&f), Parsed::Skip(SkipReason::Truncated));
        let f = CapturedFrame::new(Link::Ethernet, &full[..5], full.len()).unwrap();
        assert_eq!(parse(&f), Parsed::Skip(SkipReason::Truncated));
    }

    #[test]
    fn cooked_raw_and_loopback_frames_parse_like_ethernet() {
        let l3 = ipv4_tcp(3);
        let want = parse(&CapturedFrame::new(Link::Ethernet, &ether(&l3, ETH_P_IP), 0).unwrap());
        assert!(matches!(want, Parsed::Tcp(_)));
        let mut sll = vec![0u8; 14];
        sll.extend(ETH_P_IP.to_be_bytes());
        sll.extend_from_slice(&l3);
        let mut sll2 = ETH_P_IP.to_be_bytes().to_vec();
        sll2.extend([0u8; 18]);
        sll2.extend_from_slice(&l3);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&l3);
        let mut lo = 2u32.to_be_bytes().to_vec();
        lo.extend_from_slice(&l3);
        for (link, data) in [
            (Link::Sll, sll),
            (Link::Sll2, sll2),
            (Link::RawIp, l3.clone()),
            (Link::Null, null),
            (Link::Loop, lo),
        ] {
            let f = CapturedFrame::new(link, &data, data.len()).unwrap();
            assert_eq!(parse(&f), want, "{link:?}");
        }
    }

    #[test]
    fn unknown_families_and_cut_link_headers_are_not_ip() {
        assert!(CapturedFrame::new(Link::RawIp, &[0x50, 0], 2).is_none());
        assert!(CapturedFrame::new(Link::Sll, &[0; 15], 15).is_none());
        assert!(CapturedFrame::new(Link::Null, &7u32.to_le_bytes(), 4).is_none());
        assert!(CapturedFrame::new(Link::RawIp, &[], 0).is_none());
    }

    #[test]
    fn reads_across_the_head_gather_both_parts() {
        let data = [0x60u8, 1, 2, 3];
        let f = CapturedFrame::new(Link::RawIp, &data, 4).unwrap();
        // Bytes 12..16: the synthetic EtherType, then the first two bytes of the packet.
        assert_eq!(
            f.read::<[u8; 4]>(12),
            Some([0x86, 0xdd, 0x60, 1]),
            "gathered"
        );
        assert_eq!(f.read::<[u8; 4]>(15), None, "past the captured bytes");
        assert_eq!(f.read::<u8>(usize::MAX), None);
    }
}
