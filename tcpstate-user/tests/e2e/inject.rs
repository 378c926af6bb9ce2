//! Frames the stack cannot be asked to send, injected with AF_PACKET from the client namespace:
//! VLAN and QinQ tags (this kernel has no 8021q module) and malformed headers. Each must land in
//! the right counter, pass untouched, and leave the tracker working for real traffic.

use std::{os::fd::AsRawFd, time::Duration};

use crate::harness::*;

const ETH_P_IP: u16 = 0x0800;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;

/// Ethernet (broadcast destination: XDP sees the frame whatever the address) with optional tags.
fn ethernet(tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    for (i, vid) in tags.iter().enumerate() {
        // Outer tag of a QinQ pair is 802.1ad, the inner (or only) one 802.1Q.
        let tpid: u16 = if i + 1 < tags.len() { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// IPv4 header: 192.0.2.2 -> 192.0.2.1, `ihl` in words, `frag` the flags+offset field.
fn ipv4(ihl: u8, proto: u8, payload_len: usize, frag: u16) -> Vec<u8> {
    let hl = (ihl.max(5) as usize) * 4;
    let mut h = vec![0u8; hl];
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&((hl + payload_len) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&[192, 0, 2, 2]);
    h[16..20].copy_from_slice(&[192, 0, 2, 1]);
    h
}

fn tcp(sport: u16, dport: u16, flags: u8, doff_words: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = doff_words << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t
}

fn frame(tags: &[u16], ip: Vec<u8>, l4: Vec<u8>) -> Vec<u8> {
    let mut f = ethernet(tags, ETH_P_IP);
    f.extend(ip);
    f.extend(l4);
    f
}

/// Sends raw frames out of `dev` in `ns`.
fn inject(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) {
    let dev = std::ffi::CString::new(dev).unwrap();
    ns.enter(move || {
        // SAFETY: plain socket calls with valid buffers; the descriptor is closed by OwnedFd.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(dev.as_ptr()) as i32;
            sll.sll_halen = 6;
            for f in frames {
                let n = libc::sendto(
                    fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n,
                    f.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// The client namespace's end of the veth pair.
fn client_veth(p: &Pair) -> String {
    let out = p.cli.ip(&["-o", "link", "show", "type", "veth"]);
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
    let tcp_syn = |sport| tcp(sport, 80, SYN, 5);
    let frames = vec![
        frame(&[10], ipv4(5, 6, 20, 0), tcp_syn(5001)), // 802.1Q-tagged SYN
        frame(&[100, 10], ipv4(5, 6, 20, 0), tcp_syn(5002)), // QinQ-tagged SYN
        frame(&[], ipv4(4, 6, 20, 0), tcp_syn(5003)),   // IHL 4
        frame(&[], ipv4(5, 6, 20, 0x2000), tcp_syn(5004)), // more-fragments set
        frame(&[], ipv4(5, 6, 20, 0), tcp(5005, 80, SYN, 3)), // data offset 3
        frame(&[], ipv4(5, 6, 20, 0), tcp(5006, 80, SYN | FIN, 5)), // SYN+FIN
        frame(&[], ipv4(5, 6, 20, 0), tcp_syn(5007)[..12].to_vec()), // cut inside TCP
        frame(&[], ipv4(5, 17, 8, 0), vec![0u8; 8]),    // UDP: not ours
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
    assert_eq!(delta("tcpstate_segments_total", &[("hook", "xdp")]), 3.0);
    // Remote SYNs with no answer: the local endpoint is not in any state, so no gauge moved.
    assert_eq!(m.states(), Default::default());

    assert!(
        !d.log().contains("tcpstate::kernel"),
        "no kernel log lines unless --kernel-log asks"
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
        vec![frame(&[], ipv4(5, 6, 20, 0), tcp(5006, 80, SYN | FIN, 5))],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let want = "invalid segment 5006->80: syn_fin";
    while !d.log().contains(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel log line {want:?} in:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d
        .log()
        .lines()
        .any(|l| l.contains("tcpstate::kernel") && l.contains(want)));
}
