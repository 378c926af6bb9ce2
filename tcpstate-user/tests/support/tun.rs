//! Tun devices and a relay joining two of them, so TCP between two network namespaces runs over
//! devices without a link-layer header: in IFF_TUN mode with IFF_NO_PI every packet starts at the
//! IP header, as WireGuard and IP tunnels deliver theirs.
//!
//! A device lives as long as its only descriptor: the relay owns both and closes them when it is
//! dropped, which removes the devices (Documentation/networking/tuntap.rst, non-persistent).

use std::{
    fs::{File, OpenOptions},
    io::{ErrorKind, Read, Write},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

/// `TUNSETIFF`, `_IOW('T', 202, int)` in linux/if_tun.h; the libc crate does not define it.
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;

/// How long the relay waits for a packet before it looks at its stop flag again.
const POLL_MS: libc::c_int = 50;

/// A tun device (IFF_TUN | IFF_NO_PI) and its descriptor.
pub struct Tun {
    file: File,
    pub name: String,
}

impl Tun {
    /// Creates tun device `name` in the network namespace that `netns` opens (`/run/netns/NAME`).
    /// The device belongs to the namespace of the task that opens /dev/net/tun, so the opening
    /// thread enters that namespace first; the descriptor then works from any thread.
    pub fn create(netns: &str, name: &str) -> Tun {
        assert!(
            name.len() < libc::IFNAMSIZ,
            "interface name {name:?} is longer than IFNAMSIZ - 1"
        );
        let (netns, name) = (netns.to_string(), name.to_string());
        std::thread::spawn(move || {
            let ns = File::open(&netns).unwrap_or_else(|e| panic!("open {netns}: {e}"));
            // SAFETY: setns on this short-lived thread only, with a valid namespace descriptor.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({netns}): {}", std::io::Error::last_os_error());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap_or_else(|e| {
                    panic!("open /dev/net/tun: {e} (the kernel needs CONFIG_TUN, root needed)")
                });
            // SAFETY: an all-zero ifreq is valid (empty name, zero flags).
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
                *dst = src as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
            assert_eq!(
                rc,
                0,
                "TUNSETIFF {name} in {netns}: {}",
                std::io::Error::last_os_error()
            );
            // Non-blocking: the relay reads only what poll said is there, and a spurious wake-up
            // must not park it where it cannot see its stop flag.
            // SAFETY: fcntl on a descriptor this thread owns.
            let rc = unsafe {
                let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
            };
            assert_eq!(rc, 0, "O_NONBLOCK on the tun descriptor");
            Tun { file, name }
        })
        .join()
        .expect("tun thread panicked")
    }
}

/// Copies every packet one tun device emits into the other, both ways, on a thread of its own,
/// until dropped; the drop stops and joins the thread, and closing the descriptors removes both
/// devices.
pub struct Relay {
    stop: Arc<AtomicBool>,
    relayed: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(a: Tun, b: Tun) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, relayed) = (stop.clone(), relayed.clone());
            std::thread::Builder::new()
                .name(format!("tun relay {}<->{}", a.name, b.name))
                .spawn(move || relay(&[a, b], &stop, &relayed))
                .expect("spawn the tun relay")
        };
        Relay {
            stop,
            relayed,
            thread: Some(thread),
        }
    }

    /// Packets carried so far, both directions.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

fn relay(tuns: &[Tun; 2], stop: &AtomicBool, relayed: &AtomicU64) {
    // A tun device without IFF_VNET_HDR has no offloads: a packet is at most the MTU, well
    // under 64 KiB.
    let mut buf = vec![0u8; 65_536];
    let mut fds = tuns.each_ref().map(|t| libc::pollfd {
        fd: t.file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: two valid pollfd entries that outlive the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll on tun devices: {e}");
            continue;
        }
        for from in 0..2 {
            let revents = fds[from].revents;
            if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                // The device is gone (its namespace was deleted first): nothing more to carry.
                return;
            }
            if revents & libc::POLLIN == 0 {
                continue;
            }
            // Drain what is queued: one read is one packet.
            loop {
                let len = match (&tuns[from].file).read(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => panic!("read from {}: {e}", tuns[from].name),
                };
                // A write fails while the other device is still down (EIO): the packet is lost,
                // as on a wire whose far end is unplugged; TCP retransmits.
                if (&tuns[1 - from].file).write(&buf[..len]).is_ok() {
                    relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Within POLL_MS; the thread drops (closes) both devices as it returns.
            if t.join().is_err() {
                eprintln!("the tun relay thread panicked");
            }
        }
    }
}
