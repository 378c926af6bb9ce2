//! `tcpstate replay` over a large generated capture: packets per second on one core, beside
//! Debian's tshark summarizing the same file (`tshark -q -z conv,tcp`), and the replay's peak
//! memory on that capture against a capture four times its size (streamed through a pipe, about
//! 1 GiB) with the same flows alive at once: memory follows live flows, not the capture. Needs
//! no root; run by `cargo xtask bench` (or `cargo xtask bench replay`), which prints the report;
//! this writes `target/bench/replay.json`.
//!
//! The capture is what `tcpdump -s 96` would write on a busy web server: thousands of
//! connections in progress at once, each a handshake, 12 full-size data segments and their ACKs
//! (cut to 96 bytes, with their wire length kept) and a close, then TIME_WAIT for 60 s.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

#[allow(unused_imports, reason = "the benchmark uses part of benchkit")]
mod benchkit;

use benchkit::{median, report, Figure, Goal};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
/// Frames in the capture file, and in the one streamed for the memory figure.
const LARGE: usize = 3_000_000;
const STREAMED: usize = 4 * LARGE;
/// Connections in progress at once, and capture time between two frames.
const CONCURRENT: usize = 2_000;
const FRAME_GAP_US: u64 = 100;
const SNAPLEN: usize = 96;
/// Runs of each command; each figure is their median.
const RUNS: usize = 3;
/// The CPU the replay and tshark are pinned to (both are single-threaded readers).
const CPU: &str = "1";

fn main() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let large = dir.join("replay-large.pcap");
    let t = Instant::now();
    generate(
        BufWriter::with_capacity(1 << 20, File::create(&large).unwrap()),
        LARGE,
    );
    eprintln!(
        "generated {} ({LARGE} frames, {} MiB) in {:.1?}",
        large.display(),
        std::fs::metadata(&large).unwrap().len() >> 20,
        t.elapsed()
    );
    require("taskset", "util-linux");
    require("tshark", "tshark");
    // Warm the page cache: both tools then read from memory, as each of their runs will.
    run_pinned(&[BIN, "replay", large.to_str().unwrap()]);
    let replay: Vec<Run> = (0..RUNS)
        .map(|_| run_pinned(&[BIN, "replay", large.to_str().unwrap()]))
        .collect();
    let streamed = run_pinned_fed(&[BIN, "replay", "-"], STREAMED);
    let tshark: Vec<Run> = (0..RUNS)
        .map(|_| {
            run_pinned(&[
                "tshark",
                "-q",
                "-z",
                "conv,tcp",
                "-r",
                large.to_str().unwrap(),
            ])
        })
        .collect();
    let pps =
        |runs: &[Run], frames: usize| median(runs.iter().map(|r| frames as f64 / r.secs).collect());
    let rss = |runs: &[Run]| median(runs.iter().map(|r| r.max_rss_kib as f64 / 1024.0).collect());
    let (ours, theirs) = (pps(&replay, LARGE), pps(&tshark, LARGE));
    let figures = [
        Figure {
            name: "replay, packets/s on one core (baseline: the 2M/s target)".into(),
            unit: "packets/s",
            baseline: 2e6,
            value: ours,
            goal: Goal::RatioAtLeast,
            target: Some(1.0),
        },
        Figure {
            name: "replay vs tshark -q -z conv,tcp, packets/s on one core".into(),
            unit: "packets/s",
            baseline: theirs,
            value: ours,
            goal: Goal::RatioAtLeast,
            target: Some(10.0),
        },
        Figure {
            name: format!("replay peak RSS, {STREAMED} vs {LARGE} frames, same live flows"),
            unit: "MiB",
            baseline: rss(&replay),
            value: streamed.max_rss_kib as f64 / 1024.0,
            goal: Goal::RatioAtMost,
            target: Some(1.1),
        },
        Figure {
            name: "tshark peak RSS on the large capture (context)".into(),
            unit: "MiB",
            baseline: rss(&replay),
            value: rss(&tshark),
            goal: Goal::RatioAtMost,
            target: None,
        },
    ];
    report("replay", &figures);
}

fn require(tool: &str, package: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(tool).exists());
    assert!(
        found,
        "{tool} is missing: run `cargo xtask setup` (Debian package {package})"
    );
}

struct Run {
    secs: f64,
    max_rss_kib: i64,
}

/// Runs a command pinned to one CPU, its output discarded; wall time and peak RSS.
fn run_pinned(cmd: &[&str]) -> Run {
    run(cmd, None)
}

/// As [`run_pinned`], with a generated capture of `frames` frames written to its standard input
/// (by this process, on another CPU).
fn run_pinned_fed(cmd: &[&str], frames: usize) -> Run {
    run(cmd, Some(frames))
}

#[allow(
    clippy::zombie_processes,
    reason = "reaped by wait4, which also gives the child's own peak RSS"
)]
fn run(cmd: &[&str], feed: Option<usize>) -> Run {
    let start = Instant::now();
    let mut child = Command::new("taskset")
        .args(["-c", CPU])
        .args(cmd)
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(frames) = feed {
        let stdin = child.stdin.take().unwrap();
        generate(BufWriter::with_capacity(1 << 20, stdin), frames);
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (taskset execs the command in place, so its rusage is the
    // command's); valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (status {status})"
    );
    Run {
        secs,
        max_rss_kib: usage.ru_maxrss,
    }
}

/// One connection's script, frame by frame.
const SCRIPT: usize = 3 + 12 * 2 + 4;

/// Writes a capture of `frames` frames (see the module comment).
fn generate(mut out: impl Write, frames: usize) {
    // pcap file header: magic, v2.4, zone, sigfigs, snaplen, Ethernet.
    out.write_all(&0xa1b2c3d4u32.to_le_bytes()).unwrap();
    out.write_all(&2u16.to_le_bytes()).unwrap();
    out.write_all(&4u16.to_le_bytes()).unwrap();
    out.write_all(&[0; 8]).unwrap();
    out.write_all(&(SNAPLEN as u32).to_le_bytes()).unwrap();
    out.write_all(&1u32.to_le_bytes()).unwrap();
    // Connection slots: (connection number, next step).
    let mut slots: Vec<(u32, usize)> = (0..CONCURRENT as u32).map(|c| (c, 0)).collect();
    let mut next_conn = CONCURRENT as u32;
    let mut frame = [0u8; 54 + 1448];
    for n in 0..frames {
        let slot = n % CONCURRENT;
        let (conn, step) = slots[slot];
        let (len, wire) = segment(&mut frame, conn, step);
        let ts_us = 1_764_655_200_000_000u64 + n as u64 * FRAME_GAP_US;
        let cap = wire.min(SNAPLEN).min(len);
        out.write_all(&((ts_us / 1_000_000) as u32).to_le_bytes())
            .unwrap();
        out.write_all(&((ts_us % 1_000_000) as u32).to_le_bytes())
            .unwrap();
        out.write_all(&(cap as u32).to_le_bytes()).unwrap();
        out.write_all(&(wire as u32).to_le_bytes()).unwrap();
        out.write_all(&frame[..cap]).unwrap();
        slots[slot] = if step + 1 == SCRIPT {
            next_conn += 1;
            (next_conn - 1, 0)
        } else {
            (conn, step + 1)
        };
    }
    out.flush().unwrap();
}

/// Builds frame `step` of connection `conn` into `f`: returns (bytes built, wire length).
fn segment(f: &mut [u8], conn: u32, step: usize) -> (usize, usize) {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    const MSS: u32 = 1448;
    let (cisn, sisn) = (
        conn.wrapping_mul(2_654_435_761),
        conn.wrapping_mul(40_503) ^ 0x5555,
    );
    // (from client, flags, seq, ack, payload), sequence numbers relative to the two ISNs.
    let c = |off: u32| cisn.wrapping_add(off);
    let s = |off: u32| sisn.wrapping_add(off);
    let (from_client, flags, seq, ack, payload) = match step {
        0 => (true, SYN, c(0), 0, 0),
        1 => (false, SYN | ACK, s(0), c(1), 0),
        2 => (true, ACK, c(1), s(1), 0),
        n if n < 3 + 24 => {
            let k = ((n - 3) / 2) as u32;
            if (n - 3) % 2 == 0 {
                (true, ACK | PSH, c(1 + k * MSS), s(1), MSS)
            } else {
                (false, ACK, s(1), c(1 + (k + 1) * MSS), 0)
            }
        }
        27 => (true, FIN | ACK, c(1 + 12 * MSS), s(1), 0),
        28 => (false, ACK, s(1), c(2 + 12 * MSS), 0),
        29 => (false, FIN | ACK, s(1), c(2 + 12 * MSS), 0),
        _ => (true, ACK, c(2 + 12 * MSS), s(2), 0),
    };
    let client = [10, 1 + (conn >> 16) as u8, (conn >> 8) as u8, conn as u8];
    let server = [10, 0, 0, 1];
    let cport = 1024 + (conn % 60_000) as u16;
    let (src, dst, sport, dport) = if from_client {
        (client, server, cport, 80u16)
    } else {
        (server, client, 80, cport)
    };
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let tcp = &mut f[34..54];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65_000u16.to_be_bytes());
    let wire = 54 + payload as usize;
    (wire.min(f.len()), wire)
}
