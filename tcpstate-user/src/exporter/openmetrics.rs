//! The OpenMetrics 1.0 text exposition of our metric families. The `prometheus` crate (0.14)
//! only writes the 0.0.4 text format, so this writes the few shapes we export (counters, gauges,
//! histograms) from the same protos. What differs from 0.0.4, per the OpenMetrics spec
//! (https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md):
//! a counter's family name has no `_total` (its samples do), histograms always carry a `+Inf`
//! bucket, and the exposition ends with `# EOF`.

use std::fmt::Write;

use prometheus::proto::{LabelPair, MetricType};

use super::{family::Family, layout::push_label_value};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn encode(families: &[Family]) -> Vec<u8> {
    let written: usize = families
        .iter()
        .filter_map(|f| f.lines.as_ref())
        .map(|l| l.len())
        .sum();
    let mut out = String::with_capacity(16 * 1024 + written);
    for written in families {
        let f = &written.proto;
        let name = f.name();
        let (family, kind) = match f.get_field_type() {
            MetricType::COUNTER => (name.strip_suffix("_total").unwrap_or(name), "counter"),
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        let _ = writeln!(out, "# HELP {family} {}", escape(f.help()));
        // A gauge's written lines are its samples in this format too.
        if let Some(lines) = &written.lines {
            out.push_str(lines);
            continue;
        }
        for m in f.get_metric() {
            let labels = m.get_label();
            match f.get_field_type() {
                MetricType::COUNTER => sample(
                    &mut out,
                    &format!("{family}_total"),
                    labels,
                    None,
                    m.get_counter().get_value(),
                ),
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut has_inf = false;
                    for b in h.get_bucket() {
                        let le = b.upper_bound();
                        has_inf |= le == f64::INFINITY;
                        let le = number(le, true);
                        let n = b.cumulative_count() as f64;
                        sample(&mut out, &format!("{family}_bucket"), labels, Some(&le), n);
                    }
                    let count = h.get_sample_count() as f64;
                    if !has_inf {
                        let b = format!("{family}_bucket");
                        sample(&mut out, &b, labels, Some("+Inf"), count);
                    }
                    sample(&mut out, &format!("{family}_count"), labels, None, count);
                    sample(
                        &mut out,
                        &format!("{family}_sum"),
                        labels,
                        None,
                        h.get_sample_sum(),
                    );
                }
                _ => sample(&mut out, family, labels, None, m.get_gauge().get_value()),
            }
        }
    }
    out.push_str("# EOF\n");
    out.into_bytes()
}

fn sample(out: &mut String, name: &str, labels: &[LabelPair], le: Option<&str>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let pairs = labels.iter().map(|l| (l.name(), l.value()));
        for (k, v) in pairs.chain(le.map(|le| ("le", le))) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value, false));
}

/// Numbers as OpenMetrics writes them: `+Inf`, `-Inf`, `NaN`; a bucket bound keeps a decimal
/// point (`1.0`), the canonical form the spec asks for so `le` values compare as strings.
fn number(v: f64, bound: bool) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if bound {
        format!("{v:?}")
    } else {
        format!("{v}")
    }
}

/// Label values escape `\`, `"` and newlines; HELP text the same (the spec escapes `"` in both).
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    push_label_value(&mut o, s);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::{Bucket, Counter, Gauge, Histogram, Metric, MetricFamily};

    fn family(name: &str, kind: MetricType, metrics: Vec<Metric>) -> Family {
        let mut f = MetricFamily::default();
        f.set_name(name.into());
        f.set_help("a \"quoted\" help\nline".into());
        f.set_field_type(kind);
        f.set_metric(metrics);
        f.into()
    }

    fn labelled(k: &str, v: &str) -> Metric {
        let mut l = LabelPair::default();
        l.set_name(k.into());
        l.set_value(v.into());
        let mut m = Metric::default();
        m.set_label(vec![l]);
        m
    }

    #[test]
    fn counters_drop_total_from_the_family_and_keep_it_on_samples() {
        let mut m = labelled("reason", "a\\b\"c");
        let mut c = Counter::default();
        c.set_value(3.0);
        m.set_counter(c);
        let text = String::from_utf8(encode(&[family(
            "x_resets_total",
            MetricType::COUNTER,
            vec![m],
        )]))
        .unwrap();
        assert_eq!(
            text,
            "# TYPE x_resets counter\n# HELP x_resets a \\\"quoted\\\" help\\nline\n\
             x_resets_total{reason=\"a\\\\b\\\"c\"} 3\n# EOF\n"
        );
    }

    #[test]
    fn histograms_get_an_inf_bucket_count_and_sum() {
        let mut h = Histogram::default();
        let mut b = Bucket::default();
        b.set_upper_bound(0.5);
        b.set_cumulative_count(2);
        let mut b1 = Bucket::default();
        b1.set_upper_bound(1.0);
        b1.set_cumulative_count(4);
        h.set_bucket(vec![b, b1]);
        h.set_sample_count(5);
        h.set_sample_sum(2.25);
        let mut m = labelled("role", "client");
        m.set_histogram(h);
        let mut g = Metric::default();
        let mut gv = Gauge::default();
        gv.set_value(f64::INFINITY);
        g.set_gauge(gv);
        let text = String::from_utf8(encode(&[
            family("x_seconds", MetricType::HISTOGRAM, vec![m]),
            family("x_gauge", MetricType::GAUGE, vec![g]),
        ]))
        .unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "x_seconds_bucket{role=\"client\",le=\"0.5\"} 2",
                "x_seconds_bucket{role=\"client\",le=\"1.0\"} 4",
                "x_seconds_bucket{role=\"client\",le=\"+Inf\"} 5",
                "x_seconds_count{role=\"client\"} 5",
                "x_seconds_sum{role=\"client\"} 2.25",
                "x_gauge +Inf",
            ]
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// Series as (name, label names): what both formats must agree on, whatever the number format.
    fn series(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, rest) = l.split_once(['{', ' ']).unwrap();
                let labels: Vec<&str> = rest
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                    .collect();
                format!("{name}{labels:?}")
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_daemons_families_have_the_same_series_in_both_formats() {
        use crate::exporter::metrics;
        // Container mode's exposition: every family and label either mode has.
        let om = String::from_utf8(metrics::idle(true, metrics::render_openmetrics)).unwrap();
        let text = String::from_utf8(metrics::describe_with(true).unwrap()).unwrap();
        assert_eq!(series(&om), series(&text));
        assert!(om.ends_with("# EOF\n"));
        // Every sample belongs to the family its TYPE line announced last.
        let mut family = String::new();
        for l in om.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                assert!(!name.ends_with("_total"), "{l}");
                family = format!("{name} {kind}");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                let (fam, kind) = family.split_once(' ').unwrap();
                let suffix = name
                    .strip_prefix(fam)
                    .unwrap_or_else(|| panic!("{l} outside {fam}"));
                let allowed: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_count", "_sum"],
                    _ => &[""],
                };
                assert!(allowed.contains(&suffix), "{l} in a {kind}");
            }
        }
    }
}
