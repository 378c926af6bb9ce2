//! Fuzzing the replay's input path (capture reader, frame view, parser, table) with proptest:
//! mutations of the captures in `tests/captures` and of the seeds in `tests/captures/corpus`
//! (files that once found a bug, kept so they are replayed on every run). Whatever the bytes, a
//! replay ends with a result or a one-line error, never a panic or a hang. proptest keeps the
//! failing cases it finds under `proptest-regressions/`, which is committed as well.

use std::{path::PathBuf, time::Duration};

use proptest::prelude::*;
use tcpstate_common::maps::Config;

use super::{capture::CaptureError, engine::Table, progress::Progress, replay};
use crate::background::expiry::Timeouts;

fn corpus() -> Vec<Vec<u8>> {
    let root: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "captures"]
        .iter()
        .collect();
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("corpus")] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = entry.unwrap().path();
            if p.extension()
                .is_some_and(|x| x == "pcap" || x == "pcapng" || x == "bin")
            {
                files.push(std::fs::read(&p).unwrap());
            }
        }
    }
    assert!(
        files.len() >= 20,
        "the capture corpus is missing: run tests/captures/make.py"
    );
    files
}

fn table() -> Table {
    let s = Duration::from_secs;
    Table::new(
        Config {
            capacity: 64,
            half_open_budget: 16,
            log_events: 0,
            scopes: 1,
            transit_check: 0,
            slots4: 0,
            slots6: 0,
            seed: [0; 5],
        },
        Timeouts::DEFAULTS,
        s(1),
    )
}

/// Replays `bytes`; any error must be one line.
fn replay_bytes(bytes: &[u8]) -> Result<Table, CaptureError> {
    let mut t = table();
    match replay("fuzz", bytes, &mut t, None, &mut Progress::hidden()) {
        Ok(()) => Ok(t),
        Err(e) => {
            let line = e.to_string();
            assert!(
                !line.contains('\n') && !line.is_empty(),
                "not one line: {line:?}"
            );
            Err(e)
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite one byte.
    Set(usize, u8),
    /// Flip bits of a little-endian u32 (length fields are where readers break).
    Xor32(usize, u32),
    /// Cut the file here.
    Truncate(usize),
    /// Insert bytes here.
    Insert(usize, Vec<u8>),
    /// Repeat a range (duplicated blocks, stale lengths).
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u32>()).prop_map(|(i, x)| Mutation::Xor32(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..32)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..200).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn apply(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if b.is_empty() {
            break;
        }
        let at = |i: usize| i % b.len();
        match m {
            Mutation::Set(i, v) => {
                let i = at(*i);
                b[i] = *v;
            }
            Mutation::Xor32(i, x) => {
                let i = at(*i);
                for (k, byte) in x.to_le_bytes().iter().enumerate() {
                    if let Some(t) = b.get_mut(i + k) {
                        *t ^= byte;
                    }
                }
            }
            Mutation::Truncate(i) => b.truncate(at(*i)),
            Mutation::Insert(i, v) => {
                let i = at(*i);
                b.splice(i..i, v.iter().copied());
            }
            Mutation::Repeat(i, n) => {
                let i = at(*i);
                let end = (i + n).min(b.len());
                let chunk = b[i..end].to_vec();
                b.splice(i..i, chunk);
            }
        }
    }
    b
}

proptest! {
    // PROPTEST_CASES raises it for a longer run.
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_captures_replay_or_fail_with_one_line(
        pick in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let files = corpus();
        let bytes = apply(files[pick % files.len()].clone(), &muts);
        let _ = replay_bytes(&bytes);
    }

    #[test]
    fn random_bytes_behind_a_capture_header_fail_cleanly(
        ng in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let files = corpus();
        // A valid file header (pcap's 24 bytes, or pcapng's section and interface blocks of the
        // first pcapng in the corpus), then noise.
        let head = files
            .iter()
            .find(|f| (f.get(..4) == Some(&[0x0a, 0x0d, 0x0d, 0x0a][..])) == ng)
            .map(|f| f[..if ng { 48.min(f.len()) } else { 24 }].to_vec())
            .unwrap();
        let mut bytes = head;
        bytes.extend(body);
        let _ = replay_bytes(&bytes);
    }
}

/// Every prefix of a valid capture, pcap and pcapng: all frames before the cut are replayed, and a
/// cut inside a record is reported as truncation, not as corruption or a panic.
#[test]
fn every_truncation_point_is_truncated_or_complete() {
    let root: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "captures"]
        .iter()
        .collect();
    for name in ["close_client_first.pcap", "fmt_ethernet.pcapng"] {
        let good = std::fs::read(root.join(name)).unwrap();
        let frames = replay_bytes(&good).unwrap().extra.frames;
        assert!(frames > 0);
        // A pcapng cut inside its first block (the section header) no longer has a recognizable
        // header at all.
        let first_block = if name.ends_with(".pcapng") {
            u32::from_le_bytes(good[4..8].try_into().unwrap()) as usize
        } else {
            0
        };
        for cut in 1..good.len() {
            match replay_bytes(&good[..cut]) {
                Ok(t) => assert!(t.extra.frames <= frames),
                Err(CaptureError::Truncated { .. }) => {}
                Err(CaptureError::NotCapture(_)) if cut < first_block => {}
                Err(e) => panic!("{name} cut at {cut}: {e}"),
            }
        }
    }
}
