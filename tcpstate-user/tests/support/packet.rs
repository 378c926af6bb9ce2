//! An AF_PACKET socket that writes whole frames out of one interface: what the tests and the
//! bench send that no socket of the stack can be asked to (tagged and malformed frames, GSO
//! super-packets, the segments of a million flows).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PACKET_VNET_HDR` (include/uapi/linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;

pub struct PacketSender(OwnedFd);

impl PacketSender {
    /// A socket bound to `iface` in the calling thread's namespace. It receives nothing
    /// (protocol 0).
    pub fn open(iface: &str) -> PacketSender {
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: plain system calls; the descriptor is owned from its creation on, and the
        // address passed is fully initialised and lives across the call.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex != 0, "no interface {iface}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let sock = PacketSender(OwnedFd::from_raw_fd(fd));
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                rc,
                0,
                "bind to {iface}: {}",
                std::io::Error::last_os_error()
            );
            sock
        }
    }

    /// Each frame starts with a `struct virtio_net_hdr`: how a sender hands the kernel a GSO
    /// super-packet.
    pub fn with_vnet_hdr(self) -> PacketSender {
        self.set(PACKET_VNET_HDR, "PACKET_VNET_HDR");
        self
    }

    /// Frames go straight to the driver, past the interface's qdisc (as pktgen sends).
    pub fn bypassing_qdisc(self) -> PacketSender {
        self.set(libc::PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS");
        self
    }

    fn set(&self, option: libc::c_int, name: &str) {
        let one: libc::c_int = 1;
        // SAFETY: an int option on a descriptor this value owns.
        let rc = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_PACKET,
                option,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0, "{name}: {}", std::io::Error::last_os_error());
    }

    /// Sends one whole frame; fails unless all of it went.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer is valid for its length for the duration of the call.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "AF_PACKET send: {}",
            std::io::Error::last_os_error()
        );
    }
}
