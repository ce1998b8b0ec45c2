//! One copy of each name and of each frame list within a window. blazesym hands out a new string
//! per address looked up, while a function's addresses share its name and file, and a function
//! named from a symbol table (no lines) has the same frame list at every address: a window over
//! many distinct addresses held one copy per address (100 MiB at 100,000 stacks of 1.8 million
//! distinct addresses, `bench scale --private-code`).

use std::collections::HashSet;
use std::sync::Arc;

use super::frame::{Frame, Resolved};

/// Distinct values kept at most; past it the sets start over (values already handed out stay
/// valid: they are shared, not owned, by the sets).
const MAX_VALUES: usize = 1 << 18;

/// The interned names and frame lists of the current window.
#[derive(Debug, Default)]
pub(super) struct Names {
    strings: HashSet<Arc<str>>,
    frames: HashSet<Resolved>,
}

impl Names {
    /// The shared copy of `s`.
    pub(super) fn string(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        if self.strings.len() >= MAX_VALUES {
            self.strings.clear();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    /// The frame with its name and file shared.
    pub(super) fn frame(&mut self, name: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            name: self.string(name),
            file: file.map(|f| self.string(f)),
            line,
        }
    }

    /// The shared copy of `frames`.
    pub(super) fn frames(&mut self, frames: Vec<Frame>) -> Resolved {
        if let Some(shared) = self.frames.get(frames.as_slice()) {
            return Arc::clone(shared);
        }
        if self.frames.len() >= MAX_VALUES {
            self.frames.clear();
        }
        let shared: Resolved = Arc::from(frames);
        self.frames.insert(Arc::clone(&shared));
        shared
    }

    /// Lets go of the window's values (the caches and the window's stacks keep theirs).
    pub(super) fn clear(&mut self) {
        self.strings = HashSet::new();
        self.frames = HashSet::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_until_cleared() {
        let mut names = Names::default();
        let a = names.frame("main", Some("app.c"), Some(3));
        let b = names.frame("main", Some("app.c"), Some(4));
        assert!(Arc::ptr_eq(&a.name, &b.name));
        assert!(Arc::ptr_eq(
            a.file.as_ref().expect("file"),
            b.file.as_ref().expect("file")
        ));
        let one = names.frames(vec![a.clone()]);
        let two = names.frames(vec![a.clone()]);
        assert!(Arc::ptr_eq(&one, &two));
        assert!(!Arc::ptr_eq(&one, &names.frames(vec![b])), "lines differ");
        names.clear();
        let three = names.frames(vec![a]);
        assert_eq!(one, three);
        assert!(!Arc::ptr_eq(&one, &three), "a new window makes new copies");
    }
}
