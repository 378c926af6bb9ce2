//! The flow table's key and value: the only layout that crosses the kernel/user boundary.
//!
//! Map values hold integers and byte arrays only (no `bool`, enum or `Option`): the kernel writes raw
//! bytes, and userspace decodes states with `TryFrom`.

use core::net::{IpAddr, Ipv6Addr};

use crate::tcp::TcpState;

/// One side of a flow. Side 0 is the endpoint with the lower `(address, port)`, so both directions
/// of a connection, seen by either hook, find the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Side {
    A = 0,
    B = 1,
}

impl Side {
    #[inline(always)]
    pub const fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    #[inline(always)]
    pub const fn index(self) -> usize {
        self as usize
    }
    #[inline(always)]
    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Flow key. Addresses are IPv6, or IPv4-mapped IPv6 (`::ffff:a.b.c.d`), stored as the four
/// 32-bit words read straight from the packet (network byte order in memory). Ports are in host
/// byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FlowKey {
    pub addr: [[u32; 4]; 2],
    pub port: [u16; 2],
    /// The network namespace the counted endpoints live in ([`crate::scope`]): 0 for the host,
    /// one per watched container namespace. Two containers may use the same addresses and ports
    /// (each has its own 10.88.0.x or its own loopback), and a connection between two containers
    /// on one host is two endpoints in two namespaces: the scope keeps such flows apart.
    pub scope: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
// Compared and hashed as whole words by the flow table.
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

impl FlowKey {
    /// Builds the canonical key for a segment from `src` to `dst`, and says which side sent it.
    #[inline(always)]
    pub fn canonical(src: [u32; 4], sport: u16, dst: [u32; 4], dport: u16) -> (FlowKey, Side) {
        // Any total order works as long as both directions agree; comparing the raw words is the
        // cheapest one the verifier accepts (no byte loops).
        let src_first =
            (src[0], src[1], src[2], src[3], sport) <= (dst[0], dst[1], dst[2], dst[3], dport);
        if src_first {
            (
                FlowKey {
                    addr: [src, dst],
                    port: [sport, dport],
                    scope: crate::scope::HOST,
                },
                Side::A,
            )
        } else {
            (
                FlowKey {
                    addr: [dst, src],
                    port: [dport, sport],
                    scope: crate::scope::HOST,
                },
                Side::B,
            )
        }
    }

    /// The same key in another namespace's scope.
    #[inline(always)]
    pub const fn in_scope(mut self, scope: u32) -> FlowKey {
        self.scope = scope;
        self
    }

    /// Address words for an IPv4 address given in network byte order as it sits in the packet.
    #[inline(always)]
    pub const fn v4_mapped(addr_be: u32) -> [u32; 4] {
        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr_be]
    }

    /// Key words for an address, as the kernel programs store it: IPv4 as [`FlowKey::v4_mapped`],
    /// IPv6 as its four words (a v4-mapped IPv6 address, from a dual-stack socket, gives the same
    /// words as the IPv4 one, as on the wire).
    pub fn addr_words(ip: IpAddr) -> [u32; 4] {
        match ip {
            IpAddr::V4(v4) => Self::v4_mapped(u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                core::array::from_fn(|i| {
                    u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                })
            }
        }
    }

    /// The address a key's side holds; v4-mapped words read back as IPv4.
    pub fn words_addr(words: [u32; 4]) -> IpAddr {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(o);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }

    pub const fn is_v4(&self) -> bool {
        Self::words_are_v4(&self.addr[0])
    }

    /// Whether address words hold an IPv4 address ([`FlowKey::v4_mapped`]).
    #[inline(always)]
    pub const fn words_are_v4(words: &[u32; 4]) -> bool {
        let m = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        words[0] == 0 && words[1] == 0 && words[2] == m
    }
}

/// The key of a flow between two IPv4 endpoints, as the IPv4 table ([`crate::table`]) keeps it:
/// the last words of a [`FlowKey`] whose addresses are both v4-mapped, which is all such a key
/// holds (16 bytes where the general key takes 40). Sides, byte orders and the scope are the
/// general key's, so narrowing a canonical key gives a canonical one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FlowKey4 {
    /// Side A's and side B's address, network byte order in memory.
    pub addr: [u32; 2],
    pub port: [u16; 2],
    pub scope: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);

impl FlowKey4 {
    /// The IPv4 key of `key`, when both its addresses are IPv4.
    #[inline(always)]
    pub fn narrow(key: &FlowKey) -> Option<FlowKey4> {
        let mut out = FlowKey4::default();
        FlowKey4::narrow_into(key, &mut out).then_some(out)
    }

    /// Writes the IPv4 key of `key` into `out` when both its addresses are IPv4, and says whether
    /// it did: the kernel narrows into its per-CPU scratch this way, with no copy of the key on
    /// its 512-byte stack; [`FlowKey4::narrow`] is the same rule by value.
    #[inline(always)]
    pub fn narrow_into(key: &FlowKey, out: &mut FlowKey4) -> bool {
        if !(FlowKey::words_are_v4(&key.addr[0]) && FlowKey::words_are_v4(&key.addr[1])) {
            return false;
        }
        out.addr = [key.addr[0][3], key.addr[1][3]];
        out.port = key.port;
        out.scope = key.scope;
        true
    }

    /// The general key this one narrows.
    #[inline(always)]
    pub const fn widen(&self) -> FlowKey {
        FlowKey {
            addr: [
                FlowKey::v4_mapped(self.addr[0]),
                FlowKey::v4_mapped(self.addr[1]),
            ],
            port: self.port,
            scope: self.scope,
        }
    }
}

/// What one endpoint has sent, as far as the state machine needs it. Written by segments that
/// endpoint sent, with two exceptions that cannot race with them: a SYN-ACK also records what the
/// client expects next (the client sends nothing between its SYN and receiving that SYN-ACK), and a
/// SYN reopening a finished key clears the peer's facts (the peer is closed or in TIME-WAIT).
/// Sequence numbers in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EndpointSeq {
    /// Initial sequence number (valid when `KNOWN_ISN`).
    pub isn: u32,
    /// The acknowledgement number that acknowledges this endpoint's latest SYN or FIN: `isn + 1`
    /// after a SYN, `fin_seq + 1` after a FIN (`fin_seq` = the FIN segment's seq + payload length).
    pub end: u32,
    /// A recent acknowledgement number this endpoint sent, or for a client before its first ACK
    /// the one it will send (the server's ISN + 1, learned from the SYN-ACK); valid when
    /// `known::ACK`. It lags the true value by less than half of `win`: it is refreshed only when
    /// it falls that far behind, which keeps established data off the write path.
    pub ack: u32,
    /// The largest receive window (scaled, bytes) this endpoint advertised since `ack` was refreshed.
    pub win: u32,
}

/// Per-endpoint "this fact is known" bits in [`FlowWord::known`].
pub mod known {
    pub const ISN: u8 = 0x01;
    pub const END: u8 = 0x02;
    pub const ACK: u8 = 0x04;
    /// Not a fact learned but a condition: the endpoint's latest segment advertised a zero
    /// receive window (its application stopped reading), while it can still receive. Set and
    /// cleared by [`crate::state::step`]; it changes the word only when a stall begins or ends.
    pub const ZERO_WINDOW: u8 = 0x08;
    /// Shift for side B's bits.
    pub const B_SHIFT: u8 = 4;
}

/// Record-wide flags in [`FlowWord::flags`].
pub mod flowflags {
    /// First seen without its SYN and picked up as ESTABLISHED.
    pub const MIDSTREAM: u8 = 0x01;
    /// Created by a SYN and still counted against the half-open budget.
    pub const HALF_OPEN: u8 = 0x02;
    /// Inserted by the daemon from the kernel's socket table: ages are lower bounds, except for
    /// states the kernel ends by a timer (TIME_WAIT, an orphaned FIN_WAIT_2, SYN_RECV), whose
    /// entry is dated back from the timer sock_diag reports so they end when the kernel's do.
    pub const SEEDED: u8 = 0x04;
    /// Closed by an accepted RST.
    pub const RESET: u8 = 0x08;
    /// The client side is B (otherwise A).
    pub const CLIENT_B: u8 = 0x10;
    /// Roles guessed from port numbers (no SYN seen).
    pub const ROLE_GUESSED: u8 = 0x20;
    /// The server answered with a SYN cookie (its kernel keeps no state for the connection): the
    /// mirror knows the cookie ISN, and the ACK returning it completes the handshake.
    pub const SYN_COOKIE: u8 = 0x40;
    /// Crossed a host-mode interface without a local socket at either end: traffic the host
    /// forwards or NATs towards a container (container mode's transit check). Tracked, so its
    /// segments stay on the quiet path, and counted in no gauge (`counted` is 0).
    pub const TRANSIT: u8 = 0x80;
}

/// The part of a record that changes on state transitions. Exactly eight bytes, so the kernel can
/// replace it with one compare-and-swap and two CPUs handling the two directions of a connection
/// cannot interleave half-transitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct FlowWord {
    /// [`TcpState`] of side A and side B as `u8`.
    pub state: [u8; 2],
    /// [`flowflags`] bits.
    pub flags: u8,
    /// Which sides are counted in the connection gauges: the local one in host mode, both in tap
    /// mode. Bit 0 = A, bit 1 = B.
    pub counted: u8,
    /// Window-scale shift each side announced in its SYN, or `WSCALE_NONE`.
    pub wscale: [u8; 2],
    /// [`known`] bits, A in the low nibble, B in the high nibble.
    pub known: u8,
    /// A flow picked up midstream that has not earned its count yet: the [`Side::bit`]s of the
    /// sides seen sending (non-RST segments), 0 once both have (or for any other flow). While
    /// non-zero no endpoint of the flow is counted (a stray segment of a connection that already
    /// closed must not become an ESTABLISHED endpoint for days); the daemon may also confirm it
    /// against the kernel's socket table (host mode), or drop it.
    pub pending: u8,
}
const _: () = assert!(core::mem::size_of::<FlowWord>() == 8);

impl FlowWord {
    #[inline(always)]
    pub fn to_bits(self) -> u64 {
        // SAFETY: FlowWord is repr(C), eight bytes, all fields plain integers, no padding.
        unsafe { core::mem::transmute::<FlowWord, u64>(self) }
    }
    #[inline(always)]
    pub fn from_bits(bits: u64) -> FlowWord {
        // SAFETY: every bit pattern is a valid FlowWord (integers only).
        unsafe { core::mem::transmute::<u64, FlowWord>(bits) }
    }
    #[inline(always)]
    pub fn state(&self, side: Side) -> TcpState {
        TcpState::from_u8_lossy(self.state[side.index()])
    }
    #[inline(always)]
    pub fn set_state(&mut self, side: Side, s: TcpState) {
        self.state[side.index()] = s as u8;
    }
    #[inline(always)]
    pub const fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    #[inline(always)]
    pub fn knows(&self, side: Side, bit: u8) -> bool {
        self.known & (bit << (side as u8 * known::B_SHIFT)) != 0
    }
    #[inline(always)]
    pub fn learn(&mut self, side: Side, bit: u8) {
        self.known |= bit << (side as u8 * known::B_SHIFT);
    }
    #[inline(always)]
    pub fn forget_side(&mut self, side: Side) {
        self.known &= !(0x0f << (side as u8 * known::B_SHIFT));
    }
    #[inline(always)]
    pub const fn client(&self) -> Side {
        if self.flags & flowflags::CLIENT_B != 0 {
            Side::B
        } else {
            Side::A
        }
    }
    #[inline(always)]
    pub fn set_client(&mut self, side: Side) {
        match side {
            Side::A => self.flags &= !flowflags::CLIENT_B,
            Side::B => self.flags |= flowflags::CLIENT_B,
        }
    }
    #[inline(always)]
    pub fn role(&self, side: Side) -> Role {
        if self.client() as u8 == side as u8 {
            Role::Client
        } else {
            Role::Server
        }
    }
    /// Whether the side's endpoint advertises a zero window ([`known::ZERO_WINDOW`]).
    #[inline(always)]
    pub fn zero_window(&self, side: Side) -> bool {
        self.knows(side, known::ZERO_WINDOW)
    }
    /// Whether the side's endpoint is in the connection gauges: watched ([`FlowWord::counted`]),
    /// and the flow not a pending midstream pickup ([`FlowWord::pending`]).
    #[inline(always)]
    pub const fn is_counted(&self, side: Side) -> bool {
        self.counted & side.bit() != 0 && self.pending == 0
    }
}

/// Which end opened the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Client = 0,
    Server = 1,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Client, Role::Server];
    pub const fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// The flow table's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowRecord {
    /// Replaced as a whole by compare-and-swap; see [`FlowWord`].
    pub word: u64,
    pub seq: [EndpointSeq; 2],
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) at which each side entered its current state.
    pub since_ns: [u64; 2],
    /// CLOCK_MONOTONIC nanoseconds of the SYN that opened the current connection, 0 if none seen.
    pub syn_ns: u64,
    /// CLOCK_MONOTONIC time of the last segment seen, in ticks of 2^30 ns ([`FlowRecord::seen_tick`]),
    /// refreshed at most once a tick.
    pub last_seen: u32,
    /// When the flow's current zero-window stall began, a `last_seen` tick
    /// ([`FlowRecord::seen_tick`], at least 1): stamped when an endpoint begins advertising a
    /// zero window while its peer does not; meaningful while [`known::ZERO_WINDOW`] is set for
    /// a side. One stamp for both sides: both stalled at once is a deadlock of two applications
    /// that write and never read, and the first stall is the one to date.
    pub stall_tick: u32,
}
const _: () = assert!(core::mem::size_of::<FlowRecord>() == 72);

/// `last_seen` counts ticks of 2^30 ns (1.07 s): the hot path compares the current tick with the
/// stored one on every segment, and a shift is one instruction where dividing by 1e9 is a real
/// `div` (BPF has no multiply-high, so the compiler cannot turn it into a multiplication).
pub const SEEN_TICK_SHIFT: u32 = 30;

impl FlowRecord {
    /// The `last_seen` tick of a CLOCK_MONOTONIC time.
    #[inline(always)]
    pub const fn seen_tick(now_ns: u64) -> u32 {
        (now_ns >> SEEN_TICK_SHIFT) as u32
    }

    /// When the last segment was seen, CLOCK_MONOTONIC nanoseconds (rounded down to its tick).
    pub const fn last_seen_ns(&self) -> u64 {
        (self.last_seen as u64) << SEEN_TICK_SHIFT
    }

    #[inline(always)]
    pub fn word(&self) -> FlowWord {
        FlowWord::from_bits(self.word)
    }
    #[inline(always)]
    pub fn set_word(&mut self, w: FlowWord) {
        self.word = w.to_bits();
    }
}

/// CLOCK_MONOTONIC in nanoseconds, read from userspace: the clock of bpf_ktime_get_ns and
/// bpf_ktime_get_coarse_ns, so the daemon, the inspection commands and the tests compute ages from
/// the record's stamps against the same clock the kernel stamped them with.
#[cfg(feature = "user")]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and integer arrays only, sizes asserted above with no implicit
    // padding (FlowKey 32+4+4, FlowRecord 8+32+16+8+4+4), so every byte pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above (FlowKey4 4+4+2+2+4).
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words_round_trip_and_ipv4_is_v4_mapped() {
        for ip in ["192.0.2.7", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(FlowKey::words_addr(FlowKey::addr_words(ip)), ip);
        }
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            FlowKey::addr_words(v4),
            FlowKey::v4_mapped(u32::from_ne_bytes([192, 0, 2, 7]))
        );
        // IPv4 keys narrow to the IPv4 table's key and back; others do not narrow.
        let (k, _) = FlowKey::canonical(
            FlowKey::addr_words(v4),
            80,
            FlowKey::addr_words("198.51.100.1".parse().unwrap()),
            40000,
        );
        let k = k.in_scope(3);
        let n = FlowKey4::narrow(&k).expect("both IPv4");
        assert_eq!(n.widen(), k);
        let v6 = FlowKey::addr_words("2001:db8::1".parse().unwrap());
        let (k6, _) = FlowKey::canonical(FlowKey::addr_words(v4), 80, v6, 40000);
        assert_eq!(FlowKey4::narrow(&k6), None);
        // A dual-stack socket's v4-mapped address is the same key as the IPv4 one.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(FlowKey::addr_words(mapped), FlowKey::addr_words(v4));
    }
}
