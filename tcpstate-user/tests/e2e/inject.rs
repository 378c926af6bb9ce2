//! Frames the stack cannot be asked to send, injected with AF_PACKET from the client namespace:
//! VLAN and QinQ tags (this kernel has no 8021q module) and malformed headers. Each must land in
//! the right counter, pass untouched, and leave the tracker working for real traffic.

use std::{os::fd::AsRawFd, time::Duration};

use crate::{
    harness::*,
    support::frames::{ethernet, ipv4, Tcp, ETH_P_IP},
};

const SYN: u8 = 0x02;
const FIN: u8 = 0x01;

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
        vec![v4(&[], 5, 6, 0, &Tcp::new(5006, 80, SYN | FIN).bytes())],
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
