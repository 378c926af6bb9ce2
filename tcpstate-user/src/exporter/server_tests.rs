//! The endpoint's behaviour over real loopback connections: keep-alive, negotiation, gzip,
//! probes, limits, basic auth, TLS and client certificates, reloads.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};

use super::*;
use crate::exporter::webconfig::{self, Reloader};

const TEXT_BODY: &str = "# HELP x_total a counter\n# TYPE x_total counter\nx_total 1\n";
const OM_BODY: &str = "# TYPE x counter\n# HELP x a counter\nx_total 1\n# EOF\n";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A directory of its own for a test's web config.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcpstate-web-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Starts the endpoint on a loopback port in a thread of its own, with `yaml` as its web config.
fn start(dir: &Path, yaml: Option<&str>) -> SocketAddr {
    start_at(dir, yaml, "/metrics")
}

/// As [`start`], serving the metrics at `metrics_path` (`--web.telemetry-path`).
fn start_at(dir: &Path, yaml: Option<&str>, metrics_path: &str) -> SocketAddr {
    let metrics_path = metrics_path.to_string();
    let web = yaml.map(|y| {
        let path = dir.join("web.yml");
        std::fs::write(&path, y).expect("write web config");
        let first = webconfig::load(&path).unwrap_or_else(|e| panic!("web config: {e}"));
        Arc::new(Reloader::new(path, first))
    });
    let render: Render = Arc::new(|f| {
        Ok(match f {
            Format::Text => TEXT_BODY.to_string(),
            Format::OpenMetrics => OM_BODY.to_string(),
        }
        .into_bytes())
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(l.local_addr().unwrap()).unwrap();
            serve(l, render, web, metrics_path, std::future::pending()).await;
        });
    });
    rx.recv().expect("server address")
}

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Sends one request and reads one response (by Content-Length), leaving the connection open.
fn exchange(s: &mut (impl Read + Write), request: &str) -> std::io::Result<Answer> {
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("ascii head");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("")[9..12].parse().expect("status");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |l| l.parse().unwrap());
    let mut body = vec![0; len];
    if !request.starts_with("HEAD") {
        s.read_exact(&mut body)?;
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn one_connection_serves_many_scrapes() {
    let addr = start(&scratch("keepalive"), None);
    let mut s = connect(addr);
    for _ in 0..3 {
        let a = exchange(&mut s, &get("/metrics", "")).expect("scrape on a kept connection");
        assert_eq!(a.status, 200);
        assert_eq!(a.body, TEXT_BODY.as_bytes());
        assert_eq!(a.headers["content-type"], metrics::CONTENT_TYPE);
    }
}

#[test]
fn openmetrics_is_served_to_who_asks_for_it() {
    let addr = start(&scratch("om"), None);
    let mut s = connect(addr);
    // What Prometheus sends.
    let prom = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let a = exchange(&mut s, &get("/metrics", prom)).unwrap();
    assert_eq!(a.headers["content-type"], openmetrics::CONTENT_TYPE);
    assert_eq!(a.body, OM_BODY.as_bytes());
    let a = exchange(&mut s, &get("/metrics", "Accept: text/plain\r\n")).unwrap();
    assert_eq!(a.headers["content-type"], metrics::CONTENT_TYPE);
    let a = exchange(
        &mut s,
        &get(
            "/metrics",
            "Accept: application/openmetrics-text;q=0.2,text/plain\r\n",
        ),
    )
    .unwrap();
    assert_eq!(a.headers["content-type"], metrics::CONTENT_TYPE);
}

#[test]
fn gzip_only_when_the_scraper_accepts_it() {
    let addr = start(&scratch("gzip"), None);
    let mut s = connect(addr);
    let a = exchange(&mut s, &get("/metrics", "Accept-Encoding: gzip\r\n")).unwrap();
    assert_eq!(a.headers["content-encoding"], "gzip");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&a.body[..])
        .read_to_string(&mut plain)
        .expect("valid gzip");
    assert_eq!(plain, TEXT_BODY);
    let a = exchange(&mut s, &get("/metrics", "Accept-Encoding: gzip;q=0\r\n")).unwrap();
    assert!(!a.headers.contains_key("content-encoding"));
    assert_eq!(a.body, TEXT_BODY.as_bytes());
}

#[test]
fn a_telemetry_path_moves_the_metrics_and_only_them() {
    let addr = start_at(&scratch("telemetry-path"), None, "/custom/metrics");
    let mut s = connect(addr);
    let a = exchange(&mut s, &get("/custom/metrics", "")).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, TEXT_BODY.as_bytes());
    assert_eq!(exchange(&mut s, &get("/metrics", "")).unwrap().status, 404);
    assert_eq!(
        exchange(&mut s, &get("/-/healthy", "")).unwrap().status,
        200
    );
    let landing = exchange(&mut s, &get("/", "")).unwrap();
    assert!(String::from_utf8_lossy(&landing.body).contains("href=\"/custom/metrics\""));
}

#[test]
fn a_telemetry_path_must_be_a_free_absolute_path() {
    assert_eq!(metrics_path("/m").unwrap(), "/m");
    for bad in ["metrics", "/-/healthy", "/", "/m?x=1"] {
        assert!(metrics_path(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn listen_addresses_as_node_exporter_writes_them() {
    assert_eq!(":9477".parse::<Listen>().unwrap(), Listen::Any(9477));
    assert_eq!(
        "127.0.0.1:9100".parse::<Listen>().unwrap(),
        Listen::At("127.0.0.1:9100".parse().unwrap())
    );
    assert_eq!(
        "[::1]:9100".parse::<Listen>().unwrap(),
        Listen::At("[::1]:9100".parse().unwrap())
    );
    assert_eq!(
        "localhost:9100".parse::<Listen>().unwrap(),
        Listen::At("127.0.0.1:9100".parse().unwrap())
    );
    for bad in ["9477", ":", ":x", "::1:9100", "[::1]", "127.0.0.1:99999"] {
        let e = bad.parse::<Listen>().unwrap_err();
        assert!(e.contains(bad), "{bad:?}: {e}");
    }
    assert_eq!(Listen::Any(9477).to_string(), ":9477");
}

/// `:PORT` takes IPv4 and IPv6 clients on one socket.
#[test]
fn any_address_takes_ipv4_and_ipv6_clients() {
    // A free port: bound once on IPv4, closed, then taken by the listener under test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let l = Listen::Any(port).bind().expect("bind :PORT");
    let local = l.local_addr().unwrap();
    assert!(local.is_ipv6(), "{local} is not [::]");
    TcpStream::connect(("127.0.0.1", port)).expect("an IPv4 client connects");
    // Hosts without IPv6 loopback (a container with IPv6 off) have no ::1 to try.
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        TcpStream::connect(("::1", port)).expect("an IPv6 client connects");
    }
}

#[test]
fn landing_page_probes_and_errors() {
    let addr = start(&scratch("paths"), None);
    let mut s = connect(addr);
    let a = exchange(&mut s, &get("/", "")).unwrap();
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).contains("href=\"/metrics\""));
    assert_eq!(
        exchange(&mut s, &get("/-/healthy", "")).unwrap().status,
        200
    );
    assert_eq!(exchange(&mut s, &get("/-/ready", "")).unwrap().status, 200);
    assert_eq!(exchange(&mut s, &get("/nope", "")).unwrap().status, 404);
    let post = "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    let a = exchange(&mut s, post).unwrap();
    assert_eq!(a.status, 405);
    assert_eq!(a.headers["allow"], "GET, HEAD");
    let head = "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let a = exchange(&mut s, head).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["content-length"],
        TEXT_BODY.len().to_string(),
        "HEAD announces the body it does not send"
    );
    // Still in step: the HEAD answer carried no body.
    assert_eq!(exchange(&mut s, &get("/metrics", "")).unwrap().status, 200);
}

#[test]
fn oversized_request_headers_are_refused() {
    let addr = start(&scratch("big"), None);
    let mut s = connect(addr);
    let big = format!("X-Big: {}\r\n", "a".repeat(MAX_HEADER_BYTES));
    match exchange(&mut s, &get("/metrics", &big)) {
        Ok(a) => assert_eq!(a.status, 431),
        // hyper may close as soon as its buffer is full, before reading the rest.
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "{e}"
        ),
    }
}

#[test]
fn a_half_sent_request_does_not_hold_up_others() {
    let addr = start(&scratch("slow"), None);
    let mut slow: Vec<TcpStream> = (0..50).map(|_| connect(addr)).collect();
    for s in &mut slow {
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .unwrap();
    }
    let t = std::time::Instant::now();
    let a = exchange(&mut connect(addr), &get("/metrics", "")).unwrap();
    assert_eq!(a.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

const BCRYPT_COST: u32 = 4;

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    let t = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Authorization: Basic {t}\r\n")
}

#[test]
fn basic_auth_answers_401_without_valid_credentials() {
    let hash = bcrypt::hash("s3cret", BCRYPT_COST).unwrap();
    let yaml = format!(
        "basic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    );
    let addr = start(&scratch("auth"), Some(&yaml));
    let mut s = connect(addr);
    let a = exchange(&mut s, &get("/metrics", "")).unwrap();
    assert_eq!(a.status, 401);
    assert!(a.headers["www-authenticate"].starts_with("Basic"));
    assert_eq!(a.headers["x-frame-options"], "deny");
    let wrong = basic("prometheus", "guess");
    assert_eq!(
        exchange(&mut s, &get("/metrics", &wrong)).unwrap().status,
        401
    );
    let nobody = basic("nobody", "s3cret");
    assert_eq!(
        exchange(&mut s, &get("/-/healthy", &nobody))
            .unwrap()
            .status,
        401
    );
    let a = exchange(&mut s, &get("/metrics", &basic("prometheus", "s3cret"))).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-frame-options"], "deny");
}

#[test]
fn a_changed_web_config_applies_without_a_restart() {
    let dir = scratch("reload");
    let old = bcrypt::hash("old", BCRYPT_COST).unwrap();
    let addr = start(&dir, Some(&format!("basic_auth_users:\n  p: {old}\n")));
    let mut s = connect(addr);
    assert_eq!(
        exchange(&mut s, &get("/metrics", &basic("p", "old")))
            .unwrap()
            .status,
        200
    );
    let new = bcrypt::hash("new", BCRYPT_COST).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!("basic_auth_users:\n  p: {new}\n  q: {new}\n"),
    )
    .unwrap();
    // The files are looked at once a second at most.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        exchange(&mut s, &get("/metrics", &basic("p", "new")))
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        exchange(&mut s, &get("/metrics", &basic("p", "old")))
            .unwrap()
            .status,
        401
    );
    // A broken file keeps the last good config in force.
    std::fs::write(dir.join("web.yml"), "basic_auth_users: [\n").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        exchange(&mut s, &get("/metrics", &basic("q", "new")))
            .unwrap()
            .status,
        200
    );
}

fn tls_yaml(extra: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{extra}",
        fixture("server.pem"),
        fixture("server-key.pem")
    )
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, client: Option<&str>) -> TlsStream {
    let ca = CertificateDer::from_pem_file(fixture("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some(name) => {
            let certs =
                vec![CertificateDer::from_pem_file(fixture(&format!("{name}.pem"))).unwrap()];
            let key = PrivateKeyDer::from_pem_file(fixture(&format!("{name}-key.pem"))).unwrap();
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

#[test]
fn with_tls_configured_only_tls_is_served() {
    let addr = start(&scratch("tls"), Some(&tls_yaml("")));
    let mut s = tls_connect(addr, None);
    for _ in 0..2 {
        let a = exchange(&mut s, &get("/metrics", "")).expect("scrape over TLS");
        assert_eq!(a.status, 200);
        assert_eq!(a.body, TEXT_BODY.as_bytes());
    }
    let plain = exchange(&mut connect(addr), &get("/metrics", ""));
    assert!(plain.is_err(), "plain HTTP answered on a TLS endpoint");
}

#[test]
fn client_certificates_are_verified_against_the_ca() {
    let extra = format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS13\n",
        fixture("ca.pem")
    );
    let addr = start(&scratch("mtls"), Some(&tls_yaml(&extra)));
    let a = exchange(&mut tls_connect(addr, Some("client")), &get("/metrics", ""));
    assert_eq!(a.expect("a client the CA vouches for").status, 200);
    assert!(exchange(
        &mut tls_connect(addr, Some("stranger")),
        &get("/metrics", "")
    )
    .is_err());
    assert!(exchange(&mut tls_connect(addr, None), &get("/metrics", "")).is_err());
}

#[test]
fn negotiation_reads_quality_values() {
    assert_eq!(negotiate(None), Format::Text);
    assert_eq!(
        negotiate(Some(b"application/openmetrics-text; version=1.0.0")),
        Format::OpenMetrics
    );
    assert_eq!(
        negotiate(Some(b"application/openmetrics-text;q=0,*/*")),
        Format::Text
    );
    assert_eq!(quality(b"br, GZIP;q=0.5", |t| t == "gzip"), 0.5);
    assert_eq!(quality(b"identity", |t| t == "gzip"), 0.0);
}
