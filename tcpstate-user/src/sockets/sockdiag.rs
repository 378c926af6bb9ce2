//! The kernel's own socket table through netlink sock_diag (inet_diag, `ss`'s source): used to seed
//! the flow table at start-up.

use std::{io, net::IpAddr, time::Duration};

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

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48 bytes), expires, rqueue,
/// wqueue, uid, inode.
const INET_DIAG_MSG_LEN: usize = 72;

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
pub struct Diag(std::os::fd::OwnedFd);

impl Diag {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Diag> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly opened descriptor nothing else owns.
        Ok(Diag(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
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
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            request(&self.0, family, states)?;
            read_all(&self.0, &mut out)?;
        }
        Ok(out)
    }
}

fn request(fd: &std::os::fd::OwnedFd, family: u8, states: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + 56);
    let len = (NLMSG_HDRLEN + 56) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed sockid (48 bytes).
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(&[0u8; 48]);
    // SAFETY: zeroed sockaddr_nl addresses the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: msg and addr are valid for the given lengths.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_all(fd: &std::os::fd::OwnedFd, out: &mut Vec<Socket>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut data = &buf[..n as usize];
        while data.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
            if len < NLMSG_HDRLEN || len > data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(data[16..20].try_into().expect("4 bytes"));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(s) = parse_msg(&data[NLMSG_HDRLEN..len]) {
                        out.push(s);
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            let step = (len + 3) & !3;
            data = &data[step.min(data.len())..];
        }
    }
}

fn parse_msg(m: &[u8]) -> Option<Socket> {
    if m.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = m[0] as i32;
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let addr = |off: usize| -> IpAddr {
        if family == libc::AF_INET {
            IpAddr::from([m[off], m[off + 1], m[off + 2], m[off + 3]])
        } else {
            let b: [u8; 16] = m[off..off + 16].try_into().expect("16 bytes");
            IpAddr::from(b)
        }
    };
    let u32_at = |off: usize| u32::from_ne_bytes(m[off..off + 4].try_into().expect("4 bytes"));
    Some(Socket {
        state: KernelState::from_raw(m[1]),
        local: (addr(8), sport),
        remote: (addr(24), dport),
        rqueue: u32_at(56),
        wqueue: u32_at(60),
        uid: u32_at(64),
        inode: u32_at(68),
        timer: Timer::from_raw(m[2]),
        retrans: m[3],
        expires: Duration::from_millis(u32_at(52).into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
