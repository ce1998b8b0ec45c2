//! A property test on damaged input, bounded in time: libc's real `.eh_frame`, truncated,
//! with bytes overwritten, spliced and lengths forged, thousands of times; the builder must
//! never panic, stay within its row bound, keep the table's invariants, and finish each build
//! quickly. Deterministic (a fixed-seed PRNG), so a failure reproduces.

use std::time::{Duration, Instant};

use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use super::debian::LIBC;
use super::{build_sections, check_invariants};
use crate::unwind::Limits;

/// `SplitMix64`: small, fast, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Damages `bytes` in one of several ways.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, original: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let at = rng.below(bytes.len());
    match rng.below(7) {
        // Truncate.
        0 => bytes.truncate(at),
        // Overwrite a byte, or a few.
        1 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
        }
        // Flip one bit.
        2 => bytes[at] ^= 1 << rng.below(8),
        // Splice: a chunk of the original section copied over another place.
        3 => {
            let len = 1 + rng.below(256);
            let from = rng.below(original.len().saturating_sub(len).max(1));
            let chunk = &original[from..(from + len).min(original.len())];
            let end = (at + chunk.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&chunk[..end - at]);
        }
        // Splice: a chunk inserted, shifting everything after it.
        4 => {
            let len = 1 + rng.below(64);
            let from = rng.below(original.len().saturating_sub(len).max(1));
            let chunk = original[from..(from + len).min(original.len())].to_vec();
            bytes.splice(at..at, chunk);
        }
        // A forged length or offset: huge, 64-bit DWARF's escape, zero, or off by a little.
        5 => {
            let value: u32 = match rng.below(4) {
                0 => u32::MAX,
                1 => 0x7fff_ffff,
                2 => 0,
                _ => rng.next() as u32 % 4096,
            };
            let i = at & !3;
            let end = (i + 4).min(bytes.len());
            bytes[i..end].copy_from_slice(&value.to_le_bytes()[..end - i]);
        }
        // Bytes removed from the middle.
        _ => {
            let end = (at + 1 + rng.below(64)).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

#[test]
fn damaged_eh_frames_never_panic_and_stay_bounded() {
    let file = std::fs::read(LIBC).unwrap();
    let elf = object::File::parse(&*file).unwrap();
    let section = elf.section_by_name(".eh_frame").unwrap();
    let original = section.data().unwrap();
    let base = elf
        .segments()
        .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & 1 != 0))
        .map(|s| s.address())
        .min()
        .unwrap();

    let mut rng = Rng(0x005e_ed0f_11bc);
    let started = Instant::now();
    // Enough to be meaningful on a slow machine, and never more than a few seconds.
    let (min_iterations, max_iterations, deadline) = (2_000, 50_000, Duration::from_secs(4));
    let mut iterations = 0;
    let mut outcomes = [0_usize; 2];
    let mut slowest = Duration::ZERO;
    while iterations < max_iterations && started.elapsed() < deadline {
        iterations += 1;
        // Mostly a window of the section (the CIE at its start, or anywhere: fast builds, so
        // many of them), sometimes all of it.
        let mut bytes = if rng.below(50) == 0 {
            original.to_vec()
        } else {
            let from = if rng.below(2) == 0 {
                0
            } else {
                rng.below(original.len())
            };
            let len = 64 + rng.below(4096);
            original[from..(from + len).min(original.len())].to_vec()
        };
        for _ in 0..=rng.below(6) {
            mutate(&mut rng, &mut bytes, original);
        }
        let limits = Limits {
            max_rows: if rng.below(8) == 0 {
                1 + rng.below(64)
            } else {
                100_000
            },
            ..Limits::default()
        };
        let one = Instant::now();
        // Sometimes the same bytes as a .debug_frame (absolute addresses, CIEs anywhere).
        let result = if rng.below(6) == 0 {
            build_sections(None, Some(&bytes), base, &limits)
        } else {
            build_sections(Some((&bytes, section.address())), None, base, &limits)
        };
        slowest = slowest.max(one.elapsed());
        match result {
            Ok(table) => {
                check_invariants(&table, &limits);
                outcomes[0] += 1;
            }
            Err(_) => outcomes[1] += 1,
        }
    }
    println!(
        "fuzz: {iterations} damaged .eh_frame builds in {:.2} s ({} tables, {} errors), \
         slowest {:.1} ms",
        started.elapsed().as_secs_f64(),
        outcomes[0],
        outcomes[1],
        slowest.as_secs_f64() * 1e3
    );
    assert!(
        iterations >= min_iterations,
        "only {iterations} iterations in {deadline:?}"
    );
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "mutations too mild or too harsh: {outcomes:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "one build took {slowest:?}"
    );
}
