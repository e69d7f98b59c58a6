//! A tiny HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz` (GET and HEAD, one request
//! per connection, request heads bounded to 8 KiB and 5 s), and the blocking client
//! `kvtier stat` and the tests scrape it with.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use kvtier_core::error::{Error, ErrorKind, Result};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body the client reads.
const MAX_BODY: usize = 16 << 20;

/// A response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// What answers a path. Runs on the blocking pool (a readiness check may connect somewhere).
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Serves `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok((sock, _)) => {
                    let h = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(sock, h).await {
                            tracing::debug!(error = %e, "metrics connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn connection(mut sock: tokio::net::TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (resp, head_only) = if !complete {
        (Response::text(431, "request head too large\n"), false)
    } else {
        let text = String::from_utf8_lossy(&head);
        let line = text.lines().next().unwrap_or("");
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(m @ ("GET" | "HEAD")), Some(target), Some(v)) if v.starts_with("HTTP/1.") => {
                let path = target.split('?').next().unwrap_or("").to_string();
                let h = handler.clone();
                let resp = tokio::task::spawn_blocking(move || h(&path))
                    .await
                    .unwrap_or_else(|e| Response::text(500, format!("handler failed: {e}\n")));
                (resp, m == "HEAD")
            }
            (Some(_), Some(_), Some(v)) if v.starts_with("HTTP/1.") => {
                (Response::text(405, "only GET and HEAD\n"), false)
            }
            _ => (Response::text(400, "not an HTTP/1 request\n"), false),
        }
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(resp.body.as_bytes());
    }
    sock.write_all(&out).await?;
    sock.shutdown().await?;
    if !complete {
        // Read what the client still sends (bounded), so that closing does not reset the
        // connection before it has read the answer.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut left = 64usize << 10;
            while let Ok(n @ 1..) = sock.read(&mut buf).await {
                left = left.saturating_sub(n);
                if left == 0 {
                    break;
                }
            }
        })
        .await;
    }
    Ok(())
}

/// Splits `http://host:port/path`, `host:port/path` or `host:port` into the address and the
/// path (`default_path` when none is given).
pub fn split_url<'a>(url: &'a str, default_path: &'a str) -> (&'a str, &'a str) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, default_path),
    }
}

/// `GET path` from `addr` (`host:port`), within `timeout`: the status and the body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let unavailable = |what: &str| {
        Error::new(
            ErrorKind::Unavailable,
            format!("http://{addr}{path}: {what}"),
        )
    };
    let mut sock = super::probe::connect(addr, timeout).map_err(|e| unavailable(&e.to_string()))?;
    sock.set_read_timeout(Some(timeout)).ok();
    sock.set_write_timeout(Some(timeout)).ok();
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| unavailable(&format!("send failed: {e}")))?;
    let mut raw = Vec::new();
    sock.take(MAX_BODY as u64 + MAX_HEAD as u64)
        .read_to_end(&mut raw)
        .map_err(|e| unavailable(&format!("read failed: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| unavailable("no complete HTTP response"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| unavailable("no HTTP status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        return Err(unavailable("chunked responses are not supported"));
    }
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn serves_paths_and_refuses_other_methods_and_oversized_heads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler: Handler = Arc::new(|p: &str| match p {
            "/metrics" => Response::text(200, "a 1\n"),
            _ => Response::text(404, "no\n"),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve(listener, handler, async {
            let _ = rx.await;
        }));
        let t = Duration::from_secs(5);
        assert_eq!(
            get(&addr, "/metrics?x=1", t).unwrap(),
            (200, "a 1\n".into())
        );
        assert_eq!(get(&addr, "/nope", t).unwrap().0, 404);
        let raw = |req: &[u8]| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(req).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        assert!(raw(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(raw(b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = raw(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_HEAD + 10));
        let mut s = TcpStream::connect(&addr).unwrap();
        // The server answers once the head is too long, without waiting for its end.
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        tx.send(()).unwrap();
        rt.block_on(server).unwrap();
    }

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(split_url("http://h:1/metrics", "/x"), ("h:1", "/metrics"));
        assert_eq!(split_url("h:1", "/metrics"), ("h:1", "/metrics"));
        assert_eq!(split_url("h:1/readyz", "/metrics"), ("h:1", "/readyz"));
    }

    #[test]
    fn an_unreachable_address_is_unavailable() {
        let e = get("127.0.0.1:1", "/metrics", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
}
