//! `tcpstate replay`'s progress line on a terminal: frames, bytes read, their rates, and the
//! percent of the file (when its size is known). Hidden when stderr is not a terminal, so piped
//! or redirected output is exactly what it was without it.
//!
//! Cost per frame: a counter and a mask test. The bar is touched every [`EVERY`] frames, and
//! indicatif draws at most [`HZ`] times a second whatever it is told.

use std::{
    io::{IsTerminal, Read},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Frames between two updates of the bar (a power of two: the test is a mask).
pub const EVERY: u64 = 1 << 14;
/// Redraws per second at most.
const HZ: u8 = 4;

/// The progress of one replay.
pub struct Progress {
    bar: ProgressBar,
    /// Bytes the capture reader took from the input (see [`Progress::reader`]).
    bytes: Arc<AtomicU64>,
    frames: u64,
    /// Mask of [`EVERY`] (or of what a test sets).
    mask: u64,
}

impl Progress {
    /// On stderr when it is a terminal, else hidden. `total`: the file's size, when known.
    pub fn stderr(total: Option<u64>) -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(HZ)
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress::new(total, target, EVERY)
    }

    /// Shows nothing.
    #[cfg(test)]
    pub fn hidden() -> Progress {
        Progress::new(None, ProgressDrawTarget::hidden(), EVERY)
    }

    /// Draws on `target`, updating every `every` frames (a power of two).
    pub fn new(total: Option<u64>, target: ProgressDrawTarget, every: u64) -> Progress {
        debug_assert!(every.is_power_of_two());
        let template = match total {
            Some(_) => {
                "{elapsed} {binary_bytes}/{binary_total_bytes} ({percent}%), \
                 {binary_bytes_per_sec}, {msg}, {eta} left"
            }
            None => "{elapsed} {binary_bytes}, {binary_bytes_per_sec}, {msg}",
        };
        let bar = ProgressBar::with_draw_target(total, target)
            .with_style(ProgressStyle::with_template(template).expect("a valid progress template"));
        Progress {
            bar,
            bytes: Arc::new(AtomicU64::new(0)),
            frames: 0,
            mask: every - 1,
        }
    }

    /// `input`, counting the bytes read from it into this progress.
    pub fn reader<R: Read>(&self, input: R) -> Counted<R> {
        Counted {
            inner: input,
            bytes: self.bytes.clone(),
        }
    }

    /// One frame replayed.
    #[inline]
    pub fn frame(&mut self) {
        self.frames += 1;
        if self.frames & self.mask == 0 {
            self.update();
        }
    }

    #[cold]
    fn update(&self) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_position(self.bytes.load(Ordering::Relaxed));
        self.bar
            .set_message(frames_message(self.frames, self.bar.elapsed()));
    }

    /// The replay is over: the line is erased (the result follows on stdout).
    pub fn finish(&self) {
        self.update();
        self.bar.finish_and_clear();
    }
}

/// "N frames (R/s)".
fn frames_message(frames: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        frames as f64 / secs
    } else {
        0.0
    };
    format!(
        "{} frames ({}/s)",
        indicatif::HumanCount(frames),
        indicatif::HumanCount(rate as u64)
    )
}

/// A reader that counts what it reads (see [`Progress::reader`]).
pub struct Counted<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use indicatif::TermLike;

    use super::*;

    /// A terminal that keeps what is written to it.
    #[derive(Clone, Debug, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(s.to_string());
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.write_line(s)
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn replay_onto(screen: &Screen, total: Option<u64>, every: u64) -> Progress {
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut p = Progress::new(total, target, every);
        let mut input = p.reader(&[0u8; 3000][..]);
        std::io::copy(&mut input, &mut std::io::sink()).unwrap();
        for _ in 0..8 {
            p.frame();
        }
        p
    }

    #[test]
    fn the_line_shows_frames_bytes_and_the_share_of_the_file() {
        let screen = Screen::default();
        let p = replay_onto(&screen, Some(6000), 4);
        p.finish();
        let lines = screen.0.lock().unwrap().clone();
        let last = lines.iter().rev().find(|l| !l.trim().is_empty()).unwrap();
        assert!(last.contains("8 frames ("), "{last:?}");
        assert!(last.contains("2.93 KiB/5.86 KiB (50%)"), "{last:?}");
    }

    #[test]
    fn without_a_size_there_is_no_percent() {
        let screen = Screen::default();
        replay_onto(&screen, None, 1).finish();
        let lines = screen.0.lock().unwrap().clone();
        let last = lines.iter().rev().find(|l| !l.trim().is_empty()).unwrap();
        assert!(last.contains("2.93 KiB, "), "{last:?}");
        assert!(last.contains("8 frames"), "{last:?}");
        assert!(!last.contains('%'), "{last:?}");
    }

    #[test]
    fn frames_between_updates_draw_nothing() {
        let screen = Screen::default();
        let p = replay_onto(&screen, Some(6000), 1 << 10);
        assert!(screen.0.lock().unwrap().iter().all(|l| l.trim().is_empty()));
        drop(p);
        assert_eq!(
            frames_message(12_345, Duration::from_secs(2)),
            "12,345 frames (6,172/s)"
        );
    }

    #[test]
    fn a_hidden_progress_counts_but_shows_nothing() {
        let mut p = Progress::hidden();
        let mut input = p.reader(&b"abc"[..]);
        std::io::copy(&mut input, &mut std::io::sink()).unwrap();
        for _ in 0..EVERY {
            p.frame();
        }
        p.finish();
        assert_eq!(p.bytes.load(Ordering::Relaxed), 3);
        assert!(p.bar.is_hidden());
    }
}
