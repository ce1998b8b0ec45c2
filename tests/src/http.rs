//! Plain HTTP for the tests that read the daemon's own server: `/metrics`, `/healthz`, `/readyz`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A plain HTTP/1.0 GET: (status code, body).
#[must_use]
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_bytes(addr, path).map(|(code, body)| (code, String::from_utf8_lossy(&body).into_owned()))
}

/// A plain HTTP/1.0 GET of a binary body: (status code, body). Waits up to a minute.
#[must_use]
pub fn get_bytes(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_mins(1))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data).ok()?;
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&data[..end]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, data[end + 4..].to_vec()))
}

/// Polls `path` until `want` status or `timeout`.
#[must_use]
pub fn wait_status(addr: SocketAddr, path: &str, want: u16, timeout: Duration) -> (u16, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = get(addr, path).unwrap_or((0, String::new()));
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the first metric line starting with `line_prefix`.
#[must_use]
pub fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{line_prefix}` in:\n{text}"))
}
