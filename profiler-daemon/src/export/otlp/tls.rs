//! TLS trust for `https://` endpoints, and naming what failed when a connection does not work.
//!
//! Roots: the host's CA store when it has one (what its administrator trusts); on hosts without
//! one (minimal images such as `debian:*-slim` without `ca-certificates`), the Mozilla roots
//! bundled in the binary (`webpki-roots`), said once in the log. A CA file given with
//! `--otlp-ca` is trusted besides either.

use std::sync::OnceLock;

/// Where the trusted roots come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Roots {
    /// The host's CA store (`/etc/ssl/certs`, `SSL_CERT_FILE`, ...).
    System,
    /// The Mozilla roots built into the binary.
    Bundled,
}

/// The roots to trust, decided once per process (reading the store costs a few milliseconds).
pub(super) fn roots() -> Roots {
    static ROOTS: OnceLock<Roots> = OnceLock::new();
    *ROOTS.get_or_init(|| {
        if rustls_native_certs::load_native_certs().certs.is_empty() {
            tracing::warn!(
                "no CA certificates on this host (install ca-certificates, or set SSL_CERT_FILE): \
                 https endpoints are checked against the Mozilla roots built into the profiler"
            );
            Roots::Bundled
        } else {
            Roots::System
        }
    })
}

/// The step of a connection that failed, from an error's source chain: `DNS`, `TCP`, `TLS` or
/// `HTTP/2` (`None`: not a connection failure, or not one we can tell).
pub(super) fn failed_step(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut steps = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            steps.push("DNS");
        } else if e.downcast_ref::<rustls::Error>().is_some()
            || text.contains("certificate")
            || text.contains("tls handshake")
            || text.contains("received corrupt message")
        {
            steps.push("TLS");
        } else if e.downcast_ref::<h2::Error>().is_some()
            || text.contains("http2 error")
            || text.contains("h2 protocol error")
        {
            steps.push("HTTP/2");
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::AddrNotAvailable
                    | K::TimedOut
            ) {
                steps.push("TCP");
            }
        }
        next = e.source();
    }
    // The innermost cause names the step (a TLS error is wrapped in I/O errors, and so on).
    steps.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as the transports chain them.
    #[derive(Debug)]
    struct Wrapped(&'static str, Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    #[test]
    fn the_innermost_known_cause_names_the_step() {
        let refused = Wrapped(
            "transport error",
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        assert_eq!(failed_step(&refused), Some("TCP"));
        let tls = Wrapped(
            "transport error",
            Box::new(std::io::Error::other(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))),
        );
        assert_eq!(failed_step(&tls), Some("TLS"));
        let dns = Wrapped(
            "client error (Connect)",
            Box::new(std::io::Error::other(
                "dns error: failed to lookup address information",
            )),
        );
        assert_eq!(failed_step(&dns), Some("DNS"));
        let h2 = Wrapped(
            "transport error",
            Box::new(std::io::Error::other("http2 error")),
        );
        assert_eq!(failed_step(&h2), Some("HTTP/2"));
        assert_eq!(failed_step(&std::io::Error::other("gzip failed")), None);
    }
}
