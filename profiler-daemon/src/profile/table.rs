//! The window's table of distinct locations, as it is built: each location is named and stored
//! once, the first time a stack meets it; later frames at it get its index.

use std::collections::HashMap;
use std::hash::Hash;

use super::Location;

/// Locations by what makes two frames one location (`K`: a file and offset, a kernel address).
#[derive(Debug)]
pub struct LocationTable<K> {
    index: HashMap<K, u32>,
    locations: Vec<Location>,
}

impl<K: Eq + Hash> Default for LocationTable<K> {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            locations: Vec::new(),
        }
    }
}

impl<K: Eq + Hash> LocationTable<K> {
    /// Whether `key`'s location is in the table.
    #[must_use]
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// The index of `key`'s location, made with `make` the first time.
    pub fn index(&mut self, key: K, make: impl FnOnce() -> Location) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        // A window holds at most `--max-stacks` stacks of at most a few hundred frames: far
        // fewer than 2^32 locations.
        let i = u32::try_from(self.locations.len()).unwrap_or(u32::MAX);
        self.locations.push(make());
        self.index.insert(key, i);
        i
    }

    /// The locations, by index.
    #[must_use]
    pub fn into_locations(self) -> Vec<Location> {
        self.locations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: u64) -> Location {
        Location {
            module: None,
            address,
            kernel: true,
            frames: crate::symbolize::unnamed(),
        }
    }

    #[test]
    fn each_key_is_made_once() {
        let mut table = LocationTable::default();
        assert_eq!(table.index(7_u64, || at(7)), 0);
        assert_eq!(table.index(9, || at(9)), 1);
        assert_eq!(table.index(7, || unreachable!("made already")), 0);
        assert!(table.contains(&9) && !table.contains(&8));
        let locations = table.into_locations();
        assert_eq!(
            locations.iter().map(|l| l.address).collect::<Vec<_>>(),
            [7, 9]
        );
    }
}
