//! Envoy's admin interface, as outpost asks it: `GET /ready`. The admin refuses HTTP/1.0
//! (`426 Upgrade Required`, its connection manager's rule) and answers `503` with the state
//! name (`PRE_INITIALIZING`, `INITIALIZING`, `DRAINING`) until the server is live, then `200`
//! with the body `LIVE`, chunked (reference/consul-xds.md §8).

use std::io::{Read, Write};

/// Asks `/ready` over `stream` (connected to the admin at `admin`): whether Envoy is live.
pub fn is_ready(stream: &mut (impl Read + Write), admin: &str) -> bool {
    if stream.write_all(ready_request(admin).as_bytes()).is_err() {
        return false;
    }
    // The answer is a few dozen bytes; more than this is not Envoy's admin.
    let mut reply = Vec::with_capacity(512);
    stream.take(4096).read_to_end(&mut reply).is_ok() && is_live(&reply)
}

fn ready_request(admin: &str) -> String {
    format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
}

/// Whether an HTTP/1.1 answer is `200` with the body `LIVE` (plain or chunked).
fn is_live(reply: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(reply) else {
        return false;
    };
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let mut lines = head.split("\r\n");
    let status_ok = lines.next().is_some_and(|status| {
        let mut parts = status.split(' ');
        parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) && parts.next() == Some("200")
    });
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)
    } else {
        Some(body.to_string())
    };
    status_ok && body.is_some_and(|b| b.trim() == "LIVE")
}

/// The data of a chunked body; `None` when it is malformed.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut data = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(data);
        }
        data.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::is_live;

    // Answers of Envoy 1.36.4's admin, as read off the wire.
    const LIVE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=UTF-8\r\ncache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\ndate: Wed, 02 Dec 2026 19:50:00 GMT\r\nserver: envoy\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nLIVE\n\r\n0\r\n\r\n";
    const INITIALIZING: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=UTF-8\r\ncache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\ndate: Wed, 02 Dec 2026 18:55:41 GMT\r\nserver: envoy\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\nd\r\nINITIALIZING\n\r\n0\r\n\r\n";
    const HTTP_10: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 16\r\ncontent-type: text/plain\r\ndate: Wed, 02 Dec 2026 18:55:41 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\nUpgrade Required";

    #[test]
    fn only_200_live_is_ready() {
        assert!(is_live(LIVE));
        assert!(is_live(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nLIVE\n"
        ));
        assert!(!is_live(INITIALIZING));
        assert!(!is_live(HTTP_10));
        // A 200 that is not Envoy's answer (another server on the admin port).
        assert!(!is_live(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        assert!(!is_live(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nDRAINING"
        ));
        // Cut short or malformed.
        assert!(!is_live(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nLI"
        ));
        assert!(!is_live(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nLIVE\n\r\n0\r\n\r\n"
        ));
        assert!(!is_live(b"HTTP/1.1 200"));
        assert!(!is_live(b""));
        assert!(!is_live(&[0xff, 0xfe]));
    }
}
