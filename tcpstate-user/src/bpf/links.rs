//! Network interfaces through rtnetlink (netlink-packet-route): the list of links, and the link
//! events (RTM_NEWLINK / RTM_DELLINK) that tell the daemon an interface (a container's veth, a
//! new tunnel) came or went.

use std::{io, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An interface, as far as choosing where to attach cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `bridge`, `vxlan`, `netkit`, ... (IFLA_INFO_KIND), empty when the kernel gave none
    /// (physical NICs, `lo`).
    pub kind: String,
    /// The device's link type, an ARPHRD_* number (`ifi_type`): what its frames start with.
    pub link_type: u16,
    /// The bridge, bond, team or VRF this device is enslaved to (IFLA_MASTER).
    pub master: Option<u32>,
    /// The device this one is stacked on or paired with (IFLA_LINK): a VLAN's or macvlan's lower
    /// device, a veth's peer. Its index is in the namespace `peer_netnsid` names, or in this one.
    pub lower: Option<u32>,
    /// The namespace the peer (or lower) end lives in, by the id this namespace gives it
    /// (IFLA_LINK_NETNSID); `None` when it is here too, or the link has none.
    pub peer_netnsid: Option<i32>,
    pub up: bool,
}

impl Link {
    /// The host-side end of a container's veth: a veth whose peer is in another namespace.
    pub fn is_container_veth(&self) -> bool {
        self.kind == "veth" && self.peer_netnsid.is_some()
    }

    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            ifindex: m.header.index,
            name: String::new(),
            kind: String::new(),
            link_type: u16::from(m.header.link_layer_type),
            master: None,
            lower: None,
            peer_netnsid: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Controller(i) if *i != 0 => link.master = Some(*i),
                LinkAttribute::Link(i) if *i != 0 => link.lower = Some(*i),
                LinkAttribute::LinkNetNsId(id) if *id >= 0 => link.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = match k {
                                InfoKind::Veth => "veth".to_string(),
                                InfoKind::Netkit => "netkit".to_string(),
                                other => other.to_string(),
                            };
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// Sends one request on a fresh rtnetlink socket of this thread's namespace and collects the
/// replies (every part of a dump, up to NLMSG_DONE).
pub fn request(
    req: &NetlinkMessage<RouteNetlinkMessage>,
) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let dump = req.header.flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            match &m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(io::Error::from_raw_os_error(e.code.map_or(0, |c| -c.get())))
                }
                _ => {}
            }
            out.push(m);
            if !dump {
                return Ok(out);
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// Every interface of this thread's namespace.
pub fn list() -> io::Result<Vec<Link>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    req.finalize();
    Ok(request(&req)?
        .iter()
        .filter_map(|m| match &m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                Some(Link::from_message(l))
            }
            _ => None,
        })
        .collect())
}

/// What a link event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A link appeared or changed (RTM_NEWLINK).
    Changed(Link),
    /// A link was deleted (RTM_DELLINK).
    Removed(Link),
    /// The kernel dropped events (ENOBUFS): only a full resync is exact now.
    Overrun,
}

/// A subscription to this namespace's link events (the RTNLGRP_LINK multicast group).
pub struct Events {
    socket: Socket,
}

const RTMGRP_LINK: u32 = 1;

impl Events {
    /// Subscribes; `wait` bounds each [`Events::next`], so the caller can also resync on a timer.
    pub fn subscribe(wait: Duration) -> io::Result<Events> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        // SO_RCVTIMEO; a zero wait is none, as the kernel reads a zero timeval.
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            (!wait.is_zero()).then_some(wait),
        )?;
        Ok(Events { socket })
    }

    /// The events that arrived within the wait given at subscription (none on a timeout).
    pub fn next(&self) -> io::Result<Vec<Event>> {
        self.receive(0)
    }

    /// The events already queued, without waiting: a burst (a node starting many pods) is
    /// handled as one batch.
    pub fn drain(&self) -> io::Result<Vec<Event>> {
        let mut all = Vec::new();
        loop {
            let batch = self.receive(libc::MSG_DONTWAIT)?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }

    fn receive(&self, flags: libc::c_int) -> io::Result<Vec<Event>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = match self.socket.recv(&mut &mut buf[..], flags) {
            Ok(n) => n.min(buf.len()),
            Err(e) => {
                return match e.raw_os_error() {
                    // The wait ran out (SO_RCVTIMEO), nothing queued, or a signal.
                    Some(libc::EAGAIN | libc::EINTR) => Ok(Vec::new()),
                    Some(libc::ENOBUFS) => Ok(vec![Event::Overrun]),
                    _ => Err(e),
                };
            }
        };
        Ok(parse_events(&buf[..n]))
    }
}

/// Link events as a following loop takes them: in batches, each call waiting at most a quarter
/// second so the loop can look at its clock and its stop flag. Without a subscription (the
/// socket could not be opened) it only waits, and the loop's periodic resync does all the work.
pub struct Batches {
    events: Option<Events>,
}

impl Batches {
    /// How long one call waits for a first event.
    pub const WAIT: Duration = Duration::from_millis(250);
    /// After a first event, how long more may arrive before they are taken as one batch (a node
    /// starting many pods makes a burst).
    const BURST: Duration = Duration::from_millis(5);

    /// Subscribes; `without` says in the log what the caller does without events.
    pub fn subscribe(without: &str) -> Batches {
        let events = match Events::subscribe(Self::WAIT) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "no link events: {without}");
                None
            }
        };
        Batches { events }
    }

    /// The next batch of events: empty when none came within [`Batches::WAIT`].
    pub fn next(&self) -> Vec<Event> {
        let Some(ev) = &self.events else {
            std::thread::sleep(Self::WAIT);
            return Vec::new();
        };
        match ev.next() {
            Ok(mut evs) if !evs.is_empty() => {
                std::thread::sleep(Self::BURST);
                evs.extend(ev.drain().unwrap_or_default());
                evs
            }
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, "link events");
                std::thread::sleep(Self::WAIT);
                Vec::new()
            }
        }
    }
}

/// The link events in one datagram.
fn parse_events(data: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]) else {
            // A message this crate cannot parse: resync rather than guess.
            out.push(Event::Overrun);
            break;
        };
        let len = m.header.length as usize;
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                out.push(Event::Changed(Link::from_message(&l)))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                out.push(Event::Removed(Link::from_message(&l)))
            }
            _ => {}
        }
        if len == 0 {
            break;
        }
        offset += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: &str, peer: Option<i32>) -> Link {
        Link {
            ifindex: 7,
            name: "x".into(),
            kind: kind.into(),
            link_type: 1,
            master: None,
            lower: None,
            peer_netnsid: peer,
            up: true,
        }
    }

    #[test]
    fn only_veths_with_a_peer_elsewhere_are_container_veths() {
        assert!(link("veth", Some(0)).is_container_veth());
        assert!(
            !link("veth", None).is_container_veth(),
            "both ends here: not a container's"
        );
        // Cilium's netkit pairs are not veths: documented as not watched.
        assert!(!link("netkit", Some(3)).is_container_veth());
        assert!(!link("bridge", None).is_container_veth());
    }
}
