//! One HTTP client for the tests and benches: a GET over a new connection (`Connection: close`),
//! the status and the body, chunked transfer decoded. What the daemon's /metrics, Prometheus's API
//! and node_exporter answer is all it needs to read.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// A response: status code and body.
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// GET `path` from `addr` (`host` for the Host header); `None` when nothing answers, or the answer
/// is not HTTP.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Option<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // Connection: close, as the body is read to the end of the stream (servers keep HTTP/1.1
    // connections open otherwise).
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Response { status, body })
}

/// The body of a 200 answer to GET `path`, `None` otherwise.
pub fn get_ok(addr: SocketAddr, host: &str, path: &str) -> Option<String> {
    get(addr, host, path).and_then(|r| (r.status == 200).then_some(r.body))
}

/// A chunked body (RFC 9112 section 7.1): hex sizes, each chunk, a zero size last.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chunked_body_is_put_back_together() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n").as_deref(),
            Some("hello, world")
        );
    }
}
