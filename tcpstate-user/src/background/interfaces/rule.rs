//! The rule: which interface gets which programs, decided from its link alone and the others'.
//!
//! Each segment must be observed once. A stack of devices shows a segment to several of them, so
//! the rule ([`decide`]) attaches to one level of each stack:
//! - **Bridges, bonds and teams: the upper device.** A frame for the host crosses a port's TC
//!   ingress, then the bridge's (or bond's); what the host sends crosses the bridge's egress, then
//!   a port's. What a bridge only switches between its ports never reaches the bridge device: that
//!   is neither the host's nor counted.
//! - **VLAN, macvlan, macvtap, ipvlan: the lower device**, when it is watched. It carries the
//!   upper devices' frames too (tagged, or to another MAC), in both directions, before the
//!   upper device demultiplexes them, and the parser reads VLAN tags.
//! - **VRF: the enslaved devices.** What leaves through a VRF crosses the VRF device and then
//!   the enslaved one.
//! - **IFB: never.** An IFB device carries what a tc action redirected to it from another
//!   interface (for shaping), where the segment was seen already.
//! - **Encapsulation (VXLAN, GRE, WireGuard, IPsec) is no stack here:** the tunnel device carries
//!   the inner TCP, the device below it only UDP, GRE or ESP, which the parser leaves alone.
//! - **A container's veth** (its peer in another namespace) is container mode's when that is on;
//!   otherwise it is a host interface like any other: the container's own traffic reaches no
//!   local socket and is transit there (see `Config::transit_check`).

use std::collections::BTreeMap;

use crate::bpf::{
    attach::{self, IngressHook, Plan, Role, XdpMode},
    links::Link,
};

/// What the user asked to watch.
#[derive(Clone, Debug)]
pub struct Selection {
    /// `--iface`: only these, as named (the stacking rules are the user's then). Empty: every
    /// interface of the namespace.
    pub only: Vec<String>,
    /// `--exclude-iface`: shell globs of names never watched.
    pub exclude: Vec<glob::Pattern>,
    /// Host or tap, for every interface but `lo` (always tap: every segment on it passes twice).
    pub role: Role,
    pub ingress: IngressHook,
    pub xdp_mode: XdpMode,
    /// Container mode is on: container veths are the container watcher's.
    pub containers: bool,
}

impl Selection {
    /// Whether every interface is watched (no `--iface`).
    pub fn everything(&self) -> bool {
        self.only.is_empty()
    }

    pub fn excludes(&self, name: &str) -> bool {
        self.exclude.iter().any(|p| p.matches(name))
    }
}

/// Why an interface gets no programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not among the `--iface` names.
    NotListed,
    /// Matches an `--exclude-iface` glob.
    Excluded,
    /// A port of a bridge, bond or team: the master sees the host's segments.
    Port { master: String },
    /// A VRF device: the devices enslaved to it see the host's segments.
    Vrf,
    /// An IFB device: it only carries what a tc action redirected to it from another interface,
    /// where the segment was seen already.
    Redirect,
    /// A VLAN, macvlan or ipvlan device whose lower device is watched and sees its segments.
    Upper { lower: String },
    /// A container's veth, watched by container mode in the container's scope.
    ContainerVeth,
    /// A link layer the parser does not know (ARPHRD_* number).
    LinkType(u16),
}

impl Skip {
    pub fn why(&self) -> String {
        match self {
            Skip::NotListed => "not named with --iface".into(),
            Skip::Excluded => "matches --exclude-iface".into(),
            Skip::Port { master } => format!("a port of {master}, which is watched instead"),
            Skip::Vrf => "a VRF device: its enslaved devices are watched instead".into(),
            Skip::Redirect => {
                "an IFB device: what tc redirects to it is seen on the interface it came from"
                    .into()
            }
            Skip::Upper { lower } => format!("stacked on {lower}, which is watched instead"),
            Skip::ContainerVeth => "a container's veth: container mode watches it".into(),
            Skip::LinkType(t) => format!(
                "link type {t} (ARPHRD) has neither an Ethernet header nor none: not parsed"
            ),
        }
    }
}

/// What the rule says of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Watch(Plan),
    Skip(Skip),
}

const ARPHRD_LOOPBACK: u16 = 772;

/// The master kinds whose ports carry the host's segments a second time.
const AGGREGATES: [&str; 4] = ["bridge", "bond", "team", "openvswitch"];
/// Device kinds stacked on a lower device that sees their frames first (and last).
const STACKED: [&str; 5] = ["vlan", "macvlan", "macvtap", "ipvlan", "ipvtap"];

/// The rule for one link among all of this namespace's (see the module doc).
pub fn decide(link: &Link, all: &BTreeMap<u32, Link>, sel: &Selection) -> Decision {
    decide_at(link, all, sel, 0)
}

fn decide_at(link: &Link, all: &BTreeMap<u32, Link>, sel: &Selection, depth: u32) -> Decision {
    if !sel.everything() && !sel.only.contains(&link.name) {
        return Decision::Skip(Skip::NotListed);
    }
    if sel.excludes(&link.name) {
        return Decision::Skip(Skip::Excluded);
    }
    let Some(layer) = attach::link_layer(link.link_type) else {
        return Decision::Skip(Skip::LinkType(link.link_type));
    };
    let plan = |role| {
        Decision::Watch(Plan {
            role,
            ingress: sel.ingress,
            xdp_mode: sel.xdp_mode,
            link: layer,
        })
    };
    if link.link_type == ARPHRD_LOOPBACK {
        return plan(Role::Tap);
    }
    if sel.everything() {
        if let Some(master) = link.master.and_then(|m| all.get(&m)) {
            if AGGREGATES.contains(&master.kind.as_str()) {
                return Decision::Skip(Skip::Port {
                    master: master.name.clone(),
                });
            }
        }
        if link.kind == "vrf" {
            return Decision::Skip(Skip::Vrf);
        }
        if link.kind == "ifb" {
            return Decision::Skip(Skip::Redirect);
        }
        if STACKED.contains(&link.kind.as_str()) && link.peer_netnsid.is_none() && depth < 8 {
            if let Some(lower) = link.lower.and_then(|l| all.get(&l)) {
                if matches!(decide_at(lower, all, sel, depth + 1), Decision::Watch(_)) {
                    return Decision::Skip(Skip::Upper {
                        lower: lower.name.clone(),
                    });
                }
            }
        }
        if sel.containers && link.is_container_veth() {
            return Decision::Skip(Skip::ContainerVeth);
        }
    }
    plan(sel.role)
}

#[cfg(test)]
mod tests {
    use tcpstate_common::packet::LinkLayer;

    use super::*;

    fn link(ifindex: u32, name: &str, kind: &str) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: kind.into(),
            link_type: 1,
            master: None,
            lower: None,
            peer_netnsid: None,
            up: true,
        }
    }

    fn host() -> Selection {
        Selection {
            only: Vec::new(),
            exclude: Vec::new(),
            role: Role::Host,
            ingress: IngressHook::Tc,
            xdp_mode: XdpMode::Auto,
            containers: false,
        }
    }

    fn table(links: &[Link]) -> BTreeMap<u32, Link> {
        links.iter().map(|l| (l.ifindex, l.clone())).collect()
    }

    fn role(d: &Decision) -> Option<(Role, LinkLayer)> {
        match d {
            Decision::Watch(p) => Some((p.role, p.link)),
            Decision::Skip(_) => None,
        }
    }

    #[test]
    fn loopback_is_tap_and_everything_else_host_by_default() {
        let lo = Link {
            link_type: ARPHRD_LOOPBACK,
            ..link(1, "lo", "")
        };
        let eth = link(2, "eth0", "");
        let all = table(&[lo.clone(), eth.clone()]);
        assert_eq!(
            role(&decide(&lo, &all, &host())),
            Some((Role::Tap, LinkLayer::Ethernet))
        );
        assert_eq!(
            role(&decide(&eth, &all, &host())),
            Some((Role::Host, LinkLayer::Ethernet))
        );
    }

    #[test]
    fn a_bridge_is_watched_and_its_ports_are_not() {
        let br = link(3, "br0", "bridge");
        let port = Link {
            master: Some(3),
            ..link(4, "vethA", "veth")
        };
        let all = table(&[br.clone(), port.clone()]);
        assert!(role(&decide(&br, &all, &host())).is_some());
        assert_eq!(
            decide(&port, &all, &host()),
            Decision::Skip(Skip::Port {
                master: "br0".into()
            })
        );
    }

    #[test]
    fn bond_and_team_members_leave_the_segments_to_the_aggregate() {
        for kind in ["bond", "team"] {
            let agg = link(5, "agg0", kind);
            let member = Link {
                master: Some(5),
                ..link(6, "eth1", "")
            };
            let all = table(&[agg.clone(), member.clone()]);
            assert!(role(&decide(&agg, &all, &host())).is_some(), "{kind}");
            assert!(
                matches!(
                    decide(&member, &all, &host()),
                    Decision::Skip(Skip::Port { .. })
                ),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_vrf_leaves_the_segments_to_its_enslaved_devices() {
        let vrf = link(7, "vrf-blue", "vrf");
        let member = Link {
            master: Some(7),
            ..link(8, "eth2", "")
        };
        let all = table(&[vrf.clone(), member.clone()]);
        assert_eq!(decide(&vrf, &all, &host()), Decision::Skip(Skip::Vrf));
        assert!(role(&decide(&member, &all, &host())).is_some());
    }

    #[test]
    fn vlan_and_macvlan_uppers_leave_the_segments_to_a_watched_lower_device() {
        let eth = link(2, "eth0", "");
        for kind in STACKED {
            let upper = Link {
                lower: Some(2),
                ..link(9, "up0", kind)
            };
            let all = table(&[eth.clone(), upper.clone()]);
            assert_eq!(
                decide(&upper, &all, &host()),
                Decision::Skip(Skip::Upper {
                    lower: "eth0".into()
                }),
                "{kind}"
            );
            // The lower device excluded: the upper is the one place its segments are seen.
            let mut sel = host();
            sel.exclude.push(glob::Pattern::new("eth*").unwrap());
            assert!(role(&decide(&upper, &all, &sel)).is_some(), "{kind}");
        }
    }

    #[test]
    fn an_ifb_device_is_left_to_the_interface_its_traffic_was_redirected_from() {
        let ifb = link(15, "ifb0", "ifb");
        let all = table(std::slice::from_ref(&ifb));
        assert_eq!(decide(&ifb, &all, &host()), Decision::Skip(Skip::Redirect));
    }

    #[test]
    fn an_upper_whose_lower_is_in_another_namespace_is_watched() {
        // A macvlan moved into this namespace: its lower device is the host's, not ours.
        let upper = Link {
            lower: Some(2),
            peer_netnsid: Some(0),
            ..link(9, "mv0", "macvlan")
        };
        let all = table(std::slice::from_ref(&upper));
        assert!(role(&decide(&upper, &all, &host())).is_some());
    }

    #[test]
    fn a_vlan_on_a_bond_is_watched_through_the_bond() {
        let bond = link(5, "bond0", "bond");
        let member = Link {
            master: Some(5),
            ..link(6, "eth0", "")
        };
        let vlan = Link {
            lower: Some(5),
            ..link(10, "bond0.100", "vlan")
        };
        let all = table(&[bond.clone(), member.clone(), vlan.clone()]);
        assert!(role(&decide(&bond, &all, &host())).is_some());
        assert!(matches!(
            decide(&member, &all, &host()),
            Decision::Skip(Skip::Port { .. })
        ));
        assert!(matches!(
            decide(&vlan, &all, &host()),
            Decision::Skip(Skip::Upper { .. })
        ));
    }

    #[test]
    fn tunnels_are_watched_and_parsed_from_the_ip_header() {
        let wg = Link {
            link_type: 0xfffe,
            ..link(11, "wg0", "wireguard")
        };
        let vx = link(12, "vx0", "vxlan");
        let all = table(&[wg.clone(), vx.clone()]);
        assert_eq!(
            role(&decide(&wg, &all, &host())),
            Some((Role::Host, LinkLayer::Ip))
        );
        assert_eq!(
            role(&decide(&vx, &all, &host())),
            Some((Role::Host, LinkLayer::Ethernet)),
            "VXLAN carries inner Ethernet frames; the veth below it sees only UDP"
        );
    }

    #[test]
    fn an_unknown_link_layer_is_skipped_with_its_type() {
        let ib = Link {
            link_type: 32,
            ..link(13, "ib0", "")
        };
        let all = table(std::slice::from_ref(&ib));
        assert_eq!(
            decide(&ib, &all, &host()),
            Decision::Skip(Skip::LinkType(32))
        );
    }

    #[test]
    fn container_veths_are_container_modes_when_it_is_on() {
        let veth = Link {
            peer_netnsid: Some(3),
            lower: Some(2),
            ..link(14, "veth1234", "veth")
        };
        let all = table(std::slice::from_ref(&veth));
        assert!(
            role(&decide(&veth, &all, &host())).is_some(),
            "without --containers: a host interface (its traffic to local sockets is the host's)"
        );
        let mut sel = host();
        sel.containers = true;
        assert_eq!(
            decide(&veth, &all, &sel),
            Decision::Skip(Skip::ContainerVeth)
        );
    }

    #[test]
    fn exclude_globs_and_named_interfaces_restrict_the_set() {
        let a = link(20, "cali123", "veth");
        let b = link(21, "eth0", "");
        let port = Link {
            master: Some(22),
            ..link(23, "vethP", "veth")
        };
        let br = link(22, "br0", "bridge");
        let all = table(&[a.clone(), b.clone(), port.clone(), br.clone()]);
        let mut sel = host();
        sel.exclude.push(glob::Pattern::new("cali*").unwrap());
        assert_eq!(decide(&a, &all, &sel), Decision::Skip(Skip::Excluded));
        assert!(role(&decide(&b, &all, &sel)).is_some());
        let named = Selection {
            only: vec!["eth0".into(), "vethP".into()],
            ..host()
        };
        assert_eq!(decide(&a, &all, &named), Decision::Skip(Skip::NotListed));
        assert!(
            role(&decide(&port, &all, &named)).is_some(),
            "a port named explicitly is the user's choice"
        );
    }
}
