//! One parser of the Prometheus text exposition for the tests and benches: its samples by series
//! (what the e2e suite compares with `ss`) and its families with their label values (what the
//! deployment tests hold dashboards and alert rules against).

use std::collections::{BTreeMap, BTreeSet};

/// Every sample of an exposition: the series as written (`name{labels}`) and its value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let value = value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            (series.to_string(), value)
        })
        .collect()
}

/// A family as an exposition shows it: its type, and every label value its samples carry.
pub struct Family {
    pub kind: String,
    /// Label name -> values seen in describe-metrics.
    pub labels: BTreeMap<String, BTreeSet<String>>,
}

/// Families of a text exposition, with every label value their samples show (`le` and
/// `quantile` belong to the series suffixes, not to the family).
pub fn families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(
                name.to_string(),
                Family {
                    kind: kind.to_string(),
                    labels: BTreeMap::new(),
                },
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, _) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("}"))),
                None => (series, Vec::new()),
            };
            let fam = family_of(&families, name)
                .unwrap_or_else(|| panic!("sample {name} has no # TYPE"))
                .0
                .to_string();
            let f = families.get_mut(&fam).unwrap();
            for (k, v) in labels {
                if k != "le" && k != "quantile" {
                    f.labels.entry(k).or_default().insert(v);
                }
            }
        }
    }
    families
}

/// `k="v",k2="v2"` (exposition format escapes: \\, \", \n).
pub fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} in {s:?}");
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => v.push(chars.next().unwrap_or('\\')),
                '"' => break,
                c => v.push(c),
            }
        }
        out.push((key.trim().to_string(), v));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The family a series name belongs to, and the extra label its suffix brings (`le`, `quantile`).
pub fn family_of<'a>(
    families: &'a BTreeMap<String, Family>,
    name: &str,
) -> Option<(&'a str, Option<&'static str>)> {
    if let Some((k, f)) = families.get_key_value(name) {
        return Some((k, (f.kind == "summary").then_some("quantile")));
    }
    for (suffix, kinds, extra) in [
        ("_bucket", &["histogram"][..], Some("le")),
        ("_sum", &["histogram", "summary"][..], None),
        ("_count", &["histogram", "summary"][..], None),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some((k, f)) = families.get_key_value(base) {
                if kinds.contains(&f.kind.as_str()) {
                    return Some((k, extra));
                }
            }
        }
    }
    None
}
