//! `tcpstate replay` over crafted captures (tests/captures, made by make.py with scapy): the state
//! machine's scenarios end in the states RFC 9293 gives, every link type and format the replay
//! reads gives the same result, capture time drives the timeouts, and bad files get one line and
//! exit code 2.

mod support;

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
/// The first frame of every crafted capture (make.py's T0).
const T0: f64 = 1764655200.0;

fn capture(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "captures", name]
        .iter()
        .collect();
    assert!(
        p.exists(),
        "{} is missing: run tests/captures/make.py",
        p.display()
    );
    p.display().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("replay")
        .args(args)
        .env_remove("TCPSTATE_LOG")
        .output()
        .expect("run tcpstate")
}

/// `tcpstate replay --json FILE ARGS...`, which must succeed.
fn flows(name: &str, args: &[&str]) -> Vec<Value> {
    let file = capture(name);
    let mut all = vec!["--json", file.as_str()];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(
        o.status.success(),
        "replay {name} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<Value>(&o.stdout)
        .expect("replay --json prints JSON")
        .as_array()
        .expect("an array of flows")
        .clone()
}

/// The only flow of a capture.
fn only_flow(name: &str) -> Value {
    let f = flows(name, &[]);
    assert_eq!(f.len(), 1, "{name}: {f:#?}");
    f[0].clone()
}

/// (client state, server state) of a flow object.
fn states(flow: &Value) -> (String, String) {
    let by_role = |role: &str| {
        ["a", "b"]
            .iter()
            .map(|s| &flow[s])
            .find(|e| e["role"] == role)
            .unwrap_or_else(|| panic!("no {role} endpoint in {flow:#}"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    (by_role("client"), by_role("server"))
}

fn check(name: &str, client: &str, server: &str, handshake: &str, resets: u64) -> Value {
    let f = only_flow(name);
    assert_eq!(
        states(&f),
        (client.to_string(), server.to_string()),
        "{name}: {f:#}"
    );
    assert_eq!(f["handshake"], handshake, "{name}: {f:#}");
    assert_eq!(f["resets"], resets, "{name}: {f:#}");
    f
}

#[test]
fn client_closing_first_ends_in_time_wait_against_closed() {
    let f = check(
        "close_client_first.pcap",
        "time_wait",
        "closed",
        "established",
        0,
    );
    // Zeek's notation: client upper case, server lower case, each letter once per direction.
    assert_eq!(f["history"], "ShADadFf");
    assert_eq!(f["connections"], 1);
    assert_eq!(f["segments"], 11);
    assert_eq!(f["reset"], false);
}

#[test]
fn a_fin_the_server_never_answers_leaves_it_in_close_wait() {
    check(
        "close_wait.pcap",
        "fin_wait2",
        "close_wait",
        "established",
        0,
    );
}

#[test]
fn simultaneous_open_establishes_both_through_syn_recv() {
    let f = check(
        "simultaneous_open.pcap",
        "established",
        "established",
        "established",
        0,
    );
    assert_eq!(f["history"], "SsHhDa");
}

#[test]
fn simultaneous_close_ends_both_in_time_wait() {
    check(
        "simultaneous_close.pcap",
        "time_wait",
        "time_wait",
        "established",
        0,
    );
}

#[test]
fn rst_in_each_state_closes_both_and_names_the_handshake() {
    for (name, handshake) in [
        ("rst_syn_sent.pcap", "refused"),
        ("rst_syn_recv.pcap", "reset"),
        ("rst_established.pcap", "established"),
        ("rst_fin_wait1.pcap", "established"),
        ("rst_close_wait.pcap", "established"),
        ("rst_last_ack.pcap", "established"),
        ("rst_fin_wait2.pcap", "established"),
        ("rst_closing.pcap", "established"),
        ("rst_time_wait.pcap", "established"),
    ] {
        let f = check(name, "closed", "closed", handshake, 1);
        assert_eq!(f["reset"], true, "{name}");
        let h = f["history"].as_str().unwrap();
        assert!(h.contains('R') || h.contains('r'), "{name}: {h}");
    }
}

#[test]
fn a_blind_rst_outside_the_window_changes_nothing() {
    let f = check(
        "rst_out_of_window.pcap",
        "established",
        "established",
        "established",
        0,
    );
    assert_eq!(f["history"], "ShADai", "the rejected RST is the server's I");
    let o = run(&["--metrics", &capture("rst_out_of_window.pcap")]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("tcpstate_invalid_segments_total{reason=\"rst_out_of_window\"} 1"),
        "{text}"
    );
}

#[test]
fn port_reuse_from_time_wait_opens_a_new_connection_on_the_key() {
    let f = check(
        "port_reuse.pcap",
        "established",
        "established",
        "established",
        0,
    );
    assert_eq!(f["connections"], 2);
    assert_eq!(f["history"], "ShADa", "the history is the new connection's");
    assert!(f["first_seen"].as_f64().unwrap() < T0 + 1.0);
    assert!(f["last_seen"].as_f64().unwrap() > T0 + 2.0);
}

#[test]
fn midstream_pickup_is_established_and_says_the_handshake_was_not_seen() {
    let f = check(
        "midstream.pcap",
        "established",
        "established",
        "not_seen",
        0,
    );
    assert_eq!(f["midstream"], true);
    // Roles guessed from the ports: the higher (ephemeral) port is the client.
    let client = ["a", "b"]
        .iter()
        .map(|s| &f[s])
        .find(|e| e["role"] == "client")
        .unwrap();
    assert_eq!(client["endpoint"], "192.0.2.2:40000");
}

#[test]
fn every_link_type_and_format_gives_the_same_flow() {
    let want = check("fmt_ethernet.pcap", "time_wait", "closed", "established", 0);
    for name in [
        "fmt_ethernet_ns.pcap",
        "fmt_ethernet.pcapng",
        "fmt_raw.pcap",
        "fmt_sll.pcap",
        "fmt_sll2.pcap",
        "fmt_vlan.pcap",
        "fmt_qinq.pcap",
        // Cut to 96 bytes: the closing FIN carried 1000 bytes, so only the IP length (not the
        // captured one) makes the server's ACK acknowledge it.
        "fmt_snaplen.pcap",
    ] {
        let got = ms_ages(only_flow(name));
        let want = ms_ages(want.clone());
        for field in ["a", "b", "history", "handshake", "segments"] {
            assert_eq!(
                got[field], want[field],
                "{name}: {field} differs from fmt_ethernet.pcap"
            );
        }
    }
    // Written by hand (make.py): two interfaces of different link types and timestamp
    // resolutions and a block the replay skips; a big-endian pcap. Both hold the connection of
    // close_client_first.pcap.
    let plain = ms_ages(only_flow("close_client_first.pcap"));
    for name in ["corpus/two_interfaces.pcapng", "corpus/big_endian.pcap"] {
        let got = ms_ages(only_flow(name));
        for field in ["a", "b", "history", "handshake", "segments"] {
            assert_eq!(got[field], plain[field], "{name}: {field} differs");
        }
    }
    let v6 = only_flow("fmt_ipv6.pcap");
    assert_eq!(states(&v6), states(&want));
    assert_eq!(v6["history"], want["history"]);
    assert!(v6["a"]["endpoint"]
        .as_str()
        .unwrap()
        .starts_with("[2001:db8::"));
}

/// A flow with its ages rounded to milliseconds (nanosecond captures differ below that).
fn ms_ages(mut f: Value) -> Value {
    for s in ["a", "b"] {
        let age = f[s]["age_seconds"].as_f64().unwrap();
        f[s]["age_seconds"] = ((age * 1e3).round() / 1e3).into();
    }
    f
}

#[test]
fn json_objects_carry_every_field_flows_prints() {
    let f = only_flow("close_client_first.pcap");
    for key in [
        "a",
        "b",
        "midstream",
        "seeded",
        "age_is_lower_bound",
        "reset",
    ] {
        assert!(f.get(key).is_some(), "missing {key}: {f:#}");
    }
    for key in ["endpoint", "state", "role", "local", "age_seconds", "seq"] {
        assert!(f["a"].get(key).is_some(), "missing a.{key}: {f:#}");
    }
    // Tap mode counts both endpoints.
    assert_eq!(
        (&f["a"]["local"], &f["b"]["local"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
}

#[test]
fn capture_time_drives_the_timeouts() {
    // timeouts.pcap: an unanswered SYN and a connection left in TIME_WAIT at T0, then another
    // connection's data at T0 + 200 s: by then both old flows have expired.
    let f = flows("timeouts.pcap", &[]);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(
        f[0]["a"]["endpoint"].as_str().unwrap().ends_with(":40003")
            || f[0]["b"]["endpoint"].as_str().unwrap().ends_with(":40003")
    );
    let o = run(&["--metrics", &capture("timeouts.pcap")]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for line in [
        "tcpstate_handshakes_total{result=\"timeout\"} 1",
        "tcpstate_flows_expired_total 2",
        "tcpstate_flows_opened_total{how=\"syn\"} 2",
        "tcpstate_flows_opened_total{how=\"midstream\"} 1",
        "tcpstate_connections{role=\"client\",state=\"established\"} 1",
        "tcpstate_flow_table_entries 1",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    support::promtool_check(&text);
}

#[test]
fn at_chooses_the_instant_described() {
    // Before the client's FIN (the 8th frame, ~T0 + 0.008): both established.
    let before = format!("{}", T0 + 0.0065);
    let f = flows("close_client_first.pcap", &["--at", &before]);
    assert_eq!(
        states(&f[0]),
        ("established".to_string(), "established".to_string())
    );
    // 59 s after the last frame TIME_WAIT still holds; 61 s after, it has run its 2*MSL.
    assert_eq!(flows("close_client_first.pcap", &["--at", "+59s"]).len(), 1);
    assert_eq!(flows("close_client_first.pcap", &["--at", "+61s"]).len(), 0);
    // The ages are as of that instant.
    let f = flows("close_client_first.pcap", &["--at", "+30s"]);
    let age = f[0]["a"]["age_seconds"].as_f64().unwrap();
    assert!((30.0..30.1).contains(&age), "{age}");
    let o = run(&["--at", "yesterday", &capture("close_client_first.pcap")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--at \"yesterday\" is not a time"));
}

#[test]
fn filters_are_the_ones_flows_has() {
    let name = "close_client_first.pcap";
    assert_eq!(flows(name, &["--state", "time_wait"]).len(), 1);
    assert_eq!(flows(name, &["--state", "close_wait"]).len(), 0);
    assert_eq!(flows(name, &["--port", "8080"]).len(), 1);
    assert_eq!(flows(name, &["--port", "9999"]).len(), 0);
    assert_eq!(flows(name, &["--address", "192.0.2.1"]).len(), 1);
    assert_eq!(flows(name, &["--address", "192.0.2.9"]).len(), 0);
    assert_eq!(flows(name, &["--older-than", "1s", "--at", "+2s"]).len(), 1);
    assert_eq!(flows(name, &["--older-than", "5s", "--at", "+2s"]).len(), 0);
}

#[test]
fn the_text_output_has_a_line_per_flow_and_a_summary_by_state() {
    let o = run(&[&capture("close_wait.pcap")]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("fin_wait2") && text.contains("close_wait"),
        "{text}"
    );
    assert!(
        text.contains("1 flows shown, endpoints by state: fin_wait2 1, close_wait 1"),
        "{text}"
    );
}

/// Stderr is not a terminal here: no progress line, nothing on stderr, no escape code anywhere,
/// and a file and the same bytes on standard input (whose progress knows no size) print the same.
#[test]
fn piped_replay_prints_the_result_only() {
    let file = capture("close_client_first.pcap");
    for args in [vec![file.as_str()], vec!["--json", file.as_str()]] {
        let o = run(&args);
        assert!(o.status.success());
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.stdout.contains(&0x1b), "an escape code in {args:?}");
    }
    let o = run(&[&file]);
    let piped = replay_stdin(&std::fs::read(&file).unwrap());
    assert!(piped.status.success() && piped.stderr.is_empty());
    assert_eq!(o.stdout, piped.stdout);
}

fn stderr_line(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(
        e.lines().count(),
        1,
        "expected one line of error, got:\n{e}"
    );
    e
}

/// Runs `replay -` with `bytes` on standard input.
fn replay_stdin(bytes: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tcpstate");
    let mut stdin = child.stdin.take().unwrap();
    // A reader that stops early (a bad header) may close the pipe first.
    let _ = stdin.write_all(bytes);
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn bad_files_get_one_line_and_exit_2() {
    let good = std::fs::read(capture("close_client_first.pcap")).unwrap();
    let mut bad_link = good.clone();
    bad_link[20..24].copy_from_slice(&147u32.to_le_bytes());
    let mut huge_record = good[..24].to_vec();
    huge_record.extend([
        0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f,
    ]);
    huge_record.extend([0u8; 64]);
    for (what, bytes, says) in [
        ("empty", Vec::new(), "is empty"),
        (
            "garbage",
            b"this is not a capture at all, just text".to_vec(),
            "is not a pcap or pcapng capture",
        ),
        (
            "truncated",
            good[..good.len() - 7].to_vec(),
            "is truncated after",
        ),
        (
            "unsupported link",
            bad_link,
            "link type 147 is not supported",
        ),
        ("absurd record length", huge_record, "is truncated after"),
    ] {
        let o = replay_stdin(&bytes);
        assert_eq!(o.status.code(), Some(2), "{what}: {o:?}");
        let e = stderr_line(&o);
        assert!(e.contains(says), "{what}: {e}");
        assert!(e.starts_with("tcpstate: "), "{what}: {e}");
    }
    let o = run(&["/nonexistent/capture.pcap"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_line(&o).contains("cannot read /nonexistent/capture.pcap"));
}

#[test]
fn client_ports_in_use_are_counted_per_destination_time_wait_included() {
    // close_client_first.pcap leaves the client in TIME_WAIT: it still holds its source port.
    let o = run(&["--metrics", &capture("close_client_first.pcap")]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for line in [
        "tcpstate_client_ports_in_use{destination=\"192.0.2.1:8080\"} 1",
        "tcpstate_client_ports_in_use{destination=\"other\"} 0",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // The capturing host's port range is unknown to a replay.
    assert!(
        !text.contains("# TYPE tcpstate_client_port_range_size"),
        "{text}"
    );
    support::promtool_check(&text);
    let o = run(&["--metrics", &capture("fmt_ipv6.pcap")]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("tcpstate_client_ports_in_use{destination=\"[2001:db8::1]:8080\"} 1"),
        "{text}"
    );
}

#[test]
fn destination_keeps_the_flows_whose_client_connects_there() {
    for (dest, kept) in [
        ("192.0.2.1", 1),
        ("192.0.2.1:8080", 1),
        ("192.0.2.1:40000", 0), // the client's own port is not a destination
        ("192.0.2.2", 0),       // nor is the client's address
        ("192.0.2.9:8080", 0),
    ] {
        let f = flows("close_client_first.pcap", &["--destination", dest]);
        assert_eq!(f.len(), kept, "--destination {dest}");
    }
    assert_eq!(
        flows("fmt_ipv6.pcap", &["--destination", "[2001:db8::1]:8080"]).len(),
        1
    );
    assert_eq!(
        flows("fmt_ipv6.pcap", &["--destination", "2001:db8::1"]).len(),
        1
    );
    let o = run(&[
        "--json",
        &capture("fmt_ipv6.pcap"),
        "--destination",
        "2001:db8::1:8080:x",
    ]);
    assert!(!o.status.success(), "a malformed destination is refused");
}

#[test]
fn handshakes_sent_again_are_counted_on_the_listening_port() {
    // listener_drops.pcap: on 8080 a SYN sent twice more before any SYN-ACK and a SYN-ACK sent
    // twice more after the final ACK; on 9090 nothing sent again, and a SYN with a new ISN.
    let o = run(&["--metrics", &capture("listener_drops.pcap")]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for line in [
        "tcpstate_syn_retransmits_total{port=\"8080\"} 2",
        "tcpstate_syn_retransmits_total{port=\"other\"} 0",
        "tcpstate_synack_retransmits_total{port=\"8080\"} 2",
        "tcpstate_synack_retransmits_total{port=\"other\"} 0",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    support::promtool_check(&text);
}

#[test]
fn closes_are_timed_and_stalled_readers_found_per_port() {
    // closes_and_stalls.pcap: on 8080 a server that closes 2.501 s after its client's FIN and one
    // that stopped reading (zero window, still stalled at the end); on 9090 a server that closes
    // 10 ms after the FIN.
    let o = run(&["--metrics", &capture("closes_and_stalls.pcap")]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for line in [
        "tcpstate_close_wait_duration_seconds_bucket{port=\"8080\",le=\"1\"} 0",
        "tcpstate_close_wait_duration_seconds_bucket{port=\"8080\",le=\"5\"} 1",
        "tcpstate_close_wait_duration_seconds_sum{port=\"8080\"} 2.500999",
        "tcpstate_close_wait_duration_seconds_bucket{port=\"9090\",le=\"0.005\"} 0",
        "tcpstate_close_wait_duration_seconds_bucket{port=\"9090\",le=\"0.025\"} 1",
        "tcpstate_close_wait_duration_seconds_count{port=\"other\"} 0",
        "tcpstate_connection_duration_seconds_count{port=\"8080\",role=\"server\"} 1",
        "tcpstate_connection_duration_seconds_count{port=\"9090\",role=\"server\"} 1",
        // Tap mode counts both ends: the two clients that closed, under other.
        "tcpstate_connection_duration_seconds_count{port=\"other\",role=\"client\"} 2",
        "tcpstate_zero_window_endpoints{port=\"8080\",side=\"local\"} 1",
        "tcpstate_zero_window_endpoints{port=\"other\",side=\"remote\"} 1",
        "tcpstate_zero_window_endpoints{port=\"8080\",side=\"remote\"} 0",
        "tcpstate_zero_window_stalls_total{side=\"local\"} 1",
        "tcpstate_zero_window_stalls_total{side=\"remote\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    support::promtool_check(&text);
    // The stalled flow says since when; the others are not stalled.
    let all = flows("closes_and_stalls.pcap", &[]);
    let stalled: Vec<&Value> = all
        .iter()
        .filter(|f| {
            !f["b"]["zero_window_seconds"].is_null() || !f["a"]["zero_window_seconds"].is_null()
        })
        .collect();
    assert_eq!(stalled.len(), 1, "{all:#?}");
    let server = if stalled[0]["a"]["endpoint"]
        .as_str()
        .unwrap()
        .ends_with(":8080")
    {
        &stalled[0]["a"]
    } else {
        &stalled[0]["b"]
    };
    let since = server["zero_window_seconds"]
        .as_f64()
        .expect("the server is stalled");
    // From 16 ms into the capture to its end at 2.52 s, stamped in 1.07 s ticks (rounded down).
    assert!((2.4..=3.6).contains(&since), "stalled for {since} s");
}
