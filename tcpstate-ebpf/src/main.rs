//! tcpstate's kernel programs. Entry points only: parsing and the state machine are
//! tcpstate-common's, the map glue is `track`.
//!
//! Every program fails open: whatever happens, the packet goes on untouched.
#![no_std]
#![no_main]

mod packet;
mod track;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use aya_log_ebpf::{debug, info, warn};
use tcpstate_common::{
    counters::Hook,
    packet::{could_be_tcp, Packet, SkipReason, MAX_HEADER_OFFSET},
};

use crate::{
    packet::{parse_frame, Frame, ParseStatus},
    track::{logging, track, Event, Scratch, View},
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
    xdp_track(&ctx, View::HostIngress)
}

/// Tap mode (with `--ingress-hook xdp`): a port that sees both directions (mirror port, `lo`).
#[xdp]
pub fn tcpstate_xdp_tap(ctx: XdpContext) -> u32 {
    xdp_track(&ctx, View::Tap)
}

/// The XDP programs' body: parse, track, log.
#[inline(always)]
fn xdp_track(ctx: &XdpContext, view: View) -> u32 {
    if let Some((scratch, status)) = xdp_parse(ctx) {
        track(status, scratch, Hook::Xdp, view);
        if logging() {
            log_event(ctx, scratch);
        }
    }
    xdp_action::XDP_PASS
}

/// The prefilter, then the parse into this CPU's scratch slot; `None` for frames that cannot be
/// TCP (they leave at once, uncounted).
#[inline(always)]
fn xdp_parse(ctx: &XdpContext) -> Option<(&'static mut Scratch, ParseStatus)> {
    if !could_be_tcp(&Frame::xdp(ctx)) {
        return None;
    }
    let scratch = Scratch::get()?;
    let status = parse_frame(&Frame::xdp(ctx), &mut scratch.pkt);
    Some((scratch, status))
}

/// Host mode, egress: segments local endpoints send.
#[classifier]
pub fn tcpstate_tc_egress(ctx: TcContext) -> i32 {
    tc_track(&ctx, Hook::TcEgress, View::HostEgress)
}

/// Host mode, ingress (the default ingress hook): segments arriving for local endpoints.
#[classifier]
pub fn tcpstate_tc_ingress(ctx: TcContext) -> i32 {
    tc_track(&ctx, Hook::TcIngress, View::HostIngress)
}

/// Tap mode on TC ingress: a port that sees both directions.
#[classifier]
pub fn tcpstate_tc_tap(ctx: TcContext) -> i32 {
    tc_track(&ctx, Hook::TcIngress, View::Tap)
}

/// The TC programs' body: parse (pulling headers into the linear area if needed), track, log.
#[inline(always)]
fn tc_track(ctx: &TcContext, hook: Hook, view: View) -> i32 {
    // Not pulled: a frame whose EtherType or IPv4 protocol is outside the linear area reads as
    // "could be" and goes through the full path below, pull included.
    if !could_be_tcp(&Frame::tc(ctx)) {
        return TCX_NEXT;
    }
    let Some(scratch) = Scratch::get() else {
        return TCX_NEXT;
    };
    let frame = Frame::tc(ctx);
    let mut status = parse_frame(&frame, &mut scratch.pkt);
    // Headers outside the linear area (possible for locally built skbs, and for GRO aggregates
    // on ingress): pull them in and parse again. Only the parse repeats.
    if status == ParseStatus::Skip(SkipReason::Truncated) && frame.total_len() > frame.readable() {
        let want = if ctx.len() < TC_PULL {
            ctx.len()
        } else {
            TC_PULL
        };
        if ctx.pull_data(want).is_ok() {
            status = parse_frame(&Frame::tc(ctx), &mut scratch.pkt);
        }
    }
    if hook == Hook::TcEgress {
        track::mark_syn_cookie(ctx, scratch, status);
    }
    track(status, scratch, hook, view);
    if logging() {
        log_event(ctx, scratch);
    }
    TCX_NEXT
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
    if let Some((scratch, ParseStatus::Tcp)) = xdp_parse(&ctx) {
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
