//! Frames the stack cannot be asked to send, injected with AF_PACKET from the client namespace:
//! VLAN and QinQ tags (this kernel has no 8021q module) and malformed headers. Each must land in
//! the right counter, pass untouched, and leave the tracker working for real traffic. And the
//! conservation rule: every IP frame a hook sees (non-linear ones over a page, headers split
//! between the linear part and the fragments, GSO super-packets) is a tracked segment, a skipped
//! packet with its reason, or not TCP.

use std::time::Duration;

use crate::{
    harness::*,
    support::{
        frames::{ethernet, ipv4, ipv6, Tcp, ETH_P_IP, ETH_P_IPV6},
        packet::PacketSender,
    },
};

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// An Ethernet frame (tagged with `tags`) carrying IPv4 from the client to the server.
fn v4(tags: &[u16], ihl: u8, proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    ethernet(
        tags,
        ETH_P_IP,
        &ipv4([192, 0, 2, 2], [192, 0, 2, 1], proto, ihl, frag, l4),
    )
}

fn syn(sport: u16) -> Vec<u8> {
    Tcp::new(sport, 80, SYN).bytes()
}

/// Sends raw frames out of `dev` in `ns`.
fn inject(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) {
    inject_with(ns, dev, frames, false)
}

/// Sends raw frames out of `dev` in `ns`; with `vnet_hdr`, each frame starts with a
/// `struct virtio_net_hdr` (PACKET_VNET_HDR), which is how a sender hands the kernel a GSO
/// super-packet.
fn inject_with(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>, vnet_hdr: bool) {
    let dev = dev.to_string();
    ns.enter(move || {
        let mut sender = PacketSender::open(&dev);
        if vnet_hdr {
            sender = sender.with_vnet_hdr();
        }
        for f in frames {
            sender.send(&f);
        }
    });
}

/// The client namespace's end of the veth pair.
fn client_veth(p: &Pair) -> String {
    veth(&p.cli)
}

/// A namespace's end of the veth pair.
fn veth(ns: &Netns) -> String {
    let out = ns.ip(&["-o", "link", "show", "type", "veth"]);
    out.split(": ")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn tagged_and_malformed_frames_are_counted_and_pass() {
    let p = Pair::new();
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    let before = d.metrics();
    // Cut 8 bytes into the TCP header: shorter than its IP length says.
    let mut cut = v4(&[], 5, 6, 0, &syn(5007));
    cut.truncate(cut.len() - 8);
    let frames = vec![
        v4(&[10], 5, 6, 0, &syn(5001)),      // 802.1Q-tagged SYN
        v4(&[100, 10], 5, 6, 0, &syn(5002)), // QinQ-tagged SYN
        v4(&[], 4, 6, 0, &syn(5003)),        // IHL 4
        v4(&[], 5, 6, 0x2000, &syn(5004)),   // more-fragments set
        v4(&[], 5, 6, 0, &Tcp::new(5005, 80, SYN).doff(3).bytes()), // data offset 3
        v4(&[], 5, 6, 0, &Tcp::new(5006, 80, SYN | FIN).bytes()), // SYN+FIN
        cut,                                 // cut inside TCP
        v4(&[], 5, 17, 0, &[0u8; 8]),        // UDP: not ours
    ];
    let dev = client_veth(&p);
    inject(&p.cli, &dev, frames);
    let m = d.wait_for("the injected frames counted", |m| {
        m.get("tcpstate_flows_opened_total", &[("how", "syn")]) >= 2.0
    });
    let delta =
        |name: &str, labels: &[(&str, &str)]| m.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta("tcpstate_flows_opened_total", &[("how", "syn")]),
        2.0,
        "both tagged SYNs tracked"
    );
    assert_eq!(
        delta("tcpstate_skipped_packets_total", &[("reason", "bad_ihl")]),
        1.0
    );
    assert_eq!(
        delta("tcpstate_skipped_packets_total", &[("reason", "fragment")]),
        1.0
    );
    assert_eq!(
        delta(
            "tcpstate_skipped_packets_total",
            &[("reason", "bad_data_offset")]
        ),
        1.0
    );
    assert_eq!(
        delta("tcpstate_skipped_packets_total", &[("reason", "truncated")]),
        1.0
    );
    assert_eq!(
        delta("tcpstate_invalid_segments_total", &[("reason", "syn_fin")]),
        1.0
    );
    // Tagged SYN, QinQ SYN, fragment... only well-formed TCP headers count as segments: the two
    // SYNs and the SYN+FIN.
    assert_eq!(
        delta("tcpstate_segments_total", &[("hook", "tc_ingress")]),
        3.0
    );
    // Remote SYNs with no answer: the local endpoint is not in any state, so no gauge moved.
    assert_eq!(m.states(), Default::default());

    // The kernel's records have the target `tcpstate::kernel`; the loader's own lines are
    // `tcpstate::kernel::loader` and do not count.
    assert!(
        !d.log()
            .lines()
            .any(|l| l.contains("tcpstate::kernel") && !l.contains("tcpstate::kernel::")),
        "no kernel log lines unless --kernel-log asks: {}",
        d.log()
    );

    // The tracker still follows real traffic.
    std::thread::sleep(Duration::from_millis(100));
    let l = p.listen(SERVER_V4, 8080);
    let mut c = p.connect(SERVER_V4, 8080);
    let (mut s, _) = l.accept().unwrap();
    exchange(&mut c, &mut s, b"still here");
    d.assert_matches_kernel(&p.srv, "real traffic after hostile frames");
    promtool_check(&d.raw_metrics());
}

#[test]
fn kernel_log_reports_invalid_segments_when_asked() {
    let p = Pair::new();
    let d = Daemon::host(&p, &["--kernel-log", "debug"]);
    let dev = client_veth(&p);
    inject(
        &p.cli,
        &dev,
        vec![v4(&[], 5, 6, 0, &Tcp::new(5006, 80, SYN | FIN).bytes())],
    );
    let want = "invalid segment 5006->80: syn_fin";
    eventually(
        &format!("kernel log line {want:?}"),
        Duration::from_secs(5),
        || {
            let log = d.log();
            if log.contains(want) {
                Ok(())
            } else {
                Err(format!("no kernel log line {want:?} in:\n{log}"))
            }
        },
    );
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains("tcpstate::kernel") && l.contains(want)));
}

/// Payload that puts a frame over a page: AF_PACKET then builds an skb whose linear part is the
/// Ethernet header alone (net/packet/af_packet.c, packet_alloc_skb), as tcpreplay's frames are.
const BIG: usize = 6000;

/// A frame whose IPv6 header is followed by hop-by-hop and destination options, then `l4`.
fn v6_with_options(src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    let mut p = ipv6(src, dst, &[]);
    p[6] = 0; // hop-by-hop
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0]; // -> destination options; PadN
    ext.extend_from_slice(&[6, 1, 1, 12]); // -> TCP, 16 bytes; PadN over the rest
    ext.extend_from_slice(&[0u8; 12]);
    p.extend_from_slice(&ext);
    p.extend_from_slice(l4);
    let payload = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&payload.to_be_bytes());
    ethernet(&[], ETH_P_IPV6, &p)
}

/// A GSO super-packet (one skb, several wire segments) for AF_PACKET with PACKET_VNET_HDR: a
/// `struct virtio_net_hdr` (host byte order, legacy little-endian here) and the frame.
fn gso_v4(src: [u8; 4], dst: [u8; 4], sport: u16) -> Vec<u8> {
    let frame = ethernet(
        &[],
        ETH_P_IP,
        &ipv4(
            src,
            dst,
            6,
            5,
            0,
            &Tcp::new(sport, 80, RST | ACK).payload(BIG).bytes(),
        ),
    );
    let mut h = vec![1u8, 1]; // VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4
    for v in [54u16, 1400, 34, 16] {
        // hdr_len, gso_size, csum_start (the TCP header), csum_offset (its checksum)
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&frame);
    h
}

/// A frame over a page whose linear part ends `linear` bytes in (PACKET_VNET_HDR's hdr_len sets
/// it: net/packet/af_packet.c), so its headers are split between the linear part and the page
/// fragments at that byte.
fn split_at(linear: u16, frame: Vec<u8>) -> Vec<u8> {
    let mut h = vec![0u8, 0]; // no flags, VIRTIO_NET_HDR_GSO_NONE
    for v in [linear, 0, 0, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&frame);
    h
}

/// Split points: inside the IPv4 header (20), inside the TCP header after IPv4 (40, 50),
/// inside the IPv6 header (30) and inside TCP after IPv6 (60).
const SPLITS_V4: [u16; 3] = [20, 40, 50];
const SPLITS_V6: [u16; 2] = [30, 60];

/// What the frames of [`conservation_frames`] must add up to on one hook: TCP segments, skipped
/// fragments, and nothing for the rest (not TCP).
const TRACKED: f64 = 4.0;
const FRAGMENTS: f64 = 1.0;

/// Frames from `src` to `dst`, each TCP segment a RST to a port nobody listens on (so none
/// opens a flow): large IPv4 and IPv6 frames (non-linear), IPv6 with extension headers, a large
/// IPv4 fragment, a large UDP datagram and a small segment.
fn conservation_frames(
    src4: [u8; 4],
    dst4: [u8; 4],
    src6: [u8; 16],
    dst6: [u8; 16],
) -> Vec<Vec<u8>> {
    let rst = |sport| Tcp::new(sport, 80, RST | ACK);
    vec![
        ethernet(
            &[],
            ETH_P_IP,
            &ipv4(src4, dst4, 6, 5, 0, &rst(6001).payload(BIG).bytes()),
        ),
        ethernet(
            &[],
            ETH_P_IPV6,
            &ipv6(src6, dst6, &rst(6002).payload(BIG).bytes()),
        ),
        v6_with_options(src6, dst6, &rst(6003).payload(BIG).bytes()),
        ethernet(
            &[],
            ETH_P_IP,
            &ipv4(src4, dst4, 6, 5, 0x2000, &rst(6004).payload(BIG).bytes()),
        ),
        ethernet(&[], ETH_P_IP, &ipv4(src4, dst4, 17, 5, 0, &[0u8; BIG])),
        ethernet(
            &[],
            ETH_P_IP,
            &ipv4(src4, dst4, 6, 5, 0, &rst(6005).bytes()),
        ),
    ]
}

fn addr4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn addr6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// Injects the conservation frames and a GSO super-packet out of `from`'s veth, and checks that
/// `hook` counted every TCP frame as a segment or a skipped packet, and nothing else.
fn frames_are_conserved(p: &Pair, d: &Daemon, from: &Netns, hook: &str) {
    let (src4, dst4, src6, dst6) = if from.name == p.cli.name {
        (
            addr4(CLIENT_V4),
            addr4(SERVER_V4),
            addr6(CLIENT_V6),
            addr6(SERVER_V6),
        )
    } else {
        (
            addr4(SERVER_V4),
            addr4(CLIENT_V4),
            addr6(SERVER_V6),
            addr6(CLIENT_V6),
        )
    };
    let before = d.metrics();
    let dev = veth(from);
    inject(from, &dev, conservation_frames(src4, dst4, src6, dst6));
    let mut vnet = vec![gso_v4(src4, dst4, 6006)];
    let rst = |sport| Tcp::new(sport, 80, RST | ACK).payload(BIG).bytes();
    for (i, at) in SPLITS_V4.into_iter().enumerate() {
        let l3 = ipv4(src4, dst4, 6, 5, 0, &rst(6010 + i as u16));
        vnet.push(split_at(at, ethernet(&[], ETH_P_IP, &l3)));
    }
    for (i, at) in SPLITS_V6.into_iter().enumerate() {
        let l3 = ipv6(src6, dst6, &rst(6020 + i as u16));
        vnet.push(split_at(at, ethernet(&[], ETH_P_IPV6, &l3)));
    }
    inject_with(from, &dev, vnet, true);
    let split = (SPLITS_V4.len() + SPLITS_V6.len()) as f64;
    let segments = |m: &Metrics| m.get("tcpstate_segments_total", &[("hook", hook)]);
    let skipped = |m: &Metrics, why| m.get("tcpstate_skipped_packets_total", &[("reason", why)]);
    let m = d.wait_for("the injected frames counted", |m| {
        segments(m) - segments(&before) >= TRACKED + 1.0 + split
    });
    // Settle: a late count would show as an excess below.
    std::thread::sleep(Duration::from_millis(300));
    let m2 = d.metrics();
    assert_eq!(segments(&m2), segments(&m), "no late segment");
    assert_eq!(
        segments(&m) - segments(&before),
        TRACKED + 1.0 + split,
        "{hook}: the large IPv4 and IPv6 frames, the one with extension headers, the small one, \
         the GSO super-packet (once) and the frames split inside their headers are segments"
    );
    for why in [
        "truncated",
        "bad_ip_version",
        "bad_ihl",
        "bad_ip_length",
        "ipv6_ext_chain",
        "bad_data_offset",
    ] {
        assert_eq!(
            skipped(&m, why),
            skipped(&before, why),
            "{hook}: none {why}"
        );
    }
    assert_eq!(
        skipped(&m, "fragment") - skipped(&before, "fragment"),
        FRAGMENTS,
        "{hook}: the large fragment is skipped with its reason"
    );
    assert_eq!(
        m.states(),
        Default::default(),
        "RSTs to nobody open nothing"
    );
}

/// Frames over a page for AF_PACKET need an MTU above it on both ends of the pair.
fn jumbo(p: &Pair) {
    for ns in [&p.cli, &p.srv] {
        ns.ip(&["link", "set", "dev", &veth(ns), "mtu", "9000"]);
    }
}

#[test]
fn every_large_or_nonlinear_frame_is_a_segment_a_skip_or_not_tcp_on_tc() {
    let p = Pair::new();
    jumbo(&p);
    let d = Daemon::host(&p, &["--sweep-interval", "100ms"]);
    frames_are_conserved(&p, &d, &p.cli, "tc_ingress");
    frames_are_conserved(&p, &d, &p.srv, "tc_egress");
}

#[test]
fn every_large_or_nonlinear_frame_is_a_segment_a_skip_or_not_tcp_on_xdp() {
    let p = Pair::new();
    jumbo(&p);
    // Generic XDP: native XDP on veth refuses an MTU above a page for a program without frags.
    let d = Daemon::host(
        &p,
        &[
            "--sweep-interval",
            "100ms",
            "--ingress-hook",
            "xdp",
            "--xdp-mode",
            "generic",
        ],
    );
    frames_are_conserved(&p, &d, &p.cli, "xdp");
}
