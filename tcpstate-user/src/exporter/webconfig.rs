//! `--web-config FILE`: the Prometheus exporter-toolkit web configuration
//! (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md), so the
//! file a node_exporter user already has works here unchanged: `tls_server_config`,
//! `http_server_config.headers` and `basic_auth_users` with bcrypt hashes.
//!
//! Like exporter-toolkit, unknown keys are errors (it unmarshals strictly) and relative file
//! paths are relative to the config file's directory. A file is read and validated whole into a
//! [`WebConfig`]; [`Reloader`] re-reads it (and the files it names) when they change.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    auth::Users,
    tls::{self, RawTls},
};

/// The file as exporter-toolkit defines it (web/tls_config.go, `Config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// exporter-toolkit's request rate limiter; refused below rather than silently ignored.
    #[serde(default)]
    rate_limit: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// HTTP/2 over TLS; this server speaks HTTP/1.1 (all Prometheus needs), so it is accepted
    /// and has no effect.
    #[serde(default)]
    #[allow(dead_code, reason = "accepted for compatibility, see above")]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A validated web config: what the server applies to each connection and request.
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Users,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Files whose change means a reload: the config and the certificate files it names.
    watched: Vec<PathBuf>,
}

/// Reads and validates `path`. Every error is one line naming the file and the problem.
pub fn load(path: &Path) -> Result<WebConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read web config {}: {e}", path.display()))?;
    parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map(|mut c| {
            c.watched.insert(0, path.to_path_buf());
            c
        })
        .map_err(|e| format!("web config {}: {e}", path.display()))
}

/// Parses a web config whose relative paths are relative to `dir`.
fn parse(text: &str, dir: &Path) -> Result<WebConfig, String> {
    // An empty file is a valid, empty config in exporter-toolkit (plain HTTP, no auth).
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let raw: Raw = if has_content {
        serde_saphyr::from_str(text).map_err(|e| one_line(&e.to_string()))?
    } else {
        Raw::default()
    };
    if raw.rate_limit.is_some() {
        return Err("rate_limit is not supported by tcpstate: remove it (the server limits connections, header size and request time itself)".into());
    }
    let users = Users::new(raw.basic_auth_users.unwrap_or_default())?;
    let headers = headers(raw.http_server_config.unwrap_or_default().headers)?;
    let mut watched = Vec::new();
    let tls = match raw.tls_server_config {
        Some(mut t) if tls::is_enabled(&t) => {
            for p in [&mut t.cert_file, &mut t.key_file, &mut t.client_ca_file] {
                if !p.is_empty() {
                    let joined = dir.join(&*p);
                    watched.push(joined.clone());
                    *p = joined.to_string_lossy().into_owned();
                }
            }
            Some(Arc::new(tls::server_config(&t)?))
        }
        _ => None,
    };
    Ok(WebConfig {
        tls,
        users,
        headers,
        watched,
    })
}

/// YAML parser messages can span lines (a snippet of the file); a preflight error is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// exporter-toolkit lets exactly these response headers be set (web/handler.go), with these
/// value rules.
fn headers(h: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    const ALLOWED: [&str; 5] = [
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "X-XSS-Protection",
        "Content-Security-Policy",
    ];
    let mut out = Vec::new();
    for (k, v) in h {
        let Some(name) = ALLOWED.iter().find(|a| a.eq_ignore_ascii_case(&k)) else {
            return Err(format!(
                "HTTP header {k:?} can not be configured: use one of {}",
                ALLOWED.join(", ")
            ));
        };
        match *name {
            "X-Content-Type-Options" if v != "nosniff" => {
                return Err(format!(
                    "invalid value for X-Content-Type-Options: {v:?}; the only value is nosniff"
                ))
            }
            "X-Frame-Options"
                if !v.eq_ignore_ascii_case("deny") && !v.eq_ignore_ascii_case("sameorigin") =>
            {
                return Err(format!(
                    "invalid value for X-Frame-Options: {v:?}; use deny or sameorigin"
                ))
            }
            _ => {}
        }
        let value = HeaderValue::from_str(&v)
            .map_err(|_| format!("header {name} has a value HTTP cannot carry: {v:?}"))?;
        out.push((HeaderName::from_static(lower(name)), value));
    }
    Ok(out)
}

fn lower(name: &str) -> &'static str {
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

/// The current web config, re-read when the file or a file it names changes.
///
/// exporter-toolkit re-reads the file on every request and the TLS settings on every handshake.
/// Here a connection or request looks at the files' modification time and size at most once a
/// second, and re-reads them when either changed; so a new certificate, a new user or a changed
/// header applies to the next connection without a restart. A file that has become invalid is
/// logged once and the last good config stays in force. Turning TLS on or off needs a restart
/// (the listener would change what it speaks): such a change is refused with a warning.
pub struct Reloader {
    current: RwLock<Arc<WebConfig>>,
    path: PathBuf,
    checked: Mutex<(Instant, Vec<Stamp>)>,
}

type Stamp = Option<(SystemTime, u64)>;

const RECHECK: Duration = Duration::from_secs(1);

impl Reloader {
    pub fn new(path: PathBuf, first: WebConfig) -> Reloader {
        let stamps = stamps(&first.watched);
        Reloader {
            current: RwLock::new(Arc::new(first)),
            path,
            checked: Mutex::new((Instant::now(), stamps)),
        }
    }

    pub fn current(&self) -> Arc<WebConfig> {
        self.maybe_reload();
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn maybe_reload(&self) {
        let mut checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if checked.0.elapsed() < RECHECK {
            return;
        }
        checked.0 = Instant::now();
        let watched = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .watched
            .clone();
        let now = stamps(&watched);
        if now == checked.1 {
            return;
        }
        checked.1 = now;
        let was_tls = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tls
            .is_some();
        match load(&self.path) {
            Ok(new) if new.tls.is_some() != was_tls => warn!(
                file = %self.path.display(),
                "web config change ignored: turning TLS on or off needs a restart of tcpstate"
            ),
            Ok(new) => {
                // The new config may name other files: watch those from now on.
                checked.1 = stamps(&new.watched);
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
                info!(file = %self.path.display(), "web config reloaded");
            }
            Err(e) => warn!(error = %e, "web config not reloaded; the previous one stays in force"),
        }
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text, Path::new("/nonexistent")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_empty_file_is_plain_http_without_auth() {
        let c = parse("# nothing\n\n", Path::new(".")).unwrap();
        assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_by_name_on_one_line() {
        let e = err("tls_server_config:\n  cert_fil: x\n");
        assert!(e.contains("cert_fil"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(err("basic_auth: {}\n").contains("basic_auth"));
        assert!(err("rate_limit:\n  burst: 1\n").contains("rate_limit"));
    }

    #[test]
    fn headers_follow_exporter_toolkit_rules() {
        let c = parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n",
            Path::new("."),
        )
        .unwrap();
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["strict-transport-security", "x-frame-options"]);
        assert!(err("http_server_config:\n  headers:\n    Server: me\n").contains("\"Server\""));
        assert!(
            err("http_server_config:\n  headers:\n    X-Content-Type-Options: yes\n")
                .contains("nosniff")
        );
    }

    #[test]
    fn tls_needs_a_certificate_and_a_key() {
        let e = err("tls_server_config:\n  key_file: k.pem\n");
        assert!(e.contains("cert_file"), "{e}");
        let e = err("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n");
        assert!(
            e.contains("/nonexistent/c.pem"),
            "relative to the file: {e}"
        );
    }

    #[test]
    fn bad_bcrypt_hashes_are_refused_at_load() {
        let e = err("basic_auth_users:\n  alice: notahash\n");
        assert!(e.contains("alice"), "{e}");
    }

    #[test]
    fn the_example_shipped_in_the_package_is_valid() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let example = std::fs::read_to_string(format!("{dir}/../deploy/debian/web-config.yml"))
            .expect("deploy/debian/web-config.yml");
        let fixtures = format!("{dir}/tests/fixtures/tls");
        let text = example
            .replace(
                "/etc/tcpstate/tls/node.crt",
                &format!("{fixtures}/server.pem"),
            )
            .replace(
                "/etc/tcpstate/tls/node.key",
                &format!("{fixtures}/server-key.pem"),
            );
        let c = parse(&text, Path::new("/")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.tls.is_some());
        let token = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "prometheus:change me",
        );
        assert!(c.users.check(Some(format!("Basic {token}").as_bytes())));
    }
}
