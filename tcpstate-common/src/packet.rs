//! Frame parser: Ethernet, up to two VLAN tags, IPv4 or IPv6 (with a bounded walk of extension
//! headers), TCP. One small step per header, every length validated before it is used. Devices
//! without a link-layer header (tun, WireGuard, IP tunnels) hand over packets that start at the IP
//! header: [`parse_ip`] and [`could_be_tcp_ip`] take those ([`LinkLayer`]).
//!
//! The parser is generic over [`Packet`], a bounds-checked reader: the kernel implements it over the
//! XDP/TC packet pointers (each read compared against `data_end`, the form the verifier needs), the
//! host tests over a byte slice. The kernel runs exactly this code.

use crate::tcp::{flags::SYN, Segment, WSCALE_MAX, WSCALE_NONE};

/// What a device's frames start with, which decides where the parser begins. The daemon tells it
/// from the device's link type (ARPHRD_*); the kernel programs come in one variant per link layer,
/// so the choice costs nothing per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (Ethernet NICs, veth, bridges, VXLAN, `lo`, which carries a zeroed one).
    Ethernet,
    /// None: the packet starts at the IP header (tun in tun mode, WireGuard, ipip/sit/gre, PPP).
    Ip,
}

/// A bounds-checked view of a frame, starting at the Ethernet header (or, for [`LinkLayer::Ip`]
/// devices, at the IP header).
pub trait Packet {
    /// Reads a `T` at byte offset `off`, or `None` when it does not lie wholly inside the readable
    /// part of the frame. `T` is a plain integer or integer array; the read may be unaligned.
    fn read<T: Copy>(&self, off: usize) -> Option<T>;
    /// Length of the whole packet (for TC, `skb->len`, which may exceed the readable part).
    fn total_len(&self) -> usize;
}

/// Why a frame that looked like IP or TCP could not be taken as a segment. The `reason` label of
/// `tcpstate_skipped_packets_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SkipReason {
    /// A header runs past the end of the frame.
    Truncated = 0,
    /// The IP version nibble does not match the EtherType (on a device without a link-layer
    /// header: is neither 4 nor 6).
    BadIpVersion = 1,
    /// IPv4 header length below 20 bytes.
    BadIhl = 2,
    /// IP length field smaller than the headers it must contain.
    BadIpLength = 3,
    /// An IP fragment: non-first fragments carry no TCP header, and a first fragment's length says
    /// nothing about the segment's.
    Fragment = 4,
    /// More IPv6 extension headers, or more bytes of them, than the bounded walk follows.
    Ipv6ExtChain = 5,
    /// TCP data offset below 5 words or past the end of the IP payload.
    BadDataOffset = 6,
}

impl SkipReason {
    pub const COUNT: usize = 7;
    pub const ALL: [SkipReason; Self::COUNT] = [
        SkipReason::Truncated,
        SkipReason::BadIpVersion,
        SkipReason::BadIhl,
        SkipReason::BadIpLength,
        SkipReason::Fragment,
        SkipReason::Ipv6ExtChain,
        SkipReason::BadDataOffset,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            SkipReason::Truncated => "truncated",
            SkipReason::BadIpVersion => "bad_ip_version",
            SkipReason::BadIhl => "bad_ihl",
            SkipReason::BadIpLength => "bad_ip_length",
            SkipReason::Fragment => "fragment",
            SkipReason::Ipv6ExtChain => "ipv6_ext_chain",
            SkipReason::BadDataOffset => "bad_data_offset",
        }
    }
}

/// A TCP segment and its addresses (raw words, network byte order in memory) and ports (host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPacket {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub seg: Segment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4/IPv6 carrying TCP: leaves untouched and uncounted.
    NotTcp,
    Tcp(TcpPacket),
    Skip(SkipReason),
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_HLEN: usize = 20;
/// Extension headers the IPv6 walk follows before giving up; real traffic uses one or two.
const IPV6_MAX_EXT: usize = 6;
/// Offset past which no header is looked for. Keeps every offset provably small for the verifier.
pub const MAX_HEADER_OFFSET: usize = 512;

macro_rules! get {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Parsed::Skip(SkipReason::Truncated),
        }
    };
}

/// Big-endian fields of a header read whole (one bounds check for the header, not one per field).
#[inline(always)]
fn hdr16<const N: usize>(h: &[u8; N], off: usize) -> u16 {
    u16::from_be_bytes([h[off], h[off + 1]])
}

#[inline(always)]
fn hdr32<const N: usize>(h: &[u8; N], off: usize) -> u32 {
    u32::from_be_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

/// An address word as it sits in the packet (network byte order in memory).
#[inline(always)]
fn hdr_word<const N: usize>(h: &[u8; N], off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

#[inline(always)]
fn be16<P: Packet>(p: &P, off: usize) -> Option<u16> {
    p.read::<u16>(off).map(u16::from_be)
}

/// The cheapest test that a frame may carry TCP: two loads for IPv4, one for anything else. Frames
/// that fail it leave before any map is touched; frames that pass get the full [`parse`].
///
/// It answers "no" only for what it has read: a frame whose IPv4 protocol byte lies outside the
/// readable part (TC sees only the skb's linear part, and AF_PACKET senders such as tcpreplay
/// build frames over a page with nothing but the Ethernet header linear) passes, so the TC program
/// pulls the headers in and parses it. Answering "no" there lost every large IPv4 frame silently.
#[inline(always)]
pub fn could_be_tcp<P: Packet>(p: &P) -> bool {
    match be16(p, 12) {
        Some(ETH_P_IP) => {
            !matches!(p.read::<u8>(ETH_HLEN + 9), Some(proto) if proto != IPPROTO_TCP)
        }
        // IPv6 may reach TCP through extension headers; tagged frames through their tags.
        Some(ETH_P_IPV6 | ETH_P_8021Q | ETH_P_8021AD) => true,
        // Too short for an EtherType: let the parser count it as truncated.
        None => true,
        Some(_) => false,
    }
}

/// [`could_be_tcp`] for a packet that starts at the IP header ([`LinkLayer::Ip`]): anything but
/// IPv4 carrying another protocol goes on to the parser (which counts what is not IP).
#[inline(always)]
pub fn could_be_tcp_ip<P: Packet>(p: &P) -> bool {
    // Ten bytes in one read, never one byte at offset 0: the compiler turns `data + 1 > data_end`
    // into `data >= data_end`, a comparison from which the verifier learns no packet range.
    match p.read::<[u8; 10]>(0) {
        Some(h) if h[0] >> 4 == 4 => h[9] == IPPROTO_TCP,
        _ => true,
    }
}

/// Parses a packet that starts at the IP header ([`LinkLayer::Ip`]). There is no EtherType: the
/// version nibble says which IP it is, and anything else is counted as a bad version, never
/// passed over silently (such a device carries nothing but IP).
#[inline(always)]
pub fn parse_ip<P: Packet>(p: &P) -> Parsed {
    // Two bytes, not one, for the verifier (see `could_be_tcp_ip`): the range it proves here also
    // covers the IPv4 step's first one-byte read at offset 0.
    match get!(be16(p, 0)) >> 12 {
        4 => parse_ipv4(p, 0),
        6 => parse_ipv6(p, 0),
        _ => Parsed::Skip(SkipReason::BadIpVersion),
    }
}

/// Parses a frame of either link layer.
#[inline(always)]
pub fn parse_link<P: Packet>(p: &P, link: LinkLayer) -> Parsed {
    match link {
        LinkLayer::Ethernet => parse(p),
        LinkLayer::Ip => parse_ip(p),
    }
}

/// Parses a frame that starts with an Ethernet header.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Parsed {
    let Some(mut proto) = be16(p, 12) else {
        return Parsed::Skip(SkipReason::Truncated);
    };
    let mut l3 = ETH_HLEN;
    // 802.1Q and 802.1ad (QinQ): at most two tags, unrolled for the verifier.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = get!(be16(p, l3 + 2));
        l3 += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = get!(be16(p, l3 + 2));
            l3 += 4;
        }
    }
    match proto {
        ETH_P_IP => parse_ipv4(p, l3),
        ETH_P_IPV6 => parse_ipv6(p, l3),
        _ => Parsed::NotTcp,
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(p: &P, l3: usize) -> Parsed {
    let vihl = get!(p.read::<u8>(l3));
    // The protocol first: non-TCP traffic leaves after one more load.
    if get!(p.read::<u8>(l3 + 9)) != IPPROTO_TCP {
        return Parsed::NotTcp;
    }
    if vihl >> 4 != 4 {
        return Parsed::Skip(SkipReason::BadIpVersion);
    }
    // RFC 791: IHL counts 32-bit words and is at least 5. xdp-tools' helper does not reject
    // smaller values; a header of fewer than 20 bytes would make us read TCP from inside IP.
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Parsed::Skip(SkipReason::BadIhl);
    }
    // The fixed header in one read: one bounds check instead of one per field.
    let h = get!(p.read::<[u8; 20]>(l3));
    let tot_len = hdr16(&h, 2) as usize;
    // MF set or a non-zero offset: a fragment (RFC 791); the reserved bit and DF are ignored.
    if hdr16(&h, 6) & 0x3fff != 0 {
        return Parsed::Skip(SkipReason::Fragment);
    }
    let (src, dst) = (hdr_word(&h, 12), hdr_word(&h, 16));
    let l4 = l3 + ihl;
    // tot_len 0 is what BIG TCP (Linux 6.3+) writes for IPv4 GSO packets over 64 KiB: then only the
    // skb length tells the payload.
    let ip_payload = if tot_len == 0 {
        p.total_len().saturating_sub(l4)
    } else if tot_len < ihl + TCP_HLEN {
        return Parsed::Skip(SkipReason::BadIpLength);
    } else if l3 + tot_len > p.total_len() {
        // Shorter than its own length field: the stack drops it, so it must change nothing here.
        // (Longer is normal: Ethernet pads short frames.)
        return Parsed::Skip(SkipReason::Truncated);
    } else {
        tot_len - ihl
    };
    parse_tcp(
        p,
        l4,
        ip_payload,
        crate::flow::FlowKey::v4_mapped(src),
        crate::flow::FlowKey::v4_mapped(dst),
    )
}

#[inline(always)]
fn parse_ipv6<P: Packet>(p: &P, l3: usize) -> Parsed {
    let vtc = get!(p.read::<u8>(l3));
    if vtc >> 4 != 6 {
        return Parsed::Skip(SkipReason::BadIpVersion);
    }
    // The fixed header in one read (one bounds check).
    let h = get!(p.read::<[u8; 40]>(l3));
    let payload_len = hdr16(&h, 4) as usize;
    let mut next = h[6];
    // Spelled out, not `[8, 12, 16, 20].map(..)`: a closure the compiler may leave uninlined keeps
    // its bounds checks, and a panic path is a program the verifier refuses.
    let src = [
        hdr_word(&h, 8),
        hdr_word(&h, 12),
        hdr_word(&h, 16),
        hdr_word(&h, 20),
    ];
    let dst = [
        hdr_word(&h, 24),
        hdr_word(&h, 28),
        hdr_word(&h, 32),
        hdr_word(&h, 36),
    ];
    let first = l3 + 40;
    let mut off = first;
    let mut i = 0;
    // RFC 8200 section 4: walk the chain to the upper-layer header, a bounded number of steps.
    while next != IPPROTO_TCP {
        if i == IPV6_MAX_EXT || off > MAX_HEADER_OFFSET {
            return Parsed::Skip(SkipReason::Ipv6ExtChain);
        }
        i += 1;
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
            0 | 43 | 60 => {
                let hdr_len = get!(p.read::<u8>(off + 1)) as usize;
                next = get!(p.read::<u8>(off));
                off += (hdr_len + 1) * 8;
            }
            // Fragment header: any fragment is skipped (offset != 0 or more-fragments set).
            44 => {
                if get!(be16(p, off + 2)) & 0xfff9 != 0 {
                    return Parsed::Skip(SkipReason::Fragment);
                }
                next = get!(p.read::<u8>(off));
                off += 8;
            }
            // Authentication header: length in 4-octet units, minus 2 (RFC 4302).
            51 => {
                let hdr_len = get!(p.read::<u8>(off + 1)) as usize;
                next = get!(p.read::<u8>(off));
                off += (hdr_len + 2) * 4;
            }
            _ => return Parsed::NotTcp,
        }
    }
    if off > MAX_HEADER_OFFSET {
        return Parsed::Skip(SkipReason::Ipv6ExtChain);
    }
    let ext_len = off - first;
    // Payload length 0 with a hop-by-hop jumbo option is how BIG TCP sends IPv6 GSO packets.
    let ip_payload = if payload_len == 0 {
        p.total_len().saturating_sub(off)
    } else if payload_len < ext_len + TCP_HLEN {
        return Parsed::Skip(SkipReason::BadIpLength);
    } else if first + payload_len > p.total_len() {
        // Shorter than its own length field: dropped by the stack, so nothing here either.
        return Parsed::Skip(SkipReason::Truncated);
    } else {
        payload_len - ext_len
    };
    parse_tcp(p, off, ip_payload, src, dst)
}

#[inline(always)]
fn parse_tcp<P: Packet>(
    p: &P,
    l4: usize,
    ip_payload: usize,
    src: [u32; 4],
    dst: [u32; 4],
) -> Parsed {
    // The whole 20-byte fixed header, in one read: a frame cut anywhere inside it (even in the
    // checksum or urgent pointer, which are not used) is truncated, not a segment.
    let h = get!(p.read::<[u8; TCP_HLEN]>(l4));
    let sport = hdr16(&h, 0);
    let dport = hdr16(&h, 2);
    let seq = hdr32(&h, 4);
    let ack = hdr32(&h, 8);
    let doff = ((h[12] >> 4) as usize) * 4;
    let flags = h[13];
    let win = hdr16(&h, 14);
    // RFC 9293 section 3.1: data offset is at least 5 words, and the header must fit the payload.
    if doff < TCP_HLEN || doff > ip_payload {
        return Parsed::Skip(SkipReason::BadDataOffset);
    }
    let wscale = if flags & SYN != 0 {
        window_scale(p, l4 + TCP_HLEN, doff - TCP_HLEN)
    } else {
        WSCALE_NONE
    };
    Parsed::Tcp(TcpPacket {
        src,
        dst,
        sport,
        dport,
        seg: Segment {
            seq,
            ack,
            len: (ip_payload - doff) as u32,
            win,
            flags,
            wscale,
        },
    })
}

/// Options a SYN is searched through for window scale. Real stacks send at most 7 (Linux: MSS,
/// SACK-permitted, timestamps, NOP, window scale; Windows: MSS, NOP, WS, NOP, NOP, SACK-permitted).
const MAX_SYN_OPTIONS: usize = 10;

/// The window-scale option (RFC 7323 section 2) of a SYN, or `WSCALE_NONE`. `opts` is where the
/// options start, `opts_len` their length (at most 40 bytes).
///
/// Shaped for the verifier: the walk keeps a relative offset that never exceeds `opts_len` and is
/// masked to 6 bits at the top of every iteration, so every path reaching the loop head carries the
/// same abstract offset and the verifier prunes them instead of exploring each option sequence.
#[inline(always)]
fn window_scale<P: Packet>(p: &P, opts: usize, opts_len: usize) -> u8 {
    let mut o: usize = 0;
    for _ in 0..MAX_SYN_OPTIONS {
        let at = o & 0x3f;
        if at >= opts_len {
            break;
        }
        let Some(kind) = p.read::<u8>(opts + at) else {
            break;
        };
        match kind {
            0 => break,
            1 => o = at + 1,
            _ => {
                let Some(len) = p.read::<u8>(opts + at + 1) else {
                    break;
                };
                let len = len as usize;
                // Checked before the window-scale match, so an option running past the data
                // offset is never read from the payload. (Was checked after it.)
                if len < 2 || at + len > opts_len {
                    break;
                }
                if kind == 3 && len == 3 {
                    return match p.read::<u8>(opts + at + 2) {
                        Some(s) if s > WSCALE_MAX => WSCALE_MAX,
                        Some(s) => s,
                        None => WSCALE_NONE,
                    };
                }
                o = at + len;
            }
        }
    }
    WSCALE_NONE
}

/// A [`Packet`] over a byte slice, for host tests, offline replay and userspace tools.
pub struct SlicePacket<'a>(pub &'a [u8]);

impl Packet for SlicePacket<'_> {
    #[inline]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        let size = core::mem::size_of::<T>();
        if off.checked_add(size)? > self.0.len() {
            return None;
        }
        // SAFETY: bounds checked above; read_unaligned has no alignment requirement and T is a plain
        // integer type for which every bit pattern is valid.
        Some(unsafe { core::ptr::read_unaligned(self.0.as_ptr().add(off) as *const T) })
    }
    fn total_len(&self) -> usize {
        self.0.len()
    }
}
