//! Debian 12's own binaries (built without frame pointers): libc, ld.so, python3.11 and
//! libstdc++ build fully, their signal trampolines and PLT stubs get the right rows, and the
//! functions their symbol tables name are covered.

use std::path::Path;
use std::time::{Duration, Instant};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use profiler_common::{
    CFA_END, CFA_INVALID, CFA_PLT, CFA_RSP_OFFSET, CFA_SIGNAL, RBP_AT_RSP_OFFSET,
};

use super::check_invariants;
use crate::unwind::{Limits, UnwindError, UnwindTable, build};

pub(super) const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
pub(super) const LD_SO: &str = "/lib64/ld-linux-x86-64.so.2";
/// Debian's python3.11, not a pyenv one on `PATH`.
pub(super) const PYTHON: &str = "/usr/bin/python3.11";
pub(super) const LIBSTDCXX: &str = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

/// The files, with the row counts to expect: `readelf` prints about 23.8k rows for libc, 59.6k
/// for python3.11, 29.3k for libstdc++ and 2.1k for ld.so; ours add gap markers and functions
/// with only their CIE's row, and merge repeated rules.
const FILES: [(&str, std::ops::RangeInclusive<usize>); 4] = [
    (LIBC, 22_000..=30_000),
    (PYTHON, 55_000..=70_000),
    (LIBSTDCXX, 27_000..=36_000),
    (LD_SO, 1_800..=3_000),
];

/// `mov $15, %rax; syscall`: `rt_sigreturn`, the body of `__restore_rt`, found without CFI.
const RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];

fn file_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (a Debian 12 machine has it)"))
}

/// Builds `path`'s table `runs` times; the table and the fastest build.
fn build_timed(path: &str, runs: u32) -> (UnwindTable, Duration) {
    let mut best = Duration::MAX;
    let mut table = None;
    for _ in 0..runs {
        let started = Instant::now();
        let built = build(Path::new(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        best = best.min(started.elapsed());
        table = Some(built);
    }
    (table.unwrap(), best)
}

#[test]
fn debian_binaries_build_within_the_expected_sizes() {
    let profile = if cfg!(debug_assertions) {
        "debug build: times are not representative"
    } else {
        "release build"
    };
    println!("unwind tables ({profile}):");
    for (path, expected_rows) in FILES {
        let (table, time) = build_timed(path, 3);
        check_invariants(&table, &Limits::default());
        let stats = table.stats;
        println!(
            "  {path}: {} rows, {} bytes, built in {:.1} ms; {} FDEs, {} gap markers, {} end rows, \
             invalid {:?}, rbp unsupported {}, skipped {:?}",
            stats.rows,
            table.bytes(),
            time.as_secs_f64() * 1e3,
            stats.fdes,
            stats.gap_markers,
            stats.end_rows,
            stats.invalid,
            stats.rbp_unsupported,
            stats.skipped,
        );
        assert!(expected_rows.contains(&stats.rows), "{path}: {stats:?}");
        assert_eq!(stats.section_errors, 0, "{path}");
        assert!(!stats.work_exhausted, "{path}");
        assert_eq!(
            stats.skipped.parse + stats.skipped.overlap,
            0,
            "{path}: {stats:?}"
        );
        assert_eq!(stats.invalid.signal_frame, 0, "{path}");
    }
}

#[test]
fn signal_trampolines_get_signal_rows() {
    for path in [LIBC, LD_SO] {
        let bytes = file_bytes(path);
        let elf = object::File::parse(&*bytes).unwrap();
        let text = elf.section_by_name(".text").unwrap();
        let data = text.data().unwrap();
        let at = data
            .windows(RESTORE_RT.len())
            .position(|w| w == RESTORE_RT)
            .unwrap_or_else(|| panic!("{path}: no __restore_rt"));
        let restore_rt = text.address() + at as u64;
        let table = build(Path::new(path)).unwrap();
        // The FDE starts one byte early, so that a return address - 1 lands in it too.
        for pc in [restore_rt - 1, restore_rt, restore_rt + 8] {
            let row = table.lookup(pc).unwrap();
            assert_eq!(row.cfa_kind, CFA_SIGNAL, "{path} at {pc:#x}: {row:?}");
            assert_eq!(row.cfa_pair(), (160, 168), "{path}");
            assert_eq!((row.rbp_kind, row.rbp_offset), (RBP_AT_RSP_OFFSET, 120));
        }
        println!("{path}: __restore_rt at {restore_rt:#x} → SIGNAL");
    }
}

#[test]
fn plt_stubs_get_plt_rows() {
    for (path, _) in FILES {
        let bytes = file_bytes(path);
        let elf = object::File::parse(&*bytes).unwrap();
        let plt = elf.section_by_name(".plt").unwrap();
        let table = build(Path::new(path)).unwrap();
        // PLT0 pushes once, then jumps: rsp+16, then rsp+24.
        let plt0 = [
            table.lookup(plt.address()),
            table.lookup(plt.address() + 15),
        ];
        assert!(
            plt0.iter()
                .all(|row| row.is_some_and(|r| r.cfa_kind == CFA_RSP_OFFSET)),
            "{path}: {plt0:?}"
        );
        let entries = (plt.size() / 16).min(64);
        for pc in plt.address() + 16..plt.address() + entries * 16 {
            let row = table.lookup(pc).unwrap();
            assert_eq!(row.cfa_kind, CFA_PLT, "{path} at {pc:#x}: {row:?}");
            assert_eq!(row.cfa_pair(), (8, 11), "{path}");
        }
        println!(
            "{path}: .plt at {:#x}, {} entries → PLT",
            plt.address(),
            plt.size() / 16
        );
    }
}

#[test]
fn function_starts_are_covered() {
    for (path, _) in FILES {
        let bytes = file_bytes(path);
        let elf = object::File::parse(&*bytes).unwrap();
        let mut starts: Vec<(u64, String)> = elf
            .symbols()
            .chain(elf.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition())
            .filter(|s| s.address() != 0)
            .map(|s| (s.address(), s.name().unwrap_or("?").to_owned()))
            .collect();
        starts.sort_unstable();
        starts.dedup_by_key(|(address, _)| *address);
        let table = build(Path::new(path)).unwrap();
        let missed: Vec<&(u64, String)> = starts
            .iter()
            .filter(|(address, _)| {
                table
                    .lookup(*address)
                    .is_none_or(|row| row.cfa_kind == CFA_INVALID)
            })
            .collect();
        let covered = 1.0 - missed.len() as f64 / starts.len() as f64;
        println!(
            "{path}: {} of {} function starts covered ({:.2}%); missed: {:?}",
            starts.len() - missed.len(),
            starts.len(),
            covered * 100.0,
            missed.iter().take(10).collect::<Vec<_>>()
        );
        assert!(starts.len() > 20, "{path}: too few symbols to judge");
        assert!(covered >= 0.99, "{path}: {covered}");
    }
}

#[test]
fn outermost_frames_end_the_stack() {
    // python3's `_start` (its CIE says `DW_CFA_undefined rip`), and libc's clone/clone3 child
    // paths, where a thread's stack begins.
    let elf_bytes = file_bytes(PYTHON);
    let entry = object::File::parse(&*elf_bytes).unwrap().entry();
    let python = build(Path::new(PYTHON)).unwrap();
    assert_eq!(python.lookup(entry).unwrap().cfa_kind, CFA_END);
    assert_eq!(build(Path::new(LIBC)).unwrap().stats.end_rows, 2);
}

#[test]
fn unreadable_foreign_and_truncated_files_are_errors() {
    let missing = build(Path::new("/nonexistent/libfoo.so"));
    assert!(
        matches!(missing, Err(UnwindError::Io { .. })),
        "{missing:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text");
    std::fs::write(&text, "not an ELF file").unwrap();
    assert!(matches!(build(&text), Err(UnwindError::Elf { .. })));
    // libc cut anywhere: an error or a table, never a panic.
    let libc = file_bytes(LIBC);
    let cut = dir.path().join("cut.so");
    for len in [64, 4096, libc.len() / 2, libc.len() - 1] {
        std::fs::write(&cut, &libc[..len]).unwrap();
        if let Ok(table) = build(&cut) {
            check_invariants(&table, &Limits::default());
        }
    }
    // The limits are errors, not partial tables.
    let small = Limits {
        max_rows: 1000,
        ..Limits::default()
    };
    let too_many = crate::unwind::build_with(Path::new(LIBC), &small);
    assert!(matches!(
        too_many,
        Err(UnwindError::TooManyRows { limit: 1000 })
    ));
    let tiny = Limits {
        max_section_bytes: 1000,
        ..Limits::default()
    };
    let too_large = crate::unwind::build_with(Path::new(LIBC), &tiny);
    assert!(matches!(
        too_large,
        Err(UnwindError::SectionTooLarge { .. })
    ));
}
