//! `cargo xtask bench`'s collector: a real gRPC OTLP profiles receiver (`receiver::grpc`) that
//! keeps nothing; per export it prints one line, `export bytes=N samples=M` (protobuf bytes of
//! the request, samples counted as the values of every sample), so the bench can report export
//! bytes per sample. Its first line is `listening ADDRESS`, the address it bound (port 0: any
//! free port), so the bench never exports to a stray receiver left on a fixed port. Runs until
//! killed; exits non-zero when it cannot bind.
//!
//! Usage: `otlp-sink ADDRESS` (e.g. `127.0.0.1:0`).

use std::io::Write as _;
use std::time::Duration;

use profiler_tests::receiver;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: otlp-sink ADDRESS");
    let sink = receiver::grpc(addr, false);
    let mut out = std::io::stdout();
    writeln!(out, "listening {}", sink.addr)
        .and_then(|()| out.flush())
        .expect("stdout is open");
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for capture in sink.take() {
            let samples: i64 = capture
                .request
                .resource_profiles
                .iter()
                .flat_map(|rp| &rp.scope_profiles)
                .flat_map(|sp| &sp.profiles)
                .flat_map(|p| &p.samples)
                .map(|s| s.values.iter().sum::<i64>().max(1))
                .sum();
            writeln!(
                out,
                "export bytes={} samples={samples}",
                capture.bytes.len()
            )
            .and_then(|()| out.flush())
            .expect("stdout is open");
        }
    }
}
