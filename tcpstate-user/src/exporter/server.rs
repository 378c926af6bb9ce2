//! The HTTP endpoint: hyper HTTP/1.1 with keep-alive (Prometheus reuses its connection between
//! scrapes), TLS through rustls when the web config asks for it, basic auth, gzip, OpenMetrics
//! negotiation, a landing page and the `/-/healthy` and `/-/ready` probes, within fixed limits.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use super::{metrics, openmetrics, webconfig::Reloader};

/// The exposition format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text (Prometheus asks for it first).
    OpenMetrics,
}

/// Renders /metrics in a format, or says in one line why it cannot.
pub type Render = Arc<dyn Fn(Format) -> Result<Vec<u8>, String> + Send + Sync>;

/// Connections served at once. Past this, new connections are closed at once, so a flood of
/// clients costs file descriptors up to this bound and no more. Sized well above a few thousand
/// idle or slow clients (the benchmark holds 3000) plus the scrapers of a large Prometheus setup.
pub const MAX_CONNECTIONS: usize = 4096;
/// Time a client has to send a request's headers, counted from when the server waits for them,
/// which on a kept-alive connection includes the idle time between requests. Above Prometheus's
/// default scrape interval (1m), so its connection survives between scrapes; a client that sends
/// headers slower than this is cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(70);
/// Time a TLS client has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of request line and headers at most (hyper's smallest buffer limit is 8 KiB); beyond
/// it the answer is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Header fields at most.
pub const MAX_HEADERS: usize = 64;

/// Where the endpoint listens, as node_exporter's `--web.listen-address` writes it: `:PORT` (every
/// address, IPv4 and IPv6), `HOST:PORT` (an IPv4 address or a name) or `[IPV6]:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `:PORT`: `[::]` with IPV6_V6ONLY off, so IPv4 clients connect too (as Go's `net.Listen`
    /// does); `0.0.0.0` when the host has no IPv6.
    Any(u16),
    At(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        let s = s.trim();
        let bad =
            || format!("{s:?} is not a listen address: write :PORT, HOST:PORT or [IPV6]:PORT");
        if let Some(port) = s.strip_prefix(':') {
            return port.parse().map(Listen::Any).map_err(|_| bad());
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Listen::At(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains(':') || host.starts_with('[') {
            return Err(bad());
        }
        // A name: its first IPv4 address if it has one (as Go listens on `localhost:PORT`).
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{s:?}: cannot resolve {host:?} ({e})"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .map(|a| Listen::At(*a))
            .ok_or_else(|| format!("{s:?}: {host:?} has no address"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Any(port) => write!(f, ":{port}"),
            Listen::At(a) => write!(f, "{a}"),
        }
    }
}

impl Listen {
    /// A listening socket (non-blocking, for tokio), or the address that failed and why.
    pub fn bind(self) -> Result<std::net::TcpListener, (SocketAddr, io::Error)> {
        let addr = match self {
            Listen::At(a) => return bind(a).map_err(|e| (a, e)),
            Listen::Any(port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        };
        match bind(addr) {
            // The kernel has no IPv6 (booted with ipv6.disable=1): IPv4 alone.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
                info!(error = %e, "no IPv6 on this host: listening on {v4} (IPv4 only)");
                bind(v4).map_err(|e| (v4, e))
            }
            other => other.map_err(|e| (addr, e)),
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std's TcpListener::bind: a restarted daemon rebinds while old connections linger.
    socket.set_reuse_address(true)?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        // Explicitly, whatever net.ipv6.bindv6only says: `[::]` takes IPv4 clients too.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Checks a `--web.telemetry-path`: an absolute path that is none of the other endpoints'.
pub fn metrics_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(format!(
            "--web.telemetry-path {path:?} must be a path starting with / (like /metrics)"
        ));
    }
    if OTHER_PATHS.contains(&path) {
        return Err(format!(
            "--web.telemetry-path {path:?} is taken by another endpoint ({})",
            OTHER_PATHS.join(", ")
        ));
    }
    Ok(path.to_string())
}

/// The endpoints besides the metrics: their paths never move.
const OTHER_PATHS: [&str; 3] = ["/", "/-/healthy", "/-/ready"];

struct Ctx {
    render: Render,
    web: Option<Arc<Reloader>>,
    /// `--web.telemetry-path`.
    metrics_path: String,
    /// The landing page, linking to it.
    landing: String,
}

pub async fn serve(
    listener: TcpListener,
    render: Render,
    web: Option<Arc<Reloader>>,
    metrics_path: String,
    shutdown: impl Future<Output = ()>,
) {
    raise_fd_limit();
    let landing = landing(&metrics_path);
    let ctx = Arc::new(Ctx {
        render,
        web,
        metrics_path,
        landing,
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!(%peer, "connection limit reached; closing a new connection");
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        connection(stream, ctx).await;
                        drop(permit);
                    });
                }
                // EMFILE and the like: pause rather than spin on a listener that keeps failing.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn connection(stream: TcpStream, ctx: Arc<Ctx>) {
    let _ = stream.set_nodelay(true);
    let tls = ctx.web.as_ref().and_then(|w| w.current().tls.clone());
    match tls {
        // The web config is read per connection, so a renewed certificate applies to the next
        // handshake. The reloader never turns TLS off, so a TLS listener never serves plain HTTP.
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => http(s, ctx).await,
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
        None => http(stream, ctx).await,
    }
}

async fn http<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO, ctx: Arc<Ctx>) {
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
    if let Err(e) = result {
        debug!(error = %e, "http connection ended");
    }
}

async fn handle(req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let web = ctx.web.as_ref().map(|w| w.current());
    let mut resp = match &web {
        Some(w) if !w.users.is_empty() => {
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            let w = w.clone();
            // bcrypt takes tens of milliseconds: off the runtime's thread.
            let ok = tokio::task::spawn_blocking(move || w.users.check(auth.as_deref()))
                .await
                .unwrap_or(false);
            if ok {
                route(&req, ctx)
            } else {
                let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"tcpstate\""),
                );
                r
            }
        }
        _ => route(&req, ctx),
    };
    if let Some(w) = &web {
        for (name, value) in &w.headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
    }
    resp
}

fn route(req: &Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        p if p == ctx.metrics_path => scrape(req, ctx),
        "/" => {
            let mut r = Response::new(Full::new(Bytes::from(ctx.landing.clone())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        // Serving at all is health: the programs are attached before the server starts.
        "/-/healthy" => text(StatusCode::OK, "tcpstate is Healthy.\n"),
        "/-/ready" => text(StatusCode::OK, "tcpstate is Ready.\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            &format!("not found: try {}\n", ctx.metrics_path),
        ),
    }
}

fn landing(metrics_path: &str) -> String {
    // The path was checked by `metrics_path`; escaped all the same, it goes into HTML.
    let path = metrics_path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;");
    format!(
        concat!(
            "<!DOCTYPE html>\n<html><head><title>tcpstate</title></head><body>\n",
            "<h1>tcpstate ",
            env!("CARGO_PKG_VERSION"),
            "</h1>\n<p>TCP connection states from TC/XDP, exported to Prometheus.</p>\n<ul>\n",
            "<li><a href=\"{path}\">{path}</a></li>\n",
            "<li><a href=\"/-/healthy\">/-/healthy</a></li>\n",
            "<li><a href=\"/-/ready\">/-/ready</a></li>\n",
            "</ul>\n</body></html>\n"
        ),
        path = path
    )
}

fn scrape(req: &Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let h = req.headers();
    let format = negotiate(h.get(header::ACCEPT).map(HeaderValue::as_bytes));
    let body = match (ctx.render)(format) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    };
    let ctype = match format {
        Format::Text => metrics::CONTENT_TYPE,
        Format::OpenMetrics => openmetrics::CONTENT_TYPE,
    };
    let gzip = h
        .get(header::ACCEPT_ENCODING)
        .is_some_and(|v| quality(v.as_bytes(), |t| t == "gzip" || t == "*") > 0.0);
    let (body, gzipped) = match gzip.then(|| gzip_body(&body)).flatten() {
        Some(z) => (z, true),
        None => (body, false),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Caches between scraper and server must keep the encodings apart.
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzipped {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn gzip_body(body: &[u8]) -> Option<Vec<u8>> {
    // Level 1: the exposition is repetitive text, so the fastest level already shrinks it several
    // times, at a fraction of the default level's CPU per scrape.
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    z.write_all(body).ok()?;
    z.finish().ok()
}

/// OpenMetrics when the scraper ranks it at least as high as the text format.
fn negotiate(accept: Option<&[u8]>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let om = quality(accept, |t| t == "application/openmetrics-text");
    let text = quality(accept, |t| t == "text/plain" || t == "text/*" || t == "*/*");
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// The highest `q` among the comma-separated entries of an Accept or Accept-Encoding value whose
/// token matches; 0 when none does. An entry without `q` has q=1 (RFC 9110 section 12.4.2).
fn quality(value: &[u8], matches: impl Fn(&str) -> bool) -> f32 {
    let Ok(value) = std::str::from_utf8(value) else {
        return 0.0;
    };
    let mut best: f32 = 0.0;
    for entry in value.split(',') {
        let mut params = entry.split(';');
        let token = params.next().unwrap_or("").trim().to_ascii_lowercase();
        if !matches(&token) {
            continue;
        }
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        best = best.max(q);
    }
    best
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Each connection holds a file descriptor; the default soft limit (1024) would stop the server
/// far below MAX_CONNECTIONS. Raise it to the hard limit, as Go programs do at start-up.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    // None is RLIM_INFINITY.
    let (before, max) = (l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX));
    let raised = Rlimit {
        current: l.maximum,
        maximum: l.maximum,
    };
    if before < max && setrlimit(Resource::Nofile, raised).is_ok() {
        info!(
            from = before,
            to = max,
            "raised the open-file limit for HTTP connections"
        );
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
