//! [`Packet`] over XDP and TC packet memory: every read compared against `data_end`, the shape the
//! verifier proves safe.

use aya_ebpf::programs::{TcContext, XdpContext};
use tcpstate_common::packet::{
    could_be_tcp, could_be_tcp_ip, parse, parse_ip, LinkLayer, Packet, Parsed, SkipReason,
    TcpPacket, MAX_HEADER_OFFSET,
};

pub struct Frame {
    data: usize,
    data_end: usize,
    len: usize,
}

impl Frame {
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Frame {
        Frame {
            data: ctx.data(),
            data_end: ctx.data_end(),
            len: ctx.data_end() - ctx.data(),
        }
    }

    /// TC sees the skb's linear part; `len` is the whole skb (GSO super-packets included).
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Frame {
        Frame {
            data: ctx.data(),
            data_end: ctx.data_end(),
            len: ctx.len() as usize,
        }
    }

    #[inline(always)]
    pub fn readable(&self) -> usize {
        self.data_end - self.data
    }
}

impl Packet for Frame {
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Option<T> {
        // An explicit bound on the offset: the verifier needs a known maximum before it accepts a
        // packet pointer with a variable offset. No header we look for lies further in.
        if off > MAX_HEADER_OFFSET + 64 {
            return None;
        }
        let start = self.data + off;
        if start + core::mem::size_of::<T>() > self.data_end {
            return None;
        }
        // SAFETY: [start, start + size) lies inside the packet (checked against data_end above);
        // T is a plain integer type; the read may be unaligned (allowed for packet memory on the
        // architectures the object is built for, and compiled as such by bpf-linker).
        Some(unsafe { core::ptr::read_unaligned(start as *const T) })
    }

    #[inline(always)]
    fn total_len(&self) -> usize {
        self.len
    }
}

/// The prefilter for the device's link layer (a literal at each entry point, so each program
/// carries one).
#[inline(always)]
pub fn could_be_tcp_on(frame: &Frame, link: LinkLayer) -> bool {
    match link {
        LinkLayer::Ethernet => could_be_tcp(frame),
        LinkLayer::Ip => could_be_tcp_ip(frame),
    }
}

/// Parses a frame of the device's link layer into `out` (a literal at each entry point: the
/// other parser is not in that program).
#[inline(always)]
pub fn parse_frame(frame: &Frame, out: &mut TcpPacket, link: LinkLayer) -> ParseStatus {
    match link {
        LinkLayer::Ethernet => parse_ethernet_frame(frame, out),
        LinkLayer::Ip => parse_ip_packet(frame, out),
    }
}

/// Parses an Ethernet frame into `out`, returning `Parsed::Tcp` with the same value or why it is
/// not a segment. A BPF function of its own so the parser's stack frame is gone by the time the
/// flow update runs (the verifier adds up the frames of a call chain against 512 bytes). The
/// packet pointers reach it through `frame`; as a static function it is verified in its caller's
/// context.
#[inline(never)]
fn parse_ethernet_frame(frame: &Frame, out: &mut TcpPacket) -> ParseStatus {
    status(parse(frame), out)
}

/// [`parse_ethernet_frame`] for a device without a link-layer header: the packet starts at the
/// IP header.
#[inline(never)]
fn parse_ip_packet(frame: &Frame, out: &mut TcpPacket) -> ParseStatus {
    status(parse_ip(frame), out)
}

#[inline(always)]
fn status(parsed: Parsed, out: &mut TcpPacket) -> ParseStatus {
    match parsed {
        Parsed::Tcp(t) => {
            *out = t;
            ParseStatus::Tcp
        }
        Parsed::NotTcp => ParseStatus::NotTcp,
        Parsed::Skip(why) => ParseStatus::Skip(why),
    }
}

/// [`Parsed`] without its payload, which `parse_frame` leaves in the caller's scratch slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParseStatus {
    NotTcp,
    Tcp,
    Skip(SkipReason),
}
