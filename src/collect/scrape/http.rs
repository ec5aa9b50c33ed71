//! A minimal HTTP/1.1 GET client over a tokio `TcpStream`, for plain-http scrapes.
//!
//! Why not hyper: `hyper`/`hyper-util` are compiled only with their server features (through
//! axum); the client side (`hyper-util`'s `client-legacy`) would add features and build time for
//! one GET with `Connection: close`. This reads the whole response (identity or chunked body) and
//! is bounded by `max_body` so a runaway exporter cannot grow memory.

use super::ScrapeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// GETs `path_and_query` from `host:port` with the given extra headers.
pub async fn get(
    address: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    max_body: usize,
) -> Result<Response, ScrapeError> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| ScrapeError::Http(format!("dial {address}: {e}")))?;
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: monitoring-rs\r\nConnection: close\r\n"
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| ScrapeError::Http(format!("write: {e}")))?;
    let mut raw = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| ScrapeError::Http(format!("read: {e}")))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > max_body + 64 * 1024 {
            return Err(ScrapeError::Http(format!("body larger than {max_body} bytes")));
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response, ScrapeError> {
    let bad = |m: &str| ScrapeError::Http(format!("malformed response: {m}"));
    let end = memchr::memmem::find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut content_type = None;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((n, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if n.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.to_string());
        } else if n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if n.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("chunked body"))?
    } else if let Some(l) = length {
        rest.get(..l)
            .ok_or_else(|| bad("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    loop {
        let eol = memchr::memmem::find(b, b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, want: Result<(u16, Option<&str>, &str), ()>) {
        let got = parse_response(raw.as_bytes())
            .map(|r| (r.status, r.content_type, String::from_utf8(r.body).unwrap()))
            .map_err(|_| ());
        let want = want.map(|(s, c, b)| (s, c.map(str::to_string), b.to_string()));
        assert_eq!(got, want, "{raw:?}");
    }

    #[test]
    fn responses() {
        check(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\na 1xx",
            Ok((200, Some("text/plain"), "a 1")),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na 1\r\n2;x=y\r\n\n \r\n0\r\n\r\n",
            Ok((200, None, "a 1\n ")),
        );
        check("HTTP/1.0 503 Unavailable\r\n\r\nbusy", Ok((503, None, "busy")));
        check("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Err(()));
        check("garbage", Err(()));
        check("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Err(()));
    }
}
