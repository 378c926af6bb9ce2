//! A minimal HTTP/1.1 server for /metrics: one request per connection, bounded reads, no
//! dependencies beyond tokio. Prometheus needs nothing more.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

/// What a handler answers for a path.
pub enum Reply {
    Ok {
        content_type: &'static str,
        body: Vec<u8>,
    },
    NotFound,
    /// 500, with a one-line reason.
    Failed(String),
}

/// Renders the response for a path.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, handler: Handler, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, handler).await {
                            debug!(%peer, error = %e, "http connection failed");
                        }
                    });
                }
                Err(e) => debug!(error = %e, "accept failed"),
            }
        }
    }
}

async fn respond(mut stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return write(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                false,
            )
            .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return write(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            false,
        )
        .await;
    }
    match handler(path) {
        Reply::Ok { content_type, body } => {
            write(&mut stream, "200 OK", content_type, &body, head_only).await
        }
        Reply::NotFound => {
            let body = b"not found: try /metrics\n";
            write(&mut stream, "404 Not Found", "text/plain", body, head_only).await
        }
        Reply::Failed(why) => {
            let body = format!("{why}\n");
            write(
                &mut stream,
                "500 Internal Server Error",
                "text/plain",
                body.as_bytes(),
                head_only,
            )
            .await
        }
    }
}

async fn write(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if !head_only {
        s.write_all(body).await?;
    }
    s.shutdown().await
}
