//! Compiles `profiler-ebpf` for the BPF target (nightly + bpf-linker, see `cargo xtask setup`)
//! and leaves the object in `OUT_DIR/profiler` for `include_bytes_aligned!`. With the daemon's
//! `bench` feature the object also carries the measurement-only sampler programs.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR unset")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../profiler-ebpf");
    let root_dir = root_dir
        .to_str()
        .context("the eBPF crate's path is not UTF-8")?;
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH").is_some() {
        &["bench"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "profiler-ebpf",
            root_dir,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         toolchain's rust-src and bpf-linker",
    )
}
