//! Raw frames for the end-to-end tests and the bench: Ethernet (with VLAN tags), IPv4, IPv6 and
//! TCP, fields written big-endian by hand. Checksums stay zero: neither XDP nor the parser checks
//! them.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

/// Ethernet to the broadcast address (XDP sees a frame whatever its destination), then `tags`
/// (the last one 802.1Q, any outer ones 802.1ad, as QinQ is sent), then `l3`.
pub fn ethernet(tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    for (i, vid) in tags.iter().enumerate() {
        let tpid: u16 = if i + 1 < tags.len() { 0x88a8 } else { 0x8100 };
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An IPv4 packet: `ihl` in 32-bit words (below 5 still writes a 20-byte header, for malformed
/// cases), `frag` the flags and fragment offset, the total length from `l4`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ihl: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let hl = (ihl.max(5) as usize) * 4;
    let mut p = vec![0u8; hl];
    p[0] = 0x40 | ihl;
    p[2..4].copy_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

/// An IPv6 packet carrying TCP (no extension headers).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

/// A TCP segment: no options unless the data offset says more words (left zero), zero payload.
#[derive(Clone, Copy)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    pub doff_words: u8,
    pub payload: usize,
}

impl Tcp {
    pub fn new(sport: u16, dport: u16, flags: u8) -> Tcp {
        Tcp {
            sport,
            dport,
            flags,
            seq: 1000,
            ack: 0,
            win: 1000,
            doff_words: 5,
            payload: 0,
        }
    }

    pub fn seq_ack(self, seq: u32, ack: u32) -> Tcp {
        Tcp { seq, ack, ..self }
    }

    pub fn doff(self, doff_words: u8) -> Tcp {
        Tcp { doff_words, ..self }
    }

    pub fn payload(self, payload: usize) -> Tcp {
        Tcp { payload, ..self }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let hl = (self.doff_words.max(5) as usize) * 4;
        let mut t = vec![0u8; hl + self.payload];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = self.doff_words << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.win.to_be_bytes());
        t
    }
}

/// The Internet checksum (RFC 1071) of `parts` taken as one byte string.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        match odd.take() {
            Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
            None => odd = Some(b),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Fills in the IPv4 header checksum and the TCP checksum of an IPv4 packet carrying TCP, for
/// frames a real stack receives (netfilter's conntrack drops a segment whose checksum is wrong).
pub fn ipv4_tcp_checksums(packet: &mut [u8]) {
    let hl = usize::from(packet[0] & 0x0f) * 4;
    packet[10..12].fill(0);
    let ip = internet_checksum(&[&packet[..hl]]);
    packet[10..12].copy_from_slice(&ip.to_be_bytes());
    let l4_len = (packet.len() - hl) as u16;
    packet[hl + 16..hl + 18].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&packet[12..20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&l4_len.to_be_bytes());
    let tcp = internet_checksum(&[&pseudo, &packet[hl..]]);
    packet[hl + 16..hl + 18].copy_from_slice(&tcp.to_be_bytes());
}
