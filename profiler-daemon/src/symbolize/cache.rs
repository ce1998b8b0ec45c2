//! The name caches: LRU maps bounded by entry count that grow as they fill. `lru::LruCache::new`
//! allocates its table for the whole bound at once (200,000 entries: 4.5 MiB per cache), which
//! a daemon that has named a few thousand addresses should not pay.

use std::hash::Hash;

use lru::LruCache;

pub(super) struct NameCache<K: Hash + Eq, V> {
    entries: LruCache<K, V>,
    capacity: usize,
}

impl<K: Hash + Eq, V> NameCache<K, V> {
    /// At most `capacity` entries (at least 1).
    #[must_use]
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            capacity: capacity.max(1),
        }
    }

    /// The value of `key`, marked most recently used.
    pub(super) fn get(&mut self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    /// Stores `value` for `key`, dropping the least recently used entry when full.
    pub(super) fn put(&mut self, key: K, value: V) {
        if self.entries.len() >= self.capacity && !self.entries.contains(&key) {
            self.entries.pop_lru();
        }
        self.entries.put(key, value);
    }

    /// The most entries it holds.
    #[must_use]
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets `key`.
    pub(super) fn remove(&mut self, key: &K) {
        self.entries.pop(key);
    }

    #[must_use]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_capacity_dropping_the_least_recently_used() {
        let mut cache = NameCache::new(2);
        cache.put(1, "a");
        cache.put(2, "b");
        assert_eq!(cache.get(&1), Some(&"a"));
        cache.put(3, "c");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&2), None, "2 was the least recently used");
        assert_eq!(cache.get(&1), Some(&"a"));
        cache.put(1, "A");
        assert_eq!((cache.len(), cache.get(&1)), (2, Some(&"A")));
    }
}
