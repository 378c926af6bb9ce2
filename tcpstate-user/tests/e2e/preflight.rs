//! `tcpstate run --check`: load, attach, verify, detach and exit 0, or one line and exit 2.

use std::process::Command;

use crate::harness::*;

fn check(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args([BIN, "run", "--check"])
        .args(args)
        .env_remove("TCPSTATE_LOG")
        .output()
        .unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).trim().to_string(),
    )
}

#[test]
fn check_attaches_and_detaches_or_names_what_is_missing() {
    require_privileges();
    let p = Pair::new();
    let (code, out, err) = check(&p.srv, &["--iface", &p.srv_if]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{} tc_ingress (tcx)", p.srv_if))
            && out.contains(&format!("{} tc_egress (tcx)", p.srv_if)),
        "{out}"
    );
    assert!(p.tcx_programs().is_empty(), "detached again");
    let (code, out, err) = check(&p.srv, &["--iface", &p.srv_if, "--ingress-hook", "xdp"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{} xdp (native)", p.srv_if))
            && out.contains(&format!("{} tc_egress (tcx)", p.srv_if)),
        "{out}"
    );
    assert!(
        !p.srv
            .ip(&["link", "show", "dev", &p.srv_if])
            .contains("xdp"),
        "detached again"
    );
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tcpstate-check-")
        })
        .collect();
    assert!(leftovers.is_empty(), "no pins left behind: {leftovers:?}");

    let (code, _, err) = check(&p.srv, &["--iface", "nosuchif9"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(
        err.contains("interface \"nosuchif9\" does not exist"),
        "{err}"
    );

    p.srv.ip(&["link", "set", &p.srv_if, "down"]);
    let (code, _, err) = check(&p.srv, &["--iface", &p.srv_if]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(
        err.contains("is down") && err.contains("ip link set"),
        "{err}"
    );
    p.srv.ip(&["link", "set", &p.srv_if, "up"]);

    // A daemon already attached: the check says so instead of stacking a second tracker on TCX
    // (which would double-count) or fighting over the XDP hook.
    let d = Daemon::host(&p, &[]);
    let (code, _, err) = check(&p.srv, &["--iface", &p.srv_if]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("already watched by another tcpstate"), "{err}");
    assert_eq!(
        d.metrics().get("tcpstate_flow_table_capacity", &[]),
        131072.0,
        "the running daemon is untouched"
    );
    drop(d);
    // XDP held by someone else (here a tap-mode tcpstate, which attaches no TC program): the XDP
    // hook is refused by the kernel, and the check names it.
    let d = Daemon::host(&p, &["--mode", "tap", "--ingress-hook", "xdp"]);
    let (code, _, err) = check(&p.srv, &["--iface", &p.srv_if, "--ingress-hook", "xdp"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("already has an XDP program attached"), "{err}");
    drop(d);
}

#[test]
fn check_without_privileges_says_what_to_do() {
    require_privileges();
    let ns = Netns::new("nopriv");
    // An unprivileged user with no capabilities at all.
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([BIN, "run", "--check", "--iface", "lo"])
        .env_remove("TCPSTATE_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(
        (o.status.code(), err.lines().count()),
        (Some(2), 1),
        "{err}"
    );
    assert!(
        err.contains("needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON") && err.contains("sudo"),
        "{err}"
    );
}

/// Every program of the object passes this kernel's verifier, those no other test attaches
/// included (a link layer, hook or mode a test topology lacks): a program the verifier refuses
/// would otherwise fail only when the first interface of its kind appears, at run time. Loaded
/// twice: as the object comes, and in its largest form (kernel logging and the transit check
/// on, which keep their code paths in; together they once passed the verifier's limits).
#[test]
fn every_program_in_the_object_verifies() {
    use tcpstate_common::{maps, table};
    require_privileges();
    let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate"));
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/tse2e-verify-{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(pins.clone());
    let capacity = 131_072u32;
    let largest = maps::Config {
        capacity: u64::from(capacity),
        slots4: u64::from(table::slots_for(capacity, table::SLOT4_SIZE)),
        slots6: u64::from(table::slots_for(capacity / 8, table::SLOT6_SIZE)),
        seed: [0; 5],
        half_open_budget: u64::from(capacity / 4),
        log_events: 1,
        scopes: 1,
        transit_check: 1,
    };
    for (form, config) in [
        ("as built", None),
        ("logging, transit check", Some(largest)),
    ] {
        // Fresh maps for each form.
        let _ = std::fs::remove_dir_all(&pins);
        std::fs::create_dir_all(&pins).expect("bpffs is mounted on /sys/fs/bpf");
        let mut loader = aya::EbpfLoader::new();
        loader.default_map_pin_directory(&pins);
        if let Some(c) = &config {
            loader
                .override_global(maps::CONFIG, c, true)
                // Trace: every log site kept (the level the daemon passes for --kernel-log trace).
                .override_global(aya_log::LEVEL, &5u8, true);
        }
        let mut ebpf = loader.load(object).expect("the object loads");
        let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
        assert!(
            names.len() >= 15,
            "every entry point is in the object: {names:?}"
        );
        let mut refused = Vec::new();
        for name in &names {
            let result = match ebpf.program_mut(name).expect("listed") {
                aya::programs::Program::SchedClassifier(p) => p.load(),
                aya::programs::Program::Xdp(p) => p.load(),
                other => panic!("{name}: an unexpected program type {:?}", other.prog_type()),
            };
            if let Err(e) = result {
                refused.push(format!("{name}: {e}"));
            }
        }
        assert!(
            refused.is_empty(),
            "the verifier refused ({form}):\n{}",
            refused.join("\n")
        );
    }
}
