//! Reading a capture file (pcap or pcapng) frame by frame, through pcap-parser's streaming reader:
//! memory is one bounded buffer whatever the capture's size.

use std::{io::Read, ops::ControlFlow};

use pcap_parser::{create_reader, pcapng::Block, PcapBlockOwned, PcapError};

use super::frame::Link;

/// The reader's buffer, as large as most frames can be (IP's 64 KiB). It grows (fourfold) only when a
/// record does not fit, up to [`MAX_BUFFER`].
const BUFFER: usize = 1 << 16;
/// Largest record accepted: far above any frame (tcpdump's largest snaplen is 256 KiB), so a
/// length field beyond it means a corrupt file, not a frame.
const MAX_BUFFER: usize = 16 << 20;
/// Bytes read before the format is recognized: more than any file header.
const HEAD: usize = 64 << 10;

/// Why a capture cannot be replayed. One line each, naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} is empty")]
    Empty(String),
    #[error("{0} is not a pcap or pcapng capture (no file header recognized)")]
    NotCapture(String),
    #[error("{what} is truncated after {offset} bytes (its last record is incomplete)")]
    Truncated { what: String, offset: u64 },
    #[error("{what} is corrupt at byte {offset}: {detail}")]
    Corrupt {
        what: String,
        offset: u64,
        detail: String,
    },
    #[error("{what}: link type {linktype} is not supported (Ethernet, Linux cooked SLL/SLL2, raw IP and loopback are)")]
    UnsupportedLink { what: String, linktype: i32 },
}

/// One captured frame.
pub struct Frame<'a> {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub link: Link,
    /// The bytes the capture kept.
    pub data: &'a [u8],
    /// The frame's length on the wire.
    pub orig_len: usize,
}

/// A pcapng interface: its link type and timestamp units.
#[derive(Clone, Copy)]
struct Interface {
    linktype: i32,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp (if_tsoffset).
    offset_s: i64,
    snaplen: u32,
}

/// Reads every frame of the capture in `input` (named `what` in errors) and hands it to `f`,
/// until `f` breaks. Returns the number of frames handed over.
pub fn for_each_frame(
    what: &str,
    mut input: impl Read + Send,
    mut f: impl FnMut(Frame<'_>) -> ControlFlow<()>,
) -> Result<u64, CaptureError> {
    // pcap-parser recognizes the format from its first read(): on a pipe that read may return
    // only part of the file header, so the first bytes are gathered before it looks.
    let mut head = Vec::with_capacity(HEAD);
    (&mut input)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(|source| CaptureError::Io {
            what: what.to_string(),
            source,
        })?;
    let head_len = head.len();
    let input = std::io::Cursor::new(head).chain(input);
    let mut reader = create_reader(BUFFER, input).map_err(|e| match e {
        PcapError::Eof => CaptureError::Empty(what.to_string()),
        // The whole file is shorter than a file header.
        PcapError::Incomplete(_) if head_len < HEAD => CaptureError::Truncated {
            what: what.to_string(),
            offset: head_len as u64,
        },
        PcapError::ReadError => CaptureError::Io {
            what: what.to_string(),
            source: std::io::Error::other("read failed"),
        },
        _ => CaptureError::NotCapture(what.to_string()),
    })?;
    let mut capacity = BUFFER;
    // Legacy pcap: one link type and resolution for the file.
    let mut legacy: Option<(i32, u64)> = None;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut frames = 0u64;
    let corrupt = |offset: usize, detail: String| CaptureError::Corrupt {
        what: what.to_string(),
        offset: offset as u64,
        detail,
    };
    let unsupported = |linktype: i32| CaptureError::UnsupportedLink {
        what: what.to_string(),
        linktype,
    };
    loop {
        let consumed = reader.consumed();
        let step = match reader.next() {
            Ok((len, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        if Link::from_linktype(h.network.0).is_none() {
                            return Err(unsupported(h.network.0));
                        }
                        let resolution = if h.is_nanosecond_precision() {
                            1_000_000_000
                        } else {
                            1_000_000
                        };
                        legacy = Some((h.network.0, resolution));
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let Some((linktype, resolution)) = legacy else {
                            return Err(corrupt(
                                consumed,
                                "a record before the file header".into(),
                            ));
                        };
                        let link =
                            Link::from_linktype(linktype).ok_or_else(|| unsupported(linktype))?;
                        let ts_ns = u64::from(b.ts_sec) * 1_000_000_000
                            + u64::from(b.ts_usec) * (1_000_000_000 / resolution);
                        let data = &b.data[..(b.caplen as usize).min(b.data.len())];
                        let flow = f(Frame {
                            ts_ns,
                            link,
                            data,
                            orig_len: b.origlen as usize,
                        });
                        frames += 1;
                        if flow.is_break() {
                            return Ok(frames);
                        }
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        // Interface ids are per section.
                        interfaces.clear();
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        let resolution =
                            idb.ts_resolution().filter(|&r| r > 0).ok_or_else(|| {
                                corrupt(
                                    consumed,
                                    format!(
                                        "timestamp resolution {:#x} is invalid",
                                        idb.if_tsresol
                                    ),
                                )
                            })?;
                        interfaces.push(Interface {
                            linktype: idb.linktype.0,
                            resolution,
                            offset_s: idb.if_tsoffset,
                            snaplen: idb.snaplen,
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let iface = *interfaces.get(epb.if_id as usize).ok_or_else(|| {
                            corrupt(
                                consumed,
                                format!(
                                    "a packet names interface {} which was not described",
                                    epb.if_id
                                ),
                            )
                        })?;
                        let link = Link::from_linktype(iface.linktype)
                            .ok_or_else(|| unsupported(iface.linktype))?;
                        let units = (u128::from(epb.ts_high) << 32) | u128::from(epb.ts_low);
                        let ns = units * 1_000_000_000 / u128::from(iface.resolution);
                        let ts_ns = (ns as i128 + i128::from(iface.offset_s) * 1_000_000_000)
                            .clamp(0, i128::from(u64::MAX))
                            as u64;
                        // The block's data is padded to 32 bits; caplen says what is the frame.
                        let data = &epb.data[..(epb.caplen as usize).min(epb.data.len())];
                        let flow = f(Frame {
                            ts_ns,
                            link,
                            data,
                            orig_len: epb.origlen as usize,
                        });
                        frames += 1;
                        if flow.is_break() {
                            return Ok(frames);
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        // No timestamp and always interface 0: it takes the previous frame's time
                        // (the caller's clock never goes back).
                        let iface = *interfaces.first().ok_or_else(|| {
                            corrupt(consumed, "a simple packet before any interface".into())
                        })?;
                        let link = Link::from_linktype(iface.linktype)
                            .ok_or_else(|| unsupported(iface.linktype))?;
                        let keep = if iface.snaplen == 0 {
                            spb.origlen as usize
                        } else {
                            (spb.origlen as usize).min(iface.snaplen as usize)
                        };
                        let data = &spb.data[..keep.min(spb.data.len())];
                        let flow = f(Frame {
                            ts_ns: 0,
                            link,
                            data,
                            orig_len: spb.origlen as usize,
                        });
                        frames += 1;
                        if flow.is_break() {
                            return Ok(frames);
                        }
                    }
                    // Name resolution, statistics, comments, secrets: nothing for the state machine.
                    PcapBlockOwned::NG(_) => {}
                }
                Some(len)
            }
            Err(PcapError::Eof) => return Ok(frames),
            // Needs more bytes: refill, and grow the buffer only if it is full (below), so a
            // length field claiming gigabytes costs nothing until the bytes really arrive.
            Err(PcapError::Incomplete(_) | PcapError::BufferTooSmall) => None,
            Err(PcapError::UnexpectedEof) => {
                return Err(CaptureError::Truncated {
                    what: what.to_string(),
                    offset: consumed as u64,
                })
            }
            Err(PcapError::ReadError) => {
                return Err(CaptureError::Io {
                    what: what.to_string(),
                    source: std::io::Error::other("read failed"),
                })
            }
            Err(e) => return Err(corrupt(consumed, describe(&e))),
        };
        match step {
            Some(len) => reader.consume(len),
            None => {
                let before = reader.data().len();
                if let Err(e) = reader.refill() {
                    return Err(corrupt(consumed, describe(&e)));
                }
                // A full buffer that still holds no whole block (the parser could not say how
                // much it needs): grow it, or give up, rather than spin.
                if reader.data().len() == before && !reader.reader_exhausted() {
                    if capacity >= MAX_BUFFER {
                        return Err(corrupt(
                            consumed,
                            format!("a record longer than {} MiB", MAX_BUFFER >> 20),
                        ));
                    }
                    capacity *= 4;
                    reader.grow(capacity);
                }
            }
        }
    }
}

fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("unparsable block ({kind:?})")
        }
        PcapError::HeaderNotRecognized => "unrecognized section header".into(),
        other => format!("{other:?}"),
    }
}
