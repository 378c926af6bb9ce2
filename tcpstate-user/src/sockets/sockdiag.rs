//! The kernel's own socket table through netlink sock_diag (inet_diag, `ss`'s source): used to seed
//! the flow table at start-up.

use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagMessage, AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket as NlSocket, SocketAddr};
use tcpstate_common::TcpState;

/// One TCP socket as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub state: KernelState,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub uid: u32,
    pub inode: u32,
    /// Listening sockets: the accept queue's length (sk_ack_backlog); others: unread bytes.
    pub rqueue: u32,
    /// Listening sockets: the accept queue's limit (sk_max_ack_backlog); others: unsent bytes.
    pub wqueue: u32,
    /// The timer pending on the socket (`idiag_timer`), and what is left of it (`idiag_expires`).
    pub timer: Timer,
    pub expires: Duration,
    /// `idiag_retrans`: request sockets, the SYN-ACKs sent again so far; full sockets, the
    /// retransmissions or probes of the pending timer.
    pub retrans: u8,
}

/// What `idiag_timer` says is pending (net/ipv4/inet_diag.c: inet_sk_diag_fill for full sockets,
/// inet_twsk_diag_fill for TIME_WAIT mini-sockets, inet_req_diag_fill for request sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// 0: nothing pending (`expires` is 0).
    None,
    /// 1: a full socket's retransmission, reordering or loss-probe timer; a request socket's next
    /// SYN-ACK (rsk_timer).
    Retransmit,
    /// 2: sk_timer: keepalive, or an orphaned FIN_WAIT_2's fin timer (tcp_keepalive_timer).
    Keepalive,
    /// 3: a TIME_WAIT mini-socket's tw_timer, at whose end the kernel frees it.
    TimeWait,
    /// 4: the zero window probe timer.
    Probe,
    /// Anything newer.
    Other,
}

impl Timer {
    fn from_raw(v: u8) -> Timer {
        match v {
            0 => Timer::None,
            1 => Timer::Retransmit,
            2 => Timer::Keepalive,
            3 => Timer::TimeWait,
            4 => Timer::Probe,
            _ => Timer::Other,
        }
    }
}

// A request socket's SYN-ACK schedule (net/ipv4/inet_connection_sock.c, reqsk_timer_handler and
// tcp_reqsk_timeout): its first timer waits TCP_TIMEOUT_INIT, each next one twice the one before,
// at most TCP_RTO_MAX. The timer that fires with tcp_synack_retries (a sysctl, or the listener's
// TCP_SYNCNT) SYN-ACKs sent again drops the request, so when it ends is the namespace's setting,
// but how long it has lived is in the dump: `--syn-recv-timeout` says the rest.
/// TCP_TIMEOUT_INIT (a BPF sock_ops program can change it per connection; none here does).
const SYNACK_FIRST: Duration = Duration::from_secs(1);
/// TCP_RTO_MAX, the default of net.ipv4.tcp_rto_max_ms.
const RTO_MAX: Duration = Duration::from_secs(120);

impl Socket {
    /// How long until the kernel frees this socket on a timer that only ends it: `None` for the
    /// sockets that have none.
    ///
    /// - TIME_WAIT, and an orphaned FIN_WAIT_2 the kernel keeps as a TIME_WAIT mini-socket with
    ///   FIN_WAIT_2 as its substate (tcp_close and tcp_rcv_state_process call tcp_time_wait when
    ///   tcp_fin_timeout is at most 60 s, the default): the tw_timer frees it in `expires`.
    /// - An orphaned FIN_WAIT_2 still a full socket (no inode: sock_i_ino is 0 once sock_orphan
    ///   cleared sk_socket) with sk_timer pending: its fin timer. When tcp_fin_timeout exceeds 60 s
    ///   it lives on as a mini-socket when that timer fires (tcp_keepalive_timer): a lower bound.
    ///
    /// Not a FIN_WAIT_2 a process still owns, only shut down for writing: the kernel keeps it for
    /// as long as its peer keeps its end, and its sk_timer, when pending, is keepalive.
    pub fn ends_in(&self) -> Option<Duration> {
        match (self.state, self.timer) {
            (KernelState::Conn(TcpState::TimeWait | TcpState::FinWait2), Timer::TimeWait) => {
                Some(self.expires)
            }
            (KernelState::Conn(TcpState::FinWait2), Timer::Keepalive) if self.inode == 0 => {
                Some(self.expires)
            }
            _ => None,
        }
    }

    /// How long ago a SYN_RECV socket's SYN came, from its SYN-ACK schedule: timer k (k SYN-ACKs
    /// sent again before it) waits 2^k s, so with `retrans` sent again and the pending timer due
    /// in `expires`, the timers 0 ..= retrans make its whole life to that instant. `None` for
    /// other states. A request whose SYN-ACK could not be sent again (num_retrans counts those
    /// sent) looks younger than it is, never older.
    pub fn age(&self) -> Option<Duration> {
        if (self.state, self.timer) != (KernelState::Conn(TcpState::SynRecv), Timer::Retransmit) {
            return None;
        }
        let wait = |k: u32| SYNACK_FIRST.saturating_mul(1 << k.min(31)).min(RTO_MAX);
        let lived: Duration = (0..=u32::from(self.retrans)).map(wait).sum();
        Some(lived.saturating_sub(self.expires))
    }
}

/// `include/net/tcp_states.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelState {
    Listen,
    Conn(TcpState),
    Close,
}

impl KernelState {
    fn from_raw(v: u8) -> KernelState {
        match v {
            1 => KernelState::Conn(TcpState::Established),
            2 => KernelState::Conn(TcpState::SynSent),
            // 12 is TCP_NEW_SYN_RECV: request sockets, which inet_diag reports as SYN-RECV too.
            3 | 12 => KernelState::Conn(TcpState::SynRecv),
            4 => KernelState::Conn(TcpState::FinWait1),
            5 => KernelState::Conn(TcpState::FinWait2),
            6 => KernelState::Conn(TcpState::TimeWait),
            8 => KernelState::Conn(TcpState::CloseWait),
            9 => KernelState::Conn(TcpState::LastAck),
            10 => KernelState::Listen,
            11 => KernelState::Conn(TcpState::Closing),
            _ => KernelState::Close,
        }
    }
}

/// `struct nlmsghdr`'s length (netlink-packet-core keeps its constant private).
const NLMSG_HDRLEN: usize = 16;

/// Every TCP socket of this network namespace, IPv4 and IPv6, in every state.
pub fn dump_tcp() -> io::Result<Vec<Socket>> {
    Diag::open()?.dump_tcp()
}

/// Listening sockets only (the kernel filters: cheap even on a busy host).
pub fn dump_listening() -> io::Result<Vec<Socket>> {
    Diag::open()?.dump_listening()
}

/// Sockets whose state bit (1 << TCP_*) is in `states` (the kernel filters, so asking for a few
/// states costs little on a busy host). TIME_WAIT mini-sockets match by their substate, request
/// sockets by TCP_NEW_SYN_RECV (12).
pub fn dump(states: u32) -> io::Result<Vec<Socket>> {
    Diag::open()?.dump(states)
}

/// A sock_diag socket. It answers for the network namespace it was opened in, wherever the
/// thread that later uses it is: container mode opens one inside each watched namespace (on a
/// thread that entered it) and keeps it, so the background walk reads every container's listeners
/// without entering a namespace again.
#[derive(Debug)]
pub struct Diag(NlSocket);

impl Diag {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Diag> {
        NlSocket::new(NETLINK_SOCK_DIAG).map(Diag)
    }

    /// Every TCP socket of the socket's namespace.
    pub fn dump_tcp(&self) -> io::Result<Vec<Socket>> {
        self.dump(u32::MAX)
    }

    /// Listening sockets of the socket's namespace.
    pub fn dump_listening(&self) -> io::Result<Vec<Socket>> {
        self.dump(1 << 10)
    }

    /// Sockets whose state bit (1 << TCP_*) is in `states`.
    pub fn dump(&self, states: u32) -> io::Result<Vec<Socket>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for family in [AF_INET, AF_INET6] {
            self.0
                .send_to(&request(family, states), &SocketAddr::new(0, 0), 0)?;
            loop {
                let n = self.0.recv(&mut &mut buf[..], 0)?;
                if decode(&buf[..n.min(buf.len())], &mut out)? {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The dump request for one family's TCP sockets whose state bit is in `states`.
fn request(family: u8, states: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            // Retained as given: TCP_NEW_SYN_RECV (bit 12) has no named flag in the crate.
            states: StateFlags::from_bits_retain(states),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Decodes the netlink messages of one datagram into `out`: true at the dump's end (NLMSG_DONE).
fn decode(mut data: &[u8], out: &mut Vec<Socket>) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let msg = NetlinkMessage::<Reply>::deserialize(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => return Err(e.to_io()),
            NetlinkPayload::InnerMessage(Reply(Some(s))) => out.push(s),
            _ => {}
        }
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        let step = (msg.header.length as usize + 3) & !3;
        data = &data[step.min(data.len())..];
    }
    Ok(false)
}

/// A SOCK_DIAG_BY_FAMILY reply as this module reads it (`None`: another message type, or one
/// too short or of another family, skipped as the kernel never sends them for this request).
/// Not the crate's `SockDiagMessage`: its `InetResponse` parses, and allocates, every attribute,
/// which nothing here reads, and fails on a MEMINFO shorter than its own struct.
struct Reply(Option<Socket>);

impl NetlinkDeserializable for Reply {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(Reply(if header.message_type == SOCK_DIAG_BY_FAMILY {
            parse_msg(payload)
        } else {
            None
        }))
    }
}

/// One `struct inet_diag_msg` (attributes after it are not read).
fn parse_msg(m: &[u8]) -> Option<Socket> {
    let h = InetResponseHeader::parse(m).ok()?;
    // Hand-read: the crate's `Timer` keeps no `idiag_expires` for a TIME_WAIT timer (the one
    // `ends_in` needs), no `idiag_retrans` but the retransmit timer's, and folds timers it does
    // not know into none. These three fields sit at fixed offsets of the UAPI struct.
    let expires = u32::from_ne_bytes(m.get(52..56)?.try_into().ok()?);
    Some(Socket {
        state: KernelState::from_raw(h.state),
        local: (h.socket_id.source_address, h.socket_id.source_port),
        remote: (
            h.socket_id.destination_address,
            h.socket_id.destination_port,
        ),
        rqueue: h.recv_queue,
        wqueue: h.send_queue,
        uid: h.uid,
        inode: h.inode,
        timer: Timer::from_raw(m[2]),
        retrans: m[3],
        expires: Duration::from_millis(expires.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `struct inet_diag_msg`'s length: family, state, timer, retrans, sockid (48 bytes), expires,
    /// rqueue, wqueue, uid, inode.
    const INET_DIAG_MSG_LEN: usize = 72;

    /// An AF_INET `struct inet_diag_msg` for 192.0.2.1:80 -> 192.0.2.2:40000.
    fn msg(state: u8, timer: u8, retrans: u8, expires_ms: u32, inode: u32) -> Vec<u8> {
        let mut m = vec![libc::AF_INET as u8, state, timer, retrans];
        m.extend_from_slice(&80u16.to_be_bytes());
        m.extend_from_slice(&40000u16.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[192, 0, 2, 1]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[192, 0, 2, 2]);
        m.extend_from_slice(&src);
        m.extend_from_slice(&dst);
        m.extend_from_slice(&[0u8; 12]); // interface, cookie
        for v in [expires_ms, 0, 0, 0, inode] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(m.len(), INET_DIAG_MSG_LEN);
        m
    }

    /// One netlink message of type `kind` around `payload`, padded to 4 bytes as the kernel sends.
    fn nlmsg(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn the_request_is_a_dump_of_one_familys_tcp_sockets_in_the_states_asked() {
        // What the kernel reads (struct nlmsghdr, then struct inet_diag_req_v2), written out.
        let mut want = Vec::new();
        want.extend_from_slice(&72u32.to_ne_bytes());
        want.extend_from_slice(&20u16.to_ne_bytes()); // SOCK_DIAG_BY_FAMILY
        want.extend_from_slice(&0x301u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
        want.extend_from_slice(&1u32.to_ne_bytes()); // seq
        want.extend_from_slice(&0u32.to_ne_bytes()); // pid
        want.extend_from_slice(&[libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, 0, 0]);
        // TCP_LISTEN and TCP_NEW_SYN_RECV, which the crate has no flag for.
        want.extend_from_slice(&((1u32 << 10) | (1 << 12)).to_ne_bytes());
        want.extend_from_slice(&[0u8; 48]);
        assert_eq!(request(AF_INET6, (1 << 10) | (1 << 12)), want);
        let all = request(AF_INET, u32::MAX);
        assert_eq!(all[16], libc::AF_INET as u8);
        assert_eq!(all[20..24], u32::MAX.to_ne_bytes());
    }

    #[test]
    fn a_reply_datagram_decodes_every_socket_until_done() {
        let mut v6 = msg(10, 0, 0, 0, 7);
        v6[0] = libc::AF_INET6 as u8;
        v6[8..24].copy_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6[24..40].copy_from_slice(
            &"2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6[56..60].copy_from_slice(&3u32.to_ne_bytes()); // rqueue: the accept queue
        v6[60..64].copy_from_slice(&128u32.to_ne_bytes()); // its limit
        v6[64..68].copy_from_slice(&1000u32.to_ne_bytes()); // uid
                                                            // Attributes as the kernel adds them unasked: INET_DIAG_SHUTDOWN (u8), then an
                                                            // INET_DIAG_CGROUP_ID (u64); neither is read.
        v6.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
        v6.extend_from_slice(&[12, 0, 21, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let mut datagram = nlmsg(SOCK_DIAG_BY_FAMILY, 2, &msg(6, 3, 0, 15_250, 0));
        datagram.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2, &v6));
        datagram.extend(nlmsg(SOCK_DIAG_BY_FAMILY, 2, &[2, 1, 0])); // too short: skipped
        let mut out = Vec::new();
        assert!(!decode(&datagram, &mut out).unwrap(), "no NLMSG_DONE yet");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].state, KernelState::Conn(TcpState::TimeWait));
        assert_eq!(out[0].ends_in(), Some(Duration::from_millis(15_250)));
        let l = &out[1];
        assert_eq!(l.state, KernelState::Listen);
        assert_eq!(l.local, ("2001:db8::1".parse().unwrap(), 80));
        assert_eq!(l.remote, ("2001:db8::2".parse().unwrap(), 40000));
        assert_eq!((l.rqueue, l.wqueue, l.uid, l.inode), (3, 128, 1000, 7));
        assert_eq!((l.timer, l.retrans), (Timer::None, 0));
        // NLMSG_DONE (its payload the dump's status) ends it.
        let done = nlmsg(3, 2, &0i32.to_ne_bytes());
        assert!(decode(&done, &mut out).unwrap());
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_error_reply_is_the_errno_it_carries() {
        let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
        payload.extend_from_slice(&request(AF_INET, 1 << 10)[..16]);
        let e = decode(&nlmsg(2, 0, &payload), &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // A length past the datagram is not read beyond it.
        let mut cut = nlmsg(SOCK_DIAG_BY_FAMILY, 2, &msg(1, 0, 0, 0, 1));
        cut.truncate(40);
        assert!(decode(&cut, &mut Vec::new()).is_err());
    }

    /// The kernel answers an unprivileged dump too: a listener this test opens is in it, with
    /// this process's uid and an inode.
    #[test]
    fn a_listener_of_ours_is_in_the_kernels_dump() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = dump_listening().unwrap();
        let s = found
            .iter()
            .find(|s| s.local == ("127.0.0.1".parse().unwrap(), port))
            .expect("our listener");
        assert_eq!(s.state, KernelState::Listen);
        assert_eq!(s.uid, rustix::process::geteuid().as_raw());
        assert_ne!(s.inode, 0);
    }

    #[test]
    fn the_pending_timer_and_what_is_left_of_it_are_parsed() {
        let s = parse_msg(&msg(6, 3, 0, 15_250, 0)).unwrap();
        assert_eq!(s.state, KernelState::Conn(TcpState::TimeWait));
        assert_eq!(s.local, ("192.0.2.1".parse().unwrap(), 80));
        assert_eq!(s.remote, ("192.0.2.2".parse().unwrap(), 40000));
        assert_eq!(
            (s.timer, s.expires, s.retrans),
            (Timer::TimeWait, Duration::from_millis(15_250), 0)
        );
        assert_eq!(s.ends_in(), Some(Duration::from_millis(15_250)));
    }

    #[test]
    fn a_request_sockets_age_is_its_syn_ack_schedule_so_far() {
        let age = |retrans, expires_ms| {
            parse_msg(&msg(3, 1, retrans, expires_ms, 0))
                .unwrap()
                .age()
                .map(|d| d.as_millis())
        };
        // The first SYN-ACK timer (1 s) due in 0.7 s.
        assert_eq!(age(0, 700), Some(300));
        // Two SYN-ACKs sent again, the third due in 3 s: 1 + 2 + 4 s, less 3.
        assert_eq!(age(2, 3_000), Some(4_000));
        // The fifth sent again (the last under tcp_synack_retries=5), 13 s to go of its 32 s.
        assert_eq!(age(5, 13_000), Some(50_000));
        // Waits stop doubling at TCP_RTO_MAX: 1 + 2 + ... + 64 s, then 120 s twice (not 128, 256).
        assert_eq!(age(8, 20_000), Some((127 + 240 - 20) * 1_000));
        assert_eq!(parse_msg(&msg(6, 3, 0, 9_000, 0)).unwrap().age(), None);
    }

    #[test]
    fn only_timers_that_end_the_socket_count() {
        let ends_in = |state, timer, inode| {
            parse_msg(&msg(state, timer, 0, 9_000, inode))
                .unwrap()
                .ends_in()
        };
        let nine = Some(Duration::from_secs(9));
        assert_eq!(ends_in(6, 3, 0), nine, "TIME_WAIT");
        assert_eq!(ends_in(5, 3, 0), nine, "orphaned FIN_WAIT_2 mini-socket");
        assert_eq!(
            ends_in(5, 2, 0),
            nine,
            "orphaned FIN_WAIT_2 on its fin timer"
        );
        assert_eq!(
            ends_in(5, 2, 42),
            None,
            "keepalive of a socket a process owns"
        );
        assert_eq!(ends_in(5, 0, 42), None, "shut down for writing: no timer");
        assert_eq!(ends_in(1, 2, 42), None, "ESTABLISHED keepalive");
        assert_eq!(ends_in(4, 1, 42), None, "FIN_WAIT_1 retransmission");
        assert_eq!(
            ends_in(3, 1, 0),
            None,
            "a request's timer sends a SYN-ACK again"
        );
    }
}
