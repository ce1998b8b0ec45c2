//! The interner both profile encoders (OTLP and pprof) build their tables with: dense indices for
//! distinct values, index 0 reserved for the zero value (both formats want it there).

use std::borrow::Borrow;
use std::hash::Hash;

use indexmap::IndexSet;
use rustc_hash::FxBuildHasher;

/// Assigns dense indices to distinct values; index 0 is the zero value. Each value is stored
/// once (an index set: the values in order, and a table of their positions), not as a map's key
/// and again in a list: a window of 100,000 stacks interns millions of frames.
#[derive(Debug)]
pub(super) struct Interner<K> {
    values: IndexSet<K, FxBuildHasher>,
}

impl<K: Eq + Hash> Interner<K> {
    #[must_use]
    pub(super) fn new(zero: K) -> Self {
        let mut values = IndexSet::with_hasher(FxBuildHasher);
        values.insert(zero);
        Self { values }
    }

    /// Returns (index, true when new).
    pub(super) fn intern(&mut self, key: K) -> (i32, bool) {
        let (i, new) = self.values.insert_full(key);
        (i32::try_from(i).unwrap_or(i32::MAX), new)
    }

    /// The index of a value already interned, looked up without owning it.
    #[must_use]
    pub(super) fn get<Q>(&self, key: &Q) -> Option<i32>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.values
            .get_index_of(key)
            .and_then(|i| i32::try_from(i).ok())
    }

    /// The value at `index`.
    #[must_use]
    pub(super) fn value(&self, index: i32) -> Option<&K> {
        self.values.get_index(usize::try_from(index).ok()?)
    }

    /// Number of values, the zero value included.
    #[must_use]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    /// The values, in index order (the zero value first).
    #[must_use]
    pub(super) fn into_values(self) -> Vec<K> {
        self.values.into_iter().collect()
    }
}

/// A string table: interns `&str` without allocating for strings already seen.
#[derive(Debug)]
pub(super) struct Strings(Interner<String>);

impl Default for Strings {
    fn default() -> Self {
        Self(Interner::new(String::new()))
    }
}

impl Strings {
    pub(super) fn intern(&mut self, s: &str) -> i32 {
        self.0
            .get(s)
            .unwrap_or_else(|| self.0.intern(s.to_owned()).0)
    }

    /// The string at `index` (empty when out of range).
    #[must_use]
    pub(super) fn get(&self, index: i32) -> &str {
        self.0.value(index).map_or("", String::as_str)
    }

    /// Number of strings, the empty one included.
    #[must_use]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub(super) fn into_values(self) -> Vec<String> {
        self.0.into_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_first_then_dense_indices() {
        let mut i = Interner::new(0u64);
        assert_eq!(i.intern(0), (0, false));
        assert_eq!(i.intern(7), (1, true));
        assert_eq!(i.intern(9), (2, true));
        assert_eq!(i.intern(7), (1, false));
        assert_eq!(i.into_values(), vec![0, 7, 9]);
        let mut s = Strings::default();
        assert_eq!((s.intern(""), s.intern("a"), s.intern("a")), (0, 1, 1));
        assert_eq!(s.into_values(), vec![String::new(), "a".to_owned()]);
    }
}
