//! TCP vocabulary: flag bits, sequence-number arithmetic, the parsed segment and the connection
//! states (RFC 9293 section 3.3.2).

/// TCP flag bits as they sit in byte 13 of the header (RFC 9293 section 3.1).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

use flags::*;

/// Window scale value meaning "the SYN carried no window-scale option".
pub const WSCALE_NONE: u8 = 0x0f;
/// RFC 7323 section 2.3: shifts above 14 are treated as 14.
pub const WSCALE_MAX: u8 = 14;

/// What the state machine needs from one TCP segment. Host byte order throughout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes. For GSO super-packets this is the whole super-packet's payload, which is
    /// what makes `seq + len` land on the FIN's sequence number.
    pub len: u32,
    /// Raw (unscaled) window field.
    pub win: u16,
    pub flags: u8,
    /// Window-scale option of a SYN or SYN-ACK, `WSCALE_NONE` when absent or not a SYN.
    pub wscale: u8,
}

impl Segment {
    #[inline(always)]
    pub const fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// `a - b` as a signed distance in sequence space (RFC 9293 section 3.4: comparisons are modulo 2^32).
#[inline(always)]
pub const fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// `a >= b` in sequence space.
#[inline(always)]
pub const fn seq_ge(a: u32, b: u32) -> bool {
    seq_diff(a, b) >= 0
}

/// `start <= x < start + len` in sequence space (`len` < 2^31).
#[inline(always)]
pub const fn seq_in(x: u32, start: u32, len: u32) -> bool {
    x.wrapping_sub(start) < len
}

/// Why a segment's flag combination is impossible for a real TCP stack. Classification follows the
/// discipline of netfilter's `tcp_valid_flags` table: PSH, ECE and CWR are ignored, every other
/// combination of FIN/SYN/RST/ACK/URG is either one a real stack sends or a scan/attack pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFlags {
    SynFin,
    SynRst,
    NoFlags,
    Other,
}

#[inline(always)]
pub const fn check_flags(f: u8) -> Result<(), BadFlags> {
    let f = f & (FIN | SYN | RST | ACK | URG);
    if f & (SYN | FIN) == SYN | FIN {
        return Err(BadFlags::SynFin);
    }
    if f & (SYN | RST) == SYN | RST {
        return Err(BadFlags::SynRst);
    }
    match f {
        0 => Err(BadFlags::NoFlags),
        // Opening: SYN (URG tolerated as netfilter does), SYN-ACK.
        SYN | 0x22 | 0x12 => Ok(()),
        // Reset, with or without ACK.
        RST | 0x14 => Ok(()),
        // FIN always carries ACK from a synchronized stack; FIN alone and FIN+PSH+URG (xmas) are scans.
        0x11 | 0x31 => Ok(()),
        ACK | 0x30 => Ok(()),
        _ => Err(BadFlags::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_comparisons_wrap() {
        assert!(seq_ge(5, u32::MAX - 5));
        assert!(!seq_ge(u32::MAX - 5, 5));
        assert!(seq_in(3, u32::MAX - 1, 10));
        assert!(!seq_in(9, u32::MAX - 1, 10));
        assert_eq!(seq_diff(1, u32::MAX), 2);
    }

    #[test]
    fn valid_flag_combinations_are_the_ones_stacks_send() {
        for f in [
            SYN,
            SYN | ACK,
            RST,
            RST | ACK,
            FIN | ACK,
            ACK,
            ACK | PSH,
            FIN | ACK | PSH,
            SYN | ACK | PSH,
        ] {
            assert_eq!(check_flags(f), Ok(()), "flags {f:#x}");
        }
        assert_eq!(check_flags(SYN | FIN), Err(BadFlags::SynFin));
        assert_eq!(check_flags(SYN | FIN | ACK), Err(BadFlags::SynFin));
        assert_eq!(check_flags(SYN | RST), Err(BadFlags::SynRst));
        assert_eq!(check_flags(0), Err(BadFlags::NoFlags));
        assert_eq!(check_flags(PSH), Err(BadFlags::NoFlags));
        assert_eq!(check_flags(FIN), Err(BadFlags::Other));
        assert_eq!(check_flags(FIN | PSH | URG), Err(BadFlags::Other));
        assert_eq!(check_flags(RST | FIN | ACK), Err(BadFlags::Other));
    }
}

/// RFC 9293 connection states. LISTEN is not tracked: a server endpoint that has not answered a
/// SYN yet is `Closed` in the mirror (it has no connection state of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Closed = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    CloseWait = 6,
    Closing = 7,
    LastAck = 8,
    TimeWait = 9,
}

impl TcpState {
    pub const COUNT: usize = 10;
    /// Every state a live endpoint can be in (all but `Closed`), in RFC order.
    pub const OPEN: [TcpState; 9] = [
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
        TcpState::TimeWait,
    ];

    /// Decodes a state byte from a map; bytes no version of this code writes read as `Closed`.
    #[inline(always)]
    pub const fn from_u8_lossy(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::CloseWait,
            7 => TcpState::Closing,
            8 => TcpState::LastAck,
            9 => TcpState::TimeWait,
            _ => TcpState::Closed,
        }
    }

    /// The `state` label of `tcpstate_connections`.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Closed => "closed",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::Established => "established",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::CloseWait => "close_wait",
            TcpState::Closing => "closing",
            TcpState::LastAck => "last_ack",
            TcpState::TimeWait => "time_wait",
        }
    }

    /// The state as `ss -tan` prints it.
    pub const fn ss_name(self) -> &'static str {
        match self {
            TcpState::Closed => "CLOSED",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::Established => "ESTAB",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST-ACK",
            TcpState::TimeWait => "TIME-WAIT",
        }
    }

    /// Still opening: counted against the half-open budget, subject to the handshake timeouts.
    #[inline(always)]
    pub const fn is_handshake(self) -> bool {
        matches!(self, TcpState::SynSent | TcpState::SynRecv)
    }

    /// Done with this connection: a SYN may start a new one on the same key (port reuse).
    #[inline(always)]
    pub const fn is_finished(self) -> bool {
        matches!(self, TcpState::Closed | TcpState::TimeWait)
    }
}

impl TryFrom<u8> for TcpState {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        if v as usize >= Self::COUNT {
            return Err(v);
        }
        Ok(Self::from_u8_lossy(v))
    }
}
