//! What makes two files the same module. A build id is a cache key chosen by whoever linked the
//! file, not proof of identity: a forged or reused one must not let one file's names (or, later,
//! unwind tables) stand for another's. Two files are one module when they have the same build id
//! *and* the same size and content digest. The digest is computed only when a second file claims
//! a build id already seen (the common case, one file per build id, costs nothing), once per file
//! (device, inode, size, mtime), with a hasher keyed at random per daemon, so a file cannot be
//! crafted offline to collide with another.

use std::fs::{File, Metadata};
use std::hash::{BuildHasher as _, Hasher as _, RandomState};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// One version of one file: where it is (device, inode) and which content it has (size, mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileKey {
    #[must_use]
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// Content digests with this daemon's random key.
#[derive(Debug, Default)]
pub(super) struct Digester {
    key: RandomState,
}

impl Digester {
    /// The digest of the whole file at `path` (read in chunks: memory stays flat).
    pub(super) fn digest(&self, path: &Path) -> std::io::Result<u64> {
        let mut hasher = self.key.build_hasher();
        super::for_each_chunk(File::open(path)?, |chunk| hasher.write(chunk))?;
        Ok(hasher.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_content_not_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, vec![7u8; 600_000]).unwrap();
        std::fs::write(&b, vec![7u8; 600_000]).unwrap();
        let mut other = vec![7u8; 600_000];
        other[599_999] = 8;
        std::fs::write(&c, other).unwrap();
        let d = Digester::default();
        assert_eq!(d.digest(&a).unwrap(), d.digest(&b).unwrap());
        assert_ne!(d.digest(&a).unwrap(), d.digest(&c).unwrap());
        let (ka, kb) = (
            FileKey::of(&std::fs::metadata(&a).unwrap()),
            FileKey::of(&std::fs::metadata(&b).unwrap()),
        );
        assert_ne!(ka, kb, "two files are two keys");
        assert_eq!(ka.size, kb.size);
    }
}
