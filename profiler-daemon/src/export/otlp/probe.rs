//! Probes a collector the way the daemon will use it: one empty export in the configured
//! protocol. When that fails, the port is asked which HTTP version it speaks, so a gRPC client
//! pointed at an HTTP/1.1 receiver (or the reverse) is told so, not left with `h2 protocol error`.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;

use super::queue::EncodedRequest;
use super::transport::{SendError, Transport};
use crate::config::otlp::{OtlpConfig, Protocol};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The collector accepted an empty export.
    Accepted,
    /// It answered, in a way every export would fail: the reason, with what to change.
    Refused(String),
    /// It could not be reached (the daemon queues and retries).
    Unreachable(String),
}

/// The HTTP version a plain-text port answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
}

/// Longest the sniff waits for a connection or an answer.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one empty export request (the collector's answer to it is the handshake).
#[must_use]
pub fn probe(config: &OtlpConfig) -> Verdict {
    let sent = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SendError::Retryable(format!("cannot start the runtime: {e}")))
        .and_then(|rt| {
            rt.block_on(async {
                let mut transport =
                    Transport::new(config).map_err(|e| SendError::Permanent(e.to_string()))?;
                let request = EncodedRequest::of(&ExportProfilesServiceRequest::default());
                match tokio::time::timeout(config.timeout, transport.send(&request)).await {
                    Ok(result) => result.map(drop),
                    Err(_) => Err(SendError::Retryable(format!(
                        "no answer within {}",
                        humantime::format_duration(config.timeout)
                    ))),
                }
            })
        });
    let error = match sent {
        Ok(()) => return Verdict::Accepted,
        Err(e) => e,
    };
    let shown = config.endpoint_for_logs();
    let speaks = |version| sniff(&config.endpoint, version);
    match config.protocol {
        Protocol::Grpc if !speaks(Speaks::Http2) && speaks(Speaks::Http1) => {
            Verdict::Refused(format!(
                "{shown} speaks HTTP/1.1, not gRPC (HTTP/2): every export would fail; try \
                 `--otlp-protocol http/protobuf` (a Collector's HTTP port is 4318)"
            ))
        }
        Protocol::HttpProtobuf if speaks(Speaks::Http2) && !speaks(Speaks::Http1) => {
            Verdict::Refused(format!(
                "{shown} speaks only HTTP/2, as gRPC receivers do: every export would fail; \
                 try `--otlp-protocol grpc` (a Collector's gRPC port is 4317)"
            ))
        }
        _ => match error {
            SendError::Permanent(m) => Verdict::Refused(format!("{shown} refused an export: {m}")),
            SendError::Retryable(m) => Verdict::Unreachable(m),
        },
    }
}

/// Whether a plain `http://` endpoint answers in `version`. HTTP/1: a `GET` is answered with a
/// status line. HTTP/2 (with prior knowledge, as gRPC speaks it): the connection preface is
/// answered with a SETTINGS frame. `false` for TLS endpoints, silence or anything else.
fn sniff(endpoint: &str, version: Speaks) -> bool {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']'])) else {
        return false;
    };
    let Some(addr) = (host, uri.port_u16().unwrap_or(80))
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, SNIFF_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(SNIFF_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(SNIFF_TIMEOUT)).is_err()
    {
        return false;
    }
    let hello: &[u8] = match version {
        Speaks::Http1 => b"GET / HTTP/1.1\r\nHost: otlp\r\nConnection: close\r\n\r\n",
        // The preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
        Speaks::Http2 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    };
    if stream.write_all(hello).is_err() {
        return false;
    }
    let mut answer = [0u8; 16];
    let mut got = 0;
    while got < answer.len() {
        match stream.read(&mut answer[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    classify(&answer[..got]) == Some(version)
}

fn classify(answer: &[u8]) -> Option<Speaks> {
    if answer.starts_with(b"HTTP/1.") {
        Some(Speaks::Http1)
    } else if answer.len() >= 9 && answer[3] == 0x04 {
        Some(Speaks::Http2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_told_apart() {
        assert_eq!(
            classify(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(Speaks::Http1)
        );
        assert_eq!(
            classify(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3]),
            Some(Speaks::Http2)
        );
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn tls_endpoints_are_not_sniffed() {
        assert!(!sniff("https://localhost:1", Speaks::Http1));
        assert!(!sniff("not a uri", Speaks::Http2));
    }
}
