//! The operator-facing artifacts in `deploy/` checked against the daemon itself, without privileges:
//! the Prometheus rules pass `promtool check rules` and their unit tests, every metric, label and
//! label value their PromQL (and the Grafana dashboard's) uses is one `tcpstate describe-metrics`
//! really exports, the dashboard is well-formed, and the systemd unit and the DaemonSet grant the
//! capabilities deploy/README.md documents.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use support::{exposition, ALERTS};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

/// Labels Prometheus attaches to every scraped series; the daemon does not export them itself.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Labels whose every value `describe-metrics` lists (the daemon's enums). The others (port,
/// iface, mode, version) take values only a running daemon knows.
const ENUM_LABELS: &[&str] = &[
    "state",
    "role",
    "hook",
    "direction",
    "result",
    "reason",
    "how",
];

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    let p = deploy(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// promtool

fn promtool(args: &[&str], dir: &Path) -> Output {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("promtool").is_file());
    assert!(
        found,
        "promtool is missing: run `cargo xtask setup` (it installs the Debian package prometheus)"
    );
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn promtool_check_rules_accepts_the_rules() {
    let o = promtool(
        &["check", "rules", "tcpstate-rules.yml"],
        &deploy("prometheus"),
    );
    let out = text(&o);
    assert!(o.status.success(), "promtool check rules:\n{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "expected {} rules:\n{out}",
        ALERTS.len()
    );
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let o = promtool(
        &["test", "rules", "tcpstate-rules.test.yml"],
        &deploy("prometheus"),
    );
    let out = text(&o);
    assert!(o.status.success(), "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let rules = alert_rules();
    let cases = rule_test_cases(&read("prometheus/tcpstate-rules.test.yml"));
    for r in &rules {
        let (fire, silent) = cases.get(&r.alert).copied().unwrap_or((0, 0));
        assert!(
            fire >= 1 && silent >= 1,
            "{}: {fire} test case(s) where it fires and {silent} where it must not; need at least one of each",
            r.alert
        );
    }
    let unknown: Vec<_> = cases
        .keys()
        .filter(|a| !ALERTS.contains(&a.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
}

#[test]
fn alerts_are_complete_and_tell_what_to_do() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(names, ALERTS);
    for r in &rules {
        assert!(r.for_.is_some(), "{}: no `for`", r.alert);
        assert!(
            matches!(r.severity.as_deref(), Some("warning" | "critical")),
            "{}: severity {:?}",
            r.alert,
            r.severity
        );
        assert!(
            r.summary.as_deref().is_some_and(|s| !s.trim().is_empty()),
            "{}: no summary",
            r.alert
        );
        let d = r.description.as_deref().unwrap_or_default();
        assert!(
            d.matches('`').count() >= 2,
            "{}: the description must name a command or query to run (in backticks): {d:?}",
            r.alert
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Metric names and labels against `describe-metrics`

#[test]
fn rule_expressions_use_only_exported_metrics_and_labels() {
    let families = exported();
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();
    for r in alert_rules() {
        let info = scan(&r.expr);
        used.extend(info.selectors.iter().map(|s| s.metric.clone()));
        errors.extend(check(&families, &info, &format!("rule {}", r.alert)));
        let templated = format!(
            "{} {}",
            r.summary.as_deref().unwrap_or_default(),
            r.description.as_deref().unwrap_or_default()
        );
        // Queries the description suggests running must work too.
        for q in backticked(&templated).filter(|q| q.contains("tcpstate_")) {
            let q = strip_templates(q);
            errors.extend(check(
                &families,
                &scan(&q),
                &format!("rule {} description query `{q}`", r.alert),
            ));
        }
        for l in template_labels(&templated, "$labels.") {
            if !info.result_labels(&families).contains(&l) {
                errors.push(format!(
                    "rule {}: annotations use $labels.{l}, which its result does not carry",
                    r.alert
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let want = [
        "tcpstate_close_wait_leaked",
        "tcpstate_flow_table_half_open_entries",
        "tcpstate_flow_table_half_open_capacity",
        "tcpstate_flows_untracked_total",
        "tcpstate_resets_total",
        "tcpstate_flow_table_entries",
        "tcpstate_flow_table_capacity",
        "tcpstate_client_ports_in_use",
        "tcpstate_client_port_range_size",
    ];
    for m in want {
        assert!(used.contains(m), "the rules never use {m}: {used:?}");
    }
}

#[test]
fn dashboard_expressions_use_only_exported_metrics_and_labels() {
    let families = exported();
    let dash = dashboard();
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();
    for (ctx, expr, legend) in dashboard_targets(&dash) {
        let info = scan(&expr);
        used.extend(info.selectors.iter().map(|s| s.metric.clone()));
        errors.extend(check(&families, &info, &ctx));
        for s in info.selectors.iter().filter(|s| s.metric != "up") {
            if !s
                .matchers
                .iter()
                .any(|(k, op, v)| k == "instance" && op == "=~" && v == "$instance")
            {
                errors.push(format!(
                    "{ctx}: {} ignores the instance variable (needs instance=~\"$instance\")",
                    s.metric
                ));
            }
        }
        for l in template_labels(&legend, "") {
            if !info.result_labels(&families).contains(&l) {
                errors.push(format!(
                    "{ctx}: legend uses {{{{{l}}}}}, which the query's result does not carry"
                ));
            }
        }
    }
    // The instance variable's query.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("instance variable");
    let def = instance["definition"].as_str().expect("definition");
    let (metric, label) = def
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(','))
        .unwrap_or_else(|| panic!("instance variable: unexpected query {def:?}"));
    let (metric, label) = (metric.trim(), label.trim());
    assert!(
        families.contains_key(metric),
        "instance variable queries {metric}, which is not exported"
    );
    assert!(TARGET_LABELS.contains(&label), "{def}");
    assert_eq!(instance["query"]["query"].as_str(), Some(def));

    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let want = [
        "tcpstate_connections",
        "tcpstate_close_wait_leaked",
        "tcpstate_close_wait_oldest_seconds",
        "tcpstate_resets_total",
        "tcpstate_handshakes_total",
        "tcpstate_handshake_duration_seconds_bucket",
        "tcpstate_flow_table_entries",
        "tcpstate_flow_table_capacity",
        "tcpstate_flow_table_half_open_entries",
        "tcpstate_flow_table_half_open_capacity",
        "tcpstate_segments_total",
        "tcpstate_invalid_segments_total",
        "tcpstate_skipped_packets_total",
        "tcpstate_syn_backlog",
        "tcpstate_syn_cookies_sent_total",
        "tcpstate_syn_retransmits_total",
        "tcpstate_synack_retransmits_total",
        "tcpstate_fastopen_total",
        "tcpstate_client_ports_in_use",
        "tcpstate_client_port_range_size",
    ];
    for m in want {
        assert!(used.contains(m), "no dashboard panel uses {m}: {used:?}");
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses each query as a recording rule, with Grafana's variables substituted.
    let dash = dashboard();
    let targets = dashboard_targets(&dash);
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr, _)) in targets.iter().enumerate() {
        let expr = grafana_to_promql(expr);
        yaml.push_str(&format!(
            "      - record: tcpstate_dashboard:query_{i}\n        expr: |\n"
        ));
        for line in expr.lines() {
            yaml.push_str(&format!("          {line}\n"));
        }
    }
    let dir = std::env::temp_dir().join(format!("tcpstate-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.yml"), &yaml).unwrap();
    let o = promtool(&["check", "rules", "dashboard.yml"], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let out = text(&o);
    assert!(
        o.status.success(),
        "a dashboard query does not parse:\n{out}\n{yaml}"
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", targets.len())),
        "{out}"
    );
}

#[test]
fn dashboard_is_well_formed() {
    let dash = dashboard();
    assert_eq!(dash["schemaVersion"], 39);
    assert_eq!(dash["uid"], "tcpstate");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let inst = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    assert_eq!(inst["type"], "query");
    assert_eq!(inst["datasource"]["uid"], "${datasource}");
    assert_eq!(inst["includeAll"], true);
    assert_eq!(inst["multi"], true);

    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        titles.insert(title.to_string());
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?}: empty expr in {t}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {t}");
        }
    }
    for want in [
        "Connections by state",
        "CLOSE_WAIT leaked by port",
        "Oldest CLOSE_WAIT by port",
        "Resets by state and direction",
        "Handshakes by result",
        "Handshake duration by role",
        "Flow table fill",
        "Segments by hook",
        "Invalid segments and skipped packets by reason",
        "SYN cookies by port and Fast Open",
        "Client ports in use by destination",
    ] {
        assert!(titles.contains(want), "no panel {want:?} in {titles:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Privileges of the service definitions

/// What the kernel needs for `tcpstate run` to load, attach, pin and serve, measured by running
/// it as an unprivileged user with candidate sets (deploy/README.md).
const KERNEL_CAPS: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];
/// What container mode adds (measured with setpriv, deploy/README.md): entering pods' namespaces
/// (setns), opening their processes' namespace files, and reading other users' fd links.
const CONTAINER_CAPS: &[&str] = &["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"];

#[test]
fn service_definitions_grant_the_documented_capabilities() {
    let unit = read("systemd/tcpstate.service");
    let value = |key: &str| -> BTreeSet<String> {
        let lines: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .collect();
        assert_eq!(lines.len(), 1, "exactly one {key}= line");
        lines[0].split_whitespace().map(str::to_string).collect()
    };
    let ambient = value("AmbientCapabilities");
    assert_eq!(ambient, value("CapabilityBoundingSet"));
    // Exactly the kernel's set: bpffs is mounted by ExecStartPre, so no CAP_SYS_ADMIN.
    let want: BTreeSet<String> = KERNEL_CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    assert_eq!(ambient, want);
    for line in [
        "User=tcpstate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/sys/fs/bpf",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=/usr/local/bin/tcpstate run")),
        "ExecStart"
    );

    // The DaemonSet runs as uid 0 (Kubernetes grants no ambient capabilities to other users), so
    // the preflight passes; in container mode it needs the kernel's set and container mode's.
    let ds = read("kubernetes/daemonset.yaml");
    let list = |key: &str| -> BTreeSet<String> {
        let l = ds
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("daemonset has no {key}:"));
        l.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|c| c.trim().to_string())
            .collect()
    };
    assert_eq!(
        list("add"),
        KERNEL_CAPS
            .iter()
            .chain(CONTAINER_CAPS)
            .map(|c| c.to_string())
            .collect()
    );
    assert!(
        ds.contains(r#""--containers", "--host-root", "/host""#),
        "the DaemonSet runs container mode with the runtimes' state under /host"
    );
    // Everything of the host it mounts besides bpffs is read-only.
    let mounts: Vec<&str> = ds
        .split("volumeMounts:")
        .nth(1)
        .and_then(|m| m.split("livenessProbe:").next())
        .expect("volumeMounts")
        .split("- name: ")
        .skip(1)
        .collect();
    assert!(mounts.len() >= 6, "{mounts:?}");
    for m in mounts.iter().filter(|m| !m.starts_with("bpffs")) {
        assert!(m.contains("readOnly: true"), "mount not read-only: {m}");
    }
    assert_eq!(list("drop"), BTreeSet::from(["ALL".to_string()]));
    for line in [
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "hostNetwork: true",
        "hostPID: true",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(
            ds.lines().any(|l| l.trim() == line),
            "daemonset lacks {line}"
        );
    }
    let readme = read("README.md");
    for c in KERNEL_CAPS
        .iter()
        .chain(CONTAINER_CAPS)
        .chain(&["SYS_ADMIN"])
    {
        assert!(
            readme.contains(&format!("CAP_{c}")),
            "deploy/README.md does not explain CAP_{c}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The checker's own tests: it must catch what it is for.

/// A small exposition for the checker's own tests (the daemon's metrics change under them).
const SAMPLE_EXPOSITION: &str = r#"# TYPE tcpstate_connections gauge
tcpstate_connections{role="server",state="established"} 0
tcpstate_connections{role="server",state="close_wait"} 0
# TYPE tcpstate_resets_total counter
tcpstate_resets_total{direction="sent",state="closed"} 0
tcpstate_resets_total{direction="received",state="syn_sent"} 0
# TYPE tcpstate_flows_untracked_total counter
tcpstate_flows_untracked_total{reason="table_full"} 0
tcpstate_flows_untracked_total{reason="half_open_budget"} 0
# TYPE tcpstate_x_seconds histogram
tcpstate_x_seconds_bucket{role="server",le="0.1"} 0
tcpstate_x_seconds_bucket{role="server",le="+Inf"} 0
tcpstate_x_seconds_sum{role="server"} 0
tcpstate_x_seconds_count{role="server"} 0
"#;

#[test]
fn checker_catches_unknown_metrics_labels_and_values() {
    let families = exposition::families(SAMPLE_EXPOSITION);
    let errs = |e: &str| check(&families, &scan(e), "t");
    assert_eq!(
        errs(
            r#"sum by (instance, state) (rate(tcpstate_resets_total{direction="sent", state=~"closed|syn_sent", job="tcpstate"}[5m]))"#
        ),
        Vec::<String>::new()
    );
    let e = errs(r#"tcpstate_connections{stat="close_wait"}"#);
    assert!(e.len() == 1 && e[0].contains("has no label stat"), "{e:?}");
    let e = errs(r#"rate(tcpstate_flows_untracked_total{reason="half_open"}[5m])"#);
    assert!(
        e.len() == 1 && e[0].contains("reason=\"half_open\""),
        "{e:?}"
    );
    let e = errs(r#"tcpstate_flows_untracked_total{reason=~"table_full|tabel_full"}"#);
    assert!(e.len() == 1 && e[0].contains("tabel_full"), "{e:?}");
    let e = errs("sum by (port) (rate(tcpstate_listen_overflows_total[5m]))");
    assert!(
        e.iter()
            .any(|m| m.contains("tcpstate_listen_overflows_total is not exported")),
        "{e:?}"
    );
    let e = errs("sum by (port) (tcpstate_connections)");
    assert!(e.len() == 1 && e[0].contains("by/on label port"), "{e:?}");
    let e = errs(
        r#"tcpstate_connections{state="close_wait"} > on (role, instance) tcpstate_resets_total"#,
    );
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn checker_maps_histogram_series_to_their_family() {
    let families = exposition::families(SAMPLE_EXPOSITION);
    assert_eq!(families["tcpstate_x_seconds"].kind, "histogram");
    assert_eq!(
        families["tcpstate_x_seconds"]
            .labels
            .keys()
            .collect::<Vec<_>>(),
        ["role"]
    );
    let errs = |e: &str| check(&families, &scan(e), "t");
    assert_eq!(
        errs(
            r#"histogram_quantile(0.5, sum by (le, role) (rate(tcpstate_x_seconds_bucket{role="server", le="+Inf"}[5m])))"#
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        errs("rate(tcpstate_x_seconds_sum[5m]) / rate(tcpstate_x_seconds_count[5m])"),
        Vec::<String>::new()
    );
    // `le` is a label of the _bucket series only.
    assert_eq!(errs(r#"tcpstate_x_seconds_count{le="1"}"#).len(), 1);
    let e = errs("rate(tcpstate_y_seconds_bucket[5m])");
    assert!(
        e.len() == 1 && e[0].contains("tcpstate_y_seconds_bucket is not exported"),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// describe-metrics

fn exported() -> BTreeMap<String, exposition::Family> {
    // Container mode's exposition: every family and label either mode exports.
    let o = Command::new(BIN)
        .args(["describe-metrics", "--containers"])
        .output()
        .expect("run tcpstate describe-metrics");
    assert!(o.status.success(), "describe-metrics: {}", text(&o));
    let families = exposition::families(&String::from_utf8(o.stdout).unwrap());
    assert!(
        families.len() >= 20,
        "describe-metrics listed {} families",
        families.len()
    );
    families
}

// ---------------------------------------------------------------------------------------------
// A PromQL scanner: enough to find selectors, their matchers and grouping labels.

#[derive(Debug)]
struct Selector {
    metric: String,
    /// (label, operator, value)
    matchers: Vec<(String, String, String)>,
}

#[derive(Debug, Default)]
struct ExprInfo {
    selectors: Vec<Selector>,
    /// Labels named in by(...), on(...), ignoring(...).
    grouping: Vec<String>,
    /// Whether the result is aggregated `by` (so only those labels survive).
    has_by: bool,
}

impl ExprInfo {
    /// Labels a series of this expression's result may carry (an over-approximation when nothing
    /// is aggregated: the union of the selected metrics' labels).
    fn result_labels(&self, families: &BTreeMap<String, exposition::Family>) -> BTreeSet<String> {
        if self.has_by {
            return self.grouping.iter().cloned().collect();
        }
        let mut out: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for s in &self.selectors {
            if let Some((fam, _)) = exposition::family_of(families, &s.metric) {
                out.extend(families[fam].labels.keys().cloned());
            }
            out.extend(s.matchers.iter().map(|(k, _, _)| k.clone()));
        }
        out
    }
}

fn scan(expr: &str) -> ExprInfo {
    let c: Vec<char> = expr.chars().collect();
    let mut info = ExprInfo::default();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch.is_ascii_digit() {
            // Numbers and durations (5m, 1.5e3).
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let j = skip_ws(i);
            let next = c.get(j).copied();
            match word.as_str() {
                "by" | "on" | "ignoring" | "without" | "group_left" | "group_right"
                    if next == Some('(') =>
                {
                    let close = (j..c.len()).find(|&k| c[k] == ')').expect("unclosed (");
                    let labels: String = c[j + 1..close].iter().collect();
                    if word != "without" && !word.starts_with("group_") {
                        info.has_by |= word == "by";
                        info.grouping.extend(
                            labels
                                .split(',')
                                .map(|l| l.trim().to_string())
                                .filter(|l| !l.is_empty()),
                        );
                    }
                    i = close + 1;
                }
                _ if next == Some('(') => {} // a function call
                _ if next == Some('{') => {
                    let (matchers, end) = parse_matchers(&c, j);
                    info.selectors.push(Selector {
                        metric: word,
                        matchers,
                    });
                    i = end;
                }
                _ if word.starts_with("tcpstate_") || word == "up" => {
                    info.selectors.push(Selector {
                        metric: word,
                        matchers: Vec::new(),
                    })
                }
                _ => {} // keywords: and, or, unless, offset, bool, ...
            }
        } else {
            i += 1;
        }
    }
    info
}

fn skip_string(c: &[char], start: usize) -> usize {
    let q = c[start];
    let mut i = start + 1;
    while i < c.len() && c[i] != q {
        if c[i] == '\\' && q != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Parses `{k op "v", ...}` starting at the `{`; returns the matchers and the index after `}`.
fn parse_matchers(c: &[char], open: usize) -> (Vec<(String, String, String)>, usize) {
    let mut out = Vec::new();
    let mut i = open + 1;
    loop {
        while i < c.len() && (c[i].is_whitespace() || c[i] == ',') {
            i += 1;
        }
        if i >= c.len() || c[i] == '}' {
            return (out, i + 1);
        }
        let ks = i;
        while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
            i += 1;
        }
        let key: String = c[ks..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let os = i;
        while i < c.len() && matches!(c[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = c[os..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let end = skip_string(c, i);
        let raw: String = c[i + 1..end - 1].iter().collect();
        let value = raw.replace("\\\"", "\"").replace("\\\\", "\\");
        assert!(!key.is_empty() && !op.is_empty(), "bad matcher near {ks}");
        out.push((key, op, value));
        i = end;
    }
}

/// Everything wrong with an expression's selectors, prefixed by `ctx`.
fn check(
    families: &BTreeMap<String, exposition::Family>,
    info: &ExprInfo,
    ctx: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut known_labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for s in &info.selectors {
        if !s.metric.starts_with("tcpstate_") {
            // Prometheus's own series (up): only their matcher labels are known.
            known_labels.extend(s.matchers.iter().map(|(k, _, _)| k.clone()));
            continue;
        }
        let Some((fam, extra)) = exposition::family_of(families, &s.metric) else {
            errors.push(format!(
                "{ctx}: {} is not exported (tcpstate describe-metrics)",
                s.metric
            ));
            continue;
        };
        let f = &families[fam];
        known_labels.extend(f.labels.keys().cloned());
        known_labels.extend(extra.map(str::to_string));
        for (k, op, v) in &s.matchers {
            let label_ok = f.labels.contains_key(k)
                || TARGET_LABELS.contains(&k.as_str())
                || extra == Some(k.as_str())
                || k == "__name__";
            if !label_ok {
                errors.push(format!(
                    "{ctx}: {} has no label {k} (it has {:?})",
                    s.metric,
                    f.labels.keys().collect::<Vec<_>>()
                ));
                continue;
            }
            if !ENUM_LABELS.contains(&k.as_str()) {
                continue;
            }
            let values: Vec<&str> = match op.as_str() {
                "=" | "!=" => vec![v.as_str()],
                _ if v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') =>
                {
                    v.split('|').collect()
                }
                _ => vec![], // a real regex: not checked
            };
            for v in values {
                if !f.labels[k].contains(v) {
                    errors.push(format!(
                        "{ctx}: {} never has {k}=\"{v}\" (values: {:?})",
                        s.metric, f.labels[k]
                    ));
                }
            }
        }
    }
    for g in &info.grouping {
        if !known_labels.contains(g) {
            errors.push(format!(
                "{ctx}: by/on label {g} is on none of the selected metrics"
            ));
        }
    }
    errors
}

/// The `quoted` parts of a text.
fn backticked(s: &str) -> impl Iterator<Item = &str> {
    s.split('`').skip(1).step_by(2)
}

/// A template with every `{{ ... }}` replaced by a plain value.
fn strip_templates(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        out.push('x');
        rest = rest[start..]
            .find("}}")
            .map_or("", |e| &rest[start + e + 2..]);
    }
    out.push_str(rest);
    out
}

/// Label names in `{{ $labels.x }}` (prefix "$labels.") or Grafana's `{{x}}` (prefix "").
fn template_labels(s: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + len].trim();
        if let Some(l) = inner.strip_prefix(prefix) {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && (!prefix.is_empty() || name.len() == l.len()) {
                out.insert(name);
            }
        }
        rest = &rest[start + len + 2..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The rules file and its tests (a small reader for the YAML these files use: no YAML crate here)

#[derive(Debug, Default)]
struct AlertRule {
    alert: String,
    expr: String,
    for_: Option<String>,
    severity: Option<String>,
    summary: Option<String>,
    description: Option<String>,
}

fn alert_rules() -> Vec<AlertRule> {
    let yaml = read("prometheus/tcpstate-rules.yml");
    let lines: Vec<&str> = yaml.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with("- alert:"))
        .collect();
    let mut rules = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let block = &lines[s..*starts.get(n + 1).unwrap_or(&lines.len())];
        let get = |key: &str| yaml_value(block, key);
        let r = AlertRule {
            alert: get("- alert").expect("alert name"),
            expr: get("expr").unwrap_or_else(|| panic!("rule at line {}: no expr", s + 1)),
            for_: get("for"),
            severity: get("severity"),
            summary: get("summary"),
            description: get("description"),
        };
        rules.push(r);
    }
    rules
}

/// The value of `key:` in `lines`: inline (quotes removed) or a block scalar (`|`, `>-`, ...).
fn yaml_value(lines: &[&str], key: &str) -> Option<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let (i, line) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.trim_start().starts_with(&format!("{key}:")))?;
    let v = line.trim_start()[key.len() + 1..].trim();
    if let Some(style) = v.chars().next().filter(|c| *c == '|' || *c == '>') {
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        let sep = if style == '|' { "\n" } else { " " };
        return Some(body.join(sep).trim().to_string());
    }
    let unquoted = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v);
    Some(unquoted.replace("\\\"", "\""))
}

/// Alert name -> (cases where it fires, cases where it must stay silent).
fn rule_test_cases(yaml: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("alertname:") {
            current = Some(a.trim().to_string());
        } else if let Some(v) = t.strip_prefix("exp_alerts:") {
            let a = current.take().expect("exp_alerts without alertname");
            let e = out.entry(a).or_default();
            if v.trim() == "[]" {
                e.1 += 1;
            } else {
                e.0 += 1;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("grafana/tcpstate.json")).expect("tcpstate.json is valid JSON")
}

/// (context, expr, legendFormat) of every panel target.
fn dashboard_targets(dash: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            out.push((
                format!(
                    "panel {:?} target {}",
                    p["title"].as_str().unwrap_or("?"),
                    t["refId"]
                ),
                t["expr"].as_str().unwrap_or_default().to_string(),
                t["legendFormat"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    assert!(out.len() >= 10, "only {} dashboard queries", out.len());
    out
}

/// A Grafana query with its variables replaced as Grafana would for "All" over a 1m scrape.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "4m")
        .replace("$instance", ".*")
}

// ---------------------------------------------------------------------------------------------
// systemd: the unit rules container mode out, its drop-in lifts exactly what container mode needs

/// `key=value` lines of a unit file's [Service] section, in order (comments and other sections
/// left out).
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line}"));
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

/// The capabilities (without CAP_) a list of settings leaves in `key`, as systemd merges them:
/// each non-empty assignment adds to the set, an empty one resets it.
fn merged_caps(settings: &[(String, String)], key: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for (k, v) in settings.iter().filter(|(k, _)| k == key) {
        assert!(!v.starts_with('~'), "{k}={v}: an inverted list");
        if v.is_empty() {
            set.clear();
        }
        set.extend(v.split_whitespace().map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{k}: {c}"))
                .to_string()
        }));
    }
    set
}

/// The namespace types RestrictNamespaces= leaves allowed (None: no restriction), as systemd
/// merges its assignments: yes allows none, no or empty lifts the restriction, a list adds.
fn allowed_namespaces(settings: &[(String, String)]) -> Option<BTreeSet<String>> {
    let mut allowed: Option<BTreeSet<String>> = None;
    for (_, v) in settings.iter().filter(|(k, _)| k == "RestrictNamespaces") {
        match v.as_str() {
            "yes" | "true" => allowed = Some(BTreeSet::new()),
            "" | "no" | "false" => allowed = None,
            list => {
                assert!(
                    !list.starts_with('~'),
                    "RestrictNamespaces={list}: inverted"
                );
                allowed
                    .get_or_insert_with(BTreeSet::new)
                    .extend(list.split_whitespace().map(str::to_string));
            }
        }
    }
    allowed
}

const DROP_IN: &str = "systemd/tcpstate.service.d/containers.conf";

#[test]
fn the_unit_rules_out_container_mode_and_its_drop_in_lifts_exactly_that() {
    let unit = service_settings(&read("systemd/tcpstate.service"));
    let drop_in = service_settings(&read(DROP_IN));
    let kernel: BTreeSet<String> = KERNEL_CAPS.iter().map(|c| c.to_string()).collect();
    let container: BTreeSet<String> = CONTAINER_CAPS.iter().map(|c| c.to_string()).collect();

    // The unit alone: no setns(2) (every namespace type forbidden), neither CAP_SYS_ADMIN nor
    // CAP_SYS_PTRACE even in the bounding set.
    assert_eq!(allowed_namespaces(&unit), Some(BTreeSet::new()));
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(merged_caps(&unit, key), kernel, "the unit's {key}");
    }

    // The drop-in touches only these, so it can lift nothing else unnoticed.
    let allowed_keys = [
        "Environment",
        "AmbientCapabilities",
        "CapabilityBoundingSet",
        "RestrictNamespaces",
    ];
    for (k, v) in &drop_in {
        assert!(
            allowed_keys.contains(&k.as_str()),
            "the drop-in sets {k}={v}"
        );
    }
    assert!(
        drop_in
            .iter()
            .any(|(k, v)| k == "Environment" && v == "TCPSTATE_CONTAINERS=true"),
        "the drop-in does not turn container mode on: {drop_in:?}"
    );
    // Unit and drop-in, merged as systemd does: the kernel's set and container mode's, network
    // namespaces only.
    let merged: Vec<(String, String)> = unit.iter().chain(&drop_in).cloned().collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(
            merged_caps(&merged, key),
            &kernel | &container,
            "{key} with the drop-in"
        );
    }
    assert_eq!(
        allowed_namespaces(&merged),
        Some(BTreeSet::from(["net".to_string()]))
    );
    // The flag the drop-in sets through the environment is the binary's.
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("TCPSTATE_CONTAINERS"),
        "`tcpstate run` takes no TCPSTATE_CONTAINERS"
    );
}

/// A scratch unit directory with the repository's unit (ExecStart pointing at the test's
/// binary, which systemd-analyze checks exists) and, if `drop_in`, the drop-in.
fn unit_dir(name: &str, drop_in: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcpstate-units-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tcpstate.service.d")).unwrap();
    let unit = read("systemd/tcpstate.service").replace("/usr/local/bin/tcpstate", BIN);
    std::fs::write(dir.join("tcpstate.service"), unit).unwrap();
    if let Some(d) = drop_in {
        std::fs::write(dir.join("tcpstate.service.d/containers.conf"), d).unwrap();
    }
    dir
}

fn systemd_analyze(dir: &Path, args: &[&str]) -> Output {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("systemd-analyze").is_file());
    assert!(
        found,
        "systemd-analyze is missing: install the Debian package systemd"
    );
    Command::new("systemd-analyze")
        .args(args)
        .arg(dir.join("tcpstate.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("run systemd-analyze")
}

/// systemd's own reading of a unit: `systemd-analyze security --offline`, check name -> whether
/// the unit passes it (e.g. `CapabilityBoundingSet=~CAP_SYS_ADMIN` true: not in the set).
fn security(dir: &Path) -> BTreeMap<String, bool> {
    let o = systemd_analyze(
        dir,
        &["security", "--offline=true", "--json=short", "--no-pager"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("systemd-analyze security: {e}: {}", text(&o)));
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["set"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn systemd_reads_the_drop_in_as_lifting_container_modes_restrictions() {
    let alone = unit_dir("alone", None);
    let with = unit_dir("containers", Some(&read(DROP_IN)));
    // --man=no: the man pages the unit's Documentation= names are the .deb's (the e2e test of
    // the package verifies the installed unit with them).
    for dir in [&alone, &with] {
        let o = systemd_analyze(dir, &["verify", "--man=no"]);
        assert!(
            o.status.success() && text(&o).trim().is_empty(),
            "systemd-analyze verify {}:\n{}",
            dir.display(),
            text(&o)
        );
    }
    // The check sees the drop-in: a bad key in it is reported.
    let bad = unit_dir("bad", Some(&format!("{}\nNoSuchKey=1\n", read(DROP_IN))));
    let o = systemd_analyze(&bad, &["verify", "--man=no"]);
    assert!(text(&o).contains("NoSuchKey"), "{}", text(&o));

    let (a, w) = (security(&alone), security(&with));
    let _ = [alone, with, bad].map(std::fs::remove_dir_all);
    // Lifted by the drop-in, in place without it.
    for check in [
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "CapabilityBoundingSet=~CAP_SYS_PTRACE",
        "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
        "RestrictNamespaces=~net",
    ] {
        assert_eq!(a.get(check), Some(&true), "the unit alone: {check}");
        assert_eq!(w.get(check), Some(&false), "with the drop-in: {check}");
    }
    // Everything else as the unit has it.
    let changed: Vec<&String> = a
        .keys()
        .filter(|k| a.get(*k) != w.get(*k))
        .filter(|k| !k.starts_with("CapabilityBoundingSet=") && *k != "RestrictNamespaces=~net")
        .filter(|k| *k != "AmbientCapabilities=")
        .collect();
    assert!(changed.is_empty(), "the drop-in also changes {changed:?}");
}

// ---------------------------------------------------------------------------------------------
// The .deb's maintainer scripts, run against stand-ins of the tools they call

/// Runs a maintainer script with `args`, with stand-ins for every command it may call (each
/// logs its arguments) and `/run/systemd/system` pointed at a directory that exists (a system
/// booted with systemd). Returns the calls, one line each.
fn maintainer_script(script: &str, args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "tcpstate-maint-{script}-{}-{}",
        args.join("_"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(bin.join("../run-systemd")).unwrap();
    let log = dir.join("calls");
    for tool in [
        "systemctl",
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "getent",
        "useradd",
        "userdel",
        "tcpstate",
        "rmdir",
    ] {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n", log.display()),
        )
        .unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).unwrap();
    }
    let body = read(&format!("debian/{script}"))
        .replace(
            "/run/systemd/system",
            &dir.join("run-systemd").display().to_string(),
        )
        .replace(
            "/usr/bin/deb-systemd-helper",
            &bin.join("deb-systemd-helper").display().to_string(),
        );
    let path = dir.join(script);
    std::fs::write(&path, body).unwrap();
    let o = Command::new("sh")
        .arg(&path)
        .args(args)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env_remove("DPKG_ROOT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{script} {args:?}: {}", text(&o));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    calls
}

#[test]
fn maintainer_scripts_restart_a_running_daemon_on_upgrade_only() {
    let restart = "deb-systemd-invoke try-restart tcpstate.service";
    // A first install: the unit is neither started nor restarted.
    let install = maintainer_script("postinst", &["configure"]);
    assert!(
        install.contains("systemctl --system daemon-reload"),
        "{install}"
    );
    assert!(
        install.contains("deb-systemd-helper update-state tcpstate.service"),
        "{install}"
    );
    assert!(!install.contains("deb-systemd-invoke"), "{install}");
    // An upgrade from an earlier version: restarted if it runs (try-restart), never started.
    let upgrade = maintainer_script("postinst", &["configure", "0.0.9-1"]);
    assert!(upgrade.contains(restart), "{upgrade}");
    assert!(!upgrade.contains(" start "), "{upgrade}");
    // No systemctl but daemon-reload (lintian's maintainer-script-calls-systemctl).
    for script in ["postinst", "prerm", "postrm"] {
        for line in read(&format!("debian/{script}")).lines() {
            let l = line.trim();
            assert!(
                l.starts_with('#') || !l.contains("systemctl ") || l.contains("daemon-reload"),
                "{script}: {l}"
            );
        }
    }
    // The old version's prerm on an upgrade leaves the daemon running; on removal it stops,
    // disables and cleans up.
    assert_eq!(maintainer_script("prerm", &["upgrade", "0.2.0-1"]), "");
    let remove = maintainer_script("prerm", &["remove"]);
    for call in [
        "deb-systemd-invoke stop tcpstate.service",
        "deb-systemd-helper disable tcpstate.service",
        "tcpstate cleanup",
    ] {
        assert!(remove.contains(call), "prerm remove: no {call}:\n{remove}");
    }
    let purge = maintainer_script("postrm", &["purge"]);
    assert!(
        purge.contains("deb-systemd-helper purge tcpstate.service"),
        "{purge}"
    );
    assert!(purge.contains("userdel tcpstate"), "{purge}");
}

// ---------------------------------------------------------------------------------------------
// The man pages and completions `cargo xtask dist` packages (`tcpstate generate`)

#[test]
fn generated_man_pages_render_and_completions_parse() {
    let dir = std::env::temp_dir().join(format!("tcpstate-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(BIN)
        .args(["generate", "man"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "tcpstate generate man: {}", text(&o));
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert!(pages.len() >= 7, "{pages:?}");
    for page in &pages {
        // groff's own parse, every warning on: nothing may be said.
        let o = Command::new("groff")
            .args(["-man", "-z", "-ww", "-Tutf8"])
            .arg(page)
            .output()
            .expect("groff (Debian package groff-base: `cargo xtask setup`)");
        assert!(
            o.status.success() && text(&o).trim().is_empty(),
            "{}: {}",
            page.display(),
            text(&o)
        );
    }
    let o = Command::new("man")
        .arg("-l")
        .arg(dir.join("tcpstate-run.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man (Debian package man-db: `cargo xtask setup`)");
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "man -l: {}", text(&o));
    assert!(page.contains("--close-wait-leak-after"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);

    let o = Command::new(BIN)
        .args(["generate", "completions", "bash"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let script = dir.with_extension("bash");
    std::fs::write(&script, &o.stdout).unwrap();
    let n = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(n.status.success(), "bash -n: {}", text(&n));
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: the objects parse, the PodMonitor and Service find the DaemonSet's pods, the
// PrometheusRule is the rule file

/// The generator of prometheusrule.yaml (`cargo xtask prometheus-rule`), std only.
#[path = "../../xtask/src/prometheusrule.rs"]
#[allow(dead_code, reason = "xtask's module: the test uses its renderer only")]
mod prometheusrule;

/// Every document of a YAML file, as JSON values.
fn yaml_documents(rel: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} does not parse: {e}"))
}

/// The one object of `kind` in a YAML file.
fn object(rel: &str, kind: &str) -> serde_json::Value {
    let mut found: Vec<serde_json::Value> = yaml_documents(rel)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{rel}: one {kind}");
    found.remove(0)
}

/// Whether every `matchLabels` pair is among `labels`.
fn selects(match_labels: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let m = match_labels.as_object().expect("matchLabels");
    !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_objects_parse_and_find_the_daemonsets_pods() {
    for rel in [
        "kubernetes/daemonset.yaml",
        "kubernetes/service.yaml",
        "kubernetes/podmonitor.yaml",
        "kubernetes/prometheusrule.yaml",
    ] {
        for d in yaml_documents(rel) {
            assert!(
                d["apiVersion"].is_string() && d["kind"].is_string(),
                "{rel}: {d}"
            );
            assert!(d["metadata"]["name"].is_string(), "{rel}: no name");
        }
    }
    let ds = object("kubernetes/daemonset.yaml", "DaemonSet");
    let ns = ds["metadata"]["namespace"].as_str().expect("namespace");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&ds["spec"]["selector"]["matchLabels"], pod_labels));
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(port["containerPort"], 9477);

    let pm = object("kubernetes/podmonitor.yaml", "PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], ns);
    assert!(
        pm["spec"]["namespaceSelector"]["matchNames"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == ns)),
        "the PodMonitor does not look in {ns}"
    );
    assert!(
        selects(&pm["spec"]["selector"]["matchLabels"], pod_labels),
        "the PodMonitor's selector {} misses the pods' labels {pod_labels}",
        pm["spec"]["selector"]
    );
    // The job label comes from a pod label whose value is the job the alerts expect.
    let job_label = pm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(pod_labels[job_label], "tcpstate");
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep["port"], "metrics");
    assert_eq!(ep["path"], "/metrics");
    // The daemon's namespace, pod and container labels stay theirs, not exported_*.
    assert_eq!(ep["honorLabels"], true);
    let relabel = ep["relabelings"].as_array().expect("relabelings");
    assert!(relabel.iter().any(
        |r| r["sourceLabels"][0] == "__meta_kubernetes_pod_node_name"
            && r["targetLabel"] == "instance"
    ));
    assert!(relabel
        .iter()
        .any(|r| r["action"] == "labeldrop" && r["regex"] == "namespace|pod|container"));

    let svc = object("kubernetes/service.yaml", "Service");
    assert_eq!(svc["metadata"]["namespace"], ns);
    assert!(selects(&svc["spec"]["selector"], pod_labels));
    assert_eq!(svc["spec"]["clusterIP"], "None");
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["name"], "metrics");
    assert_eq!(sp["port"], 9477);
    assert_eq!(sp["targetPort"], "metrics");
}

#[test]
fn the_daemonsets_namespace_admits_it_and_its_pods_carry_no_token() {
    let namespace = object("kubernetes/daemonset.yaml", "Namespace");
    let ds = object("kubernetes/daemonset.yaml", "DaemonSet");
    assert_eq!(namespace["metadata"]["name"], ds["metadata"]["namespace"]);
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            namespace["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")],
            "privileged",
            "Pod Security Admission {mode}"
        );
    }
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["hostNetwork"], true);
    // The daemon does not talk to the API server, so it needs no token.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let code = std::fs::read_to_string(&p).unwrap();
                for needle in ["serviceaccount", "KUBERNETES_SERVICE_HOST", "kube::"] {
                    assert!(
                        !code.contains(needle),
                        "{} uses {needle}: the pod needs its token then",
                        p.display()
                    );
                }
            }
        }
    }
}

#[test]
fn the_prometheus_rule_is_the_rule_file() {
    let rules = read("prometheus/tcpstate-rules.yml");
    let committed = read("kubernetes/prometheusrule.yaml");
    let rendered = prometheusrule::render(&rules).expect("render");
    assert!(
        rendered == committed,
        "deploy/kubernetes/prometheusrule.yaml is not the rule file's: run `cargo xtask prometheus-rule`"
    );
    let pr = object("kubernetes/prometheusrule.yaml", "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        pr["metadata"]["namespace"],
        object("kubernetes/daemonset.yaml", "DaemonSet")["metadata"]["namespace"]
    );
    let file: serde_json::Value = serde_saphyr::from_str(&rules).expect("the rule file parses");
    assert_eq!(pr["spec"]["groups"], file["groups"]);
    let names: Vec<&str> = pr["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(names, ALERTS);
    // The generator's own check: it refuses what it cannot indent faithfully.
    assert!(prometheusrule::render(&format!("{rules}---\ngroups: []\n")).is_err());
    assert!(prometheusrule::render("rules: []\n").is_err());
}
