//! Attaching the programs to one interface, and detaching them: one path for host-mode, tap-mode
//! and container interfaces, whether chosen at start or followed as they come and go.
//!
//! Programs are attached through TCX (TC ingress and egress, Linux 6.6+) or bpf_link (XDP), and
//! each link is owned by an [`Attachment`]: dropping it detaches, and when the daemon exits,
//! however it exits, the kernel detaches what it still held.

use aya::{
    programs::{tc::SchedClassifierLink, xdp::XdpLink, SchedClassifier, TcAttachType, Xdp},
    Ebpf,
};
use tcpstate_common::{counters::Hook, packet::LinkLayer};
use tracing::info;

use crate::error::Preflight;

/// The hook that sees arriving segments on host- and tap-mode interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    /// TC (TCX) ingress: after the driver built the skb; changes nothing in the datapath.
    Tc,
    /// XDP: before the skb exists, on every wire packet.
    Xdp,
}

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, else generic.
    Auto,
    Native,
    Generic,
}

/// How an interface is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Ingress and egress: the host's own endpoints (comparable to `ss -tan`).
    Host,
    /// Ingress only, both endpoints counted: a port that sees both directions (`lo`, a mirror).
    Tap,
    /// The host-side end of a container's veth, in its namespace's scope, hooks swapped.
    Container,
}

/// Which programs go on an interface: its role, the ingress hook chosen, and what its frames
/// start with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub role: Role,
    pub ingress: IngressHook,
    pub xdp_mode: XdpMode,
    pub link: LinkLayer,
}

/// One program on one hook of an interface, for the log and `tcpstate_attachment_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub iface: String,
    pub hook: &'static str,
    /// `tcx`, or the XDP mode that took (`native`, `generic`).
    pub mode: &'static str,
}

/// The programs on one interface. Dropping it detaches them.
pub struct Attachment {
    pub plan: Plan,
    pub attached: Vec<Attached>,
    _links: Vec<Link>,
}

enum Link {
    Tc(#[allow(dead_code, reason = "held: dropping it detaches")] SchedClassifierLink),
    Xdp(#[allow(dead_code, reason = "held: dropping it detaches")] XdpLink),
}

/// The link type of a device (ARPHRD_* from `ifi_type`) as the parser needs it, or `None` for a
/// link layer the programs cannot parse (Infiniband, CAN, 802.15.4, ...).
///
/// Devices without a link-layer header hand TC (and generic XDP) packets that start at the IP
/// header: tun in tun mode and WireGuard (ARPHRD_NONE), ipip and ip6tnl (TUNNEL, TUNNEL6), sit,
/// GRE (IPGRE, IP6GRE), raw-IP modems (RAWIP) and PPP. `lo` carries a zeroed Ethernet header.
pub fn link_layer(arphrd: u16) -> Option<LinkLayer> {
    const ETHER: u16 = 1;
    const PPP: u16 = 512;
    const RAWIP: u16 = 519;
    const TUNNEL: u16 = 768;
    const TUNNEL6: u16 = 769;
    const LOOPBACK: u16 = 772;
    const SIT: u16 = 776;
    const IPGRE: u16 = 778;
    const IP6GRE: u16 = 823;
    const NONE: u16 = 0xfffe;
    match arphrd {
        ETHER | LOOPBACK => Some(LinkLayer::Ethernet),
        NONE | TUNNEL | TUNNEL6 | SIT | IPGRE | IP6GRE | RAWIP | PPP => Some(LinkLayer::Ip),
        _ => None,
    }
}

/// The programs a plan puts on an interface: (program, TC hook or XDP, hook label).
pub fn programs(plan: &Plan) -> Vec<(&'static str, Option<TcAttachType>, Hook)> {
    let ip = plan.link == LinkLayer::Ip;
    let pick = |eth: &'static str, l3: &'static str| if ip { l3 } else { eth };
    let ingress = match (plan.role, plan.ingress) {
        (Role::Container, _) => (
            "tcpstate_tc_ctr_ingress",
            Some(TcAttachType::Ingress),
            Hook::TcIngress,
        ),
        (Role::Host, IngressHook::Xdp) => (
            pick("tcpstate_xdp_host", "tcpstate_xdp_host_l3"),
            None,
            Hook::Xdp,
        ),
        (Role::Tap, IngressHook::Xdp) => (
            pick("tcpstate_xdp_tap", "tcpstate_xdp_tap_l3"),
            None,
            Hook::Xdp,
        ),
        (Role::Host, IngressHook::Tc) => (
            pick("tcpstate_tc_ingress", "tcpstate_tc_ingress_l3"),
            Some(TcAttachType::Ingress),
            Hook::TcIngress,
        ),
        (Role::Tap, IngressHook::Tc) => (
            pick("tcpstate_tc_tap", "tcpstate_tc_tap_l3"),
            Some(TcAttachType::Ingress),
            Hook::TcIngress,
        ),
    };
    let egress = match plan.role {
        Role::Host => Some((
            pick("tcpstate_tc_egress", "tcpstate_tc_egress_l3"),
            Some(TcAttachType::Egress),
            Hook::TcEgress,
        )),
        Role::Container => Some((
            "tcpstate_tc_ctr_egress",
            Some(TcAttachType::Egress),
            Hook::TcEgress,
        )),
        Role::Tap => None,
    };
    std::iter::once(ingress).chain(egress).collect()
}

/// Loads (verifies) a program of the object once; later calls find it loaded.
pub fn load(ebpf: &mut Ebpf, prog: &str) -> anyhow::Result<()> {
    let program = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow::anyhow!("the object has no program {prog}"))?;
    let loaded = match program {
        aya::programs::Program::SchedClassifier(p) => p.fd().is_ok(),
        aya::programs::Program::Xdp(p) => p.fd().is_ok(),
        _ => anyhow::bail!("{prog} is neither a TC nor an XDP program"),
    };
    if !loaded {
        match program {
            aya::programs::Program::SchedClassifier(p) => p.load()?,
            aya::programs::Program::Xdp(p) => p.load()?,
            _ => unreachable!("checked above"),
        }
        log_verifier_cost(ebpf, prog);
    }
    Ok(())
}

/// Attaches a plan's programs to `iface`. Either all of them are attached or none: a failure
/// detaches what the plan attached before it. The caller checks that the name still belongs to
/// the interface it listed (aya attaches by name).
pub fn attach(ebpf: &mut Ebpf, iface: &str, plan: Plan) -> anyhow::Result<Attachment> {
    let mut links = Vec::new();
    let mut attached = Vec::new();
    for (prog, tc, hook) in programs(&plan) {
        load(ebpf, prog)?;
        let (link, mode) = match tc {
            Some(at) => {
                let p: &mut SchedClassifier =
                    ebpf.program_mut(prog).expect("loaded above").try_into()?;
                let id = p.attach(iface, at)?;
                (Link::Tc(p.take_link(id)?), "tcx")
            }
            None => attach_xdp(ebpf, prog, iface, plan.xdp_mode)?,
        };
        links.push(link);
        attached.push(Attached {
            iface: iface.to_string(),
            hook: hook.name(),
            mode,
        });
        if plan.role != Role::Container {
            info!(iface, hook = hook.name(), mode, program = prog, "attached");
        }
    }
    Ok(Attachment {
        plan,
        attached,
        _links: links,
    })
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    prog: &str,
    iface: &str,
    want: XdpMode,
) -> anyhow::Result<(Link, &'static str)> {
    use aya::programs::XdpMode as Flags;
    let xdp: &mut Xdp = ebpf.program_mut(prog).expect("loaded").try_into()?;
    // lo has no native XDP; veth and most NIC drivers do.
    let tries: &[(Flags, &'static str)] = match want {
        XdpMode::Native => &[(Flags::Driver, "native")],
        XdpMode::Generic => &[(Flags::Skb, "generic")],
        XdpMode::Auto if iface == "lo" => &[(Flags::Skb, "generic")],
        XdpMode::Auto => &[(Flags::Driver, "native"), (Flags::Skb, "generic")],
    };
    let mut last = None;
    for &(mode, name) in tries {
        match xdp.attach(iface, mode) {
            Ok(id) => return Ok((Link::Xdp(xdp.take_link(id)?), name)),
            Err(e) => {
                let busy = format!("{e:?}").contains("EBUSY")
                    || format!("{e:?}").contains("Device or resource busy");
                if busy {
                    return Err(Preflight::XdpBusy {
                        iface: iface.to_string(),
                    }
                    .into());
                }
                // Expected where the driver has no native XDP (virtio without enough queues, lo):
                // the next mode is tried.
                info!(iface, mode = name, error = %e, "XDP attach mode unavailable");
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attach mode tried").into())
}

/// Whether a tcpstate's TC programs sit on the interface already. TCX stacks programs, so a second
/// daemon would attach without complaint and both would count every segment.
pub fn watched_by_tcpstate(iface: &str) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .filter_map(|at| SchedClassifier::query_tcx(iface, at).ok())
        .flat_map(|(_, progs)| progs)
        // Kernel program names are cut at 15 bytes: "tcpstate_tc_ing".
        .any(|p| {
            p.name_as_str()
                .is_some_and(|n| n.starts_with("tcpstate_tc") && n != "tcpstate_tc_pas")
        })
}

/// The verifier's instruction count is the budget the kernel programs spend against its 1M limit;
/// logged so a change that pushes it up is noticed before it fails on some kernel.
pub fn log_verifier_cost(ebpf: &Ebpf, prog: &str) {
    if let Some(info) = ebpf.program(prog).and_then(|p| p.info().ok()) {
        tracing::debug!(program = prog, verified_insns = ?info.verified_instruction_count(), "verifier cost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(role: Role, ingress: IngressHook, link: LinkLayer) -> Plan {
        Plan {
            role,
            ingress,
            xdp_mode: XdpMode::Auto,
            link,
        }
    }

    fn names(p: Plan) -> Vec<&'static str> {
        programs(&p).into_iter().map(|(n, _, _)| n).collect()
    }

    #[test]
    fn tun_wireguard_and_ip_tunnels_parse_from_the_ip_header() {
        for arphrd in [0xfffe, 768, 769, 776, 778, 823, 519, 512] {
            assert_eq!(link_layer(arphrd), Some(LinkLayer::Ip), "ARPHRD {arphrd}");
        }
        assert_eq!(link_layer(1), Some(LinkLayer::Ethernet));
        assert_eq!(link_layer(772), Some(LinkLayer::Ethernet), "lo");
        assert_eq!(link_layer(32), None, "Infiniband is not parsed");
    }

    #[test]
    fn each_role_and_link_layer_gets_its_own_programs() {
        use IngressHook::{Tc, Xdp};
        use LinkLayer::{Ethernet, Ip};
        assert_eq!(
            names(plan(Role::Host, Tc, Ethernet)),
            ["tcpstate_tc_ingress", "tcpstate_tc_egress"]
        );
        assert_eq!(
            names(plan(Role::Host, Tc, Ip)),
            ["tcpstate_tc_ingress_l3", "tcpstate_tc_egress_l3"]
        );
        assert_eq!(names(plan(Role::Tap, Tc, Ethernet)), ["tcpstate_tc_tap"]);
        assert_eq!(names(plan(Role::Tap, Xdp, Ip)), ["tcpstate_xdp_tap_l3"]);
        assert_eq!(
            names(plan(Role::Host, Xdp, Ethernet)),
            ["tcpstate_xdp_host", "tcpstate_tc_egress"]
        );
        assert_eq!(
            names(plan(Role::Container, Tc, Ethernet)),
            ["tcpstate_tc_ctr_ingress", "tcpstate_tc_ctr_egress"]
        );
    }
}
