//! tcpstate's kernel programs. Entry points only: parsing and the state machine are
//! tcpstate-common's, the map glue is `track`.
//!
//! Every program fails open: whatever happens, the packet goes on untouched.
#![no_std]
#![no_main]

mod packet;
mod track;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2, xdp_action, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_F_CURRENT_NETNS,
    },
    helpers::{bpf_fib_lookup, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::{debug, info, warn};
use tcpstate_common::{
    counters::{idx, Hook, UntrackedReason},
    flow::FlowKey,
    packet::{LinkLayer, Packet, SkipReason, TcpPacket, MAX_HEADER_OFFSET},
    scope,
};

use crate::{
    packet::{could_be_tcp_on, parse_frame, Frame, ParseStatus},
    track::{count, logging, scope_of, track, Event, Owner, Scratch, View},
};

/// TCX "next": let the rest of the chain (or the stack) have the packet, as a monitor must.
const TCX_NEXT: i32 = -1;
/// Bytes a TC program pulls into the linear area when headers straddle it: every byte the parser
/// may read (headers end by `MAX_HEADER_OFFSET`, reads reach 64 past it), so an IPv6 chain of
/// extension headers the walk accepts is never cut by the pull and miscounted as truncated.
const TC_PULL: u32 = (MAX_HEADER_OFFSET + 64 + 64) as u32;

/// Host mode, ingress (with `--ingress-hook xdp`): segments arriving for local endpoints.
#[xdp]
pub fn tcpstate_xdp_host(ctx: XdpContext) -> u32 {
    xdp_track(&ctx, View::HostIngress, LinkLayer::Ethernet)
}

/// Tap mode (with `--ingress-hook xdp`): a port that sees both directions (mirror port, `lo`).
#[xdp]
pub fn tcpstate_xdp_tap(ctx: XdpContext) -> u32 {
    xdp_track(&ctx, View::Tap, LinkLayer::Ethernet)
}

/// `tcpstate_xdp_host` on a device without a link-layer header (tun, WireGuard, IP tunnels).
#[xdp]
pub fn tcpstate_xdp_host_l3(ctx: XdpContext) -> u32 {
    xdp_track(&ctx, View::HostIngress, LinkLayer::Ip)
}

/// `tcpstate_xdp_tap` on a device without a link-layer header.
#[xdp]
pub fn tcpstate_xdp_tap_l3(ctx: XdpContext) -> u32 {
    xdp_track(&ctx, View::Tap, LinkLayer::Ip)
}

/// The XDP programs' body: parse, track, log.
#[inline(always)]
fn xdp_track(ctx: &XdpContext, view: View, link: LinkLayer) -> u32 {
    if let Some((scratch, status)) = xdp_parse(ctx, link) {
        // SAFETY: the program's own context.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        track(
            status,
            scratch,
            Hook::Xdp,
            view,
            Owner::Host,
            false,
            |pkt, view| owned_here(ctx, pkt, view, ifindex),
        );
        if logging() {
            log_event(ctx, scratch);
        }
    }
    xdp_action::XDP_PASS
}

/// The prefilter, then the parse into this CPU's scratch slot; `None` for frames that cannot be
/// TCP (they leave at once, uncounted).
#[inline(always)]
fn xdp_parse(ctx: &XdpContext, link: LinkLayer) -> Option<(&'static mut Scratch, ParseStatus)> {
    if !could_be_tcp_on(&Frame::xdp(ctx), link) {
        return None;
    }
    let scratch = Scratch::get()?;
    // XDP runs on host- and tap-mode interfaces only: the host's scope.
    scratch.set_scope(scope::HOST);
    let status = parse_frame(&Frame::xdp(ctx), &mut scratch.pkt, link);
    Some((scratch, status))
}

/// Host mode, egress: segments local endpoints send.
#[classifier]
pub fn tcpstate_tc_egress(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcEgress,
        View::HostEgress,
        Owner::Host,
        LinkLayer::Ethernet,
    )
}

/// Host mode, ingress (the default ingress hook): segments arriving for local endpoints.
#[classifier]
pub fn tcpstate_tc_ingress(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcIngress,
        View::HostIngress,
        Owner::Host,
        LinkLayer::Ethernet,
    )
}

/// Tap mode on TC ingress: a port that sees both directions.
#[classifier]
pub fn tcpstate_tc_tap(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcIngress,
        View::Tap,
        Owner::Host,
        LinkLayer::Ethernet,
    )
}

/// `tcpstate_tc_egress` on a device without a link-layer header (tun, WireGuard, IP tunnels):
/// TC sees its packets from the IP header on.
#[classifier]
pub fn tcpstate_tc_egress_l3(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcEgress,
        View::HostEgress,
        Owner::Host,
        LinkLayer::Ip,
    )
}

/// `tcpstate_tc_ingress` on a device without a link-layer header.
#[classifier]
pub fn tcpstate_tc_ingress_l3(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcIngress,
        View::HostIngress,
        Owner::Host,
        LinkLayer::Ip,
    )
}

/// `tcpstate_tc_tap` on a device without a link-layer header.
#[classifier]
pub fn tcpstate_tc_tap_l3(ctx: TcContext) -> i32 {
    tc_track(&ctx, Hook::TcIngress, View::Tap, Owner::Host, LinkLayer::Ip)
}

/// Container mode, ingress of the host-side end of a container's veth: what the container sends
/// (the hooks are swapped: the host's ingress is the container's egress), so the sender is the
/// local endpoint, counted in the container's scope.
#[classifier]
pub fn tcpstate_tc_ctr_ingress(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcIngress,
        View::HostEgress,
        Owner::Container,
        LinkLayer::Ethernet,
    )
}

/// Container mode, egress of the host-side end of a container's veth: what the container receives.
#[classifier]
pub fn tcpstate_tc_ctr_egress(ctx: TcContext) -> i32 {
    tc_track(
        &ctx,
        Hook::TcEgress,
        View::HostIngress,
        Owner::Container,
        LinkLayer::Ethernet,
    )
}

/// The TC programs' body: parse (pulling headers into the linear area if needed), track, log.
/// `owner`: whose endpoints the interface carries (a container's: the scope map names it).
/// `link`: what the device's frames start with.
#[inline(always)]
fn tc_track(ctx: &TcContext, hook: Hook, view: View, owner: Owner, link: LinkLayer) -> i32 {
    // Not pulled: a frame whose EtherType or IPv4 protocol is outside the linear area reads as
    // "could be" and goes through the full path below, pull included.
    if !could_be_tcp_on(&Frame::tc(ctx), link) {
        return TCX_NEXT;
    }
    let Some(scratch) = Scratch::get() else {
        return TCX_NEXT;
    };
    if owner == Owner::Container {
        // SAFETY: the context's __sk_buff, valid for the program run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        match scope_of(ifindex) {
            Some(s) => scratch.set_scope(s),
            None => {
                // Attached before its scope was written, or being detached: counted in the host's
                // slots, never tracked under a wrong scope.
                count(idx::UNTRACKED + UntrackedReason::NoScope as u32);
                return TCX_NEXT;
            }
        }
    } else {
        scratch.set_scope(scope::HOST);
    }
    let frame = Frame::tc(ctx);
    let mut status = parse_frame(&frame, &mut scratch.pkt, link);
    // Headers outside the linear area (possible for locally built skbs, and for GRO aggregates
    // on ingress): pull them in and parse again. Only the parse repeats.
    if status == ParseStatus::Skip(SkipReason::Truncated) && frame.total_len() > frame.readable() {
        let want = if ctx.len() < TC_PULL {
            ctx.len()
        } else {
            TC_PULL
        };
        if ctx.pull_data(want).is_ok() {
            status = parse_frame(&Frame::tc(ctx), &mut scratch.pkt, link);
        }
    }
    // SYN cookies: what the local endpoints send (host egress, or a container veth's ingress,
    // which carries what the container sends).
    let host_egress = view == View::HostEgress && owner == Owner::Host;
    if view == View::HostEgress {
        track::mark_syn_cookie(ctx, scratch, status, owner);
    }
    // What the host only forwards is nobody's here (a load-time constant prunes this when off).
    let forwarded = host_egress
        && track::transit_check()
        && track::egress_origin(ctx) == track::Origin::Forwarded;
    track(
        status,
        scratch,
        hook,
        view,
        owner,
        forwarded,
        |pkt, view| {
            // Leaving the host, the skb says it; arriving, the kernel's socket and routing
            // tables do.
            if view == View::HostEgress {
                !forwarded
            } else {
                // SAFETY: the context's __sk_buff, valid for the program run.
                owned_here(ctx, pkt, view, unsafe { (*ctx.skb.skb).ifindex })
            }
        },
    );
    if logging() {
        log_event(ctx, scratch);
    }
    TCX_NEXT
}

/// Whether the local end of an arriving segment's flow is this host's: a socket owns it, or its
/// destination is one of the host's own addresses (a SYN to a closed port: the host answers it
/// with an RST, a refused handshake). The transit check, asked only when a flow is about to be
/// created on a host-mode interface with the check on; what reaches neither is forwarded.
#[inline(always)]
fn owned_here<C: EbpfContext>(ctx: &C, pkt: &TcpPacket, view: View, ifindex: u32) -> bool {
    local_socket(ctx, pkt, view) || local_destination(ctx, pkt, ifindex)
}

/// Whether the routing table takes an arriving segment for a local address: the FIB lookup
/// (Linux 4.18, commit 87f5fc7e48dd "bpf: Provide helper to do forwarding lookups in kernel FIB
/// table") answers NOT_FWDED for a local (or broadcast) destination, FWD_DISABLED where the
/// arriving interface forwards nothing (so all it carries is the host's). Addresses a DNAT rule
/// rewrites to a container are local here (the hook runs before netfilter): such a flow is
/// counted until its first answer leaves forwarded, which takes it back (`retract`).
///
/// A BPF function of its own, for its 64-byte parameter block (see `local_socket`).
#[inline(never)]
fn local_destination<C: EbpfContext>(ctx: &C, pkt: &TcpPacket, ifindex: u32) -> bool {
    // Cleared in place by words: `mem::zeroed`, or a zeroed value moved here, compiles to a call
    // of the byte-at-a-time memset (see `tcpstate_common::words`).
    let mut block = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let params = block.as_mut_ptr();
    // SAFETY: a stack slot of the struct's size and alignment, written whole before any field;
    // all-zero is a valid value of this plain-integer struct. The helper reads the whole block.
    let ret = unsafe {
        tcpstate_common::words::zero(params);
        (*params).l4_protocol = 6;
        (*params).sport = pkt.sport.to_be();
        (*params).dport = pkt.dport.to_be();
        (*params).ifindex = ifindex;
        if FlowKey::words_are_v4(&pkt.src) {
            (*params).family = 2; // AF_INET
            (*params).__bindgen_anon_3.ipv4_src = pkt.src[3];
            (*params).__bindgen_anon_4.ipv4_dst = pkt.dst[3];
        } else {
            (*params).family = 10; // AF_INET6
            (*params).__bindgen_anon_3.ipv6_src = pkt.src;
            (*params).__bindgen_anon_4.ipv6_dst = pkt.dst;
        }
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    ret == BPF_FIB_LKUP_RET_NOT_FWDED as i64 || ret == BPF_FIB_LKUP_RET_FWD_DISABLED as i64
}

/// Whether a socket of this host owns the local end of `pkt`'s flow (the receiver on ingress, the
/// sender on egress). bpf_skc_lookup_tcp searches the established, TIME-WAIT,
/// request and listening sockets of the interface's namespace (Linux 5.2, commit edbf8c01de5a
/// "bpf: add skc_lookup_tcp helper"); traffic the host forwards or NATs to a container has none.
///
/// A BPF function of its own: its 36-byte tuple would otherwise sit in the entry point's frame,
/// and the verifier caps the stack of the deepest call chain (entry, `update`, the state machine)
/// at 512 bytes.
#[inline(never)]
fn local_socket<C: EbpfContext>(ctx: &C, pkt: &TcpPacket, view: View) -> bool {
    // The helper takes the tuple as an arriving segment carries it: source = the remote end.
    let (remote, rport, local, lport) = match view {
        View::HostEgress => (pkt.dst, pkt.dport, pkt.src, pkt.sport),
        _ => (pkt.src, pkt.sport, pkt.dst, pkt.dport),
    };
    // Only the arm the helper reads (`size` bytes) is written: clearing the rest compiled to a
    // call of the byte-at-a-time memset (see `tcpstate_common::words`).
    let mut slot = core::mem::MaybeUninit::<bpf_sock_tuple>::uninit();
    let tuple = slot.as_mut_ptr();
    // SAFETY: writing a whole union arm of a stack slot of the union's size and alignment.
    let size = unsafe {
        if FlowKey::words_are_v4(&remote) {
            (*tuple).__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: remote[3],
                daddr: local[3],
                sport: rport.to_be(),
                dport: lport.to_be(),
            };
            12
        } else {
            (*tuple).__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: remote,
                daddr: local,
                sport: rport.to_be(),
                dport: lport.to_be(),
            };
            36
        }
    };
    // SAFETY: a valid context pointer and a tuple whose first `size` bytes are written; a
    // returned socket is released before the function returns, as the verifier demands.
    unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.as_ptr(),
            tuple,
            size,
            BPF_F_CURRENT_NETNS as i64 as u64,
            0,
        );
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk.cast());
    }
    true
}

/// Does nothing but pass: the baseline `cargo xtask bench` measures every program against, loaded
/// from the same object in the same run. Never attached by the daemon.
#[xdp]
pub fn tcpstate_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Parses and looks the flow up, and does nothing else: the floor under the tracker's per-packet
/// cost (the hash lookup of a 36-byte key), which `cargo xtask bench` reports beside it. Never
/// attached by the daemon.
#[xdp]
pub fn tcpstate_xdp_lookup_floor(ctx: XdpContext) -> u32 {
    if let Some((scratch, ParseStatus::Tcp)) = xdp_parse(&ctx, LinkLayer::Ethernet) {
        track::lookup_only(scratch);
    }
    xdp_action::XDP_PASS
}

/// The TC twin of `tcpstate_xdp_pass`, the baseline for the TC program.
#[classifier]
pub fn tcpstate_tc_pass(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

/// One line for a rare event, through aya-log. Entry points call it only when `logging()` (a
/// read-only global the daemon sets from --kernel-log, 0 unless asked): the verifier sees the
/// constant and prunes the logging code, so an unlogged daemon pays nothing for it. The event is
/// consumed here, so the next segment starts clean.
#[inline(always)]
fn log_event<C: EbpfContext>(ctx: &C, s: &mut Scratch) {
    let (sport, dport) = (s.pkt.sport, s.pkt.dport);
    let event = core::mem::replace(&mut s.event, Event::None);
    match event {
        Event::None => {}
        Event::Invalid(why) => debug!(ctx, "invalid segment {}->{}: {}", sport, dport, why.name()),
        Event::Untracked(why) => {
            warn!(ctx, "flow {}->{} not tracked: {}", sport, dport, why.name())
        }
        Event::ResetAccepted => info!(ctx, "RST accepted {}->{}", sport, dport),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (no panicking paths survive verification).
    loop {}
}
