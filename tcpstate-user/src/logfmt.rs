//! `--log.format logfmt`: node_exporter's log lines (go-kit's logfmt), one event a line:
//! `ts=2026-12-07T17:56:43.299814Z level=info target=tcpstate::daemon msg="serving /metrics" listen=:9477`.
//!
//! A formatter of our own for tracing-subscriber rather than the tracing-logfmt crate, which was
//! tried: it prints the `log` crate's records (aya's) under `target=log` with their real target
//! in extra fields (it does not normalize them as tracing-subscriber's formatters do), names the
//! message `message` where logfmt readers expect `msg`, and escapes `'` as `\'`, which logfmt
//! parsers take literally. tracing-subscriber's own formats are not logfmt (they leave strings
//! unquoted, so the message cannot be told from the fields).

use std::fmt::{self, Write};

use tracing::{field::Field, Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    fmt::{
        format::Writer,
        time::{FormatTime, SystemTime},
        FmtContext, FormatEvent, FormatFields,
    },
    registry::LookupSpan,
};

/// The event formatter (no colour, ever: logfmt is for journald and files).
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record (aya, aya-log) under its own target and level, as the other formats do.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str("ts=")?;
        SystemTime.format_time(&mut w)?;
        write!(w, " level={}", meta.level().as_str().to_ascii_lowercase())?;
        w.write_str(" target=")?;
        value(&mut w, meta.target())?;
        let mut fields = Fields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_char('\n')
    }
}

struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, text: &str) {
        // The fields tracing-log adds to a `log` record: already in the target above.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let key = match field.name() {
            "message" => "msg",
            other => other,
        };
        self.result = write!(self.w, " {key}=").and_then(|()| value(self.w, text));
    }
}

impl tracing::field::Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, text: &str) {
        self.entry(field, text);
    }

    fn record_debug(&mut self, field: &Field, v: &dyn fmt::Debug) {
        self.entry(field, &format!("{v:?}"));
    }
}

/// A value, quoted when it is empty or holds a space, `=`, `"` or a control character, with `\`,
/// `"` and control characters escaped (as go-logfmt writes them).
fn value(w: &mut impl Write, text: &str) -> fmt::Result {
    let quote = text.is_empty() || text.chars().any(|c| c <= ' ' || c == '=' || c == '"');
    if !quote {
        return w.write_str(text);
    }
    w.write_char('"')?;
    for c in text.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            c if c.is_control() => write!(w, "\\u{:04x}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The lines `f` logs, through the logfmt formatter.
    fn logged(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Logfmt)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_logfmt_lines_with_msg_and_quoted_values() {
        let text = logged(|| {
            tracing::info!(target: "tcpstate::daemon", listen = %":9477", n = 3, "serving /metrics");
            tracing::warn!(target: "t", path = "a \"b\"=c", empty = "", "the table's full\nsecond");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (ts, rest) = lines[0].split_once(' ').unwrap();
        assert!(ts.starts_with("ts=20") && ts.ends_with('Z'), "{ts}");
        assert_eq!(
            rest,
            "level=info target=tcpstate::daemon msg=\"serving /metrics\" listen=:9477 n=3"
        );
        assert!(
            lines[1].ends_with(
                " level=warn target=t msg=\"the table's full\\nsecond\" path=\"a \\\"b\\\"=c\" empty=\"\""
            ),
            "{}",
            lines[1]
        );
        assert!(!text.contains('\u{1b}'));
    }
}
