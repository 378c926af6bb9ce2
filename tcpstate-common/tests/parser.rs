//! Frame parser tests on hand-built Ethernet / VLAN / IPv4 / IPv6 / TCP frames.
//!
//! The builders below write every header field big-endian at its RFC offset, so each test states
//! the frame it feeds in the terms of the wire format and the exact [`Parsed`] it expects back.

use tcpstate_common::{
    flow::FlowKey,
    packet::{
        could_be_tcp, could_be_tcp_ip, parse, parse_ip, parse_link, LinkLayer, Packet, Parsed,
        SkipReason, SlicePacket, TcpPacket,
    },
    tcp::{flags::*, Segment, WSCALE_MAX, WSCALE_NONE},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_AH: u8 = 51;
const NEXT_ICMPV6: u8 = 58;
const NEXT_DEST_OPTS: u8 = 60;

const SRC4: [u8; 4] = [10, 1, 2, 3];
const DST4: [u8; 4] = [192, 168, 100, 200];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
];

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// A TCP header with options and a payload of `payload` bytes.
#[derive(Clone)]
struct Tcp {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    win: u16,
    /// Raw option bytes, padded with end-of-options (zeros) to a multiple of four.
    opts: Vec<u8>,
    /// Data offset in 32-bit words; `None` for the right one.
    doff: Option<u8>,
    payload: usize,
}

impl Tcp {
    fn new(flags: u8) -> Tcp {
        Tcp {
            sport: 43_210,
            dport: 443,
            seq: 0x1234_5678,
            ack: 0x9abc_def0,
            flags,
            win: 64_240,
            opts: Vec::new(),
            doff: None,
            payload: 0,
        }
    }
    fn opts(mut self, o: &[u8]) -> Tcp {
        self.opts = o.to_vec();
        self
    }
    fn payload(mut self, n: usize) -> Tcp {
        self.payload = n;
        self
    }
    fn doff(mut self, words: u8) -> Tcp {
        self.doff = Some(words);
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut opts = self.opts.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let mut b = vec![0u8; 20];
        put16(&mut b, 0, self.sport);
        put16(&mut b, 2, self.dport);
        b[4..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.ack.to_be_bytes());
        let doff = self.doff.unwrap_or((5 + opts.len() / 4) as u8);
        b[12] = doff << 4;
        b[13] = self.flags;
        put16(&mut b, 14, self.win);
        put16(&mut b, 16, 0xbeef); // checksum (not verified)
        put16(&mut b, 18, 0); // urgent pointer
        b.extend_from_slice(&opts);
        b.extend((0..self.payload).map(|i| (i % 251) as u8));
        b
    }
    /// The segment the parser should report for this header with `len` payload bytes.
    fn seg(&self, len: u32, wscale: u8) -> Segment {
        Segment {
            seq: self.seq,
            ack: self.ack,
            len,
            win: self.win,
            flags: self.flags,
            wscale,
        }
    }
}

/// An IPv4 header in front of `l4`.
#[derive(Clone)]
struct V4 {
    version: u8,
    ihl: u8,
    /// Total length; `None` for the right one.
    tot_len: Option<u16>,
    /// Flags and fragment offset (bytes 6-7).
    frag: u16,
    proto: u8,
}

impl V4 {
    fn new() -> V4 {
        V4 {
            version: 4,
            ihl: 5,
            tot_len: None,
            frag: 0x4000, // DF, as Linux sends TCP
            proto: IPPROTO_TCP,
        }
    }
    fn wrap(&self, l4: &[u8]) -> Vec<u8> {
        let hlen = (self.ihl as usize * 4).max(20);
        let mut b = vec![0u8; hlen];
        b[0] = (self.version << 4) | self.ihl;
        let tot = self.tot_len.unwrap_or((hlen + l4.len()) as u16);
        put16(&mut b, 2, tot);
        put16(&mut b, 4, 0x4242); // identification
        put16(&mut b, 6, self.frag);
        b[8] = 64;
        b[9] = self.proto;
        b[12..16].copy_from_slice(&SRC4);
        b[16..20].copy_from_slice(&DST4);
        for (i, o) in b.iter_mut().enumerate().skip(20) {
            *o = if i == 20 { 0x94 } else { 0x01 }; // router alert kind, then NOPs
        }
        b.extend_from_slice(l4);
        b
    }
}

/// An IPv6 header in front of `rest` (extension headers and upper layer).
fn v6(next: u8, payload_len: Option<u16>, rest: &[u8]) -> Vec<u8> {
    v6_version(6, next, payload_len, rest)
}

fn v6_version(version: u8, next: u8, payload_len: Option<u16>, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 40];
    b[0] = version << 4;
    put16(&mut b, 4, payload_len.unwrap_or(rest.len() as u16));
    b[6] = next;
    b[7] = 64;
    b[8..24].copy_from_slice(&SRC6);
    b[24..40].copy_from_slice(&DST6);
    b.extend_from_slice(rest);
    b
}

/// A hop-by-hop, routing or destination-options header: `units` 8-octet units after the first.
fn ext(next: u8, units: u8) -> Vec<u8> {
    let mut b = vec![0u8; (units as usize + 1) * 8];
    b[0] = next;
    b[1] = units;
    b[2] = 0x01; // PadN option filling the rest
    b[3] = (b.len() - 4) as u8;
    b
}

/// A fragment header with the given offset (8-octet units) and more-fragments flag.
fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b[0] = next;
    put16(&mut b, 2, (offset << 3) | more as u16);
    b[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
    b
}

/// An authentication header (RFC 4302): length in 4-octet units minus 2.
fn ah(next: u8, words: u8) -> Vec<u8> {
    let mut b = vec![0u8; (words as usize + 2) * 4];
    b[0] = next;
    b[1] = words;
    b
}

/// An Ethernet header with the given VLAN tag protocol IDs (outermost first).
fn eth(tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, &tpid) in tags.iter().enumerate() {
        b.extend_from_slice(&tpid.to_be_bytes());
        b.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI: VLAN id
    }
    b.extend_from_slice(&ethertype.to_be_bytes());
    b.extend_from_slice(l3);
    b
}

fn p(frame: &[u8]) -> Parsed {
    parse(&SlicePacket(frame))
}

fn words(b: &[u8; 16]) -> [u32; 4] {
    core::array::from_fn(|i| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()))
}

fn tcp4(t: &Tcp, len: u32, wscale: u8) -> Parsed {
    Parsed::Tcp(TcpPacket {
        src: FlowKey::v4_mapped(u32::from_ne_bytes(SRC4)),
        dst: FlowKey::v4_mapped(u32::from_ne_bytes(DST4)),
        sport: t.sport,
        dport: t.dport,
        seg: t.seg(len, wscale),
    })
}

fn tcp6(t: &Tcp, len: u32, wscale: u8) -> Parsed {
    Parsed::Tcp(TcpPacket {
        src: words(&SRC6),
        dst: words(&DST6),
        sport: t.sport,
        dport: t.dport,
        seg: t.seg(len, wscale),
    })
}

fn frame4(t: &Tcp) -> Vec<u8> {
    eth(&[], ETH_P_IP, &V4::new().wrap(&t.bytes()))
}

fn skip(why: SkipReason) -> Parsed {
    Parsed::Skip(why)
}

/// Linux's SYN options: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
const LINUX_SYN_OPTS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7,
];
/// Windows' SYN options: MSS 1460, NOP, window scale 8, NOP, NOP, SACK permitted.
const WINDOWS_SYN_OPTS: [u8; 12] = [2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];

mod ipv4 {
    use super::*;

    #[test]
    fn plain_tcp_gives_addresses_ports_numbers_flags_window_and_payload_length() {
        let t = Tcp::new(ACK | PSH).payload(1000);
        let frame = frame4(&t);
        assert_eq!(frame.len(), 14 + 20 + 20 + 1000);
        let Parsed::Tcp(pkt) = p(&frame) else {
            panic!("not parsed as TCP: {:?}", p(&frame));
        };
        assert_eq!((pkt.sport, pkt.dport), (43_210, 443));
        assert_eq!(pkt.seg.seq, 0x1234_5678);
        assert_eq!(pkt.seg.ack, 0x9abc_def0);
        assert_eq!(pkt.seg.flags, ACK | PSH);
        assert_eq!(pkt.seg.win, 64_240);
        assert_eq!(pkt.seg.len, 1000);
        assert_eq!(
            pkt.seg.wscale, WSCALE_NONE,
            "only SYNs are searched for window scale"
        );
        // Addresses as IPv4-mapped IPv6 words, in network byte order in memory.
        let key = FlowKey {
            addr: [pkt.src, pkt.dst],
            port: [pkt.sport, pkt.dport],
            scope: 0,
        };
        assert!(key.is_v4());
        assert_eq!(pkt.src[3].to_ne_bytes(), SRC4);
        assert_eq!(pkt.dst[3].to_ne_bytes(), DST4);
        assert_eq!(p(&frame), tcp4(&t, 1000, WSCALE_NONE));
    }

    #[test]
    fn options_in_the_ip_header_move_the_tcp_header() {
        for ihl in [6, 7, 15] {
            let t = Tcp::new(ACK).payload(33);
            let ip = V4 { ihl, ..V4::new() };
            let frame = eth(&[], ETH_P_IP, &ip.wrap(&t.bytes()));
            assert_eq!(p(&frame), tcp4(&t, 33, WSCALE_NONE), "ihl {ihl}");
        }
    }

    #[test]
    fn header_length_below_20_bytes_is_bad_ihl() {
        for ihl in 0..5 {
            let ip = V4 { ihl, ..V4::new() };
            let frame = eth(&[], ETH_P_IP, &ip.wrap(&Tcp::new(ACK).bytes()));
            assert_eq!(p(&frame), skip(SkipReason::BadIhl), "ihl {ihl}");
        }
    }

    #[test]
    fn version_other_than_4_is_a_bad_ip_version() {
        for version in [0, 5, 6, 15] {
            let ip = V4 {
                version,
                ..V4::new()
            };
            let frame = eth(&[], ETH_P_IP, &ip.wrap(&Tcp::new(ACK).bytes()));
            assert_eq!(
                p(&frame),
                skip(SkipReason::BadIpVersion),
                "version {version}"
            );
        }
    }

    #[test]
    fn fragments_are_skipped_and_df_or_the_reserved_bit_are_not_fragments() {
        // Flags and offset: MF = 0x2000, offset in the low 13 bits (8-octet units).
        for frag in [0x2000, 0x0001, 0x00b9, 0x2000 | 0x0010, 0x4000 | 0x0001] {
            let ip = V4 { frag, ..V4::new() };
            let frame = eth(&[], ETH_P_IP, &ip.wrap(&Tcp::new(ACK).bytes()));
            assert_eq!(p(&frame), skip(SkipReason::Fragment), "frag {frag:#x}");
        }
        for frag in [0x0000, 0x4000, 0x8000] {
            let t = Tcp::new(ACK);
            let ip = V4 { frag, ..V4::new() };
            let frame = eth(&[], ETH_P_IP, &ip.wrap(&t.bytes()));
            assert_eq!(p(&frame), tcp4(&t, 0, WSCALE_NONE), "frag {frag:#x}");
        }
    }

    #[test]
    fn total_length_smaller_than_the_headers_is_a_bad_ip_length() {
        for (ihl, tot_len) in [(5, 39), (5, 20), (5, 1), (6, 43)] {
            let ip = V4 {
                ihl,
                tot_len: Some(tot_len),
                ..V4::new()
            };
            let frame = eth(&[], ETH_P_IP, &ip.wrap(&Tcp::new(ACK).payload(10).bytes()));
            assert_eq!(
                p(&frame),
                skip(SkipReason::BadIpLength),
                "ihl {ihl} tot {tot_len}"
            );
        }
    }

    #[test]
    fn total_length_0_is_big_tcp_and_the_frame_length_gives_the_payload() {
        let t = Tcp::new(ACK).payload(3000);
        let ip = V4 {
            tot_len: Some(0),
            ..V4::new()
        };
        let frame = eth(&[], ETH_P_IP, &ip.wrap(&t.bytes()));
        assert_eq!(p(&frame), tcp4(&t, 3000, WSCALE_NONE));
    }

    #[test]
    fn a_frame_shorter_than_its_ip_length_is_truncated() {
        // The stack drops such a packet; a FIN in it must not close the mirror.
        let t = Tcp::new(FIN | ACK).payload(100);
        let mut frame = frame4(&t);
        frame.truncate(frame.len() - 1);
        assert_eq!(p(&frame), skip(SkipReason::Truncated));
        let mut frame6 = eth(&[], ETH_P_IPV6, &v6(IPPROTO_TCP, None, &t.bytes()));
        frame6.truncate(frame6.len() - 1);
        assert_eq!(p(&frame6), skip(SkipReason::Truncated));
    }

    #[test]
    fn ethernet_padding_after_a_short_packet_is_not_payload() {
        let t = Tcp::new(ACK);
        let mut frame = frame4(&t);
        assert_eq!(frame.len(), 54);
        frame.resize(60, 0xee); // the minimum Ethernet frame, padded
        assert_eq!(p(&frame), tcp4(&t, 0, WSCALE_NONE));
    }

    #[test]
    fn data_offset_below_5_words_is_bad() {
        for doff in 0..5 {
            let frame = frame4(&Tcp::new(ACK).payload(40).doff(doff));
            assert_eq!(p(&frame), skip(SkipReason::BadDataOffset), "doff {doff}");
        }
    }

    #[test]
    fn data_offset_past_the_ip_payload_is_bad() {
        // 20 bytes of TCP header and 16 of payload: a 40-byte header does not fit.
        let frame = frame4(&Tcp::new(ACK).payload(16).doff(10));
        assert_eq!(p(&frame), skip(SkipReason::BadDataOffset));
        // Exactly fitting is fine: the whole IP payload is header.
        let t = Tcp::new(ACK).payload(20).doff(10);
        assert_eq!(p(&frame4(&t)), tcp4(&t, 0, WSCALE_NONE));
    }

    #[test]
    fn tcp_options_are_not_payload() {
        let t = Tcp::new(ACK | PSH)
            .opts(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .payload(500);
        assert_eq!(p(&frame4(&t)), tcp4(&t, 500, WSCALE_NONE));
    }

    #[test]
    fn udp_is_not_tcp() {
        let ip = V4 {
            proto: IPPROTO_UDP,
            ..V4::new()
        };
        let frame = eth(&[], ETH_P_IP, &ip.wrap(&[0u8; 8]));
        assert_eq!(p(&frame), Parsed::NotTcp);
        // Not TCP is decided before the version: a broken UDP header is none of our business.
        let ip = V4 {
            proto: IPPROTO_UDP,
            version: 7,
            ..V4::new()
        };
        assert_eq!(p(&eth(&[], ETH_P_IP, &ip.wrap(&[0u8; 8]))), Parsed::NotTcp);
    }
}

mod ethernet {
    use super::*;

    #[test]
    fn one_vlan_tag_is_skipped() {
        for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
            let t = Tcp::new(ACK).payload(7);
            let frame = eth(&[tpid], ETH_P_IP, &V4::new().wrap(&t.bytes()));
            assert_eq!(p(&frame), tcp4(&t, 7, WSCALE_NONE), "tpid {tpid:#x}");
        }
    }

    #[test]
    fn two_vlan_tags_are_skipped() {
        for tags in [
            [ETH_P_8021AD, ETH_P_8021Q],
            [ETH_P_8021Q, ETH_P_8021Q],
            [ETH_P_8021AD, ETH_P_8021AD],
        ] {
            let t = Tcp::new(ACK).payload(7);
            let frame = eth(&tags, ETH_P_IP, &V4::new().wrap(&t.bytes()));
            assert_eq!(p(&frame), tcp4(&t, 7, WSCALE_NONE), "tags {tags:x?}");
            let frame = eth(&tags, ETH_P_IPV6, &v6(IPPROTO_TCP, None, &t.bytes()));
            assert_eq!(p(&frame), tcp6(&t, 7, WSCALE_NONE), "tags {tags:x?}");
        }
    }

    #[test]
    fn a_third_vlan_tag_is_not_followed() {
        let frame = eth(
            &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
            ETH_P_IP,
            &V4::new().wrap(&Tcp::new(ACK).bytes()),
        );
        assert_eq!(p(&frame), Parsed::NotTcp);
    }

    #[test]
    fn arp_and_other_ethertypes_are_not_tcp() {
        for ethertype in [ETH_P_ARP, 0x88cc, 0x0000, 0xffff] {
            assert_eq!(p(&eth(&[], ethertype, &[0u8; 46])), Parsed::NotTcp);
            assert_eq!(
                p(&eth(&[ETH_P_8021Q], ethertype, &[0u8; 46])),
                Parsed::NotTcp
            );
        }
    }

    #[test]
    fn frames_shorter_than_an_ethernet_header_are_truncated() {
        let frame = frame4(&Tcp::new(ACK));
        for n in 0..14 {
            assert_eq!(p(&frame[..n]), skip(SkipReason::Truncated), "length {n}");
        }
    }
}

mod ipv6 {
    use super::*;

    #[test]
    fn plain_ipv6_tcp() {
        let t = Tcp::new(ACK | FIN).payload(99);
        let frame = eth(&[], ETH_P_IPV6, &v6(IPPROTO_TCP, None, &t.bytes()));
        assert_eq!(p(&frame), tcp6(&t, 99, WSCALE_NONE));
    }

    #[test]
    fn hop_by_hop_and_destination_options_are_walked() {
        let t = Tcp::new(ACK).payload(10);
        let mut rest = ext(NEXT_DEST_OPTS, 0);
        rest.extend(ext(IPPROTO_TCP, 2));
        rest.extend(t.bytes());
        let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_HOP_BY_HOP, None, &rest));
        assert_eq!(p(&frame), tcp6(&t, 10, WSCALE_NONE));
    }

    #[test]
    fn routing_and_authentication_headers_are_walked() {
        let t = Tcp::new(ACK).payload(5);
        let mut rest = ext(NEXT_AH, 1);
        rest.extend(ah(IPPROTO_TCP, 4)); // (4 + 2) * 4 = 24 bytes
        rest.extend(t.bytes());
        let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_ROUTING, None, &rest));
        assert_eq!(p(&frame), tcp6(&t, 5, WSCALE_NONE));
    }

    #[test]
    fn fragment_header_of_a_first_or_later_fragment_is_a_fragment() {
        for (offset, more) in [(0, true), (185, true), (185, false), (1, false)] {
            let mut rest = frag6(IPPROTO_TCP, offset, more);
            rest.extend(Tcp::new(ACK).payload(8).bytes());
            let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_FRAGMENT, None, &rest));
            assert_eq!(
                p(&frame),
                skip(SkipReason::Fragment),
                "offset {offset} more {more}"
            );
        }
    }

    #[test]
    fn atomic_fragment_is_a_whole_segment() {
        // RFC 6946: offset 0 and no more fragments is an unfragmented packet.
        let t = Tcp::new(ACK).payload(8);
        let mut rest = frag6(IPPROTO_TCP, 0, false);
        rest.extend(t.bytes());
        let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_FRAGMENT, None, &rest));
        assert_eq!(p(&frame), tcp6(&t, 8, WSCALE_NONE));
    }

    /// A chain of `n` destination-options headers in front of `t`.
    fn chain(n: usize, t: &Tcp) -> Vec<u8> {
        let mut rest = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n {
                IPPROTO_TCP
            } else {
                NEXT_DEST_OPTS
            };
            rest.extend(ext(next, 0));
        }
        rest.extend(t.bytes());
        eth(&[], ETH_P_IPV6, &v6(NEXT_DEST_OPTS, None, &rest))
    }

    #[test]
    fn six_extension_headers_are_walked_and_seven_are_too_many() {
        let t = Tcp::new(ACK).payload(3);
        assert_eq!(p(&chain(6, &t)), tcp6(&t, 3, WSCALE_NONE));
        assert_eq!(p(&chain(7, &t)), skip(SkipReason::Ipv6ExtChain));
    }

    #[test]
    fn extension_headers_reaching_past_the_walk_limit_are_too_long() {
        // One hop-by-hop header of (63 + 1) * 8 = 512 bytes puts TCP at 14 + 40 + 512.
        let t = Tcp::new(ACK);
        let mut rest = ext(IPPROTO_TCP, 63);
        rest.extend(t.bytes());
        let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_HOP_BY_HOP, None, &rest));
        assert_eq!(p(&frame), skip(SkipReason::Ipv6ExtChain));
    }

    #[test]
    fn upper_layers_other_than_tcp_are_not_tcp() {
        let frame = eth(&[], ETH_P_IPV6, &v6(IPPROTO_UDP, None, &[0u8; 8]));
        assert_eq!(p(&frame), Parsed::NotTcp);
        let mut rest = ext(NEXT_ICMPV6, 0);
        rest.extend([0u8; 8]);
        let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_HOP_BY_HOP, None, &rest));
        assert_eq!(p(&frame), Parsed::NotTcp);
    }

    #[test]
    fn version_other_than_6_is_a_bad_ip_version() {
        let rest = Tcp::new(ACK).bytes();
        let frame = eth(&[], ETH_P_IPV6, &v6_version(4, IPPROTO_TCP, None, &rest));
        assert_eq!(p(&frame), skip(SkipReason::BadIpVersion));
    }

    #[test]
    fn payload_length_smaller_than_the_headers_is_a_bad_ip_length() {
        let mut rest = ext(IPPROTO_TCP, 0);
        rest.extend(Tcp::new(ACK).payload(4).bytes());
        for payload_len in [27, 8, 1] {
            let frame = eth(
                &[],
                ETH_P_IPV6,
                &v6(NEXT_HOP_BY_HOP, Some(payload_len), &rest),
            );
            assert_eq!(
                p(&frame),
                skip(SkipReason::BadIpLength),
                "payload {payload_len}"
            );
        }
    }

    #[test]
    fn payload_length_0_is_a_jumbogram_and_the_frame_length_gives_the_payload() {
        let t = Tcp::new(ACK).payload(2000);
        let mut rest = ext(IPPROTO_TCP, 0);
        rest.extend(t.bytes());
        let frame = eth(&[], ETH_P_IPV6, &v6(NEXT_HOP_BY_HOP, Some(0), &rest));
        assert_eq!(p(&frame), tcp6(&t, 2000, WSCALE_NONE));
    }
}

mod window_scale {
    use super::*;

    fn wscale_of(flags: u8, opts: &[u8]) -> u8 {
        let t = Tcp::new(flags).opts(opts);
        match p(&frame4(&t)) {
            Parsed::Tcp(pkt) => pkt.seg.wscale,
            other => panic!("options {opts:?}: {other:?}"),
        }
    }

    #[test]
    fn found_among_linux_syn_options() {
        assert_eq!(wscale_of(SYN, &LINUX_SYN_OPTS), 7);
        assert_eq!(wscale_of(SYN | ACK, &LINUX_SYN_OPTS), 7);
    }

    #[test]
    fn found_among_windows_syn_options() {
        assert_eq!(wscale_of(SYN, &WINDOWS_SYN_OPTS), 8);
    }

    #[test]
    fn absent_window_scale_reads_as_none() {
        assert_eq!(wscale_of(SYN, &[2, 4, 0x05, 0xb4, 4, 2]), WSCALE_NONE);
        assert_eq!(wscale_of(SYN, &[]), WSCALE_NONE);
    }

    #[test]
    fn not_looked_for_outside_syns() {
        assert_eq!(wscale_of(ACK, &LINUX_SYN_OPTS), WSCALE_NONE);
    }

    #[test]
    fn shift_above_14_is_clamped_to_14() {
        for (shift, want) in [(14, 14), (15, WSCALE_MAX), (200, WSCALE_MAX), (0, 0)] {
            assert_eq!(wscale_of(SYN, &[1, 3, 3, shift]), want, "shift {shift}");
        }
    }

    #[test]
    fn end_of_options_stops_the_walk() {
        assert_eq!(wscale_of(SYN, &[2, 4, 0x05, 0xb4, 0, 3, 3, 7]), WSCALE_NONE);
    }

    #[test]
    fn malformed_option_length_stops_the_walk() {
        // Lengths 0 and 1 cannot cover an option's own kind and length bytes; a length running
        // past the options would make the next "option" one read from the payload.
        for bad in [
            [2, 0, 0, 0, 1, 3, 3, 7],
            [2, 1, 0, 0, 1, 3, 3, 7],
            [2, 40, 0, 0, 1, 3, 3, 7],
        ] {
            assert_eq!(wscale_of(SYN, &bad), WSCALE_NONE, "options {bad:?}");
        }
    }

    #[test]
    fn option_running_past_the_options_area_is_not_read() {
        // A window-scale option whose shift byte lies past the data offset, in the payload.
        let t = Tcp::new(SYN).opts(&[1, 1, 3, 3]).payload(4);
        let mut frame = frame4(&t);
        let n = frame.len();
        frame[n - 4] = 9; // the first payload byte, where the shift would be
        match p(&frame) {
            Parsed::Tcp(pkt) => assert_eq!(pkt.seg.wscale, WSCALE_NONE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn found_in_ipv6_syns_behind_extension_headers() {
        let t = Tcp::new(SYN).opts(&LINUX_SYN_OPTS);
        let mut rest = ext(IPPROTO_TCP, 0);
        rest.extend(t.bytes());
        let frame = eth(
            &[ETH_P_8021Q],
            ETH_P_IPV6,
            &v6(NEXT_HOP_BY_HOP, None, &rest),
        );
        assert_eq!(p(&frame), tcp6(&t, 0, 7));
    }
}

mod robustness {
    use super::*;

    /// Valid frames of every shape, with where their TCP header ends.
    fn samples() -> Vec<(Vec<u8>, usize)> {
        let syn = Tcp::new(SYN).opts(&LINUX_SYN_OPTS);
        let data = Tcp::new(ACK | PSH).payload(30);
        let v4_opts = V4 {
            ihl: 7,
            ..V4::new()
        };
        let mut v6_rest = ext(NEXT_DEST_OPTS, 1);
        v6_rest.extend(ext(IPPROTO_TCP, 0));
        let v6_tcp_at = v6_rest.len();
        v6_rest.extend(syn.bytes());
        vec![
            (frame4(&data), 14 + 20 + 20),
            (frame4(&syn), 14 + 20 + 20),
            (
                eth(
                    &[ETH_P_8021AD, ETH_P_8021Q],
                    ETH_P_IP,
                    &v4_opts.wrap(&data.bytes()),
                ),
                22 + 28 + 20,
            ),
            (
                eth(
                    &[ETH_P_8021Q],
                    ETH_P_IPV6,
                    &v6(NEXT_DEST_OPTS, None, &v6_rest),
                ),
                18 + 40 + v6_tcp_at + 20,
            ),
            (
                eth(&[], ETH_P_IPV6, &v6(IPPROTO_TCP, None, &data.bytes())),
                14 + 40 + 20,
            ),
        ]
    }

    #[test]
    fn every_cut_before_the_end_of_the_tcp_header_is_truncated() {
        for (frame, tcp_end) in samples() {
            assert!(matches!(p(&frame), Parsed::Tcp(_)));
            for n in 0..tcp_end {
                assert_eq!(
                    p(&frame[..n]),
                    skip(SkipReason::Truncated),
                    "frame of {} cut to {n} (TCP header ends at {tcp_end})",
                    frame.len()
                );
            }
        }
    }

    #[test]
    fn no_truncation_or_corruption_of_a_valid_frame_panics() {
        for (frame, _) in samples() {
            for n in 0..=frame.len() {
                let _ = p(&frame[..n]);
            }
            for i in 0..frame.len() {
                for v in [
                    0x00,
                    0xff,
                    0x01,
                    0x80,
                    0x0f,
                    0xf0,
                    frame[i] ^ 0xff,
                    frame[i] ^ 0x01,
                ] {
                    let mut f = frame.clone();
                    f[i] = v;
                    let got = p(&f);
                    // Whatever it decides, a segment it reports fits in what the headers claim.
                    if let Parsed::Tcp(pkt) = got {
                        assert!(pkt.seg.len < 1 << 17, "byte {i} = {v:#x}: {pkt:?}");
                        assert!(pkt.seg.wscale <= WSCALE_MAX || pkt.seg.wscale == WSCALE_NONE);
                    }
                    for n in [f.len() / 2, f.len().saturating_sub(1)] {
                        let _ = p(&f[..n]);
                    }
                }
            }
        }
    }

    #[test]
    fn two_byte_corruptions_of_the_headers_never_panic() {
        let (frame, tcp_end) = samples().swap_remove(3);
        for i in 0..tcp_end {
            for j in i + 1..tcp_end {
                let mut f = frame.clone();
                f[i] ^= 0xff;
                f[j] = 0xff;
                let _ = p(&f);
            }
        }
    }
}

/// The kernel's first test, before any map is touched: it may let non-TCP through (the parser
/// decides), but must never turn away a frame the parser would take as a segment.
mod could_be_tcp_prefilter {
    use super::*;
    use tcpstate_common::packet::could_be_tcp;

    fn cbt(frame: &[u8]) -> bool {
        could_be_tcp(&SlicePacket(frame))
    }

    #[test]
    fn plain_non_tcp_leaves_at_once() {
        let udp = V4 {
            proto: IPPROTO_UDP,
            ..V4::new()
        };
        assert!(!cbt(&eth(&[], ETH_P_IP, &udp.wrap(&[0u8; 8]))));
        assert!(!cbt(&eth(&[], ETH_P_ARP, &[0u8; 46])));
        assert!(!cbt(&eth(&[], 0x88cc, &[0u8; 46])));
    }

    #[test]
    fn every_frame_the_parser_takes_passes() {
        let t = Tcp::new(SYN).opts(&[3, 3, 7]);
        let frames = [
            frame4(&t),
            eth(&[ETH_P_8021Q], ETH_P_IP, &V4::new().wrap(&t.bytes())),
            eth(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IP,
                &V4::new().wrap(&t.bytes()),
            ),
            eth(&[], ETH_P_IPV6, &v6(IPPROTO_TCP, None, &t.bytes())),
            eth(
                &[],
                ETH_P_IPV6,
                &v6(0, None, &[ext(IPPROTO_TCP, 0), t.bytes()].concat()),
            ),
        ];
        for f in frames {
            assert!(matches!(p(&f), Parsed::Tcp(_)), "the parser takes it");
            assert!(cbt(&f), "so the prefilter must pass it");
        }
        // Too short to tell: the parser counts it as truncated, so it must get there.
        assert!(cbt(&[0u8; 10]));
        assert_eq!(p(&[0u8; 10]), skip(SkipReason::Truncated));
    }
}

mod opening_classification {
    use tcpstate_common::state::{classify_opening, open, InvalidReason, Opening};

    use super::*;

    fn seg(flags: u8) -> Segment {
        Segment {
            seq: 1,
            ack: 2,
            len: 0,
            win: 100,
            flags,
            wscale: WSCALE_NONE,
        }
    }

    #[test]
    fn flags_alone_decide_and_open_agrees() {
        let cases = [
            (SYN, Ok(Opening::Syn)),
            (SYN | ACK, Ok(Opening::SynAck)),
            (ACK, Ok(Opening::Midstream)),
            (ACK | PSH, Ok(Opening::Midstream)),
            (FIN | ACK, Err(InvalidReason::NoFlow)),
            (RST, Err(InvalidReason::NoFlow)),
            (SYN | FIN, Err(InvalidReason::SynFin)),
            (0, Err(InvalidReason::NoFlags)),
        ];
        for (flags, want) in cases {
            assert_eq!(classify_opening(&seg(flags)), want, "flags {flags:#x}");
            let opened =
                open(tcpstate_common::Side::A, &seg(flags), 1, 1, [1000, 80]).map(|(o, _)| o);
            assert_eq!(opened, want, "open() decides the same for {flags:#x}");
        }
    }
}

/// Every frame a hook sees is a tracked segment, a skipped packet with a reason, or not TCP: the
/// prefilter and the parse, over frames of which only a prefix is readable (TC's linear part),
/// never lose one silently.
mod conservation {
    use super::*;

    /// A frame of which only the first `linear` bytes are readable, as TC sees an skb whose
    /// headers lie partly in its page fragments; `total_len` is still the whole skb.
    struct Linear<'a> {
        frame: &'a [u8],
        linear: usize,
    }

    impl Packet for Linear<'_> {
        fn read<T: Copy>(&self, off: usize) -> Option<T> {
            SlicePacket(&self.frame[..self.linear]).read(off)
        }
        fn total_len(&self) -> usize {
            self.frame.len()
        }
    }

    fn frames() -> Vec<(&'static str, Vec<u8>)> {
        let t = Tcp::new(ACK | FIN).payload(6000);
        let mut ext_chain = ext(NEXT_ROUTING, 0);
        ext_chain.extend(ext(NEXT_DEST_OPTS, 1));
        ext_chain.extend(ext(IPPROTO_TCP, 0));
        ext_chain.extend(t.bytes());
        let udp = V4 {
            proto: IPPROTO_UDP,
            ..V4::new()
        };
        vec![
            ("ipv4 tcp", frame4(&t)),
            (
                "ipv6 tcp",
                eth(&[], ETH_P_IPV6, &v6(IPPROTO_TCP, None, &t.bytes())),
            ),
            (
                "ipv6 hop-by-hop, routing, destination options, tcp",
                eth(&[], ETH_P_IPV6, &v6(NEXT_HOP_BY_HOP, None, &ext_chain)),
            ),
            (
                "tagged ipv4 tcp",
                eth(&[ETH_P_8021Q], ETH_P_IP, &V4::new().wrap(&t.bytes())),
            ),
            ("ipv4 udp", eth(&[], ETH_P_IP, &udp.wrap(&[0u8; 6000]))),
            ("arp", eth(&[], ETH_P_ARP, &[0u8; 46])),
        ]
    }

    #[test]
    fn a_frame_with_only_its_ethernet_header_readable_is_not_dropped_by_the_prefilter() {
        // Regression: tcpreplay's 4 KB+ IPv4 frames reach TC with 14 linear bytes; the prefilter
        // could not read the protocol byte and dropped them before the pull.
        let frame = frame4(&Tcp::new(ACK | FIN).payload(6000));
        let linear = Linear {
            frame: &frame,
            linear: 14,
        };
        assert!(could_be_tcp(&linear));
        assert_eq!(parse(&linear), skip(SkipReason::Truncated), "so TC pulls");
        assert_eq!(
            parse(&SlicePacket(&frame)),
            tcp4(&Tcp::new(ACK | FIN).payload(6000), 6000, WSCALE_NONE),
            "and after the pull it is a segment"
        );
    }

    #[test]
    fn the_prefilter_turns_away_only_what_the_parser_calls_not_tcp() {
        for (what, frame) in frames() {
            let whole = parse(&SlicePacket(&frame));
            for linear in 0..=frame.len().min(200) {
                let view = Linear {
                    frame: &frame,
                    linear,
                };
                if !could_be_tcp(&view) {
                    assert_eq!(whole, Parsed::NotTcp, "{what}, {linear} bytes linear");
                }
                // A partial view is either what the whole frame parses to, or truncated (which
                // TC answers with a pull); never a different verdict.
                let part = parse(&view);
                assert!(
                    part == whole || part == skip(SkipReason::Truncated),
                    "{what}, {linear} bytes linear: {part:?} vs {whole:?}"
                );
            }
        }
    }

    #[test]
    fn tcp_frames_are_segments_whatever_their_extension_headers() {
        for (what, frame) in frames().into_iter().take(4) {
            assert!(
                matches!(parse(&SlicePacket(&frame)), Parsed::Tcp(t) if t.seg.len == 6000),
                "{what}"
            );
        }
    }
}

/// Devices without a link-layer header (tun, WireGuard, IP tunnels): the packet starts at the IP
/// header, and the same IPv4/IPv6/TCP steps run from offset 0.
mod no_link_layer {
    use super::*;

    fn ip(packet: &[u8]) -> Parsed {
        parse_ip(&SlicePacket(packet))
    }

    #[test]
    fn an_ipv4_packet_parses_as_the_same_frame_behind_ethernet_does() {
        let t = Tcp::new(SYN).opts(&LINUX_SYN_OPTS).payload(3);
        let packet = V4::new().wrap(&t.bytes());
        assert_eq!(ip(&packet), tcp4(&t, 3, 7));
        assert_eq!(ip(&packet), p(&eth(&[], ETH_P_IP, &packet)));
        assert_eq!(
            parse_link(&SlicePacket(&packet), LinkLayer::Ip),
            ip(&packet)
        );
        assert!(could_be_tcp_ip(&SlicePacket(&packet)));
    }

    #[test]
    fn an_ipv6_packet_with_extension_headers_parses_from_offset_zero() {
        let t = Tcp::new(ACK).payload(10);
        let mut rest = ext(IPPROTO_TCP, 0);
        rest.extend_from_slice(&t.bytes());
        let packet = v6(NEXT_HOP_BY_HOP, None, &rest);
        assert_eq!(ip(&packet), tcp6(&t, 10, WSCALE_NONE));
        assert!(could_be_tcp_ip(&SlicePacket(&packet)));
    }

    #[test]
    fn the_same_bytes_read_as_ethernet_are_not_a_segment() {
        // What the tracker did on tun devices before it knew their link type: the IPv4 header's
        // bytes 12-13 (part of the source address) taken for an EtherType.
        let t = Tcp::new(ACK);
        let packet = V4::new().wrap(&t.bytes());
        assert_ne!(p(&packet), tcp4(&t, 0, WSCALE_NONE));
        assert_eq!(
            parse_link(&SlicePacket(&packet), LinkLayer::Ethernet),
            p(&packet)
        );
    }

    #[test]
    fn udp_over_ipv4_leaves_at_the_prefilter() {
        let v4 = V4 {
            proto: IPPROTO_UDP,
            ..V4::new()
        };
        let packet = v4.wrap(&[0u8; 8]);
        assert!(!could_be_tcp_ip(&SlicePacket(&packet)));
        assert_eq!(ip(&packet), Parsed::NotTcp);
    }

    #[test]
    fn a_version_that_is_neither_4_nor_6_is_counted_not_dropped_silently() {
        let t = Tcp::new(ACK);
        let mut packet = V4::new().wrap(&t.bytes());
        packet[0] = 0x55;
        assert!(
            could_be_tcp_ip(&SlicePacket(&packet)),
            "the prefilter lets it through so the parser can count it"
        );
        assert_eq!(ip(&packet), skip(SkipReason::BadIpVersion));
    }

    #[test]
    fn an_empty_or_cut_packet_is_truncated() {
        assert_eq!(ip(&[]), skip(SkipReason::Truncated));
        let t = Tcp::new(ACK);
        let packet = V4::new().wrap(&t.bytes());
        assert_eq!(ip(&packet[..30]), skip(SkipReason::Truncated));
    }
}
