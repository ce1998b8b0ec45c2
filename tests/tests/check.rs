//! `profiler check` on the real kernel: one line per BPF feature probe, the sampler loaded with
//! the verifier's cost, exit code 0. (The same binary's probes on other kernels: the kernel
//! matrix, `cargo xtask vm`.)

use profiler_tests::{privileged, run_profiler};

#[test]
fn check_reports_every_probe_and_the_sampler_s_load() {
    let Some(_machine) = privileged("check_reports_every_probe_and_the_sampler_s_load") else {
        return;
    };
    let (code, stdout, stderr) = run_profiler(&["check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The host's kernel (6.18) has every feature probed.
    for probe in profiler_tests::PROBES {
        let line = stdout
            .lines()
            .find(|l| {
                l.get(6..)
                    .is_some_and(|rest| rest.starts_with(&format!("{probe:<14} ")))
            })
            .unwrap_or_else(|| panic!("no `{probe}` line: {stdout}"));
        assert!(line.starts_with("ok "), "{line}");
        assert!(!line.contains("missing"), "{line}");
    }
    let sampler = stdout
        .lines()
        .find(|l| l.contains("sampler"))
        .unwrap_or_else(|| panic!("no sampler line: {stdout}"));
    assert!(
        sampler.starts_with("ok ")
            && sampler.contains("exec/exit tracking on")
            && sampler.contains("verifier and JIT took ")
            && sampler.contains(" instructions processed"),
        "{sampler}"
    );
}
