//! The kernel's own socket table through netlink sock_diag (inet_diag, `ss`'s source): used to seed
//! the flow table at start-up.

use std::{io, net::IpAddr};

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
    })
}
