//! Bounded, deterministic property tests of the parsers that read what other programs write
//! (`/proc/PID/maps`, cgroup paths, the configuration file, `key=value` lists, the kernel's perf
//! mapping records): thousands of
//! mutations of real inputs, each parsed without a panic, in a fixed time. They run with the unit
//! tests (in CI); a longer run needs only a larger `ROUNDS`.

use crate::xorshift::Rng;

const ROUNDS: usize = 20_000;

/// Mutations of `seed`: flipped, inserted, deleted and duplicated bytes, truncations, splices.
fn mutations(seed: &[u8], rounds: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seed = seed.to_vec();
    (0..rounds).map(move |_| {
        let mut s = seed.clone();
        for _ in 0..=rng.below(8) {
            let at = rng.below(s.len() + 1);
            match rng.below(6) {
                0 if !s.is_empty() => {
                    let i = at.min(s.len() - 1);
                    s[i] ^= 1 << rng.below(8);
                }
                1 => s.insert(at, (rng.next() & 0xff) as u8),
                2 if at < s.len() => {
                    s.remove(at);
                }
                3 => s.truncate(at),
                4 => {
                    let end = (at + rng.below(64)).min(s.len());
                    let piece = s[at.min(end)..end].to_vec();
                    s.splice(at..at, piece);
                }
                _ => s.insert(
                    at,
                    *b":-/ \n=\"[]{}x0\0".get(rng.below(15)).unwrap_or(&b'x'),
                ),
            }
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/app
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 1234                       /usr/bin/app
7f0000000000-7f0000001000 rwxp 00000000 00:00 0
7f1000000000-7f1000100000 r-xp 00028000 fe:01 99                         /usr/lib/libc.so.6 (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn maps_lines_never_panic() {
        let own = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        for seed in [MAPS, own.as_str()] {
            for m in mutations(seed.as_bytes(), ROUNDS / 2) {
                let lines = crate::procfs::parse_maps(&String::from_utf8_lossy(&m));
                assert!(lines.iter().all(|l| l.path.len() <= m.len()));
            }
        }
    }

    #[test]
    fn cgroup_paths_never_panic() {
        let seed = "0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-\
                    3f1c9b2e8d7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c.scope\n";
        for m in mutations(seed.as_bytes(), ROUNDS) {
            if let Some(id) = crate::procfs::container_id_from_cgroup(&String::from_utf8_lossy(&m))
            {
                assert_eq!(id.len(), 64);
            }
        }
    }

    #[test]
    fn config_files_and_key_value_lists_never_panic() {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiler.toml"),
        )
        .unwrap();
        for m in mutations(example.as_bytes(), ROUNDS / 4) {
            let text = String::from_utf8_lossy(&m);
            // Either a configuration or a one-line error naming the file.
            if let Err(e) = crate::config::file::FileConfig::parse(&text, Path::new("/etc/p.toml"))
            {
                assert!(e.to_string().contains("/etc/p.toml"));
            }
        }
        let list = "deployment.environment=prod,team=a%2Cb,k8s.pod.name=x%20y";
        for m in mutations(list.as_bytes(), ROUNDS) {
            let text = String::from_utf8_lossy(&m);
            if let Ok(pairs) =
                crate::config::otlp::parse_key_values(&text, &crate::config::Source::Other("X"))
            {
                assert!(pairs.iter().all(|(k, _)| !k.is_empty()));
            }
        }
    }

    /// A ring holding two `mmap2` records (header + body) and a lost record.
    fn perf_ring() -> Vec<u8> {
        let mut ring = Vec::new();
        for path in [
            &b"/usr/lib/x86_64-linux-gnu/libc.so.6\0\0\0\0\0"[..],
            b"/tmp/a.so\0\0\0\0\0\0\0",
        ] {
            let mut body = Vec::new();
            for v in [41u32, 42] {
                body.extend_from_slice(&v.to_ne_bytes());
            }
            for v in [0x7f00_0000_0000u64, 0x1000, 0, 0x0801, 77, 0, 5] {
                body.extend_from_slice(&v.to_ne_bytes());
            }
            body.extend_from_slice(path);
            for v in [41u32, 42] {
                body.extend_from_slice(&v.to_ne_bytes());
            }
            body.extend_from_slice(&1_000u64.to_ne_bytes());
            ring.extend_from_slice(&10u32.to_ne_bytes());
            ring.extend_from_slice(&0u16.to_ne_bytes());
            ring.extend_from_slice(&((8 + body.len()) as u16).to_ne_bytes());
            ring.extend_from_slice(&body);
        }
        ring.extend_from_slice(&2u32.to_ne_bytes());
        ring.extend_from_slice(&0u16.to_ne_bytes());
        ring.extend_from_slice(&24u16.to_ne_bytes());
        ring.extend_from_slice(&[0; 16]);
        ring
    }

    #[test]
    fn perf_mapping_records_never_panic() {
        let seed = perf_ring();
        let mut scratch = Vec::new();
        let mut decoded = 0;
        crate::mmaps::walk(
            &seed,
            0,
            seed.len() as u64,
            &mut scratch,
            &mut |kind, body| {
                if kind == 10 {
                    let r = crate::mmaps::parse_mmap2(body).unwrap();
                    assert_eq!((r.pid, r.line.inode, r.time_ns), (41, 77, 1_000));
                    decoded += 1;
                }
            },
        );
        assert_eq!(decoded, 2);
        let mut rng = Rng(7);
        for m in mutations(&seed, ROUNDS) {
            // Any tail and head, wrapped anywhere: the walk ends, and every body fits the ring.
            let len = m.len() as u64;
            let tail = rng.next() % (2 * len + 1);
            let head = tail.wrapping_add(rng.next() % (len + 64));
            let end = crate::mmaps::walk(&m, tail, head, &mut scratch, &mut |kind, body| {
                assert!(body.len() <= m.len());
                if kind == 10
                    && let Some(r) = crate::mmaps::parse_mmap2(body)
                {
                    assert!(r.line.path.len() <= body.len());
                }
            });
            assert!(end.wrapping_sub(tail) <= head.wrapping_sub(tail));
        }
    }
}
